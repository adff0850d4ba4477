"""The planner: a pure function of (host, matrix, model, preferences) -> Plan.

No I/O, no torch import. Search order follows what users want most: the best
precision that fits (bf16 > fp16 > int8 > nf4), placed on one GPU before being split,
then the newest torch whose build the driver runs and which has kernels for every
GPU it uses. Every choice carries a human reason; when nothing fits,
``NoViablePlan`` says what to change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from provision.errors import InvalidInput, NoViablePlan
from provision.plan.budget import ContextGoal, gb, usable_ram
from provision.plan.compat import (
    BF16_MIN_CC,
    cc_text,
    compatibility_warning,
    driver_floor,
    driver_runs,
    has_kernels,
    supports_bf16,
)
from provision.plan.document import Placement, Plan, Preferences, Reason
from provision.plan.rejections import Rejection, Rule, Search, Told
from provision.plan.remedies import remedies
from provision.plan.serve import Serve, transformers_serve
from provision.plan.workload import PHONE_SCREEN, Workload, workload_for
from provision.vocab import DEVICE_CHOICES, ENGINE_CHOICES, PRECISIONS, PYPI_INDEX, QUANTIZED, parse_arch

if TYPE_CHECKING:
    from provision.data.architecture import Architecture
    from provision.data.catalog import ModelSpec
    from provision.data.matrix import BnbRelease, Matrix, TorchRelease, TorchVariant
    from provision.host.profile import GpuInfo, HostProfile
    from provision.plan.engine_plan import NoEngine
    from provision.plan.memory import MemoryEstimate

__all__ = ["plan", "sibling_variants"]

#: The packages pinned beside torch and transformers, when the matrix has a release for the torch and Python.
_COMPANIONS = ("accelerate", "safetensors", "huggingface-hub", "tokenizers", "pillow")
#: transformers[serving]'s extras: what `transformers serve`, the server of a transformers plan, imports.
_SERVING = ("fastapi", "openai", "pydantic", "starlette", "uvicorn")


@dataclass(frozen=True, slots=True)
class _Job:
    """One planning request: what every step of the search reads, and where it records rejections.

    ``goal`` is the context this pass plans for; ``workload`` the request's screenshots (its
    ``image_tokens`` are the same at every context the goal allows: its floor leaves room for them);
    ``estimates`` remembers the memory estimates by (precision, tokens, device), which a lowered
    context asks for several times; ``told`` lets the torch reason point to a driver floor or glibc the
    engine reason gave instead of saying it twice.
    """

    host: HostProfile
    matrix: Matrix
    model: ModelSpec
    prefs: Preferences
    python: str
    search: Search
    workload: Workload
    goal: ContextGoal
    arch: Architecture
    estimates: dict[tuple[str, int, str], MemoryEstimate] = field(default_factory=dict)
    #: host facts the engine reason already gives (engines passed over for them)
    told: Told = field(default_factory=Told)


@dataclass(frozen=True, slots=True)
class _Option:
    """A placement, the context it budgets for, and why that is below the goal's target (None: it is not)."""

    placement: Placement
    context: int
    lowered: str | None = None


@dataclass(frozen=True, slots=True)
class _Build:
    """A torch build, and whether (and how) the host's driver runs it; CPU builds always run."""

    release: TorchRelease
    variant: TorchVariant
    runs: bool = True
    native: bool = True
    driver_why: str | None = None


# ---------------------------------------------------------------------------
# Candidate builds


def _companion(matrix: Matrix, name: str, torch: Version, python: str,
               minimum: Version | None = None) -> Version | None:
    for c in matrix.companion_versions(name):
        if torch in c.requires_torch and Version(python) in c.requires_python and (minimum is None or c.version >= minimum):
            return c.version
    return None


def _in_wheelhouse(release: TorchRelease, variant: TorchVariant, platform: str,
                   available: frozenset[tuple[Version, str]]) -> bool:
    return _in_wheelhouse_as(release.version, release, variant, platform, available)


def _vision_installable(job: _Job, release: TorchRelease, variant: TorchVariant) -> bool:
    """A vision model's torchvision, built like ``variant``, is in the wheel sources (or nothing restricts it)."""
    available = job.prefs.torchvision_available
    if not job.model.has_vision or available is None or release.torchvision is None:
        return True
    return _in_wheelhouse_as(release.torchvision, release, variant, job.host.platform, available)


def _in_wheelhouse_as(version: Version, release: TorchRelease, variant: TorchVariant, platform: str,
                      available: frozenset[tuple[Version, str]]) -> bool:
    return (version, variant.name) in available or (
        release.on_pypi(variant, platform) and (version, "") in available)


