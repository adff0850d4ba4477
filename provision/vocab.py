"""The words every stage shares, defined once: precisions, devices, schema ids, variants, indexes.

A value that two stages must agree on lives here and nowhere else, so a new precision or a
schema bump is one edit. Nothing here does I/O or imports another provision module.
"""

from __future__ import annotations

import re

__all__ = [
    "ARCH_RE",
    "BUILD_SCHEMA",
    "CC_RE",
    "DEFAULT_CONTEXT",
    "DEFAULT_ENGINE",
    "DEVICES",
    "DEVICE_CHOICES",
    "DOCTOR_SCHEMA",
    "ENGINE_CHOICES",
    "HOST_SCHEMA",
    "IMAGE_DIGEST_RE",
    "LOCK_SCHEMA",
    "MIN_SERVING_CONTEXT",
    "MODELS_SCHEMA",
    "OUTPUT_BASE",
    "PLAN_PRECISIONS",
    "PLAN_SCHEMA",
    "PLATFORMS",
    "PRECISIONS",
    "PYPI_INDEX",
    "PYTHON_MINOR_RE",
    "PYTORCH_INDEX",
    "QUANTIZED",
    "RENDER_SCHEMA",
    "SMOKE_SCHEMA",
    "VARIANT_RE",
    "is_buildable_variant",
    "parse_arch",
]

#: Every precision, best quality first: the order the planner tries them in.
PRECISIONS = ("bf16", "fp16", "int8", "nf4", "fp32")
#: What a plan's ``precision`` may be: the above, and fp8, which only a serving engine quantizes to.
PLAN_PRECISIONS = ("bf16", "fp16", "fp8", "int8", "nf4", "fp32")
#: The serving engines ``--engine`` chooses from; ``auto`` takes the best one the host runs.
ENGINE_CHOICES = ("auto", "vllm", "sglang", "transformers")
#: The precisions bitsandbytes quantizes in flight.
QUANTIZED = ("int8", "nf4")
#: Where a model can be placed; ``auto`` lets the planner choose.
DEVICES = ("cuda", "cpu", "mps")
DEVICE_CHOICES = ("auto", *DEVICES)

HOST_SCHEMA = "provision.host/v1"
PLAN_SCHEMA = "provision.plan/v1"
LOCK_SCHEMA = "provision.lock/v1"
SMOKE_SCHEMA = "provision.smoke/v1"
DOCTOR_SCHEMA = "provision.doctor/v1"
RENDER_SCHEMA = "provision.render/v1"
BUILD_SCHEMA = "provision.build/v1"
MODELS_SCHEMA = "provision.models/v1"

#: Where a checkout keeps what ``nox -s provision`` renders and builds, one folder per host and model below it
#: (``build/provision/<host-id>/<model-id>/``).
OUTPUT_BASE = "build/provision"

#: Tokens budgeted for a model whose serving context the catalog does not give (a local model
#: directory); a catalog model's default is its serving context (``ModelServe.context``). Plans
#: written before they carried ``serve`` were budgeted for this too.
DEFAULT_CONTEXT = 4096
#: The least context a default plan lowers to when the serving context does not fit. Below this a
#: phone agent cannot work: one screenshot at the pixel cap (about 3,200 visual tokens), the system
#: prompt and a short history (about 1,500) and the 3,000 tokens Open-AutoGLM allows an answer. A
#: host that holds only less is refused, not served a context that fails.
MIN_SERVING_CONTEXT = 8192
#: ``--engine``'s default: the best engine the host runs, else ``transformers serve``.
DEFAULT_ENGINE = "auto"

#: A Python minor as plans and matrices write it: ``3.11``.
PYTHON_MINOR_RE = re.compile(r"3\.\d{1,2}")
#: A compute capability as the matrices write it: ``8.6``, ``12.0``.
CC_RE = re.compile(r"\d{1,2}\.\d")
#: A CUDA architecture a build ships kernels for: ``sm_86``, ``sm_120``, ``sm_90a``.
ARCH_RE = re.compile(r"sm_(\d{1,2})(\d)a?")
#: A PyTorch index variant name: ``cpu``, ``cu128``, ``rocm6.4``.
VARIANT_RE = re.compile(r"cpu|cu\d{3}|rocm\d+(\.\d+)*")
_BUILDABLE_RE = re.compile(r"cpu|cu\d{3}")
#: A container image's content digest, as ``FROM name:tag@<digest>`` takes it: ``sha256:<64 hex>``.
IMAGE_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")

#: Wheel platforms, as the matrices name them (Intel Macs: torch 2.2.x is the last with wheels).
PLATFORMS = ("linux-x86_64", "linux-aarch64", "windows-x86_64", "macos-arm64", "macos-x86_64")

PYTORCH_INDEX = "https://download.pytorch.org/whl/"
PYPI_INDEX = "https://pypi.org/simple"


def parse_arch(arch: str) -> tuple[int, int]:
    """``sm_86`` -> (8, 6); ``sm_120`` -> (12, 0); ``sm_90a`` -> (9, 0).

    :raises ValueError: ``arch`` is not an architecture name.
    """
    match = ARCH_RE.fullmatch(arch)
    if not match:
        raise ValueError(arch)
    return int(match.group(1)), int(match.group(2))


def is_buildable_variant(name: str) -> bool:
    """A variant the toolkit renders environments for: the CPU build or a CUDA build (no ROCm yet)."""
    return _BUILDABLE_RE.fullmatch(name) is not None
