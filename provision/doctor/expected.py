"""What the environment should hold, as ``provision doctor`` judges it: a lock's plan or a fresh one.

Its values end up in the fix commands the doctor prints; ``Plan.from_dict`` validated them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from provision.vocab import PYPI_INDEX

if TYPE_CHECKING:
    from provision.plan.document import Plan

__all__ = ["Expected", "torch_fix"]

_FALLBACK_TORCH_FIX = "provision plan  # shows the torch build for this machine, then install it with the printed index"


@dataclass(frozen=True, slots=True, kw_only=True)
class Expected:
    """What the environment should hold: from a lock's plan, or planned here for this host."""

    model_id: str
    python: str
    torch_version: str
    variant: str
    index_url: str
    device: str
    precision: str
    gpus: tuple[int, ...]
    packages: dict[str, str]
    source: str  # "lock FILE" or "planned for this host"

    @classmethod
    def from_plan(cls, plan: Plan, source: str) -> Expected:
        """The values the checks compare against, from a plan (read with ``Plan.from_dict`` when it is a lock's)."""
        return cls(
            model_id=plan.model_id, python=plan.python, torch_version=str(plan.torch_version), variant=plan.variant,
            index_url=plan.index_url, device=plan.device, precision=plan.precision, gpus=plan.placement.gpus,
            packages=dict(plan.packages), source=source,
        )

    def torch_fix(self) -> str:
        """The pip command that installs the planned torch build."""
        pin = self.packages.get("torch") or self.torch_version
        cmd = ["pip", "install"]
        if self.index_url.rstrip("/") != PYPI_INDEX:
            cmd += ["--index-url", self.index_url]
        return shlex.join([*cmd, f"torch=={pin}"])

    def pin_fix(self, *names: str) -> str | None:
        pins = [f"{n}=={self.packages[n]}" for n in names if n in self.packages]
        return shlex.join(["pip", "install", *pins]) if pins else None


def torch_fix(expected: Expected | None) -> str:
    """The planned torch install, or, with no plan, how to get one."""
    return expected.torch_fix() if expected else _FALLBACK_TORCH_FIX
