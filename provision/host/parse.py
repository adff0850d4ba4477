"""The pure half of host detection: what the machine reported -> the profile's facts.

Parsers turn probe output (nvidia-smi, /proc, NVML integers) into values, and
:func:`build_nvidia` turns one driver reading into the profile's NVIDIA section, applying
``CUDA_VISIBLE_DEVICES``. Kept apart from :mod:`provision.host.detect` (which asks the machine)
so all of it can be tested on recorded outputs with no driver, subprocess or file system
in sight. The parsers are tolerant: a line or value they do not understand becomes None
or is skipped, because a half-broken driver should still yield what it can. The
exceptions are the facts a plan cannot do without (OS, architecture, the Python
override), which raise instead of guessing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from provision.errors import InvalidInput, ProvisionError
from provision.host.profile import DRIVER_RE, GLIBC_RE, GpuInfo, NvidiaInfo

if TYPE_CHECKING:
    from provision.data import GpuTable

__all__ = [
    "SMI_FIELDS",
    "DriverReading",
    "RawGpu",
    "apply_visible_devices",
    "build_nvidia",
    "clean_driver_version",
    "clean_gpu_name",
    "cuda_version_from_int",
    "leading_int",
    "normalize_arch",
    "normalize_os",
    "parse_libc",
    "parse_meminfo",
    "parse_proc_gpu_information",
    "parse_proc_version",
    "parse_python_version",
    "parse_smi_header",
    "parse_smi_query",
]

#: The ``nvidia-smi --query-gpu`` fields, in the column order :func:`parse_smi_query` reads.
SMI_FIELDS = ("index", "uuid", "name", "compute_cap", "memory.total", "memory.free", "driver_version")
_MIB = 1024 * 1024
_MEMINFO_RE = re.compile(r"^(MemTotal|MemAvailable):\s+(\d+)\s*kB\s*$")
_CC_RE = re.compile(r"^\s*(\d{1,2})\.(\d{1,2})\s*$")
_MIB_RE = re.compile(r"^\s*(\d+)(?:\s*MiB)?\s*$")
_NAME_MAX = 128


@dataclass(frozen=True, slots=True, kw_only=True)
class RawGpu:
    """A GPU (or MIG device) as one source reported it; unknown facts are None."""

    index: int  # the driver's index (PCI bus order), not the CUDA ordinal
    name: str
    uuid: str | None = None
    compute_capability: tuple[int, int] | None = None
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    mig_parent: int | None = None  # set on a MIG device: its parent GPU's index
    mig_enabled: bool = False  # set on a parent GPU whose MIG devices replace it for CUDA


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverReading:
    """What one rung of the ladder found."""

    method: str  # "nvml" | "nvidia-smi" | "procfs"
    driver_version: str
    cuda_driver_version: str | None
    gpus: tuple[RawGpu, ...]


# --- the machine itself -------------------------------------------------------------------


def normalize_os(system: str) -> str:
    """``platform.system()`` -> the contract's name. :raises ProvisionError: on other systems."""
    name = {"linux": "linux", "windows": "windows", "darwin": "darwin"}.get(system.strip().lower())
    if name is None:
        raise ProvisionError(f"unsupported operating system {system!r}: provision knows Linux, Windows and macOS")
    return name


