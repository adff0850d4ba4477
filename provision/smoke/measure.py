"""Measuring a smoke run: process and GPU memory, decode speed, and the bandwidth roofline.

Each figure has one probe here, so the smoke run reads as steps rather than as repeated
``torch.cuda`` loops. On CPU the GPU probe covers no devices and every sum is zero; the
caller decides which figures a CPU report leaves out. torch is imported inside functions.
"""

from __future__ import annotations

import inspect
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Baseline",
    "GpuMemory",
    "decode_bytes_per_token",
    "decode_rate",
    "measure_copy_bandwidth",
    "nvml_used",
    "rss_peak_bytes",
    "take_baseline",
    "tensor_bytes",
    "timed_generate",
]


def _proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_peak_bytes() -> int:
    """The process's peak resident set: VmHWM on Linux, ru_maxrss elsewhere."""
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(raw) if sys.platform == "darwin" else int(raw) * 1024  # bytes on macOS, kB elsewhere


def _rss_now_bytes() -> int:
    now = _proc_status_bytes("VmRSS")
    return now if now is not None else rss_peak_bytes()


def nvml_used(gpus: Sequence[int]) -> int | None:
    """Device memory in use on ``gpus`` per NVML (every process, CUDA contexts included)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return sum(int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used) for i in gpus)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVMLError: no driver or no permission; the allocator view remains
        return None


def tensor_bytes(t: Any) -> int:
    """Bytes a tensor holds as stored (quantized tensors count their packed size)."""
    return int(t.numel()) * int(t.element_size())


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuMemory:
    """The CUDA allocator's view, summed over the GPUs a run uses (none on CPU)."""

    ids: tuple[int, ...] = ()

    def sync(self) -> None:
        """Wait for queued work, so a timestamp means the work is done."""
        if self.ids:
            import torch

            for i in self.ids:
                torch.cuda.synchronize(i)

    def reset_peaks(self) -> None:
        if self.ids:
            import torch

            for i in self.ids:
                torch.cuda.reset_peak_memory_stats(i)

    def _per_gpu(self, query: str) -> dict[int, int]:
        if not self.ids:
            return {}
        import torch

        probe = getattr(torch.cuda, query)
        return {i: int(probe(i)) for i in self.ids}

    def allocated(self) -> int:
        return sum(self._per_gpu("memory_allocated").values())

    def max_allocated(self) -> int:
        return sum(self._per_gpu("max_memory_allocated").values())

    def max_allocated_per_gpu(self) -> dict[str, int]:
        return {str(i): v for i, v in self._per_gpu("max_memory_allocated").items()}

    def max_reserved(self) -> int:
        return sum(self._per_gpu("max_memory_reserved").values())

    def free(self) -> int:
        """Free device memory per the driver (``mem_get_info``), which sees other processes too."""
        if not self.ids:
            return 0
        import torch

        return sum(torch.cuda.mem_get_info(i)[0] for i in self.ids)

    def empty_cache(self) -> None:
        if self.ids:
            import torch

            torch.cuda.empty_cache()


@dataclass(frozen=True, slots=True, kw_only=True)
class Baseline:
    """Memory before loading, so the report can give what the model added."""

    nvml_used: int | None
    cuda_free: int
    allocated: int
    rss: int


def take_baseline(gpu: GpuMemory) -> Baseline:
    """Read NVML before the CUDA context exists, then reset the allocator's peaks."""
    nvml = nvml_used(gpu.ids) if gpu.ids else None
    free = gpu.free()
    gpu.reset_peaks()
    return Baseline(nvml_used=nvml, cuda_free=free, allocated=gpu.allocated(), rss=_rss_now_bytes())


def decode_bytes_per_token(model: Any, config: Mapping[str, Any], context_tokens: int, kv_bytes: int = 2) -> int:
    """Bytes one decode step must read: the decoder's weights (as stored, so quantized sizes),
    without the input embeddings (one row is read) and the vision tower (idle in decode),
    plus the KV cache at the average length of the run."""
    seen: set[int] = set()
    total = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if id(tensor) in seen or "visual" in name or "vision" in name or "rotary" in name:
            continue
        seen.add(id(tensor))
        if "embed_tokens" in name and not config.get("tie_word_embeddings"):
            continue
        total += tensor_bytes(tensor)
    nested = config.get("text_config")
    text: Mapping[str, Any] = nested if isinstance(nested, Mapping) else config
    layers = int(text.get("num_hidden_layers", 0))
    heads = int(text.get("num_attention_heads", 1))
    kv_heads = int(text.get("num_key_value_heads", heads))
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size", 0)) // max(heads, 1))
    kv_per_token = 2 * layers * kv_heads * head_dim * kv_bytes  # K and V
    return total + kv_per_token * context_tokens


def measure_copy_bandwidth(gpu: int = 0, *, size_bytes: int = 1 << 30, repeats: int = 10) -> float:
    """Achievable device memory bandwidth (bytes read + written per second), median of copies."""
    import torch

    dev = torch.device("cuda", gpu)
    src = torch.empty(size_bytes, dtype=torch.uint8, device=dev).random_(0, 255)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    times: list[float] = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * size_bytes / statistics.median(times)


def timed_generate(model: Any, inputs: dict[str, Any], new_tokens: int, sync: Callable[[], None]) -> tuple[Any, list[float]]:
    """Greedy generate of exactly ``new_tokens``; returns the output and a timestamp per new token."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    # transformers is absent where mypy runs (see [tool.mypy]), so BaseStreamer is Any there.
    class _Clock(BaseStreamer):  # type: ignore[misc,unused-ignore]
        def __init__(self) -> None:
            self.calls = 0
            self.stamps: list[float] = []

        def put(self, value: Any) -> None:
            self.calls += 1
            if self.calls > 1:  # the first put is the prompt
                sync()
                self.stamps.append(time.perf_counter())

        def end(self) -> None:
            return None

    accepted = set(inspect.signature(model.forward).parameters)
    device = next(p.device for p in model.parameters() if p.device.type != "meta")
    kwargs = {
        k: (v.to(device) if hasattr(v, "to") else v)
        for k, v in inputs.items()
        if k in accepted or k in ("input_ids", "attention_mask")
    }
    if "pixel_values" in kwargs:
        kwargs["pixel_values"] = kwargs["pixel_values"].to(model.dtype)
    clock = _Clock()
    torch.manual_seed(0)
    with torch.inference_mode():
        out = model.generate(**kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             streamer=clock)  # fmt: skip
    sync()
    return out, clock.stamps


def decode_rate(stamps: list[float]) -> tuple[float, float | None]:
    """(decode tokens/s, seconds per token); the first new token belongs to prefill."""
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return 0.0, None
    per_token = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return 1.0 / per_token, per_token
