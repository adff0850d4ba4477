"""The plan as a typed document: what the planner chose, and the ``provision.plan/v1`` JSON it writes.

``search`` builds these values; render, smoke, doctor and the resolver read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from packaging.version import Version

from provision.vocab import DEFAULT_CONTEXT, PLAN_SCHEMA

__all__ = ["Placement", "Plan", "Preferences", "Reason"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Preferences:
    """What the user asked for. ``None`` means "choose for me"."""

    python: str | None = None
    context_tokens: int = DEFAULT_CONTEXT
    precision: str | None = None
    device: str = "auto"
    torch_version: Version | None = None
    #: a PyTorch index variant name (``cu126``) to use instead of choosing one.
    variant: str | None = None
    #: torch builds installable from the configured wheel sources, as (version, variant) pairs;
    #: variant "" is a plain PyPI build. None means any build on the indexes.
    torch_available: frozenset[tuple[Version, str]] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reason:
    decision: str
    choice: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"decision": self.decision, "choice": self.choice, "why": self.why}


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where the weights go and what that costs."""

    device: str
    gpus: tuple[int, ...]
    precision: str
    required_bytes: int
    available_bytes: int
    breakdown: dict[str, int] = field(hash=False)
    max_memory: dict[str, int] | None = field(default=None, hash=False)
    #: module -> GPU for a split, so the load places exactly what was planned
    device_map: dict[str, int] | None = field(default=None, hash=False)
    why: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    model_id: str
    model_repo: str | None
    parameters: int
    python: str
    torch_version: Version
    variant: str
    index_url: str
    placement: Placement
    packages: dict[str, str] = field(hash=False)
    warnings: tuple[str, ...] = ()
    reasons: tuple[Reason, ...] = ()
    cuda: Version | None = None

    @property
    def precision(self) -> str:
        return self.placement.precision

    @property
    def device(self) -> str:
        return self.placement.device

    def to_dict(self) -> dict[str, Any]:
        p = self.placement
        memory: dict[str, Any] = {
            "required_bytes": p.required_bytes,
            "available_bytes": p.available_bytes,
            "breakdown": dict(p.breakdown),
        }
        if p.max_memory:
            memory["max_memory"] = dict(p.max_memory)
        if p.device_map:
            memory["device_map"] = dict(p.device_map)
        return {
            "schema": PLAN_SCHEMA,
            "model": {"id": self.model_id, "repo": self.model_repo, "parameters": self.parameters},
            "python": self.python,
            "torch": {"version": str(self.torch_version), "variant": self.variant, "index_url": self.index_url},
            "cuda": str(self.cuda) if self.cuda else None,
            "device": p.device,
            "gpus": list(p.gpus),
            "precision": p.precision,
            "memory": memory,
            "packages": dict(sorted(self.packages.items())),
            "warnings": list(self.warnings),
            "reasons": [r.to_dict() for r in self.reasons],
        }
