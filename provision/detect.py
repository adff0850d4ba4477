"""Describe this machine as a host profile (the imperative shell of the toolkit).

NVIDIA facts come from a ladder, best source first:

1. NVML through ``pynvml`` (nvidia-ml-py): driver, the driver's CUDA version, and per GPU
   name, UUID, compute capability, total/free memory, MIG devices.
2. ``nvidia-smi --query-gpu`` (drivers too old for ``compute_cap`` get a second query
   without it; the name is then looked up in ``matrices/gpus.toml``) plus the plain
   ``nvidia-smi`` header for ``CUDA Version``.
3. ``/proc/driver/nvidia``: the driver version and each GPU's model name; compute
   capability and memory from ``gpus.toml`` where the model is known.
4. Nothing answered: ``nvidia`` is None.

Each probe is a small callable in :class:`Probes` returning raw data or None; parsing is
pure and tolerant. Tests inject probes and never touch a real driver.

GPU indices in the profile are CUDA ordinals, what ``torch.device("cuda:N")`` means in
this process: ``CUDA_VISIBLE_DEVICES`` is applied the way the CUDA runtime applies it
(the physical index and UUID are kept under ``extra["gpus"]``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from provision import _run
from provision.errors import InvalidInput, ProvisionError
from provision.gpus import GpuTable, load_gpu_table
from provision.host import GpuInfo, HostProfile, NvidiaInfo

__all__ = [
    "SMI_FIELDS",
    "DriverReading",
    "Probes",
    "RawGpu",
    "apply_visible_devices",
    "cuda_version_from_int",
    "detect_host",
    "import_nvml",
    "normalize_arch",
    "normalize_os",
    "parse_meminfo",
    "parse_proc_gpu_information",
    "parse_proc_version",
    "parse_smi_header",
    "parse_smi_query",
    "read_nvidia",
    "read_nvml",
]

SMI_FIELDS = ("index", "uuid", "name", "compute_cap", "memory.total", "memory.free", "driver_version")
_SMI_TIMEOUT = 15.0
_MIB = 1024 * 1024
_DRIVER_RE = re.compile(r"^\d{2,4}(\.\d{1,4}){1,3}$")
_NAME_MAX = 128
PROC_NVIDIA = Path("/proc/driver/nvidia")


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


def import_nvml() -> Any | None:
    """The ``pynvml`` module from nvidia-ml-py, or None when it is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the old "pynvml" wrapper warns on import
            import pynvml  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return pynvml


def _run_nvidia_smi(args: Sequence[str]) -> str | None:
    done = _run.run_command(["nvidia-smi", *args], timeout=_SMI_TIMEOUT)
    if done is None or done.returncode != 0:
        return None
    return done.stdout


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _list_dir(path: Path) -> list[str] | None:
    try:
        return sorted(p.name for p in path.iterdir())
    except OSError:
        return None


def _disk_free(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _physical_memory() -> int | None:
    """Total RAM where /proc/meminfo is absent (macOS, Windows)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import ctypes

        class _Status(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong)] + [
                (n, ctypes.c_ulonglong)
                for n in ("total", "avail", "page_total", "page_avail", "virt_total", "virt_avail", "ext")
            ]

        status = _Status()
        status.length = ctypes.sizeof(_Status)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.total)
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Probes:
    """Everything detection asks the machine, as replaceable callables."""

    # Looked up at call time so a test guard can replace ``import_nvml`` for the whole session.
    nvml: Callable[[], Any | None] = field(default=lambda: import_nvml())
    nvidia_smi: Callable[[Sequence[str]], str | None] = _run_nvidia_smi
    read_text: Callable[[Path], str | None] = _read_text
    list_dir: Callable[[Path], list[str] | None] = _list_dir
    disk_free: Callable[[Path], int | None] = _disk_free
    physical_memory: Callable[[], int | None] = _physical_memory
    platform: Callable[[], tuple[str, str]] = field(default=lambda: (platform.system(), platform.machine()))
    python_version: Callable[[], str] = field(default=lambda: "{}.{}.{}".format(*sys.version_info[:3]))
    gpu_table: Callable[[], GpuTable] = load_gpu_table


# --- pure parsing -------------------------------------------------------------------------


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
        m = re.match(r"^(MemTotal|MemAvailable):\s+(\d+)\s*kB\s*$", line)
        if m:
            values[m.group(1)] = int(m.group(2)) * 1024
    return values.get("MemTotal"), values.get("MemAvailable")


def cuda_version_from_int(value: int) -> str | None:
    """NVML's CUDA driver version integer: ``13000`` -> ``"13.0"``, ``12020`` -> ``"12.2"``."""
    if not isinstance(value, int) or value < 1000:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def _na(value: str) -> bool:
    v = value.strip()
    return not v or v.startswith("[") or v.upper() in ("N/A", "NA")


def _parse_cc(text: str) -> tuple[int, int] | None:
    m = re.match(r"^\s*(\d{1,2})\.(\d{1,2})\s*$", text)
    return (int(m.group(1)), int(m.group(2))) if m and int(m.group(1)) >= 1 else None


def _parse_mib(text: str) -> int | None:
    m = re.match(r"^\s*(\d+)(?:\s*MiB)?\s*$", text)
    return int(m.group(1)) * _MIB if m else None


def _clean_name(name: str) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in name).strip()
    return cleaned[:_NAME_MAX].strip()


