"""The plan as a typed document: what the planner chose, and its ``provision.plan/v1`` JSON both ways.

``search`` builds these values. ``Plan.to_dict`` writes the contract's document and ``Plan.from_dict``
reads one back (a ``render --plan`` file, a lock's ``plan``), validating every field on the way, so
render, smoke, doctor and the resolver read typed values and never parse the dict themselves.
``Plan.from_dict(p.to_dict()) == p`` for every plan the planner makes. Every plan carries ``serve``; a
document written before plans did (the contract's example, an older lock) reads as the
``transformers serve`` plan it describes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from packaging.version import Version

from provision.common.fields import Fields
from provision.common.quoting import check_index_url, check_model_id, check_package_name, check_repo_id, check_version
from provision.plan.serve import Serve, transformers_serve
from provision.vocab import (
    DEFAULT_CONTEXT,
    DEFAULT_ENGINE,
    DEVICES,
    PLAN_PRECISIONS,
    PLAN_SCHEMA,
    PYTHON_MINOR_RE,
    is_buildable_variant,
)

__all__ = ["Placement", "Plan", "Preferences", "Reason", "variant_cuda"]

#: ``max_memory`` keys as accelerate takes them: a GPU index or ``cpu``.
_MEMORY_KEY_RE = re.compile(r"\d{1,2}|cpu")
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_MAX_GPU_INDEX = 63


@dataclass(frozen=True, slots=True, kw_only=True)
class Preferences:
    """What the user asked for. ``None`` means "choose for me"."""

    python: str | None = None
    #: ``--context``, planned exactly (a no-plan where it does not fit); None: the model's serving context
    #: from the catalog, lowered to what fits down to ``MIN_SERVING_CONTEXT`` (see ``budget.ContextGoal``)
    context_tokens: int | None = None
    precision: str | None = None
    device: str = "auto"
    torch_version: Version | None = None
    #: a PyTorch index variant name (``cu126``) to use instead of choosing one.
    variant: str | None = None
    #: torch builds installable from the configured wheel sources, as (version, variant) pairs;
    #: variant "" is a plain PyPI build. None means any build on the indexes.
    torch_available: frozenset[tuple[Version, str]] | None = None
    #: the same for torchvision (a vision model's processor needs the build that matches torch's).
    torchvision_available: frozenset[tuple[Version, str]] | None = None
    #: where the rendered files take torch from instead of its index, for the variant's reason to say:
    #: the wheel folders (``--wheelhouse``, requirements.txt's ``--find-links``) and the ``--index-url`` mirror.
    wheelhouse: tuple[str, ...] = ()
    index_url: str | None = None
    #: ``auto`` serves with the best engine the host runs (vLLM, then SGLang), else ``transformers serve``.
    engine: str = DEFAULT_ENGINE
    #: screenshots per request and their pixel cap for the memory budget; None: the catalog's (``ModelSpec.serve``)
    images: int | None = None
    max_pixels: int | None = None
    #: whether the index the torch builds come from (the PyTorch index, or ``--index-url``'s) answered the
    #: command's one probe; None: not asked, plans as if it did. False: within a release, PyPI's build of the
    #: platform's default variant comes first where it runs, so the whole closure can be hashed.
    torch_index_reachable: bool | None = None

    @property
    def index_decides(self) -> bool:
        """Whether the torch index's reachability can change a plan: torch comes from an index (no wheel
        folders restrict it) and no ``--variant`` names the build."""
        return self.torch_available is None and self.variant is None


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
    """The planner's choice for one host and model.

    Each section of the document has its own reader below (``_read_placement``, ...); a new
    section joins as one typed field, one reader and one key in ``to_dict``.
    """

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
    #: how the model is served: by vLLM or SGLang, else by ``transformers serve``
    serve: Serve
    #: ``Preferences.torch_index_reachable`` as planned with (``torch.index_reachable``, absent when None)
    torch_index_reachable: bool | None = None

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
        torch: dict[str, Any] = {"version": str(self.torch_version), "variant": self.variant, "index_url": self.index_url}
        if self.torch_index_reachable is not None:
            torch["index_reachable"] = self.torch_index_reachable
        return {
            "schema": PLAN_SCHEMA,
            "model": {"id": self.model_id, "repo": self.model_repo, "parameters": self.parameters},
            "python": self.python,
            "torch": torch,
            "cuda": str(self.cuda) if self.cuda else None,
            "device": p.device,
            "gpus": list(p.gpus),
            "precision": p.precision,
            "memory": memory,
            "packages": dict(sorted(self.packages.items())),
            "warnings": list(self.warnings),
            "reasons": [r.to_dict() for r in self.reasons],
            "serve": self.serve.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: object, *, source: str = "plan", where: str = "") -> Plan:
        """Read a ``provision.plan/v1`` document; ``where`` is its path inside ``source`` (``plan`` in a lock).

        Every key ``to_dict`` writes is required except ``cuda`` (derived from the variant when absent,
        as in the contract's example), ``model.repo`` (null for a local model directory), ``serve``
        (absent: the ``transformers serve`` of the plan, see ``_read_serve``) and ``torch.index_reachable``
        (absent: not asked).

        :raises InvalidInput: naming ``source`` and the dotted field; a no-viable-plan document is one too.
        """
        f = Fields(data, source, where)
        if f.str("schema") != PLAN_SCHEMA:
            raise f.fail("schema", f"expected {PLAN_SCHEMA!r}")
        if "error" in f.data:
            raise f.fail("error", "a no-viable-plan document cannot be rendered")
        model, torch = f.obj("model"), f.obj("torch")
        _warn_unknown_keys(f)
        python = f.str("python")
        if not PYTHON_MINOR_RE.fullmatch(python):
            raise f.fail("python", f"{python!r} is not a Python minor like 3.11")
        variant = torch.str("variant")
        if not is_buildable_variant(variant):
            raise torch.fail("variant", f"{variant!r} is not cpu or cuXYZ")
        model_id = check_model_id(model.str("id"), source=source, field=model.where("id"))
        repo = model.str("repo", required=False)
        if repo is not None:
            check_repo_id(repo, source=source, field=model.where("repo"))
        version = check_version(torch.str("version"), source=source, field=torch.where("version"))
        index_url = check_index_url(torch.str("index_url"), source=source, field=torch.where("index_url"))
        device, precision = f.choice("device", DEVICES), f.choice("precision", PLAN_PRECISIONS)
        packages = _read_packages(f)
        parameters = model.int("parameters")
        cuda = _read_cuda(f, variant)
        placement = _read_placement(f, device, precision)
        warnings = tuple(f.strs("warnings"))
        reasons = tuple(Reason(decision=r.str("decision"), choice=r.str("choice"), why=r.str("why"))
                        for r in f.objs("reasons"))
        # The placement's why is written once, as the device decision's.
        why = next((r.why for r in reasons if r.decision == "device"), "")
        return cls(
            model_id=model_id, model_repo=repo, parameters=parameters, python=python,
            torch_version=Version(version), variant=variant, index_url=index_url, cuda=cuda,
            placement=replace(placement, why=why), packages=packages, warnings=warnings, reasons=reasons,
            serve=_read_serve(f, model_id, repo, packages, placement),
            torch_index_reachable=torch.bool("index_reachable", required=False),
        )


#: The keys ``Plan.to_dict`` writes, per object: anything else is ignored, with a warning naming the nearest.
_PLAN_KEYS = {"": frozenset({"schema", "model", "python", "torch", "cuda", "device", "gpus", "precision", "memory",
                             "packages", "warnings", "reasons", "serve"}),
              "model": frozenset({"id", "repo", "parameters"}),
              "torch": frozenset({"version", "variant", "index_url", "index_reachable"}),
              "memory": frozenset({"required_bytes", "available_bytes", "breakdown", "max_memory", "device_map"})}
_REASON_KEYS = frozenset({"decision", "choice", "why"})


def _warn_unknown_keys(f: Fields) -> None:
    """``UnknownKeyWarning`` for each key of the plan (and its fixed-shape objects) that it does not define."""
    import dataclasses

    for name, known in _PLAN_KEYS.items():
        part = f if not name else f.obj(name, required=False)
        if part is not None:
            part.warn_unknown(known)
    for reason in f.objs("reasons", required=False):
        reason.warn_unknown(_REASON_KEYS)
    serve = f.obj("serve", required=False)
    if serve is not None:
        serve.warn_unknown({field.name for field in dataclasses.fields(Serve)})


def variant_cuda(variant: str) -> Version | None:
    """The CUDA a buildable variant's name stands for (``cu126`` -> 12.6, ``cpu`` -> None), as the matrix names them."""
    return None if variant == "cpu" else Version(f"{variant[2:-1]}.{variant[-1]}")


def _read_cuda(f: Fields, variant: str) -> Version | None:
    """``cuda``, which must agree with the variant's name; absent, the variant's own."""
    if "cuda" not in f.data:
        return variant_cuda(variant)
    cuda = f.version("cuda", required=False)
    if (cuda is None) != (variant == "cpu") or (cuda is not None and variant != f"cu{cuda.major}{cuda.minor}"):
        raise f.fail("cuda", f"{'null' if cuda is None else cuda} does not match torch.variant {variant!r}")
    return cuda


def _read_serve(f: Fields, model_id: str, repo: str | None, packages: dict[str, str], placement: Placement) -> Serve:
    """``serve``; absent (a document from before plans carried it), the ``transformers serve`` it describes.

    That server is named after the model id (the catalog's served names are its ids) and budgeted for
    ``DEFAULT_CONTEXT``, the default when such documents were written (they do not record it).
    """
    if f.has("serve"):
        return Serve.from_dict(f.obj("serve"))
    version = packages.get("transformers")
    if version is None or placement.precision == "fp8":
        raise f.fail("serve", "required key is missing (a plan without one must be a transformers plan)")
    return transformers_serve(served_model_name=model_id, model_source=repo, transformers_version=version,
                              precision=placement.precision, device=placement.device, context=DEFAULT_CONTEXT)


def _read_packages(f: Fields) -> dict[str, str]:
    """``packages``: canonical name -> exact version, both checked before they reach a pip line; sorted."""
    pk = f.obj("packages")
    out = {}
    for name, version in pk.data.items():
        canon = check_package_name(name, source=f.source, field=pk.where(str(name)))
        out[canon] = check_version(version, source=f.source, field=pk.where(str(name)))
    if not out:
        raise f.fail("packages", "must pin at least one package")
    return dict(sorted(out.items()))


def _read_placement(f: Fields, device: str, precision: str) -> Placement:
    """``device``, ``gpus``, ``precision`` and ``memory``."""
    gpus = f.list("gpus")
    for i, gpu in enumerate(gpus):
        if not isinstance(gpu, int) or isinstance(gpu, bool) or not 0 <= gpu <= _MAX_GPU_INDEX:
            raise f.item_fail("gpus", i, f"expected a GPU index 0-{_MAX_GPU_INDEX}")
    memory = f.obj("memory")
    breakdown = memory.obj("breakdown")
    return Placement(
        device=device, gpus=tuple(gpus), precision=precision,
        required_bytes=memory.int("required_bytes"), available_bytes=memory.int("available_bytes"),
        breakdown={key: breakdown.int(key) for key in breakdown.data},
        max_memory=_read_max_memory(memory), device_map=_read_device_map(memory),
    )


def _read_max_memory(memory: Fields) -> dict[str, int] | None:
    """``memory.max_memory`` for accelerate: a byte budget per GPU index (or ``cpu``)."""
    limits = memory.obj("max_memory", required=False)
    if limits is None:
        return None
    out = {key: limits.int(key, minimum=1) for key in limits.data if _MEMORY_KEY_RE.fullmatch(key)}
    if len(out) != len(limits.data):
        raise memory.fail("max_memory", "keys must be GPU indices or 'cpu'")
    return out


def _read_device_map(memory: Fields) -> dict[str, int] | None:
    """``memory.device_map``: module name -> GPU, exactly as a split was planned."""
    placed = memory.obj("device_map", required=False)
    if placed is None:
        return None
    out = {}
    for key in placed.data:
        if not _MODULE_RE.fullmatch(key):
            raise placed.fail(key, "is not a module name")
        out[key] = placed.int(key, maximum=_MAX_GPU_INDEX)
    return out
