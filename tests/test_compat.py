"""The compatibility rules (plan/compat.py) on their own: driver vs CUDA, kernels vs GPU, bf16.

The planner chooses with these and ``provision doctor`` judges with them. The driver floors below
are NVIDIA's, as matrices/cuda.toml records them: CUDA 12.x from 525.60.13 (Windows 528.33) and
13.x from 580.65.06 (Windows 580.00) by minor-version compatibility; each toolkit's own floor
(12.1: 530.30.02 / 531.14, 12.6: 560.35.05, 13.0: 580.95.05, 13.2: 595.71.05 and on Windows
the family floor) for full support.
"""

from __future__ import annotations

import pytest
from packaging.version import Version

from provision.data.matrix import TorchVariant, load_matrix
from provision.host.profile import GpuInfo, HostProfile, NvidiaInfo
from provision.plan.compat import BF16_MIN_CC, cc_text, driver_cuda, driver_floor, driver_runs, has_kernels, supports_bf16

MATRIX = load_matrix()


def host(driver: str, *, os: str = "linux", cuda: str | None = None) -> HostProfile:
    return HostProfile(os=os, arch="x86_64", python=Version("3.11.9"), ram_bytes=64 * 10**9,
                       nvidia=NvidiaInfo(driver_version=driver, cuda_driver_version=Version(cuda) if cuda else None,
                                         gpus=()))


def gpu(cc: tuple[int, int], name: str = "GPU") -> GpuInfo:
    return GpuInfo(index=0, name=name, compute_capability=cc, memory_total_bytes=1, memory_free_bytes=1)


# --- driver ---------------------------------------------------------------------------------------


def test_driver_cuda_takes_nvmls_figure() -> None:
    assert driver_cuda(host("535.183.01", cuda="12.2"), MATRIX) == Version("12.2")
    assert driver_cuda(HostProfile(os="linux", arch="x86_64", python=Version("3.11.9"), ram_bytes=1), MATRIX) is None


@pytest.mark.parametrize(("driver", "os", "cuda"), [
    ("535.183.01", "linux", "12.1"),  # 12.1 needs 530.30.02; 12.4 needs 550.54.15
    ("531.0", "linux", "12.1"),
    ("531.0", "windows", "11.8"),  # Windows' 12.1 floor is 531.14
    ("581.0", "linux", "13.0"),  # 13.2 needs 595.71.05
    ("581.0", "windows", "13.2"),  # no Windows toolkit floor since CUDA 13: the family's 580.00 applies
    ("418.67", "linux", None),
])
def test_driver_cuda_is_derived_from_the_driver_when_nvml_did_not_say(driver: str, os: str, cuda: str | None) -> None:
    assert driver_cuda(host(driver, os=os), MATRIX) == (Version(cuda) if cuda else None)


def test_driver_runs_natively_by_compatibility_or_not_at_all() -> None:
    assert driver_runs(host("570.133.07", cuda="12.8"), MATRIX, Version("12.6")) == (
        True, True, "driver 570.133.07 supports CUDA 12.8 >= 12.6")
    assert driver_runs(host("535.183.01", cuda="12.2"), MATRIX, Version("12.6")) == (
        True, False, "driver 535.183.01 (CUDA 12.2) runs CUDA 12.6 builds through minor-version compatibility "
                     "(family floor 525.60.13)")
    # A refusal names the floor of the CUDA asked for, not "runs CUDA <= 11.4": 470 runs every 11.x build
    # (11.8 through minor-version compatibility), which such a sentence would deny.
    assert driver_runs(host("470.57.02", cuda="11.4"), MATRIX, Version("12.6")) == (
        False, False, "CUDA 12.6 needs driver >= 525.60.13, this host has 470.57.02")
    assert driver_runs(host("470.57.02", cuda="11.4"), MATRIX, Version("11.8"))[:2] == (True, False)
    runs, _native, why = driver_runs(host("535.183.01", cuda=None), MATRIX, Version("13.0"))
    assert not runs and why == "CUDA 13.0 needs driver >= 580.65.6, this host has 535.183.01"


