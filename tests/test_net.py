"""provision.common.net: the one index probe, asked at most once per server in a command."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

import provision.common.net
from provision.common.net import IndexProbe, probe_index


class _Status(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the status its path names: ``/404/`` -> 404."""

    def do_GET(self) -> None:
        self.send_response(int(self.path.strip("/").split("/")[0]))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name in ("no_proxy", "NO_PROXY"):  # a configured proxy must not stand between us and 127.0.0.1
        monkeypatch.setenv(name, "*")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_any_answer_below_500_is_reachable(server: str) -> None:
    assert probe_index(f"{server}/200") is None
    assert probe_index(f"{server}/404") is None  # the server answers: a missing page is not an outage
    assert probe_index(f"{server}/503") == "HTTP 503"


def test_a_closed_port_says_why_in_one_short_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "*")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    why = probe_index(f"http://127.0.0.1:{port}/whl", timeout=2)
    assert why is not None and "\n" not in why and len(why) <= 200


def test_a_command_asks_each_server_once() -> None:
    asked: list[str] = []
    probe = IndexProbe(lambda url: asked.append(url) or ("offline" if "pytorch" in url else None))
    assert probe("https://download.pytorch.org/whl/") == "offline"
    assert probe.reachable("https://download.pytorch.org/whl/cu128") is False  # same server: remembered
    assert probe.reachable("https://mirror.example/whl/cu128") is True  # another server: asked
    assert probe.reachable("https://mirror.example:8443/whl") is True  # another port is another server
    assert asked == ["https://download.pytorch.org/whl/", "https://mirror.example/whl/cu128",
                     "https://mirror.example:8443/whl"]


def test_the_default_probe_is_looked_up_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = IndexProbe()
    monkeypatch.setattr(provision.common.net, "probe_index", lambda url: "swapped")
    assert probe("https://download.pytorch.org/whl/") == "swapped"


def test_wait_healthy_waits_for_a_200_and_stops_at_a_dead_server_or_the_deadline() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from provision.common.net import NotHealthy, free_port, wait_healthy

    answers = [503, 503, 200]

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answers.pop(0) if len(answers) > 1 else answers[0])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/health"
        assert wait_healthy(url, deadline_s=30, running=lambda: True, interval_s=0.01) >= 0
        assert answers == [200]  # two 503s were waited through
    finally:
        server.shutdown()
        server.server_close()
    closed = f"http://127.0.0.1:{free_port()}/health"
    with pytest.raises(NotHealthy) as dead:
        wait_healthy(closed, deadline_s=30, running=lambda: False)
    assert dead.value.exited
    with pytest.raises(NotHealthy, match="not healthy within 0 s") as late:
        wait_healthy(closed, deadline_s=0.2, running=lambda: True, interval_s=0.05)
    assert not late.value.exited
