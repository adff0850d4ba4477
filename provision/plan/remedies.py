"""Why nothing fit, and what to change: the planner's rejections turned into a message and remedies.

The search records every rejection with its kind; the one that came closest to a plan (a build
that the driver runs but has no kernels for the GPU is closer than one the driver cannot run)
becomes the message, and each kind adds its concrete remedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from packaging.version import Version

from provision.plan.budget import gb, ram_needed

if TYPE_CHECKING:
    from provision.data.catalog import ModelSpec
    from provision.host.profile import HostProfile
    from provision.plan.document import Preferences

__all__ = ["Search", "remedies"]


@dataclass(slots=True)
class Search:
    """Collects why candidates were rejected, to build remedies when nothing fits."""

    rejections: dict[str, list[str]] = field(default_factory=dict)
    #: the first reason each torch release was passed over, for the "torch" reason.
    by_release: dict[Version, str] = field(default_factory=dict)
    #: the smallest GPU memory any tried placement needed: (bytes, precision).
    min_gpu_need: tuple[int, str] | None = None

    #: Python minors the rejected torch releases have wheels for, and transformers' Python floor.
    pythons: set[str] = field(default_factory=set)
    python_floor: str = ""
    #: the rejection that came closest to a plan: (stage, kind, why); later stages are closer.
    furthest: tuple[int, str, str] | None = None

    def stage(self, stage: int, kind: str, why: str) -> None:
        """A (torch, variant) candidate for a placement that fit failed at ``stage`` (1 driver ... 4)."""
        self.reject(kind, why)
        if self.furthest is None or stage > self.furthest[0]:
            self.furthest = (stage, kind, why)

    def need(self, required: int, precision: str) -> None:
        if self.min_gpu_need is None or required < self.min_gpu_need[0]:
            self.min_gpu_need = (required, precision)

    def passed_over(self, release: Version, why: str) -> None:
        self.by_release.setdefault(release, why)

    def reject(self, kind: str, why: str) -> None:
        self.rejections.setdefault(kind, [])
        if why not in self.rejections[kind]:
            self.rejections[kind].append(why)


def remedies(host: HostProfile, model: ModelSpec, prefs: Preferences, search: Search) -> tuple[str, list[str]]:
    """Turn the rejections into one message and concrete changes, most actionable first."""
    r = search.rejections
    remedies: list[str] = []
    first = None
    binding = None
    if search.furthest is not None:  # something fit in memory but no build could run it
        _stage, binding, first = search.furthest
    if binding == "driver":
        remedies.append("update the NVIDIA driver (>= 525.60.13 runs CUDA 12 builds; >= 580 runs CUDA 13 builds)")
    if binding == "kernels":
        remedies.append("use a GPU whose architecture current torch builds include (compute capability >= 7.5 "
                        "for CUDA 13 builds), or --device cpu")
    if binding == "tegra":
        remedies.append("install NVIDIA's JetPack builds of torch for Jetson (provision plans PyTorch's own "
                        "wheels only), or run on the CPU with --device cpu")
    if binding == "bnb":
        if prefs.precision:
            remedies.append("choose a precision the GPU supports, or leave --precision out")
        else:
            remedies.append("use a GPU that bitsandbytes supports (compute capability >= 6.0 for 4-bit, "
                            ">= 7.5 for int8), or --device cpu")
    if binding == "transformers":
        remedies.append("pick a newer torch (--torch) that transformers >= 5 supports")
    if binding == "python":
        remedies.append(f"use Python {search.python_floor} (--python X.Y plans for another interpreter)")
    if "python" in r and binding is None:
        first = first or r["python"][0]
        known = sorted(search.pythons, key=lambda v: tuple(int(x) for x in v.split(".")))
        remedies.append(f"use a Python torch has wheels for ({known[0]} - {known[-1]}); "
                        "--python X.Y plans for another interpreter")
    if "platform" in r and binding is None:
        first = first or r["platform"][0]
    if "wheelhouse" in r and binding is None:
        first = first or r["wheelhouse"][0]
        remedies.append("add a torch wheel for this host to the wheelhouse, or plan without --wheelhouse")
    if "precision" in r:
        first = first or r["precision"][0]
        remedies.append("choose another --precision, or leave it out")
    if "memory" in r:
        first = first or r["memory"][-1]
        if prefs.precision:
            remedies.append("drop --precision to let the planner pick one that fits")
        if host.gpus:
            remedies.append("free GPU memory used by other processes")
            if search.min_gpu_need is not None:
                need, precision = search.min_gpu_need
                remedies.append(f"use a GPU with at least {gb(need)} free ({precision}), "
                                "or add a second GPU to split over")
            remedies.append(f"lower --context (now {prefs.context_tokens})")
            from provision.plan.memory import estimate_memory

            cpu = estimate_memory(model.config, precision="bf16", context_tokens=prefs.context_tokens, device="cpu")
            need_ram = ram_needed(cpu.total)
            remedies.append(f"run on CPU with --device cpu (needs {gb(need_ram)} of RAM "
                            f"in bf16; this host has {gb(host.ram_bytes)})")
        else:
            remedies.append(f"lower --context (now {prefs.context_tokens})")
            remedies.append("use a machine with more RAM, or one with an NVIDIA GPU")
    if "variant" in r and binding is None:
        first = first or r["variant"][0]
        remedies.append("choose a variant this torch release ships for the platform, or leave --variant out")
    message = first or f"no torch build in the matrix fits this host for {model.name}"
    return message, remedies or ["check the host profile against matrices/torch.toml"]