def _clean_driver(text: str | None) -> str | None:
    if text is None:
        return None
    t = text.strip()
    return t if _DRIVER_RE.match(t) else None


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
        name = _clean_name(", ".join(parts[2 : len(parts) - tail]))
        if not name:
            continue
        cc_text, total_text, free_text, drv = (parts[-4] if with_cc else "", *parts[-3:])
        total = None if _na(total_text) else _parse_mib(total_text)
        free = None if _na(free_text) else _parse_mib(free_text)
        gpus.append(
            RawGpu(
                index=int(parts[0]),
                name=name,
                uuid=None if _na(parts[1]) else parts[1],
                compute_capability=None if _na(cc_text) else _parse_cc(cc_text),
                memory_total_bytes=total or None,
                memory_free_bytes=free,
            )
        )
        driver = driver or _clean_driver(drv)
    return driver, gpus


def parse_smi_header(text: str) -> tuple[str | None, str | None]:
    """``(driver_version, cuda_version)`` from the plain ``nvidia-smi`` table header."""
    drv = re.search(r"Driver Version:\s*([0-9.]+)", text)
    cuda = re.search(r"CUDA Version:\s*(\d{1,2}\.\d{1,2})\b", text)
    return (_clean_driver(drv.group(1)) if drv else None), (cuda.group(1) if cuda else None)


def parse_proc_version(text: str) -> str | None:
    """The driver version from ``/proc/driver/nvidia/version`` (proprietary or open module)."""
    m = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d{2,4}(?:\.\d{1,4}){1,3})\b", text)
    return _clean_driver(m.group(1)) if m else None


