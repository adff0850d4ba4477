"""provision.doctor.checks' rules, branch by branch, from facts built by hand (no torch, no GPU).

``tests/test_doctor.py`` runs whole diagnoses; this module pins the small rules they rest on:
what hides every device, what counts as a CPU build, which GPUs the model uses, how an
installed build becomes a matrix row, and each reason CUDA can be unavailable.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from provision.data.catalog import load_catalog
from provision.data.matrix import load_matrix
from provision.doctor.checks import (
    _arch_variant,
    _bnb_release,
    _hides_all,
    _is_cpu_build,
    _placed_gpus,
    _torch_cuda,
    base_version_or_none,
    check_cuda_available,
    version_or_none,
)
from provision.doctor.expected import Expected
from provision.doctor.facts import Facts
from provision.host.profile import HostProfile, load_host
from provision.plan.document import Preferences
from provision.plan.search import plan

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
MATRIX = load_matrix()
AUTOGLM = load_catalog(MATRIX.root / "models.toml").get("autoglm-phone-9b")


def host(name: str) -> HostProfile:
    return load_host(HOSTS / f"{name}.json")


A10G = host("linux-x86_64-a10g-driver535")
TWO_GPUS = host("linux-x86_64-2x-rtx4090-driver550")
CPU_ONLY = host("linux-x86_64-cpu-only-32gb")


def torch_facts(version: str = "2.14.1+cu126", cuda: str | None = "12.6", **extra: Any) -> dict[str, Any]:
    return {"version": version, "cuda": cuda, "available": False, "arch_list": ["sm_80", "sm_86"],
            "device_count": 0, "error": None, "cuda_error": None, **extra}


def facts(h: HostProfile, torch: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Facts:
    return Facts(host=h, packages={}, torch=torch_facts() if torch is None else torch, environ=environ or {},
                 python=str(h.python))


def expected(h: HostProfile = A10G, **changes: Any) -> Expected:
    planned = plan(h, MATRIX, AUTOGLM, Preferences(python=h.python_minor, engine="transformers"))  # as doctor plans
    return replace(Expected.from_plan(planned, "planned for this host"), **changes)


# ---------------------------------------------------------------- CUDA_VISIBLE_DEVICES


@pytest.mark.parametrize(("value", "hides"), [
    ("", True),  # empty: CUDA sees nothing
    ("   ", True),
    ("-1", True),  # the usual way to hide every GPU
    ("-1,0", True),  # CUDA stops at the first invalid entry
    (",0", True),
    ("none", True),  # no leading integer reads as -1
    ("0", False),
    ("1,0", False),
    (" 2 , 3", False),
    ("0abc", False),  # a leading integer is enough
    ("GPU-8f3a1b2c", False),  # UUIDs are taken as given
    ("MIG-1a2b3c4d", False),
])
def test_hides_all(value: str, hides: bool) -> None:
    assert _hides_all(value) is hides


# ---------------------------------------------------------------- what the installed torch is


@pytest.mark.parametrize(("torch", "cpu"), [
    ({"version": "2.9.1+cpu", "cuda": None}, True),
    ({"version": "2.9.1", "cuda": None}, True),  # macOS / plain CPU wheel
    ({"version": "2.9.1+cpu", "cuda": "12.8"}, True),  # the local label wins over a stray CUDA string
    ({"version": "2.9.1+cu128", "cuda": "12.8"}, False),
    ({"version": "2.9.1", "cuda": "12.8"}, False),  # PyPI's CUDA build has no label
])
def test_is_cpu_build(torch: dict[str, Any], cpu: bool) -> None:
    assert _is_cpu_build(torch) is cpu


@pytest.mark.parametrize(("cuda", "want"), [
    ("12.6", Version("12.6")), ("12.8.1", Version("12.8")), ("13", Version("13.0")), (None, None), ("", None),
    ("not-a-version", None),
])
def test_torch_cuda_is_major_minor(cuda: str | None, want: Version | None) -> None:
    assert _torch_cuda({"cuda": cuda}) == want


def test_versions_parse_or_are_none() -> None:
    assert version_or_none("2.9.1+cu128") == Version("2.9.1+cu128")
    assert version_or_none(None) is None and version_or_none("x.y") is None
    assert base_version_or_none("2.9.1+cu128") == Version("2.9.1")  # matrix specifiers ignore local labels
    assert base_version_or_none(None) is None and base_version_or_none("") is None


def test_arch_variant_reads_kernels_and_ptx_and_skips_junk() -> None:
    row = _arch_variant({"cuda": "12.8", "arch_list": ["sm_80", "sm_90", "compute_90", "sm_x", 7]}, "linux-x86_64")
    assert (row.name, row.cuda, row.platforms) == ("cu128", Version("12.8"), ("linux-x86_64",))
    assert (row.archs, row.ptx) == (("sm_80", "sm_90"), ("sm_90",))
    unknown = _arch_variant({"cuda": None, "arch_list": None}, "linux-x86_64")
    assert (unknown.name, unknown.cuda, unknown.archs, unknown.ptx) == ("cuda", None, (), ())


def test_bnb_release_matches_exactly_then_by_minor() -> None:
    newest = MATRIX.bitsandbytes[0]
    assert _bnb_release(MATRIX, newest.version) is newest
    later_patch = Version(f"{newest.version.major}.{newest.version.minor}.99")
    assert _bnb_release(MATRIX, later_patch) is newest  # the matrix keeps the newest patch of each minor
    assert _bnb_release(MATRIX, Version("0.1.0")) is None


# ---------------------------------------------------------------- which GPUs the model uses


def test_placed_gpus() -> None:
    f = facts(TWO_GPUS)
    everything = TWO_GPUS.gpus
    assert _placed_gpus(f, None) == everything  # no plan: every GPU matters
    assert _placed_gpus(f, expected(TWO_GPUS, gpus=(1,))) == (everything[1],)
    assert _placed_gpus(f, expected(TWO_GPUS, gpus=(0, 1))) == everything
    assert _placed_gpus(f, expected(TWO_GPUS, gpus=(7,))) == everything  # planned elsewhere: judge all
    assert _placed_gpus(f, expected(TWO_GPUS, gpus=())) == everything
    assert _placed_gpus(facts(CPU_ONLY), None) == ()


# ---------------------------------------------------------------- why CUDA is unavailable, each reason


def _no_driver(h: HostProfile) -> HostProfile:
    return replace(h, nvidia=None)


def _no_gpus(h: HostProfile) -> HostProfile:
    assert h.nvidia is not None
    return replace(h, nvidia=replace(h.nvidia, gpus=()))


@pytest.mark.parametrize(("h", "torch", "environ", "want", "status", "message", "fix"), [
    # no NVIDIA driver at all
    (_no_driver(A10G), None, {"CUDA_VISIBLE_DEVICES": "-1"}, None, "fail", "CUDA_VISIBLE_DEVICES='-1' hides every GPU",
     "unset CUDA_VISIBLE_DEVICES"),
    (_no_driver(A10G), None, {}, "cuda", "fail", "no NVIDIA driver on this host", "install the NVIDIA driver"),
    (_no_driver(A10G), None, {"CUDA_VISIBLE_DEVICES": "0"}, None, "skip", "no NVIDIA driver on this host", None),
    # a driver, but CUDA sees no device
    (_no_gpus(A10G), None, {"CUDA_VISIBLE_DEVICES": "0"}, None, "fail", "hides every GPU from CUDA",
     "unset CUDA_VISIBLE_DEVICES"),
    (A10G, None, {"CUDA_VISIBLE_DEVICES": "-1"}, None, "fail", "hides every GPU from CUDA", "unset CUDA_VISIBLE_DEVICES"),
    (_no_gpus(A10G), None, {}, None, "fail", "is loaded but reports no usable GPU", "nvidia-smi"),
    # GPUs visible: the build or the driver
    (A10G, torch_facts("2.9.1+cpu", None), {}, None, "fail", "is a CPU-only build", "provision plan  # shows"),
    (A10G, torch_facts("2.9.1+cpu", None), {}, "cuda", "fail", "is a CPU-only build", "pip install --index-url"),
    (host("linux-x86_64-t4-driver470"), torch_facts("2.9.1+cu128", "12.8"), {}, None, "fail",
     "the driver is too old for torch's CUDA 12.8", "# or update the NVIDIA driver"),
    (A10G, torch_facts(cuda_error="RuntimeError: CUDA unknown error"), {}, None, "fail",
     "failed to initialise: RuntimeError: CUDA unknown error", "--gpus all"),
    (A10G, torch_facts(cuda="garbage"), {}, None, "fail", "but CUDA failed to initialise", "--gpus all"),
])
def test_why_cuda_is_unavailable(h: HostProfile, torch: dict[str, Any] | None, environ: dict[str, str],
                                 want: str | None, status: str, message: str, fix: str | None) -> None:
    exp = expected(device=want) if want else None
    finding = check_cuda_available(facts(h, torch, environ), MATRIX, exp)
    assert finding.check == "torch.cuda_available"
    assert (finding.status, finding.evidence["available"]) == (status, False)
    assert message in finding.message, finding.message
    assert (finding.fix is None) if fix is None else (fix in (finding.fix or "")), finding.fix
    if "CUDA_VISIBLE_DEVICES" in environ:
        assert finding.evidence["CUDA_VISIBLE_DEVICES"] == environ["CUDA_VISIBLE_DEVICES"]


def test_cuda_available_is_ok_and_unusable_torch_is_skipped() -> None:
    ok = check_cuda_available(facts(A10G, torch_facts(available=True, device_count=1)), MATRIX, None)
    assert ok.status == "ok" and ok.message == "CUDA is available: 1 device(s)"
    broken = check_cuda_available(facts(A10G, torch_facts(error="ImportError: x")), MATRIX, None)
    assert broken.status == "skip" and "see the torch check" in broken.message
    missing = check_cuda_available(Facts(host=A10G, packages={}, torch=None), MATRIX, None)
    assert missing.status == "skip"