def normalize_arch(machine: str, os_name: str) -> str:
    """``platform.machine()`` -> ``x86_64``, ``aarch64`` (Linux) or ``arm64`` (macOS, Windows)."""
    m = machine.strip().lower()
    if m in ("x86_64", "amd64", "x64", "em64t"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8", "armv8l"):
        return "aarch64" if os_name == "linux" else "arm64"
    raise ProvisionError(f"unsupported CPU architecture {machine!r}: provision knows x86_64 and 64-bit ARM")


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """``(MemTotal, MemAvailable)`` in bytes from /proc/meminfo; missing lines give None."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        m = _MEMINFO_RE.match(line)
        if m:
            values[m.group(1)] = int(m.group(2)) * 1024
    return values.get("MemTotal"), values.get("MemAvailable")


def parse_libc(library: str, version: str) -> Version | None:
    """The glibc version from ``platform.libc_ver()``'s answer; None for musl, another libc or junk.

    ``libc_ver`` names the library it found (``"glibc"``) and its version (``"2.35"``); on musl
    and where it finds nothing it answers empty strings.
    """
    if library != "glibc" or not GLIBC_RE.fullmatch(version.strip()):
        return None
    return Version(version.strip())


def parse_python_version(text: str) -> Version:
    """The interpreter version to plan for. :raises InvalidInput: unless it reads as CPython 3.x."""
    try:
        version = Version(text)
    except InvalidVersion:
        version = None
    if version is None or version.major != 3 or len(version.release) < 2:
        raise InvalidInput("--python", "python", f"{text!r} is not a CPython 3.x version like '3.11'")
    return version


# --- what the NVIDIA driver reports -------------------------------------------------------


def cuda_version_from_int(value: int) -> str | None:
    """NVML's CUDA driver version integer: ``13000`` -> ``"13.0"``, ``12020`` -> ``"12.2"``."""
    if not isinstance(value, int) or value < 1000:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def clean_gpu_name(name: str) -> str:
    """A driver-reported name made safe to show and store: printable, at most 128 characters."""
    cleaned = "".join(c if c.isprintable() else " " for c in name).strip()
    return cleaned[:_NAME_MAX].strip()


def clean_driver_version(text: str | None) -> str | None:
    """``text`` if it looks like a driver version (``535.183.01``), else None."""
    if text is None:
        return None
    t = text.strip()
    return t if DRIVER_RE.fullmatch(t) else None


def _na(value: str) -> bool:
    v = value.strip()
    return not v or v.startswith("[") or v.upper() in ("N/A", "NA")


def _parse_cc(text: str) -> tuple[int, int] | None:
    """``"8.6"`` -> ``(8, 6)``; anything else (``[N/A]`` included) -> None."""
    m = _CC_RE.fullmatch(text)
    return (int(m.group(1)), int(m.group(2))) if m and int(m.group(1)) >= 1 else None


def _parse_mib(text: str) -> int | None:
    """``"24564"`` or ``"24564 MiB"`` -> bytes; anything else (``[N/A]`` included) -> None."""
    m = _MIB_RE.fullmatch(text)
    return int(m.group(1)) * _MIB if m else None


def parse_smi_query(text: str, *, with_cc: bool = True) -> tuple[str | None, list[RawGpu]]:
    """Parse ``nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv,noheader,nounits``.

    ``with_cc=False`` reads the same fields without ``compute_cap``. Lines that do not
    parse (warnings, garbage) are skipped; ``[N/A]``-style values become None.
    Returns the driver version of the first good line and the GPUs.
    """
    tail = 4 if with_cc else 3  # [compute_cap,] memory.total, memory.free, driver_version
    driver: str | None = None
    gpus: list[RawGpu] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 + tail or not parts[0].isdigit():
            continue
        name = clean_gpu_name(", ".join(parts[2 : len(parts) - tail]))  # a name may hold commas
        if not name:
            continue
        cc_text, total_text, free_text, drv = (parts[-4] if with_cc else "", *parts[-3:])
        gpus.append(
            RawGpu(
                index=int(parts[0]),
                name=name,
                uuid=None if _na(parts[1]) else parts[1],
                compute_capability=_parse_cc(cc_text),
                memory_total_bytes=_parse_mib(total_text) or None,
                memory_free_bytes=_parse_mib(free_text),
            )
        )
        driver = driver or clean_driver_version(drv)
    return driver, gpus


def parse_smi_header(text: str) -> tuple[str | None, str | None]:
    """``(driver_version, cuda_version)`` from the plain ``nvidia-smi`` table header."""
    drv = re.search(r"Driver Version:\s*([0-9.]+)", text)
    cuda = re.search(r"CUDA Version:\s*(\d{1,2}\.\d{1,2})\b", text)
    return (clean_driver_version(drv.group(1)) if drv else None), (cuda.group(1) if cuda else None)


def parse_proc_version(text: str) -> str | None:
    """The driver version from ``/proc/driver/nvidia/version`` (proprietary or open module)."""
    m = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d{2,4}(?:\.\d{1,4}){1,3})\b", text)
    return clean_driver_version(m.group(1)) if m else None