def _release_variants(job: _Job, release: TorchRelease, *, cuda: bool) -> list[TorchVariant]:
    """The release's builds of the kind asked for that this platform, the preferences and Python allow."""
    prefs, platform, python = job.prefs, job.host.platform, job.python
    torch = release.version
    floor, glibc = release.glibc_for(platform), job.host.glibc
    if floor is not None and glibc is not None and glibc < floor:
        job.search.reject(Rejection(rule=Rule.GLIBC, torch=torch, glibc=glibc, glibc_floor=floor,
                                    text=f"torch {torch}'s wheels need glibc >= {floor}, this host has {glibc}"))
        job.search.passed_over(torch, Rule.GLIBC, f"the wheels need glibc >= {floor}"
                                                  + ("" if job.told.glibc else f", this host has {glibc}"))
        return []
    variants = [v for v in release.variants if (v.cuda is not None) == cuda and platform in v.platforms]
    if prefs.variant is not None:
        variants = [v for v in variants if v.name == prefs.variant]
        if not variants:
            job.search.reject(Rejection(rule=Rule.VARIANT, torch=torch, variant=prefs.variant,
                                        text=f"torch {torch} has no {prefs.variant} build for {platform}"))
            return []
    if prefs.torch_available is not None:
        installable = [v for v in variants if _in_wheelhouse(release, v, platform, prefs.torch_available)]
        if not cuda and prefs.variant is None:  # PyPI's build is a CUDA build on Linux x86_64: it runs on a CPU too
            installable += [v for v in release.variants if v.cuda is not None and platform in v.platforms
                            and release.on_pypi(v, platform) and (torch, "") in prefs.torch_available]
        if not installable:
            job.search.reject(Rejection(rule=Rule.WHEELHOUSE, torch=torch,
                                        text=f"torch {torch} is not in the configured wheel sources"))
            return []
        variants = [v for v in installable if _vision_installable(job, release, v)]
        if not variants:
            job.search.reject(Rejection(rule=Rule.WHEELHOUSE_VISION, torch=torch,
                                        text=f"torch {torch}'s torchvision {release.torchvision} "
                                             f"({'/'.join(v.name for v in installable)} build), which {job.model.name}'s "
                                             "image processor needs, is not in the configured wheel sources"))
            return []
        if not cuda and any(v.cuda is None for v in variants):  # the CPU build itself, when it installs
            variants = [v for v in variants if v.cuda is None]
    if not variants:
        job.search.reject(Rejection(rule=Rule.PLATFORM, torch=torch,
                                    text=f"torch {torch} has no {'CUDA' if cuda else 'CPU'} build for {platform}"))
        return []
    fitting = [v for v in variants if python in release.pythons_for(v)]
    if not fitting:
        why = f"no wheels for Python {python} (has {', '.join(release.pythons)})"
        job.search.reject(Rejection(rule=Rule.PYTHON, text=f"torch {torch} has {why}", torch=torch, python=python,
                                    pythons=release.pythons))
        job.search.passed_over(torch, Rule.PYTHON, why)
    return fitting


def _torch_candidates(job: _Job, *, cuda: bool) -> list[tuple[TorchRelease, TorchVariant]]:
    """(release, variant) pairs that exist for this platform and Python, newest torch first."""
    out: list[tuple[TorchRelease, TorchVariant]] = []
    for release in job.matrix.torch:
        if job.prefs.torch_version is not None and release.version != job.prefs.torch_version:
            continue
        # Highest CUDA first within a release: newest kernels and libraries.
        fitting = sorted(_release_variants(job, release, cuda=cuda), key=lambda v: v.cuda or Version("0"), reverse=True)
        out.extend((release, v) for v in fitting)
    return out


def _cuda_builds(job: _Job) -> list[_Build]:
    """The CUDA builds to try, each with the driver's verdict; within a release, native before compatible."""
    builds = []
    for release, variant in _torch_candidates(job, cuda=True):
        assert variant.cuda is not None
        runs, native, why = driver_runs(job.host, job.matrix, variant.cuda)
        builds.append(_Build(release=release, variant=variant, runs=runs, native=native, driver_why=why))
    builds.sort(key=lambda b: (b.release.version, b.native, b.variant.cuda), reverse=True)
    return builds


def _pypi_first(prefs: Preferences) -> bool:
    """The torch index did not answer and nothing else names the build: PyPI's build of a release is tried first."""
    return prefs.torch_index_reachable is False and prefs.index_decides


def _index_choice(job: _Job, build: _Build, placement: Placement) -> _Build | None:
    """The build of ``build``'s release that the index order plans on ``placement``, when PyPI's ``build`` was
    planned only because the torch index was unreachable; None when it would have been planned anyway."""
    if not _pypi_first(job.prefs) or not build.release.on_pypi(build.variant, job.host.platform):
        return None
    placed = [g for g in job.host.gpus if g.index in placement.gpus]
    for other in _cuda_builds(replace(job, search=Search())):
        if other.release.version != build.release.version or not other.runs:
            continue
        if other.variant.name == build.variant.name:
            return None
        if not all(has_kernels(g, other.variant, job.host.platform, can_jit=other.native)[0] for g in placed):
            continue
        if placement.precision in QUANTIZED and isinstance(_bnb_for(job, other, placed, placement.precision), Rejection):
            continue
        return other
    return None


# ---------------------------------------------------------------------------
# Placements


def _precision_order(gpus: Sequence[GpuInfo], forced: str | None) -> list[str]:
    """bf16 where a GPU has it, fp16 where one lacks it; then int8, then nf4. A forced precision alone."""
    if forced is not None:
        return [forced]
    order = ["bf16"] if any(supports_bf16(g) for g in gpus) else []
    if not all(supports_bf16(g) for g in gpus):
        order.append("fp16")
    return [*order, "int8", "nf4"]


def _estimate(job: _Job, precision: str, tokens: int, device: str = "cuda") -> MemoryEstimate:
    """The model on one device at ``tokens``, estimated once per job."""
    from provision.plan.memory import estimate_memory

    key = (precision, tokens, device)
    found = job.estimates.get(key)
    if found is None:
        found = job.estimates[key] = estimate_memory(job.arch, precision=precision, context_tokens=tokens, device=device,
                                                     image_tokens=job.workload.image_tokens)
    return found


def _fits_in(job: _Job, precision: str, available: int, device: str = "cuda") -> Callable[[int], bool]:
    return lambda tokens: _estimate(job, precision, tokens, device).total <= available


