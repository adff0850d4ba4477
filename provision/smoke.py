"""The smoke test: load the model in the planned precision and placement, and generate.

It proves an environment by doing what a user will do: ``from_pretrained`` through the
model's own auto class (``dtype=``, ``device_map=``, ``quantization_config=`` for int8/nf4),
then a greedy ``generate`` from a text prompt and from a text+image prompt. It reports load
time, memory (allocator peak and the process view), decode speed and the planner's estimate
next to it, as ``provision.smoke/v1``.

Where the model comes from (``source``):

* ``weights``: a real checkpoint, from ``--model-path`` or the Hugging Face cache (offline);
* ``synthetic``: the full-size architecture with random weights, written to a temporary folder;
* ``tiny``: a small random model of the same architecture (``provision.tiny``).

A tiny or synthetic run says so in every report: it proves the software stack, never the 9B
model's quality. torch, transformers and friends are imported inside the functions, so this
module imports without them.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.errors import InvalidInput, ProvisionError, SmokeError

if TYPE_CHECKING:
    from provision.catalog import ModelSpec

__all__ = [
    "PRECISIONS",
    "SMOKE_SCHEMA",
    "SOURCES",
    "SmokeReport",
    "decode_bytes_per_token",
    "find_cached_snapshot",
    "format_report",
    "measure_copy_bandwidth",
    "missing_snapshot_files",
    "run_smoke",
]

SMOKE_SCHEMA = "provision.smoke/v1"
SOURCES = ("auto", "weights", "tiny", "synthetic")
PRECISIONS = ("bf16", "fp16", "fp32", "int8", "nf4")
DEVICES = ("cuda", "cpu", "mps")

_TEXT_PROMPT = "You are controlling a phone. In one sentence, what would you tap to open the settings?"
_IMAGE_PROMPT = "Describe this screenshot in one sentence."
# Repeated to fill long prompts: plain prose, so real tokenizers give realistic token counts.
_FILLER = (
    "The phone agent reads the screen, decides on one action, taps or types, and then looks again. "
    "It keeps a short memory of what it has done so far and stops when the task is finished. "
)
_IMAGE_SIDE = 224  # 16x16 patches of 14 px -> 64 image tokens after the 2x2 merge
_IMAGE_NEW_TOKENS = 8
_MIN_PROMPT_TOKENS = 16
_SNIPPET_CHARS = 200


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
    versions: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The model as a human should read it: a stand-in is never called the real model."""
        if self.source == "tiny":
            return f"{self.model} (tiny stand-in: random weights, not the real model)"
        if self.source == "synthetic":
            return f"{self.model} (synthetic: full-size architecture, random weights)"
        return self.model

    def to_dict(self) -> dict[str, Any]:
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
        extras: dict[str, Any] = {
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
            "versions": self.versions or None,
            "warnings": list(self.warnings) or None,
        }
        out.update({k: v for k, v in extras.items() if v is not None})
        return out


def format_report(report: SmokeReport) -> str:
    """A few human lines for stderr; the stand-in status leads, so nobody mistakes it."""
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
    if report.image is not None:
        lines.append(
            f"  image prompt: {report.image['image_tokens']} image tokens, {report.image['tokens_generated']} tokens generated"
        )
    if report.source != "weights":
        lines.append("  note: random weights; this proves the software stack, not the model's answers")
    lines.extend(f"  warning: {w}" for w in report.warnings)
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Where the weights are


