"""provision smoke --endpoint: the pure core, failures against real local HTTP servers, and a live proof.

The failure modes run against stdlib HTTP servers started here, each failing one way (an HTTP
500, another model name, silence, nothing listening, an empty answer). The success path runs
against a real ``transformers serve`` process serving the tiny glm4v model; it needs a Python
with ``transformers[serving]`` and an image-capable torchvision, named by ``PROVISION_SERVE_PYTHON``
(``nox -s serve`` sets it), and is skipped without one.
"""

from __future__ import annotations

import base64
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provision.cli import main
from provision.common.net import NotHealthy, free_port, wait_healthy
from provision.errors import InvalidInput
from provision.smoke import SmokeReport, format_report
from provision.smoke.endpoint import (
    AGENT_SAMPLING,
    SCREEN_SIZE,
    Answer,
    agent_messages,
    base_url,
    decode_rate,
    endpoint_report,
    endpoint_settings,
    engine_from_owner,
    http_error_reason,
    load_summary,
    one_line,
    parse_models,
    percentile,
    phone_screenshot,
    served_name_problem,
)

SERVE_PYTHON_ENV = "PROVISION_SERVE_PYTHON"
NAME = "autoglm-phone-9b"
BASE_KEYS = ["schema", "ok", "model", "source", "precision", "device", "load_seconds", "peak_memory_bytes",
             "estimated_memory_bytes", "tokens_generated", "tokens_per_second"]
ENDPOINT_KEYS = ["endpoint", "served_model_name", "engine", "ttft_seconds", "latency_seconds", "tokens_counted_by",
                 "image"]
LOAD_KEYS = {"concurrency", "requests", "errors", "latency_p50_seconds", "latency_p95_seconds", "requests_per_second",
             "output_tokens_per_second"}


# ---------------------------------------------------------------- percentiles and rates


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
    ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
    ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
    ([4.0, 1.0, 3.0, 2.0], 95, 3.85),  # unsorted input; 0.95 * 3 = 2.85 -> 3 + 0.85
    ([7.0], 95, 7.0),
    ([], 50, None),
])  # fmt: skip
def test_percentile_interpolates_between_ranks(values: list[float], q: float, expected: float | None) -> None:
    got = percentile(values, q)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_percentile_refuses_a_q_outside_0_100() -> None:
    with pytest.raises(ValueError, match="outside 0-100"):
        percentile([1.0], 101)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=50))
def test_percentile_agrees_with_the_statistics_module(values: list[float]) -> None:
    assert percentile(values, 50) == pytest.approx(statistics.median(values))
    if len(values) > 1:
        inclusive = statistics.quantiles(values, n=20, method="inclusive")
        assert percentile(values, 95) == pytest.approx(inclusive[18])
    assert min(values) <= percentile(values, 95) <= max(values)  # type: ignore[operator]


@pytest.mark.parametrize(("answer", "rate"), [
    (Answer(latency=2.0, ttft=1.0, last=1.5, tokens=11), 20.0),  # 10 tokens after the first in 0.5 s
    (Answer(latency=2.0, ttft=1.0, last=1.0, tokens=8), 4.0),  # one chunk: tokens over the latency
    (Answer(latency=2.0, ttft=1.0, last=1.0, tokens=1), 0.5),
    (Answer(latency=0.0, tokens=0), 0.0),
])  # fmt: skip
def test_decode_rate(answer: Answer, rate: float) -> None:
    assert decode_rate(answer) == pytest.approx(rate)


def test_load_summary_counts_errors_in_sending_order_and_rates_over_wall_time() -> None:
    answers = [
        Answer(latency=1.0, ttft=0.2, last=0.9, tokens=10),
        Answer(latency=0.1, error="HTTP 503: busy"),
        Answer(latency=3.0, ttft=0.4, last=2.9, tokens=30),
        Answer(latency=0.1, error="HTTP 500: later"),
    ]
    load = load_summary(answers, concurrency=2, wall_seconds=4.0)
    assert set(load) >= LOAD_KEYS
    assert (load["concurrency"], load["requests"], load["errors"], load["first_error"]) == (2, 4, 2, "HTTP 503: busy")
    assert load["latency_p50_seconds"] == 2.0 and load["latency_p95_seconds"] == 2.9  # over the two answers
    assert (load["requests_per_second"], load["output_tokens_per_second"], load["output_tokens"]) == (0.5, 10.0, 40)
    clean = load_summary(answers[:1], concurrency=1, wall_seconds=1.0)
    assert clean["errors"] == 0 and "first_error" not in clean


