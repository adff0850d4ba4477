"""The doctor's checks of what is installed and downloaded: packages, checkpoint, disk, lock.

Pure functions of gathered facts, like the torch and GPU checks in ``provision.doctor.checks``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from packaging.version import Version

from provision.doctor.checks import Finding, base_version_or_none, version_or_none
from provision.doctor.expected import torch_fix

if TYPE_CHECKING:
    from pathlib import Path

    from provision.data import Matrix, ModelSpec
    from provision.doctor.expected import Expected
    from provision.doctor.facts import CacheScan, Facts

__all__ = [
    "check_accelerate",
    "check_disk",
    "check_lock_drift",
    "check_model_cache",
    "check_transformers",
]

#: transformers 5.x declares accelerate>=1.1.0 (Requires-Dist of the 5.24.0 wheel; see matrices/companions.toml).
ACCELERATE_FLOOR_FOR_TRANSFORMERS_5 = Version("1.1.0")
GB = 1e9


def check_transformers(facts: Facts, matrix: Matrix, model: ModelSpec, expected: Expected | None) -> Finding:
    """transformers new enough for the model's config (AutoGLM's v5 layout needs >= 5.0.0)."""
    name = "transformers"
    pin_fix = (expected.pin_fix("transformers") if expected else None) or shlex.join(
        ["pip", "install", f"transformers>={model.min_transformers}"])
    text = facts.packages.get("transformers")
    if text is None:
        return Finding(check=name, status="fail", fix=pin_fix,
                       message=f"transformers is not installed; {model.name} needs >= {model.min_transformers}")
    evidence: dict[str, Any] = {"version": text, "min_for_model": str(model.min_transformers)}
    version = version_or_none(text)
    if version is None or version < model.min_transformers:
        return Finding(check=name, status="fail", evidence=evidence, fix=pin_fix,
                       message=f"transformers {text} is too old for {model.name}: it needs >= {model.min_transformers}"
                               + (" (transformers 4.x cannot read its config)" if model.min_transformers.major >= 5
                                  else ""))
    row = next((c for c in matrix.companion_versions("transformers") if c.version == version), None)
    torch_text = facts.torch.get("version") if facts.torch else None
    torch_v = base_version_or_none(torch_text)
    if row is not None and torch_v is not None and torch_v not in row.requires_torch:
        evidence["requires_torch"] = str(row.requires_torch)
        return Finding(check=name, status="fail", evidence=evidence, fix=torch_fix(expected),
                       message=f"transformers {text} needs torch {row.requires_torch}; installed {torch_text}")
    return Finding(check=name, status="ok", evidence=evidence,
                   message=f"transformers {text} supports {model.name} (needs >= {model.min_transformers})")


def check_accelerate(facts: Facts, expected: Expected | None) -> Finding:
    """accelerate places the model (``device_map``); transformers 5 needs >= 1.1.0."""
    name = "accelerate"
    fix = (expected.pin_fix("accelerate") if expected else None) or "pip install accelerate"
    on_gpu = expected.device == "cuda" if expected is not None else bool(facts.host.gpus)
    text = facts.packages.get("accelerate")
    if text is None:
        return Finding(check=name, status="fail" if on_gpu else "warn", fix=fix,
                       message="accelerate is not installed; loading with device_map needs it")
    version = version_or_none(text)
    tf = version_or_none(facts.packages.get("transformers"))
    if version is None or (tf is not None and tf.major >= 5 and version < ACCELERATE_FLOOR_FOR_TRANSFORMERS_5):
        return Finding(check=name, status="fail", fix=fix, evidence={"version": text},
                       message=f"accelerate {text} is older than the {ACCELERATE_FLOOR_FOR_TRANSFORMERS_5} "
                               "transformers 5 requires")
    return Finding(check=name, status="ok", evidence={"version": text}, message=f"accelerate {text}")


def _download_fix(model: ModelSpec) -> str:
    if not model.repo:
        return f"copy the complete checkpoint into {getattr(model, 'path', '') or 'the model folder'}"
    return shlex.join(["hf", "download", model.repo]) + "  # resumes; older huggingface_hub: huggingface-cli download"


def _expected_download(model: ModelSpec, scan: CacheScan) -> int:
    """The checkpoint's size: the index's total, else the parameter count in bf16."""
    return scan.expected_bytes if scan.expected_bytes else int(model.parameters) * 2


def _cache_problems(scan: CacheScan) -> list[str]:
    problems = []
    if not scan.has_config:
        problems.append("config.json is missing")
    if scan.missing:
        problems.append(f"{len(scan.missing)} of {len(scan.shards)} shards missing ({', '.join(scan.missing)})")
    if scan.empty:
        problems.append(f"empty shards: {', '.join(scan.empty)}")
    if scan.too_small:
        problems.append(f"shards hold {scan.present_bytes} bytes, less than the {scan.expected_bytes} the index "
                        "records (truncated download)")
    if scan.incomplete_blobs:
        problems.append(f"{scan.incomplete_blobs} interrupted download(s) in blobs/")
    return problems


def check_model_cache(scan: CacheScan, model: ModelSpec) -> Finding:
    """The model's snapshot is complete: config.json and every shard the index names, none empty or truncated."""
    name = "model.cache"
    evidence: dict[str, Any] = {"snapshot": str(scan.snapshot) if scan.snapshot else None,
                                "root": str(scan.root) if scan.root else None}
    fix = _download_fix(model)
    if scan.snapshot is None:
        return Finding(check=name, status="warn", evidence=evidence, fix=fix,
                       message=f"{model.name} is not in the Hugging Face cache; the first load downloads "
                               f"about {_expected_download(model, scan) / GB:.1f} GB")
    if scan.error:
        evidence["error"] = scan.error
        return Finding(check=name, status="fail", evidence=evidence, fix=fix,
                       message=f"the snapshot's model.safetensors.index.json is unusable: {scan.error}")
    problems = _cache_problems(scan)
    evidence.update(shards=dict(scan.shards), expected_bytes=scan.expected_bytes, present_bytes=scan.present_bytes)
    if problems:
        return Finding(check=name, status="fail", evidence=evidence, fix=fix,
                       message=f"{model.name} in the cache is incomplete: {'; '.join(problems)}")
    return Finding(check=name, status="ok", evidence=evidence,
                   message=f"{model.name}: config.json and {len(scan.shards)} shard(s), "
                           f"{scan.present_bytes / GB:.1f} GB, in {scan.snapshot}")


