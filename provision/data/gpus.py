"""GPU model -> compute capability and memory, from ``matrices/gpus.toml``.

Detection needs it only when the driver does not report these facts itself (old
nvidia-smi without ``compute_cap``, or the ``/proc/driver/nvidia`` fallback). The
table is one part of the ``Matrix`` (``Matrix.gpus``), validated completely when the
matrix loads; lookups are pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from provision.common.fields import Fields
from provision.errors import InvalidInput
from provision.vocab import PLATFORMS

__all__ = [
    "GpuModel",
    "GpuTable",
    "gpu_table_from_fields",
    "normalize_gpu_name",
]

_CC_RE = re.compile(r"^(\d{1,2})\.(\d)$")
_DROP_WORDS = frozenset({"nvidia", "geforce", "tesla"})


def normalize_gpu_name(name: str) -> str:
    """The matching key: ``"NVIDIA GeForce RTX 4090"`` and ``"GeForce RTX 4090"`` -> ``"rtx 4090"``."""
    words = re.sub(r"[^0-9a-z]+", " ", name.lower()).split()
    return " ".join(w for w in words if w not in _DROP_WORDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuModel:
    """One row: a GPU model and the facts every card of that name shares."""

    model: str
    names: tuple[str, ...]
    prefixes: tuple[str, ...]
    compute_capability: tuple[int, int]
    memory_bytes: int | None
    platforms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuTable:
    """The whole table, indexed by normalized name (built once, in ``__post_init__``)."""

    models: tuple[GpuModel, ...]
    _by_name: dict[str, GpuModel] = field(init=False, repr=False, compare=False)
    _by_prefix: tuple[tuple[str, GpuModel], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, GpuModel] = {}
        for row in self.models:  # the first row claiming a name wins, as gpu_table_from_fields checks
            for n in row.names:
                by_name.setdefault(normalize_gpu_name(n), row)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_prefix", tuple(
            (normalize_gpu_name(p), row) for row in self.models for p in row.prefixes))

    def lookup(self, name: str) -> tuple[tuple[int, int], int | None] | None:
        """``(compute_capability, memory_bytes or None)`` for a reported name, or None.

        An exact name gives both facts; a family prefix gives the compute capability only,
        because memory differs within a family (A100 40GB/80GB).
        """
        key = normalize_gpu_name(name)
        if not key:
            return None
        row = self._by_name.get(key)
        if row is not None:
            return row.compute_capability, row.memory_bytes
        best: tuple[int, GpuModel] | None = None
        for p, row in self._by_prefix:
            if (key == p or key.startswith(p + " ")) and (best is None or len(p) > best[0]):
                best = (len(p), row)
        return (best[1].compute_capability, None) if best else None


def _model_from_fields(g: Fields) -> GpuModel:
    model = g.str("model")
    names = tuple(g.strs("names"))
    if not names:
        raise g.fail("names", "must list at least one name")
    prefixes = tuple(g.strs("prefixes", required=False))
    for key, values in (("names", names), ("prefixes", prefixes)):
        for i, value in enumerate(values):
            if not normalize_gpu_name(value):
                raise g.item_fail(key, i, f"{value!r} has no letters or digits")
    cc_text = g.str("compute_capability")
    match = _CC_RE.fullmatch(cc_text)
    if not match or not 1 <= int(match.group(1)) <= 20:
        raise g.fail("compute_capability", f"{cc_text!r} is not a compute capability like '8.6'")
    mib = g.int("memory_mib", required=False, minimum=1, maximum=2**30)
    platforms = tuple(g.strs("platforms", required=False))
    for i, platform in enumerate(platforms):
        if platform not in PLATFORMS:
            raise InvalidInput(
                g.source, f"{g.where('platforms')}[{i}]", f"{platform!r} is not one of {', '.join(PLATFORMS)}"
            )
    if g.has("source"):
        g.str("source")
    return GpuModel(
        model=model,
        names=names,
        prefixes=prefixes,
        compute_capability=(int(match.group(1)), int(match.group(2))),
        memory_bytes=mib * 1024 * 1024 if mib is not None else None,
        platforms=platforms,
    )


def gpu_table_from_fields(f: Fields) -> GpuTable:
    """Validate a parsed ``gpus.toml``; a name claimed by two rows is an error.

    :raises InvalidInput: naming the file and the dotted key.
    """
    version = f.int("schema_version")
    if version != 1:
        raise f.fail("schema_version", f"unsupported schema_version {version}; expected 1")
    meta = f.obj("meta")
    if not meta.strs("sources"):
        raise meta.fail("sources", "must list at least one URL")
    meta.str("retrieved")
    rows = f.objs("gpu")
    if not rows:
        raise f.fail("gpu", "must list at least one GPU")
    models = tuple(_model_from_fields(g) for g in rows)
    seen: dict[str, int] = {}
    for i, row in enumerate(models):
        for j, name in enumerate(row.names):
            key = normalize_gpu_name(name)
            if key in seen and seen[key] != i:
                raise InvalidInput(f.source, f"gpu[{i}].names[{j}]", f"{name!r} is already listed in gpu[{seen[key]}]")
            seen[key] = i
    return GpuTable(models=models)