def test_load_summary_of_only_failures_has_no_latencies() -> None:
    load = load_summary([Answer(latency=0.1, error="x")], concurrency=1, wall_seconds=0.0)
    assert (load["latency_p50_seconds"], load["requests_per_second"], load["errors"]) == (None, 0.0, 1)


# ---------------------------------------------------------------- the request


def test_screenshot_is_a_deterministic_phone_sized_png() -> None:
    from PIL import Image

    png = phone_screenshot()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert phone_screenshot() == png  # the same bytes every time
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", SCREEN_SIZE) == ("PNG", "RGB", (1080, 2400))
    assert len(image.resize((108, 240)).getcolors(100_000) or ()) > 20  # drawn: bars, rows, text; not a blank page
    small = Image.open(io.BytesIO(phone_screenshot((540, 1200))))
    assert small.size == (540, 1200)


def test_agent_messages_carry_the_screenshot_as_a_data_url() -> None:
    png = phone_screenshot()
    system, user = agent_messages(png)
    assert system["role"] == "system" and system["content"]
    image, text = user["content"]
    prefix = "data:image/png;base64,"
    assert image["type"] == "image_url" and image["image_url"]["url"].startswith(prefix)
    assert base64.b64decode(image["image_url"]["url"][len(prefix):]) == png
    assert text["type"] == "text" and text["text"]
    assert AGENT_SAMPLING == {"temperature": 0.0, "top_p": 0.85, "frequency_penalty": 0.2}  # Open-AutoGLM's


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("http://localhost:8000", "http://localhost:8000/v1"),
    ("https://gpu.example.org/api/v1", "https://gpu.example.org/api/v1"),
    ("http://[::1]:8000/", "http://[::1]:8000/v1"),
])  # fmt: skip
def test_base_url_is_normalised(url: str, expected: str) -> None:
    assert base_url(url) == expected


