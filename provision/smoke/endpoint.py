"""Prove a running OpenAI-compatible server with the phone agent's own request, then load it.

What Open-AutoGLM's agent sends (shared/notes/serving.md): ``GET /v1/models`` must list the
served name; then one streamed chat completion with its sampling (temperature 0.0, top_p 0.85,
frequency_penalty 0.2), a system prompt and one phone screenshot as a ``data:image/png`` URL.
``max_tokens`` is bounded (``--max-tokens``, default 64) instead of the agent's 3000: the model
usually stops long before, and a random-weight stand-in never does, so the bound keeps the
proof short without changing what is proved (the server accepted the request and streamed an
answer). With ``concurrency`` the same request is sent ``requests`` times, at most
``concurrency`` in flight.

The functional core (settings, screenshot, messages, reasons, percentiles, the report) is pure;
``prove_endpoint`` is the thin shell that talks HTTP through the ``openai`` client, imported
there only (the planner never loads it). Whatever the server does wrong (nothing listening,
another served name, an HTTP error, silence past ``timeout``, an empty answer) becomes a report
with ``ok`` false and a one-line ``error``, never an exception.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from provision.errors import InvalidInput, SmokeError
from provision.smoke.report import ENDPOINT_SOURCE, SmokeReport

__all__ = [
    "AGENT_SAMPLING",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_TIMEOUT",
    "SCREEN_SIZE",
    "Answer",
    "EndpointSettings",
    "agent_messages",
    "base_url",
    "decode_rate",
    "endpoint_report",
    "endpoint_settings",
    "engine_from_owner",
    "http_error_reason",
    "load_summary",
    "one_line",
    "parse_models",
    "percentile",
    "phone_screenshot",
    "prove_endpoint",
    "served_name_problem",
]

#: Open-AutoGLM's sampling (phone_agent/model/client.py); its max_tokens is 3000.
AGENT_SAMPLING: Mapping[str, float] = {"temperature": 0.0, "top_p": 0.85, "frequency_penalty": 0.2}
DEFAULT_MAX_TOKENS = 64
#: Seconds to wait for a connection and for each read (the first byte, then every chunk).
DEFAULT_TIMEOUT = 120.0
SCREEN_SIZE = (1080, 2400)
MAX_CONCURRENCY = 1024
MAX_REQUESTS = 100_000
MAX_TIMEOUT = 3600.0
#: What ``owned_by`` in ``/v1/models`` says for the engines that name themselves there.
_OWNERS = {"vllm": "vllm", "sglang": "sglang"}
_REASON_CHARS = 300

SYSTEM_PROMPT = (
    "You operate an Android phone for the user. Each turn you get the task and a screenshot of the "
    "current screen. Think briefly, then answer with exactly one action: do(action=\"Tap\", "
    "element=[x,y]) with x and y from 0 to 999 relative to the screen, do(action=\"Type\", text=\"...\"), "
    "do(action=\"Back\"), or finish(message=\"...\") when the task is done."
)
TASK = "Task: turn on Bluetooth. What is your next action?"


# ---------------------------------------------------------------------------
# Settings: validated once, before anything is sent


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSettings:
    """One endpoint proof; ``engine`` None means "as far as the server tells"."""

    base_url: str
    model_id: str
    served_model_name: str
    engine: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int | None = None
    requests: int | None = None
    precision: str = "unknown"
    device: str = "unknown"


def base_url(text: str) -> str:
    """The client's base URL: ``http(s)://host[:port][/path]``, ``/v1`` added to a bare server.

    :raises InvalidInput: not an http(s) URL with a host, or it carries credentials, a query or a fragment.
    """

    def bad(problem: str) -> InvalidInput:
        return InvalidInput("--endpoint", one_line(repr(text)), problem)

    if not text or any(c.isspace() or not c.isprintable() for c in text):
        raise bad("expected a URL such as http://127.0.0.1:8000/v1")
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise bad("the port is not a number from 0 to 65535") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad("expected an http:// or https:// URL with a host, such as http://127.0.0.1:8000/v1")
    if parts.username is not None or parts.query or parts.fragment:
        raise bad("give the server's base URL only: no user, query or fragment")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def endpoint_settings(
    url: str,
    *,
    model_id: str,
    served_model_name: str,
    engine: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int | None = None,
    requests: int | None = None,
    precision: str | None = None,
    device: str | None = None,
) -> EndpointSettings:
    """Check every option before a request goes out; ``requests`` defaults to 4 x ``concurrency``.

    :raises InvalidInput: naming the option that is wrong.
    """
    if not served_model_name or len(served_model_name) > 256 or not served_model_name.isprintable():
        raise InvalidInput("--served-model-name", one_line(repr(served_model_name)), "expected a model name")
    if not 1 <= max_tokens <= 1_000_000:
        raise InvalidInput("--max-tokens", str(max_tokens), "expected 1 to 1000000")
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise InvalidInput("--timeout", str(timeout), f"expected seconds above 0, at most {MAX_TIMEOUT:.0f}")
    if requests is not None and concurrency is None:
        raise InvalidInput("--requests", str(requests), "needs --concurrency (the load probe's requests in flight)")
    if concurrency is not None:
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise InvalidInput("--concurrency", str(concurrency), f"expected 1 to {MAX_CONCURRENCY}")
        requests = 4 * concurrency if requests is None else requests
        if not concurrency <= requests <= MAX_REQUESTS:
            raise InvalidInput("--requests", str(requests),
                               f"expected at least --concurrency ({concurrency}) and at most {MAX_REQUESTS}")
    return EndpointSettings(base_url=base_url(url), model_id=model_id, served_model_name=served_model_name,
                            engine=engine, max_tokens=max_tokens, timeout=timeout, concurrency=concurrency,
                            requests=requests, precision=precision or "unknown", device=device or "unknown")


# ---------------------------------------------------------------------------
# The request: a phone screenshot and the agent's messages


def phone_screenshot(size: tuple[int, int] = SCREEN_SIZE) -> bytes:
    """A phone settings screen as PNG bytes: status bar, title, search field, rows, navigation bar.

    Drawn, not loaded, so the request needs no files; the same Pillow gives the same bytes.
    """
    from PIL import Image, ImageDraw

    width, height = size
    unit = width / 1080  # everything is laid out for 1080 px wide and scaled
    image = Image.new("RGB", size, (248, 248, 248))
    draw = ImageDraw.Draw(image)
    big, small = _font(round(56 * unit)), _font(round(40 * unit))
    bar = round(96 * unit)
    draw.rectangle((0, 0, width, bar), fill=(32, 33, 36))
    draw.text((round(40 * unit), round(24 * unit)), "9:41", fill=(255, 255, 255), font=small)
    draw.rectangle((width - round(130 * unit), round(30 * unit), width - round(50 * unit), round(66 * unit)),
                   outline=(255, 255, 255), width=3)
    draw.rectangle((width - round(126 * unit), round(34 * unit), width - round(80 * unit), round(62 * unit)),
                   fill=(255, 255, 255))
    draw.rectangle((0, bar, width, bar + round(168 * unit)), fill=(25, 118, 210))
    draw.text((round(48 * unit), bar + round(52 * unit)), "Settings", fill=(255, 255, 255), font=big)
    top = bar + round(216 * unit)
    draw.rounded_rectangle((round(40 * unit), top, width - round(40 * unit), top + round(120 * unit)),
                           radius=round(60 * unit), fill=(232, 234, 237))
    draw.text((round(110 * unit), top + round(38 * unit)), "Search settings", fill=(95, 99, 104), font=small)
    row = round(190 * unit)
    rows = ("Wi-Fi", "Bluetooth", "Display", "Battery", "Notifications", "Apps", "Storage", "About phone")
    for i, label in enumerate(rows):
        y = top + round(180 * unit) + i * row
        draw.ellipse((round(48 * unit), y + round(45 * unit), round(148 * unit), y + round(145 * unit)),
                     fill=((60 + 25 * i) % 256, (140 + 40 * i) % 256, (200 + 15 * i) % 256))
        draw.text((round(190 * unit), y + round(62 * unit)), label, fill=(32, 33, 36), font=big)
        if label in ("Wi-Fi", "Bluetooth"):  # toggles: Wi-Fi on, Bluetooth off
            on = label == "Wi-Fi"
            x = width - round(200 * unit)
            draw.rounded_rectangle((x, y + round(65 * unit), x + round(130 * unit), y + round(125 * unit)),
                                   radius=round(30 * unit), fill=(25, 118, 210) if on else (189, 193, 198))
            knob = x + (round(70 * unit) if on else 0)
            draw.ellipse((knob, y + round(65 * unit), knob + round(60 * unit), y + round(125 * unit)),
                         fill=(255, 255, 255))
        draw.line((round(190 * unit), y + row - 1, width, y + row - 1), fill=(218, 220, 224), width=2)
    nav = height - round(120 * unit)
    draw.rectangle((0, nav, width, height), fill=(32, 33, 36))
    mid = nav + round(60 * unit)
    r = round(26 * unit)
    draw.polygon([(width // 4 - r, mid), (width // 4 + r, mid - r), (width // 4 + r, mid + r)], fill=(255, 255, 255))
    draw.ellipse((width // 2 - r, mid - r, width // 2 + r, mid + r), outline=(255, 255, 255), width=4)
    draw.rectangle((3 * width // 4 - r, mid - r, 3 * width // 4 + r, mid + r), outline=(255, 255, 255), width=4)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _font(size: int) -> Any:
    """Pillow's bundled font at ``size`` (10.1+ with FreeType), else its fixed bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1 takes no size
        return ImageFont.load_default()


