"""Loading the model the way a user will: its auto class, ``from_pretrained``, the planned settings.

The dtype and bitsandbytes config are the plan's server's (``provision.plan.serve.ModelLoad``), the
placement the planner's, so what loads is what the server loads and ``provision.plan.memory``
estimated; load failures become ``SmokeError`` with a hint.
torch, transformers and bitsandbytes are imported inside functions.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.common.progress import step
from provision.errors import SmokeError
from provision.vocab import QUANTIZED

if TYPE_CHECKING:
    from provision.plan.serve import ModelLoad

__all__ = [
    "bf16_capable",
    "check_not_offloaded",
    "from_pretrained_kwargs",
    "load_model",
    "quantization_config",
    "require_bitsandbytes",
]


def bf16_capable(gpu: int) -> bool:
    """bf16 needs compute capability 8.0 (Ampere); older GPUs get fp16."""
    import torch

    major: int = torch.cuda.get_device_capability(gpu)[0]
    return major >= 8


def require_bitsandbytes(precision: str) -> None:
    """Fail before any download or synthetic build when int8/nf4 cannot load at all."""
    import importlib.util

    if precision in QUANTIZED and importlib.util.find_spec("bitsandbytes") is None:
        raise SmokeError(
            f"{precision} needs bitsandbytes, which is not installed in this environment; "
            "install it with `pip install bitsandbytes` (NVIDIA GPU with compute capability 6.0+), "
            "or choose --precision bf16/fp16"
        )


def quantization_config(method: str | None) -> Any:
    """The ``BitsAndBytesConfig`` that ``transformers serve --quantization METHOD`` builds, or None without one.

    The values are the server's own (transformers 5.24, ``cli/serving/model_manager.py``): nf4 with
    double quantization and no compute dtype (bitsandbytes then computes in float32), 8-bit plain, and
    no skipped modules (transformers' default: the output embedding). The smoke test quantizes as the
    server does, so it fails where the server would.
    """
    if method is None:
        return None
    from transformers import BitsAndBytesConfig

    if method == "bnb-4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    if method == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise SmokeError(f"{method!r} is not a transformers serve quantization (bnb-4bit, bnb-8bit)")


def _placement(
    device: str, gpus: Sequence[int], max_memory: Mapping[str, int] | None,
    device_map: Mapping[str, int] | None = None,
) -> tuple[Any, dict[Any, int] | None]:  # fmt: skip
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


def from_pretrained_kwargs(
    *, load: ModelLoad, device: str, gpus: Sequence[int], max_memory: Mapping[str, int] | None,
    device_map: Mapping[str, int] | None,
) -> dict[str, Any]:  # fmt: skip
    """dtype and quantization as the plan's server loads them (``load``), the planned placement, offline only."""
    import torch

    placement, limits = _placement(device, gpus, max_memory, device_map)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, load.dtype), "device_map": placement, "local_files_only": True}
    if limits is not None:
        kwargs["max_memory"] = limits
    quant = quantization_config(load.quantization)
    if quant is not None:
        kwargs["quantization_config"] = quant
    return kwargs


def load_model(
    path: Path, auto_class: str, kwargs: dict[str, Any], *, model_id: str, precision: str, sync: Callable[[], None]
) -> tuple[Any, float]:
    """The model in eval mode and the seconds ``from_pretrained`` took (placing included).

    :raises SmokeError: transformers lacks the class, the GPU ran out of memory, or loading failed.
    """
    import torch
    import transformers

    try:
        cls = getattr(transformers, auto_class)
    except AttributeError:
        raise SmokeError(f"transformers {transformers.__version__} has no {auto_class}") from None
    # Import the model's code now, so the timing covers reading and placing the weights;
    # only a warm-up: from_pretrained reports real problems.
    with contextlib.suppress(Exception):
        cls._model_mapping[type(transformers.AutoConfig.from_pretrained(path, local_files_only=True))]
    start = time.perf_counter()
    where = kwargs.get("device_map")
    shown = where.get("", where) if isinstance(where, dict) and len(where) == 1 else "the planned GPUs"
    try:
        with step(f"loading {path} in {precision} onto {shown}"):
            loaded = cls.from_pretrained(path, **kwargs)
            sync()
    except torch.cuda.OutOfMemoryError as exc:
        raise SmokeError(
            f"out of GPU memory loading {model_id} in {precision}: {exc}; "
            "try a smaller precision (--precision nf4) or more GPUs"
        ) from exc
    except Exception as exc:
        raise SmokeError(f"loading {path} with {auto_class} in {precision} failed: {type(exc).__name__}: {exc}") from exc
    seconds = time.perf_counter() - start
    check_not_offloaded(loaded, kwargs.get("device_map"))
    loaded.eval()
    return loaded, seconds


def check_not_offloaded(model: Any, device_map: Any) -> None:
    """A GPU load that put weights on the CPU or disk would run, slowly: refuse it instead.

    :raises SmokeError: naming the modules accelerate placed off the GPU.
    """
    placed = getattr(model, "hf_device_map", None)
    wants_gpu = device_map == "auto" or (isinstance(device_map, dict)
                                         and any(not isinstance(v, str) for v in device_map.values()))
    if not wants_gpu or not isinstance(placed, dict):
        return
    offloaded = sorted(name for name, where in placed.items() if where in ("cpu", "disk", "meta"))
    if offloaded:
        shown = ", ".join(offloaded[:3]) + (f" and {len(offloaded) - 3} more" if len(offloaded) > 3 else "")
        raise SmokeError(f"the model did not fit the GPUs: {shown} went to the CPU or disk; "
                         "provision never offloads silently. Plan again (provision plan) for this machine's free memory")