@pytest.mark.parametrize(("os", "cuda", "floor"), [
    ("linux", "12.6", "525.60.13"),  # the family floor is below the toolkit's own 560.35.05
    ("linux", "12.3", "525.60.13"),  # no 12.3 toolkit row: the family floor alone
    ("linux", "13.2", "580.65.06"),
    ("windows", "12.8", "528.33"),
    ("windows", "13.0", "580.00"),
    ("linux", "14.0", None),  # a family the matrix does not know
    ("linux", "10.2", None),
])
def test_driver_floor(os: str, cuda: str, floor: str | None) -> None:
    assert driver_floor(os, MATRIX, Version(cuda)) == (Version(floor) if floor else None)


# --- kernels --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cc", "archs", "ptx", "native", "expected"),
    [
        ((8, 6), ["sm_80"], [], True, True),  # same major, higher minor runs the sm_80 cubin
        ((8, 0), ["sm_86"], [], True, False),  # a newer minor's cubin does not run on an older minor
        ((9, 0), ["sm_80", "sm_86"], [], True, False),  # no cubin crosses majors
        ((12, 0), ["sm_90"], ["sm_90"], True, True),  # PTX JIT-compiles forward
        ((12, 0), ["sm_90"], ["sm_90"], False, False),  # ... but not under minor-version compatibility
        ((7, 0), ["sm_75", "sm_80"], ["sm_75"], True, False),  # PTX never runs backward
        ((6, 1), ["sm_60", "sm_70"], [], True, True),
    ],
)
def test_kernel_rule(cc: tuple[int, int], archs: list[str], ptx: list[str], native: bool, expected: bool) -> None:
    variant = TorchVariant(name="cu128", cuda=Version("12.8"), platforms=("linux-x86_64",), archs=tuple(archs),
                           ptx=tuple(ptx))
    assert has_kernels(gpu(cc), variant, "linux-x86_64", can_jit=native)[0] is expected


def test_kernels_are_read_for_the_platform() -> None:
    """torch.toml lists other architectures for linux-aarch64 (cu130 there starts at sm_80)."""
    variant = TorchVariant(name="cu130", cuda=Version("13.0"), platforms=("linux-x86_64", "linux-aarch64"),
                           archs=("sm_75", "sm_80"), archs_by_platform={"linux-aarch64": ("sm_80", "sm_90")})
    t4 = gpu((7, 5), "Tesla T4")
    assert has_kernels(t4, variant, "linux-x86_64", can_jit=True) == (
        True, "Tesla T4 (sm_75) runs the sm_75 kernels in cu130")
    assert has_kernels(t4, variant, "linux-aarch64", can_jit=True) == (
        False, "cu130 has no kernels for Tesla T4 (sm_75); it has sm_80, sm_90")


def test_ptx_is_named_when_it_is_what_runs() -> None:
    variant = TorchVariant(name="cu128", cuda=Version("12.8"), platforms=("linux-x86_64",), archs=("sm_90",),
                           ptx=("sm_90",))
    assert has_kernels(gpu((12, 0), "RTX 5090"), variant, "linux-x86_64", can_jit=True) == (
        True, "RTX 5090 (sm_120) JIT-compiles the sm_90 PTX in cu128")


# --- bf16 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cc", "has"), [((7, 5), False), ((8, 0), True), ((8, 6), True), ((12, 0), True),
                                         ((6, 1), False)])
def test_bf16_from_ampere_on(cc: tuple[int, int], has: bool) -> None:
    assert supports_bf16(gpu(cc)) is has


def test_cc_text() -> None:
    assert cc_text(BF16_MIN_CC) == "8.0" and cc_text((12, 1)) == "12.1"
