"""``provision doctor``: diagnose the current Python environment against the machine and the model.

The usual failures show up in environments people already have: a CPU-only torch on a
GPU machine, a torch build without kernels for the GPU, a driver too old for torch's
CUDA, bitsandbytes without a library for this CUDA, transformers too old for the
model's config, a half-finished model download. Each check here is a pure function of
gathered ``Facts`` (plus the matrix, model and expected plan) returning a ``Finding``
whose ``fix`` is a command to run. Gathering is the only I/O, and it never needs torch:
versions come from ``importlib.metadata`` and torch/bitsandbytes are imported only
to ask them what they can do.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from provision._fields import Fields, read_json_file
from provision.errors import InvalidInput, NoViablePlan, ProvisionError

if TYPE_CHECKING:
    from provision.catalog import ModelSpec
    from provision.host import GpuInfo, HostProfile
    from provision.matrix import BnbRelease, Matrix

__all__ = [
    "DOCTOR_SCHEMA",
    "STATUSES",
    "CacheScan",
    "Expected",
    "Facts",
    "Finding",
    "check_accelerate",
    "check_bf16",
    "check_bitsandbytes",
    "check_cuda_available",
    "check_disk",
    "check_lock_drift",
    "check_model_cache",
    "check_torch",
    "check_torch_arch",
    "check_torch_cuda_build",
    "check_transformers",
    "doctor_report",
    "evaluate",
    "find_lock",
    "format_findings",
    "gather_facts",
    "hub_cache_dir",
    "print_findings",
    "run_doctor",
    "scan_model_cache",
]

DOCTOR_SCHEMA = "provision.doctor/v1"
STATUSES = ("ok", "warn", "fail", "skip")
PYPI_SIMPLE = "https://pypi.org/simple"
#: Packages whose installed version the doctor reports (and the lock pins).
WATCHED = ("torch", "transformers", "accelerate", "bitsandbytes", "safetensors", "huggingface-hub",
           "tokenizers", "pillow", "torchvision", "provision")
#: Environment variables the doctor reads. Nothing else from the environment (tokens!) is kept.
ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME",
            "HF_HUB_OFFLINE", "HOME", "USERPROFILE")
#: transformers 5.x declares accelerate>=1.1.0 (Requires-Dist of the 5.24.0 wheel; see matrices/companions.toml).
ACCELERATE_FLOOR_FOR_TRANSFORMERS_5 = Version("1.1.0")
_SHARD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
GB = 1e9


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One check's verdict. ``fix`` is a command (or a concrete action) when there is something to do."""

    check: str
    status: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "message": self.message,
                "evidence": dict(self.evidence), "fix": self.fix}


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
    def from_plan_dict(cls, data: Any, source: str, where: str = "") -> Expected:
        """Validate a ``provision.plan/v1`` mapping: its values end up in fix commands.

        :raises InvalidInput: naming ``source`` and the dotted field.
        """
        from provision.plan import PRECISIONS
        from provision.quoting import check_index_url, check_model_id, check_package_name, check_version

        f = Fields(data, source, where)
        if f.str("schema") != "provision.plan/v1":
            raise f.fail("schema", f"unsupported schema {f.data.get('schema')!r}; expected 'provision.plan/v1'")
        model = f.obj("model")
        torch = f.obj("torch")
        assert model is not None and torch is not None
        model_id = check_model_id(model.str("id"), source=source, field=model.where("id"))
        python = f.str("python")
        if not re.fullmatch(r"3\.\d{1,2}", python):
            raise f.fail("python", f"{python!r} is not a Python version like '3.11'")
        variant = torch.str("variant")
        if not re.fullmatch(r"cpu|cu\d{3}|rocm\d+(\.\d+)*", variant):
            raise torch.fail("variant", f"{variant!r} is not a PyTorch index name like 'cu128'")
        packages_f = f.obj("packages")
        assert packages_f is not None
        packages: dict[str, str] = {}
        for name, value in packages_f.data.items():
            where_name = packages_f.where(name)
            canon = check_package_name(name, source=source, field=where_name)
            packages[canon] = check_version(value, source=source, field=where_name)
        gpus = []
        for i, g in enumerate(f.list("gpus", required=False)):
            if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < 64:
                raise InvalidInput(source, f"{f.where('gpus')}[{i}]", "expected a GPU index 0-63")
            gpus.append(g)
        return cls(
            model_id=model_id,
            python=python,
            torch_version=check_version(torch.str("version"), source=source, field=torch.where("version")),
            variant=variant,
            index_url=check_index_url(torch.str("index_url"), source=source, field=torch.where("index_url")),
            device=f.choice("device", ("cuda", "cpu", "mps")),
            precision=f.choice("precision", PRECISIONS),
            gpus=tuple(gpus),
            packages=packages,
            source=source,
        )

    def torch_fix(self) -> str:
        """The pip command that installs the planned torch build."""
        pin = self.packages.get("torch") or self.torch_version
        cmd = ["pip", "install"]
        if self.index_url.rstrip("/") != PYPI_SIMPLE:
            cmd += ["--index-url", self.index_url]
        return shlex.join([*cmd, f"torch=={pin}"])

    def pin_fix(self, *names: str) -> str | None:
        pins = [f"{n}=={self.packages[n]}" for n in names if n in self.packages]
        return shlex.join(["pip", "install", *pins]) if pins else None


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


