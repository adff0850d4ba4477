"""Memory budgets the search and the remedies share: the RAM a host can give a model, sizes in GB, the context.

Its own module so that ``search`` (which fits models into RAM), ``engine`` (which fits them into a
GPU's share) and ``remedies`` (which says how much RAM a CPU plan would need) all read it without
importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from provision.vocab import DEFAULT_CONTEXT, MIN_SERVING_CONTEXT

if TYPE_CHECKING:
    from provision.data.catalog import ModelSpec

__all__ = ["CONTEXT_STEP", "RAM_RESERVE_BYTES", "RAM_RESERVE_FRACTION", "ContextGoal", "gb",
           "ram_needed", "usable_ram"]

#: Off CUDA the OS and other processes need room too: keep this much RAM back
#: (the larger of an absolute floor and a share; Python and torch are already in the estimate).
RAM_RESERVE_BYTES = 1_500_000_000
RAM_RESERVE_FRACTION = 0.06

#: A lowered context is a multiple of this (whole 256-token steps: readable, and a few search steps).
CONTEXT_STEP = 256


def usable_ram(ram_bytes: int) -> int:
    return ram_bytes - max(RAM_RESERVE_BYTES, int(ram_bytes * RAM_RESERVE_FRACTION))


def ram_needed(total_bytes: int) -> int:
    """The RAM a host needs for ``usable_ram`` to hold ``total_bytes`` (its inverse)."""
    return total_bytes + max(RAM_RESERVE_BYTES, int(total_bytes * RAM_RESERVE_FRACTION / (1 - RAM_RESERVE_FRACTION)))


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


@dataclass(frozen=True, slots=True)
class ContextGoal:
    """The tokens a plan budgets for: ``target`` where it fits, else the most that fits down to ``floor``.

    ``for_model`` gives the default: the model's serving context (the catalog's ``serve.context``,
    25,480 for AutoGLM-Phone-9B), lowered only as far as ``MIN_SERVING_CONTEXT``; an explicit
    ``--context`` is its own floor, since the user asked for exactly that. The search tries every
    precision and placement at ``target`` first (``exact``) and only then accepts less (``lowered``),
    as the engine search does: the serving context in 4-bit comes before a shorter one in 16-bit.
    """

    target: int
    floor: int

    @classmethod
    def for_model(cls, model: ModelSpec, asked: int | None) -> ContextGoal:
        """``asked`` (``--context``) exactly; else the model's serving context, with room to lower it.

        A model without serving facts (a local directory) gets ``DEFAULT_CONTEXT``, which is below
        the floor and so is never lowered.
        """
        if asked is not None:
            return cls(asked, asked)
        target = model.serve.context if model.serve is not None else DEFAULT_CONTEXT
        return cls(target, min(MIN_SERVING_CONTEXT, target))

    def leaving_room(self, tokens: int) -> ContextGoal:
        """The goal with a floor that still holds ``tokens`` (the request's screenshots) and one more."""
        return ContextGoal(self.target, min(self.target, max(self.floor, tokens + 1)))

    @property
    def exact(self) -> ContextGoal:
        """The first pass: the target or nothing."""
        return ContextGoal(self.target, self.target)

    @property
    def can_lower(self) -> bool:
        return self.floor < self.target

    def best(self, fits: Callable[[int], bool]) -> int | None:
        """The largest context in [floor, target] that ``fits`` (monotonic: fewer tokens never need more).

        The target itself, else a whole number of ``CONTEXT_STEP`` steps found by bisection, else
        None when not even the floor fits.
        """
        if fits(self.target):
            return self.target
        if not self.can_lower or not fits(self.floor):
            return None
        low, high = self.floor, self.target  # fits(low), not fits(high)
        while high - low > CONTEXT_STEP:
            middle = (low + high) // 2 // CONTEXT_STEP * CONTEXT_STEP
            if middle <= low:
                break
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low