def _single_gpu_placements(job: _Job, precision: str, by_free: Sequence[GpuInfo]) -> list[_Option]:
    """The model on each GPU it fits on alone, roomiest first (``by_free`` order), at the most context it holds."""
    goal = job.goal
    least = _estimate(job, precision, goal.floor)
    job.search.need(least.total, precision)
    out = []
    for gpu in by_free:
        free = gpu.memory_free_bytes
        context = goal.best(_fits_in(job, precision, free))
        if context is None:
            continue
        est = _estimate(job, precision, context)
        lowered = None if context == goal.target else (
            f"{goal.target:,} needs {gb(_estimate(job, precision, goal.target).total)} in {precision}, GPU {gpu.index} "
            f"({gpu.name}) has {gb(free)} free")
        out.append(_Option(Placement(
            device="cuda", gpus=(gpu.index,), precision=precision, required_bytes=est.total, available_bytes=free,
            breakdown=est.breakdown, why=f"{gb(est.total)} fits in {gb(free)} free on GPU {gpu.index} ({gpu.name})"),
            context, lowered))
    if not out:
        best = by_free[0]
        job.search.reject(Rejection(
            rule=Rule.MEMORY, precision=precision, needed_bytes=least.total, available_bytes=best.memory_free_bytes,
            gpu=best.name, text=f"{job.model.name} needs {gb(least.total)} in {precision} for {goal.floor:,} tokens; "
                                f"GPU {best.index} ({best.name}) has {gb(best.memory_free_bytes)} free"))
    return out


def _split_placement(job: _Job, precision: str, by_free: Sequence[GpuInfo]) -> _Option | None:
    """The model split layer by layer over several GPUs, when it fits that way and needs more than one."""
    from provision.plan.memory import GpuSplit, split_across_gpus

    free = {g.index: g.memory_free_bytes for g in by_free}
    splits: dict[int, GpuSplit] = {}

    def fits(tokens: int) -> bool:
        splits[tokens] = split_across_gpus(job.arch, precision=precision, context_tokens=tokens, free_bytes=free,
                                           image_tokens=job.workload.image_tokens)
        return splits[tokens].fits

    goal, total_free = job.goal, sum(free.values())
    context = goal.best(fits)
    if context is None:
        job.search.reject(Rejection(
            rule=Rule.MEMORY, precision=precision, available_bytes=total_free,
            text=f"{job.model.name} in {precision} for {goal.floor:,} tokens does not fit split over {len(by_free)} "
                 f"GPUs ({gb(total_free)} free together)"))
        return None
    split = splits[context]
    if len(split.gpus) < 2:
        return None
    used = tuple(sorted(split.gpus))
    breakdown: dict[str, int] = {}
    for share in split.shares:
        for key, value in share.estimate.breakdown.items():
            breakdown[key] = breakdown.get(key, 0) + value
    per_gpu = ", ".join(f"GPU {s.index} {gb(s.estimate.total)} of {gb(s.free_bytes)}" for s in split.shares)
    lowered = None if context == goal.target else (
        f"{goal.target:,} does not fit in {precision} split over {len(by_free)} GPUs ({gb(total_free)} free together)")
    return _Option(Placement(
        device="cuda", gpus=used, precision=precision, required_bytes=split.required_bytes,
        available_bytes=sum(free[i] for i in used), breakdown=breakdown,
        max_memory={str(k): v for k, v in sorted(split.max_memory.items())}, device_map=dict(split.device_map),
        why=f"{gb(split.required_bytes)} split layer by layer over {len(used)} GPUs ({per_gpu})",
    ), context, lowered)


def _cuda_placements(job: _Job, precision: str, gpus: Sequence[GpuInfo]) -> list[_Option]:
    """Ways to place the model in ``precision``: each GPU it fits on alone, roomiest first, then a split.

    Every single-GPU option is kept because a later check (kernels, bitsandbytes) can rule out one
    card and not another.
    """
    by_free = sorted(gpus, key=lambda g: (-g.memory_free_bytes, g.index))
    out = _single_gpu_placements(job, precision, by_free)
    split = _split_placement(job, precision, by_free) if len(by_free) > 1 else None
    return [*out, split] if split is not None else out


# ---------------------------------------------------------------------------
# Builds on a placement


def _kernel_notes(job: _Job, build: _Build, placed: Sequence[GpuInfo]) -> list[str] | None:
    """Which kernels each placed GPU runs in the build; None (and a rejection) when one has none."""
    platform, release, variant = job.host.platform, build.release, build.variant
    notes = []
    for gpu in placed:
        has, why = has_kernels(gpu, variant, platform, can_jit=build.native)
        if not has:
            job.search.reject(Rejection(
                rule=Rule.KERNELS, text=f"torch {release.version} {why}", torch=release.version, variant=variant.name,
                cuda=variant.cuda, gpu=gpu.name, compute_capability=gpu.compute_capability,
                cc_floor=min(parse_arch(a) for a in variant.archs_for(platform))))
            job.search.passed_over(release.version, Rule.KERNELS, why)
            return None
        notes.append(why)
    return notes


def _bnb_for(job: _Job, build: _Build, gpus: Sequence[GpuInfo], precision: str) -> BnbRelease | Rejection:
    """The newest bitsandbytes for this build and GPUs, else the most telling rejection: a GPU below a floor first,
    named with the release whose floor is lowest (the newest of those: what would be pinned)."""
    torch, variant, platform, python = build.release.version, build.variant, job.host.platform, job.python
    assert variant.cuda is not None
    cuda = Version(f"{variant.cuda.major}.{variant.cuda.minor}")

    def rejection(text: str, **numbers: Any) -> Rejection:
        return Rejection(rule=Rule.BITSANDBYTES, text=text, torch=torch, variant=variant.name, cuda=cuda,
                         precision=precision, **numbers)

    gpu_limit, other = None, []
    for rel in job.matrix.bitsandbytes:
        if platform not in rel.platforms:
            other.append(rejection(f"bitsandbytes {rel.version} has no {platform} wheels", bitsandbytes=rel.version))
        elif torch not in rel.torch or Version(python) not in rel.pythons:
            other.append(rejection(f"bitsandbytes {rel.version} does not support torch {torch} on Python {python}",
                                   bitsandbytes=rel.version, python=python))
        elif cuda not in rel.cuda_libs:
            other.append(rejection(f"bitsandbytes {rel.version} ships no library for CUDA {cuda}",
                                   bitsandbytes=rel.version))
        else:
            floor = rel.min_cc_int8 if precision == "int8" else rel.min_cc_4bit
            low = [g for g in gpus if g.compute_capability < floor]
            if not low:
                return rel
            if gpu_limit is not None and gpu_limit.cc_floor is not None and gpu_limit.cc_floor <= floor:
                continue  # a newer release with the same floor is the one to name: the one that would be pinned
            gpu_limit = rejection(f"bitsandbytes {rel.version} {precision} needs compute capability "
                                  f">= {cc_text(floor)}; {low[0].name} is {low[0].cc_text}",
                                  bitsandbytes=rel.version, gpu=low[0].name, compute_capability=low[0].compute_capability,
                                  cc_floor=floor)
    return gpu_limit or (other[0] if other else rejection(f"no bitsandbytes release in the matrix for {platform}"))


