"""Which serving engine runs the model on this host: vLLM, then SGLang, else ``transformers serve``.

An engine release is a bundle of hard facts: an exact torch pin, a transformers range, a Python
range, a glibc floor, the CUDA its default wheel is built with (hence a driver floor) and the GPU
architectures it ships kernels for. On top of those it must fit: weights, its profiling peak,
CUDA graphs and a KV cache for one full-length sequence inside the share of each GPU it may take.

The search is pure and ordered as users want it: the better engine first, then its newest release
whose rules hold, then 16-bit before fp8 before 4-bit, one GPU before tensor parallelism over
several, and the serving context before a shorter one. Everything passed over leaves one sentence
behind, so the plan can say why a better engine or a newer release was not taken.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from packaging.version import Version

from provision.data.architecture import architecture_of
from provision.plan.budget import gb
from provision.plan.compat import driver_floor, driver_runs, has_kernels
from provision.plan.engine_memory import FREE_MARGIN_BYTES, EngineBudget, Workload, engine_budget, load_peak_bytes
from provision.plan.rejections import Rejection, Rule, Told
from provision.vocab import MIN_SERVING_CONTEXT, parse_arch

if TYPE_CHECKING:
    from provision.data.architecture import Architecture
    from provision.data.catalog import ModelSpec
    from provision.data.engines import Engine, EngineRelease, QuantRule
    from provision.data.matrix import Matrix, TorchRelease, TorchVariant
    from provision.host.profile import GpuInfo, HostProfile

__all__ = ["ENGINE_LABELS", "MIN_SERVING_CONTEXT", "EngineChoice", "EngineSearch", "TorchLimits", "choose_engine",
           "merge_explanations"]

#: How the engines' names are written in sentences.
ENGINE_LABELS = {"vllm": "vLLM", "sglang": "SGLang", "transformers": "transformers serve"}

_TP_SIZES = (2, 4, 8)
#: Precision classes in the order they are tried: 16-bit resolves to bf16 or fp16 per GPU.
_CLASSES = ("16-bit", "fp8", "nf4")


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineChoice:
    """An engine release placed on GPUs, with the budget of its tightest GPU and the context it serves."""

    engine: Engine
    release: EngineRelease
    torch: TorchRelease
    variant: TorchVariant
    transformers: Version
    precision: str
    quantization: QuantRule | None
    gpus: tuple[int, ...]
    budget: EngineBudget
    max_model_len: int
    driver_why: str
    native: bool
    kernel_notes: tuple[str, ...] = ()
    #: the 16-bit type the engine computes in (the weights' own for 16-bit plans)
    compute_precision: str = "bf16"

    @property
    def tensor_parallel_size(self) -> int:
        return len(self.gpus)


@dataclass(frozen=True, slots=True, kw_only=True)
class TorchLimits:
    """The torch the user allowed: ``--torch``, ``--variant``, the builds in the wheel sources (None: any).

    An engine pins torch exactly and installs PyPI's build of it, so a limit it does not meet passes
    the release over rather than being ignored.
    """

    version: Version | None = None
    variant: str | None = None
    available: frozenset[tuple[Version, str]] | None = None

    def refuse(self, torch: Version, variant: str) -> str | None:
        """Why torch ``torch`` (PyPI's ``variant`` build) is outside the limits; None when inside."""
        if self.version is not None and torch != self.version:
            return f"it pins torch {torch}, and --torch asks for {self.version}"
        if self.variant is not None and variant != self.variant:
            return f"it installs torch {torch} as PyPI's {variant} build, and --variant asks for {self.variant}"
        if self.available is not None and not {(torch, ""), (torch, variant)} & self.available:
            return f"it pins torch {torch}, which is not in the configured wheel sources"
        return None


@dataclass(frozen=True, slots=True)
class _Passed:
    """The first reason a release was passed over, how far it got, the rule when it is a typed one, and for a
    driver refusal the CUDA version whose driver floor ``why`` names."""

    stage: int
    why: str
    rule: Rule | None = None
    cuda: Version | None = None


@dataclass(slots=True)
class EngineSearch:
    """Why each engine release was passed over (the first reason per release) and how far it got.

    ``stage`` orders reasons by how close a release came to a plan: 0 it cannot be installed here
    (platform, Python, glibc, torch build, transformers), 1 the driver cannot run it, 2 it has no
    kernels for a GPU, 3 it runs but the model does not fit. ``rejections`` keeps the typed
    install-time refusals (rule and values), from which a no-plan remedy is chosen.
    """

    passed_over: dict[str, dict[Version, _Passed]] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)

    def reject(self, engine: str, release: EngineRelease, why: str | Rejection, stage: int = 0, *,
               cuda: Version | None = None) -> None:
        seen = self.passed_over.setdefault(engine, {})
        if release.version in seen:
            return
        if isinstance(why, Rejection):
            seen[release.version] = _Passed(stage, why.text, why.rule)
            self.rejections.append(why)
        else:
            seen[release.version] = _Passed(stage, why, cuda=cuda)

    def of(self, rule: Rule) -> list[Rejection]:
        return [r for r in self.rejections if r.rule is rule]

    def explain(self, engine: Engine) -> str | None:
        """One sentence: why the newest release was passed over; when an older one came closer, why that one;
        and when an older one was refused only for the host's glibc (which an upgrade changes), that too."""
        items = self.explain_items(engine)
        return "; ".join(f"{subject}: {why}" for subject, why in items) if items else None

    def explain_items(self, engine: Engine) -> list[tuple[str, str]]:
        """``explain``'s parts as (who, why): ``vLLM 0.33.0 passed over``, then older releases by name and CUDA."""
        seen = self.passed_over.get(engine.name, {})
        return [(who, seen[version].why) for who, version in self._told(engine)]

    def told(self, engines: Sequence[Engine]) -> Told:
        """The host facts ``explain`` states for ``engines`` (driver floors by CUDA version, the host's glibc): a
        later reason that meets the same fact can point to it instead of saying it again."""
        told = [self.passed_over[e.name][v] for e in engines for _, v in self._told(e)]
        return Told(cudas=frozenset(p.cuda for p in told if p.cuda is not None),
                    glibc=any(p.rule is Rule.GLIBC for p in told))

    def _told(self, engine: Engine) -> list[tuple[str, Version]]:
        """The releases ``explain`` tells of, as (who, release): the newest, the one that came closest, and the
        oldest one refused only for the host's glibc (which an upgrade changes)."""
        seen = self.passed_over.get(engine.name)
        if not seen:
            return []
        label = ENGINE_LABELS.get(engine.name, engine.name)
        newest = max(seen)
        items = [(f"{label} {newest} passed over", newest)]
        closest = max(seen, key=lambda v: (seen[v].stage, v))
        if closest != newest and seen[closest].stage > seen[newest].stage:
            items.append((self._older(engine, label, closest), closest))
        glibc = [r for r in engine.releases if r.version in seen and seen[r.version].rule is Rule.GLIBC]
        if glibc and seen[newest].rule is not Rule.GLIBC:
            # what the smallest glibc upgrade admits: releases are newest first, and min keeps the first
            least = min(glibc, key=lambda r: r.glibc)
            if least.version not in {v for _, v in items}:
                items.append((self._older(engine, label, least.version), least.version))
        return items

    @staticmethod
    def _older(engine: Engine, label: str, version: Version) -> str:
        release = engine.release(version)
        cuda = f" (CUDA {release.cuda})" if release is not None else ""
        return f"{label} {version}{cuda}"