def parse_proc_gpu_information(text: str) -> tuple[str | None, str | None]:
    """``(model name, GPU UUID)`` from ``/proc/driver/nvidia/gpus/<bus>/information``."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip().lower()] = value.strip()
    name = _clean_name(info.get("model", ""))
    uuid = info.get("gpu uuid", "")
    return (name or None), (uuid if uuid.startswith("GPU-") else None)


# --- probes that talk to the driver --------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml_gpu(nvml: Any, handle: Any, index: int, error: type[BaseException]) -> list[RawGpu]:
    """One physical GPU and, when MIG is on, its MIG devices (which CUDA sees instead)."""

    def optional(fn: str, *args: Any) -> Any:
        call = getattr(nvml, fn, None)
        if call is None:
            return None
        try:
            return call(*args)
        except error:
            return None

    cc = optional("nvmlDeviceGetCudaComputeCapability", handle)
    mem = optional("nvmlDeviceGetMemoryInfo", handle)
    uuid = optional("nvmlDeviceGetUUID", handle)
    mig = optional("nvmlDeviceGetMigMode", handle)
    gpu = RawGpu(
        index=index,
        name=_clean_name(_text(nvml.nvmlDeviceGetName(handle))),
        uuid=_text(uuid) if uuid else None,
        compute_capability=(int(cc[0]), int(cc[1])) if cc else None,
        memory_total_bytes=int(mem.total) if mem is not None and mem.total else None,
        memory_free_bytes=int(mem.free) if mem is not None else None,
        mig_enabled=bool(mig and mig[0] == 1),
    )
    out = [gpu]
    if gpu.mig_enabled:
        for slot in range(optional("nvmlDeviceGetMaxMigDeviceCount", handle) or 0):
            mh = optional("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
            name = optional("nvmlDeviceGetName", mh) if mh is not None else None
            if not name:
                continue
            mmem = optional("nvmlDeviceGetMemoryInfo", mh)
            muuid = optional("nvmlDeviceGetUUID", mh)
            out.append(
                replace(
                    gpu,
                    name=_clean_name(_text(name)),
                    uuid=_text(muuid) if muuid else None,
                    memory_total_bytes=int(mmem.total) if mmem is not None and mmem.total else None,
                    memory_free_bytes=int(mmem.free) if mmem is not None else None,
                    mig_parent=index,
                    mig_enabled=False,
                )
            )
    return out


def read_nvml(nvml: Any) -> DriverReading | None:
    """Query NVML; None when it cannot be initialised or the driver answers nonsense.

    Only ``nvml.NVMLError`` is caught; ``nvmlShutdown`` always follows a successful init.
    """
    error: type[BaseException] = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error:
        return None
    try:
        driver = _clean_driver(_text(nvml.nvmlSystemGetDriverVersion()))
        if driver is None:
            return None
        cuda: str | None = None
        for fn in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
            if hasattr(nvml, fn):
                try:
                    cuda = cuda_version_from_int(getattr(nvml, fn)())
                    break
                except error:
                    continue
        gpus: list[RawGpu] = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            gpus.extend(_nvml_gpu(nvml, nvml.nvmlDeviceGetHandleByIndex(i), i, error))
        return DriverReading(method="nvml", driver_version=driver, cuda_driver_version=cuda, gpus=tuple(gpus))
    except error:
        return None
    finally:
        with contextlib.suppress(error):
            nvml.nvmlShutdown()


def read_nvidia_smi(probes: Probes) -> DriverReading | None:
    """Query nvidia-smi; retries without ``compute_cap`` for drivers that lack the field."""
    fmt = "--format=csv,noheader,nounits"
    out = probes.nvidia_smi([f"--query-gpu={','.join(SMI_FIELDS)}", fmt])
    with_cc = out is not None
    if out is None:
        fields = [f for f in SMI_FIELDS if f != "compute_cap"]
        out = probes.nvidia_smi([f"--query-gpu={','.join(fields)}", fmt])
    if out is None:
        return None
    driver, gpus = parse_smi_query(out, with_cc=with_cc)
    header = probes.nvidia_smi([])
    head_driver, cuda = parse_smi_header(header) if header else (None, None)
    driver = driver or head_driver
    if driver is None:
        return None
    return DriverReading(method="nvidia-smi", driver_version=driver, cuda_driver_version=cuda, gpus=tuple(gpus))


def read_procfs(probes: Probes, root: Path = PROC_NVIDIA) -> DriverReading | None:
    """The Linux kernel module's view: driver version and model names, nothing measured."""
    text = probes.read_text(root / "version")
    driver = parse_proc_version(text) if text else None
    if driver is None:
        return None
    gpus: list[RawGpu] = []
    for bus in probes.list_dir(root / "gpus") or []:
        info = probes.read_text(root / "gpus" / bus / "information")
        name, uuid = parse_proc_gpu_information(info) if info else (None, None)
        if name:
            gpus.append(RawGpu(index=len(gpus), name=name, uuid=uuid))
    return DriverReading(method="procfs", driver_version=driver, cuda_driver_version=None, gpus=tuple(gpus))


def read_nvidia(os_name: str, probes: Probes) -> tuple[DriverReading | None, dict[str, str]]:
    """Walk the ladder; returns the first reading and why each earlier rung gave nothing."""
    failures: dict[str, str] = {}
    if os_name == "darwin":
        return None, {"nvidia": "macOS has no NVIDIA CUDA driver"}
    nvml = probes.nvml()
    reading = read_nvml(nvml) if nvml is not None else None
    if reading is not None:
        return reading, failures
    failures["nvml"] = "pynvml is not installed" if nvml is None else "NVML did not initialise"
    reading = read_nvidia_smi(probes)
    if reading is not None:
        return reading, failures
    failures["nvidia-smi"] = "not found or failed"
    if os_name == "linux":
        reading = read_procfs(probes)
        if reading is not None:
            return reading, failures
        failures["procfs"] = f"no {PROC_NVIDIA / 'version'}"
    return None, failures