def _plan_on(job: _Job, option: _Option, usable: Sequence[GpuInfo], builds: Sequence[_Build]) -> Plan | None:
    """The first build that runs ``option``: the driver runs it, it has kernels, bitsandbytes and companions exist.

    With the torch index unreachable (``_pypi_first``), each release's PyPI build is tried before the
    release's others: the release, precision and placement are what the index order gives.
    """
    placement = option.placement
    placed = [g for g in usable if g.index in placement.gpus]
    releases: set[Version] = set()
    for build in builds:
        release, variant = build.release, build.variant
        if _pypi_first(job.prefs) and release.version not in releases:
            releases.add(release.version)
            pypi = _plan_pypi(job, option, placed, [b for b in builds if b.release.version == release.version])
            if pypi is not None:
                return pypi
        if not build.runs:
            assert variant.cuda is not None and job.host.nvidia is not None and build.driver_why is not None
            job.search.reject(Rejection(
                rule=Rule.DRIVER, text=build.driver_why, torch=release.version, variant=variant.name, cuda=variant.cuda,
                driver=Version(job.host.nvidia.driver_version),
                driver_floor=driver_floor(job.host.os, job.matrix, variant.cuda)))
            job.search.passed_over(release.version, Rule.DRIVER, f"{variant.name}: {build.driver_why}", closest=True,
                                   cuda=variant.cuda)
            continue
        kernel_notes = _kernel_notes(job, build, placed)
        if kernel_notes is None:
            continue
        bnb = None
        if placement.precision in QUANTIZED:
            found = _bnb_for(job, build, placed, placement.precision)
            if isinstance(found, Rejection):
                job.search.reject(found)
                job.search.passed_over(release.version, Rule.BITSANDBYTES, f"{variant.name}: {found.text}")
                continue
            bnb = found
        plan = _assemble(job, build, option, kernel_notes=kernel_notes, bnb=bnb)
        if plan is not None:
            return plan
    return None


def _plan_pypi(job: _Job, option: _Option, placed: Sequence[GpuInfo], builds: Sequence[_Build]) -> Plan | None:
    """``builds``' (one release's) PyPI build on ``option`` where the driver runs it, it has kernels and
    bitsandbytes; its refusals are not recorded: the index order that follows tells them where it always did."""
    pypi = next((b for b in builds if b.runs and b.release.on_pypi(b.variant, job.host.platform)), None)
    if pypi is None:
        return None
    kernel_notes = _kernel_notes(replace(job, search=Search()), pypi, placed)
    if kernel_notes is None:
        return None
    bnb = None
    if option.placement.precision in QUANTIZED:
        found = _bnb_for(job, pypi, placed, option.placement.precision)
        if isinstance(found, Rejection):
            return None
        bnb = found
    return _assemble(job, pypi, option, kernel_notes=kernel_notes, bnb=bnb)


def _usable_gpus(job: _Job) -> list[GpuInfo]:
    """The host's GPUs that PyTorch's wheels can run on: the index's aarch64 CUDA builds are SBSA, not for Jetson."""
    usable = list(job.host.gpus)
    if job.host.platform == "linux-aarch64":
        for gpu in [g for g in usable if g.compute_capability in job.matrix.tegra]:
            job.search.reject(Rejection(
                rule=Rule.TEGRA, gpu=gpu.name, compute_capability=gpu.compute_capability,
                text=f"{gpu.name} (cc {gpu.cc_text}) is a Jetson GPU under L4T; PyTorch's aarch64 "
                     "CUDA wheels are built for SBSA servers and do not run on it"))
            usable.remove(gpu)
    return usable


def _plan_cuda(job: _Job) -> Plan | None:
    builds = _cuda_builds(job)
    usable = _usable_gpus(job)
    if not usable:
        return None
    for precision in _precision_order(usable, job.prefs.precision):
        # bf16 runs only on GPUs that have it: a mixed box places bf16 on its newer cards alone.
        gpus = [g for g in usable if supports_bf16(g)] if precision == "bf16" else usable
        if not gpus:
            low = usable[0]
            job.search.reject(Rejection(
                rule=Rule.PRECISION, precision=precision, gpu=low.name, compute_capability=low.compute_capability,
                cc_floor=BF16_MIN_CC,
                text=f"bf16 needs compute capability >= {cc_text(BF16_MIN_CC)}; {low.name} is {low.cc_text}"))
            continue
        for option in _cuda_placements(job, precision, gpus):
            plan = _plan_on(job, option, usable, builds)
            if plan is not None:
                return plan
    return None