@pytest.mark.parametrize(("url", "problem"), [
    ("127.0.0.1:8000", "expected an http:// or https:// URL"),
    ("ftp://host/v1", "expected an http:// or https:// URL"),
    ("http:///v1", "expected an http:// or https:// URL"),
    ("http://host:99999/v1", "the port is not a number"),
    ("http://host:80/v1?x=1", "no user, query or fragment"),
    ("http://user:pw@host/v1", "no user, query or fragment"),
    ("http://host/v 1", "expected a URL"),
    ("", "expected a URL"),
])  # fmt: skip
def test_bad_urls_are_bad_input(url: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        base_url(url)
    assert exc.value.source == "--endpoint" and problem in exc.value.problem


@pytest.mark.parametrize(("options", "source", "problem"), [
    ({"concurrency": 0}, "--concurrency", "expected 1 to 1024"),
    ({"concurrency": 4, "requests": 3}, "--requests", "at least --concurrency (4)"),
    ({"requests": 8}, "--requests", "needs --concurrency"),
    ({"timeout": 0.0}, "--timeout", "above 0"),
    ({"timeout": float("nan")}, "--timeout", "above 0"),
    ({"max_tokens": 0}, "--max-tokens", "expected 1"),
    ({"served_model_name": ""}, "--served-model-name", "expected a model name"),
])  # fmt: skip
def test_bad_settings_name_the_option(options: dict[str, Any], source: str, problem: str) -> None:
    kwargs: dict[str, Any] = {"model_id": NAME, "served_model_name": NAME, **options}
    with pytest.raises(InvalidInput) as exc:
        endpoint_settings("http://127.0.0.1:8000/v1", **kwargs)
    assert exc.value.source == source and problem in exc.value.problem


def test_requests_default_to_four_per_slot() -> None:
    settings = endpoint_settings("http://h/v1", model_id=NAME, served_model_name=NAME, concurrency=3)
    assert (settings.concurrency, settings.requests) == (3, 12)
    assert endpoint_settings("http://h/v1", model_id=NAME, served_model_name=NAME).requests is None


@pytest.mark.parametrize(("argv", "line"), [
    (["--endpoint", "localhost:8000"], "error: --endpoint: 'localhost:8000': expected an http:// or https:// URL"),
    (["--endpoint", "http://h/v1", "--concurrency", "0"], "error: command line: options: argument --concurrency: 0 is"),
    (["--endpoint", "http://h/v1", "--concurrency", "4", "--requests", "2"], "error: --requests: 2: expected at least"),
    (["--endpoint", "http://h/v1", "--requests", "2"], "error: --requests: 2: needs --concurrency"),
    (["--endpoint", "http://h/v1", "--timeout", "nan"], "error: command line: options: argument --timeout: nan is"),
    (["--endpoint", "http://h/v1", "--timeout", "soon"], "error: command line: options: argument --timeout: 'soon'"),
    (["--endpoint", "http://h/v1", "--tiny"], "error: command line: options: argument --tiny: not allowed with"),
    (["--endpoint", "http://h/v1", "--precision", "bf16"], "error: --precision: options: does not apply to --endpoint"),
    (["--endpoint", "http://h/v1", "--new-tokens", "3"], "error: --new-tokens: options: does not apply to --endpoint"),
    (["--tiny", "--concurrency", "2"], "error: --concurrency: options: needs --endpoint"),
    (["--served-model-name", "x"], "error: --served-model-name: options: needs --endpoint"),
    (["--endpoint", "http://h/v1", "--model", "no-such-model"], "error: --model: model: 'no-such-model' is not a known"),
])  # fmt: skip
def test_bad_options_are_exit_2_with_one_line(argv: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smoke", *argv, "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing on stdout, nothing sent
    assert len(err.splitlines()) == 1 and err.startswith(line), err


# ---------------------------------------------------------------- reasons


@pytest.mark.parametrize(("status", "body", "text", "reason"), [
    (500, {"message": "CUDA out of memory", "type": "InternalServerError"}, "", "HTTP 500: CUDA out of memory"),
    (400, {"error": {"message": "too many images"}}, "", "HTTP 400: too many images"),
    (404, {"detail": "Not Found"}, "", "HTTP 404: Not Found"),
    (422, {"detail": [{"loc": ["body"], "msg": "bad"}]}, "", "HTTP 422: [{'loc': ['body'], 'msg': 'bad'}]"),
    (502, None, "<html>\n Bad   Gateway </html>", "HTTP 502: <html> Bad Gateway </html>"),
    (503, None, "", "HTTP 503: (no message)"),
    (500, "plain words", "", "HTTP 500: plain words"),
])  # fmt: skip
def test_http_error_reason_finds_the_servers_message(status: int, body: object, text: str, reason: str) -> None:
    assert http_error_reason(status, body, text) == reason


def test_one_line_flattens_escapes_and_cuts() -> None:
    assert one_line("a\n  b\tc") == "a b c"
    assert one_line("x\x1b[31my") == "x\\x1b[31my"
    assert one_line("z" * 500, 10) == "zzzzzzz..."


def test_served_name_problem_lists_what_the_server_has() -> None:
    assert served_name_problem([NAME, "other"], NAME) is None
    assert served_name_problem(["glm-4v"], NAME) == (
        "does not serve 'autoglm-phone-9b'; /v1/models lists 'glm-4v' (--served-model-name proves another name)"
    )
    assert "lists no models" in (served_name_problem([], NAME) or "")


@pytest.mark.parametrize(("text", "problem"), [
    ("<html>", "not JSON"), ('{"foo": 1}', "not a model list"), ('{"data": [{"name": "x"}]}', "not a model list"),
    ("[1]", "not a model list"),
])  # fmt: skip
def test_parse_models_refuses_what_is_not_a_model_list(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_models(text)


def test_parse_models_and_the_engine_behind_them() -> None:
    body = json.dumps({"data": [{"id": NAME, "owned_by": "vllm"}, {"id": "b", "owned_by": "SGLang"}, {"id": "c"}]})
    owners = parse_models(body)
    assert owners == {NAME: "vllm", "b": "SGLang", "c": None}
    assert [engine_from_owner(o) for o in owners.values()] == ["vllm", "sglang", None]
    assert engine_from_owner("local") is None  # transformers serve names no engine


# ---------------------------------------------------------------- the report


def _settings(**changes: Any) -> Any:
    return endpoint_settings("http://127.0.0.1:8000/v1", model_id=NAME, served_model_name=NAME, **changes)


ANSWER = Answer(latency=1.5, ttft=0.25, last=1.25, tokens=21, counted_by="usage", prompt_tokens=3400, text="do(...)")


def test_endpoint_report_has_the_contracts_keys_in_order() -> None:
    load = load_summary([ANSWER, ANSWER], concurrency=2, wall_seconds=2.0)
    doc = endpoint_report(_settings(concurrency=2, requests=2), engine="vllm", answer=ANSWER, load=load).to_dict()
    assert list(doc)[: len(BASE_KEYS) + len(ENDPOINT_KEYS) + 1] == [*BASE_KEYS, *ENDPOINT_KEYS, "load"]
    assert (doc["ok"], doc["source"], doc["endpoint"], doc["served_model_name"], doc["engine"]) == (
        True, "endpoint", "http://127.0.0.1:8000/v1", NAME, "vllm")
    assert (doc["ttft_seconds"], doc["tokens_per_second"], doc["tokens_generated"]) == (0.25, 20.0, 21)
    assert doc["image"] == {"width": 1080, "height": 2400} and set(doc["load"]) >= LOAD_KEYS
    assert "error" not in doc


def test_a_failed_proof_keeps_the_keys_null_and_says_why() -> None:
    doc = endpoint_report(_settings(), engine=None, answer=None, error="cannot connect: refused").to_dict()
    assert (doc["ok"], doc["engine"], doc["ttft_seconds"], doc["error"]) == (False, None, None, "cannot connect: refused")
    assert "load" not in doc
    failed = Answer(latency=0.5, error="empty answer: the stream carried no text")
    doc = endpoint_report(_settings(), engine=None, answer=failed).to_dict()
    assert (doc["ok"], doc["tokens_generated"], doc["error"]) == (False, 0, "empty answer: the stream carried no text")


def test_load_errors_fail_the_proof() -> None:
    load = load_summary([ANSWER, Answer(latency=0.1, error="HTTP 503: busy")], concurrency=1, wall_seconds=1.0)
    report = endpoint_report(_settings(concurrency=1, requests=2), engine=None, answer=ANSWER, load=load)
    assert not report.ok
    assert report.error == "load probe: 1 of 2 requests failed; the first: HTTP 503: busy"


@pytest.mark.parametrize("report", [
    endpoint_report(_settings(precision="bf16", device="cuda"), engine="sglang", answer=ANSWER,
                    warnings=("--engine says vllm; the server's /v1/models says sglang",)),
    endpoint_report(_settings(concurrency=2), engine=None, answer=ANSWER,
                    load=load_summary([ANSWER, Answer(latency=0.1, error="x")], concurrency=2, wall_seconds=1.0)),
    endpoint_report(_settings(), engine=None, answer=None, error="no answer within 1 s (--timeout)"),
])  # fmt: skip
def test_endpoint_report_round_trips_exactly(report: SmokeReport) -> None:
    doc = json.loads(json.dumps(report.to_dict()))
    back = SmokeReport.from_dict(doc)
    assert back == report
    assert back.to_dict() == doc and list(back.to_dict()) == list(doc)


def test_endpoint_report_reads_as_an_endpoint_in_words() -> None:
    load = load_summary([ANSWER], concurrency=1, wall_seconds=1.5)
    text = format_report(endpoint_report(_settings(concurrency=1), engine="vllm", answer=ANSWER, load=load))
    lines = text.splitlines()
    assert lines[0] == "endpoint ok: http://127.0.0.1:8000/v1 serves 'autoglm-phone-9b' (vllm)"
    assert "first token 0.250 s, 21 tokens (usage) at 20.0 tok/s" in lines[1]
    assert lines[2].startswith("  load: 1 requests, 1 in flight: 0 errors, latency p50 1.500 s")


def test_neither_the_planner_nor_the_smoke_package_loads_the_client() -> None:
    host = Path(__file__).parent / "fixtures" / "hosts" / "linux-x86_64-a10g-driver535.json"
    code = (
        "import sys; import provision.smoke, provision.smoke.usecase; from provision.cli import main; "
        f"rc = main(['plan', '--host', {str(host)!r}, '--json']); "
        "loaded = sorted(m for m in ('openai', 'PIL', 'httpx', 'httpx2') if m in sys.modules); "
        "print(loaded, file=sys.stderr); sys.exit(rc if not loaded else 99)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- failures against real local servers


def _models_body(names: list[str]) -> bytes:
    return json.dumps({"object": "list", "data": [{"id": n, "object": "model", "owned_by": "test", "created": 0}
                                                  for n in names]}).encode()


def _chunk(delta: dict[str, Any], **extra: Any) -> bytes:
    doc = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": NAME,
           "choices": [{"index": 0, "delta": delta, "finish_reason": None}], **extra}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


class _Handler(BaseHTTPRequestHandler):
    """One behaviour per server: ``server.models`` to list, ``server.chat(handler)`` to answer a chat."""

    server: Any
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # keep pytest's output clean
        return

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, _models_body(self.server.models))
        else:
            self._send(404, b'{"detail": "Not Found"}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.chats += 1
            number = self.server.chats
        self.server.chat(self, number)

    def stream(self, parts: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for part in parts:
            self.wfile.write(part)
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.close_connection = True


def _error_500(h: _Handler, number: int) -> None:
    h._send(500, json.dumps({"error": {"message": "CUDA out of memory", "type": "InternalServerError"}}).encode())


def _empty(h: _Handler, number: int) -> None:
    h.stream([_chunk({"role": "assistant"}), _chunk({"content": ""}), _chunk({"content": "  \n"})])


def _answer_odd(h: _Handler, number: int) -> None:
    """Odd-numbered requests are answered, even ones get a 503 (a server that buckles under load)."""
    if number % 2:
        h.stream([_chunk({"role": "assistant"}), _chunk({"content": "do(action=\"Tap\", element=[500,300])"})])
    else:
        h._send(503, b'{"message": "server busy"}')


@pytest.fixture
def local_server() -> Iterator[Callable[..., str]]:
    """Start a ThreadingHTTPServer on 127.0.0.1; returns its base URL; stopped at the end."""
    servers: list[ThreadingHTTPServer] = []
    release = threading.Event()

    def start(*, models: list[str] | None = None, chat: Callable[[_Handler, int], None] = _error_500) -> str:
        server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.models, server.chat, server.chats, server.lock = [NAME] if models is None else models, chat, 0, \
            threading.Lock()
        server.release = release
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/v1"

    yield start
    release.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def _stall(h: _Handler, number: int) -> None:
    h.server.release.wait(30)


def _closed_port() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any] | None, str]:
    rc = main(["smoke", *argv])
    out, err = capsys.readouterr()
    return rc, json.loads(out) if out.strip() else None, err


@pytest.mark.parametrize(("setup", "extra", "what"), [
    ({"chat": _error_500}, [], "HTTP 500: CUDA out of memory"),
    ({"models": ["glm-4v", "qwen2-vl"]}, [],
     "does not serve 'autoglm-phone-9b'; /v1/models lists 'glm-4v', 'qwen2-vl' (--served-model-name proves another "
     "name)"),
    ({"chat": _stall}, ["--timeout", "0.5"], "no answer within 0.5 s (--timeout)"),
    ({"chat": _empty}, [], "empty answer: the stream carried no text"),
    ({"chat": _answer_odd}, ["--concurrency", "2", "--requests", "3"],  # the probe's requests are #2, #3, #4
     "load probe: 2 of 3 requests failed; the first: HTTP 503: server busy"),
])  # fmt: skip
def test_a_failing_server_is_ok_false_exit_1_and_one_line(
    local_server: Callable[..., str], setup: dict[str, Any], extra: list[str], what: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = local_server(**setup)
    start = time.perf_counter()
    rc, doc, err = _run(["--endpoint", url, "--json", *extra], capsys)
    assert rc == 1
    assert err.splitlines() == [f"error: {url}: {what}"] and "Traceback" not in err
    assert doc is not None and doc["ok"] is False and doc["error"] == what and doc["source"] == "endpoint"
    assert list(doc)[: len(BASE_KEYS) + len(ENDPOINT_KEYS)] == [*BASE_KEYS, *ENDPOINT_KEYS]
    assert time.perf_counter() - start < 10  # a stalled server ends at --timeout, not at its leisure


def test_the_load_probe_sends_every_request(local_server: Callable[..., str], capsys: pytest.CaptureFixture[str]) -> None:
    url = local_server(chat=_answer_odd)
    _, doc, _ = _run(["--endpoint", url, "--json", "--concurrency", "2", "--requests", "5"], capsys)
    assert doc is not None
    load = doc["load"]  # the agent's request was #1; the probe's #2-#6, of which the even three failed
    assert (load["requests"], load["errors"], load["output_tokens"]) == (5, 3, 2)
    assert load["latency_p50_seconds"] is not None  # over the two that were answered


def test_nothing_listening_through_python_m_provision(tmp_path: Path) -> None:
    url = _closed_port()
    report = tmp_path / "endpoint.json"
    proc = subprocess.run(
        [sys.executable, "-m", "provision", "smoke", "--endpoint", url, "--json", "--timeout", "5", "-o", str(report)],
        capture_output=True, text=True, check=False, cwd=Path(__file__).parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {url}: GET /models: cannot connect: "), proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["error"].startswith("GET /models: cannot connect")
    assert json.loads(report.read_text()) == doc  # -o writes the same failed report


def test_a_wrong_base_path_says_where_the_api_lives(local_server: Callable[..., str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    url = local_server().removesuffix("/v1") + "/api"
    rc, _, err = _run(["--endpoint", url], capsys)
    assert rc == 1
    assert err == f"error: {url}: GET /models: HTTP 404: Not Found (the URL should be the server's base, ending in /v1)\n"


# ---------------------------------------------------------------- live: transformers serve with the tiny model


def _get(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``transformers serve`` of the tiny glm4v as ``autoglm-phone-9b`` on 127.0.0.1; its base URL."""
    python = os.environ.get(SERVE_PYTHON_ENV)
    if not python:
        pytest.skip(f"{SERVE_PYTHON_ENV} is not set: no Python with transformers[serving] and torchvision to serve "
                    "the tiny model (nox -s serve sets it)")
    for name in ("torch", "transformers", "tokenizers"):
        pytest.importorskip(name)
    from provision.data.catalog import load_catalog
    from provision.smoke.tiny import build_tiny

    spec = load_catalog().get(NAME)
    tiny = build_tiny(spec.config, model_id=NAME, root=tmp_path_factory.mktemp("tiny"))
    run = tmp_path_factory.mktemp("serve")
    (run / NAME).symlink_to(tiny.path, target_is_directory=True)  # the relative path is the served name
    port = free_port()
    log = (run / "serve.log").open("w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.Popen(
        [python, "-m", "transformers.cli.transformers", "serve", NAME, "--host", "127.0.0.1", "--port", str(port),
         "--device", "cpu", "--dtype", "float32"], cwd=run, stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", deadline_s=240, running=lambda: proc.poll() is None)
        except NotHealthy as exc:
            why = f"transformers serve exited {proc.returncode}" if exc.exited else "transformers serve not healthy in 240 s"
            pytest.fail(f"{why}:\n{(run / 'serve.log').read_text()[-3000:]}")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log.close()


@pytest.mark.slow
def test_the_server_lists_the_pinned_served_name(served: str) -> None:
    assert NAME in [m["id"] for m in _get(f"{served}/models")["data"]]


@pytest.mark.slow
def test_live_proof_streams_an_answer_to_the_agents_request(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, err = _run(["--endpoint", served, "--json", "--max-tokens", "12", "--engine", "transformers"], capsys)
    assert rc == 0, err
    assert doc is not None and doc["ok"] is True and "error" not in doc and "load" not in doc
    assert list(doc)[: len(BASE_KEYS) + len(ENDPOINT_KEYS)] == [*BASE_KEYS, *ENDPOINT_KEYS]
    assert (doc["source"], doc["endpoint"], doc["served_model_name"], doc["engine"]) == (
        "endpoint", served, NAME, "transformers")
    assert doc["image"] == {"width": 1080, "height": 2400}
    assert 0 < doc["tokens_generated"] <= 12 and doc["tokens_counted_by"] == "usage"
    assert doc["prompt_tokens"] > 1000  # the screenshot's visual tokens reached the model
    assert 0 < doc["ttft_seconds"] <= doc["latency_seconds"] and doc["tokens_per_second"] > 0
    assert doc["text"]
    assert err.startswith(f"endpoint ok: {served} serves")  # --json: the human lines go to stderr


@pytest.mark.slow
def test_live_load_probe(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, err = _run(["--endpoint", served, "--json", "--max-tokens", "8", "--concurrency", "2", "--requests", "4"],
                        capsys)
    assert rc == 0, err
    assert doc is not None
    load = doc["load"]
    assert set(load) >= LOAD_KEYS
    assert (load["concurrency"], load["requests"], load["errors"]) == (2, 4, 0)
    assert 0 < load["latency_p50_seconds"] <= load["latency_p95_seconds"]
    assert load["requests_per_second"] > 0 and load["output_tokens_per_second"] > 0
    assert load["output_tokens"] <= 4 * 8


@pytest.mark.slow
def test_live_human_output_and_a_wrong_name(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smoke", "--endpoint", served, "--max-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"endpoint ok: {served} serves 'autoglm-phone-9b' (engine unknown)\n")
    assert "agent request (1080x2400 screenshot): first token" in out
    rc, doc, err = _run(["--endpoint", served, "--served-model-name", "autoglm-phone-9b-multilingual", "--json"], capsys)
    assert rc == 1 and doc is not None and doc["ok"] is False
    assert err == (f"error: {served}: does not serve 'autoglm-phone-9b-multilingual'; /v1/models lists "
                   "'autoglm-phone-9b' (--served-model-name proves another name)\n")


def test_a_lock_names_the_model_precision_device_and_engine(
    local_server: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h100 = Path(__file__).parent / "fixtures" / "hosts" / "linux-x86_64-h100-80gb-driver580.json"
    assert main(["plan", "--host", str(h100), "--engine", "vllm", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    lock = tmp_path / "provision.lock.json"
    lock.write_text(json.dumps({"schema": "provision.lock/v1", "files": {}, "plan": plan}))
    url = local_server(chat=_error_500)
    rc, doc, _ = _run(["--endpoint", url, "--lock", str(lock), "--json"], capsys)
    assert rc == 1 and doc is not None
    assert (doc["model"], doc["served_model_name"], doc["engine"]) == (NAME, plan["serve"]["served_model_name"], "vllm")
    assert (doc["precision"], doc["device"]) == (plan["precision"], plan["device"])
    rc, doc, _ = _run(["--endpoint", url, "--lock", str(lock), "--engine", "sglang", "--json"], capsys)
    assert doc is not None and doc["engine"] == "sglang"  # the option wins over the plan