def merge_explanations(items: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """(who, why) parts of several engines' explanations, each reason told once: ``A and B: why``, in first order."""
    whos: dict[str, list[str]] = {}
    for who, why in items:
        whos.setdefault(why, []).append(who)
    out = []
    for why, names in whos.items():
        tail = " passed over"
        if len(names) > 1 and all(n.endswith(tail) for n in names):
            names = [*(n.removesuffix(tail) for n in names[:-1]), names[-1]]
        out.append(f"{' and '.join(names)}: {why}")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Refused:
    """A release the GPUs rule out, how close it came (see ``EngineSearch``), and the CUDA of a driver refusal."""

    stage: int
    why: str
    cuda: Version | None = None


def _torch_for(matrix: Matrix, release: EngineRelease, platform: str) -> tuple[TorchRelease, TorchVariant] | Rejection:
    """The torch build the engine's pin installs from PyPI on ``platform``, or why there is none."""
    torch = next((t for t in matrix.torch if t.version == release.torch), None)
    if torch is None:
        return Rejection(rule=Rule.PLATFORM, torch=release.torch,
                         text=f"pins torch {release.torch}, which the matrix does not describe")
    default = torch.pypi_default.get(platform)
    variant = torch.variant(default) if default else None
    if variant is None or variant.cuda is None:
        return Rejection(rule=Rule.PLATFORM, torch=release.torch,
                         text=f"pins torch {release.torch}, whose PyPI build for {platform} has no CUDA")
    return torch, variant


def _transformers_pin(matrix: Matrix, model: ModelSpec, release: EngineRelease, python: str) -> Version | None:
    """The newest transformers in the matrix inside the engine's range and at or above the model's minimum."""
    for c in matrix.companion_versions("transformers"):
        if (release.transformers.contains(c.version, prereleases=True) and c.version >= model.min_transformers
                and Version(python) in c.requires_python and release.torch in c.requires_torch):
            return c.version
    return None


def _host_rules(host: HostProfile, matrix: Matrix, model: ModelSpec, release: EngineRelease,
                python: str) -> Rejection | tuple[TorchRelease, TorchVariant, Version]:
    """The rules that hold whatever the placement: wheel, Python, glibc, torch build, transformers."""
    if host.platform not in release.platforms:
        return Rejection(rule=Rule.PLATFORM, text=f"has no wheel for {host.platform}")
    if not release.admits_python(python):
        return Rejection(rule=Rule.PYTHON, python=python,
                         text=f"has no wheel for Python {python} (Requires-Python {release.requires_python})")
    if host.glibc is not None and host.glibc < release.glibc:
        return Rejection(rule=Rule.GLIBC, glibc=host.glibc, glibc_floor=release.glibc,
                         text=f"its wheels need glibc >= {release.glibc}, this host has {host.glibc}")
    torch = _torch_for(matrix, release, host.platform)
    if isinstance(torch, Rejection):
        return torch
    transformers = _transformers_pin(matrix, model, release, python)
    if transformers is None:
        return Rejection(rule=Rule.TRANSFORMERS, torch=release.torch, python=python,
                         text=f"no transformers release in the matrix is inside its range {release.transformers} "
                              f"and >= {model.min_transformers}, which {model.name} needs")
    return torch[0], torch[1], transformers


def _gpu_rules(host: HostProfile, matrix: Matrix, release: EngineRelease, variant: TorchVariant,
               gpus: Sequence[GpuInfo]) -> _Refused | tuple[bool, str, tuple[str, ...]]:
    """Driver and kernels, for the engine's CUDA and torch's, on every placed GPU; a refusal when not."""
    assert variant.cuda is not None and host.nvidia is not None
    driver = host.nvidia.driver_version
    runs, native, why = driver_runs(host, matrix, release.cuda)
    if not runs:
        return _Refused(1, f"the CUDA {release.cuda} wheel needs driver >= "
                           f"{driver_floor(host.os, matrix, release.cuda)}, this host has {driver}", release.cuda)
    t_runs, t_native, t_why = driver_runs(host, matrix, variant.cuda)
    if not t_runs:
        return _Refused(1, f"its torch {release.torch} is a {variant.name} build: {t_why}", variant.cuda)
    notes = []
    archs = release.archs_for(host.platform)
    for gpu in gpus:
        major, minor = gpu.compute_capability
        if not any(a_major == major and a_minor <= minor for a_major, a_minor in map(parse_arch, archs)):
            return _Refused(2, f"its CUDA {release.cuda} build has no kernels for {gpu.name} (compute capability "
                               f"{gpu.cc_text}); it has {', '.join(archs)}")
        ok, k_why = has_kernels(gpu, variant, host.platform, can_jit=t_native)
        if not ok:
            return _Refused(2, f"its torch {release.torch} {k_why}")
        notes.append(k_why)
    return native and t_native, why, tuple(notes)


def _sixteen_bit(engine: Engine, gpus: Sequence[GpuInfo]) -> str:
    """bf16 where every GPU has it, else the engine's fallback: also the compute type of a quantized plan."""
    low = any(g.compute_capability < engine.precision.bf16_min_cc for g in gpus)
    return engine.precision.below if low else "bf16"


def _precision(engine: Engine, release: EngineRelease, klass: str,
               gpus: Sequence[GpuInfo]) -> tuple[str, QuantRule | None] | None:
    """The precision a class resolves to on these GPUs, with the quantization rule that gives it."""
    if klass == "16-bit":
        return _sixteen_bit(engine, gpus), None
    rules = [engine.quantizations(release, g.compute_capability) for g in gpus]
    common = [q for q in rules[0] if q.precision == klass and all(q.method in {r.method for r in rs} for rs in rules)]
    return (klass, common[0]) if common else None


def _groups(host: HostProfile, heads: int) -> Iterator[tuple[GpuInfo, ...]]:
    """Each GPU alone (roomiest first), then tensor-parallel groups of the roomiest 2, 4, 8."""
    by_free = sorted(host.gpus, key=lambda g: (-g.memory_free_bytes, g.index))
    for gpu in by_free:
        yield (gpu,)
    for size in _TP_SIZES:
        if size <= len(by_free) and heads % size == 0:
            yield tuple(by_free[:size])


def _budgets(model: ModelSpec, arch: Architecture, release: EngineRelease, precision: str, gpus: Sequence[GpuInfo],
             workload: Workload) -> list[EngineBudget]:
    """Each placed GPU's budget, in ``gpus`` order."""
    return [engine_budget(model, precision=precision, tp=len(gpus), total_bytes=g.memory_total_bytes,
                          free_bytes=g.memory_free_bytes, default_share=release.gpu_memory_utilization,
                          workload=workload, arch=arch) for g in gpus]


def _load_peak(model: ModelSpec, rule: QuantRule | None, tp: int) -> int:
    """The bytes a rank holds while loading, where the engine quantizes only after loading 16-bit weights; else 0."""
    return load_peak_bytes(model, tp) if rule is not None and rule.loads_16_bit_first else 0


def _fit(budgets: Sequence[EngineBudget], workload: Workload, *, floor: int) -> tuple[EngineBudget, int] | None:
    """The tightest GPU's budget and the context it serves (the full one, or down to ``floor``)."""
    tight = min(budgets, key=lambda b: b.kv_tokens)
    context = min(workload.max_model_len, tight.kv_tokens)
    return (tight, context) if context >= floor else None


def choose_engine(host: HostProfile, matrix: Matrix, model: ModelSpec, engines: Sequence[Engine], *,
                  python: str, workload: Workload, search: EngineSearch, forced_precision: str | None = None,
                  limits: TorchLimits | None = None, floor: int | None = None) -> EngineChoice | None:
    """The first engine release whose every rule holds, trying ``engines`` in order; None with ``search`` filled.

    Two passes: the first keeps the serving context; only when nothing holds it does the second
    accept a shorter one, down to ``floor`` (default ``MIN_SERVING_CONTEXT``; an explicit
    ``--context`` passes its own, and is then never lowered). ``limits``: the torch the user allowed.
    """
    least = min(MIN_SERVING_CONTEXT, workload.max_model_len) if floor is None else floor
    arch = architecture_of(model)  # parsed once: every placement of every release reads it
    for this_pass in dict.fromkeys((workload.max_model_len, least)):
        for engine in engines:
            choice = _choose_release(host, matrix, model, arch, engine, python, workload, search, forced_precision,
                                     limits or TorchLimits(), floor=this_pass)
            if choice is not None:
                return choice
    return None


def _choose_release(host: HostProfile, matrix: Matrix, model: ModelSpec, arch: Architecture, engine: Engine,
                    python: str, workload: Workload, search: EngineSearch, forced: str | None, limits: TorchLimits, *,
                    floor: int) -> EngineChoice | None:
    if host.platform not in engine.platforms or not host.gpus:
        for release in engine.releases:
            search.reject(engine.name, release, "runs on Linux with an NVIDIA GPU" if host.gpus else
                          "needs an NVIDIA GPU, and this host has none")
        return None
    for release in engine.releases:
        rules = _host_rules(host, matrix, model, release, python)
        if isinstance(rules, Rejection):
            search.reject(engine.name, release, rules)
            continue
        refused = limits.refuse(release.torch, rules[1].name)
        if refused is not None:
            search.reject(engine.name, release, refused)
            continue
        choice = _place(host, matrix, model, arch, engine, release, rules, workload, search, forced, floor=floor)
        if choice is not None:
            return choice
    return None


def _place(host: HostProfile, matrix: Matrix, model: ModelSpec, arch: Architecture, engine: Engine,
           release: EngineRelease, rules: tuple[TorchRelease, TorchVariant, Version], workload: Workload,
           search: EngineSearch, forced: str | None, *, floor: int) -> EngineChoice | None:
    """Precision class by class, placement by placement: the first that runs and fits."""
    torch, variant, transformers = rules
    heads = arch.heads
    need: tuple[int, str] | None = None
    for klass in _CLASSES:
        for gpus in _groups(host, heads):
            resolved = _precision(engine, release, klass, gpus)
            if resolved is None or (forced is not None and resolved[0] != forced):
                continue
            gpu_ok = _gpu_rules(host, matrix, release, variant, gpus)
            if isinstance(gpu_ok, _Refused):
                search.reject(engine.name, release, gpu_ok.why, gpu_ok.stage, cuda=gpu_ok.cuda)
                continue
            budgets = _budgets(model, arch, release, resolved[0], gpus, workload)
            fit = _fit(budgets, workload, floor=floor)
            peak = _load_peak(model, resolved[1], len(gpus))
            if fit is None or peak > gpus[-1].memory_free_bytes - FREE_MARGIN_BYTES:
                # the roomiest-first order puts the smallest GPU last
                last = max(budgets[-1].required(floor), peak + FREE_MARGIN_BYTES)
                if need is None or last < need[0]:
                    loads = " (loaded in 16-bit before it is quantized)" if peak else ""
                    need = (last, f"{resolved[0]}{loads} on {gpus[-1].name}, {gb(gpus[-1].memory_free_bytes)} free")
                continue
            native, driver_why, notes = gpu_ok
            return EngineChoice(engine=engine, release=release, torch=torch, variant=variant,
                                transformers=transformers, precision=resolved[0], quantization=resolved[1],
                                gpus=tuple(g.index for g in gpus), budget=fit[0], max_model_len=fit[1],
                                driver_why=driver_why, native=native, kernel_notes=notes,
                                compute_precision=_sixteen_bit(engine, gpus))
    if need is None and forced is not None:
        search.reject(engine.name, release, f"it does not serve {forced} on these GPUs")
    if need is not None:
        search.reject(engine.name, release, f"it runs here, but {model.name} at {floor:,} tokens needs "
                                            f"{gb(need[0])} per GPU at the least ({need[1]})", 3)
    return None
