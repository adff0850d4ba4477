"""``provision.lock.json``: what a render was made from and what it wrote.

The lock records the inputs that change the plan (the host's planning facts, not its free
disk or RAM readings; the matrix digest, model, flags, toolkit version), the plan, how
complete the requirement hashes are, and the sha256 of every other rendered file. It is
canonical JSON (sorted keys, no timestamps), so the same inputs give the same bytes, and a
later render can tell which files a user edited.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provision.common.fields import Fields, read_json_file
from provision.errors import InvalidInput
from provision.vocab import LOCK_SCHEMA

__all__ = [
    "LOCK_NAME",
    "LOCK_SCHEMA",
    "build_lock",
    "canonical_json",
    "dump_lock",
    "edited_files",
    "read_lock",
    "sha256_hex",
]

LOCK_NAME = "provision.lock.json"
#: The keys ``build_lock`` writes; others are ignored, with a warning.
_LOCK_KEYS = frozenset({"schema", "inputs", "plan", "plan_sha256", "hashes", "files"})


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Sorted keys, fixed separators, ASCII: stable bytes for digests."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def build_lock(
    *,
    inputs: Mapping[str, Any],
    plan: Mapping[str, Any],
    hashes: Mapping[str, Any],
    files: Mapping[str, bytes],
) -> dict[str, Any]:
    """The lock document for ``files`` (every rendered file except the lock itself)."""
    return {
        "schema": LOCK_SCHEMA,
        "inputs": dict(inputs),
        "plan": dict(plan),
        "plan_sha256": sha256_hex(canonical_json(plan)),
        "hashes": dict(hashes),
        "files": {name: sha256_hex(files[name]) for name in sorted(files) if name != LOCK_NAME},
    }


def dump_lock(lock: Mapping[str, Any]) -> bytes:
    return (json.dumps(lock, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode()


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock at ``path``, or None when there is none; unknown top-level keys are warned about.

    :raises InvalidInput: the file exists but is not a lock this toolkit wrote.
    """
    if not path.exists():
        return None
    data = read_json_file(path)
    f = Fields(data, str(path))
    if f.str("schema") != LOCK_SCHEMA:
        raise f.fail("schema", f"expected {LOCK_SCHEMA!r}")
    f.warn_unknown(_LOCK_KEYS)
    files = f.obj("files")
    assert files is not None
    for name, digest in files.data.items():
        if not isinstance(digest, str) or len(digest) != 64:
            raise files.fail(name, "expected a sha256 hex digest")
    return dict(data)


def edited_files(out_dir: Path, lock: Mapping[str, Any], names: list[str] | None = None) -> list[str]:
    """Files under ``out_dir`` whose bytes differ from what ``lock`` says was rendered.

    Files the lock does not know (not rendered by us) count as edited when ``names``
    asks about them and they exist: a render must not clobber a user's own file.
    """
    recorded: Mapping[str, str] = lock.get("files", {})
    changed = []
    for name in sorted(set(recorded) | set(names or [])):
        path = out_dir / name
        if not path.is_file():
            continue
        want = recorded.get(name)
        try:
            have = sha256_hex(path.read_bytes())
        except OSError as exc:
            raise InvalidInput(str(path), "(file)", f"cannot read: {exc.strerror or exc}") from None
        if have != want:
            changed.append(name)
    return changed
