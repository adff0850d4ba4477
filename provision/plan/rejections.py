"""Why the search turned a candidate down, as values: the rule it broke, how far it got, and the numbers.

The search records a ``Rejection`` for every candidate it drops; when nothing fits, ``remedies``
chooses what to say by their rules and numbers (the text is only shown, never matched). A (torch
build, placement) candidate passes its checks in ``Stage`` order, so the rejection at the latest
stage came closest to a plan and says what binds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import NamedTuple

from packaging.version import Version

__all__ = ["Passed", "Rejection", "Rule", "Search", "Stage", "Told"]


class Stage(IntEnum):
    """How far a candidate got; a later stage came closer to a plan."""

    #: before a build was tried on a placement that fits (no such build, no room, ...)
    SEARCH = 0
    #: the driver cannot run the build's CUDA
    DRIVER = 1
    #: the build has no kernels for a placed GPU (or the GPU is a Jetson the wheels do not run on)
    KERNELS = 2
    #: no bitsandbytes release for the build and GPUs
    BITSANDBYTES = 3
    #: no transformers release for the torch and Python
    COMPANIONS = 4


class Rule(Enum):
    """The rule a rejected candidate broke."""

    VARIANT = "variant"  # the --variant build does not exist for this torch and platform
    WHEELHOUSE = "wheelhouse"  # the torch build is not in the configured wheel sources
    WHEELHOUSE_VISION = "wheelhouse-vision"  # torch is there, the torchvision built like it is not
    PLATFORM = "platform"  # torch has no build of the kind (CUDA/CPU) for the platform
    PYTHON = "python"  # torch has no wheels for the Python
    PRECISION = "precision"  # the precision cannot run on the device
    MEMORY = "memory"  # the model does not fit in the free memory
    DRIVER = "driver"
    TEGRA = "tegra"
    KERNELS = "kernels"
    BITSANDBYTES = "bitsandbytes"
    TRANSFORMERS = "transformers"  # no transformers release supports the torch on the Python
    TRANSFORMERS_PYTHON = "transformers-python"  # the transformers the model needs wants a newer Python
    GLIBC = "glibc"  # the wheels' manylinux floor is above the host's glibc

    @property
    def stage(self) -> Stage:
        return _STAGES.get(self, Stage.SEARCH)


_STAGES = {
    Rule.DRIVER: Stage.DRIVER,
    Rule.TEGRA: Stage.KERNELS,
    Rule.KERNELS: Stage.KERNELS,
    Rule.BITSANDBYTES: Stage.BITSANDBYTES,
    Rule.TRANSFORMERS: Stage.COMPANIONS,
    Rule.TRANSFORMERS_PYTHON: Stage.COMPANIONS,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """One turned-down candidate: the rule, the sentence a person reads, and the values behind it.

    Only the values that apply are set: ``needed_bytes``/``available_bytes`` for memory, the
    driver and its floor for a driver, compute capability and its floor for kernels and
    bitsandbytes, the Pythons for Python, the host's glibc and the wheels' floor for glibc.
    """

    rule: Rule
    text: str
    torch: Version | None = None
    variant: str | None = None
    cuda: Version | None = None
    precision: str | None = None
    needed_bytes: int | None = None
    available_bytes: int | None = None
    gpu: str | None = None
    compute_capability: tuple[int, int] | None = None
    cc_floor: tuple[int, int] | None = None
    driver: Version | None = None
    driver_floor: Version | None = None
    bitsandbytes: Version | None = None
    python: str | None = None
    #: the Pythons the rejected torch release has wheels for
    pythons: tuple[str, ...] = ()
    #: the Pythons the transformers the model needs accepts (a specifier such as ``>=3.10.0``)
    python_floor: str | None = None
    glibc: Version | None = None
    glibc_floor: Version | None = None

    @property
    def stage(self) -> Stage:
        return self.rule.stage


@dataclass(frozen=True, slots=True)
class Told:
    """Host facts an earlier reason (the engine's) already gave, so a later one can point to them: the CUDA
    versions whose driver floor it named, and whether it named the host's glibc."""

    cudas: frozenset[Version] = frozenset()
    glibc: bool = False


class Passed(NamedTuple):
    """Why a torch release was passed over: the rule, its sentence, and for a driver refusal the CUDA
    version whose driver floor the sentence names (so a plan that already gave that floor can point to it)."""

    rule: Rule
    why: str
    cuda: Version | None = None


@dataclass(slots=True)
class Search:
    """What the search turned down, in order, to explain a no-plan."""

    #: every rejection once (the same rule and text are kept at their first occurrence)
    rejections: list[Rejection] = field(default_factory=list)
    #: why each torch release was passed over, for the "torch" reason.
    by_release: dict[Version, Passed] = field(default_factory=dict)
    #: the smallest GPU memory any tried placement needed: (bytes, precision).
    min_gpu_need: tuple[int, str] | None = None
    _seen: set[tuple[Rule, str]] = field(default_factory=set, init=False, repr=False)

    def reject(self, rejection: Rejection) -> None:
        key = (rejection.rule, rejection.text)
        if key not in self._seen:
            self._seen.add(key)
            self.rejections.append(rejection)

    def need(self, required: int, precision: str) -> None:
        if self.min_gpu_need is None or required < self.min_gpu_need[0]:
            self.min_gpu_need = (required, precision)

    def passed_over(self, release: Version, rule: Rule, why: str, *, closest: bool = False,
                    cuda: Version | None = None) -> None:
        """Why ``release`` was passed over: the first reason, or with ``closest`` the latest one given for the
        same rule (builds are tried newest CUDA first, so the latest driver refusal is the build nearest to running).
        ``cuda``: the CUDA version whose driver floor a driver refusal names."""
        known = self.by_release.get(release)
        if known is None or (closest and known.rule is rule):
            self.by_release[release] = Passed(rule, why, cuda)

    def of(self, rule: Rule) -> list[Rejection]:
        return [r for r in self.rejections if r.rule is rule]

    @property
    def binding(self) -> Rejection | None:
        """The first rejection at the latest stage a build reached, if any build was tried on a fitting placement."""
        best: Rejection | None = None
        for r in self.rejections:
            if r.stage > (best.stage if best else Stage.SEARCH):
                best = r
        return best
