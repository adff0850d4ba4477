"""The host profile (``provision.host/v1``): what the planner knows about a machine.

Detection produces it, ``--host FILE`` replaces detection, the planner consumes it.
Everything here is pure: parse and validate a mapping, or turn a profile back into one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import Version

from provision.common.fields import Fields, read_json_file
from provision.errors import InvalidInput
from provision.vocab import HOST_SCHEMA

__all__ = [
    "HOST_SCHEMA",
    "GpuInfo",
    "HostProfile",
    "NvidiaInfo",
    "host_from_dict",
    "load_host",
    "planning_facts",
]

OS_NAMES = ("linux", "windows", "darwin")
ARCH_NAMES = ("x86_64", "aarch64", "arm64")
_CC_RE = re.compile(r"^(\d{1,2})\.(\d{1,2})$")
DRIVER_RE = re.compile(r"^\d{2,4}(\.\d{1,4}){1,3}$")  # what a driver version looks like
_CUDA_RE = re.compile(r"^\d{1,2}\.\d{1,2}$")
#: A glibc version as ``gnu_get_libc_version()`` and ``platform.libc_ver()`` give it: ``2.35``.
GLIBC_RE = re.compile(r"^2\.\d{1,3}$")
# Bounds that catch typos and unit mix-ups without rejecting real machines.
_MAX_MEMORY = 2**50  # 1 PiB
_MAX_GPUS = 64
_KNOWN_KEYS = frozenset({"schema", "os", "arch", "python", "ram_bytes", "disk_free_bytes", "glibc", "nvidia"})
#: What ``provision detect`` adds beside them: how each fact was found (kept, never read).
_DETECTION_KEYS = frozenset({"detected_by", "ram_available_bytes", "gpus", "notes", "probe_failures"})
_NVIDIA_KEYS = frozenset({"driver_version", "cuda_driver_version", "gpus"})
_GPU_KEYS = frozenset({"index", "name", "compute_capability", "memory_total_bytes", "memory_free_bytes"})
#: The profile's keys a plan is made from: everything known but free disk, which nothing is planned from.
_PLANNING_KEYS = _KNOWN_KEYS - {"disk_free_bytes"}


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuInfo:
    """One NVIDIA GPU as the driver reports it."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    memory_total_bytes: int
    memory_free_bytes: int

    @property
    def cc_text(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def sm(self) -> str:
        """The architecture name used by wheel arch lists: ``sm_86``."""
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class NvidiaInfo:
    """The NVIDIA driver and its GPUs. ``cuda_driver_version`` is None when unknown."""

    driver_version: str
    cuda_driver_version: Version | None = None
    gpus: tuple[GpuInfo, ...] = ()


def wheel_platform(os_name: str, arch: str) -> str:
    """The wheel platform family the matrix is keyed by, for a contract OS name and architecture."""
    arm = arch in ("arm64", "aarch64")
    if os_name == "darwin":
        return "macos-arm64" if arm else "macos-x86_64"
    if os_name == "windows":
        return "windows-x86_64"
    return "linux-aarch64" if arm else "linux-x86_64"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostProfile:
    """A machine to plan for. ``nvidia`` is None without an NVIDIA driver.

    ``glibc`` is the C library's version on Linux (what manylinux wheel tags are checked
    against); None when unknown (not checked), off Linux, or on a musl system.
    """

    os: str
    arch: str
    python: Version
    ram_bytes: int
    disk_free_bytes: int | None = None
    glibc: Version | None = None
    nvidia: NvidiaInfo | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def python_minor(self) -> str:
        return f"{self.python.major}.{self.python.minor}"

    @property
    def gpus(self) -> tuple[GpuInfo, ...]:
        return self.nvidia.gpus if self.nvidia else ()

    @property
    def platform(self) -> str:
        """The wheel platform family the matrix is keyed by."""
        return wheel_platform(self.os, self.arch)

    @property
    def host_id(self) -> str:
        """A short, filesystem-safe name for build folders: ``linux-x86_64-py3.11-2xA10G``."""
        parts = [self.os, self.arch, f"py{self.python_minor}"]
        if self.gpus:
            names: dict[str, int] = {}
            for gpu in self.gpus:
                short = re.sub(r"[^A-Za-z0-9]+", "", gpu.name.replace("NVIDIA", "").replace("GeForce", ""))
                names[short or "gpu"] = names.get(short or "gpu", 0) + 1
            parts.extend(f"{n}x{name}" for name, n in sorted(names.items()))
        else:
            parts.append("cpu")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": HOST_SCHEMA,
            "os": self.os,
            "arch": self.arch,
            "python": str(self.python),
            "ram_bytes": self.ram_bytes,
        }
        if self.disk_free_bytes is not None:
            out["disk_free_bytes"] = self.disk_free_bytes
        if self.glibc is not None:
            out["glibc"] = str(self.glibc)
        if self.nvidia is None:
            out["nvidia"] = None
        else:
            nv: dict[str, Any] = {"driver_version": self.nvidia.driver_version}
            if self.nvidia.cuda_driver_version is not None:
                nv["cuda_driver_version"] = str(self.nvidia.cuda_driver_version)
            nv["gpus"] = [
                {
                    "index": g.index,
                    "name": g.name,
                    "compute_capability": g.cc_text,
                    "memory_total_bytes": g.memory_total_bytes,
                    "memory_free_bytes": g.memory_free_bytes,
                }
                for g in self.nvidia.gpus
            ]
            out["nvidia"] = nv
        # Unknown keys survive a round trip (detection records how it found each fact there).
        out.update({k: v for k, v in self.extra.items() if k not in _KNOWN_KEYS})
        return out


