"""The planner: a pure function of (host, matrix, model, preferences) -> Plan.

No I/O, no torch import. Search order follows what users want most: the best
precision that fits (bf16 > fp16 > int8 > nf4), placed on one GPU before being split,
then the newest torch whose build the driver runs and which has kernels for every
GPU it uses. Every choice carries a human reason; when nothing fits,
``NoViablePlan`` says what to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from provision.errors import InvalidInput, NoViablePlan
from provision.plan.budget import gb, usable_ram
from provision.plan.compat import driver_runs, has_kernels, supports_bf16
from provision.plan.document import Placement, Plan, Preferences, Reason
from provision.plan.remedies import Search, remedies
from provision.vocab import DEVICE_CHOICES, PRECISIONS, PYPI_INDEX

if TYPE_CHECKING:
    from provision.data.catalog import ModelSpec
    from provision.data.matrix import BnbRelease, Matrix, TorchRelease, TorchVariant
    from provision.host.profile import GpuInfo, HostProfile

__all__ = ["plan", "sibling_variants"]

# ---------------------------------------------------------------------------
# The search


def _python_ok(release: TorchRelease, variant: TorchVariant, python: str) -> bool:
    return python in release.pythons_for(variant)


def _companion(matrix: Matrix, name: str, torch: Version, python: str,
               minimum: Version | None = None) -> Version | None:
    for c in matrix.companion_versions(name):
        if torch in c.requires_torch and Version(python) in c.requires_python and (minimum is None or c.version >= minimum):
            return c.version
    return None


def _bnb_for(matrix: Matrix, torch: Version, variant: TorchVariant, platform: str, python: str,
             gpus: Sequence[GpuInfo], precision: str) -> tuple[BnbRelease | None, str]:
    """The newest bitsandbytes for this build and GPUs, or None and the most telling reason why not."""
    assert variant.cuda is not None
    cuda = Version(f"{variant.cuda.major}.{variant.cuda.minor}")
    reasons: list[str] = []
    for rel in matrix.bitsandbytes:
        if platform not in rel.platforms:
            reasons.append(f"bitsandbytes {rel.version} has no {platform} wheels")
            continue
        if torch not in rel.torch or Version(python) not in rel.pythons:
            reasons.append(f"bitsandbytes {rel.version} does not support torch {torch} on Python {python}")
            continue
        if cuda not in rel.cuda_libs:
            reasons.append(f"bitsandbytes {rel.version} ships no library for CUDA {cuda}")
            continue
        floor = rel.min_cc_int8 if precision == "int8" else rel.min_cc_4bit
        low = [g for g in gpus if g.compute_capability < floor]
        if low:
            # The GPU itself is the binding limit: say so before anything about libraries.
            reasons.insert(0, f"bitsandbytes {rel.version} {precision} needs compute capability "
                              f">= {floor[0]}.{floor[1]}; {low[0].name} is {low[0].cc_text}")
            continue
        return rel, ""
    return None, reasons[0] if reasons else f"no bitsandbytes release in the matrix for {platform}"


def _in_wheelhouse(release: TorchRelease, variant: TorchVariant, platform: str,
                   available: frozenset[tuple[Version, str]]) -> bool:
    if (release.version, variant.name) in available:
        return True
    return release.on_pypi(variant, platform) and (release.version, "") in available


def _torch_candidates(host: HostProfile, matrix: Matrix, prefs: Preferences, python: str, *,
                      cuda: bool, search: Search) -> list[tuple[TorchRelease, TorchVariant]]:
    """(release, variant) pairs that exist for this platform and Python, newest torch first."""
    platform = host.platform
    out: list[tuple[TorchRelease, TorchVariant]] = []
    for release in matrix.torch:
        if prefs.torch_version is not None and release.version != prefs.torch_version:
            continue
        variants = [v for v in release.variants if (v.cuda is not None) == cuda and platform in v.platforms]
        if prefs.variant is not None:
            variants = [v for v in variants if v.name == prefs.variant]
            if not variants:
                search.reject("variant", f"torch {release.version} has no {prefs.variant} build for {platform}")
                continue
        if prefs.torch_available is not None:
            variants = [v for v in variants if _in_wheelhouse(release, v, platform, prefs.torch_available)]
            if not variants:
                search.reject("wheelhouse", f"torch {release.version} is not in the configured wheel sources")
                continue
        if not variants:
            search.reject("platform", f"torch {release.version} has no {'CUDA' if cuda else 'CPU'} build for {platform}")
            continue
        fitting = [v for v in variants if _python_ok(release, v, python)]
        if not fitting:
            why_py = f"torch {release.version} has no wheels for Python {python} (has {', '.join(release.pythons)})"
            search.reject("python", why_py)
            search.pythons.update(release.pythons)
            search.passed_over(release.version, why_py)
            continue
        # Highest CUDA first within a release: newest kernels and libraries.
        fitting.sort(key=lambda v: v.cuda or Version("0"), reverse=True)
        out.extend((release, v) for v in fitting)
    return out


def _precision_order(gpus: Sequence[GpuInfo], forced: str | None) -> list[str]:
    """bf16 where a GPU has it, fp16 where one lacks it; then int8, then nf4. A forced precision alone."""
    if forced is not None:
        return [forced]
    order = ["bf16"] if any(supports_bf16(g) for g in gpus) else []
    if not all(supports_bf16(g) for g in gpus):
        order.append("fp16")
    return [*order, "int8", "nf4"]


def _cuda_placements(host: HostProfile, model: ModelSpec, precision: str, context: int,
                     gpus: Sequence[GpuInfo], search: Search) -> list[Placement]:
    """Ways to place the model in ``precision``: each GPU it fits on alone, roomiest first, then a split.

    Every single-GPU option is kept because a later check (kernels, bitsandbytes) can rule out one
    card and not another.
    """
    from provision.plan.memory import estimate_memory, split_across_gpus

    est = estimate_memory(model.config, precision=precision, context_tokens=context, device="cuda")
    search.need(est.total, precision)
    out: list[Placement] = []
    by_free = sorted(gpus, key=lambda g: (-g.memory_free_bytes, g.index))
    best = by_free[0]
    for gpu in by_free:
        if est.total <= gpu.memory_free_bytes:
            out.append(Placement(
                device="cuda", gpus=(gpu.index,), precision=precision, required_bytes=est.total,
                available_bytes=gpu.memory_free_bytes, breakdown=est.breakdown,
                why=f"{gb(est.total)} fits in {gb(gpu.memory_free_bytes)} free on GPU {gpu.index} ({gpu.name})",
            ))
    if not out:
        search.reject("memory", f"{model.name} needs {gb(est.total)} in {precision}; GPU {best.index} "
                                f"({best.name}) has {gb(best.memory_free_bytes)} free")
    if len(by_free) > 1:
        free = {g.index: g.memory_free_bytes for g in by_free}
        split = split_across_gpus(model.config, precision=precision, context_tokens=context, free_bytes=free)
        if split.fits and len(split.gpus) > 1:
            used = tuple(sorted(split.gpus))
            available = sum(free[i] for i in used)
            breakdown: dict[str, int] = {}
            for share in split.shares:
                for key, value in share.estimate.breakdown.items():
                    breakdown[key] = breakdown.get(key, 0) + value
            per_gpu = ", ".join(f"GPU {s.index} {gb(s.estimate.total)} of {gb(s.free_bytes)}" for s in split.shares)
            out.append(Placement(
                device="cuda", gpus=used, precision=precision, required_bytes=split.required_bytes,
                available_bytes=available, breakdown=breakdown,
                max_memory={str(k): v for k, v in sorted(split.max_memory.items())},
                device_map=dict(split.device_map),
                why=f"{gb(split.required_bytes)} split layer by layer over {len(used)} GPUs ({per_gpu})",
            ))
        elif not split.fits:
            total_free = sum(free.values())
            search.reject("memory", f"{model.name} in {precision} does not fit split over {len(by_free)} GPUs "
                                    f"({gb(total_free)} free together)")
    return out


def _plan_cuda(host: HostProfile, matrix: Matrix, model: ModelSpec, prefs: Preferences, python: str,
               search: Search) -> Plan | None:
    platform = host.platform
    candidates = []
    for release, variant in _torch_candidates(host, matrix, prefs, python, cuda=True, search=search):
        assert variant.cuda is not None
        candidates.append((release, variant, driver_runs(host, matrix, variant.cuda)))
    # Within a release, builds the driver runs natively come before minor-version-compatible ones.
    candidates.sort(key=lambda c: (c[0].version, c[2][1], c[1].cuda), reverse=True)
    usable = list(host.gpus)
    if platform == "linux-aarch64":  # the index's aarch64 CUDA builds are SBSA: not for Jetson under L4T
        for gpu in [g for g in usable if g.compute_capability in matrix.tegra]:
            search.stage(2, "tegra", f"{gpu.name} (cc {gpu.cc_text}) is a Jetson GPU under L4T; PyTorch's aarch64 "
                                     "CUDA wheels are built for SBSA servers and do not run on it")
            usable.remove(gpu)
    if not usable:
        return None
    for precision in _precision_order(usable, prefs.precision):
        # bf16 runs only on GPUs that have it: a mixed box places bf16 on its newer cards alone.
        gpus = [g for g in usable if supports_bf16(g)] if precision == "bf16" else usable
        if not gpus:
            low = usable[0]
            search.reject("precision", f"bf16 needs compute capability >= 8.0; {low.name} is {low.cc_text}")
            continue
        for placement in _cuda_placements(host, model, precision, prefs.context_tokens, gpus, search):
            placed = [g for g in usable if g.index in placement.gpus]
            for release, variant, (runs, native, why_driver) in candidates:
                if not runs:
                    search.stage(1, "driver", why_driver)
                    search.passed_over(release.version, f"{variant.name}: {why_driver}")
                    continue
                kernel_notes = []
                ok = True
                for gpu in placed:
                    has, why_k = has_kernels(gpu, variant, platform, can_jit=native)
                    if not has:
                        search.stage(2, "kernels", f"torch {release.version} {why_k}")
                        search.passed_over(release.version, why_k)
                        ok = False
                        break
                    kernel_notes.append(why_k)
                if not ok:
                    continue
                bnb = None
                if precision in ("int8", "nf4"):
                    bnb, why_bnb = _bnb_for(matrix, release.version, variant, platform, python, placed, precision)
                    if bnb is None:
                        search.stage(3, "bnb", why_bnb)
                        search.passed_over(release.version, f"{variant.name}: {why_bnb}")
                        continue
                plan = _assemble(host, matrix, model, prefs, python, release, variant, placement, search,
                                 driver_why=why_driver, native=native, kernel_notes=kernel_notes, bnb=bnb)
                if plan is not None:
                    return plan
    return None


def _plan_cpu(host: HostProfile, matrix: Matrix, model: ModelSpec, prefs: Preferences, python: str,
              search: Search, device: str) -> Plan | None:
    from provision.plan.memory import estimate_memory

    precision = prefs.precision or "bf16"
    available = usable_ram(host.ram_bytes)
    if precision in ("int8", "nf4"):
        search.reject("precision", f"{precision} needs bitsandbytes on an NVIDIA GPU; this plan runs on {device}")
        return None
    est = estimate_memory(model.config, precision=precision, context_tokens=prefs.context_tokens, device="cpu")
    if est.total > available:
        search.reject("memory", f"{model.name} needs {gb(est.total)} of RAM in {precision}; "
                                f"{gb(available)} of {gb(host.ram_bytes)} RAM is usable")
        return None
    where = "unified memory (MPS)" if device == "mps" else "RAM"
    placement = Placement(
        device=device, gpus=(), precision=precision, required_bytes=est.total, available_bytes=available,
        breakdown=est.breakdown,
        why=f"{gb(est.total)} fits in {gb(available)} usable {where}",
    )
    for release, variant in _torch_candidates(host, matrix, prefs, python, cuda=False, search=search):
        plan = _assemble(host, matrix, model, prefs, python, release, variant, placement, search,
                         driver_why=None, native=True, kernel_notes=[], bnb=None)
        if plan is not None:
            return plan
    return None


def _pin(version: Version, variant: TorchVariant, from_pypi: bool) -> str:
    return str(version) if from_pypi else f"{version}+{variant.name}"


def _assemble(host: HostProfile, matrix: Matrix, model: ModelSpec, prefs: Preferences, python: str,
              release: TorchRelease, variant: TorchVariant, placement: Placement, search: Search, *,
              driver_why: str | None, native: bool, kernel_notes: list[str], bnb: BnbRelease | None) -> Plan | None:
    """Pin the companions for one (torch, variant, placement); None when a companion is missing."""
    platform = host.platform
    transformers = _companion(matrix, "transformers", release.version, python, model.min_transformers)
    if transformers is None:
        rows = [c for c in matrix.companion_versions("transformers") if c.version >= model.min_transformers]
        if rows and not any(Version(python) in c.requires_python for c in rows):
            search.python_floor = str(rows[-1].requires_python)
            search.stage(4, "python", f"transformers >= {model.min_transformers} needs Python "
                                      f"{rows[-1].requires_python}, not Python {python}")
        else:
            search.stage(4, "transformers", f"no transformers >= {model.min_transformers} in the matrix supports "
                                            f"torch {release.version} on Python {python}")
        return None
    # PyPI carries the platform's default build under the plain version: hashes and mirrors work there.
    from_pypi = release.on_pypi(variant, platform)
    index_url = PYPI_INDEX if from_pypi else variant.index_url
    packages = {"torch": _pin(release.version, variant, from_pypi), "transformers": str(transformers)}
    for name in ("accelerate", "safetensors", "huggingface-hub", "tokenizers", "pillow"):
        version = _companion(matrix, name, release.version, python)
        if version is not None:
            packages[name] = str(version)
    if bnb is not None:
        packages["bitsandbytes"] = str(bnb.version)

    warnings: list[str] = []
    reasons = [
        Reason(decision="python", choice=python,
               why=("requested with --python" if prefs.python else f"the host's Python is {host.python}")
               + f"; torch {release.version} has wheels for {', '.join(release.pythons_for(variant))}"),
    ]
    newest = matrix.torch[0].version
    torch_why = f"newest release that fits this host (matrix has up to {newest})"
    if prefs.torch_version is not None:
        torch_why = "requested with --torch"
    elif prefs.torch_available is not None:
        torch_why = "newest release that fits this host among the torch wheels in the configured wheel sources"
    if release.version != newest and prefs.torch_version is None:
        newer = sorted((v for v in search.by_release if v > release.version), reverse=True)
        if newer:
            torch_why += f"; torch {newer[0]} was passed over: {search.by_release[newer[0]]}"
    reasons.append(Reason(decision="torch", choice=str(release.version), why=torch_why))
    if variant.cuda is None:
        variant_why = f"CPU build for {platform}" + (" (MPS included)" if placement.device == "mps" else "")
    else:
        variant_why = f"{driver_why}; " + "; ".join(kernel_notes)
        if not native:
            warnings.append(f"{variant.name} relies on CUDA minor-version compatibility: {driver_why}. "
                            f"Updating the driver to one that supports CUDA {variant.cuda} natively removes this.")
    variant_why += f"; installed from {'PyPI' if from_pypi else index_url}"
    reasons.append(Reason(decision="variant", choice=variant.name, why=variant_why))
    reasons.append(Reason(decision="precision", choice=placement.precision,
                          why=_precision_why(placement, prefs, host)))
    reasons.append(Reason(decision="device", choice=placement.device, why=placement.why))
    reasons.append(Reason(decision="transformers", choice=str(transformers),
                          why=f"{model.name} needs transformers >= {model.min_transformers}; newest pinned release "
                              f"supporting torch {release.version}"))
    if bnb is not None:
        floor = bnb.fast_cc_int8
        reasons.append(Reason(decision="bitsandbytes", choice=str(bnb.version),
                              why=f"newest release with a CUDA {variant.cuda} library for torch {release.version} "
                                  f"on {platform}"))
        slow = [g for g in host.gpus if g.index in placement.gpus and g.compute_capability < floor]
        if placement.precision == "int8" and slow:
            warnings.append(f"{slow[0].name} (cc {slow[0].cc_text}) lacks the fast int8 tensor-core path "
                            f"(cc >= {floor[0]}.{floor[1]}); int8 will be slow")
    if placement.precision == "fp16":
        warnings.append(f"{model.name} is trained in bf16; fp16 can overflow in rare activations. "
                        "bf16 needs compute capability >= 8.0")
    if len(placement.gpus) > 1:
        warnings.append(f"the model is split over {len(placement.gpus)} GPUs (pipeline, one GPU active at a time)")
    if placement.device == "cpu" and host.nvidia is not None and not host.gpus:
        warnings.append(f"the NVIDIA driver {host.nvidia.driver_version} is present but no GPU is visible "
                        "(CUDA_VISIBLE_DEVICES hides them all?): planned for the CPU")
    if placement.device in ("cpu", "mps") and model.parameters > 2e9:
        warnings.append(f"{model.name} on {placement.device.upper()} generates slowly (seconds per token)")
    return Plan(
        model_id=model.id, model_repo=model.repo, parameters=model.parameters, python=python,
        torch_version=release.version, variant=variant.name, index_url=index_url, placement=placement,
        packages=dict(sorted(packages.items())), warnings=tuple(warnings), reasons=tuple(reasons), cuda=variant.cuda,
    )


def _precision_why(placement: Placement, prefs: Preferences, host: HostProfile) -> str:
    p = placement.precision
    if prefs.precision:
        return f"requested with --precision; {placement.why}"
    if placement.device != "cuda":
        return f"bf16 halves memory against fp32 at the checkpoint's own precision; {placement.why}"
    placed = [g for g in host.gpus if g.index in placement.gpus]
    ccs = ", ".join(sorted({g.cc_text for g in placed}))
    if p == "bf16":
        return f"compute capability {ccs} supports bf16 and {placement.why}"
    if p == "fp16":
        return f"compute capability {ccs} has no bf16 (needs >= 8.0); fp16 is the 16-bit choice and {placement.why}"
    return f"16-bit does not fit the free memory; {p} {placement.why}"


def plan(host: HostProfile, matrix: Matrix, model: ModelSpec, prefs: Preferences | None = None) -> Plan:
    """Choose torch, CUDA variant, precision and placement for ``model`` on ``host``.

    :raises InvalidInput: for a contradictory preference (e.g. ``--device cuda`` without a GPU).
    :raises NoViablePlan: when nothing fits; carries remedies.
    """
    prefs = prefs or Preferences()
    if prefs.precision is not None and prefs.precision not in PRECISIONS:
        raise InvalidInput("--precision", "precision", f"{prefs.precision!r} is not one of {', '.join(PRECISIONS)}")
    if prefs.device not in DEVICE_CHOICES:
        raise InvalidInput("--device", "device", f"{prefs.device!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if prefs.context_tokens < 1:
        raise InvalidInput("--context", "context", "must be at least 1 token")
    python = prefs.python or host.python_minor
    search = Search()
    device = prefs.device
    if device == "auto" and prefs.variant == "cpu":
        device = "cpu"
    if device == "auto":
        device = "cuda" if host.gpus and host.platform.startswith(("linux", "windows")) else (
            "mps" if host.platform == "macos-arm64" else "cpu")
    if device == "cuda":
        if not host.gpus:
            raise InvalidInput("--device", "device", "cuda was requested but the host has no NVIDIA GPU")
        if prefs.variant == "cpu":
            raise InvalidInput("--variant", "variant", "cpu cannot run on --device cuda")
        if prefs.precision == "fp32":
            search.reject("precision", "fp32 doubles the memory of the bf16 checkpoint; this planner places 16-bit "
                                       "or quantized weights on GPUs")
            result = None
        else:
            result = _plan_cuda(host, matrix, model, prefs, python, search)
    elif device == "mps" and host.platform != "macos-arm64":
        raise InvalidInput("--device", "device", "mps needs an Apple-silicon Mac (macos-arm64)")
    else:
        result = _plan_cpu(host, matrix, model, prefs, python, search, device)
    if result is None:
        message, changes = remedies(host, model, prefs, search)
        raise NoViablePlan(message, changes)
    return result


def sibling_variants(host: HostProfile, matrix: Matrix, model: ModelSpec, prefs: Preferences,
                     chosen: Plan) -> list[dict[str, Any]]:
    """Plans for every other variant of the chosen torch that this host can run: the CI matrix rows."""
    release = next(r for r in matrix.torch if r.version == chosen.torch_version)
    rows = []
    for variant in release.variants:
        if host.platform not in variant.platforms:
            continue
        if variant.name == chosen.variant:
            sibling = chosen
        else:
            device = "cpu" if variant.cuda is None else "auto"
            if device == "cpu" and host.platform == "macos-arm64":
                device = "mps"
            try:
                sibling = plan(host, matrix, model, replace(prefs, torch_version=release.version,
                                                            variant=variant.name, device=device,
                                                            precision=None if variant.cuda is None else prefs.precision))
            except (NoViablePlan, InvalidInput):
                continue
        rows.append({"variant": sibling.variant, "cuda": str(sibling.cuda) if sibling.cuda else None,
                     "index_url": sibling.index_url, "packages": dict(sibling.packages)})
    return rows
