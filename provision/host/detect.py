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
pure and tolerant and lives in :mod:`provision.host.parse` (its public names are
re-exported here). Tests inject probes and never touch a real driver.

GPU indices in the profile are CUDA ordinals, what ``torch.device("cuda:N")`` means in
this process: ``CUDA_VISIBLE_DEVICES`` is applied the way the CUDA runtime applies it
(the physical index and UUID are kept under ``extra["gpus"]``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packaging.version import Version

from provision.common import run as _run
from provision.data import GpuTable, load_matrix
from provision.errors import ProvisionError
from provision.host.parse import (
    SMI_FIELDS,
    DriverReading,
    RawGpu,
    apply_visible_devices,
    build_nvidia,
    clean_driver_version,
    clean_gpu_name,
    cuda_version_from_int,
    normalize_arch,
    normalize_os,
    parse_libc,
    parse_meminfo,
    parse_proc_gpu_information,
    parse_proc_version,
    parse_python_version,
    parse_smi_header,
    parse_smi_query,
)
from provision.host.profile import HostProfile, NvidiaInfo

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
    "parse_libc",
    "parse_meminfo",
    "parse_proc_gpu_information",
    "parse_proc_version",
    "parse_smi_header",
    "parse_smi_query",
    "read_nvidia",
    "read_nvml",
]

_SMI_TIMEOUT = 15.0
PROC_NVIDIA = Path("/proc/driver/nvidia")


def import_nvml() -> Any | None:
    """The ``pynvml`` module from nvidia-ml-py, or None when it is not installed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the old "pynvml" wrapper warns on import
            import pynvml
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


def _bundled_gpu_table() -> GpuTable:
    """``Matrix.gpus`` of the bundled matrices (a ``--matrix DIR`` caller passes its own)."""
    return load_matrix().gpus


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
    #: ``(library, version)`` of the C library this interpreter runs on; asked on Linux only.
    libc: Callable[[], tuple[str, str]] = field(default=lambda: platform.libc_ver())
    #: The GPU table of the matrices in use; asked only when the driver leaves a fact out.
    gpu_table: Callable[[], GpuTable] = _bundled_gpu_table


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

    def uuid_and_memory(h: Any) -> tuple[str | None, int | None, int | None]:
        """The same three facts for a GPU and for a MIG device; what NVML cannot say is None."""
        mem = optional("nvmlDeviceGetMemoryInfo", h)
        uuid = optional("nvmlDeviceGetUUID", h)
        total = int(mem.total) if mem is not None and mem.total else None
        return (_text(uuid) if uuid else None), total, (int(mem.free) if mem is not None else None)

    cc = optional("nvmlDeviceGetCudaComputeCapability", handle)
    uuid, total, free = uuid_and_memory(handle)
    mig = optional("nvmlDeviceGetMigMode", handle)
    gpu = RawGpu(
        index=index,
        name=clean_gpu_name(_text(nvml.nvmlDeviceGetName(handle))),
        uuid=uuid,
        compute_capability=(int(cc[0]), int(cc[1])) if cc else None,
        memory_total_bytes=total,
        memory_free_bytes=free,
        mig_enabled=bool(mig and mig[0] == 1),
    )
    out = [gpu]
    if gpu.mig_enabled:
        for slot in range(optional("nvmlDeviceGetMaxMigDeviceCount", handle) or 0):
            mh = optional("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
            name = optional("nvmlDeviceGetName", mh) if mh is not None else None
            if not name:
                continue
            muuid, mtotal, mfree = uuid_and_memory(mh)
            out.append(
                replace(
                    gpu,
                    name=clean_gpu_name(_text(name)),
                    uuid=muuid,
                    memory_total_bytes=mtotal,
                    memory_free_bytes=mfree,
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
        driver = clean_driver_version(_text(nvml.nvmlSystemGetDriverVersion()))
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


# --- the profile ---------------------------------------------------------------------------


def _ram(os_name: str, p: Probes, extra: dict[str, Any]) -> int:
    """Total RAM from /proc/meminfo (which also says what is available) or the OS; noted in ``extra``.

    :raises ProvisionError: when no source knows.
    """
    ram, available = None, None
    if os_name == "linux":
        meminfo = p.read_text(Path("/proc/meminfo"))
        ram, available = parse_meminfo(meminfo) if meminfo else (None, None)
        extra["detected_by"]["ram"] = "/proc/meminfo"
    if ram is None:
        ram = p.physical_memory()
        extra["detected_by"]["ram"] = "sysconf" if os_name != "windows" else "GlobalMemoryStatusEx"
    if not ram:
        raise ProvisionError("cannot determine the amount of RAM on this machine; pass --host FILE instead")
    if available is not None:
        extra["ram_available_bytes"] = available
    return ram


def _glibc(os_name: str, p: Probes, extra: dict[str, Any]) -> Version | None:
    """glibc's version on Linux (manylinux wheels need a floor of it); None elsewhere, on musl or when unknown."""
    if os_name != "linux":
        return None
    glibc = parse_libc(*p.libc())
    extra["detected_by"]["glibc"] = "platform.libc_ver" if glibc is not None else "none"
    return glibc


def _nvidia(os_name: str, p: Probes, env: Mapping[str, str], extra: dict[str, Any]) -> NvidiaInfo | None:
    """The NVIDIA section from the first rung of the ladder that answers; ``extra`` says which and why not."""
    reading, failures = read_nvidia(os_name, p)
    nvidia: NvidiaInfo | None = None
    if reading is not None:
        nvidia, described, notes = build_nvidia(reading, env, p.gpu_table)
        extra["detected_by"]["nvidia"] = reading.method
        extra["gpus"] = described
        if notes:
            extra["notes"] = notes
    else:
        extra["detected_by"]["nvidia"] = "none"
    if failures:
        extra["probe_failures"] = failures
    return nvidia


def detect_host(
    *,
    probes: Probes | None = None,
    environ: Mapping[str, str] | None = None,
    python: str | None = None,
    disk_path: Path | None = None,
) -> HostProfile:
    """Describe this machine: OS, CPU architecture, Python, RAM, free disk, glibc, NVIDIA GPUs.

    ``python`` overrides the interpreter version the environment is planned for;
    ``disk_path`` is where free space is measured (default: the working directory).
    ``extra`` records how each fact was found (``detected_by``) and anything skipped.

    :raises ProvisionError: on an unsupported OS or architecture, or unknown RAM.
    :raises InvalidInput: on a bad ``python`` override, or malformed matrices when the GPU table is needed.
    """
    p = probes if probes is not None else Probes()
    env = os.environ if environ is None else environ
    system, machine = p.platform()
    os_name = normalize_os(system)
    arch = normalize_arch(machine, os_name)
    detected_by: dict[str, Any] = {}
    extra: dict[str, Any] = {"detected_by": detected_by}
    ram = _ram(os_name, p, extra)
    where = disk_path if disk_path is not None else Path.cwd()
    disk = p.disk_free(where)
    if disk is not None:
        detected_by["disk"] = str(where)
    glibc = _glibc(os_name, p, extra)
    nvidia = _nvidia(os_name, p, env, extra)
    if "CUDA_VISIBLE_DEVICES" in env:
        extra["cuda_visible_devices"] = env["CUDA_VISIBLE_DEVICES"]

    version = parse_python_version(python if python is not None else p.python_version())
    detected_by["python"] = "override" if python is not None else "running interpreter"
    return HostProfile(
        os=os_name, arch=arch, python=version, ram_bytes=ram, disk_free_bytes=disk, glibc=glibc, nvidia=nvidia,
        extra=extra,
    )
