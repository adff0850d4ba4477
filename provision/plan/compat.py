"""Compatibility rules between a host, a torch build and a GPU: pure functions over the matrix.

The planner uses them to choose; ``provision doctor`` uses the same ones to judge an environment
that already exists, so both always agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from packaging.version import Version

from provision.vocab import parse_arch

if TYPE_CHECKING:
    from provision.data import CudaToolkit, Matrix, TorchVariant
    from provision.host import GpuInfo, HostProfile

__all__ = ["BF16_MIN_CC", "cc_text", "compatibility_warning", "driver_cuda", "driver_floor", "driver_runs",
           "has_kernels", "supports_bf16"]

#: bf16 tensor cores arrived with Ampere (sm_80).
BF16_MIN_CC = (8, 0)


def cc_text(cc: tuple[int, int]) -> str:
    """``(7, 5)`` -> ``"7.5"``, as compute capabilities are written."""
    return f"{cc[0]}.{cc[1]}"


def driver_cuda(host: HostProfile, matrix: Matrix) -> Version | None:
    """The CUDA version the driver fully supports: NVML's figure, else derived from the driver."""
    nv = host.nvidia
    if nv is None:
        return None
    if nv.cuda_driver_version is not None:
        return nv.cuda_driver_version
    driver = Version(nv.driver_version)
    best = None
    for tk in matrix.toolkits:
        floor = _toolkit_floor(matrix, tk, host.os)
        if floor is not None and driver >= floor:
            best = tk.version
    return best


def _toolkit_floor(matrix: Matrix, tk: CudaToolkit, os_name: str) -> Version | None:
    if os_name != "windows":
        return tk.linux_min_driver
    if tk.windows_min_driver is not None:
        return tk.windows_min_driver
    family = matrix.family(tk.version.major)
    return family.windows_min_driver if family else None


def driver_runs(host: HostProfile, matrix: Matrix, cuda: Version) -> tuple[bool, bool, str]:
    """Whether the host driver runs a build for ``cuda``.

    Returns (runs, native, why). ``native`` is False when it relies on minor-version
    compatibility (the family floor), which runs the build but cannot JIT newer PTX.
    """
    nv = host.nvidia
    assert nv is not None
    driver = Version(nv.driver_version)
    own = driver_cuda(host, matrix)
    if own is not None and own >= cuda:
        return True, True, f"driver {nv.driver_version} supports CUDA {own} >= {cuda}"
    family = matrix.family(cuda.major)
    floor = family.min_driver(host.os) if family is not None else None
    if floor is not None and driver >= floor:
        return True, False, (
            f"driver {nv.driver_version} (CUDA {own}) runs CUDA {cuda} builds through minor-version "
            f"compatibility (family floor {floor})"
        )
    # Not "runs CUDA <= own": a driver runs every build of its own CUDA major through minor-version
    # compatibility, so the floor of the CUDA asked for is the one true bound to name.
    need = driver_floor(host.os, matrix, cuda)
    return False, False, f"CUDA {cuda} needs driver >= {need}, this host has {nv.driver_version}"


def compatibility_warning(subject: str, os_name: str, matrix: Matrix, cuda: Version) -> str:
    """The warning for a build the driver runs only through minor-version compatibility.

    The variant's (or engine's) reason already says which driver runs which CUDA; this says what it
    costs and what removes it, without repeating that sentence.
    """
    tk = matrix.toolkit(cuda)
    native = _toolkit_floor(matrix, tk, os_name) if tk is not None else None
    fix = f"a driver >= {native} runs CUDA {cuda} natively" if native else \
        f"a driver that supports CUDA {cuda} natively removes this"
    return f"{subject} runs only through CUDA minor-version compatibility, which cannot JIT-compile newer PTX; {fix}"


def driver_floor(os_name: str, matrix: Matrix, cuda: Version) -> Version | None:
    """The oldest driver that runs ``cuda`` builds at all: the lower of the toolkit's own floor and its
    family's (minor-version compatibility); None when the matrix knows neither."""
    family = matrix.family(cuda.major)
    tk = matrix.toolkit(cuda)
    floors = [family.min_driver(os_name) if family is not None else None,
              _toolkit_floor(matrix, tk, os_name) if tk is not None else None]
    return min((f for f in floors if f is not None), default=None)


def has_kernels(gpu: GpuInfo, variant: TorchVariant, platform: str, *, can_jit: bool) -> tuple[bool, str]:
    """An sm_XY cubin runs on the same major with equal or higher minor; PTX JITs forward if allowed."""
    major, minor = gpu.compute_capability
    archs = variant.archs_for(platform)
    for arch in archs:
        a_major, a_minor = parse_arch(arch)
        if a_major == major and a_minor <= minor:
            return True, f"{gpu.name} ({gpu.sm}) runs the {arch} kernels in {variant.name}"
    if can_jit:
        for arch in variant.ptx_for(platform):
            if parse_arch(arch) <= (major, minor):
                return True, f"{gpu.name} ({gpu.sm}) JIT-compiles the {arch} PTX in {variant.name}"
    return False, f"{variant.name} has no kernels for {gpu.name} ({gpu.sm}); it has {', '.join(archs)}"


def supports_bf16(gpu: GpuInfo) -> bool:
    return gpu.compute_capability >= BF16_MIN_CC
