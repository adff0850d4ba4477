"""Where the smoke test's model comes from: a given folder, the Hugging Face cache, or a stand-in.

The choice is made before torch loads anything, so an incomplete download or a missing one
fails early with the command that fixes it, and a stand-in is always named as one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from provision.errors import InvalidInput, SmokeError

if TYPE_CHECKING:
    from provision.data import ModelSpec

__all__ = ["Source", "choose_source", "default_spec", "find_cached_snapshot", "missing_snapshot_files"]


def missing_snapshot_files(path: Path) -> list[str]:
    """Files a checkpoint folder needs but lacks: config, and every weight shard the index names.

    An interrupted ``huggingface-cli download`` leaves a snapshot with the index but not all
    shards; loading it would fail late, so this is checked before any loading.
    """
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            return [*missing, "model.safetensors.index.json (unreadable)"]
        if not isinstance(weight_map, dict) or not weight_map:
            return [*missing, "model.safetensors.index.json (no weight_map)"]
        shards = sorted({str(v) for v in weight_map.values()})
        missing += [s for s in shards if not (path / s).is_file()]  # is_file follows HF cache symlinks
    elif not any((path / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors")
    return missing


def find_cached_snapshot(repo: str, *, cache_dir: Path | None = None) -> Path | None:
    """The snapshot folder of ``repo`` in the Hugging Face cache, without touching the network."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        found = snapshot_download(repo, local_files_only=True, cache_dir=str(cache_dir) if cache_dir is not None else None)
    except (OSError, ValueError):  # LocalEntryNotFoundError (an OSError): not cached; ValueError: bad repo id
        return None
    return Path(found)


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """The folder a run loads, what it is, and whether the run must delete it afterwards."""

    path: Path
    kind: str  # weights | tiny | synthetic
    cleanup: bool = False
    warnings: tuple[str, ...] = ()


def default_spec(model_path: Path | None) -> ModelSpec:
    """The catalog default, the catalog model a stand-in folder was built for, or a local folder."""
    from provision.data import load_catalog, resolve_model
    from provision.smoke.tiny import read_marker

    catalog = load_catalog()
    if model_path is None:
        return catalog.default
    marker = read_marker(model_path) or {}
    known = catalog.get(str(marker.get("stand_in_for", "")))
    return known if known is not None else resolve_model(str(model_path), catalog)


def choose_source(
    spec: ModelSpec,
    *,
    model_path: Path | None,
    source: str,
    hf_cache_dir: Path | None,
    tiny_root: Path | None,
    synthetic_root: Path | None,
    init_device: str,
) -> Source:
    """Resolve ``source`` to a folder: given path, HF cache, then the tiny stand-in."""
    from provision.smoke.tiny import build_synthetic, build_tiny

    if model_path is not None:
        return _given_folder(model_path, source)
    warnings: list[str] = []
    if source in ("auto", "weights"):
        cached = _cached_weights(spec, source, hf_cache_dir)
        if isinstance(cached, Source):
            return cached
        warnings.extend(cached)
    if source == "synthetic":
        path = build_synthetic(spec.config, model_id=spec.id, root=synthetic_root, init_device=init_device)
        return Source(path=path, kind="synthetic", cleanup=True)
    tiny = build_tiny(spec.config, model_id=spec.id, root=tiny_root, source=f"catalog model {spec.id}")
    return Source(path=tiny.path, kind="tiny", warnings=tuple(warnings))


def _given_folder(model_path: Path, source: str) -> Source:
    """``--model-path``: a complete checkpoint, reported as the stand-in it may be."""
    if source not in ("auto", "weights"):
        raise InvalidInput("--model-path", "source", f"a model path cannot be combined with --{source}")
    if not model_path.is_dir():
        raise InvalidInput("--model-path", "(path)", f"{model_path} is not a directory")
    missing = missing_snapshot_files(model_path)
    if missing:
        raise SmokeError(f"{model_path} is an incomplete checkpoint: missing {', '.join(missing)}")
    return Source(path=model_path, kind=_stand_in_kind(model_path) or "weights")


def _cached_weights(spec: ModelSpec, source: str, hf_cache_dir: Path | None) -> Source | list[str]:
    """The complete cached snapshot, or (for ``auto``) the warnings to carry onto the stand-in.

    :raises SmokeError: ``weights`` was asked for and the cache has no complete snapshot.
    """
    snapshot = find_cached_snapshot(spec.repo, cache_dir=hf_cache_dir) if spec.repo else None
    if snapshot is None:
        if source == "weights":
            raise SmokeError(
                f"no weights for {spec.id}: {spec.repo} is not in the Hugging Face cache; "
                f"download it with `huggingface-cli download {spec.repo}` or pass --model-path DIR"
            )
        return []
    missing = missing_snapshot_files(snapshot)
    if not missing:
        return Source(path=snapshot, kind="weights")
    problem = (
        f"the Hugging Face cache holds an incomplete snapshot of {spec.repo} at {snapshot} "
        f"(missing {', '.join(missing)}); finish it with: huggingface-cli download {spec.repo}"
    )
    if source == "weights":
        raise SmokeError(problem)
    return [problem + "; using the tiny stand-in instead"]


def _stand_in_kind(path: Path) -> str | None:
    """``tiny``/``synthetic`` when the folder carries provision.smoke.tiny's marker, else None."""
    from provision.smoke.tiny import read_marker

    marker = read_marker(path)
    return None if marker is None else str(marker.get("kind", "tiny"))