def _plan_cpu(job: _Job, device: str) -> Plan | None:
    host, model, goal = job.host, job.model, job.goal
    precision = job.prefs.precision or "bf16"
    available = usable_ram(host.ram_bytes)
    if precision in QUANTIZED:
        job.search.reject(Rejection(
            rule=Rule.PRECISION, precision=precision,
            text=f"{precision} needs bitsandbytes on an NVIDIA GPU; this plan runs on {device}"))
        return None
    context = goal.best(_fits_in(job, precision, available, "cpu"))
    if context is None:
        least = _estimate(job, precision, goal.floor, "cpu")
        job.search.reject(Rejection(
            rule=Rule.MEMORY, precision=precision, needed_bytes=least.total, available_bytes=available,
            text=f"{model.name} needs {gb(least.total)} of RAM in {precision} for {goal.floor:,} tokens; "
                 f"{gb(available)} of {gb(host.ram_bytes)} RAM is usable"))
        return None
    est = _estimate(job, precision, context, "cpu")
    where = "unified memory (MPS)" if device == "mps" else "RAM"
    lowered = None if context == goal.target else (
        f"{goal.target:,} needs {gb(_estimate(job, precision, goal.target, 'cpu').total)} in {precision}, "
        f"{gb(available)} of {where} usable")
    option = _Option(Placement(
        device=device, gpus=(), precision=precision, required_bytes=est.total, available_bytes=available,
        breakdown=est.breakdown,
        why=f"{gb(est.total)} fits in {gb(available)} usable {where}",
    ), context, lowered)
    for release, variant in _torch_candidates(job, cuda=False):
        plan = _assemble(job, _Build(release=release, variant=variant), option, kernel_notes=[], bnb=None)
        if plan is not None:
            return plan
    return None


# ---------------------------------------------------------------------------
# The plan: pins, reasons and warnings for one build on one placement


def _transformers_for(job: _Job, release: TorchRelease) -> Version | None:
    """The newest transformers the model accepts for this torch and Python; None (and a rejection) when none."""
    model, python, torch = job.model, job.python, release.version
    found = _companion(job.matrix, "transformers", torch, python, model.min_transformers)
    if found is not None:
        return found
    rows = [c for c in job.matrix.companion_versions("transformers") if c.version >= model.min_transformers]
    if rows and not any(Version(python) in c.requires_python for c in rows):
        floor = str(rows[-1].requires_python)
        job.search.reject(Rejection(
            rule=Rule.TRANSFORMERS_PYTHON, torch=torch, python=python, python_floor=floor,
            text=f"transformers >= {model.min_transformers} needs Python {floor}, not Python {python}"))
    else:
        job.search.reject(Rejection(
            rule=Rule.TRANSFORMERS, torch=torch, python=python,
            text=f"no transformers >= {model.min_transformers} in the matrix supports torch {torch} on Python {python}"))
    return None


def _pins(job: _Job, build: _Build, transformers: Version, bnb: BnbRelease | None, *, from_pypi: bool) -> dict[str, str]:
    """Exact pins for every package, sorted by name: torch as the index names it, then its companions."""
    release, variant = build.release, build.variant
    packages = {"torch": str(release.version) if from_pypi else f"{release.version}+{variant.name}",
                "transformers": str(transformers)}
    for name in (*_COMPANIONS, *_SERVING):
        version = _companion(job.matrix, name, release.version, job.python)
        if version is not None:
            packages[name] = str(version)
    if bnb is not None:
        packages["bitsandbytes"] = str(bnb.version)
    if job.model.has_vision and release.torchvision is not None:  # glm4v's image processor needs it (transformers 5)
        packages["torchvision"] = str(release.torchvision) if from_pypi else f"{release.torchvision}+{variant.name}"
    return dict(sorted(packages.items()))


def _torch_why(job: _Job, release: TorchRelease) -> str:
    """Why this release: the newest that fits, and why each newer one was passed over, nearest first.

    Consecutive newer releases passed over for the same rule are one clause, told with the reason of the
    one nearest the chosen release: what would have to change for the next newer torch to be planned.
    """
    newest = job.matrix.torch[0].version
    why = f"newest release that fits this host (matrix has up to {newest})"
    if job.prefs.torch_version is not None:
        return "requested with --torch"
    if job.prefs.torch_available is not None:
        why = "newest release that fits this host among the torch wheels in the configured wheel sources"
    groups: list[list[Version]] = []
    by_release = job.search.by_release
    for version in sorted(v for v in by_release if v > release.version):
        if groups and by_release[groups[-1][0]].rule is by_release[version].rule:
            groups[-1].append(version)
        else:
            groups.append([version])
    for versions in groups:
        span = f"torch {versions[0]} was" if len(versions) == 1 else f"torch {versions[0]} to {versions[-1]} were"
        passed = by_release[versions[0]]
        told = passed.rule is Rule.DRIVER and passed.cuda in job.told.cudas
        text = (f"{passed.why.partition(':')[0]}: a CUDA {passed.cuda} build, which needs the newer driver the "
                "engine reason names") if told else passed.why
        why += f"; {span} passed over: {text}"
    return why