# ---------------------------------------------------------------------------
# Gathering (the only I/O)


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


def _installed_versions(names: Sequence[str]) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[canonicalize_name(name)] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= 500 else text[:497] + "..."


def _gather_torch() -> dict[str, Any] | None:
    """Ask the installed torch what it was built for and what it sees; None when not installed."""
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None
    info: dict[str, Any] = {"version": version, "cuda": None, "available": False, "arch_list": [],
                            "device_count": 0, "error": None, "cuda_error": None}
    try:
        with contextlib.redirect_stdout(sys.stderr):  # keep --json stdout clean
            import torch
    except Exception as exc:  # a broken install raises anything: OSError, ImportError, AttributeError
        info["error"] = _error_text(exc)
        return info
    info["version"] = str(torch.__version__)
    info["cuda"] = getattr(torch.version, "cuda", None)
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
    return info


def _gather_bitsandbytes() -> dict[str, Any] | None:
    from importlib import metadata

    try:
        metadata.version("bitsandbytes")
    except metadata.PackageNotFoundError:
        return None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import bitsandbytes  # noqa: F401
    except Exception as exc:
        return {"error": _error_text(exc)}
    return {"error": None}


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
        from provision.detect import detect_host

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


def scan_model_cache(model: ModelSpec, cache_dir: Path | None) -> CacheScan:
    """Find the model's snapshot (``models--org--name/snapshots/<rev>``) and size every shard it names."""
    if getattr(model, "is_local", False) and getattr(model, "path", None) is not None:
        return _scan_snapshot(Path(model.path), Path(model.path), incomplete=0)
    if cache_dir is None or not model.repo:
        return CacheScan(root=None, snapshot=None)
    root = cache_dir / ("models--" + model.repo.replace("/", "--"))
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return CacheScan(root=root, snapshot=None)
    blobs = root / "blobs"
    incomplete = len(list(blobs.glob("*.incomplete"))) if blobs.is_dir() else 0
    snapshot = None
    ref = root / "refs" / "main"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        rev = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
        if re.fullmatch(r"[0-9a-f]{40}", rev) and (snapshots / rev).is_dir():
            snapshot = snapshots / rev
    if snapshot is None:
        candidates = sorted((p for p in snapshots.iterdir() if p.is_dir()),
                            key=lambda p: p.stat().st_mtime, reverse=True)
        snapshot = candidates[0] if candidates else None
    if snapshot is None:
        return CacheScan(root=root, snapshot=None, incomplete_blobs=incomplete)
    return _scan_snapshot(root, snapshot, incomplete=incomplete)


def _scan_snapshot(root: Path, snapshot: Path, *, incomplete: int) -> CacheScan:
    has_config = (snapshot / "config.json").is_file()
    index_path = snapshot / "model.safetensors.index.json"
    if not index_path.is_file():
        single = snapshot / "model.safetensors"
        shards = {"model.safetensors": _size(single)}
        return CacheScan(root=root, snapshot=snapshot, has_config=has_config, shards=shards,
                         incomplete_blobs=incomplete)
    try:
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
        total = meta.int("total_size", required=False) if meta is not None else None
    except InvalidInput as exc:
        return CacheScan(root=root, snapshot=snapshot, has_config=has_config, incomplete_blobs=incomplete,
                         error=str(exc))
    return CacheScan(root=root, snapshot=snapshot, has_config=has_config,
                     shards={n: _size(snapshot / n) for n in sorted(names)}, expected_bytes=total,
                     incomplete_blobs=incomplete)