def parse_compute_capability(text: str, fields: Fields, key: str) -> tuple[int, int]:
    match = _CC_RE.fullmatch(text)
    if not match:
        raise fields.fail(key, f"{text!r} is not a compute capability like '8.6'")
    major, minor = int(match.group(1)), int(match.group(2))
    if not 1 <= major <= 20:
        raise fields.fail(key, f"{text!r} is not a known compute capability")
    return major, minor


def _gpu_from_fields(g: Fields, position: int) -> GpuInfo:
    g.warn_unknown(_GPU_KEYS)
    index = g.int("index", required=False, default=position, maximum=_MAX_GPUS - 1)
    name = g.str("name")
    if len(name) > 128 or not name.isprintable():
        raise g.fail("name", "must be at most 128 printable characters")
    cc_raw = g.data.get("compute_capability")
    if isinstance(cc_raw, (int, float)) and not isinstance(cc_raw, bool):
        raise g.fail("compute_capability", "expected a string like '8.6', got a number")
    cc = parse_compute_capability(g.str("compute_capability"), g, "compute_capability")
    total = g.int("memory_total_bytes", minimum=1, maximum=_MAX_MEMORY)
    free = g.int("memory_free_bytes", required=False, default=total, maximum=_MAX_MEMORY)
    if free > total:
        raise g.fail("memory_free_bytes", f"{free} is more than memory_total_bytes ({total})")
    return GpuInfo(index=index, name=name, compute_capability=cc, memory_total_bytes=total, memory_free_bytes=free)


def _nvidia_from_fields(nv: Fields) -> NvidiaInfo:
    nv.warn_unknown(_NVIDIA_KEYS)
    driver = nv.str("driver_version")
    if not DRIVER_RE.fullmatch(driver):
        raise nv.fail("driver_version", f"{driver!r} is not a driver version like '535.183.01'")
    cuda = None
    if nv.has("cuda_driver_version"):
        text = nv.str("cuda_driver_version")
        if not _CUDA_RE.fullmatch(text):
            raise nv.fail("cuda_driver_version", f"{text!r} is not a CUDA version like '12.2'")
        cuda = Version(text)
    gpu_fields = nv.objs("gpus", required=False)
    if len(gpu_fields) > _MAX_GPUS:
        raise nv.fail("gpus", f"{len(gpu_fields)} GPUs; at most {_MAX_GPUS} are supported")
    gpus = tuple(_gpu_from_fields(g, i) for i, g in enumerate(gpu_fields))
    seen: set[int] = set()
    for i, gpu in enumerate(gpus):
        if gpu.index in seen:
            raise InvalidInput(nv.source, f"{nv.where('gpus')}[{i}].index", f"index {gpu.index} appears twice")
        seen.add(gpu.index)
    return NvidiaInfo(driver_version=driver, cuda_driver_version=cuda, gpus=gpus)


