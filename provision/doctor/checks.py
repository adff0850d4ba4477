"""The doctor's torch and GPU checks, and ``Finding``: pure functions of gathered facts.

Pure so that every broken environment (CPU torch on a GPU host, a driver too old for
torch's CUDA, a GPU without kernels...) can be built by hand in a test. The
compatibility rules are ``provision.plan.compat``'s, so the doctor and the planner agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from packaging.version import InvalidVersion, Version

from provision.data import TorchVariant
from provision.doctor.expected import torch_fix
from provision.host.parse import leading_int
from provision.plan.compat import driver_runs, has_kernels, supports_bf16
from provision.vocab import parse_arch

if TYPE_CHECKING:
    from provision.data import BnbRelease, Matrix
    from provision.doctor.expected import Expected
    from provision.doctor.facts import Facts
    from provision.host import GpuInfo

__all__ = [
    "STATUSES",
    "Finding",
    "check_bf16",
    "check_bitsandbytes",
    "check_cuda_available",
    "check_torch",
    "check_torch_arch",
    "check_torch_cuda_build",
]

STATUSES = ("ok", "warn", "fail", "skip")


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


def version_or_none(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def base_version_or_none(text: Any) -> Version | None:
    """``2.8.0`` for ``2.8.0+cu128``: specifiers in the matrix ignore local labels."""
    v = version_or_none(str(text)) if text else None
    return Version(v.base_version) if v is not None else None


def _cc(cc: tuple[int, int]) -> str:
    return "{}.{}".format(*cc)


def _torch_usable(facts: Facts) -> bool:
    return facts.torch is not None and not facts.torch.get("error")


def _torch_unusable(name: str) -> Finding:
    return Finding(check=name, status="skip", message="torch is not usable (see the torch check)")


def _is_cpu_build(torch: Mapping[str, Any]) -> bool:
    return not torch.get("cuda") or str(torch.get("version", "")).endswith("+cpu")


def _torch_cuda(torch: Mapping[str, Any]) -> Version | None:
    v = version_or_none(str(torch.get("cuda"))) if torch.get("cuda") else None
    return Version(f"{v.major}.{v.minor}") if v is not None else None


def _gpu_names(gpus: Sequence[GpuInfo]) -> str:
    return ", ".join(f"GPU {g.index} {g.name} (cc {g.cc_text})" for g in gpus)


def _placed_gpus(facts: Facts, expected: Expected | None) -> tuple[GpuInfo, ...]:
    gpus = facts.host.gpus
    if expected is not None and expected.gpus:
        placed = tuple(g for g in gpus if g.index in expected.gpus)
        return placed or gpus
    return gpus


def check_torch(facts: Facts, expected: Expected | None) -> Finding:
    """torch installed and importable."""
    fix = torch_fix(expected)
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
    name = "torch.cuda_build"
    if not _torch_usable(facts):
        return _torch_unusable(name)
    assert facts.torch is not None
    version = str(facts.torch.get("version"))
    evidence: dict[str, Any] = {"torch": version, "torch_cuda": facts.torch.get("cuda")}
    host = facts.host
    if host.nvidia is None or not host.gpus:
        what = "a CPU build" if _is_cpu_build(facts.torch) else f"built for CUDA {facts.torch.get('cuda')}"
        return Finding(check=name, status="ok", evidence=evidence,
                       message=f"torch {version} is {what}; this host has no usable NVIDIA GPU, so it runs on CPU")
    evidence.update(driver=host.nvidia.driver_version, gpus=_gpu_names(host.gpus))
    fix = torch_fix(expected)
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
        return Finding(check=name, status="fail", evidence=evidence, fix=fix + "  # or update the NVIDIA driver",
                       message=f"torch {version} is built for CUDA {cuda}, which this driver cannot run: {why}")
    if not native:
        return Finding(check=name, status="warn", evidence=evidence,
                       message=f"torch {version} (CUDA {cuda}) runs through minor-version compatibility: {why}; "
                               "PTX cannot be JIT-compiled",
                       fix=f"update the NVIDIA driver to one that supports CUDA {cuda} natively (see matrices/cuda.toml)")
    return Finding(check=name, status="ok", evidence=evidence, message=f"torch {version} (CUDA {cuda}): {why}")


def _arch_variant(torch: Mapping[str, Any], platform: str) -> TorchVariant:
    """The installed build as a matrix row, so ``has_kernels`` judges it like a planned one."""
    archs: list[str] = []
    ptx: list[str] = []
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
    native = driver_runs(host, matrix, variant.cuda)[1] if variant.cuda is not None else True
    notes: list[str] = []
    missing: list[str] = []
    for gpu in host.gpus:
        ok, why = has_kernels(gpu, variant, host.platform, can_jit=native)
        (notes if ok else missing).append(why)
    evidence = {"arch_list": arch_list, "gpus": _gpu_names(host.gpus)}
    if missing:
        return Finding(check=name, status="fail", evidence=evidence, fix=torch_fix(expected),
                       message=f"torch {facts.torch.get('version')} has no kernels for this GPU: {'; '.join(missing)}")
    return Finding(check=name, status="ok", evidence=evidence, message="; ".join(notes))


def _hides_all(value: str) -> bool:
    """True when CUDA_VISIBLE_DEVICES certainly hides every device: empty, or starting with an invalid entry."""
    first = value.split(",")[0].strip()
    if not first:
        return True
    if first.startswith(("GPU-", "MIG-")):
        return False
    return leading_int(first) < 0  # no leading integer reads as -1, as CUDA reads it


def check_cuda_available(facts: Facts, matrix: Matrix, expected: Expected | None) -> Finding:
    """``torch.cuda.is_available()``, and when False, the reason."""
    name = "torch.cuda_available"
    if not _torch_usable(facts):
        return _torch_unusable(name)
    assert facts.torch is not None
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
    return _why_no_cuda(facts, matrix, expected, evidence)


def _hidden(cvd: str, evidence: dict[str, Any], what: str) -> Finding:
    return Finding(check="torch.cuda_available", status="fail", evidence=evidence, fix="unset CUDA_VISIBLE_DEVICES",
                   message=f"CUDA_VISIBLE_DEVICES={cvd!r} hides every {what}")


def _why_no_cuda(facts: Facts, matrix: Matrix, expected: Expected | None, evidence: dict[str, Any]) -> Finding:
    """The most specific reason CUDA is unavailable, most fixable first."""
    assert facts.torch is not None
    name, host, cvd = "torch.cuda_available", facts.host, facts.environ.get("CUDA_VISIBLE_DEVICES")
    if host.nvidia is None:
        if cvd is not None and _hides_all(cvd):
            return _hidden(cvd, evidence, "GPU")
        want_cuda = expected is not None and expected.device == "cuda"
        return Finding(check=name, status="fail" if want_cuda else "skip", evidence=evidence,
                       message="no NVIDIA driver on this host: CUDA is not available, the model runs on CPU",
                       fix=("install the NVIDIA driver (nvidia-smi must work), or plan for CPU: provision plan "
                            "--device cpu") if want_cuda else None)
    if cvd is not None and (not host.gpus or _hides_all(cvd)):
        return _hidden(cvd, evidence, "GPU from CUDA")
    if not host.gpus:
        return Finding(check=name, status="fail", evidence=evidence, fix="nvidia-smi  # check the driver sees a GPU",
                       message=f"NVIDIA driver {host.nvidia.driver_version} is loaded but reports no usable GPU")
    if _is_cpu_build(facts.torch):
        return Finding(check=name, status="fail", evidence=evidence, fix=torch_fix(expected),
                       message=f"torch {facts.torch.get('version')} is a CPU-only build "
                               f"(torch.version.cuda is {facts.torch.get('cuda')!r})")
    cuda = _torch_cuda(facts.torch)
    if cuda is not None:
        runs, _native, why = driver_runs(host, matrix, cuda)
        if not runs:
            return Finding(check=name, status="fail", evidence=evidence,
                           fix=torch_fix(expected) + "  # or update the NVIDIA driver",
                           message=f"the driver is too old for torch's CUDA {cuda}: {why}")
    return Finding(check=name, status="fail", evidence=evidence,
                   fix="nvidia-smi  # then check /dev/nvidia* permissions; in a container run with --gpus all",
                   message="torch is a CUDA build and the driver looks right, but CUDA failed to initialise"
                           + (f": {facts.torch['cuda_error']}" if facts.torch.get("cuda_error") else ""))


def check_bf16(facts: Facts, expected: Expected | None) -> Finding:
    """bf16 needs compute capability >= 8.0 on every GPU the model uses."""
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
    version = version_or_none(version_text)
    rel = _bnb_release(matrix, version) if version else None
    if rel is None:
        return Finding(check=name, status="warn" if needed else "skip", evidence=evidence, fix=fix if needed else None,
                       message=f"bitsandbytes {version_text} is not in matrices/bitsandbytes.toml; cannot check it")
    gpus = _placed_gpus(facts, expected)
    if not _torch_usable(facts) or not gpus:
        return Finding(check=name, status=bad, evidence=evidence, fix=None if not needed else fix,
                       message=f"bitsandbytes {version_text} is installed, but int8 / 4-bit need torch with an "
                               "NVIDIA GPU here")
    problems, support = _bnb_problems(facts, rel, gpus, expected, evidence)
    if problems:
        return Finding(check=name, status=bad, evidence=evidence, fix=fix,
                       message=f"bitsandbytes {version_text}: {'; '.join(problems)} ({support})")
    return Finding(check=name, status="ok", evidence=evidence, message=f"bitsandbytes {version_text}: {support}")


def _bnb_problems(facts: Facts, rel: BnbRelease, gpus: Sequence[GpuInfo], expected: Expected | None,
                  evidence: dict[str, Any]) -> tuple[list[str], str]:
    """What stops this bitsandbytes release working with the installed torch and GPUs (adds to ``evidence``)."""
    assert facts.torch is not None
    cuda = _torch_cuda(facts.torch)
    problems: list[str] = []
    torch_version = base_version_or_none(facts.torch.get("version"))
    if torch_version is not None and torch_version not in rel.torch:
        problems.append(f"needs torch {rel.torch}, installed {facts.torch.get('version')}")
    if cuda is None:
        problems.append("torch is a CPU build; bitsandbytes int8 / 4-bit need a CUDA torch")
    elif cuda not in rel.cuda_libs:
        problems.append(f"ships no library for torch's CUDA {cuda} (has {', '.join(map(str, rel.cuda_libs))})")
    int8 = all(g.compute_capability >= rel.min_cc_int8 for g in gpus)
    four = all(g.compute_capability >= rel.min_cc_4bit for g in gpus)
    evidence.update(int8=int8, four_bit=four, gpus=_gpu_names(gpus), min_cc_int8=_cc(rel.min_cc_int8),
                    min_cc_4bit=_cc(rel.min_cc_4bit), torch_cuda=str(cuda) if cuda else None)
    if expected is not None and expected.precision == "int8" and not int8:
        problems.append(f"int8 needs compute capability >= {evidence['min_cc_int8']}")
    if expected is not None and expected.precision == "nf4" and not four:
        problems.append(f"4-bit needs compute capability >= {evidence['min_cc_4bit']}")
    return problems, f"int8 {'yes' if int8 else 'no'}, 4-bit {'yes' if four else 'no'} on {_gpu_names(gpus)}"