def agent_messages(png: bytes) -> list[dict[str, Any]]:
    """The agent's message layout: a system prompt, then the screenshot and the task in one user turn."""
    url = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": TASK}]},
    ]


# ---------------------------------------------------------------------------
# Answers, reasons and numbers (pure)


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """One streamed request as the client saw it; ``error`` None means a non-empty answer came back.

    Times are seconds from sending: ``ttft`` to the first content delta, ``last`` to the last one,
    ``latency`` to the end of the stream (or to the failure).
    """

    latency: float
    ttft: float | None = None
    last: float | None = None
    tokens: int = 0
    counted_by: str = "chunks"
    prompt_tokens: int | None = None
    text: str = ""
    error: str | None = None


def decode_rate(answer: Answer) -> float:
    """Tokens per second after the first: (tokens - 1) / (last - first content delta).

    A server that sends the whole answer in one chunk leaves no decode interval; then it is
    tokens over the whole latency.
    """
    if answer.ttft is not None and answer.last is not None and answer.tokens > 1 and answer.last > answer.ttft:
        return (answer.tokens - 1) / (answer.last - answer.ttft)
    return answer.tokens / answer.latency if answer.latency > 0 else 0.0


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), interpolated linearly between ranks; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def load_summary(answers: Sequence[Answer], *, concurrency: int, wall_seconds: float) -> dict[str, Any]:
    """The contract's ``load`` object: latency over the answered requests, rates over the probe's wall time."""
    good = [a for a in answers if a.error is None]
    failed = [a for a in answers if a.error is not None]
    tokens = sum(a.tokens for a in good)
    latencies = [a.latency for a in good]
    ttfts = [a.ttft for a in good if a.ttft is not None]

    def per_second(count: int) -> float:
        return round(count / wall_seconds, 3) if wall_seconds > 0 else 0.0

    out: dict[str, Any] = {
        "concurrency": concurrency,
        "requests": len(answers),
        "errors": len(failed),
        "latency_p50_seconds": _r(percentile(latencies, 50)),
        "latency_p95_seconds": _r(percentile(latencies, 95)),
        "requests_per_second": per_second(len(good)),
        "output_tokens_per_second": per_second(tokens),
        "output_tokens": tokens,
        "ttft_p50_seconds": _r(percentile(ttfts, 50)),
        "ttft_p95_seconds": _r(percentile(ttfts, 95)),
        "wall_seconds": round(wall_seconds, 3),
    }
    if failed:
        out["first_error"] = failed[0].error
    return out