def missing_snapshot_files(path: Path) -> list[str]:
    """Files a checkpoint folder needs but lacks: config, and every weight shard the index names.

    An interrupted ``huggingface-cli download`` leaves a snapshot with the index but not all
    shards; loading it would fail late, so this is checked before any loading.
    """
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            return [*missing, "model.safetensors.index.json (unreadable)"]
        if not isinstance(weight_map, dict) or not weight_map:
            return [*missing, "model.safetensors.index.json (no weight_map)"]
        shards = sorted({str(v) for v in weight_map.values()})
        missing += [s for s in shards if not (path / s).is_file()]  # is_file follows HF cache symlinks
    elif not any((path / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors")
    return missing


def find_cached_snapshot(repo: str, *, cache_dir: Path | None = None) -> Path | None:
    """The snapshot folder of ``repo`` in the Hugging Face cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        found = snapshot_download(repo, local_files_only=True, cache_dir=str(cache_dir) if cache_dir is not None else None)
    except (OSError, ValueError):  # LocalEntryNotFoundError (an OSError): not cached; ValueError: bad repo id
        return None
    return Path(found)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Source:
    path: Path
    kind: str  # weights | tiny | synthetic
    cleanup: bool = False
    warnings: tuple[str, ...] = ()


def _stand_in_kind(path: Path) -> str | None:
    from provision.tiny import read_marker

    marker = read_marker(path)
    return None if marker is None else str(marker.get("kind", "tiny"))


def _choose_source(
    spec: ModelSpec,
    *,
    model_path: Path | None,
    source: str,
    hf_cache_dir: Path | None,
    tiny_root: Path | None,
    synthetic_root: Path | None,
    init_device: str,
) -> _Source:
    """Resolve ``source`` to a folder: given path, HF cache, then the tiny stand-in."""
    from provision.tiny import build_synthetic, build_tiny

    if model_path is not None:
        if source not in ("auto", "weights"):
            raise InvalidInput("--model-path", "source", f"a model path cannot be combined with --{source}")
        if not model_path.is_dir():
            raise InvalidInput("--model-path", "(path)", f"{model_path} is not a directory")
        missing = missing_snapshot_files(model_path)
        if missing:
            raise SmokeError(f"{model_path} is an incomplete checkpoint: missing {', '.join(missing)}")
        return _Source(path=model_path, kind=_stand_in_kind(model_path) or "weights")
    warnings: list[str] = []
    if source in ("auto", "weights"):
        snapshot = find_cached_snapshot(spec.repo, cache_dir=hf_cache_dir) if spec.repo else None
        if snapshot is not None:
            missing = missing_snapshot_files(snapshot)
            if not missing:
                return _Source(path=snapshot, kind="weights")
            problem = (
                f"the Hugging Face cache holds an incomplete snapshot of {spec.repo} at {snapshot} "
                f"(missing {', '.join(missing)}); finish it with: huggingface-cli download {spec.repo}"
            )
            if source == "weights":
                raise SmokeError(problem)
            warnings.append(problem + "; using the tiny stand-in instead")
        elif source == "weights":
            raise SmokeError(
                f"no weights for {spec.id}: {spec.repo} is not in the Hugging Face cache; "
                f"download it with `huggingface-cli download {spec.repo}` or pass --model-path DIR"
            )
    if source == "synthetic":
        path = build_synthetic(spec.config, model_id=spec.id, root=synthetic_root, init_device=init_device)
        return _Source(path=path, kind="synthetic", cleanup=True)
    tiny = build_tiny(spec.config, model_id=spec.id, root=tiny_root, source=f"catalog model {spec.id}")
    return _Source(path=tiny.path, kind="tiny", warnings=tuple(warnings))


# ---------------------------------------------------------------------------
# Memory probes


def _proc_status_bytes(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_peak_bytes() -> int:
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource

    raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(raw) if sys.platform == "darwin" else int(raw) * 1024  # bytes on macOS, kB elsewhere


def _rss_now_bytes() -> int:
    now = _proc_status_bytes("VmRSS")
    return now if now is not None else _rss_peak_bytes()


def _nvml_used(gpus: Sequence[int]) -> int | None:
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


def _tensor_bytes(t: Any) -> int:
    return int(t.numel()) * int(t.element_size())


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
        total += _tensor_bytes(tensor)
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
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
    times = []
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


# ---------------------------------------------------------------------------
# Loading


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "accelerate", "bitsandbytes", "tokenizers", "huggingface_hub"):
        try:
            out[dist] = _dist_version(dist)
        except PackageNotFoundError:
            continue
    return out


def _dtype_for(precision: str, device: str, gpus: Sequence[int]) -> Any:
    import torch

    if precision in ("int8", "nf4"):  # the compute dtype of the non-quantized parts
        if device == "cuda" and torch.cuda.get_device_capability(gpus[0] if gpus else 0)[0] < 8:
            return torch.float16
        return torch.bfloat16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def _require_bitsandbytes(precision: str) -> None:
    """Fail before any download or synthetic build when int8/nf4 cannot load at all."""
    import importlib.util

    if precision in ("int8", "nf4") and importlib.util.find_spec("bitsandbytes") is None:
        raise SmokeError(
            f"{precision} needs bitsandbytes, which is not installed in this environment; "
            "install it with `pip install bitsandbytes` (NVIDIA GPU with compute capability 6.0+), "
            "or choose --precision bf16/fp16"
        )


def _quantization_config(precision: str, compute_dtype: Any, skip: Sequence[str]) -> Any:
    if precision not in ("int8", "nf4"):
        return None
    _require_bitsandbytes(precision)
    from transformers import BitsAndBytesConfig

    # The catalog's keep_16bit list (transformers' own default is ["lm_head"]), so what loads is
    # what provision.memory estimated.
    extra = {"llm_int8_skip_modules": list(skip)} if skip else {}
    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, **extra)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        **extra,
    )


def _placement(
    device: str, gpus: Sequence[int], max_memory: Mapping[str, int] | None,
    device_map: Mapping[str, int] | None = None,
) -> tuple[Any, dict[Any, int] | None]:
    """``device_map`` and ``max_memory`` for from_pretrained.

    A planned split comes as an explicit module -> GPU map, so the load places exactly what the
    planner counted; without one, several GPUs split with "auto" under ``max_memory``.
    """
    if device != "cuda":
        return {"": device}, None
    if device_map:
        return dict(device_map), None
    if max_memory is None and len(gpus) <= 1:
        return {"": gpus[0] if gpus else 0}, None
    if max_memory is not None:
        limits = {(int(k) if str(k).isdigit() else k): int(v) for k, v in max_memory.items()}
    else:
        import torch

        limits = {i: int(torch.cuda.mem_get_info(i)[0] * 0.9) for i in gpus}
    return "auto", limits


def _auto_class_for(spec: ModelSpec | None, config: Mapping[str, Any]) -> str:
    if spec is not None and spec.auto_class:
        return spec.auto_class
    return "AutoModelForImageTextToText" if config.get("model_type") == "glm4v" else "AutoModelForCausalLM"


def _load_processors(path: Path, vision: bool) -> tuple[Any, Any, Any, str]:
    """(processor or None, tokenizer, image processor or None, how they were loaded).

    The model's own processor is preferred. transformers 5.x cannot build Glm4vProcessor
    without torchvision (its video processor needs it), so then the tokenizer and the
    PIL image processor are used directly and the image tokens are expanded here.
    """
    import transformers

    if vision:
        try:
            proc = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
            return proc, proc.tokenizer, proc.image_processor, type(proc).__name__
        except (ImportError, ValueError, TypeError, AttributeError, OSError) as exc:
            reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_proc = _pil_image_processor(transformers, path)
        how = f"{type(tokenizer).__name__} + {type(image_proc).__name__} (AutoProcessor unavailable: {reason})"
        return None, tokenizer, image_proc, how
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return None, tokenizer, None, type(tokenizer).__name__


def _pil_image_processor(transformers: Any, path: Path) -> Any:
    """The PIL backend of the folder's image processor (transformers 5.17's AutoImageProcessor
    itself needs torchvision; 5.24's falls back to PIL on its own)."""
    try:
        declared = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8"))
        name = str(declared.get("image_processor_type", "")).removesuffix("Fast").removesuffix("Pil")
    except (OSError, ValueError, AttributeError):
        name = ""
    pil = getattr(transformers, f"{name}Pil", None) if name else None
    try:
        if pil is not None:
            return pil.from_pretrained(path, local_files_only=True)
        return transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (ImportError, OSError, ValueError) as exc:
        raise SmokeError(f"cannot load the image processor of {path}: {exc}; install torchvision matching torch") from exc


# ---------------------------------------------------------------------------
# Prompts


def _render(template_owner: Any, messages: list[dict[str, Any]]) -> str:
    if getattr(template_owner, "chat_template", None):
        return str(template_owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    # GLM-4 prompt layout, for checkpoints without a template.
    parts = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = "".join(
                "<|begin_of_image|><|image|><|end_of_image|>" if p["type"] == "image" else p.get("text", "") for p in content
            )
        parts.append(f"<|{m['role']}|>\n{content}")
    return "[gMASK]<sop>" + "".join(parts) + "<|assistant|>\n"


def _text_inputs(tokenizer: Any, owner: Any, vision: bool, prompt_tokens: int | None) -> dict[str, Any]:
    """A chat prompt; with ``prompt_tokens`` padded with prose to exactly that many tokens."""
    import torch

    marker = "\u241fPROVISION_FILL\u241f"
    body = marker if prompt_tokens else _TEXT_PROMPT
    content: Any = [{"type": "text", "text": body}] if vision else body
    text = _render(owner, [{"role": "user", "content": content}])
    if not prompt_tokens:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        pre, _, post = text.partition(marker)
        head = tokenizer(pre, add_special_tokens=False)["input_ids"]
        tail = tokenizer(post, add_special_tokens=False)["input_ids"]
        room = prompt_tokens - len(head) - len(tail)
        if room < 0:
            raise InvalidInput("--context", "(value)", f"too short for the chat prompt ({len(head) + len(tail)})")
        one = tokenizer(_FILLER, add_special_tokens=False)["input_ids"]
        filler = tokenizer(_FILLER * (room // max(len(one), 1) + 2), add_special_tokens=False)["input_ids"]
        ids = head + filler[:room] + tail
    input_ids = torch.tensor([ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _synthetic_image() -> Any:
    """A fixed, non-trivial RGB picture (gradients plus seeded noise): no files needed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:_IMAGE_SIDE, 0:_IMAGE_SIDE]
    base = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.float64) * (255 / _IMAGE_SIDE)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, mode="RGB") if _pil_takes_mode() else Image.fromarray(noisy)


def _pil_takes_mode() -> bool:
    import PIL

    return int(PIL.__version__.split(".")[0]) < 11  # the mode argument is deprecated since Pillow 11


def _image_inputs(processor: Any, tokenizer: Any, image_proc: Any, model_config: Any) -> dict[str, Any]:
    """Text+image inputs; with no processor the image tokens are expanded to match the grid."""
    import torch

    content = [{"type": "image"}, {"type": "text", "text": _IMAGE_PROMPT}]
    image = _synthetic_image()
    text = _render(processor or tokenizer, [{"role": "user", "content": content}])
    image_id = int(model_config.image_token_id)
    if processor is not None:
        encoded = dict(processor(text=[text], images=[image], return_tensors="pt"))
        if "mm_token_type_ids" not in encoded:  # processors before 5.x's default return it only on request
            encoded["mm_token_type_ids"] = (encoded["input_ids"] == image_id).long()
        return encoded
    vision = image_proc(images=[image], return_tensors="pt")
    merge = int(getattr(image_proc, "merge_size", 2))
    count = int(vision["image_grid_thw"][0].prod()) // (merge * merge)
    image_token = "<|image|>"  # noqa: S105 - a vocabulary entry, not a secret
    if text.count(image_token) != 1:
        raise SmokeError(f"the chat template produced {text.count(image_token)} image placeholders, expected 1")
    text = text.replace(image_token, image_token * count)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)
    if int((ids == image_id).sum()) != count:
        raise SmokeError(f"tokenizer does not map {image_token} to the config's image_token_id {image_id}")
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == image_id).long(),
        "pixel_values": vision["pixel_values"],
        "image_grid_thw": vision["image_grid_thw"],
    }


# ---------------------------------------------------------------------------
# Generating


def _generate(model: Any, inputs: dict[str, Any], new_tokens: int, sync: Any) -> tuple[Any, list[float]]:
    """Greedy generate of exactly ``new_tokens``; returns the output and a timestamp per new token."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class _Clock(BaseStreamer):
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
        out = model.generate(
            **kwargs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=clock,
        )
    sync()
    return out, clock.stamps


def _decode_rate(stamps: list[float]) -> tuple[float, float | None]:
    """(decode tokens/s, seconds per token); the first new token belongs to prefill."""
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return 0.0, None
    per_token = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return 1.0 / per_token, per_token


def _snippet(tokenizer: Any, ids: Any) -> str:
    valid = [int(i) for i in ids if 0 <= int(i) < len(tokenizer)]
    text = tokenizer.decode(valid, skip_special_tokens=True)
    return text.encode("utf-8", "replace").decode("utf-8")[:_SNIPPET_CHARS]


def _estimate(config: Mapping[str, Any], precision: str, context: int, device: str, skip: Sequence[str]) -> Any:
    """provision.memory's estimate for the folder actually loaded (tiny configs give tiny numbers)."""
    from provision.memory import estimate_memory

    keep = list(skip) if skip else None
    return estimate_memory(dict(config), precision=precision, context_tokens=context, device=device, keep_16bit=keep)


def _default_spec(model_path: Path | None) -> ModelSpec:
    """The catalog default, the catalog model a stand-in folder was built for, or a local folder."""
    from provision.catalog import load_catalog, resolve_model
    from provision.tiny import read_marker

    catalog = load_catalog()
    if model_path is None:
        return catalog.default
    marker = read_marker(model_path) or {}
    known = catalog.get(str(marker.get("stand_in_for", "")))
    return known if known is not None else resolve_model(str(model_path), catalog)


def _check_args(source: str, precision: str, device: str, new_tokens: int, context: int | None) -> None:
    if source not in SOURCES:
        raise InvalidInput("--source", "(value)", f"{source!r} is not one of {', '.join(SOURCES)}")
    if precision not in PRECISIONS:
        raise InvalidInput("--precision", "(value)", f"{precision!r} is not one of {', '.join(PRECISIONS)}")
    if device not in DEVICES:
        raise InvalidInput("--device", "(value)", f"{device!r} is not one of {', '.join(DEVICES)}")
    if new_tokens < 2:
        raise InvalidInput("--new-tokens", "(value)", "needs at least 2 tokens to time decoding")
    if context is not None and context - new_tokens < _MIN_PROMPT_TOKENS:
        raise InvalidInput("--context", "(value)", f"{context} leaves fewer than {_MIN_PROMPT_TOKENS} prompt tokens")


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
) -> SmokeReport:
    """Load the model through ``from_pretrained`` and generate; raise ``SmokeError`` on failure.

    ``context_tokens`` makes the text prompt ``context_tokens - new_tokens`` tokens long (the
    planner's budget); without it a short prompt is used. ``device``/``precision`` default to
    CUDA in bf16 (fp16 below compute capability 8.0) where a GPU is visible, else CPU in fp32.
    """
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise SmokeError(
            f"the smoke test needs torch and transformers in this environment ({exc}); "
            "install them with: pip install 'provision[smoke]'"
        ) from exc

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpus = tuple(gpus) or ((0,) if device == "cuda" else ())
    if precision is None:
        if device == "cuda":
            precision = "bf16" if torch.cuda.get_device_capability(gpus[0])[0] >= 8 else "fp16"
        else:
            precision = "fp32" if device == "cpu" else "fp16"
    _check_args(source, precision, device, new_tokens, context_tokens)
    _require_bitsandbytes(precision)
    if device == "cuda" and not torch.cuda.is_available():
        raise SmokeError("device cuda requested but torch sees no CUDA GPU (torch.cuda.is_available() is False)")

    spec = model if model is not None else _default_spec(model_path)
    chosen = _choose_source(
        spec,
        model_path=model_path,
        source=source,
        hf_cache_dir=hf_cache_dir,
        tiny_root=tiny_root,
        synthetic_root=synthetic_root,
        init_device="cuda" if device == "cuda" else "cpu",
    )
    try:
        return _run_loaded(
            spec, chosen, torch=torch, transformers=transformers, precision=precision, device=device,
            gpus=gpus, max_memory=max_memory, device_map=device_map, context_tokens=context_tokens,
            new_tokens=new_tokens,
            image=image, measure_bandwidth=measure_bandwidth,
        )  # fmt: skip
    finally:
        if chosen.cleanup:
            shutil.rmtree(chosen.path, ignore_errors=True)


def _run_loaded(
    spec: ModelSpec,
    chosen: _Source,
    *,
    torch: Any,
    transformers: Any,
    precision: str,
    device: str,
    gpus: tuple[int, ...],
    max_memory: Mapping[str, int] | None,
    device_map: Mapping[str, int] | None,
    context_tokens: int | None,
    new_tokens: int,
    image: bool,
    measure_bandwidth: bool,
) -> SmokeReport:
    config = json.loads((chosen.path / "config.json").read_text(encoding="utf-8"))
    vision = config.get("model_type") == "glm4v" or "vision_config" in config
    auto_class = _auto_class_for(spec, config)
    cuda = device == "cuda"
    used_gpus = gpus if cuda else ()

    def sync() -> None:
        if cuda:
            for i in used_gpus:
                torch.cuda.synchronize(i)

    nvml_before = _nvml_used(used_gpus) if cuda else None  # before the CUDA context exists
    free_before = alloc_before = 0
    nvml_after_load: int | None = None
    if cuda:
        free_before = sum(torch.cuda.mem_get_info(i)[0] for i in used_gpus)
        for i in used_gpus:
            torch.cuda.reset_peak_memory_stats(i)
        alloc_before = sum(torch.cuda.memory_allocated(i) for i in used_gpus)
    rss_before = _rss_now_bytes()

    dtype = _dtype_for(precision, device, used_gpus)
    skip = spec.skip_modules(precision) if hasattr(spec, "skip_modules") else ()
    quant = _quantization_config(precision, dtype, skip)
    placement, limits = _placement(device, used_gpus, max_memory, device_map)
    load_kwargs: dict[str, Any] = {"dtype": dtype, "device_map": placement, "local_files_only": True}
    if limits is not None:
        load_kwargs["max_memory"] = limits
    if quant is not None:
        load_kwargs["quantization_config"] = quant
    try:
        cls = getattr(transformers, auto_class)
    except AttributeError:
        raise SmokeError(f"transformers {transformers.__version__} has no {auto_class}") from None

    # Import the model's code now, so load_seconds times reading and placing the weights;
    # only a warm-up: from_pretrained reports real problems.
    with contextlib.suppress(Exception):
        cls._model_mapping[type(transformers.AutoConfig.from_pretrained(chosen.path, local_files_only=True))]
    start = time.perf_counter()
    try:
        loaded = cls.from_pretrained(chosen.path, **load_kwargs)
        sync()
    except torch.cuda.OutOfMemoryError as exc:
        raise SmokeError(
            f"out of GPU memory loading {spec.id} in {precision}: {exc}; try a smaller precision (--precision nf4) or more GPUs"
        ) from exc
    except Exception as exc:
        raise SmokeError(f"loading {chosen.path} with {auto_class} in {precision} failed: {type(exc).__name__}: {exc}") from exc
    load_seconds = time.perf_counter() - start
    loaded.eval()

    if cuda:
        weights_bytes = sum(torch.cuda.memory_allocated(i) for i in used_gpus) - alloc_before
        load_peak = sum(torch.cuda.max_memory_allocated(i) for i in used_gpus)
        nvml_after_load = _nvml_used(used_gpus)
    else:
        weights_bytes = sum(_tensor_bytes(t) for t in [*loaded.parameters(), *loaded.buffers()])
        load_peak = 0

    processor, tokenizer, image_proc, how = _load_processors(chosen.path, vision)
    prompt_len = (context_tokens - new_tokens) if context_tokens else None
    try:
        text_inputs = _text_inputs(tokenizer, processor or tokenizer, vision, prompt_len)
        _generate(loaded, _text_inputs(tokenizer, processor or tokenizer, vision, None), 2, sync)  # warm-up
        if cuda:
            for i in used_gpus:
                torch.cuda.reset_peak_memory_stats(i)
        out, stamps = _generate(loaded, text_inputs, new_tokens, sync)
        per_gpu = {str(i): int(torch.cuda.max_memory_allocated(i)) for i in used_gpus} if cuda else None
        reserved = sum(torch.cuda.max_memory_reserved(i) for i in used_gpus) if cuda else None
        image_report = None
        image_peak = 0
        if vision and image:
            if cuda:
                for i in used_gpus:
                    torch.cuda.reset_peak_memory_stats(i)
            image_inputs = _image_inputs(processor, tokenizer, image_proc, loaded.config)
            img_out, _ = _generate(loaded, image_inputs, _IMAGE_NEW_TOKENS, sync)
            image_ids = image_inputs["input_ids"]
            image_id = int(loaded.config.image_token_id)
            image_report = {
                "prompt_tokens": int(image_ids.shape[1]),
                "image_tokens": int((image_ids == image_id).sum()),
                "image_grid_thw": [int(v) for v in image_inputs["image_grid_thw"][0]],
                "tokens_generated": int(img_out.shape[1] - image_ids.shape[1]),
                "text": _snippet(tokenizer, img_out[0, image_ids.shape[1] :]),
            }
            if cuda:
                image_peak = sum(torch.cuda.max_memory_allocated(i) for i in used_gpus)
    except torch.cuda.OutOfMemoryError as exc:
        raise SmokeError(f"out of GPU memory generating with {spec.id} in {precision}: {exc}; try a shorter --context") from exc
    except (InvalidInput, SmokeError):
        raise
    except Exception as exc:
        raise SmokeError(f"generating with {chosen.path} failed: {type(exc).__name__}: {exc}") from exc

    prompt_tokens = int(text_inputs["input_ids"].shape[1])
    generated = int(out.shape[1]) - prompt_tokens
    tps, per_token = _decode_rate(stamps)
    context = context_tokens or (prompt_tokens + new_tokens)
    warnings = list(chosen.warnings)

    nvml_delta = cuda_free_delta = None
    if cuda:
        generate_peak = sum(per_gpu.values()) if per_gpu else 0
        peak = max(load_peak, generate_peak, image_peak)
        nvml_now = _nvml_used(used_gpus)
        if nvml_before is not None and nvml_now is not None and nvml_after_load is not None:
            nvml_delta = max(nvml_now, nvml_after_load) - nvml_before
        cuda_free_delta = free_before - sum(torch.cuda.mem_get_info(i)[0] for i in used_gpus)
    else:
        generate_peak = None
        peak = max(0, _rss_peak_bytes() - rss_before)

    roofline = None
    if per_token:
        kv_bytes = 4 if precision == "fp32" else 2
        moved = decode_bytes_per_token(loaded, config, prompt_tokens + new_tokens // 2, kv_bytes)
        roofline = {"bytes_per_token": float(moved), "seconds_per_token": per_token,
                    "achieved_bytes_per_second": moved / per_token}  # fmt: skip
        if measure_bandwidth and cuda:
            try:
                copy_bw = measure_copy_bandwidth(used_gpus[0])
                roofline["copy_bandwidth_bytes_per_second"] = copy_bw
                roofline["fraction_of_copy_bandwidth"] = moved / per_token / copy_bw
            except torch.cuda.OutOfMemoryError:
                warnings.append("no room left on the GPU to measure copy bandwidth")

    try:
        estimate = _estimate(config, precision, context, device, skip)
    except (ImportError, ProvisionError) as exc:
        estimate = None
        warnings.append(f"no memory estimate for this config: {exc}")
    stand_in = spec.id if chosen.kind != "weights" else None
    text_snippet = _snippet(tokenizer, out[0, prompt_tokens:])
    del loaded
    if cuda:
        torch.cuda.empty_cache()
    return SmokeReport(
        model=spec.id,
        source=chosen.kind,
        precision=precision,
        device=device,
        load_seconds=load_seconds,
        peak_memory_bytes=int(peak),
        estimated_memory_bytes=int(estimate.total) if estimate is not None else None,
        tokens_generated=generated,
        tokens_per_second=tps,
        stand_in_for=stand_in,
        model_path=str(chosen.path) if not chosen.cleanup else None,
        gpus=used_gpus,
        context_tokens=context,
        prompt_tokens=prompt_tokens,
        weights_bytes=int(weights_bytes),
        generate_peak_bytes=generate_peak,
        per_gpu_peak_bytes=per_gpu,
        reserved_peak_bytes=reserved,
        nvml_used_delta_bytes=nvml_delta,
        cuda_free_delta_bytes=cuda_free_delta,
        estimate=_estimate_dict(estimate),
        roofline=roofline,
        image=image_report,
        text=text_snippet,
        processor=how,
        versions=_versions(),
        warnings=tuple(warnings),
    )


def _estimate_dict(estimate: Any) -> dict[str, int] | None:
    """The estimate's parts, plus ``peak_allocated`` where the estimator gives it."""
    if estimate is None:
        return None
    names = ("weights", "kv_cache", "activations", "overhead", "total", "peak_allocated")
    values = {k: getattr(estimate, k, None) for k in names}
    return {k: int(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)} or None
