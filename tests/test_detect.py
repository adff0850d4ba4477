"""Host detection: parsers on recorded outputs, the probe ladder, CUDA_VISIBLE_DEVICES (the GPU table: test_gpu_table)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from packaging.version import Version

import provision.common.run
from provision.data.matrix import load_matrix
from provision.errors import InvalidInput, ProvisionError
from provision.host import detect
from provision.host.detect import (
    Probes,
    RawGpu,
    apply_visible_devices,
    cuda_version_from_int,
    detect_host,
    normalize_arch,
    normalize_os,
    parse_libc,
    parse_meminfo,
    parse_proc_gpu_information,
    parse_proc_version,
    parse_smi_header,
    parse_smi_query,
    read_nvml,
)
from provision.host.profile import host_from_dict

FIX = Path(__file__).parent / "fixtures"
SMI = FIX / "nvidia-smi"
PROC = FIX / "proc"
MiB = 1024 * 1024
GB = 10**9
MEMINFO = "MemTotal:       65831548 kB\nMemFree:        60123456 kB\nMemAvailable:   63000000 kB\nBuffers: 1 kB\n"
TABLE = load_matrix().gpus


def smi_text(name: str) -> str:
    return (SMI / name).read_text()


# --- fake machines --------------------------------------------------------------------------


def never(*_args: Any) -> Any:
    raise AssertionError("this probe must not be called")


def fake_smi(scenario: str, calls: list[list[str]] | None = None) -> Callable[[Sequence[str]], str | None]:
    """nvidia-smi answering from tests/fixtures/nvidia-smi/<scenario>.*; a missing file = failure."""

    def run(args: Sequence[str]) -> str | None:
        if calls is not None:
            calls.append(list(args))
        if not args:
            name = f"{scenario}.header.txt"
        elif "compute_cap" in args[0]:
            name = f"{scenario}.query.txt"
        else:
            name = f"{scenario}.query-nocc.txt"
        path = SMI / name
        return path.read_text() if path.is_file() else None

    return run


def fake_fs(proc_scenario: str | None = None, meminfo: str | None = MEMINFO):
    """read_text/list_dir that serve /proc/meminfo and /proc/driver/nvidia from fixtures."""
    root = PROC / proc_scenario if proc_scenario else None

    def mapped(path: Path) -> Path | None:
        parts = path.as_posix().split("/proc/driver/nvidia", 1)
        if root is None or len(parts) != 2 or parts[0]:
            return None
        return root / parts[1].lstrip("/")

    def read_text(path: Path) -> str | None:
        if path.as_posix() == "/proc/meminfo":
            return meminfo
        target = mapped(path)
        return target.read_text() if target is not None and target.is_file() else None

    def list_dir(path: Path) -> list[str] | None:
        target = mapped(path)
        return sorted(p.name for p in target.iterdir()) if target is not None and target.is_dir() else None

    return read_text, list_dir


def probes(**overrides: Any) -> Probes:
    """A Linux x86_64 machine with 64 GB RAM and no NVIDIA anything, unless overridden."""
    read_text, list_dir = fake_fs()
    base: dict[str, Any] = {
        "nvml": lambda: None,
        "nvidia_smi": lambda args: None,
        "read_text": read_text,
        "list_dir": list_dir,
        "disk_free": lambda path: 500 * GB,
        "physical_memory": lambda: None,
        "platform": lambda: ("Linux", "x86_64"),
        "python_version": lambda: "3.11.7",
        "libc": lambda: ("glibc", "2.35"),
        "gpu_table": lambda: TABLE,
    }
    base.update(overrides)
    return Probes(**base)


class FakeNVMLError(Exception):
    def __init__(self, value: int = 3) -> None:
        super().__init__(value)
        self.value = value


def fake_nvml(
    devices: Sequence[dict[str, Any]],
    *,
    driver: Any = "535.183.01",
    cuda: int = 12020,
    fail: Sequence[str] = (),
    omit: Sequence[str] = (),
    log: list[str] | None = None,
) -> SimpleNamespace:
    """A pynvml stand-in: ``fail`` names functions that raise NVMLError, ``omit`` ones absent."""
    calls = log if log is not None else []

    def fn(name: str, body: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            calls.append(name)
            if name in fail:
                raise FakeNVMLError()
            return body(*args)

        return call

    def device(handle: tuple[Any, ...]) -> dict[str, Any]:
        d = devices[handle[1]]
        return d if handle[0] == "gpu" else d["mig"][handle[2]]

    def mig_handle(handle: tuple[Any, ...], slot: int) -> tuple[Any, ...]:
        migs = devices[handle[1]].get("mig", [])
        if slot >= len(migs):
            raise FakeNVMLError(6)  # NVML_ERROR_NOT_FOUND: an empty slot
        return ("mig", handle[1], slot)

    def mig_mode(handle: tuple[Any, ...]) -> list[int]:
        if "mig" not in devices[handle[1]]:
            raise FakeNVMLError(3)  # NVML_ERROR_NOT_SUPPORTED on pre-Ampere cards
        return [1, 1]

    table = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlSystemGetDriverVersion": lambda: driver,
        "nvmlSystemGetCudaDriverVersion_v2": lambda: cuda,
        "nvmlSystemGetCudaDriverVersion": lambda: cuda,
        "nvmlDeviceGetCount": lambda: len(devices),
        "nvmlDeviceGetHandleByIndex": lambda i: ("gpu", i),
        "nvmlDeviceGetName": lambda h: device(h)["name"],
        "nvmlDeviceGetUUID": lambda h: device(h)["uuid"],
        "nvmlDeviceGetCudaComputeCapability": lambda h: device(h)["cc"],
        "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(
            total=device(h)["total"], free=device(h)["free"], used=device(h)["total"] - device(h)["free"]
        ),
        "nvmlDeviceGetMigMode": mig_mode,
        "nvmlDeviceGetMaxMigDeviceCount": lambda h: 7,
        "nvmlDeviceGetMigDeviceHandleByIndex": mig_handle,
    }
    ns = SimpleNamespace(NVMLError=FakeNVMLError, calls=calls)
    for name, body in table.items():
        if name not in omit:
            setattr(ns, name, fn(name, body))
    return ns


A10G = {"name": "NVIDIA A10G", "uuid": "GPU-aaaa1111", "cc": (8, 6), "total": 23028 * MiB, "free": 22502 * MiB}
H100 = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-bbbb2222", "cc": (9, 0), "total": 81559 * MiB,
        "free": 81080 * MiB}


# --- parsing recorded nvidia-smi output -------------------------------------------------------


def test_parse_query_a10g() -> None:
    driver, gpus = parse_smi_query(smi_text("a10g-535.query.txt"))
    assert driver == "535.183.01"
    assert gpus == [
        RawGpu(index=0, name="NVIDIA A10G", uuid="GPU-9f1b2c2e-5d8a-4c3e-b6f1-2a7d0e4c9b11",
               compute_capability=(8, 6), memory_total_bytes=23028 * MiB, memory_free_bytes=22502 * MiB)
    ]


def test_parse_query_two_gpus_keep_their_order_and_free_memory() -> None:
    driver, gpus = parse_smi_query(smi_text("2x-rtx4090-550.query.txt"))
    assert driver == "550.127.05"
    assert [(g.index, g.name, g.compute_capability) for g in gpus] == [
        (0, "NVIDIA GeForce RTX 4090", (8, 9)), (1, "NVIDIA GeForce RTX 4090", (8, 9))]
    assert [g.memory_free_bytes for g in gpus] == [23990 * MiB, 21218 * MiB]


def test_parse_query_without_compute_cap() -> None:
    driver, gpus = parse_smi_query(smi_text("v100-470.query-nocc.txt"), with_cc=False)
    assert driver == "470.256.02"
    assert len(gpus) == 1
    assert gpus[0].name == "Tesla V100-SXM2-16GB"
    assert gpus[0].compute_capability is None
    assert gpus[0].memory_total_bytes == 16160 * MiB


def test_parse_query_with_cc_ignores_lines_of_the_short_form() -> None:
    assert parse_smi_query(smi_text("v100-470.query-nocc.txt"), with_cc=True) == (None, [])


def test_parse_query_na_fields_become_unknown() -> None:
    _, gpus = parse_smi_query(smi_text("t4-na-fields.query.txt"))
    assert [g.index for g in gpus] == [0, 1, 2]
    assert gpus[0].memory_free_bytes == 14910 * MiB
    assert gpus[1].memory_free_bytes is None
    assert gpus[1].memory_total_bytes == 15360 * MiB
    assert (gpus[2].uuid, gpus[2].compute_capability, gpus[2].memory_total_bytes) == (None, None, None)


def test_parse_query_skips_warnings_and_garbage() -> None:
    driver, gpus = parse_smi_query(smi_text("a100-warnings.query.txt"))
    assert driver == "535.183.01"
    assert [(g.index, g.memory_free_bytes) for g in gpus] == [(0, 40337 * MiB), (1, 39811 * MiB)]


def test_parse_query_windows_line_endings() -> None:
    driver, gpus = parse_smi_query(smi_text("win-rtx4070-566.query.txt"))
    assert driver == "566.36"
    assert gpus[0].name == "NVIDIA GeForce RTX 4070"
    assert gpus[0].memory_total_bytes == 12282 * MiB


def test_parse_query_jetson_reports_no_memory() -> None:
    driver, gpus = parse_smi_query(smi_text("orin-jetpack6.query.txt"))
    assert driver == "540.4.0"
    assert gpus[0].compute_capability == (8, 7)
    assert gpus[0].memory_total_bytes is None


def test_parse_query_name_containing_a_comma() -> None:
    _, gpus = parse_smi_query("0, GPU-1, Odd, Name, 8.6, 100, 50, 535.1\n")
    assert gpus[0].name == "Odd, Name"
    assert gpus[0].memory_free_bytes == 50 * MiB


@pytest.mark.parametrize("text", ["", "\n\n", smi_text("driver-not-loaded.txt"), "0, , , , , , \n", "💥,💥"])
def test_parse_query_nothing_usable(text: str) -> None:
    assert parse_smi_query(text) == (None, [])


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a10g-535.header.txt", ("535.183.01", "12.2")), ("v100-470.header.txt", ("470.256.02", "11.4")),
     ("h100-580.header.txt", ("580.159.04", "13.0")), ("2x-rtx4090-550.header.txt", ("550.127.05", "12.4")),
     ("driver-not-loaded.txt", (None, None))],
)
def test_parse_header(name: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_smi_header(smi_text(name)) == expected


@pytest.mark.parametrize(
    ("scenario", "driver"),
    [("a10g-535", "535.183.01"), ("h100-580-open", "580.159.04"), ("gh200-aarch64", "570.133.20"),
     ("h100-580-lent", "580.159.04")],
)
def test_parse_proc_version(scenario: str, driver: str) -> None:
    assert parse_proc_version((PROC / scenario / "version").read_text()) == driver


@pytest.mark.parametrize("text", ["", "NVRM version: something else", "Kernel Module  latest"])
def test_parse_proc_version_garbage(text: str) -> None:
    assert parse_proc_version(text) is None


def test_parse_proc_gpu_information() -> None:
    text = (PROC / "a10g-535" / "gpus" / "0000-00-1e.0" / "information").read_text()
    assert parse_proc_gpu_information(text) == ("NVIDIA A10G", "GPU-9f1b2c2e-5d8a-4c3e-b6f1-2a7d0e4c9b11")
    assert parse_proc_gpu_information("nonsense\n:\n") == (None, None)


def test_parse_meminfo() -> None:
    assert parse_meminfo(MEMINFO) == (65831548 * 1024, 63000000 * 1024)
    assert parse_meminfo("MemTotal: 1024 kB\n") == (1024 * 1024, None)
    assert parse_meminfo("MemTotal: lots\n\x00") == (None, None)


@pytest.mark.parametrize(("value", "text"), [(13000, "13.0"), (12020, "12.2"), (11040, "11.4"), (12090, "12.9"),
                                             (0, None), (-1, None)])
def test_cuda_version_from_int(value: int, text: str | None) -> None:
    assert cuda_version_from_int(value) == text


@pytest.mark.parametrize(
    ("system", "machine", "expected"),
    [("Linux", "x86_64", ("linux", "x86_64")), ("Windows", "AMD64", ("windows", "x86_64")),
     ("Darwin", "arm64", ("darwin", "arm64")), ("Linux", "aarch64", ("linux", "aarch64")),
     ("Linux", "arm64", ("linux", "aarch64")), ("Windows", "ARM64", ("windows", "arm64"))],
)
def test_normalize_platform(system: str, machine: str, expected: tuple[str, str]) -> None:
    os_name = normalize_os(system)
    assert (os_name, normalize_arch(machine, os_name)) == expected


@pytest.mark.parametrize(("system", "machine"), [("FreeBSD", "amd64"), ("Linux", "i686"), ("Linux", "ppc64le")])
def test_unsupported_platform(system: str, machine: str) -> None:
    with pytest.raises(ProvisionError, match="unsupported"):
        detect_host(probes=probes(platform=lambda: (system, machine)), environ={})


# --- the ladder ------------------------------------------------------------------------------


def test_nvml_wins_and_is_shut_down() -> None:
    nvml = fake_nvml([A10G], cuda=12020)
    host = detect_host(probes=probes(nvml=lambda: nvml, nvidia_smi=never, list_dir=never), environ={})
    assert host.extra["detected_by"]["nvidia"] == "nvml"
    assert host.nvidia is not None
    assert host.nvidia.driver_version == "535.183.01"
    assert str(host.nvidia.cuda_driver_version) == "12.2"
    gpu = host.gpus[0]
    assert (gpu.index, gpu.name, gpu.compute_capability) == (0, "NVIDIA A10G", (8, 6))
    assert (gpu.memory_total_bytes, gpu.memory_free_bytes) == (23028 * MiB, 22502 * MiB)
    assert nvml.calls[0] == "nvmlInit"
    assert nvml.calls[-1] == "nvmlShutdown"


def test_nvml_cuda_13_driver() -> None:
    nvml = fake_nvml([H100], driver=b"580.159.04", cuda=13000)  # old pynvml returns bytes
    host = detect_host(probes=probes(nvml=lambda: nvml), environ={})
    assert host.nvidia is not None
    assert (host.nvidia.driver_version, str(host.nvidia.cuda_driver_version)) == ("580.159.04", "13.0")


def test_nvml_init_failure_falls_back_to_nvidia_smi() -> None:
    nvml = fake_nvml([A10G], fail=["nvmlInit"])
    host = detect_host(probes=probes(nvml=lambda: nvml, nvidia_smi=fake_smi("h100-580")), environ={})
    assert host.extra["detected_by"]["nvidia"] == "nvidia-smi"
    assert host.extra["probe_failures"] == {"nvml": "NVML did not initialise"}
    assert "nvmlShutdown" not in nvml.calls
    assert host.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert host.gpus[0].memory_free_bytes == 81079 * MiB
    assert host.nvidia is not None and str(host.nvidia.cuda_driver_version) == "13.0"


def test_missing_pynvml_falls_back_to_nvidia_smi() -> None:
    host = detect_host(probes=probes(nvidia_smi=fake_smi("a10g-535")), environ={})
    assert host.extra["probe_failures"] == {"nvml": "pynvml is not installed"}
    assert host.to_dict()["nvidia"] == {
        "driver_version": "535.183.01", "cuda_driver_version": "12.2",
        "gpus": [{"index": 0, "name": "NVIDIA A10G", "compute_capability": "8.6",
                  "memory_total_bytes": 23028 * MiB, "memory_free_bytes": 22502 * MiB}],
    }


def test_nvml_failing_midway_still_shuts_down_and_falls_back() -> None:
    nvml = fake_nvml([A10G], fail=["nvmlDeviceGetHandleByIndex"])
    host = detect_host(probes=probes(nvml=lambda: nvml, nvidia_smi=fake_smi("a10g-535")), environ={})
    assert host.extra["detected_by"]["nvidia"] == "nvidia-smi"
    assert nvml.calls[-1] == "nvmlShutdown"


def test_nvml_without_v2_cuda_call_uses_the_old_one() -> None:
    nvml = fake_nvml([A10G], cuda=12040, omit=["nvmlSystemGetCudaDriverVersion_v2"])
    assert read_nvml(nvml) is not None
    reading = read_nvml(nvml)
    assert reading is not None and reading.cuda_driver_version == "12.4"


def test_nvml_cuda_version_error_leaves_it_unknown() -> None:
    nvml = fake_nvml([A10G], fail=["nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"])
    host = detect_host(probes=probes(nvml=lambda: nvml), environ={})
    assert host.nvidia is not None and host.nvidia.cuda_driver_version is None
    assert host.gpus[0].name == "NVIDIA A10G"


def test_nvml_unsupported_compute_capability_comes_from_the_table() -> None:
    nvml = fake_nvml([A10G], fail=["nvmlDeviceGetCudaComputeCapability", "nvmlShutdown"])
    host = detect_host(probes=probes(nvml=lambda: nvml), environ={})
    assert host.gpus[0].compute_capability == (8, 6)


def test_nvml_garbage_driver_version_is_not_trusted() -> None:
    nvml = fake_nvml([A10G], driver="N/A")
    assert read_nvml(nvml) is None
    assert nvml.calls[-1] == "nvmlShutdown"


def test_nvml_mig_devices_replace_their_parent() -> None:
    a100 = {"name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-cccc", "cc": (8, 0), "total": 40960 * MiB,
            "free": 40000 * MiB,
            "mig": [{"name": "NVIDIA A100-SXM4-40GB MIG 3g.20gb", "uuid": "MIG-1111", "total": 19968 * MiB,
                     "free": 19900 * MiB},
                    {"name": "NVIDIA A100-SXM4-40GB MIG 2g.10gb", "uuid": "MIG-2222", "total": 9984 * MiB,
                     "free": 9900 * MiB}]}
    nvml = fake_nvml([A10G, a100])
    host = detect_host(probes=probes(nvml=lambda: nvml), environ={})
    assert [(g.index, g.name, g.compute_capability, g.memory_total_bytes) for g in host.gpus] == [
        (0, "NVIDIA A10G", (8, 6), 23028 * MiB),
        (1, "NVIDIA A100-SXM4-40GB MIG 3g.20gb", (8, 0), 19968 * MiB),
        (2, "NVIDIA A100-SXM4-40GB MIG 2g.10gb", (8, 0), 9984 * MiB),
    ]
    assert host.extra["gpus"][2] == {"index": 2, "physical_index": 1, "uuid": "MIG-2222", "mig": True}
    one = detect_host(probes=probes(nvml=lambda: nvml), environ={"CUDA_VISIBLE_DEVICES": "MIG-2222"})
    assert [(g.index, g.memory_free_bytes) for g in one.gpus] == [(0, 9900 * MiB)]


def test_old_driver_retries_without_compute_cap_and_uses_the_table() -> None:
    calls: list[list[str]] = []
    host = detect_host(probes=probes(nvidia_smi=fake_smi("v100-470", calls)), environ={})
    assert calls == [
        ["--query-gpu=index,uuid,name,compute_cap,memory.total,memory.free,driver_version",
         "--format=csv,noheader,nounits"],
        ["--query-gpu=index,uuid,name,memory.total,memory.free,driver_version", "--format=csv,noheader,nounits"],
        [],
    ]
    assert host.nvidia is not None
    assert (host.nvidia.driver_version, str(host.nvidia.cuda_driver_version)) == ("470.256.02", "11.4")
    gpu = host.gpus[0]
    assert (gpu.compute_capability, gpu.memory_total_bytes, gpu.memory_free_bytes) == (
        (7, 0), 16160 * MiB, 15854 * MiB)


def test_old_driver_name_without_vendor_prefix_is_found() -> None:
    host = detect_host(probes=probes(nvidia_smi=fake_smi("gtx1080ti-470")), environ={})
    assert host.gpus[0].compute_capability == (6, 1)
    assert host.nvidia is not None and host.nvidia.cuda_driver_version is None  # no header recorded


def test_na_fields_assume_free_and_drop_unknown_gpus() -> None:
    host = detect_host(probes=probes(nvidia_smi=fake_smi("t4-na-fields")), environ={})
    assert [(g.index, g.memory_free_bytes) for g in host.gpus] == [(0, 14910 * MiB), (1, 15360 * MiB),
                                                                   (2, 15360 * MiB)]
    assert host.gpus[2].compute_capability == (7, 5)  # [N/A] filled in from gpus.toml by name
    notes = host.extra["notes"]
    assert "GPU 1 (Tesla T4): free memory unknown; assumed all free" in notes


def test_jetson_without_memory_is_left_out_with_a_note() -> None:
    host = detect_host(probes=probes(nvidia_smi=fake_smi("orin-jetpack6"), platform=lambda: ("Linux", "aarch64")),
                       environ={})
    assert host.nvidia is not None and host.gpus == ()
    assert host.extra["notes"] == ["GPU 0 (Orin (nvgpu)): compute capability or memory unknown; left out"]


def test_procfs_is_the_last_resort() -> None:
    read_text, list_dir = fake_fs("h100-580-open")
    host = detect_host(probes=probes(read_text=read_text, list_dir=list_dir), environ={})
    assert host.extra["detected_by"]["nvidia"] == "procfs"
    assert host.extra["probe_failures"] == {"nvml": "pynvml is not installed", "nvidia-smi": "not found or failed"}
    assert host.nvidia is not None
    assert (host.nvidia.driver_version, host.nvidia.cuda_driver_version) == ("580.159.04", None)
    assert [(g.index, g.compute_capability, g.memory_total_bytes, g.memory_free_bytes) for g in host.gpus] == [
        (0, (9, 0), 81559 * MiB, 81559 * MiB), (1, (9, 0), 81559 * MiB, 81559 * MiB)]
    assert [g["uuid"] for g in host.extra["gpus"]] == [  # PCI bus order: 0000:18 before 0000:2a
        "GPU-e0a3c2b4-6d71-4f8e-9b25-1c8d7a6f3e40", "GPU-77a1c3e5-0b2d-4f6a-8c9e-1a3b5c7d9e02"]


def test_procfs_gh200_on_aarch64() -> None:
    read_text, list_dir = fake_fs("gh200-aarch64")
    host = detect_host(probes=probes(read_text=read_text, list_dir=list_dir, platform=lambda: ("Linux", "aarch64")),
                       environ={})
    assert (host.arch, host.platform) == ("aarch64", "linux-aarch64")
    assert host.gpus[0].compute_capability == (9, 0)
    assert host.gpus[0].memory_total_bytes == 97871 * MiB


@pytest.mark.parametrize("scenario", ["rtx3060-535", "unknown-gpu"])
def test_procfs_gpu_without_known_memory_is_left_out(scenario: str) -> None:
    read_text, list_dir = fake_fs(scenario)
    host = detect_host(probes=probes(read_text=read_text, list_dir=list_dir), environ={})
    assert host.nvidia is not None and host.gpus == ()
    assert "left out" in host.extra["notes"][0]


def test_nothing_found_means_no_nvidia() -> None:
    host = detect_host(probes=probes(), environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert host.nvidia is None
    assert host.extra["detected_by"]["nvidia"] == "none"
    assert host.to_dict()["nvidia"] is None


def test_macos_asks_no_nvidia_probe() -> None:
    host = detect_host(
        probes=probes(platform=lambda: ("Darwin", "arm64"), nvml=never, nvidia_smi=never, list_dir=never,
                      read_text=never, physical_memory=lambda: 32 * 1024**3),
        environ={},
    )
    assert (host.os, host.arch, host.nvidia, host.ram_bytes) == ("darwin", "arm64", None, 32 * 1024**3)
    assert host.extra["detected_by"]["ram"] == "sysconf"


def test_windows_skips_procfs() -> None:
    host = detect_host(
        probes=probes(platform=lambda: ("Windows", "AMD64"), nvidia_smi=fake_smi("win-rtx4070-566"), list_dir=never,
                      read_text=never, physical_memory=lambda: 32 * GB),
        environ={},
    )
    assert (host.os, host.platform) == ("windows", "windows-x86_64")
    assert host.gpus[0].compute_capability == (8, 9)
    assert host.extra["detected_by"]["ram"] == "GlobalMemoryStatusEx"


# --- CUDA_VISIBLE_DEVICES --------------------------------------------------------------------

FOUR = [RawGpu(index=i, name=f"gpu{i}", uuid=u) for i, u in
        enumerate(["GPU-aa11", "GPU-aa22", "GPU-bb33", "GPU-cc44"])]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, [0, 1, 2, 3]),
        ("", []),
        ("2,0", [2, 0]),
        ("0,2,-1,1", [0, 2]),  # the CUDA programming guide's example
        ("-1", []),
        ("NoDevFiles", []),
        ("1,1", []),  # a repeated device hides all
        ("0,5,1", [0]),  # out of range ends the list
        ("1gpu,3", [1, 3]),  # leading digits count, as strtoul reads them
        (" 3 , 0 ", [3, 0]),
        ("GPU-bb", [2]),  # a unique UUID prefix
        ("GPU-cc44,GPU-aa11", [3, 0]),
        ("GPU-aa", []),  # ambiguous prefix
        ("GPU-bb33,GPU-zz", [2]),  # unknown UUID ends the list
        ("GPU-bb33,0", [2]),  # the first entry sets the form; another form ends the list
        ("0,GPU-bb33", [0]),
        ("GPU-bb33,GPU-bb", []),  # the same GPU twice
        ("GPU-aa11,GPU-aa11", []),
    ],
)
def test_apply_visible_devices(value: str | None, expected: list[int]) -> None:
    assert [g.index for g in apply_visible_devices(FOUR, value)] == expected


def test_visible_devices_reindex_to_cuda_ordinals() -> None:
    host = detect_host(probes=probes(nvidia_smi=fake_smi("2x-rtx4090-550")), environ={"CUDA_VISIBLE_DEVICES": "1"})
    assert [(g.index, g.memory_free_bytes) for g in host.gpus] == [(0, 21218 * MiB)]
    assert host.extra["gpus"] == [{"index": 0, "physical_index": 1, "uuid": "GPU-7e1d4b2f-1a9c-6e33-c210-5f4a8d2b9c02"}]
    assert host.extra["cuda_visible_devices"] == "1"


def test_empty_visible_devices_keeps_the_driver_but_no_gpus() -> None:
    host = detect_host(probes=probes(nvidia_smi=fake_smi("a10g-535")), environ={"CUDA_VISIBLE_DEVICES": ""})
    assert host.nvidia is not None and host.nvidia.driver_version == "535.183.01"
    assert host.gpus == ()


def test_mixed_models_note_the_cuda_device_order() -> None:
    nvml = fake_nvml([A10G, H100])
    host = detect_host(probes=probes(nvml=lambda: nvml), environ={})
    assert any("CUDA_DEVICE_ORDER" in n for n in host.extra["notes"])
    pci = detect_host(probes=probes(nvml=lambda: nvml), environ={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert "notes" not in pci.extra


# --- the rest of the profile -----------------------------------------------------------------


def test_ram_disk_python_and_provenance(tmp_path: Path) -> None:
    seen: list[Path] = []
    host = detect_host(probes=probes(disk_free=lambda p: seen.append(p) or 123 * GB), environ={}, disk_path=tmp_path)
    assert host.ram_bytes == 65831548 * 1024
    assert host.extra["ram_available_bytes"] == 63000000 * 1024
    assert (host.disk_free_bytes, seen) == (123 * GB, [tmp_path])
    assert str(host.python) == "3.11.7"
    assert host.glibc == Version("2.35")
    assert host.extra["detected_by"] == {"ram": "/proc/meminfo", "disk": str(tmp_path), "glibc": "platform.libc_ver",
                                         "nvidia": "none", "python": "running interpreter"}


@pytest.mark.parametrize(("answer", "expected"), [
    (("glibc", "2.35"), "2.35"),  # Ubuntu 22.04
    (("glibc", "2.27"), "2.27"),  # Ubuntu 18.04
    (("glibc", "2.17"), "2.17"),  # CentOS 7
    (("glibc", "2.100"), "2.100"),  # compared as a version, not as text
    (("", ""), None),  # musl (Alpine): libc_ver finds no glibc marker
    (("libc", "5"), None),  # another C library
    (("glibc", ""), None),
    (("glibc", "2.35-garbage"), None),
])
def test_parse_libc(answer: tuple[str, str], expected: str | None) -> None:
    parsed = parse_libc(*answer)
    assert (str(parsed) if parsed is not None else None) == expected


def test_glibc_on_musl_is_unknown_and_not_written() -> None:
    host = detect_host(probes=probes(libc=lambda: ("", "")), environ={})
    assert host.glibc is None and host.extra["detected_by"]["glibc"] == "none"
    assert "glibc" not in host.to_dict()


@pytest.mark.parametrize(("system", "machine"), [("Darwin", "arm64"), ("Windows", "AMD64")])
def test_glibc_is_asked_on_linux_only(system: str, machine: str) -> None:
    host = detect_host(probes=probes(platform=lambda: (system, machine), libc=never, physical_memory=lambda: 8 * GB),
                       environ={})
    assert host.glibc is None and "glibc" not in host.extra["detected_by"]


def test_detected_glibc_round_trips_through_the_host_file() -> None:
    host = detect_host(probes=probes(libc=lambda: ("glibc", "2.27")), environ={})
    assert host.to_dict()["glibc"] == "2.27"
    assert host_from_dict(host.to_dict(), "detected") == host


def test_ram_falls_back_to_sysconf_and_disk_may_be_unknown() -> None:
    read_text, _list_dir = fake_fs(meminfo=None)
    host = detect_host(probes=probes(read_text=read_text, physical_memory=lambda: 8 * GB, disk_free=lambda p: None),
                       environ={})
    assert (host.ram_bytes, host.disk_free_bytes) == (8 * GB, None)
    assert "disk_free_bytes" not in host.to_dict()


def test_unknown_ram_is_an_error() -> None:
    read_text, _ = fake_fs(meminfo="garbage")
    with pytest.raises(ProvisionError, match="RAM"):
        detect_host(probes=probes(read_text=read_text), environ={})


def test_python_override() -> None:
    host = detect_host(probes=probes(), environ={}, python="3.10")
    assert (host.python_minor, host.extra["detected_by"]["python"]) == ("3.10", "override")
    with pytest.raises(InvalidInput) as err:
        detect_host(probes=probes(), environ={}, python="2.7")
    assert str(err.value) == "--python: python: '2.7' is not a CPython 3.x version like '3.11'"
    with pytest.raises(InvalidInput):
        detect_host(probes=probes(), environ={}, python="latest")


@pytest.mark.parametrize(
    "scenario",
    ["a10g-535", "2x-rtx4090-550", "v100-470", "t4-470", "gtx1080ti-470", "h100-580", "t4-na-fields",
     "a100-warnings", "win-rtx4070-566", "orin-jetpack6"],
)
def test_detected_profiles_are_valid_host_files(scenario: str) -> None:
    host = detect_host(probes=probes(nvidia_smi=fake_smi(scenario)), environ={})
    again = host_from_dict(host.to_dict(), "detected")
    assert again == host
    assert again.extra == host.extra


# --- the test guard (provision.common.run itself: tests/test_run.py) ---------------------------


def test_guard_blocks_real_nvidia_in_unmarked_tests() -> None:
    with pytest.raises(AssertionError, match="real nvidia-smi"):
        provision.common.run.run_command(["nvidia-smi"], timeout=5)
    with pytest.raises(AssertionError, match="real NVML"):
        Probes().nvml()
    with pytest.raises(AssertionError, match="real nvidia-smi"):
        detect._run_nvidia_smi([])


# --- on a real GPU (the lead runs these on a lent machine) ---------------------------------------


@pytest.mark.gpu
def test_real_detection_matches_between_rungs() -> None:
    host = detect_host(environ={})
    assert host.nvidia is not None, host.extra
    assert host.gpus, host.extra
    assert host_from_dict(host.to_dict(), "detected") == host
    for gpu in host.gpus:
        assert gpu.compute_capability >= (6, 0)
        assert 0 < gpu.memory_free_bytes <= gpu.memory_total_bytes
    smi_only = detect_host(probes=Probes(nvml=lambda: None), environ={})
    assert smi_only.extra["detected_by"]["nvidia"] == "nvidia-smi"
    assert [(g.name, g.compute_capability, g.memory_total_bytes // MiB) for g in smi_only.gpus] == [
        (g.name, g.compute_capability, g.memory_total_bytes // MiB) for g in host.gpus]
    assert smi_only.nvidia is not None and smi_only.nvidia.driver_version == host.nvidia.driver_version
    if shutil.which("nvidia-smi"):
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True, timeout=30)
        assert len([ln for ln in listed.stdout.splitlines() if ln.startswith("GPU ")]) >= len(host.gpus)
