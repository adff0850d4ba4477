"""What ``provision doctor`` looks at: the one place it touches the running environment.

Versions come from ``importlib.metadata``; torch and bitsandbytes are imported only to ask
them what they can do, so the checks themselves stay pure functions of ``Facts``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name

from provision.common.fields import Fields, read_json_file
from provision.errors import InvalidInput
from provision.vocab import OUTPUT_BASE

if TYPE_CHECKING:
    from provision.data import ModelSpec
    from provision.host import HostProfile

__all__ = [
    "ENV_KEYS",
    "WATCHED",
    "CacheScan",
    "Facts",
    "find_lock",
    "gather_facts",
    "hub_cache_dir",
    "scan_model_cache",
    "with_versions_of",
]

#: Packages whose installed version the doctor reports (and the lock pins).
WATCHED = ("torch", "transformers", "accelerate", "bitsandbytes", "safetensors", "huggingface-hub",
           "tokenizers", "pillow", "torchvision", "provision")
#: Environment variables the doctor reads. Nothing else from the environment (tokens!) is kept.
ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME",
            "HF_HUB_OFFLINE", "HOME", "USERPROFILE")
_SHARD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """What the doctor knows about the running environment; tests build these by hand.

    ``torch`` is None when torch is not installed, else a dict with ``version``
    (``torch.__version__``), ``cuda`` (``torch.version.cuda``), ``available``
    (``torch.cuda.is_available()``), ``arch_list``, ``device_count``, ``error`` (import
    failure) and ``cuda_error`` (why CUDA initialisation failed). ``bitsandbytes`` is
    None when not installed, else ``{"error": str | None}`` from importing it.
    """

    host: HostProfile
    packages: Mapping[str, str]
    torch: Mapping[str, Any] | None = None
    bitsandbytes: Mapping[str, Any] | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    disk_free_bytes: int | None = None
    python: str = "{}.{}.{}".format(*sys.version_info[:3])

    @property
    def python_minor(self) -> str:
        """``3.11`` for ``3.11.9``: what plans and locks record."""
        return ".".join(self.python.split(".")[:2])


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheScan:
    """What is on disk for the model: the snapshot folder and the files the index names."""

    root: Path | None  # models--org--name (or the local directory)
    snapshot: Path | None
    has_config: bool = False
    shards: dict[str, int] = field(default_factory=dict)  # name -> size in bytes, -1 missing
    expected_bytes: int | None = None  # the index's metadata.total_size
    incomplete_blobs: int = 0
    error: str | None = None

    @property
    def missing(self) -> list[str]:
        return sorted(n for n, size in self.shards.items() if size < 0)

    @property
    def empty(self) -> list[str]:
        return sorted(n for n, size in self.shards.items() if size == 0)

    @property
    def present_bytes(self) -> int:
        return sum(s for s in self.shards.values() if s > 0)

    @property
    def complete(self) -> bool:
        return (self.snapshot is not None and self.error is None and self.has_config and bool(self.shards)
                and not self.missing and not self.empty and not self.too_small)

    @property
    def too_small(self) -> bool:
        """Shards together smaller than the tensors the index says they hold: truncated files."""
        return self.expected_bytes is not None and bool(self.shards) and not self.missing and (
            self.present_bytes < self.expected_bytes)


def hub_cache_dir(environ: Mapping[str, str], home: Path | None = None) -> Path:
    """Where huggingface_hub keeps repos: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub.

    Same precedence as ``huggingface_hub.constants`` (including the legacy
    HUGGINGFACE_HUB_CACHE and XDG_CACHE_HOME); computed here so no import is needed.
    """
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if environ.get(key):
            return Path(environ[key]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "hub"
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    base = home if home is not None else Path.home()
    return base / ".cache" / "huggingface" / "hub"


def _installed(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _installed_versions(names: Sequence[str]) -> dict[str, str]:
    return {canonicalize_name(n): v for n in names if (v := _installed(n)) is not None}


def with_versions_of(facts: Facts, names: Iterable[str]) -> Facts:
    """``facts`` with the installed versions of ``names`` too (a lock pins more than ``WATCHED``)."""
    from dataclasses import replace

    extra = [n for n in names if canonicalize_name(n) not in facts.packages]
    return replace(facts, packages={**facts.packages, **_installed_versions(extra)}) if extra else facts


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 500 else text[:497] + "..."


def _import_quietly(name: str) -> tuple[Any, str | None]:
    """Import ``name`` with its start-up chatter sent to stderr, so ``--json`` stdout stays clean."""
    import importlib

    try:
        with contextlib.redirect_stdout(sys.stderr):
            return importlib.import_module(name), None
    except Exception as exc:  # a broken install raises anything: OSError, ImportError, AttributeError
        return None, _error_text(exc)


def _torch_cuda_view(torch: Any, info: dict[str, Any]) -> None:
    """Fill in what torch sees of CUDA; failures land in ``cuda_error``, never raise."""
    try:
        info["available"] = bool(torch.cuda.is_available())
        # get_arch_list() is empty while CUDA is unavailable; the compiled-in flags are not.
        flags = getattr(torch._C, "_cuda_getArchFlags", None)
        arch = torch.cuda.get_arch_list() if info["available"] else (flags() if flags else "")
        info["arch_list"] = arch.split() if isinstance(arch, str) else list(arch)
        if info["available"]:
            info["device_count"] = int(torch.cuda.device_count())
            info["devices"] = [
                {"name": torch.cuda.get_device_name(i),
                 "compute_capability": "{}.{}".format(*torch.cuda.get_device_capability(i))}
                for i in range(info["device_count"])
            ]
        elif info["cuda"]:
            try:
                torch.cuda.init()
            except Exception as exc:
                info["cuda_error"] = _error_text(exc)
    except Exception as exc:
        info["cuda_error"] = _error_text(exc)


def _gather_torch() -> dict[str, Any] | None:
    """Ask the installed torch what it was built for and what it sees; None when not installed."""
    version = _installed("torch")
    if version is None:
        return None
    info: dict[str, Any] = {"version": version, "cuda": None, "available": False, "arch_list": [],
                            "device_count": 0, "error": None, "cuda_error": None}
    torch, info["error"] = _import_quietly("torch")
    if torch is None:
        return info
    info["version"] = str(torch.__version__)
    info["cuda"] = getattr(torch.version, "cuda", None)
    _torch_cuda_view(torch, info)
    return info


def _gather_bitsandbytes() -> dict[str, Any] | None:
    if _installed("bitsandbytes") is None:
        return None
    return {"error": _import_quietly("bitsandbytes")[1]}


def _free_bytes(path: Path) -> int | None:
    import shutil

    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return shutil.disk_usage(candidate).free
        except OSError:
            return None
    return None


def gather_facts(host: HostProfile | None = None, *, environ: Mapping[str, str] | None = None,
                 import_torch: bool = True) -> Facts:
    """Look at this environment: package versions, torch's build and view of CUDA, the HF cache.

    :raises ProvisionError: when the host cannot be detected.
    """
    env = os.environ if environ is None else environ
    if host is None:
        from provision.host import detect_host

        host = detect_host(environ=env)
    kept = {k: env[k] for k in ENV_KEYS if k in env}
    cache = hub_cache_dir(kept)
    return Facts(
        host=host,
        packages=_installed_versions(WATCHED),
        torch=_gather_torch() if import_torch else None,
        bitsandbytes=_gather_bitsandbytes() if import_torch else None,
        environ=kept,
        cache_dir=cache,
        disk_free_bytes=_free_bytes(cache),
    )


def _size(path: Path) -> int:
    """Bytes behind ``path`` (following the cache's symlinks into blobs/); -1 if it is missing."""
    try:
        return path.stat().st_size if path.is_file() else -1
    except OSError:
        return -1


def _pick_snapshot(root: Path) -> Path | None:
    """The revision ``refs/main`` names, else the newest snapshot folder."""
    snapshots = root / "snapshots"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        ref = root / "refs" / "main"
        rev = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
        if re.fullmatch(r"[0-9a-f]{40}", rev) and (snapshots / rev).is_dir():
            return snapshots / rev
    candidates = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    return candidates[0] if candidates else None


def scan_model_cache(model: ModelSpec, cache_dir: Path | None) -> CacheScan:
    """Find the model's snapshot (``models--org--name/snapshots/<rev>``) and size every shard it names."""
    if model.is_local and model.path is not None:
        return _scan_snapshot(Path(model.path), Path(model.path), incomplete=0)
    if cache_dir is None or not model.repo:
        return CacheScan(root=None, snapshot=None)
    root = cache_dir / ("models--" + model.repo.replace("/", "--"))
    if not (root / "snapshots").is_dir():
        return CacheScan(root=root, snapshot=None)
    blobs = root / "blobs"
    incomplete = len(list(blobs.glob("*.incomplete"))) if blobs.is_dir() else 0
    snapshot = _pick_snapshot(root)
    if snapshot is None:
        return CacheScan(root=root, snapshot=None, incomplete_blobs=incomplete)
    return _scan_snapshot(root, snapshot, incomplete=incomplete)


def _read_index(index_path: Path) -> tuple[set[str], int | None]:
    """Shard names and ``metadata.total_size`` from a safetensors index.

    :raises InvalidInput: the index is unreadable or names something that is not a shard file.
    """
    index = Fields(read_json_file(index_path), str(index_path))
    weight_map = index.obj("weight_map")
    assert weight_map is not None
    names = set()
    for key, value in weight_map.data.items():
        if not isinstance(value, str) or not _SHARD_RE.fullmatch(value):
            raise weight_map.fail(key, f"{value!r} is not a shard file name")
        names.add(value)
    if not names:
        raise index.fail("weight_map", "names no shard")
    meta = index.obj("metadata", required=False)
    return names, meta.int("total_size", required=False) if meta is not None else None


def _scan_snapshot(root: Path, snapshot: Path, *, incomplete: int) -> CacheScan:
    has_config = (snapshot / "config.json").is_file()
    index_path = snapshot / "model.safetensors.index.json"
    if not index_path.is_file():
        shards = {"model.safetensors": _size(snapshot / "model.safetensors")}
        return CacheScan(root=root, snapshot=snapshot, has_config=has_config, shards=shards,
                         incomplete_blobs=incomplete)
    try:
        names, total = _read_index(index_path)
    except InvalidInput as exc:
        return CacheScan(root=root, snapshot=snapshot, has_config=has_config, incomplete_blobs=incomplete,
                         error=str(exc))
    return CacheScan(root=root, snapshot=snapshot, has_config=has_config,
                     shards={n: _size(snapshot / n) for n in sorted(names)}, expected_bytes=total,
                     incomplete_blobs=incomplete)


def find_lock(host: HostProfile | None = None, *, model_id: str | None = None, cwd: Path | None = None,
              prefix: Path | None = None) -> Path | None:
    """The lock describing this environment: next to the running venv, else ``build/provision/<host-id>/<model-id>/``.

    A venv built by ``provision build`` lives in ``<out>/venv`` beside ``<out>/provision.lock.json``.
    Among several build folders, this host's folder for ``model_id`` wins, then this host's newest,
    then the newest.
    """
    venv_lock = (prefix if prefix is not None else Path(sys.prefix)).parent / "provision.lock.json"
    if venv_lock.is_file():
        return venv_lock
    base = (cwd if cwd is not None else Path.cwd()) / OUTPUT_BASE
    if not base.is_dir():
        return None
    locks = [p for p in base.glob("*/*/provision.lock.json") if p.is_file()]
    if host is not None:
        mine = [p for p in locks if p.parent.parent.name == host.host_id]
        if model_id is not None and base / host.host_id / model_id / "provision.lock.json" in mine:
            return base / host.host_id / model_id / "provision.lock.json"
        locks = mine or locks
    return max(locks, key=lambda p: p.stat().st_mtime) if locks else None
