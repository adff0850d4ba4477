"""The network questions the toolkit asks: does a package index answer, is a local server up?

``--wheelhouse auto`` asks the index probe before planning (the PyTorch index unreachable: use
pip's local wheel folders) and the resolver asks it before hashing (unreachable: leave torch
unhashed). A command asks through one ``IndexProbe``, which remembers each server's answer, so a
render waits for the network once, not once per question.

``free_port`` and ``wait_healthy`` are what every caller that starts a server of its own uses
(``nox -s serve``, the live endpoint tests, the GPU serving benchmark): a port nothing holds, and
the wait for the server's health route with a deadline, stopping early when the server dies.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

__all__ = ["PROBE_TIMEOUT_S", "IndexProbe", "NotHealthy", "free_port", "probe_index", "wait_healthy"]

#: Short: an index that needs longer than this to answer would not serve wheels usefully either.
PROBE_TIMEOUT_S = 5.0


def probe_index(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` when ``url`` answers (any status below 500), else why not (one short line)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/", timeout=timeout):  # noqa: S310 (https only, validated)
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))[:200]


class IndexProbe:
    """``probe_index`` (or ``probe``) asked at most once per server (scheme, host, port) for one command."""

    def __init__(self, probe: Callable[[str], str | None] | None = None) -> None:
        self._probe = probe
        self._answers: dict[str, str | None] = {}

    def __call__(self, url: str) -> str | None:
        """Why ``url``'s server does not answer, or ``None`` when it does."""
        parts = urlsplit(url)
        server = f"{parts.scheme}://{parts.netloc}"
        if server not in self._answers:
            probe = self._probe or probe_index  # looked up now, so a test can replace it
            self._answers[server] = probe(url)
        return self._answers[server]

    def reachable(self, url: str) -> bool:
        """Whether ``url``'s server answers."""
        return self(url) is None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now, chosen by the kernel, for a server about to start on ``host``."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NotHealthy(Exception):
    """The server never answered its health route: ``exited`` when it died first, else the deadline passed."""

    def __init__(self, message: str, *, exited: bool) -> None:
        super().__init__(message)
        self.exited = exited


def wait_healthy(url: str, *, deadline_s: float, running: Callable[[], bool], interval_s: float = 0.5,
                 timeout_s: float = 5.0) -> float:
    """Poll ``url`` until it answers HTTP 200; return the seconds waited.

    ``running`` says whether the server process is still alive: a dead one ends the wait at once.

    :raises NotHealthy: the server exited, or ``deadline_s`` passed without a 200.
    """
    import time
    import urllib.error
    import urllib.request

    start = time.monotonic()
    while True:
        if not running():
            raise NotHealthy("the server exited before it was healthy", exited=True)
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # noqa: S310 (a local server's route)
                if answer.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() - start > deadline_s:
            raise NotHealthy(f"the server was not healthy within {deadline_s:.0f} s", exited=False)
        time.sleep(interval_s)
