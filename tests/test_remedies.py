"""No viable plan: each kind of rejection, from a constructed host, gives its message and its remedies.

The planner's ``Search`` is captured on its way to ``remedies`` so that the typed rejection (rule,
stage, numbers) is checked along with the text. Thresholds a remedy names come from the matrix:
the tests read direct facts from it (a family's driver floor, the newest bitsandbytes' floors), and
a changed matrix changes the remedy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from packaging.version import Version

import provision.plan.search
from provision.data.catalog import load_catalog, resolve_model
from provision.data.matrix import Matrix, load_matrix
from provision.errors import NoViablePlan
from provision.host.profile import GpuInfo, HostProfile, NvidiaInfo
from provision.plan.budget import ContextGoal, gb, ram_needed
from provision.plan.document import Preferences
from provision.plan.memory import estimate_memory
from provision.plan.rejections import Rejection, Rule, Search, Stage
from provision.plan.remedies import remedies
from provision.plan.search import plan
from provision.plan.workload import workload_for

MATRIX = load_matrix()
AUTOGLM = resolve_model("autoglm-phone-9b", load_catalog())
FAMILY_12, FAMILY_13 = MATRIX.family(12), MATRIX.family(13)
NEWEST_BNB = MATRIX.bitsandbytes[0]
KERNELS = ("use a GPU whose architecture current torch builds include (compute capability >= 7.5 for CUDA 13 "
           "builds), or --device cpu")  # torch.toml: torch 2.15.0's CUDA 13 builds start at sm_75 on x86_64
PRECISION = "choose another --precision, or leave it out"
#: The catalog's workload at the default context: one 5 MP phone screenshot, budgeted in every estimate.
SCREEN = workload_for(AUTOGLM, context_tokens=4096).image_tokens
#: A GPU the model fits on in bf16 with that screenshot, for the tests of other rules.
ROOMY = ("NVIDIA A100-SXM4-40GB", "8.0", 39.0)


def box(*gpus: tuple[str, str, float], driver: str = "570.133.07", cuda: str | None = "12.8", os: str = "linux",
        arch: str = "x86_64", ram_gb: float = 64) -> HostProfile:
    infos = tuple(GpuInfo(index=i, name=name, compute_capability=(int(cc[0]), int(cc[2])),
                          memory_total_bytes=int(size * 1e9) + 500_000_000, memory_free_bytes=int(size * 1e9))
                  for i, (name, cc, size) in enumerate(gpus))
    return HostProfile(os=os, arch=arch, python=Version("3.12.3"), ram_bytes=int(ram_gb * 1e9),
                       nvidia=NvidiaInfo(driver_version=driver, cuda_driver_version=Version(cuda) if cuda else None,
                                         gpus=infos))


def cpu_box(ram_gb: float = 64, *, os: str = "linux", arch: str = "x86_64") -> HostProfile:
    return HostProfile(os=os, arch=arch, python=Version("3.11.9"), ram_bytes=int(ram_gb * 1e9))


NoPlan = Callable[..., tuple[NoViablePlan, Search]]
#: The in-process stack's search at 4,096 tokens, explicitly (never lowered): the sizes below are worked out
#: for it. The default context's no-plan is in tests/test_plan.py, the engines' in tests/test_engine.py.
IN_PROCESS: dict[str, Any] = {"engine": "transformers", "context_tokens": 4096}


@pytest.fixture
def no_plan(monkeypatch: pytest.MonkeyPatch) -> NoPlan:
    """Plan and expect no plan; return the error and the Search the planner handed to ``remedies``."""
    seen: list[Search] = []

    def spy(host: HostProfile, matrix: Matrix, model: Any, prefs: Preferences, search: Search,
            goal: ContextGoal) -> tuple[str, list[str]]:
        seen.append(search)
        return remedies(host, matrix, model, prefs, search, goal)

    monkeypatch.setattr(provision.plan.search, "remedies", spy)

    def run(host: HostProfile, *, matrix: Matrix = MATRIX, model: Any = AUTOGLM, **prefs: Any) -> tuple[
            NoViablePlan, Search]:
        with pytest.raises(NoViablePlan) as info:
            plan(host, matrix, model, Preferences(**{**IN_PROCESS, **prefs}))
        return info.value, seen[-1]

    return run


def _gpu_memory_remedies(host: HostProfile, smallest: tuple[str, str] = ("nf4", "cuda")) -> list[str]:
    """What every GPU box that ran out of room is told, sized by the estimator (tests/test_memory.py)."""
    need = estimate_memory(AUTOGLM.config, precision=smallest[0], context_tokens=4096, device="cuda",
                           image_tokens=SCREEN).total
    cpu = estimate_memory(AUTOGLM.config, precision="bf16", context_tokens=4096, device="cpu",
                          image_tokens=SCREEN).total
    return ["free GPU memory used by other processes",
            f"use a GPU with at least {gb(need)} free ({smallest[0]}), or add a second GPU to split over",
            "lower --context (now 4,096)",
            f"run on CPU with --device cpu (needs {gb(ram_needed(cpu))} of RAM in bf16; this host has "
            f"{gb(host.ram_bytes)})"]


# --- builds that were tried on a placement that fits: the latest stage binds ----------------------


@pytest.mark.parametrize("os", ["linux", "windows"])
def test_driver(no_plan: NoPlan, os: str) -> None:
    h = box(("Tesla T4", "7.5", 15.0), driver="418.67", cuda="10.1", os=os)
    exc, search = no_plan(h)
    binding = search.binding
    assert binding is not None and (binding.rule, binding.stage) == (Rule.DRIVER, Stage.DRIVER)
    floor_13 = FAMILY_13.min_driver(os)  # below the 13.2 toolkit's own floor, so the family's
    assert (binding.driver, binding.cuda, binding.driver_floor) == (Version("418.67"), Version("13.2"), floor_13)
    assert exc.message == f"CUDA 13.2 needs driver >= {floor_13}, this host has 418.67"
    assert exc.remedies == (f"update the NVIDIA driver (>= {FAMILY_12.min_driver(os)} runs CUDA 12 builds; "
                            f">= {floor_13} runs CUDA 13 builds)", *_gpu_memory_remedies(h))


def test_the_driver_remedy_follows_cuda_toml(no_plan: NoPlan) -> None:
    families = tuple(replace(f, linux_min_driver=Version("590.1")) if f.major == 13 else f for f in MATRIX.families)
    exc, _ = no_plan(box(("Tesla T4", "7.5", 15.0), driver="418.67", cuda="10.1"),
                     matrix=replace(MATRIX, families=families))
    assert exc.remedies[0] == f"update the NVIDIA driver (>= {FAMILY_12.linux_min_driver} runs CUDA 12 builds; " \
                              ">= 590.1 runs CUDA 13 builds)"


def test_kernels(no_plan: NoPlan) -> None:
    h = box(("Tesla K40", "3.5", 11.4), driver="535.183.01", cuda="12.2")
    exc, search = no_plan(h)
    binding = search.binding
    assert binding is not None and (binding.rule, binding.stage) == (Rule.KERNELS, Stage.KERNELS)
    assert (binding.gpu, binding.compute_capability, binding.cc_floor, binding.variant) == (
        "Tesla K40", (3, 5), (5, 0), "cu126")  # cu126's oldest cubin is sm_50
    assert exc.message == ("torch 2.14.1 cu126 has no kernels for Tesla K40 (sm_35); "
                           "it has sm_50, sm_60, sm_70, sm_75, sm_80, sm_86, sm_90")
    assert exc.remedies == (KERNELS, *_gpu_memory_remedies(h))


def test_the_kernels_remedy_follows_torch_toml(no_plan: NoPlan) -> None:
    newest = MATRIX.torch[0]
    variants = tuple(replace(v, archs=("sm_80", "sm_90")) if v.cuda else v for v in newest.variants)
    matrix = replace(MATRIX, torch=(replace(newest, variants=variants), *MATRIX.torch[1:]))
    exc, _ = no_plan(box(("Tesla K40", "3.5", 30.0), driver="580.65.06", cuda="13.0"), matrix=matrix)
    assert exc.remedies[0] == KERNELS.replace(">= 7.5", ">= 8.0")


def test_a_jetson_under_l4t(no_plan: NoPlan) -> None:
    h = HostProfile(os="linux", arch="aarch64", python=Version("3.10.12"), ram_bytes=64 * 10**9,
                    nvidia=NvidiaInfo(driver_version="540.4.0", cuda_driver_version=Version("12.6"), gpus=(
                        GpuInfo(index=0, name="Orin (nvgpu)", compute_capability=(8, 7),
                                memory_total_bytes=64 * 10**9, memory_free_bytes=60 * 10**9),)))
    exc, search = no_plan(h)
    assert search.binding is not None and search.binding.rule is Rule.TEGRA
    assert search.binding.compute_capability == (8, 7)
    assert exc.message == ("Orin (nvgpu) (cc 8.7) is a Jetson GPU under L4T; PyTorch's aarch64 CUDA wheels are "
                           "built for SBSA servers and do not run on it")
    assert exc.remedies == ("install NVIDIA's JetPack builds of torch for Jetson (provision plans PyTorch's own "
                            "wheels only), or run on the CPU with --device cpu",)


def test_bitsandbytes_without_precision(no_plan: NoPlan) -> None:
    h = box(("Tesla K80", "3.7", 11.4), driver="470.239.06", cuda="11.4")
    exc, search = no_plan(h)
    binding = search.binding
    assert binding is not None and (binding.rule, binding.stage) == (Rule.BITSANDBYTES, Stage.BITSANDBYTES)
    # The GPU is the limit, named with the release whose floor is lowest (5.0), the newest of those (0.47.0)
    assert (binding.bitsandbytes, binding.compute_capability, binding.cc_floor) == (Version("0.47.0"), (3, 7), (5, 0))
    assert exc.message == "bitsandbytes 0.47.0 nf4 needs compute capability >= 5.0; Tesla K80 is 3.7"
    floors = (f"{NEWEST_BNB.min_cc_4bit[0]}.{NEWEST_BNB.min_cc_4bit[1]}",
              f"{NEWEST_BNB.min_cc_int8[0]}.{NEWEST_BNB.min_cc_int8[1]}")
    assert floors == ("6.0", "7.5")  # bitsandbytes.toml, the newest release
    assert exc.remedies == (f"use a GPU that bitsandbytes supports (compute capability >= {floors[0]} for 4-bit, "
                            f">= {floors[1]} for int8), or --device cpu", *_gpu_memory_remedies(h))


def test_bitsandbytes_with_precision(no_plan: NoPlan) -> None:
    exc, search = no_plan(box(("Tesla V100-SXM2-16GB", "7.0", 15.5)), precision="int8")
    assert search.binding is not None and search.binding.rule is Rule.BITSANDBYTES
    assert (search.binding.precision, search.binding.compute_capability, search.binding.cc_floor) == (
        "int8", (7, 0), (7, 5))
    # every release needs 7.5 for int8: the one named is the newest, the one an nf4 plan pins
    assert exc.message == f"bitsandbytes {NEWEST_BNB.version} int8 needs compute capability >= 7.5; Tesla V100-SXM2-16GB is 7.0"
    assert exc.remedies == ("choose a precision the GPU supports, or leave --precision out",)


def test_transformers(no_plan: NoPlan) -> None:
    needs_newer = replace(AUTOGLM, min_transformers=Version("5.24.0"))
    exc, search = no_plan(box(ROOMY), model=needs_newer, torch_version=Version("2.4.0"),
                          python="3.11")
    assert search.binding is not None and (search.binding.rule, search.binding.stage) == (
        Rule.TRANSFORMERS, Stage.COMPANIONS)
    assert exc.message == "no transformers >= 5.24.0 in the matrix supports torch 2.4.0 on Python 3.11"
    assert exc.remedies == ("pick a newer torch (--torch) that transformers >= 5.24.0 supports",)


def test_python_for_transformers(no_plan: NoPlan) -> None:
    exc, search = no_plan(box(ROOMY), python="3.8")
    assert search.binding is not None and search.binding.rule is Rule.TRANSFORMERS_PYTHON
    assert (search.binding.python, search.binding.python_floor) == ("3.8", ">=3.10.0")  # companions.toml
    assert exc.message == "transformers >= 5.0.0 needs Python >=3.10.0, not Python 3.8"
    assert exc.remedies == ("use Python >=3.10.0 (--python X.Y plans for another interpreter)",)


# --- rejected before any build was tried ---------------------------------------------------------


def test_python_without_torch_wheels(no_plan: NoPlan) -> None:
    exc, search = no_plan(box(ROOMY), python="3.16")
    assert search.binding is None
    rejected = search.of(Rule.PYTHON)
    assert {r.torch for r in rejected} == {r.version for r in MATRIX.torch}
    minors = sorted({p for r in MATRIX.torch for p in r.pythons}, key=lambda v: tuple(map(int, v.split("."))))
    assert exc.message == rejected[0].text == (f"torch {MATRIX.torch[0].version} has no wheels for Python 3.16 "
                                               f"(has {', '.join(MATRIX.torch[0].pythons)})")
    assert exc.remedies == (f"use a Python torch has wheels for ({minors[0]} - {minors[-1]}); "
                            "--python X.Y plans for another interpreter",)


def test_wheelhouse(no_plan: NoPlan) -> None:
    exc, search = no_plan(cpu_box(), torch_available=frozenset({(Version("2.13.0"), "cu128")}))
    assert search.binding is None and search.of(Rule.WHEELHOUSE)
    assert exc.message == f"torch {MATRIX.torch[0].version} is not in the configured wheel sources"
    assert exc.remedies == ("add a torch wheel for this host to the wheelhouse, or plan without --wheelhouse",)


@pytest.mark.parametrize(("host", "precision", "message"), [
    (cpu_box(), "nf4", "nf4 needs bitsandbytes on an NVIDIA GPU; this plan runs on cpu"),
    (box(("Tesla T4", "7.5", 15.5)), "bf16", "bf16 needs compute capability >= 8.0; Tesla T4 is 7.5"),
    (box(("NVIDIA A10G", "8.6", 23.0)), "fp32",
     "fp32 doubles the memory of the bf16 checkpoint; this planner places 16-bit or quantized weights on GPUs"),
])
def test_precision(no_plan: NoPlan, host: HostProfile, precision: str, message: str) -> None:
    exc, search = no_plan(host, precision=precision)
    assert [r.precision for r in search.of(Rule.PRECISION)] == [precision]
    assert (exc.message, exc.remedies) == (message, (PRECISION,))


def test_memory_on_a_gpu(no_plan: NoPlan) -> None:
    h = box(("NVIDIA GeForce RTX 3070", "8.6", 8.2), ram_gb=32)
    exc, search = no_plan(h)
    nf4 = search.of(Rule.MEMORY)[-1]  # every precision was tried; the last, smallest, is the message
    need = estimate_memory(AUTOGLM.config, precision="nf4", context_tokens=4096, device="cuda",
                           image_tokens=SCREEN).total
    assert (nf4.precision, nf4.needed_bytes, nf4.available_bytes) == ("nf4", need, h.gpus[0].memory_free_bytes)
    assert exc.message == (f"AutoGLM-Phone-9B needs {gb(need)} in nf4 for 4,096 tokens; GPU 0 (NVIDIA GeForce RTX 3070) "
                           "has 8.2 GB free")
    assert exc.remedies == tuple(_gpu_memory_remedies(h))


def test_memory_split_over_gpus_names_the_split(no_plan: NoPlan) -> None:
    exc, search = no_plan(box(("NVIDIA GeForce RTX 3050", "8.6", 3.0), ("NVIDIA GeForce RTX 3050", "8.6", 3.0)))
    split = search.of(Rule.MEMORY)[-1]
    assert split.available_bytes == 6_000_000_000 and split.needed_bytes is None
    assert exc.message == "AutoGLM-Phone-9B in nf4 for 4,096 tokens does not fit split over 2 GPUs (6.0 GB free together)"


@pytest.mark.parametrize("forced", [None, "bf16"])
def test_memory_on_the_cpu(no_plan: NoPlan, forced: str | None) -> None:
    exc, search = no_plan(cpu_box(16), precision=forced)
    [ram] = search.of(Rule.MEMORY)
    need = estimate_memory(AUTOGLM.config, precision="bf16", context_tokens=4096, device="cpu",
                          image_tokens=SCREEN).total
    assert (ram.needed_bytes, ram.available_bytes) == (need, 14_500_000_000)  # 16 GB less the 1.5 GB reserve
    assert exc.message == f"AutoGLM-Phone-9B needs {gb(need)} of RAM in bf16 for 4,096 tokens; 14.5 GB of 16.0 GB RAM is usable"
    assert exc.remedies == (*(["drop --precision to let the planner pick one that fits"] if forced else []),
                            "lower --context (now 4,096)", "use a machine with more RAM, or one with an NVIDIA GPU")


def test_variant(no_plan: NoPlan) -> None:
    exc, search = no_plan(box(ROOMY), variant="cu999")
    assert {r.variant for r in search.of(Rule.VARIANT)} == {"cu999"}
    assert exc.message == f"torch {MATRIX.torch[0].version} has no cu999 build for linux-x86_64"
    assert exc.remedies == ("choose a variant this torch release ships for the platform, or leave --variant out",)


def test_no_build_for_the_platform_falls_back_to_the_matrix(no_plan: NoPlan) -> None:
    exc, _ = no_plan(cpu_box(os="darwin"), torch_version=MATRIX.torch[0].version)  # Intel Macs stop at 2.2
    assert exc.message == f"torch {MATRIX.torch[0].version} has no CPU build for macos-x86_64"
    assert exc.remedies == ("check the host profile against matrices/torch.toml",)


# --- the collector ----------------------------------------------------------------------------


def test_binding_is_the_first_rejection_at_the_latest_stage() -> None:
    search = Search()
    assert search.binding is None
    memory = Rejection(rule=Rule.MEMORY, text="no room")
    kernels_a = Rejection(rule=Rule.KERNELS, text="a")
    search.reject(memory)
    assert search.binding is None  # rejected before a build was tried: never binds
    for r in (Rejection(rule=Rule.DRIVER, text="d"), kernels_a, Rejection(rule=Rule.TEGRA, text="t"),
              Rejection(rule=Rule.DRIVER, text="d2")):
        search.reject(r)
    assert search.binding is kernels_a
    search.reject(Rejection(rule=Rule.KERNELS, text="a", cc_floor=(1, 0)))  # the same rule and text: kept once
    assert [r.text for r in search.of(Rule.KERNELS)] == ["a"]
    search.reject(Rejection(rule=Rule.TRANSFORMERS, text="tf"))
    assert search.binding is not None and search.binding.text == "tf"


def test_stages_are_ordered_like_the_checks() -> None:
    assert Rule.DRIVER.stage < Rule.KERNELS.stage == Rule.TEGRA.stage < Rule.BITSANDBYTES.stage
    assert Rule.BITSANDBYTES.stage < Rule.TRANSFORMERS.stage == Rule.TRANSFORMERS_PYTHON.stage
    assert {r.stage for r in (Rule.PYTHON, Rule.MEMORY, Rule.PRECISION, Rule.VARIANT)} == {Stage.SEARCH}


def test_memory_leads_when_older_torch_builds_have_wheels_for_the_python():
    """A10G, Python 3.10, 65,536 tokens: torch 2.15 lacks 3.10 wheels, but 2.14 has them and memory still
    fails, so relaxing the Python gives no plan: the message names the memory, not the Python."""
    from pathlib import Path

    from provision.host.profile import load_host

    host = load_host(Path(__file__).parent / "fixtures" / "hosts" / "linux-x86_64-a10g-driver535.json")
    model = resolve_model("autoglm-phone-9b", load_catalog(MATRIX.catalog_path))
    with pytest.raises(NoViablePlan) as err:
        plan(host, MATRIX, model, Preferences(engine="transformers", python="3.10", context_tokens=65536))
    assert err.value.message.startswith("AutoGLM-Phone-9B needs") and "GB free" in err.value.message
    assert not any("Python" in r for r in err.value.remedies)
    with pytest.raises(NoViablePlan) as err:  # a Python no torch release has wheels for still binds
        plan(host, MATRIX, model, Preferences(engine="transformers", python="3.7", context_tokens=65536))
    assert "Python 3.7" in err.value.message