def one_line(text: str, limit: int = _REASON_CHARS) -> str:
    """Whitespace runs to one space, control characters escaped, cut to ``limit`` characters."""
    flat = " ".join(text.split())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def http_error_reason(status: int, body: object, text: str) -> str:
    """``HTTP <status>: <the server's message>``, found where OpenAI, vLLM, SGLang and FastAPI put it."""
    message: object = None
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            message = inner.get("message") or inner.get("detail")
        elif isinstance(inner, str):
            message = inner
        message = message or body.get("message") or body.get("detail")
    elif isinstance(body, str):
        message = body
    if not message:
        message = text.strip() or "(no message)"
    return one_line(f"HTTP {status}: " + (message if isinstance(message, str) else repr(message)))


def parse_models(text: str) -> dict[str, object]:
    """A ``/v1/models`` body as {id: owned_by} (``owned_by`` None where absent).

    :raises ValueError: not JSON, or not ``{"data": [{"id": ...}, ...]}``; the message says which.
    """
    try:
        body = json.loads(text)
    except ValueError:
        raise ValueError(f"the answer is not JSON: {one_line(text, 80)!r}") from None
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, list) or not all(isinstance(m, Mapping) and isinstance(m.get("id"), str) for m in data):
        raise ValueError(f"not a model list (expected {{\"data\": [{{\"id\": ...}}]}}): {one_line(text, 80)!r}")
    return {m["id"]: m.get("owned_by") for m in data}