def parse_proc_gpu_information(text: str) -> tuple[str | None, str | None]:
    """``(model name, GPU UUID)`` from ``/proc/driver/nvidia/gpus/<bus>/information``."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip().lower()] = value.strip()
    name = clean_gpu_name(info.get("model", ""))
    uuid = info.get("gpu uuid", "")
    return (name or None), (uuid if uuid.startswith("GPU-") else None)


# --- CUDA_VISIBLE_DEVICES -----------------------------------------------------------------


def leading_int(text: str) -> int:
    """The leading (optionally signed) integer of ``text``, as CUDA reads it; -1 if none."""
    m = re.match(r"^[+-]?\d+", text)
    return int(m.group(0)) if m else -1


def _match_uuid(prefix: str, uuids: Sequence[str | None]) -> int:
    """The position of the one UUID starting with ``prefix``; -1 if none or several do."""
    hits = [i for i, u in enumerate(uuids) if u is not None and u.startswith(prefix)]
    return hits[0] if len(hits) == 1 else -1


def apply_visible_devices(devices: Sequence[RawGpu], value: str | None) -> list[RawGpu]:
    """The devices CUDA enumerates under ``CUDA_VISIBLE_DEVICES=value``, in CUDA order.

    ``devices`` are what CUDA would see with the variable unset. As the CUDA runtime does
    (and ``torch.cuda._parse_visible_devices`` documents): entries are integer ordinals
    (leading digits count, ``1gpu`` is 1) or unique ``GPU-``/``MIG-`` UUID prefixes, in the
    form the first entry sets; the first invalid entry (``-1``, out of range, unknown or
    ambiguous UUID, another form) ends the list;
    a repeated device hides all devices; an empty value hides all devices.
    """
    if value is None:
        return list(devices)
    entries = [e.strip() for e in value.split(",")]
    form = entries[0][:4] if entries[0].startswith(("GPU-", "MIG-")) else ""  # the first entry sets the form
    picked: list[int] = []
    for entry in entries:
        if form:
            pos = _match_uuid(entry, [d.uuid for d in devices]) if entry.startswith(form) else -1
        else:
            pos = leading_int(entry)
        if pos < 0 or pos >= len(devices):
            break
        if pos in picked:
            return []
        picked.append(pos)
    return [devices[i] for i in picked]


# --- a reading -> the profile's NVIDIA facts ---------------------------------------------


def _cuda_devices(gpus: Sequence[RawGpu]) -> list[RawGpu]:
    """What CUDA enumerates by default: a MIG-enabled GPU is replaced by its MIG devices."""
    return [g for g in gpus if not g.mig_enabled]


def _complete(gpu: RawGpu, table: Callable[[], GpuTable]) -> RawGpu:
    """Fill what the driver left out from ``gpus.toml``; a MIG slice never takes the card's memory."""
    if gpu.compute_capability is not None and gpu.memory_total_bytes is not None:
        return gpu
    known = table().lookup(gpu.name)
    if known is None:
        return gpu
    cc, memory = known
    return replace(
        gpu,
        compute_capability=gpu.compute_capability or cc,
        memory_total_bytes=gpu.memory_total_bytes or (memory if gpu.mig_parent is None else None),
    )


def build_nvidia(
    reading: DriverReading, environ: Mapping[str, str], table: Callable[[], GpuTable]
) -> tuple[NvidiaInfo, list[dict[str, Any]], list[str]]:
    """The GPUs this process's CUDA would use, numbered as CUDA numbers them.

    Returns the profile's :class:`NvidiaInfo`, one ``extra["gpus"]`` entry per GPU kept
    (physical index, UUID, MIG), and notes on what was left out or assumed. ``table`` is
    called only when a GPU lacks a fact, so ``gpus.toml`` is read only when needed.

    :raises InvalidInput: when ``table`` does (malformed matrices).
    """
    notes: list[str] = []
    visible = apply_visible_devices(_cuda_devices(reading.gpus), environ.get("CUDA_VISIBLE_DEVICES"))
    infos: list[GpuInfo] = []
    described: list[dict[str, Any]] = []
    for raw in visible:
        gpu = _complete(raw, table)
        if gpu.compute_capability is None or gpu.memory_total_bytes is None:
            notes.append(f"GPU {raw.index} ({raw.name}): compute capability or memory unknown; left out")
            continue
        free = gpu.memory_free_bytes
        if free is None:
            notes.append(f"GPU {raw.index} ({raw.name}): free memory unknown; assumed all free")
        free = gpu.memory_total_bytes if free is None else min(free, gpu.memory_total_bytes)
        ordinal = len(infos)
        infos.append(
            GpuInfo(
                index=ordinal,
                name=gpu.name,
                compute_capability=gpu.compute_capability,
                memory_total_bytes=gpu.memory_total_bytes,
                memory_free_bytes=free,
            )
        )
        entry: dict[str, Any] = {"index": ordinal, "physical_index": gpu.index}
        if gpu.uuid:
            entry["uuid"] = gpu.uuid
        if gpu.mig_parent is not None:
            entry["mig"] = True
        described.append(entry)
    if len({(g.name, g.compute_capability) for g in infos}) > 1 and environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        notes.append("mixed GPU models: CUDA orders them fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID")
    cuda = Version(reading.cuda_driver_version) if reading.cuda_driver_version else None
    info = NvidiaInfo(driver_version=reading.driver_version, cuda_driver_version=cuda, gpus=tuple(infos))
    return info, described, notes