# --- assembling the profile ----------------------------------------------------------------


def _strtoul(text: str) -> int:
    """The leading (optionally signed) integer of ``text``, as CUDA reads it; -1 if none."""
    m = re.match(r"^[+-]?\d+", text)
    return int(m.group(0)) if m else -1


def _match_uuid(prefix: str, uuids: Sequence[str | None]) -> int:
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
            pos = _strtoul(entry)
        if pos < 0 or pos >= len(devices):
            break
        if pos in picked:
            return []
        picked.append(pos)
    return [devices[i] for i in picked]


def _cuda_devices(gpus: Sequence[RawGpu]) -> list[RawGpu]:
    """What CUDA enumerates by default: a MIG-enabled GPU is replaced by its MIG devices."""
    return [g for g in gpus if not g.mig_enabled]


def _complete(gpu: RawGpu, table: Callable[[], GpuTable]) -> RawGpu:
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


def _build_nvidia(
    reading: DriverReading, environ: Mapping[str, str], table: Callable[[], GpuTable]
) -> tuple[NvidiaInfo, list[dict[str, Any]], list[str]]:
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


def _python_version(text: str) -> Version:
    try:
        version = Version(text)
    except InvalidVersion:
        version = None
    if version is None or version.major != 3 or len(version.release) < 2:
        raise InvalidInput("--python", "python", f"{text!r} is not a CPython 3.x version like '3.11'")
    return version


def detect_host(
    *,
    probes: Probes | None = None,
    environ: Mapping[str, str] | None = None,
    python: str | None = None,
    disk_path: Path | None = None,
) -> HostProfile:
    """Describe this machine: OS, CPU architecture, Python, RAM, free disk, NVIDIA GPUs.

    ``python`` overrides the interpreter version the environment is planned for;
    ``disk_path`` is where free space is measured (default: the working directory).
    ``extra`` records how each fact was found (``detected_by``) and anything skipped.

    :raises ProvisionError: on an unsupported OS or architecture, or unknown RAM.
    :raises InvalidInput: on a bad ``python`` override, or a malformed ``matrices/gpus.toml``.
    """
    p = probes if probes is not None else Probes()
    env = os.environ if environ is None else environ
    system, machine = p.platform()
    os_name = normalize_os(system)
    arch = normalize_arch(machine, os_name)
    detected_by: dict[str, Any] = {}
    extra: dict[str, Any] = {"detected_by": detected_by}

    ram, available = None, None
    if os_name == "linux":
        meminfo = p.read_text(Path("/proc/meminfo"))
        ram, available = parse_meminfo(meminfo) if meminfo else (None, None)
        detected_by["ram"] = "/proc/meminfo"
    if ram is None:
        ram = p.physical_memory()
        detected_by["ram"] = "sysconf" if os_name != "windows" else "GlobalMemoryStatusEx"
    if not ram:
        raise ProvisionError("cannot determine the amount of RAM on this machine; pass --host FILE instead")
    if available is not None:
        extra["ram_available_bytes"] = available

    where = disk_path if disk_path is not None else Path.cwd()
    disk = p.disk_free(where)
    if disk is not None:
        detected_by["disk"] = str(where)

    reading, failures = read_nvidia(os_name, p)
    nvidia: NvidiaInfo | None = None
    if reading is not None:
        nvidia, described, notes = _build_nvidia(reading, env, p.gpu_table)
        detected_by["nvidia"] = reading.method
        extra["gpus"] = described
        if notes:
            extra["notes"] = notes
    else:
        detected_by["nvidia"] = "none"
    if failures:
        extra["probe_failures"] = failures
    if "CUDA_VISIBLE_DEVICES" in env:
        extra["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]

    version = _python_version(python if python is not None else p.python_version())
    detected_by["python"] = "override" if python is not None else "running interpreter"
    return HostProfile(
        os=os_name, arch=arch, python=version, ram_bytes=ram, disk_free_bytes=disk, nvidia=nvidia, extra=extra
    )