def check_disk(facts: Facts, scan: CacheScan, model: ModelSpec) -> Finding:
    """Enough free disk where the cache lives for what is still to download."""
    name = "disk"
    if scan.complete:
        return Finding(check=name, status="skip", message="the model is fully cached: nothing to download")
    need = max(_expected_download(model, scan) - scan.present_bytes, 0)
    where = str(facts.cache_dir) if facts.cache_dir else "the Hugging Face cache"
    evidence = {"need_bytes": need, "free_bytes": facts.disk_free_bytes, "cache_dir": where}
    if facts.disk_free_bytes is None:
        return Finding(check=name, status="skip", evidence=evidence, message=f"free space in {where} is unknown")
    if facts.disk_free_bytes < need:
        return Finding(check=name, status="fail", evidence=evidence,
                       fix=f"free {(need - facts.disk_free_bytes) / GB:.1f} GB in {where}, or export HF_HOME to a "
                           "disk with room",
                       message=f"downloading {model.name} needs {need / GB:.1f} GB; {where} has "
                               f"{facts.disk_free_bytes / GB:.1f} GB free")
    return Finding(check=name, status="ok", evidence=evidence,
                   message=f"{facts.disk_free_bytes / GB:.1f} GB free in {where} for a {need / GB:.1f} GB download")


def _same_version(have: str, want: str) -> bool:
    """Equal as text or as PEP 440 versions (``2.8`` == ``2.8.0``), local label included."""
    v = version_or_none(have)
    return have == want or (v is not None and v == version_or_none(want))


def _drift_fix(drift: Mapping[str, Any], expected: Expected, lock_path: Path, python_differs: bool) -> str:
    fixes = []
    if "torch" in drift:
        fixes.append(expected.torch_fix())
    others = [p for p in drift if p != "torch"]
    if others:
        fixes.append(shlex.join(["pip", "install", *(f"{p}=={expected.packages[p]}" for p in others)]))
    if python_differs and not fixes:
        fixes.append(f"provision build {shlex.quote(str(lock_path.parent))}  # builds a venv with the locked Python")
    return " && ".join(fixes)


def check_lock_drift(facts: Facts, expected: Expected | None, lock_path: Path | None) -> Finding:
    """Every package the lock pins is installed at exactly that version (local label included)."""
    name = "lock.drift"
    if expected is None or lock_path is None:
        return Finding(check=name, status="skip",
                       message="no provision.lock.json found (pass --lock FILE to compare this environment with one)")
    drift: dict[str, dict[str, str | None]] = {}
    for pkg, want in sorted(expected.packages.items()):
        have = facts.packages.get(pkg)
        if have is None or not _same_version(have, want):
            drift[pkg] = {"locked": want, "installed": have}
    evidence: dict[str, Any] = {"lock": str(lock_path), "drift": drift}
    notes = []
    if facts.python_minor != expected.python:
        notes.append(f"the lock is for Python {expected.python}, this is Python {facts.python}")
        evidence["python"] = {"locked": expected.python, "running": facts.python}
    if not drift and not notes:
        return Finding(check=name, status="ok", evidence=evidence,
                       message=f"all {len(expected.packages)} pinned packages match {lock_path}")
    parts = [f"{p} {v['installed'] or 'missing'} (locked {v['locked']})" for p, v in drift.items()]
    return Finding(check=name, status="fail", evidence=evidence, fix=_drift_fix(drift, expected, lock_path, bool(notes)),
                   message=f"this environment differs from {lock_path}: " + "; ".join(parts + notes))