def _glibc(f: Fields) -> Version | None:
    """The optional ``glibc`` (``"2.35"``); absent or null means unknown."""
    if f.data.get("glibc") is None:
        return None
    text = f.str("glibc")
    if not GLIBC_RE.fullmatch(text):
        raise f.fail("glibc", f"{text!r} is not a glibc version like '2.35'")
    return Version(text)


def host_from_dict(data: object, source: str = "host") -> HostProfile:
    """Validate a host-profile mapping.

    Unknown keys are kept (``extra``) and warned about (``UnknownKeyWarning``), with the nearest known key.

    :raises InvalidInput: on a wrong type, missing key, unknown schema or bad version.
    """
    f = Fields(data, source)
    schema = f.str("schema")
    if schema != HOST_SCHEMA:
        raise f.fail("schema", f"unsupported schema {schema!r}; expected {HOST_SCHEMA!r}")
    f.warn_unknown(_KNOWN_KEYS | _DETECTION_KEYS)
    os_name = f.choice("os", OS_NAMES)
    arch = f.choice("arch", ARCH_NAMES)
    python = f.version("python")
    assert python is not None
    if python.major != 3 or len(python.release) < 2 or python.minor > 40:
        raise f.fail("python", f"{python} is not a CPython 3.x version")
    ram = f.int("ram_bytes", minimum=1, maximum=_MAX_MEMORY)
    disk = f.int("disk_free_bytes", required=False, maximum=_MAX_MEMORY)
    glibc = _glibc(f)
    if "nvidia" not in f.data:
        raise f.fail("nvidia", "required key is missing (use null for a machine without an NVIDIA GPU)")
    nv_fields = f.obj("nvidia", required=False)
    nvidia = _nvidia_from_fields(nv_fields) if nv_fields is not None else None
    extra = {k: v for k, v in f.data.items() if k not in _KNOWN_KEYS}
    return HostProfile(
        os=os_name, arch=arch, python=python, ram_bytes=ram, disk_free_bytes=disk, glibc=glibc, nvidia=nvidia,
        extra=extra,
    )


def load_host(path: Path) -> HostProfile:
    """Read and validate a host profile file.

    :raises InvalidInput: naming the file and field.
    """
    return host_from_dict(read_json_file(path), str(path))


def planning_facts(profile: Mapping[str, Any]) -> dict[str, Any]:
    """The facts of a host profile (its JSON form) that a plan is made from, and nothing else.

    Left out: free disk (nothing is planned from it) and every key detection adds to say how it
    found each fact (``detected_by``, the free-RAM reading ``ram_available_bytes``, probe failures):
    readings that change from one run to the next while the plan stays the same. What a render
    records of the host (the lock's ``inputs.host``) is this, so an unchanged machine renders the
    same bytes. Total RAM and each GPU's free memory stay: the planner budgets with them.
    """
    out = {k: v for k, v in profile.items() if k in _PLANNING_KEYS}
    nvidia = profile.get("nvidia")
    if isinstance(nvidia, Mapping):
        facts = {k: v for k, v in nvidia.items() if k in _NVIDIA_KEYS}
        gpus = nvidia.get("gpus")
        if isinstance(gpus, list):
            facts["gpus"] = [{k: v for k, v in g.items() if k in _GPU_KEYS} if isinstance(g, Mapping) else g
                             for g in gpus]
        out["nvidia"] = facts
    return out