def served_name_problem(listed: Sequence[str], wanted: str) -> str | None:
    """Why ``/v1/models`` does not prove the served name, or None when it lists it."""
    if wanted in listed:
        return None
    names = ", ".join(repr(n) for n in listed) if listed else "no models"
    return f"does not serve {wanted!r}; /v1/models lists {names} (--served-model-name proves another name)"


def engine_from_owner(owned_by: object) -> str | None:
    """The engine a ``/v1/models`` entry names as its owner (vLLM and SGLang do; others say nothing usable)."""
    return _OWNERS.get(owned_by.lower()) if isinstance(owned_by, str) else None


def endpoint_report(
    settings: EndpointSettings,
    *,
    engine: str | None,
    answer: Answer | None,
    load: dict[str, Any] | None = None,
    error: str | None = None,
    warnings: Sequence[str] = (),
) -> SmokeReport:
    """The endpoint proof as a smoke report: ok only with an answer and a load probe without errors.

    Nothing is loaded here, so ``load_seconds`` and ``peak_memory_bytes`` are 0 (the server's
    memory is its own); precision and device are the plan's when given, else "unknown".
    """
    if error is None and answer is not None and answer.error is not None:
        error = answer.error
    if error is None and load is not None and load["errors"]:
        error = f"load probe: {load['errors']} of {load['requests']} requests failed; the first: {load['first_error']}"
    answered = answer is not None and answer.error is None
    return SmokeReport(
        ok=error is None, model=settings.model_id, source=ENDPOINT_SOURCE, precision=settings.precision,
        device=settings.device, load_seconds=0.0, peak_memory_bytes=0, estimated_memory_bytes=None,
        tokens_generated=answer.tokens if answer and answered else 0,
        tokens_per_second=round(decode_rate(answer), 3) if answer and answered else 0.0,
        prompt_tokens=(answer.prompt_tokens or 0) if answer else 0,
        endpoint=settings.base_url, served_model_name=settings.served_model_name, engine=engine,
        ttft_seconds=_r(answer.ttft) if answer and answered else None,
        latency_seconds=_r(answer.latency) if answer and answered else None,
        tokens_counted_by=answer.counted_by if answer and answered else None,
        image={"width": SCREEN_SIZE[0], "height": SCREEN_SIZE[1]}, load=load,
        text=answer.text[:200] if answer and answered else None, error=error, warnings=tuple(warnings),
    )  # fmt: skip


# ---------------------------------------------------------------------------
# The shell: HTTP through the openai client


class _Failed(Exception):
    """The server failed the proof; ``str()`` is the one-line reason."""


def prove_endpoint(settings: EndpointSettings) -> SmokeReport:
    """List the models, send the agent's request, then the load probe when asked.

    :raises SmokeError: the openai client or Pillow is not installed (nothing was sent).
    """
    try:
        import openai
        import PIL  # noqa: F401 - the screenshot needs it; checked before anything is sent
    except ImportError as exc:
        raise SmokeError(f"--endpoint needs the openai client and Pillow ({exc}); "
                         "install them with: pip install 'provision[endpoint]'") from None
    client = openai.OpenAI(base_url=settings.base_url, api_key="EMPTY", timeout=settings.timeout, max_retries=0)
    engine, warnings = settings.engine, []
    try:
        try:
            owners = _served_models(client, settings)
        except _Failed as exc:
            return endpoint_report(settings, engine=engine, answer=None, error=str(exc))
        told = engine_from_owner(owners.get(settings.served_model_name))
        if engine is None:
            engine = told
        elif told is not None and told != engine:
            warnings.append(f"--engine says {engine}; the server's /v1/models says {told}")
        messages = agent_messages(phone_screenshot())
        answer = _ask(client, settings, messages)
        load = None
        if answer.error is None and settings.concurrency is not None:
            load = _load_probe(client, settings, messages, concurrency=settings.concurrency,
                               requests=settings.requests or settings.concurrency)
        return endpoint_report(settings, engine=engine, answer=answer, load=load, warnings=warnings)
    finally:
        client.close()


