"""The smoke report: what one run measured, as ``provision.smoke/v1`` and as a few human lines.

Kept apart from the loading code so the CLI, the build step and the benchmarks can read and
print reports without importing anything heavy. ``SmokeReport.from_dict`` is the exact inverse
of ``to_dict``: the build step reads the report the venv's smoke test printed back into one.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any

from provision.common.fields import Fields
from provision.vocab import SMOKE_SCHEMA

__all__ = [
    "ENDPOINT_SOURCE",
    "SMOKE_SCHEMA",
    "SmokeReport",
    "endpoint_lines",
    "estimate_dict",
    "format_report",
    "planner_estimate",
    "stack_versions",
]

#: The ``source`` of a report that proved a running server rather than a model loaded here.
ENDPOINT_SOURCE = "endpoint"


@dataclass(frozen=True, slots=True, kw_only=True)
class SmokeReport:
    """One smoke run. ``to_dict()`` is ``provision.smoke/v1`` plus optional detail keys.

    Memory on CUDA is the allocator's view (``torch.cuda.max_memory_allocated`` summed over
    the GPUs used) unless a key says otherwise; on CPU it is the growth of the process's
    peak resident set (VmHWM) over its size before loading.
    """

    model: str
    source: str
    precision: str
    device: str
    load_seconds: float
    peak_memory_bytes: int
    estimated_memory_bytes: int | None
    tokens_generated: int
    tokens_per_second: float
    ok: bool = True
    stand_in_for: str | None = None
    model_path: str | None = None
    gpus: tuple[int, ...] = ()
    context_tokens: int = 0
    prompt_tokens: int = 0
    weights_bytes: int | None = None
    generate_peak_bytes: int | None = None
    per_gpu_peak_bytes: dict[str, int] | None = None
    reserved_peak_bytes: int | None = None
    nvml_used_delta_bytes: int | None = None
    cuda_free_delta_bytes: int | None = None
    estimate: dict[str, int] | None = None
    roofline: dict[str, float] | None = None
    image: dict[str, Any] | None = None
    text: str | None = None
    processor: str | None = None
    #: The ``transformers serve`` load flags the model was loaded with (``--dtype``, ``--quantization``).
    server_args: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # An endpoint proof (source "endpoint"): the server, and the agent's request as it answered it.
    endpoint: str | None = None
    served_model_name: str | None = None
    engine: str | None = None
    ttft_seconds: float | None = None
    latency_seconds: float | None = None
    tokens_counted_by: str | None = None  # "usage" (the server's count) or "chunks" (content deltas)
    load: dict[str, Any] | None = None
    error: str | None = None
    #: sha256 of the ``provision.lock.json`` the test ran against (``--lock``): the render this report belongs to.
    lock_sha256: str | None = None

    @property
    def label(self) -> str:
        """The model as a human should read it: a stand-in is never called the real model."""
        if self.source == "tiny":
            return f"{self.model} (tiny stand-in: random weights, not the real model)"
        if self.source == "synthetic":
            return f"{self.model} (synthetic: full-size architecture, random weights)"
        return self.model

    def to_dict(self) -> dict[str, Any]:
        """The contract's keys first, in its order; detail keys after them, left out when unset.

        An endpoint report carries the contract's endpoint keys right after, ``engine`` and the
        timings even when null (the server could not be told, or never answered).
        """
        out: dict[str, Any] = {
            "schema": SMOKE_SCHEMA,
            "ok": self.ok,
            "model": self.model,
            "source": self.source,
            "precision": self.precision,
            "device": self.device,
            "load_seconds": round(self.load_seconds, 3),
            "peak_memory_bytes": int(self.peak_memory_bytes),
            "estimated_memory_bytes": self.estimated_memory_bytes,
            "tokens_generated": int(self.tokens_generated),
            "tokens_per_second": round(self.tokens_per_second, 3),
        }
        served: dict[str, Any] = {
            "endpoint": self.endpoint,
            "served_model_name": self.served_model_name,
            "engine": self.engine,
            "ttft_seconds": _rounded(self.ttft_seconds),
            "latency_seconds": _rounded(self.latency_seconds),
            "tokens_counted_by": self.tokens_counted_by,
        }
        if self.source == ENDPOINT_SOURCE:
            out.update({**served, "image": self.image})
        extras: dict[str, Any] = {
            "load": self.load,
            "error": self.error,
            **served,
            "label": self.label,
            "stand_in_for": self.stand_in_for,
            "model_path": self.model_path,
            "gpus": list(self.gpus),
            "context_tokens": self.context_tokens,
            "prompt_tokens": self.prompt_tokens,
            "weights_bytes": self.weights_bytes,
            "generate_peak_bytes": self.generate_peak_bytes,
            "per_gpu_peak_bytes": self.per_gpu_peak_bytes,
            "reserved_peak_bytes": self.reserved_peak_bytes,
            "nvml_used_delta_bytes": self.nvml_used_delta_bytes,
            "cuda_free_delta_bytes": self.cuda_free_delta_bytes,
            "estimate": self.estimate,
            "roofline": self.roofline,
            "image": self.image,
            "text": self.text,
            "processor": self.processor,
            "server_args": list(self.server_args) or None,
            "versions": self.versions or None,
            "warnings": list(self.warnings) or None,
            "lock_sha256": self.lock_sha256,
        }
        out.update({k: v for k, v in extras.items() if v is not None and k not in out})
        return out

    @classmethod
    def from_dict(cls, data: object, source: str = "smoke report") -> SmokeReport:
        """Read ``to_dict``'s document back (``label`` is derived, unknown keys are ignored).

        :raises InvalidInput: naming ``source`` and the field that is missing or of the wrong type.
        """
        return _report_from_dict(data, source)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


_SIGNED = 2**62  # deltas (NVML, CUDA free memory) may be negative


def _opt_number(f: Fields, key: str) -> float | None:
    return None if f.data.get(key) is None else _number(f, key)


def _number(f: Fields, key: str) -> float:
    value = f.data.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise f.fail(key, "expected a finite number")
    return value


def _int(f: Fields, key: str) -> int:
    return f.int(key, minimum=-_SIGNED, maximum=_SIGNED)


def _opt_int(f: Fields, key: str) -> int | None:
    return f.int(key, required=False, minimum=-_SIGNED, maximum=_SIGNED)


def _str(f: Fields, key: str) -> str:
    return f.str(key)


def _mapping(f: Fields, key: str, read: Callable[[Fields, str], Any]) -> dict[str, Any] | None:
    """An optional object whose every value ``read`` accepts, copied as is."""
    sub = f.obj(key, required=False)
    return None if sub is None else {k: read(sub, k) for k in sub.data}


def _text(f: Fields, key: str) -> str | None:
    """Generated text may be empty, which ``Fields.str`` refuses."""
    value = f.data.get(key)
    if value is not None and not isinstance(value, str):
        raise f.fail(key, "expected a string")
    return value


def _report_from_dict(data: object, source: str) -> SmokeReport:
    f = Fields(data, source)
    if f.str("schema") != SMOKE_SCHEMA:
        raise f.fail("schema", f"expected {SMOKE_SCHEMA!r}")
    gpus = f.list("gpus", required=False)
    if any(not isinstance(g, int) or isinstance(g, bool) for g in gpus):
        raise f.fail("gpus", "expected GPU indices")
    image = f.obj("image", required=False)
    load = f.obj("load", required=False)
    return SmokeReport(
        ok=f.bool("ok"), model=f.str("model"), source=f.str("source"), precision=f.str("precision"),
        device=f.str("device"), load_seconds=_number(f, "load_seconds"), peak_memory_bytes=f.int("peak_memory_bytes"),
        estimated_memory_bytes=_opt_int(f, "estimated_memory_bytes"), tokens_generated=f.int("tokens_generated"),
        tokens_per_second=_number(f, "tokens_per_second"), stand_in_for=f.str("stand_in_for", required=False),
        model_path=f.str("model_path", required=False), gpus=tuple(gpus),
        context_tokens=f.int("context_tokens", required=False, default=0),
        prompt_tokens=f.int("prompt_tokens", required=False, default=0), weights_bytes=_opt_int(f, "weights_bytes"),
        generate_peak_bytes=_opt_int(f, "generate_peak_bytes"),
        per_gpu_peak_bytes=_mapping(f, "per_gpu_peak_bytes", _int),
        reserved_peak_bytes=_opt_int(f, "reserved_peak_bytes"),
        nvml_used_delta_bytes=_opt_int(f, "nvml_used_delta_bytes"),
        cuda_free_delta_bytes=_opt_int(f, "cuda_free_delta_bytes"), estimate=_mapping(f, "estimate", _int),
        roofline=_mapping(f, "roofline", _number), image=None if image is None else dict(image.data),
        text=_text(f, "text"), processor=f.str("processor", required=False),
        server_args=tuple(f.strs("server_args", required=False)),
        versions=_mapping(f, "versions", _str) or {}, warnings=tuple(f.strs("warnings", required=False)),
        endpoint=f.str("endpoint", required=False), served_model_name=f.str("served_model_name", required=False),
        engine=f.str("engine", required=False), ttft_seconds=_opt_number(f, "ttft_seconds"),
        latency_seconds=_opt_number(f, "latency_seconds"), tokens_counted_by=f.str("tokens_counted_by", required=False),
        load=None if load is None else dict(load.data), error=_text(f, "error"),
        lock_sha256=f.str("lock_sha256", required=False),
    )  # fmt: skip


def format_report(report: SmokeReport) -> str:
    """A few human lines for stderr; the stand-in status leads, so nobody mistakes it."""
    if report.source == ENDPOINT_SOURCE:
        return "\n".join(endpoint_lines(report))
    gb = 1e9
    where = report.device + (f" (GPU {', '.join(map(str, report.gpus))})" if report.gpus else "")
    lines = [
        f"smoke: {report.label}",
        f"  source {report.source}, {report.precision} on {where}, loaded in {report.load_seconds:.1f} s",
        f"  generated {report.tokens_generated} tokens at {report.tokens_per_second:.1f} tok/s "
        f"(prompt {report.prompt_tokens} tokens)",
    ]
    peak = f"  peak memory {report.peak_memory_bytes / gb:.2f} GB"
    if report.estimated_memory_bytes is not None:
        peak += f", estimated {report.estimated_memory_bytes / gb:.2f} GB"
    lines.append(peak)
    if report.processor or report.server_args:
        lines.append(f"  loaded as the server loads it: processor {report.processor or 'n/a'}, "
                     f"transformers serve {' '.join(report.server_args) or '(no load flags recorded)'}")
    if report.image is not None:
        lines.append(
            f"  image prompt: {report.image['image_tokens']} image tokens, {report.image['tokens_generated']} tokens generated"
        )
    if report.source != "weights":
        lines.append("  note: random weights; this proves the software stack, not the model's answers")
    lines.extend(f"  warning: {w}" for w in report.warnings)
    return "\n".join(lines)


def endpoint_lines(report: SmokeReport) -> list[str]:
    """An endpoint proof in words: the server and name, the agent's request, then the load probe."""
    engine = report.engine or "engine unknown"
    lines = [f"endpoint {'ok' if report.ok else 'FAILED'}: {report.endpoint} serves {report.served_model_name!r} ({engine})"]
    if report.error:
        lines.append(f"  error: {report.error}")
    if report.ttft_seconds is not None and report.latency_seconds is not None:
        size = f"{report.image['width']}x{report.image['height']} " if report.image else ""
        lines.append(f"  agent request ({size}screenshot): first token {report.ttft_seconds:.3f} s, "
                     f"{report.tokens_generated} tokens ({report.tokens_counted_by}) at "
                     f"{report.tokens_per_second:.1f} tok/s, {report.latency_seconds:.3f} s in all")
    if report.load:
        load = report.load
        p50, p95 = load.get("latency_p50_seconds"), load.get("latency_p95_seconds")
        lines.append(f"  load: {load['requests']} requests, {load['concurrency']} in flight: {load['errors']} errors, "
                     f"latency p50 {_seconds(p50)} p95 {_seconds(p95)}, {load['requests_per_second']:.2f} req/s, "
                     f"{load['output_tokens_per_second']:.1f} output tok/s")
    lines.extend(f"  warning: {w}" for w in report.warnings)
    return lines


def _seconds(value: object) -> str:
    return f"{value:.3f} s" if isinstance(value, (int, float)) else "n/a"


def stack_versions() -> dict[str, str]:
    """The versions that decide whether a load works, so a report says what it proved."""
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "accelerate", "bitsandbytes", "tokenizers", "huggingface_hub"):
        try:
            out[dist] = _dist_version(dist)
        except PackageNotFoundError:
            continue
    return out


def planner_estimate(config: Mapping[str, Any], precision: str, context: int, device: str, skip: Sequence[str]) -> Any:
    """provision.plan.memory's estimate for the folder actually loaded (tiny configs give tiny numbers)."""
    from provision.plan.memory import estimate_memory

    keep = list(skip) if skip else None
    return estimate_memory(dict(config), precision=precision, context_tokens=context, device=device, keep_16bit=keep)


def estimate_dict(estimate: Any) -> dict[str, int] | None:
    """The estimate's parts, plus ``peak_allocated`` where the estimator gives it."""
    if estimate is None:
        return None
    names = ("weights", "kv_cache", "activations", "overhead", "total", "peak_allocated")
    values = {k: getattr(estimate, k, None) for k in names}
    return {k: int(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)} or None
