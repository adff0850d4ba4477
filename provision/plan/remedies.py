"""Why nothing fit, and what to change: the search's rejections turned into a message and remedies.

The rejection that came closest to a plan (``Search.binding``: a build the driver runs but without
kernels for the GPU is closer than one the driver cannot run) becomes the message, and its rule
adds its concrete change; rejections from before any build was tried add theirs after it. The
thresholds a remedy names come from the matrix (driver floors from ``cuda.toml``, compute
capabilities from the torch builds' architectures and from ``bitsandbytes.toml``), never from
copies of those numbers here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provision.plan.budget import ContextGoal, gb, ram_needed
from provision.plan.compat import cc_text
from provision.plan.memory import estimate_memory
from provision.plan.rejections import Rejection, Rule, Search
from provision.plan.workload import workload_for
from provision.vocab import PYTORCH_INDEX, parse_arch

if TYPE_CHECKING:
    from provision.data.catalog import ModelSpec
    from provision.data.matrix import Matrix
    from provision.host.profile import HostProfile
    from provision.plan.document import Preferences

__all__ = ["remedies"]

#: Rules the search applies before trying a build, in the order their remedies are listed.
_SEARCH_RULES = (Rule.GLIBC, Rule.PYTHON, Rule.PLATFORM, Rule.WHEELHOUSE_VISION, Rule.WHEELHOUSE, Rule.PRECISION,
                 Rule.MEMORY, Rule.VARIANT)
#: ... of which these say nothing once a build was tried on a placement that fits: that build binds.
_ONLY_WITHOUT_BINDING = frozenset({Rule.GLIBC, Rule.PYTHON, Rule.PLATFORM, Rule.WHEELHOUSE_VISION, Rule.WHEELHOUSE,
                                   Rule.VARIANT})
#: ... of which these are told by their last rejection: the most context tried (memory), the oldest torch and so the
#: lowest glibc floor (glibc); the others by their first, the newest torch.
_TOLD_BY_LAST = frozenset({Rule.MEMORY, Rule.GLIBC})
#: How many of the newest CUDA families a driver remedy names: the ones current torch builds use.
_DRIVER_FAMILIES = 2


def remedies(host: HostProfile, matrix: Matrix, model: ModelSpec, prefs: Preferences,
             search: Search, goal: ContextGoal) -> tuple[str, list[str]]:
    """Turn the rejections into one message and concrete changes, most actionable first.

    ``goal``: the context of the search that failed (the least it tried is ``goal.floor``).
    """
    binding = search.binding
    texts = [binding.text] if binding is not None else []
    changes = _binding_changes(binding, host, matrix, model, prefs) if binding is not None else []
    python = prefs.python or host.python_minor
    # Newer torch releases without wheels for this Python say nothing when older ones have them and
    # memory is what failed: relaxing the Python would not give a plan, so it must not lead the message.
    python_binds = not any(python in r.pythons for r in matrix.torch) or not search.of(Rule.MEMORY)
    for rule in _SEARCH_RULES:
        found = search.of(rule)
        if not found or (binding is not None and rule in _ONLY_WITHOUT_BINDING):
            continue
        if rule is Rule.PYTHON and not python_binds:
            continue
        texts.append((found[-1] if rule in _TOLD_BY_LAST else found[0]).text)
        changes += _search_changes(rule, found, host, model, prefs, search, goal)
    message = texts[0] if texts else f"no torch build in the matrix fits this host for {model.name}"
    return message, changes or ["check the host profile against matrices/torch.toml"]


def _binding_changes(binding: Rejection, host: HostProfile, matrix: Matrix, model: ModelSpec,
                     prefs: Preferences) -> list[str]:
    """The change that gets a build past the stage where the closest candidate stopped."""
    rule = binding.rule
    if rule is Rule.DRIVER:
        return [f"update the NVIDIA driver ({_driver_floors(host, matrix)})"]
    if rule is Rule.KERNELS:
        floor, major = _current_cc_floor(host, matrix)
        return [f"use a GPU whose architecture current torch builds include (compute capability >= {cc_text(floor)} "
                f"for CUDA {major} builds), or --device cpu"]
    if rule is Rule.TEGRA:
        return ["install NVIDIA's JetPack builds of torch for Jetson (provision plans PyTorch's own "
                "wheels only), or run on the CPU with --device cpu"]
    if rule is Rule.BITSANDBYTES:
        if prefs.precision:
            return ["choose a precision the GPU supports, or leave --precision out"]
        bnb = next((r for r in matrix.bitsandbytes if host.platform in r.platforms), matrix.bitsandbytes[0])
        return [f"use a GPU that bitsandbytes supports (compute capability >= {cc_text(bnb.min_cc_4bit)} for 4-bit, "
                f">= {cc_text(bnb.min_cc_int8)} for int8), or --device cpu"]
    if rule is Rule.TRANSFORMERS:
        return [f"pick a newer torch (--torch) that transformers >= {model.min_transformers} supports"]
    if rule is Rule.TRANSFORMERS_PYTHON:
        return [f"use Python {binding.python_floor} (--python X.Y plans for another interpreter)"]
    return []


def _driver_floors(host: HostProfile, matrix: Matrix) -> str:
    """``>= X runs CUDA N builds`` for the newest CUDA families, with this OS's floors from ``cuda.toml``."""
    families = sorted(matrix.families, key=lambda f: f.major)[-_DRIVER_FAMILIES:]
    return "; ".join(f">= {f.min_driver(host.os)} runs CUDA {f.major} builds" for f in families)