def _precision_why(job: _Job, placement: Placement) -> str:
    """Why this precision, and (quantized) why each better one was passed over; where it fits is the device's reason."""
    p = placement.precision
    if job.prefs.precision:
        return "requested with --precision"
    if placement.device != "cuda":
        return "bf16 halves memory against fp32 at the checkpoint's own precision"
    placed = [g for g in job.host.gpus if g.index in placement.gpus]
    ccs = ", ".join(sorted({g.cc_text for g in placed}))
    if p == "bf16":
        return f"compute capability {ccs} supports bf16, the checkpoint's own type"
    if p == "fp16":
        return f"compute capability {ccs} has no bf16 (needs >= {cc_text(BF16_MIN_CC)}); fp16 is the 16-bit choice"
    order = _precision_order(job.host.gpus, None)
    # each better precision's first refusal; those that did not fit the same free memory are told together
    groups: dict[str, list[tuple[str, Rejection | None]]] = {}
    for better in order[:order.index(p)] if p in order else []:
        r = next((r for r in job.search.rejections if r.precision == better), None)
        memory = r is not None and r.rule is Rule.MEMORY and r.needed_bytes is not None and "; " in r.text
        key = r.text.partition("; ")[2] if r is not None and memory else f"{better}: {r.text if r else ''}"
        groups.setdefault(key, []).append((better, r))
    parts = []
    for key, group in groups.items():
        better, r = group[0]
        if r is not None and r.rule is Rule.MEMORY and key == r.text.partition("; ")[2]:
            needs = ", ".join(f"{gb(x.needed_bytes)} in {b}" for b, x in group if x is not None and x.needed_bytes)
            verb = "were" if len(group) > 1 else "was"
            parts.append(f"{' and '.join(b for b, _ in group)} {verb} passed over: {job.model.name} needs {needs}; {key}")
        else:
            parts.append(f"{better} was passed over" + (f": {r.text}" if r is not None else ""))
    return "; ".join([*parts, f"{p} is the best precision that runs and fits"])


def _reasons(job: _Job, build: _Build, option: _Option, transformers: Version, bnb: BnbRelease | None, *,
             kernel_notes: Sequence[str], index_url: str, from_pypi: bool) -> list[Reason]:
    """One reason per decision, in the order a person asks: Python, torch, variant, precision, device, pins."""
    host, model, release, variant, placement = job.host, job.model, build.release, build.variant, option.placement
    workload = replace(job.workload, context_tokens=option.context)
    python_why = ("requested with --python" if job.prefs.python else f"the host's Python is {host.python}")
    if variant.cuda is None:
        variant_why = f"CPU build for {host.platform}" + (" (MPS included)" if placement.device == "mps" else "")
    elif placement.device == "cpu":
        variant_why = (f"PyPI's torch {release.version} for {host.platform} is this CUDA {variant.cuda} build, which "
                       f"also runs on the CPU; the CPU build is not in the configured wheel sources"
                       + (" with the torchvision the image processor needs" if model.has_vision else "")
                       + " (a few GB of NVIDIA libraries come with it)")
    else:
        variant_why = f"{build.driver_why}; " + "; ".join(dict.fromkeys(kernel_notes))  # two like GPUs: said once
        passed = _index_choice(job, build, placement)
        if passed is not None:
            better = "would run natively" if passed.native and not build.native else f"has the newer CUDA {passed.variant.cuda}"
            index = f"the --index-url mirror {job.prefs.index_url}" if job.prefs.index_url else "the PyTorch index"
            variant_why = (f"PyPI's torch {release.version} for {host.platform} is this {variant.name} build; {index} "
                           "was not reachable, so PyPI's build is planned, and a render hashes it and every "
                           f"dependency ({passed.variant.name} from that index {better}); {variant_why}")
    variant_why += f"; {_installed_from(job.prefs, index_url, from_pypi=from_pypi)}"
    reasons = [
        Reason(decision="python", choice=job.python,
               why=f"{python_why}; torch {release.version} has wheels for {', '.join(release.pythons_for(variant))}"),
        Reason(decision="torch", choice=str(release.version), why=_torch_why(job, release)),
        Reason(decision="variant", choice=variant.name, why=variant_why),
        Reason(decision="precision", choice=placement.precision, why=_precision_why(job, placement)),
        Reason(decision="device", choice=placement.device, why=placement.why),
        Reason(decision="workload", choice=workload.describe(), why=_workload_why(job, workload)),
        Reason(decision="transformers", choice=str(transformers),
               why=f"{model.name} needs transformers >= {model.min_transformers}; newest pinned release "
                   f"supporting torch {release.version}"),
    ]
    if bnb is not None:
        reasons.append(Reason(decision="bitsandbytes", choice=str(bnb.version),
                              why=f"newest release with a CUDA {variant.cuda} library for torch {release.version} "
                                  f"on {host.platform}"))
    return reasons


def _installed_from(prefs: Preferences, index_url: str, *, from_pypi: bool) -> str:
    """Where the rendered requirements take this torch build from, as ``provision.render.requirements`` writes them:
    the ``--index-url`` mirror (an extra index), else the wheel folders (``--find-links``, no PyTorch index line),
    else the build's own index."""
    if prefs.index_url is not None:
        if from_pypi:
            return f"installed from PyPI or the --index-url mirror {prefs.index_url}"
        return f"installed from the --index-url mirror {prefs.index_url} (in place of {index_url})"
    if prefs.wheelhouse:
        folders = ", ".join(prefs.wheelhouse)
        if from_pypi:
            return f"installed from PyPI or the same wheel in {folders} (--find-links)"
        return f"installed from the wheels in {folders} (--find-links), not from its index {index_url}"
    return f"installed from {'PyPI' if from_pypi else index_url}"


def _workload_why(job: _Job, workload: Workload) -> str:
    """Where the budgeted request comes from: the catalog's serving facts, or the options."""
    wl, prefs = workload, job.prefs
    if not wl.images:
        if prefs.images == 0:
            return "--images 0: text only"
        if wl.tokens_per_image:
            return (f"text only: a screenshot is {wl.tokens_per_image:,} visual tokens, more than --context "
                    f"{wl.context_tokens:,} leaves room for")
        return "a text-only model" if not job.model.has_vision else "no images per request in the catalog"
    said = [flag for flag, value in (("--images", prefs.images), ("--max-pixels", prefs.max_pixels)) if value is not None]
    source = f"{' and '.join(said)} as given" if said else "the catalog's images per request and max_pixels"
    return (f"{source}; the memory estimate budgets the vision pass and the visual tokens of a "
            f"{PHONE_SCREEN[0]}x{PHONE_SCREEN[1]} phone screenshot per image")