def _failure(exc: BaseException, settings: EndpointSettings) -> str:
    """One line for what the client raised: a timeout, no connection, an HTTP status, or the library's words."""
    import openai

    if isinstance(exc, openai.APITimeoutError) or "timeout" in type(exc).__name__.lower():
        return f"no answer within {settings.timeout:g} s (--timeout)"
    if isinstance(exc, openai.APIStatusError):
        return http_error_reason(exc.status_code, exc.body, _response_text(exc))
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, openai.APIConnectionError):
        return one_line(f"cannot connect: {cause or exc}")
    return one_line(f"{type(exc).__name__}: {exc}")


def _response_text(exc: Any) -> str:
    try:
        return str(exc.response.text)
    except Exception:  # a body that cannot be read leaves the status alone
        return ""


def _guarded(call: Callable[[], Any], settings: EndpointSettings) -> Any:
    """Run one client call; the client's and its HTTP layer's errors become ``_Failed``.

    The HTTP layer is httpx (openai 1.x) or httpx2 (3.x) and mid-stream errors may arrive
    unwrapped, so its exceptions are told by their package; anything else is a bug and is raised.
    """
    import openai

    try:
        return call()
    except (openai.OpenAIError, OSError, ValueError) as exc:  # ValueError: a body that is not the JSON promised
        raise _Failed(_failure(exc, settings)) from None
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore", "h11"):
            raise
        raise _Failed(_failure(exc, settings)) from None


def _served_models(client: Any, settings: EndpointSettings) -> dict[str, object]:
    """``/v1/models`` as {id: owned_by}; a missing served name is a failure listing what is there.

    Read raw and parsed here: the client's own parsing fails obscurely on a body that is not a model list.
    """
    try:
        raw = _guarded(client.models.with_raw_response.list, settings)
    except _Failed as exc:
        hint = " (the URL should be the server's base, ending in /v1)" if str(exc).startswith("HTTP 404") else ""
        raise _Failed(f"GET /models: {exc}{hint}") from None
    try:
        owners = parse_models(raw.text)
    except ValueError as exc:
        raise _Failed(f"GET /models: {exc}") from None
    problem = served_name_problem(list(owners), settings.served_model_name)
    if problem is not None:
        raise _Failed(problem)
    return owners


def _ask(client: Any, settings: EndpointSettings, messages: list[dict[str, Any]]) -> Answer:
    """One streamed agent request, timed from sending; every failure is an ``Answer`` with ``error``."""
    start = time.perf_counter()
    ttft = last = None
    pieces: list[str] = []
    usage: Any = None
    stream: Any = None
    try:
        stream = _guarded(lambda: client.chat.completions.create(
            model=settings.served_model_name, messages=messages, stream=True, max_tokens=settings.max_tokens,
            stream_options={"include_usage": True}, **AGENT_SAMPLING), settings)
        chunks = iter(stream)
        while (chunk := _guarded(lambda: next(chunks, None), settings)) is not None:
            usage = getattr(chunk, "usage", None) or usage
            content = "".join(c.delta.content or "" for c in chunk.choices or () if c.delta is not None)
            if content:
                now = time.perf_counter() - start
                ttft = now if ttft is None else ttft
                last = now
                pieces.append(content)
    except _Failed as exc:
        return Answer(latency=time.perf_counter() - start, error=str(exc))
    finally:
        if stream is not None:  # a failed stream gives its connection back; one already gone is fine
            with contextlib.suppress(_Failed):
                _guarded(stream.close, settings)
    latency = time.perf_counter() - start
    text = "".join(pieces)
    counted = getattr(usage, "completion_tokens", None)
    answer = Answer(latency=latency, ttft=ttft, last=last, tokens=counted if counted is not None else len(pieces),
                    counted_by="usage" if counted is not None else "chunks",
                    prompt_tokens=getattr(usage, "prompt_tokens", None), text=text)
    if not text.strip():
        return Answer(latency=latency, error="empty answer: the stream carried no text")
    return answer


def _load_probe(client: Any, settings: EndpointSettings, messages: list[dict[str, Any]], *, concurrency: int,
                requests: int) -> dict[str, Any]:
    """``requests`` copies of the agent's request with at most ``concurrency`` in flight, in threads."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="provision-load") as pool:
        answers = list(pool.map(lambda _: _ask(client, settings, messages), range(requests)))
    return load_summary(answers, concurrency=concurrency, wall_seconds=time.perf_counter() - start)