def _current_cc_floor(host: HostProfile, matrix: Matrix) -> tuple[tuple[int, int], int]:
    """(lowest compute capability, CUDA major) of the newest torch's builds for the newest CUDA on this platform."""
    for release in matrix.torch:
        builds = [v for v in release.variants if v.cuda is not None and host.platform in v.platforms]
        if builds:
            major = max(v.cuda.major for v in builds if v.cuda is not None)
            archs = [a for v in builds if v.cuda is not None and v.cuda.major == major for a in v.archs_for(host.platform)]
            return min(parse_arch(a) for a in archs), major
    raise AssertionError("a kernels rejection implies a CUDA build for the platform")


def _search_changes(rule: Rule, found: list[Rejection], host: HostProfile, model: ModelSpec, prefs: Preferences,
                    search: Search, goal: ContextGoal) -> list[str]:
    """The change for a rule the search applied before any build was tried."""
    if rule is Rule.GLIBC:
        least = min(r.glibc_floor for r in found if r.glibc_floor is not None)  # the smallest upgrade that admits one
        return [f"use a Linux with glibc >= {least} (this host has {host.glibc}): pip refuses wheels above it"]
    if rule is Rule.PYTHON:
        known = sorted({p for r in found for p in r.pythons}, key=lambda v: tuple(int(x) for x in v.split(".")))
        return [f"use a Python torch has wheels for ({known[0]} - {known[-1]}); "
                "--python X.Y plans for another interpreter"]
    if rule is Rule.WHEELHOUSE_VISION:
        return [f"add the torchvision wheel built like torch (for a CPU torch: the +cpu build from {PYTORCH_INDEX}cpu) "
                "to the wheelhouse, or PyPI's torch with its torchvision, or plan without --wheelhouse"]
    if rule is Rule.WHEELHOUSE:
        return ["add a torch wheel for this host to the wheelhouse, or plan without --wheelhouse"]
    if rule is Rule.PRECISION:
        return ["choose another --precision, or leave it out"]
    if rule is Rule.MEMORY:
        return _memory_changes(host, model, prefs, search, goal)
    if rule is Rule.VARIANT:
        return ["choose a variant this torch release ships for the platform, or leave --variant out"]
    return []


def _memory_changes(host: HostProfile, model: ModelSpec, prefs: Preferences, search: Search,
                    goal: ContextGoal) -> list[str]:
    """Room for the model: less context, a bigger or second GPU, or the CPU with the RAM it would need."""
    changes = ["drop --precision to let the planner pick one that fits"] if prefs.precision else []
    lower = (f"pass a --context below {goal.floor:,} (the least a default plan lowers the context to)"
             if goal.can_lower else f"lower --context (now {goal.floor:,})")
    if not host.gpus:
        return [*changes, lower, "use a machine with more RAM, or one with an NVIDIA GPU"]
    changes.append("free GPU memory used by other processes")
    if search.min_gpu_need is not None:
        need, precision = search.min_gpu_need
        changes.append(f"use a GPU with at least {gb(need)} free ({precision}), or add a second GPU to split over")
    changes.append(lower)
    images = workload_for(model, context_tokens=goal.floor, images=prefs.images,
                          max_pixels=prefs.max_pixels).image_tokens
    cpu = estimate_memory(model.config, precision="bf16", context_tokens=goal.floor, device="cpu",
                          image_tokens=images)
    changes.append(f"run on CPU with --device cpu (needs {gb(ram_needed(cpu.total))} of RAM "
                   f"in bf16; this host has {gb(host.ram_bytes)})")
    return changes