def _warnings(job: _Job, build: _Build, option: _Option, bnb: BnbRelease | None) -> list[str]:
    """What works but is worth knowing: a lowered context, compatibility modes, slow paths, splits, a hidden GPU."""
    host, model, variant, placement = job.host, job.model, build.variant, option.placement
    warnings: list[str] = []
    if option.lowered is not None:
        warnings.append(f"context lowered to {option.context:,} tokens: {option.lowered} (--context sets it; "
                        f"a default plan goes no lower than {job.goal.floor:,})")
    if variant.cuda is not None and not build.native:
        warnings.append(compatibility_warning(f"{variant.name} (CUDA {variant.cuda})", host.os, job.matrix,
                                              variant.cuda))
    if bnb is not None:
        floor = bnb.fast_cc_int8
        slow = [g for g in host.gpus if g.index in placement.gpus and g.compute_capability < floor]
        if placement.precision == "int8" and slow:
            warnings.append(f"{slow[0].name} (cc {slow[0].cc_text}) lacks the fast int8 tensor-core path "
                            f"(cc >= {cc_text(floor)}); int8 will be slow")
    if placement.precision == "fp16":
        warnings.append(f"{model.name} is trained in bf16; fp16 can overflow in rare activations. "
                        f"bf16 needs compute capability >= {cc_text(BF16_MIN_CC)}")
    if len(placement.gpus) > 1:
        warnings.append(f"the model is split over {len(placement.gpus)} GPUs (pipeline, one GPU active at a time)")
    if placement.device == "cpu" and host.nvidia is not None and not host.gpus:
        warnings.append(f"the NVIDIA driver {host.nvidia.driver_version} is present but no GPU is visible "
                        "(CUDA_VISIBLE_DEVICES hides them all?): planned for the CPU")
    if placement.device in ("cpu", "mps") and model.parameters > 2e9:
        warnings.append(f"{model.name} on {placement.device.upper()} generates slowly (seconds per token)")
    return warnings


def _assemble(job: _Job, build: _Build, option: _Option, *, kernel_notes: Sequence[str],
              bnb: BnbRelease | None) -> Plan | None:
    """Pin the companions for one (torch, variant, placement); None when transformers is missing."""
    release, variant, placement = build.release, build.variant, option.placement
    transformers = _transformers_for(job, release)
    if transformers is None:
        return None
    # PyPI carries the platform's default build under the plain version: hashes and mirrors work there.
    from_pypi = release.on_pypi(variant, job.host.platform)
    index_url = PYPI_INDEX if from_pypi else variant.index_url
    return Plan(
        model_id=job.model.id, model_repo=job.model.repo, parameters=job.model.parameters, python=job.python,
        torch_version=release.version, variant=variant.name, index_url=index_url, placement=placement,
        packages=_pins(job, build, transformers, bnb, from_pypi=from_pypi),
        warnings=tuple(_warnings(job, build, option, bnb)),
        reasons=tuple(_reasons(job, build, option, transformers, bnb, kernel_notes=kernel_notes,
                               index_url=index_url, from_pypi=from_pypi)),
        cuda=variant.cuda, serve=_serve(job, option, transformers),
    )


def _serve(job: _Job, option: _Option, transformers: Version) -> Serve:
    """``transformers serve`` of this plan, under the catalog's served name (a local folder: its id, and no source)."""
    model, placement = job.model, option.placement
    used = [g for g in job.host.gpus if g.index in placement.gpus]
    return transformers_serve(
        served_model_name=model.serve.served_model_name if model.serve is not None else model.id,
        model_source=model.repo, transformers_version=str(transformers),
        precision=placement.precision, device=placement.device, context=option.context,
        bf16=all(supports_bf16(g) for g in used))


def _engine_reason(plan: Plan, passed_over: tuple[str, ...]) -> Reason:
    """Why ``transformers serve``: asked for, or every engine ``--engine auto`` tried was passed over."""
    served = f"transformers {plan.serve.engine_version}"
    if passed_over:
        return Reason(decision="engine", choice=served, why="; ".join(passed_over))
    split = (f"; it places the weights over GPUs {', '.join(map(str, plan.placement.gpus))} with accelerate's device map, "
             "not tensor parallelism" if len(plan.placement.gpus) > 1 else "")
    return Reason(decision="engine", choice=served,
                  why="--engine transformers: `transformers serve` (transformers[serving]) runs the "
                      f"stack the smoke test loads{split}")


# ---------------------------------------------------------------------------
# Entry points