# ---------------------------------------------------------------------------
# Pure checks


def _version(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _torch_usable(facts: Facts) -> bool:
    return facts.torch is not None and not facts.torch.get("error")


def _is_cpu_build(torch: Mapping[str, Any]) -> bool:
    return not torch.get("cuda") or str(torch.get("version", "")).endswith("+cpu")


def _torch_cuda(torch: Mapping[str, Any]) -> Version | None:
    v = _version(str(torch.get("cuda"))) if torch.get("cuda") else None
    return Version(f"{v.major}.{v.minor}") if v is not None else None


def _gpu_names(gpus: Sequence[GpuInfo]) -> str:
    return ", ".join(f"GPU {g.index} {g.name} (cc {g.cc_text})" for g in gpus)


def _placed_gpus(facts: Facts, expected: Expected | None) -> tuple[GpuInfo, ...]:
    gpus = facts.host.gpus
    if expected is not None and expected.gpus:
        placed = tuple(g for g in gpus if g.index in expected.gpus)
        return placed or gpus
    return gpus


def _fallback_torch_fix(facts: Facts) -> str:
    return "provision plan  # shows the torch build for this machine, then install it with the printed index"


def check_torch(facts: Facts, expected: Expected | None) -> Finding:
    """torch installed and importable."""
    fix = expected.torch_fix() if expected else _fallback_torch_fix(facts)
    if facts.torch is None:
        return Finding(check="torch", status="fail", message="torch is not installed", fix=fix)
    if facts.torch.get("error"):
        return Finding(check="torch", status="fail",
                       message=f"torch {facts.torch.get('version')} is installed but does not import",
                       evidence={"error": facts.torch["error"]}, fix=fix)
    return Finding(check="torch", status="ok", message=f"torch {facts.torch.get('version')} imports",
                   evidence={"version": facts.torch.get("version"), "cuda": facts.torch.get("cuda")})


def check_torch_cuda_build(facts: Facts, matrix: Matrix, expected: Expected | None) -> Finding:
    """torch's CUDA build against the host's GPU and driver (driver floors from the matrix)."""
    from provision.plan import driver_runs

    name = "torch.cuda_build"
    if not _torch_usable(facts):
        return Finding(check=name, status="skip", message="torch is not usable (see the torch check)")
    assert facts.torch is not None
    version = str(facts.torch.get("version"))
    evidence: dict[str, Any] = {"torch": version, "torch_cuda": facts.torch.get("cuda")}
    host = facts.host
    if host.nvidia is None or not host.gpus:
        what = "a CPU build" if _is_cpu_build(facts.torch) else f"built for CUDA {facts.torch.get('cuda')}"
        return Finding(check=name, status="ok", evidence=evidence,
                       message=f"torch {version} is {what}; this host has no usable NVIDIA GPU, so it runs on CPU")
    evidence.update(driver=host.nvidia.driver_version, gpus=_gpu_names(host.gpus))
    fix = expected.torch_fix() if expected else _fallback_torch_fix(facts)
    if _is_cpu_build(facts.torch):
        want = f" (planned: torch {expected.packages.get('torch', expected.torch_version)})" if expected else ""
        return Finding(check=name, status="fail", evidence=evidence, fix=fix,
                       message=f"torch {version} is a CPU-only build, but this host has {host.gpus[0].name}: "
                               f"CUDA is unavailable to it{want}")
    cuda = _torch_cuda(facts.torch)
    if cuda is None:
        return Finding(check=name, status="warn", evidence=evidence, fix=fix,
                       message=f"torch reports an unparseable CUDA version {facts.torch.get('cuda')!r}")
    runs, native, why = driver_runs(host, matrix, cuda)
    evidence["driver_check"] = why
    if not runs:
        return Finding(check=name, status="fail", evidence=evidence,
                       fix=fix + "  # or update the NVIDIA driver",
                       message=f"torch {version} is built for CUDA {cuda}, which this driver cannot run: {why}")
    if not native:
        return Finding(check=name, status="warn", evidence=evidence,
                       message=f"torch {version} (CUDA {cuda}) runs through minor-version compatibility: {why}; "
                               "PTX cannot be JIT-compiled",
                       fix="update the NVIDIA driver to one that supports CUDA "
                           f"{cuda} natively (see matrices/cuda.toml)")
    return Finding(check=name, status="ok", evidence=evidence, message=f"torch {version} (CUDA {cuda}): {why}")


def _arch_variant(torch: Mapping[str, Any], platform: str) -> Any:
    from provision.matrix import TorchVariant, parse_arch

    archs, ptx = [], []
    for entry in torch.get("arch_list") or []:
        text = str(entry)
        if text.startswith("compute_"):
            text = "sm_" + text.removeprefix("compute_")
            bucket = ptx
        else:
            bucket = archs
        try:
            parse_arch(text)
        except ValueError:
            continue
        bucket.append(text)
    cuda = _torch_cuda(torch)
    return TorchVariant(name=f"cu{cuda.major}{cuda.minor}" if cuda else "cuda", cuda=cuda, platforms=(platform,),
                        archs=tuple(archs), ptx=tuple(ptx))


def check_torch_arch(facts: Facts, matrix: Matrix, expected: Expected | None) -> Finding:
    """Every GPU has kernels in ``torch.cuda.get_arch_list()`` (same major, minor <= GPU's; PTX forward)."""
    from provision.plan import driver_runs, has_kernels

    name = "torch.arch"
    host = facts.host
    if not _torch_usable(facts) or not host.gpus:
        return Finding(check=name, status="skip", message="no usable torch or no NVIDIA GPU")
    assert facts.torch is not None
    if _is_cpu_build(facts.torch):
        return Finding(check=name, status="skip", message="torch is a CPU build (see torch.cuda_build)")
    arch_list = list(facts.torch.get("arch_list") or [])
    if not arch_list:
        return Finding(check=name, status="skip", message="torch did not report the architectures it was built for",
                       evidence={"cuda_error": facts.torch.get("cuda_error")})
    variant = _arch_variant(facts.torch, host.platform)
    native = True
    if variant.cuda is not None:
        native = driver_runs(host, matrix, variant.cuda)[1]
    notes, missing = [], []
    for gpu in host.gpus:
        ok, why = has_kernels(gpu, variant, host.platform, can_jit=native)
        (notes if ok else missing).append(why)
    evidence = {"arch_list": arch_list, "gpus": _gpu_names(host.gpus)}
    if missing:
        fix = expected.torch_fix() if expected else _fallback_torch_fix(facts)
        return Finding(check=name, status="fail", evidence=evidence, fix=fix,
                       message=f"torch {facts.torch.get('version')} has no kernels for this GPU: {'; '.join(missing)}")
    return Finding(check=name, status="ok", evidence=evidence, message="; ".join(notes))


def _hides_all(value: str) -> bool:
    """True when CUDA_VISIBLE_DEVICES certainly hides every device: empty, or starting with an invalid entry."""
    first = value.split(",")[0].strip()
    if not first:
        return True
    if first.startswith(("GPU-", "MIG-")):
        return False
    m = re.match(r"^[+-]?\d+", first)
    return m is None or int(m.group(0)) < 0


def check_cuda_available(facts: Facts, matrix: Matrix, expected: Expected | None) -> Finding:
    """``torch.cuda.is_available()``, and when False, the reason."""
    from provision.plan import driver_runs

    name = "torch.cuda_available"
    if not _torch_usable(facts):
        return Finding(check=name, status="skip", message="torch is not usable (see the torch check)")
    assert facts.torch is not None
    host = facts.host
    cvd = facts.environ.get("CUDA_VISIBLE_DEVICES")
    evidence: dict[str, Any] = {"available": bool(facts.torch.get("available")),
                                "device_count": facts.torch.get("device_count", 0)}
    if cvd is not None:
        evidence["CUDA_VISIBLE_DEVICES"] = cvd
    if facts.torch.get("cuda_error"):
        evidence["cuda_error"] = facts.torch["cuda_error"]
    if facts.torch.get("available"):
        return Finding(check=name, status="ok", evidence=evidence,
                       message=f"CUDA is available: {facts.torch.get('device_count', 0)} device(s)")
    if host.nvidia is None:
        if cvd is not None and _hides_all(cvd):
            return Finding(check=name, status="fail", evidence=evidence, fix="unset CUDA_VISIBLE_DEVICES",
                           message=f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU")
        want_cuda = expected is not None and expected.device == "cuda"
        return Finding(check=name, status="fail" if want_cuda else "skip", evidence=evidence,
                       message="no NVIDIA driver on this host: CUDA is not available, the model runs on CPU",
                       fix=("install the NVIDIA driver (nvidia-smi must work), or plan for CPU: provision plan "
                            "--device cpu") if want_cuda else None)
    if cvd is not None and (not host.gpus or _hides_all(cvd)):
        return Finding(check=name, status="fail", evidence=evidence, fix="unset CUDA_VISIBLE_DEVICES",
                       message=f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU from CUDA")
    if not host.gpus:
        return Finding(check=name, status="fail", evidence=evidence, fix="nvidia-smi  # check the driver sees a GPU",
                       message=f"NVIDIA driver {host.nvidia.driver_version} is loaded but reports no usable GPU")
    if _is_cpu_build(facts.torch):
        return Finding(check=name, status="fail", evidence=evidence,
                       fix=expected.torch_fix() if expected else _fallback_torch_fix(facts),
                       message=f"torch {facts.torch.get('version')} is a CPU-only build "
                               f"(torch.version.cuda is {facts.torch.get('cuda')!r})")
    cuda = _torch_cuda(facts.torch)
    if cuda is not None:
        runs, _native, why = driver_runs(host, matrix, cuda)
        if not runs:
            return Finding(check=name, status="fail", evidence=evidence,
                           fix=(expected.torch_fix() if expected else _fallback_torch_fix(facts))
                           + "  # or update the NVIDIA driver",
                           message=f"the driver is too old for torch's CUDA {cuda}: {why}")
    return Finding(check=name, status="fail", evidence=evidence,
                   fix="nvidia-smi  # then check /dev/nvidia* permissions; in a container run with --gpus all",
                   message="torch is a CUDA build and the driver looks right, but CUDA failed to initialise"
                           + (f": {facts.torch['cuda_error']}" if facts.torch.get("cuda_error") else ""))


def check_bf16(facts: Facts, expected: Expected | None) -> Finding:
    """bf16 needs compute capability >= 8.0 on every GPU the model uses."""
    from provision.plan import supports_bf16

    gpus = _placed_gpus(facts, expected)
    if not gpus:
        return Finding(check="bf16", status="skip", message="no NVIDIA GPU: bf16 runs on CPU")
    low = [g for g in gpus if not supports_bf16(g)]
    evidence = {"gpus": _gpu_names(gpus)}
    if not low:
        return Finding(check="bf16", status="ok", evidence=evidence, message=f"bf16 supported on {_gpu_names(gpus)}")
    message = f"no bf16 on {_gpu_names(low)} (needs compute capability >= 8.0)"
    if expected is not None and expected.precision == "bf16":
        return Finding(check="bf16", status="fail", evidence=evidence,
                       message=message + f"; {expected.source} asks for bf16",
                       fix="provision render --force --out DIR  # plan again; the planner picks fp16 on this GPU")
    return Finding(check="bf16", status="warn", evidence=evidence,
                   message=message + "; fp16 is used instead (it can overflow where the bf16-trained model does not)")


def _bnb_release(matrix: Matrix, version: Version) -> BnbRelease | None:
    exact = next((r for r in matrix.bitsandbytes if r.version == version), None)
    if exact is not None:
        return exact
    # The matrix keeps the newest patch of each minor: match on major.minor.
    return next((r for r in matrix.bitsandbytes if r.version.release[:2] == version.release[:2]), None)


def check_bitsandbytes(facts: Facts, matrix: Matrix, expected: Expected | None) -> Finding:
    """bitsandbytes imports, has a library for torch's CUDA and supports the GPU for int8 / 4-bit."""
    name = "bitsandbytes"
    needed = expected is not None and expected.precision in ("int8", "nf4")
    version_text = facts.packages.get("bitsandbytes")
    fix = (expected.pin_fix("bitsandbytes") if expected else None) or "pip install bitsandbytes"
    bad = "fail" if needed else "warn"
    if version_text is None:
        if needed:
            assert expected is not None
            return Finding(check=name, status="fail", fix=fix,
                           message=f"bitsandbytes is not installed; {expected.precision} needs it")
        return Finding(check=name, status="skip", message="not installed (needed only for int8 / nf4)")
    evidence: dict[str, Any] = {"version": version_text}
    if facts.bitsandbytes is not None and facts.bitsandbytes.get("error"):
        evidence["error"] = facts.bitsandbytes["error"]
        return Finding(check=name, status=bad, evidence=evidence, fix=fix,
                       message=f"bitsandbytes {version_text} does not import")
    version = _version(version_text)
    rel = _bnb_release(matrix, version) if version else None
    if rel is None:
        return Finding(check=name, status="warn" if needed else "skip", evidence=evidence, fix=fix if needed else None,
                       message=f"bitsandbytes {version_text} is not in matrices/bitsandbytes.toml; cannot check it")
    gpus = _placed_gpus(facts, expected)
    if not _torch_usable(facts) or not gpus:
        return Finding(check=name, status=bad, evidence=evidence, fix=None if not needed else fix,
                       message=f"bitsandbytes {version_text} is installed, but int8 / 4-bit need torch with an "
                               "NVIDIA GPU here")
    assert facts.torch is not None
    cuda = _torch_cuda(facts.torch)
    problems: list[str] = []
    torch_version = _version(str(facts.torch.get("version")))
    if torch_version is not None and Version(torch_version.base_version) not in rel.torch:
        problems.append(f"needs torch {rel.torch}, installed {facts.torch.get('version')}")
    if cuda is None:
        problems.append("torch is a CPU build; bitsandbytes int8 / 4-bit need a CUDA torch")
    elif cuda not in rel.cuda_libs:
        problems.append(f"ships no library for torch's CUDA {cuda} (has {', '.join(map(str, rel.cuda_libs))})")
    int8 = all(g.compute_capability >= rel.min_cc_int8 for g in gpus)
    four = all(g.compute_capability >= rel.min_cc_4bit for g in gpus)
    evidence.update(int8=int8, four_bit=four, gpus=_gpu_names(gpus), min_cc_int8="{}.{}".format(*rel.min_cc_int8),
                    min_cc_4bit="{}.{}".format(*rel.min_cc_4bit), torch_cuda=str(cuda) if cuda else None)
    if expected is not None and expected.precision == "int8" and not int8:
        problems.append(f"int8 needs compute capability >= {evidence['min_cc_int8']}")
    if expected is not None and expected.precision == "nf4" and not four:
        problems.append(f"4-bit needs compute capability >= {evidence['min_cc_4bit']}")
    support = f"int8 {'yes' if int8 else 'no'}, 4-bit {'yes' if four else 'no'} on {_gpu_names(gpus)}"
    if problems:
        return Finding(check=name, status=bad, evidence=evidence, fix=fix,
                       message=f"bitsandbytes {version_text}: {'; '.join(problems)} ({support})")
    return Finding(check=name, status="ok", evidence=evidence, message=f"bitsandbytes {version_text}: {support}")


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
    version = _version(text)
    if version is None or version < model.min_transformers:
        return Finding(check=name, status="fail", evidence=evidence, fix=pin_fix,
                       message=f"transformers {text} is too old for {model.name}: it needs >= {model.min_transformers}"
                               + (" (transformers 4.x cannot read its config)" if model.min_transformers.major >= 5
                                  else ""))
    row = next((c for c in matrix.companion_versions("transformers") if c.version == version), None)
    torch_text = facts.torch.get("version") if facts.torch else None
    torch_v = _version(str(torch_text)) if torch_text else None
    if row is not None and torch_v is not None and Version(torch_v.base_version) not in row.requires_torch:
        evidence["requires_torch"] = str(row.requires_torch)
        return Finding(check=name, status="fail", evidence=evidence,
                       fix=expected.torch_fix() if expected else _fallback_torch_fix(facts),
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
    version = _version(text)
    tf = _version(facts.packages.get("transformers"))
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


def check_model_cache(scan: CacheScan, model: ModelSpec) -> Finding:
    """The model's snapshot is complete: config.json and every shard the index names, none empty or truncated."""
    name = "model.cache"
    evidence: dict[str, Any] = {"snapshot": str(scan.snapshot) if scan.snapshot else None,
                                "root": str(scan.root) if scan.root else None}
    fix = _download_fix(model)
    size = _expected_download(model, scan) / GB
    if scan.snapshot is None:
        return Finding(check=name, status="warn", evidence=evidence, fix=fix,
                       message=f"{model.name} is not in the Hugging Face cache; the first load downloads "
                               f"about {size:.1f} GB")
    if scan.error:
        evidence["error"] = scan.error
        return Finding(check=name, status="fail", evidence=evidence, fix=fix,
                       message=f"the snapshot's model.safetensors.index.json is unusable: {scan.error}")
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


def check_lock_drift(facts: Facts, expected: Expected | None, lock_path: Path | None) -> Finding:
    """Every package the lock pins is installed at exactly that version (local label included)."""
    name = "lock.drift"
    if expected is None or lock_path is None:
        return Finding(check=name, status="skip",
                       message="no provision.lock.json found (pass --lock FILE to compare this environment with one)")
    drift: dict[str, dict[str, str | None]] = {}
    for pkg, want in sorted(expected.packages.items()):
        have = facts.packages.get(pkg)
        if have is None or (have != want and not (_version(have) is not None and _version(have) == _version(want))):
            drift[pkg] = {"locked": want, "installed": have}
    running = ".".join(facts.python.split(".")[:2])
    evidence: dict[str, Any] = {"lock": str(lock_path), "drift": drift}
    notes = []
    if running != expected.python:
        notes.append(f"the lock is for Python {expected.python}, this is Python {facts.python}")
        evidence["python"] = {"locked": expected.python, "running": facts.python}
    if not drift and not notes:
        return Finding(check=name, status="ok", evidence=evidence,
                       message=f"all {len(expected.packages)} pinned packages match {lock_path}")
    fixes = []
    if "torch" in drift:
        fixes.append(expected.torch_fix())
    others = [p for p in drift if p != "torch"]
    if others:
        fixes.append(shlex.join(["pip", "install", *(f"{p}=={expected.packages[p]}" for p in others)]))
    if notes and not fixes:
        fixes.append(f"provision build {shlex.quote(str(lock_path.parent))}  # builds a venv with the locked Python")
    parts = [f"{p} {v['installed'] or 'missing'} (locked {v['locked']})" for p, v in drift.items()]
    return Finding(check=name, status="fail", evidence=evidence, fix=" && ".join(fixes),
                   message=f"this environment differs from {lock_path}: " + "; ".join(parts + notes))


def evaluate(facts: Facts, matrix: Matrix, model: ModelSpec, expected: Expected | None, scan: CacheScan, *,
             lock_path: Path | None = None, plan_note: Finding | None = None) -> list[Finding]:
    """Every check, in the order a person fixes things."""
    findings = [
        check_torch(facts, expected),
        check_torch_cuda_build(facts, matrix, expected),
        check_torch_arch(facts, matrix, expected),
        check_cuda_available(facts, matrix, expected),
        check_bf16(facts, expected),
        check_bitsandbytes(facts, matrix, expected),
        check_transformers(facts, matrix, model, expected),
        check_accelerate(facts, expected),
        check_model_cache(scan, model),
        check_disk(facts, scan, model),
        check_lock_drift(facts, expected, lock_path),
    ]
    if plan_note is not None:
        findings.insert(0, plan_note)
    return findings


# ---------------------------------------------------------------------------
# Wiring


def find_lock(host: HostProfile | None = None, *, cwd: Path | None = None, prefix: Path | None = None) -> Path | None:
    """The lock describing this environment: next to the running venv, else ``build/provision/*/``.

    A venv built by ``provision build`` lives in ``<out>/venv`` beside ``<out>/provision.lock.json``.
    Among several build folders, the one named for this host wins, else the newest.
    """
    venv_lock = (prefix if prefix is not None else Path(sys.prefix)).parent / "provision.lock.json"
    if venv_lock.is_file():
        return venv_lock
    base = (cwd if cwd is not None else Path.cwd()) / "build" / "provision"
    if not base.is_dir():
        return None
    locks = [p for p in base.glob("*/provision.lock.json") if p.is_file()]
    if host is not None:
        mine = base / host.host_id / "provision.lock.json"
        if mine in locks:
            return mine
    return max(locks, key=lambda p: p.stat().st_mtime) if locks else None


def _read_expected(lock_path: Path) -> Expected:
    from provision.lock import read_lock

    if not lock_path.is_file():
        # read_json_file names the reason (missing, a directory, unreadable)
        read_json_file(lock_path)
        raise InvalidInput(str(lock_path), "(file)", "no such file")
    lock = read_lock(lock_path)
    assert lock is not None
    return Expected.from_plan_dict(lock.get("plan"), str(lock_path), "plan")


def run_doctor(*, model_id: str | None = None, lock_path: Path | None = None, facts: Facts | None = None,
               matrix: Matrix | None = None, search_lock: bool = True) -> list[Finding]:
    """Gather (unless ``facts`` is given), work out what should be installed, and run every check.

    The expected environment is the lock's plan when there is a lock (``lock_path``, or found
    by ``find_lock``), else the planner's choice for this host.

    :raises InvalidInput: a bad ``--lock`` file or ``--model``.
    """
    from provision.catalog import load_catalog, resolve_model
    from provision.matrix import load_matrix

    expected = _read_expected(lock_path) if lock_path is not None else None
    if matrix is None:
        matrix = load_matrix()
    catalog = load_catalog((matrix.root / "models.toml") if matrix.root else None)
    if facts is None:
        facts = gather_facts()
    if lock_path is None and search_lock:
        found = find_lock(facts.host)
        if found is not None:
            try:
                expected, lock_path = _read_expected(found), found
            except InvalidInput:
                expected, lock_path = None, None  # a stray unreadable lock nobody asked for is not fatal
    model = resolve_model(model_id or (expected.model_id if expected else catalog.default.id), catalog)
    plan_note = None
    if expected is None:
        expected, plan_note = _plan_here(facts, matrix, model)
    elif expected.model_id != model.id:
        plan_note = Finding(check="lock.model", status="warn",
                            message=f"{lock_path} is for model {expected.model_id}, not {model.id}",
                            evidence={"lock": str(lock_path)})
    scan = scan_model_cache(model, facts.cache_dir)
    return evaluate(facts, matrix, model, expected, scan, lock_path=lock_path, plan_note=plan_note)


def _plan_here(facts: Facts, matrix: Matrix, model: ModelSpec) -> tuple[Expected | None, Finding | None]:
    from provision.plan import Preferences, plan

    python = ".".join(facts.python.split(".")[:2])
    try:
        planned = plan(facts.host, matrix, model, Preferences(python=python))
    except NoViablePlan as exc:
        return None, Finding(check="plan", status="warn", message=f"no viable plan for this host: {exc.message}",
                             evidence={"remedies": list(exc.remedies)})
    except ProvisionError as exc:
        return None, Finding(check="plan", status="warn", message=f"could not plan for this host: {exc}")
    return Expected.from_plan_dict(planned.to_dict(), "planned for this host"), None


def doctor_report(findings: Sequence[Finding]) -> dict[str, Any]:
    """The ``--json`` document: ``ok`` is true when no finding failed."""
    counts = {s: sum(1 for f in findings if f.status == s) for s in STATUSES}
    return {"schema": DOCTOR_SCHEMA, "ok": counts["fail"] == 0, "counts": counts,
            "findings": [f.to_dict() for f in findings]}


_MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def format_findings(findings: Sequence[Finding]) -> str:
    """Plain text, one block per finding: for logs and environments without rich."""
    lines = []
    for f in findings:
        lines.append(f"[{_MARK[f.status]:>4}] {f.check}: {f.message}")
        if f.fix and f.status in ("fail", "warn"):
            lines.append(f"       fix: {f.fix}")
    report = doctor_report(findings)
    c = report["counts"]
    lines.append(f"{'healthy' if report['ok'] else 'problems found'}: {c['fail']} failed, {c['warn']} warnings, "
                 f"{c['ok']} ok, {c['skip']} skipped")
    return "\n".join(lines)


def print_findings(findings: Sequence[Finding], console: Any = None, *,
                   write: Callable[[str], Any] | None = None) -> None:
    """A rich table on ``console``; without rich, the plain text through ``write`` (default: stdout)."""
    try:
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        (write or sys.stdout.write)(format_findings(findings) + "\n")
        return
    if console is None:
        from rich.console import Console

        console = Console(highlight=False)
    table = Table("status", "check", "finding", "fix", show_lines=True)
    for f in findings:
        table.add_row(f"[{_STYLE[f.status]}]{_MARK[f.status]}[/]", escape(f.check), escape(f.message),
                      escape(f.fix) if f.fix and f.status in ("fail", "warn") else "")
    console.print(table)
    c = doctor_report(findings)["counts"]
    verdict = "[green]healthy[/]" if c["fail"] == 0 else "[bold red]problems found[/]"
    console.print(f"{verdict}: {c['fail']} failed, {c['warn']} warnings, {c['ok']} ok, {c['skip']} skipped")
