"""The smoke test: load the model in the planned precision and placement, and generate.

It proves an environment by doing what a user will do: ``from_pretrained`` through the
model's own auto class (``dtype=``, ``device_map=``, ``quantization_config=`` for int8/nf4),
then a greedy ``generate`` from a text prompt and from a text+image prompt. It reports load
time, memory (allocator peak and the process view), decode speed and the planner's estimate
next to it, as ``provision.smoke/v1``.

Where the model comes from (``source``):

* ``weights``: a real checkpoint, from ``--model-path`` or the Hugging Face cache (offline);
* ``synthetic``: the full-size architecture with random weights, written to a temporary folder;
* ``tiny``: a small random model of the same architecture (``provision.smoke.tiny``).

A tiny or synthetic run says so in every report: it proves the software stack, never the 9B
model's quality. This module is the run itself, as named steps; the parts live beside it:
``source`` (which folder), ``load`` (``from_pretrained``), ``inputs`` (prompts), ``measure``
(memory and timing) and ``report`` (the result). torch, transformers and friends are
imported inside functions, so this module imports without them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.errors import InvalidInput, ProvisionError, SmokeError
from provision.plan.serve import model_load
from provision.smoke.fit import check_room
from provision.smoke.inputs import MIN_PROMPT_TOKENS, Processors, image_inputs, load_processors, snippet, text_inputs
from provision.smoke.load import bf16_capable, from_pretrained_kwargs, load_model, require_bitsandbytes
from provision.smoke.measure import (
    Baseline,
    GpuMemory,
    decode_bytes_per_token,
    decode_rate,
    measure_copy_bandwidth,
    nvml_used,
    rss_peak_bytes,
    take_baseline,
    tensor_bytes,
    timed_generate,
)
from provision.smoke.report import SmokeReport, estimate_dict, planner_estimate, stack_versions
from provision.smoke.source import Source, choose_source, default_spec
from provision.vocab import DEVICES, PRECISIONS

if TYPE_CHECKING:
    from provision.data import ModelSpec
    from provision.plan.serve import ModelLoad

__all__ = ["SOURCES", "run_smoke"]

SOURCES = ("auto", "weights", "tiny", "synthetic")

_IMAGE_NEW_TOKENS = 8


def run_smoke(
    *,
    model: ModelSpec | None = None,
    model_path: Path | None = None,
    source: str = "auto",
    precision: str | None = None,
    device: str | None = None,
    gpus: Sequence[int] = (),
    max_memory: Mapping[str, int] | None = None,
    device_map: Mapping[str, int] | None = None,
    context_tokens: int | None = None,
    new_tokens: int = 16,
    image: bool = True,
    measure_bandwidth: bool = False,
    hf_cache_dir: Path | None = None,
    tiny_root: Path | None = None,
    synthetic_root: Path | None = None,
    load: ModelLoad | None = None,
) -> SmokeReport:
    """Load the model through ``from_pretrained`` and generate; raise ``SmokeError`` on failure.

    ``context_tokens`` makes the text prompt ``context_tokens - new_tokens`` tokens long (the
    planner's budget); without it a short prompt is used. ``device``/``precision`` default to
    CUDA in bf16 (fp16 below compute capability 8.0) where a GPU is visible, else CPU in fp32.
    ``load``: the plan's server's load settings (``provision.plan.serve.serve_load``); without a plan,
    ``model_load`` makes them for ``precision`` and the GPUs here, as the planner would.
    """
    try:
        import torch
        import transformers  # noqa: F401 - checked here, so a missing one fails with the fix
    except ImportError as exc:
        raise SmokeError(
            f"the smoke test needs torch and transformers in this environment ({exc}); "
            "install them with: pip install 'provision[smoke]'"
        ) from exc

    device, used, precision = _target(device, tuple(gpus), precision)
    _check_args(source, precision, device, new_tokens, context_tokens)
    require_bitsandbytes(precision)
    if load is None:
        load = model_load(precision, bf16=device != "cuda" or all(bf16_capable(g) for g in used))
    if device == "cuda" and not torch.cuda.is_available():
        raise SmokeError("device cuda requested but torch sees no CUDA GPU (torch.cuda.is_available() is False)")

    spec = model if model is not None else default_spec(model_path)
    fits = functools.partial(check_room, precision=precision, device=device, gpus=used, context=context_tokens,
                             skip=spec.skip_modules(precision))
    if source == "synthetic" and model_path is None:  # before minutes of building: RAM, GPU memory, disk
        fits(spec.config, what=f"the synthetic {spec.id}", synthetic_parameters=spec.parameters,
             disk_root=synthetic_root or Path(tempfile.gettempdir()))
    chosen = choose_source(
        spec, model_path=model_path, source=source, hf_cache_dir=hf_cache_dir, tiny_root=tiny_root,
        synthetic_root=synthetic_root, init_device="cuda" if device == "cuda" else "cpu",
    )  # fmt: skip
    if chosen.kind == "weights":  # before from_pretrained fills the memory
        fits(json.loads((chosen.path / "config.json").read_text(encoding="utf-8")), what=f"{spec.id} from {chosen.path}")
    try:
        return _run_loaded(
            spec, chosen, precision=precision, load=load, device=device, gpus=used, max_memory=max_memory,
            device_map=device_map, context_tokens=context_tokens, new_tokens=new_tokens, image=image,
            measure_bandwidth=measure_bandwidth,
        )  # fmt: skip
    finally:
        if chosen.cleanup:
            shutil.rmtree(chosen.path, ignore_errors=True)


def _target(device: str | None, gpus: tuple[int, ...], precision: str | None) -> tuple[str, tuple[int, ...], str]:
    """Fill in what the caller left open: the visible GPU in bf16 (fp16 before Ampere), else CPU in fp32."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpus = gpus or ((0,) if device == "cuda" else ())
    if precision is None:
        if device == "cuda":
            precision = "bf16" if bf16_capable(gpus[0]) else "fp16"
        else:
            precision = "fp32" if device == "cpu" else "fp16"
    return device, gpus, precision


def _check_args(source: str, precision: str, device: str, new_tokens: int, context: int | None) -> None:
    """Reject bad options as ``InvalidInput`` before anything is built or loaded."""
    if source not in SOURCES:
        raise InvalidInput("--source", "(value)", f"{source!r} is not one of {', '.join(SOURCES)}")
    if precision not in PRECISIONS:
        raise InvalidInput("--precision", "(value)", f"{precision!r} is not one of {', '.join(PRECISIONS)}")
    if device not in DEVICES:
        raise InvalidInput("--device", "(value)", f"{device!r} is not one of {', '.join(DEVICES)}")
    if new_tokens < 2:
        raise InvalidInput("--new-tokens", "(value)", "needs at least 2 tokens to time decoding")
    if context is not None and context - new_tokens < MIN_PROMPT_TOKENS:
        raise InvalidInput("--context", "(value)", f"{context} leaves fewer than {MIN_PROMPT_TOKENS} prompt tokens")


# ---------------------------------------------------------------------------
# One run, as steps: load -> generate -> measure -> report


@dataclass(frozen=True, slots=True, kw_only=True)
class _Load:
    """What loading took: time, the weights' bytes, the allocator peak (0 on CPU), NVML after."""

    seconds: float
    weights_bytes: int
    peak: int
    nvml_used: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Generation:
    """The timed text generation and, for vision models, the image prompt's results."""

    output: Any
    prompt_tokens: int
    tokens_generated: int
    tokens_per_second: float
    seconds_per_token: float | None
    per_gpu_peak: dict[str, int] | None
    reserved_peak: int | None
    image: dict[str, Any] | None
    image_peak: int


@dataclass(frozen=True, slots=True, kw_only=True)
class _Memory:
    """The run's memory figures: on CUDA the allocator's, on CPU the resident set's growth."""

    peak: int
    generate_peak: int | None
    nvml_delta: int | None
    cuda_free_delta: int | None


def _run_loaded(
    spec: ModelSpec,
    chosen: Source,
    *,
    precision: str,
    load: ModelLoad,
    device: str,
    gpus: tuple[int, ...],
    max_memory: Mapping[str, int] | None,
    device_map: Mapping[str, int] | None,
    context_tokens: int | None,
    new_tokens: int,
    image: bool,
    measure_bandwidth: bool,
) -> SmokeReport:
    """Load ``chosen``, generate from it, and measure both; the folder is cleaned up by the caller."""
    config = json.loads((chosen.path / "config.json").read_text(encoding="utf-8"))
    vision = config.get("model_type") == "glm4v" or "vision_config" in config
    gpu = GpuMemory(ids=gpus if device == "cuda" else ())
    before = take_baseline(gpu)
    skip = spec.skip_modules(precision)  # the memory estimate's: transformers' default, which the server keeps
    procs = load_processors(chosen.path, vision)  # as the server does, before the weights: it fails first
    kwargs = from_pretrained_kwargs(load=load, device=device, gpus=gpu.ids, max_memory=max_memory,
                                    device_map=device_map)  # fmt: skip
    model, seconds = load_model(chosen.path, spec.auto_class, kwargs, model_id=spec.id,
                                precision=precision, sync=gpu.sync)  # fmt: skip
    loaded = _measure_load(model, seconds, gpu, before)

    prompt_len = (context_tokens - new_tokens) if context_tokens else None
    with _generation_errors(spec.id, chosen.path, precision):
        gen = _generate(model, procs, gpu, vision=vision, image=image, prompt_len=prompt_len, new_tokens=new_tokens)
    memory = _memory(gpu, before, loaded, gen)
    roofline, roofline_warnings = _roofline(model, config, precision=precision, per_token=gen.seconds_per_token, gpu=gpu,
                                            context=gen.prompt_tokens + new_tokens // 2,
                                            measure_bandwidth=measure_bandwidth)  # fmt: skip
    context = context_tokens or (gen.prompt_tokens + new_tokens)
    estimate, estimate_warnings = _estimate(config, precision, context, device, skip)
    text = snippet(procs.tokenizer, gen.output[0, gen.prompt_tokens :])
    del model
    gpu.empty_cache()
    return _report(
        spec, chosen, precision=precision, device=device, gpus=gpu.ids, context=context, load=loaded, gen=gen,
        memory=memory, estimate=estimate, roofline=roofline, text=text, processor=procs.how, server_args=load.argv,
        warnings=(*chosen.warnings, *roofline_warnings, *estimate_warnings),
    )  # fmt: skip


def _measure_load(model: Any, seconds: float, gpu: GpuMemory, before: Baseline) -> _Load:
    """On CUDA what the allocator gained; on CPU the parameters' and buffers' own bytes."""
    if gpu.ids:
        return _Load(seconds=seconds, weights_bytes=gpu.allocated() - before.allocated, peak=gpu.max_allocated(),
                     nvml_used=nvml_used(gpu.ids))  # fmt: skip
    weights = sum(tensor_bytes(t) for t in [*model.parameters(), *model.buffers()])
    return _Load(seconds=seconds, weights_bytes=weights, peak=0, nvml_used=None)


@contextlib.contextmanager
def _generation_errors(model_id: str, path: Path, precision: str) -> Iterator[None]:
    """Any failure while generating becomes ``SmokeError``; running out of GPU memory says what to shrink."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise SmokeError(
            f"out of GPU memory generating with {model_id} in {precision}: {exc}; try a shorter --context"
        ) from exc
    except (InvalidInput, SmokeError):
        raise
    except Exception as exc:
        raise SmokeError(f"generating with {path} failed: {type(exc).__name__}: {exc}") from exc


def _generate(
    model: Any, procs: Processors, gpu: GpuMemory, *, vision: bool, image: bool, prompt_len: int | None,
    new_tokens: int,
) -> _Generation:  # fmt: skip
    """A warm-up, the timed text generation (peaks reset after the warm-up), then the image prompt."""
    inputs = text_inputs(procs, vision, prompt_len)
    timed_generate(model, text_inputs(procs, vision, None), 2, gpu.sync)  # warm-up
    gpu.reset_peaks()
    out, stamps = timed_generate(model, inputs, new_tokens, gpu.sync)
    per_gpu = gpu.max_allocated_per_gpu() if gpu.ids else None
    reserved = gpu.max_reserved() if gpu.ids else None
    image_report, image_peak = _image_generation(model, procs, gpu) if vision and image else (None, 0)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    tps, per_token = decode_rate(stamps)
    return _Generation(
        output=out, prompt_tokens=prompt_tokens, tokens_generated=int(out.shape[1]) - prompt_tokens,
        tokens_per_second=tps, seconds_per_token=per_token, per_gpu_peak=per_gpu, reserved_peak=reserved,
        image=image_report, image_peak=image_peak,
    )  # fmt: skip


def _image_generation(model: Any, procs: Processors, gpu: GpuMemory) -> tuple[dict[str, Any], int]:
    """Generate from the synthetic screenshot: its token counts and text, and the allocator peak."""
    gpu.reset_peaks()
    inputs = image_inputs(procs, model.config)
    out, _ = timed_generate(model, inputs, _IMAGE_NEW_TOKENS, gpu.sync)
    ids = inputs["input_ids"]
    image_id = int(model.config.image_token_id)
    report = {
        "prompt_tokens": int(ids.shape[1]),
        "image_tokens": int((ids == image_id).sum()),
        "image_grid_thw": [int(v) for v in inputs["image_grid_thw"][0]],
        "tokens_generated": int(out.shape[1] - ids.shape[1]),
        "text": snippet(procs.tokenizer, out[0, ids.shape[1] :]),
    }
    return report, gpu.max_allocated()


def _memory(gpu: GpuMemory, before: Baseline, load: _Load, gen: _Generation) -> _Memory:
    """The peak over loading and both prompts, plus the driver's views where they can be read."""
    if not gpu.ids:
        return _Memory(peak=max(0, rss_peak_bytes() - before.rss), generate_peak=None, nvml_delta=None,
                       cuda_free_delta=None)  # fmt: skip
    generate_peak = sum(gen.per_gpu_peak.values()) if gen.per_gpu_peak else 0
    nvml_now = nvml_used(gpu.ids)
    nvml_delta = None
    if before.nvml_used is not None and nvml_now is not None and load.nvml_used is not None:
        nvml_delta = max(nvml_now, load.nvml_used) - before.nvml_used
    return _Memory(peak=max(load.peak, generate_peak, gen.image_peak), generate_peak=generate_peak,
                   nvml_delta=nvml_delta, cuda_free_delta=before.cuda_free - gpu.free())  # fmt: skip


def _roofline(
    model: Any, config: Mapping[str, Any], *, precision: str, per_token: float | None, gpu: GpuMemory, context: int,
    measure_bandwidth: bool,
) -> tuple[dict[str, float] | None, tuple[str, ...]]:  # fmt: skip
    """Bytes a decode step reads against its time, and against a measured copy where asked."""
    if not per_token:
        return None, ()
    moved = decode_bytes_per_token(model, config, context, 4 if precision == "fp32" else 2)
    roofline = {"bytes_per_token": float(moved), "seconds_per_token": per_token,
                "achieved_bytes_per_second": moved / per_token}  # fmt: skip
    if not (measure_bandwidth and gpu.ids):
        return roofline, ()
    import torch

    try:
        copy_bw = measure_copy_bandwidth(gpu.ids[0])
    except torch.cuda.OutOfMemoryError:
        return roofline, ("no room left on the GPU to measure copy bandwidth",)
    roofline["copy_bandwidth_bytes_per_second"] = copy_bw
    roofline["fraction_of_copy_bandwidth"] = moved / per_token / copy_bw
    return roofline, ()


def _estimate(
    config: Mapping[str, Any], precision: str, context: int, device: str, skip: Sequence[str]
) -> tuple[Any, tuple[str, ...]]:
    """The planner's estimate for this folder, or a warning where the estimator cannot read it."""
    try:
        return planner_estimate(config, precision, context, device, skip), ()
    except (ImportError, ProvisionError) as exc:
        return None, (f"no memory estimate for this config: {exc}",)


def _report(
    spec: ModelSpec, chosen: Source, *, precision: str, device: str, gpus: tuple[int, ...], context: int,
    load: _Load, gen: _Generation, memory: _Memory, estimate: Any, roofline: dict[str, float] | None,
    text: str, processor: str, server_args: tuple[str, ...], warnings: tuple[str, ...],
) -> SmokeReport:  # fmt: skip
    """The steps' results as one ``SmokeReport``; a stand-in names the model it stands in for."""
    return SmokeReport(
        model=spec.id,
        source=chosen.kind,
        precision=precision,
        device=device,
        load_seconds=load.seconds,
        peak_memory_bytes=int(memory.peak),
        estimated_memory_bytes=int(estimate.total) if estimate is not None else None,
        tokens_generated=gen.tokens_generated,
        tokens_per_second=gen.tokens_per_second,
        stand_in_for=spec.id if chosen.kind != "weights" else None,
        model_path=str(chosen.path) if not chosen.cleanup else None,
        gpus=gpus,
        context_tokens=context,
        prompt_tokens=gen.prompt_tokens,
        weights_bytes=int(load.weights_bytes),
        generate_peak_bytes=memory.generate_peak,
        per_gpu_peak_bytes=gen.per_gpu_peak,
        reserved_peak_bytes=gen.reserved_peak,
        nvml_used_delta_bytes=memory.nvml_delta,
        cuda_free_delta_bytes=memory.cuda_free_delta,
        estimate=estimate_dict(estimate),
        roofline=roofline,
        image=gen.image,
        text=text,
        processor=processor,
        server_args=server_args,
        versions=stack_versions(),
        warnings=warnings,
    )