def _check(prefs: Preferences) -> None:
    """:raises InvalidInput: a preference no host can satisfy."""
    if prefs.precision is not None and prefs.precision not in PRECISIONS:
        raise InvalidInput("--precision", "precision", f"{prefs.precision!r} is not one of {', '.join(PRECISIONS)}")
    if prefs.device not in DEVICE_CHOICES:
        raise InvalidInput("--device", "device", f"{prefs.device!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if prefs.context_tokens is not None and prefs.context_tokens < 1:
        raise InvalidInput("--context", "context", "must be at least 1 token")
    if prefs.engine not in ENGINE_CHOICES:
        raise InvalidInput("--engine", "engine", f"{prefs.engine!r} is not one of {', '.join(ENGINE_CHOICES)}")


def _device(host: HostProfile, prefs: Preferences) -> str:
    """The device to plan for: the one asked for, else CUDA on a GPU box, MPS on Apple silicon, else the CPU.

    :raises InvalidInput: the device asked for does not exist on this host.
    """
    device = prefs.device
    if device == "auto" and prefs.variant == "cpu":
        device = "cpu"
    if device == "auto":
        device = "cuda" if host.gpus and host.platform.startswith(("linux", "windows")) else (
            "mps" if host.platform == "macos-arm64" else "cpu")
    if device == "cuda" and not host.gpus:
        raise InvalidInput("--device", "device", "cuda was requested but the host has no NVIDIA GPU")
    if device == "cuda" and prefs.variant == "cpu":
        raise InvalidInput("--variant", "variant", "cpu cannot run on --device cuda")
    if device == "mps" and host.platform != "macos-arm64":
        raise InvalidInput("--device", "device", "mps needs an Apple-silicon Mac (macos-arm64)")
    return device


def plan(host: HostProfile, matrix: Matrix, model: ModelSpec, prefs: Preferences | None = None) -> Plan:
    """Choose torch, CUDA variant, precision and placement for ``model`` on ``host``.

    :raises InvalidInput: for a contradictory preference (e.g. ``--device cuda`` without a GPU).
    :raises NoViablePlan: when nothing fits; carries remedies.
    """
    from provision.data.architecture import architecture_of

    prefs = prefs or Preferences()
    _check(prefs)
    goal = ContextGoal.for_model(model, prefs.context_tokens)
    workload = workload_for(model, context_tokens=goal.target, images=prefs.images, max_pixels=prefs.max_pixels)
    goal = goal.leaving_room(workload.image_tokens)
    job = _Job(host=host, matrix=matrix, model=model, prefs=prefs, python=prefs.python or host.python_minor,
               search=Search(), workload=workload, goal=goal.exact, arch=architecture_of(model.config))
    device = _device(host, prefs)
    passed_over: tuple[str, ...] = ()
    if prefs.engine != "transformers":
        served = _engine(job, device)
        if isinstance(served, Plan):
            return replace(served, torch_index_reachable=prefs.torch_index_reachable)
        passed_over = served.merged or served.reasons
        job = replace(job, told=served.told)
    # As the engines do: every precision and placement at the full context first, then less.
    result = _transformers_plan(job, device)
    if result is None and goal.can_lower:
        job = replace(job, goal=goal, search=Search())
        result = _transformers_plan(job, device)
    if result is None:
        message, changes = remedies(host, matrix, model, prefs, job.search, job.goal)
        raise NoViablePlan(message, changes)
    return replace(result, reasons=(_engine_reason(result, passed_over), *result.reasons),
                   torch_index_reachable=prefs.torch_index_reachable)


def _transformers_plan(job: _Job, device: str) -> Plan | None:
    """The in-process stack (``transformers serve``) on ``device``, at ``job.goal``; None with the search filled."""
    if device == "cuda" and job.prefs.precision == "fp32":
        job.search.reject(Rejection(
            rule=Rule.PRECISION, precision="fp32",
            text="fp32 doubles the memory of the bf16 checkpoint; this planner places 16-bit or quantized weights on GPUs"))
        return None
    return _plan_cuda(job) if device == "cuda" else _plan_cpu(job, device)


def _engine(job: _Job, device: str) -> Plan | NoEngine:
    """A vLLM or SGLang plan when ``--engine`` allows one and its rules hold; else why not.

    :raises NoViablePlan: ``--engine vllm`` or ``sglang`` was asked for and cannot serve here.
    """
    from provision.plan.engine import TorchLimits
    from provision.plan.engine_plan import ENGINE_FALLBACK, NoEngine, serve_with_engine

    prefs = job.prefs
    if device != "cuda":
        served: Plan | NoEngine = NoEngine(
            (f"vLLM and SGLang serve on Linux with an NVIDIA GPU; this plan runs on {device}",), (ENGINE_FALLBACK,))
    else:
        limits = TorchLimits(version=prefs.torch_version, variant=prefs.variant, available=prefs.torch_available)
        served = serve_with_engine(job.host, job.matrix, job.model, engine=prefs.engine, python=job.python,
                                   context=prefs.context_tokens, precision=prefs.precision, limits=limits)
    if isinstance(served, Plan):
        return served
    if prefs.engine != "auto":
        raise NoViablePlan(f"--engine {prefs.engine}: " + "; ".join(served.reasons), list(served.remedies))
    return served


def sibling_variants(host: HostProfile, matrix: Matrix, model: ModelSpec, prefs: Preferences,
                     chosen: Plan) -> list[Plan]:
    """Plans for every variant of the chosen torch that this host can run: the CI matrix rows, ``chosen`` among them.

    Each row is the planner's own plan for that build: a CUDA variant's is what ``plan`` gives with
    ``--variant`` (its precision, placement and pins, bitsandbytes where it quantizes), and the CPU
    build's is what ``plan`` gives with ``--device cpu`` (16-bit, the server on ``--device cpu``, no
    bitsandbytes), never the GPU plan's placement on a CPU build. A build the host cannot run, or a CPU
    the model does not fit in at the chosen context, has no row. An engine plan has one row, its own:
    the engine pins torch, and PyPI carries one build of it.
    """
    release = next((r for r in matrix.torch if r.version == chosen.torch_version), None)
    if release is None or chosen.serve.engine != "transformers":
        return [chosen]
    rows = []
    for variant in release.variants:
        if host.platform not in variant.platforms:
            continue
        if variant.name == chosen.variant:
            rows.append(chosen)
            continue
        device = "cpu" if variant.cuda is None else "auto"
        if device == "cpu" and host.platform == "macos-arm64":
            device = "mps"
        try:
            # the same context as the chosen plan: every row budgets what the plan serves
            rows.append(plan(host, matrix, model, replace(prefs, torch_version=release.version, engine="transformers",
                                                          variant=variant.name, device=device,
                                                          context_tokens=chosen.serve.max_model_len,
                                                          precision=None if variant.cuda is None else prefs.precision)))
        except (NoViablePlan, InvalidInput):
            continue
    return rows
