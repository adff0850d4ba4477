"""The planner against reference hosts of real machines, and each rule on its own.

Every expectation cites the fact it rests on (matrices/*.toml carry the sources):
- bf16 needs compute capability >= 8.0 (V100 7.0, T4 7.5, GTX 1080 Ti 6.1 have none).
- CUDA 13 builds (cu130/cu132) start at sm_75; cu126 keeps sm_50..sm_90; cu128 from 2.11 drops sm_70.
- torch 2.15.0 ships cu130/cu132 only (CUDA 12.6 removed, pytorch/pytorch#190385).
- A driver runs CUDA X.Y natively from the toolkit's own floor (570.124.06 for 12.8, 580.95.05 for 13.0)
  and any 12.x / 11.x build from the family floor (525.60.13 / 450.80.02) via minor-version compatibility.
- bitsandbytes' int8 matmul needs cc >= 7.5, its 4-bit path cc >= 6.0 (0.48+).
- AutoGLM-Phone-9B needs transformers >= 5 (v5 config layout); transformers 5.21+ needs Python >= 3.11.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from packaging.version import Version

from provision.data.catalog import load_catalog, resolve_model
from provision.data.matrix import load_matrix
from provision.errors import InvalidInput, NoViablePlan
from provision.host.profile import GpuInfo, HostProfile, NvidiaInfo, load_host
from provision.plan.budget import ContextGoal, ram_needed, usable_ram
from provision.plan.document import Plan, Preferences
from provision.plan.memory import estimate_memory
from provision.plan.search import plan
from provision.plan.serve import ModelLoad, serve_load
from provision.vocab import DEFAULT_CONTEXT, MIN_SERVING_CONTEXT, parse_arch

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
#: The visual tokens of the phone screenshot a request carries (the catalog's workload, provision/plan/workload.py).
SCREENSHOT = 3108
MATRIX = load_matrix()
CATALOG = load_catalog()
AUTOGLM = resolve_model("autoglm-phone-9b", CATALOG)


#: The in-process stack's search (``--engine transformers``): the engines have tests/test_engine.py.
TRANSFORMERS = Preferences(engine="transformers")
#: ... at 4,096 tokens, the context the sizes in the policy tests below were worked out for.
SHORT = Preferences(engine="transformers", context_tokens=4096)


def host(name: str) -> HostProfile:
    return load_host(HOSTS / f"{name}.json")


# (host file, torch, variant, precision, device, gpus, context, why). The context is the model's serving
# context (25,480 tokens, one screenshot among them) where any precision or placement holds it, as the
# engines keep it: bf16 at 25,480 needs 29.1 GB on one GPU, int8 23.1 GB, nf4 15.7 GB (the prefill's
# activations grow with it); at 8,192 tokens 24.5, 16.5 and 11.1 GB.
REFERENCE = [
    ("linux-x86_64-h100-80gb-driver580", "2.15.0", "cu130", "bf16", "cuda", [0], 25480,
     "driver 580.159 runs CUDA 13.0 natively but not 13.2 (needs 595.71): cu130 before cu132"),
    ("linux-x86_64-a10g-driver535", "2.14.1", "cu126", "int8", "cuda", [0], 25480,
     "2.15 has only CUDA 13 builds, which need driver >= 580; cu126 runs on 535 by minor-version compatibility; "
     "bf16 at 25,480 tokens (29.1 GB) overflows 23.6 GB, int8 (23.1 GB) keeps the serving context"),
    ("linux-x86_64-a100-80gb-driver550", "2.14.1", "cu126", "bf16", "cuda", [0], 25480, "as A10G; 85 GB free"),
    ("linux-x86_64-a100-40gb-driver535", "2.14.1", "cu126", "bf16", "cuda", [0], 25480, "29.1 GB fits in 42 GB"),
    ("linux-x86_64-l4-driver550", "2.14.1", "cu126", "int8", "cuda", [0], 25480,
     "cc 8.9 has bf16 and int8's fast path; bf16 at 25,480 tokens needs 29.1 GB of 23.7, int8 23.1 GB"),
    ("linux-x86_64-rtx3090-driver550", "2.14.1", "cu126", "int8", "cuda", [0], 25480, "cc 8.6, 25.4 GB: as the L4"),
    ("linux-x86_64-rtx4090-driver550", "2.14.1", "cu126", "int8", "cuda", [0], 25480, "cc 8.9, 25.1 GB: as the L4"),
    ("linux-x86_64-2x-rtx4090-driver550", "2.14.1", "cu126", "bf16", "cuda", [0, 1], 25480,
     "bf16 at 25,480 tokens fits neither GPU alone but fits split over both: 16-bit split before quantizing"),
    ("linux-x86_64-rtx5090-driver575", "2.13.0", "cu129", "bf16", "cuda", [0], 25480,
     "sm_120 needs a cu128+ build; driver 575 runs 12.9 natively, not 13.x; 2.13.0 is the newest with cu129"),
    ("linux-x86_64-rtx3060-12gb-driver550", "2.14.1", "cu126", "nf4", "cuda", [0], 13056,
     "12 GB: no precision holds 25,480 tokens (nf4 needs 15.7 GB); nf4 at the most context that fits"),
    ("linux-x86_64-v100-16gb-driver535", "2.14.1", "cu126", "nf4", "cuda", [0], 25480,
     "no bf16 (cc 7.0), fp16 does not fit 16 GB, int8 needs cc 7.5: nf4"),
    ("linux-x86_64-v100-16gb-driver580", "2.14.1", "cu126", "nf4", "cuda", [0], 25480,
     "the uv trap: driver 580 runs CUDA 13, but cu130 has no sm_70; cu126 does"),
    ("linux-x86_64-t4-driver535", "2.14.1", "cu126", "nf4", "cuda", [0], 25480,
     "cc 7.5: no bf16; at 25,480 tokens fp16 and int8 (23.1 GB) overflow 15.7 GB free, nf4 (15.7 GB) just fits"),
    ("linux-x86_64-t4-driver470", "2.7.1", "cu118", "nf4", "cuda", [0], 24320,
     "driver 470 runs only CUDA 11.x (family floor 450.80.02); 2.7.1 is the newest torch with cu118; nf4 as on "
     "535, but 15.5 GB free holds 24,320 tokens, not 25,480"),
    ("linux-x86_64-gtx1080ti-driver535", "2.14.1", "cu126", "nf4", "cuda", [0], 9728,
     "cc 6.1: cu126 keeps sm_60 (a sm_60 cubin runs on 6.1); int8 needs 7.5; nf4 needs 6.0; 11.5 GB holds "
     "9,728 tokens"),
    ("windows-x86_64-rtx4070-driver566", "2.14.1", "cu126", "nf4", "cuda", [0], 9472,
     "Windows driver 566 runs 12.7 natively; 12 GB: nf4 at the context that fits"),
    ("linux-aarch64-gh200-driver570", "2.14.1", "cu126", "bf16", "cuda", [0], 25480,
     "aarch64 cu126 has sm_90; driver 570 cannot run the CUDA 13 builds of 2.15"),
    ("linux-x86_64-cpu-only-32gb", "2.15.0", "cpu", "bf16", "cpu", [], 25480,
     "no GPU: the CPU build, bf16 (the checkpoint's dtype) at 25,480 tokens (26.8 GB) fits in 31.6 GB of usable RAM"),
    ("macos-arm64-m2-32gb", "2.15.0", "cpu", "bf16", "mps", [], 25480, "Apple silicon: PyPI's build, MPS device"),
]


def assert_valid(p, h: HostProfile, model=AUTOGLM) -> None:
    """Independent checks of a plan against the facts, not against the planner's own code paths."""
    assert Plan.from_dict(json.loads(json.dumps(p.to_dict()))) == p  # the document reads back as the plan
    release = next(r for r in MATRIX.torch if r.version == p.torch_version)
    variant = release.variant(p.variant)
    assert variant is not None and h.platform in variant.platforms
    assert p.python in release.pythons_for(variant)
    assert Version(p.packages["transformers"]) >= model.min_transformers
    if model.id == "autoglm-phone-9b":
        assert Version(p.packages["transformers"]).major >= 5
    assert p.placement.required_bytes <= p.placement.available_bytes
    if p.precision in ("int8", "nf4"):
        assert "bitsandbytes" in p.packages
    else:
        assert "bitsandbytes" not in p.packages
    if p.device != "cuda":
        assert variant.cuda is None and p.placement.gpus == ()
        return
    assert variant.cuda is not None
    driver = Version(h.nvidia.driver_version)
    family = MATRIX.family(variant.cuda.major)
    floor = family.windows_min_driver if h.os == "windows" else family.linux_min_driver
    assert driver >= floor, "the driver cannot run this CUDA even with minor-version compatibility"
    for gpu in h.gpus:
        if gpu.index not in p.placement.gpus:
            continue
        cubins = [parse_arch(a) for a in variant.archs_for(h.platform)]
        assert any(a[0] == gpu.compute_capability[0] and a[1] <= gpu.compute_capability[1] for a in cubins)
        if p.precision == "bf16":
            assert gpu.compute_capability >= (8, 0)
        assert gpu.memory_free_bytes > 0


@pytest.mark.parametrize(("name", "torch", "variant", "precision", "device", "gpus", "context", "why"), REFERENCE,
                         ids=[r[0] for r in REFERENCE])
def test_reference_hosts(name: str, torch: str, variant: str, precision: str, device: str, gpus: list[int],
                         context: int, why: str) -> None:
    h = host(name)
    p = plan(h, MATRIX, AUTOGLM, TRANSFORMERS)
    got = (str(p.torch_version), p.variant, p.precision, p.device, list(p.placement.gpus))
    assert got == (torch, variant, precision, device, gpus), why
    assert_valid(p, h)
    decisions = {r.decision for r in p.reasons}
    assert {"engine", "torch", "variant", "precision", "device"} <= decisions
    assert all(r.why for r in p.reasons)
    assert_transformers_serve(p, context, host=h)
    lowered = [w for w in p.warnings if w.startswith("context lowered")]
    assert len(lowered) == (context < 25480), "a lowered context always says so"
    # the memory the plan counts is the model at the context it serves, one screenshot among its tokens
    est = estimate_memory(AUTOGLM.config, precision=precision, context_tokens=context, image_tokens=SCREENSHOT,
                          device="cpu" if device != "cuda" else "cuda")
    assert p.placement.required_bytes == est.total or len(gpus) > 1


def assert_transformers_serve(p: Plan, context: int = 25480, host: HostProfile | None = None) -> None:
    """``transformers serve`` pinned to the served name, in the plan's precision and on its device."""
    s = p.serve
    flags = dict(zip(s.argv[3::2], s.argv[4::2], strict=True))
    assert s.argv[:3] == ("transformers", "serve", "autoglm-phone-9b") and s.engine == "transformers"
    assert s.engine_version == p.packages["transformers"] and s.model_source == p.model_repo
    assert flags["--port"] == "8000" == str(s.port) and "--host" not in flags  # serve.sh adds the host
    assert flags["--device"] == ("cpu" if p.device == "cpu" else "auto")
    quantization = {"int8": "bnb-8bit", "nf4": "bnb-4bit"}.get(p.precision)
    assert s.quantization == quantization
    assert flags.get("--quantization") == quantization
    # always a --dtype: a quantized model's other weights in the 16-bit type its GPUs compute in ("auto" would
    # take the checkpoint's bf16 on a T4 or V100, which have none)
    bf16 = host is None or all(g.compute_capability >= (8, 0) for g in host.gpus if g.index in p.placement.gpus)
    expected = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(p.precision)
    assert flags["--dtype"] == (expected or ("bfloat16" if bf16 else "float16"))
    # the smoke test loads with exactly these flags, read back from the plan
    assert serve_load(s, p.precision) == ModelLoad(flags["--dtype"], quantization)
    assert serve_load(s, p.precision).argv == tuple(s.argv[5:-2])
    assert (s.tensor_parallel_size, s.gpu_memory_utilization, s.image, s.max_model_len) == (1, None, None, context)


def test_the_transformers_server_serves_the_context_planned_for() -> None:
    p = plan(host("linux-x86_64-h100-80gb-driver580"), MATRIX, AUTOGLM,
             Preferences(engine="transformers", context_tokens=16384))
    assert_transformers_serve(p, context=16384)
    assert p.placement.required_bytes == estimate_memory(AUTOGLM.config, precision="bf16", context_tokens=16384,
                                                         image_tokens=SCREENSHOT).total


# --- the context: the serving context by default, lowered to what fits down to 8,192 ---------------


def _ram_box(ram_gb: float) -> HostProfile:
    return HostProfile(os="linux", arch="x86_64", python=Version("3.11.7"), ram_bytes=int(ram_gb * 1e9))


def _cpu_need(tokens: int) -> int:
    return estimate_memory(AUTOGLM.config, precision="bf16", context_tokens=tokens, device="cpu",
                           image_tokens=SCREENSHOT).total


def test_this_kind_of_machine_gets_the_most_context_its_ram_holds_and_a_warning_that_says_why() -> None:
    """A 2-core, 25 GB CPU machine (its own `provision detect`): 25,480 tokens need 26.7 GB, 23.8 GB is usable."""
    h = host("linux-x86_64-cpu-only-25gb-detected")
    p = plan(h, MATRIX, AUTOGLM)  # the defaults: --engine auto, the serving context
    usable = p.placement.available_bytes
    context = p.serve.max_model_len
    assert p.serve.engine == "transformers" and p.device == "cpu" and p.precision == "bf16"
    assert MIN_SERVING_CONTEXT <= context < AUTOGLM.serve.context and context % 256 == 0
    # the most that fits, in whole 256-token steps: the plan's memory is the model at that context
    assert p.placement.required_bytes == _cpu_need(context) <= usable < _cpu_need(context + 256)
    assert p.warnings[0] == (f"context lowered to {context:,} tokens: 25,480 needs {_cpu_need(25480) / 1e9:.1f} GB "
                             f"in bf16, {usable / 1e9:.1f} GB of RAM usable (--context sets it; a default plan goes "
                             "no lower than 8,192)")
    assert_valid(p, h)


def test_a_lowered_gpu_plan_names_the_gpu_and_keeps_its_precision_order() -> None:
    """Every precision at the full context first (as the engines do), then the best one at less."""
    p = plan(host("linux-x86_64-rtx3060-12gb-driver550"), MATRIX, AUTOGLM, TRANSFORMERS)
    nf4 = estimate_memory(AUTOGLM.config, precision="nf4", context_tokens=p.serve.max_model_len, image_tokens=SCREENSHOT)
    assert p.precision == "nf4" and p.placement.required_bytes == nf4.total
    assert p.warnings[0].startswith(f"context lowered to {p.serve.max_model_len:,} tokens: 25,480 needs 15.7 GB "
                                    "in nf4, GPU 0 (NVIDIA GeForce RTX 3060) has 12.4 GB free")


def test_an_explicit_context_that_does_not_fit_is_a_no_plan_not_lowered() -> None:
    h = host("linux-x86_64-cpu-only-25gb-detected")
    with pytest.raises(NoViablePlan) as info:
        plan(h, MATRIX, AUTOGLM, Preferences(context_tokens=25480))
    assert info.value.message == (f"AutoGLM-Phone-9B needs {_cpu_need(25480) / 1e9:.1f} GB of RAM in bf16 for 25,480 "
                                  f"tokens; 23.8 GB of {h.ram_bytes / 1e9:.1f} GB RAM is usable")
    assert "lower --context (now 25,480)" in info.value.remedies
    # the same context, asked for, where it fits: exactly that, and no warning about it
    p = plan(h, MATRIX, AUTOGLM, Preferences(context_tokens=9000))
    assert p.serve.max_model_len == 9000 and not any("context" in w for w in p.warnings)


def test_below_the_floor_is_a_no_plan_naming_the_memory_at_the_floor() -> None:
    small = _ram_box(ram_needed(_cpu_need(4096)) / 1e9)  # room for 4,096 tokens, not for 8,192
    usable = usable_ram(small.ram_bytes)
    assert _cpu_need(4096) <= usable < _cpu_need(MIN_SERVING_CONTEXT)
    with pytest.raises(NoViablePlan) as info:
        plan(small, MATRIX, AUTOGLM)
    assert info.value.message == (f"AutoGLM-Phone-9B needs {_cpu_need(8192) / 1e9:.1f} GB of RAM in bf16 for 8,192 "
                                  f"tokens; {usable / 1e9:.1f} GB of {small.ram_bytes / 1e9:.1f} GB RAM is usable")
    assert "pass a --context below 8,192 (the least a default plan lowers the context to)" in info.value.remedies
    assert plan(small, MATRIX, AUTOGLM, Preferences(context_tokens=4096)).serve.max_model_len == 4096


def test_a_model_without_serving_facts_keeps_the_documented_default(tmp_path: Path) -> None:
    folder = tmp_path / "local-glm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(AUTOGLM.config))
    local = resolve_model(str(folder), CATALOG)
    assert local.serve is None
    p = plan(host("linux-x86_64-cpu-only-25gb-detected"), MATRIX, local)
    assert p.serve.max_model_len == DEFAULT_CONTEXT and not any("context" in w for w in p.warnings)
    with pytest.raises(NoViablePlan, match="for 4,096 tokens"):  # below the floor already: never lowered
        plan(_ram_box(ram_needed(_cpu_need(4096)) / 1e9 - 0.1), MATRIX, local)


def test_context_goal_bisects_to_whole_steps() -> None:
    goal = ContextGoal.for_model(AUTOGLM, None)
    assert (goal.target, goal.floor, goal.can_lower) == (25480, 8192, True)
    assert ContextGoal.for_model(AUTOGLM, 30000) == ContextGoal(30000, 30000)
    asked: list[int] = []

    def fits(tokens: int) -> bool:
        asked.append(tokens)
        return tokens <= 12345

    assert goal.best(fits) == 12288 and len(asked) <= 10
    assert goal.best(lambda t: True) == 25480 and goal.best(lambda t: t < 8192) is None
    assert goal.exact.best(fits) is None


def test_reference_set_covers_the_machines_the_issue_names() -> None:
    names = " ".join(r[0] for r in REFERENCE)
    for card in ("v100", "t4", "a10g", "l4", "a100", "h100", "rtx3060", "rtx3090", "rtx4090", "rtx5090",
                 "gtx1080ti", "cpu-only", "macos-arm64", "windows", "aarch64"):
        assert card in names
    assert len(REFERENCE) >= 15


def test_eight_gb_card_is_no_plan_with_remedies() -> None:
    with pytest.raises(NoViablePlan) as info:  # the defaults: no engine fits either, nor nf4 at the floor
        plan(host("linux-x86_64-rtx3070-8gb-driver550"), MATRIX, AUTOGLM)
    exc = info.value
    assert exc.message.startswith("AutoGLM-Phone-9B needs 11.1 GB in nf4 for 8,192 tokens; ")
    assert "8.2 GB free" in exc.message
    assert any(r.startswith("use a GPU with at least") for r in exc.remedies)
    assert any("--device cpu" in r for r in exc.remedies)
    assert "pass a --context below 8,192 (the least a default plan lowers the context to)" in exc.remedies
    doc = exc.to_dict()
    assert doc["error"] == "no-viable-plan" and doc["schema"] == "provision.plan/v1"


def test_forced_cpu_on_the_eight_gb_box_plans_cpu() -> None:
    p = plan(host("linux-x86_64-rtx3070-8gb-driver550"), MATRIX, AUTOGLM, Preferences(engine="transformers", device="cpu"))
    assert p.device == "cpu" and p.variant == "cpu" and p.placement.gpus == ()


# --- precision and placement policy -------------------------------------------------------------


def _box(*gpus: tuple[str, str, float], driver: str = "570.133.07", cuda: str | None = "12.8",
         python: str = "3.12.3", ram_gb: float = 64) -> HostProfile:
    infos = tuple(
        GpuInfo(index=i, name=name, compute_capability=tuple(int(x) for x in cc.split(".")),
                memory_total_bytes=int(gb * 1e9) + 500_000_000, memory_free_bytes=int(gb * 1e9))
        for i, (name, cc, gb) in enumerate(gpus)
    )
    return HostProfile(os="linux", arch="x86_64", python=Version(python), ram_bytes=int(ram_gb * 1e9),
                       nvidia=NvidiaInfo(driver_version=driver, cuda_driver_version=Version(cuda) if cuda else None,
                                         gpus=infos))


def test_split_bf16_over_two_gpus_before_quantizing() -> None:
    h = _box(("NVIDIA GeForce RTX 4080", "8.9", 15.5), ("NVIDIA GeForce RTX 4080", "8.9", 15.5))
    p = plan(h, MATRIX, AUTOGLM, SHORT)
    assert p.precision == "bf16" and p.placement.gpus == (0, 1)
    assert set(p.placement.max_memory) == {"0", "1"}
    assert any("split" in w for w in p.warnings)
    assert p.placement.available_bytes == 31_000_000_000


def test_the_roomiest_gpu_is_tried_first_when_the_model_fits_on_either() -> None:
    # bf16 (22.6 GB) fits on both cards; the one with more free memory is placed first, whatever its index.
    small, large = ("NVIDIA A10G", "8.6", 23.5), ("NVIDIA A100-SXM4-40GB", "8.0", 40.0)
    for gpus, roomiest in (((small, large), 1), ((large, small), 0)):
        p = plan(_box(*gpus, driver="550.127.05", cuda="12.4"), MATRIX, AUTOGLM, TRANSFORMERS)
        assert (p.precision, p.placement.gpus, p.placement.available_bytes) == ("bf16", (roomiest,), 40_000_000_000)
        assert f"free on GPU {roomiest} (NVIDIA A100-SXM4-40GB)" in p.placement.why


def test_equally_roomy_gpus_are_tried_in_index_order() -> None:
    # All three fit bf16; GPUs 1 and 2 tie for the most free memory: the lower index wins.
    h = _box(("NVIDIA RTX A5000", "8.6", 25.0), ("NVIDIA RTX A5000", "8.6", 30.0), ("NVIDIA RTX A5000", "8.6", 30.0),
             driver="550.127.05", cuda="12.4")
    assert plan(h, MATRIX, AUTOGLM, TRANSFORMERS).placement.gpus == (1,)


def test_fp16_below_cc8_when_it_fits() -> None:
    p = plan(_box(("Tesla V100-SXM2-32GB", "7.0", 31.0)), MATRIX, AUTOGLM, TRANSFORMERS)
    assert p.precision == "fp16"
    assert any("fp16" in w for w in p.warnings)


def test_int8_where_16_bit_does_not_fit_and_fast_path_exists() -> None:
    p = plan(_box(("NVIDIA RTX A4000", "8.6", 15.9)), MATRIX, AUTOGLM, SHORT)
    assert p.precision == "int8" and "bitsandbytes" in p.packages


def test_free_memory_not_total_decides() -> None:
    roomy = _box(("NVIDIA A10G", "8.6", 23.6))
    busy = _box(("NVIDIA A10G", "8.6", 12.0))
    assert plan(roomy, MATRIX, AUTOGLM, SHORT).precision == "bf16"
    assert plan(busy, MATRIX, AUTOGLM, SHORT).precision == "nf4"


def test_longer_context_needs_more_memory_and_can_change_precision() -> None:
    h = _box(("NVIDIA A10G", "8.6", 23.6))
    short = plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", context_tokens=1024))
    long = plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", context_tokens=32768))
    assert short.precision == "bf16"
    assert long.placement.required_bytes > 0 and long.precision != "bf16"
    assert long.precision in ("int8", "nf4")


def test_forced_precision_is_honoured_or_refused() -> None:
    h = _box(("NVIDIA A10G", "8.6", 23.6))
    assert plan(h, MATRIX, AUTOGLM, replace(SHORT, precision="nf4")).precision == "nf4"
    with pytest.raises(NoViablePlan, match=r"bf16 needs compute capability >= 8\.0"):
        plan(_box(("Tesla T4", "7.5", 15.5)), MATRIX, AUTOGLM, replace(SHORT, precision="bf16"))
    with pytest.raises(NoViablePlan, match="needs"):
        plan(_box(("Tesla T4", "7.5", 15.5)), MATRIX, AUTOGLM, replace(SHORT, precision="fp16"))
    with pytest.raises(NoViablePlan, match=r"int8 needs compute capability >= 7\.5"):
        plan(_box(("Tesla V100-SXM2-16GB", "7.0", 15.5)), MATRIX, AUTOGLM, replace(SHORT, precision="int8"))


def test_cpu_host_never_gets_quantized_or_gpu_plan() -> None:
    h = host("linux-x86_64-cpu-only-32gb")
    with pytest.raises(NoViablePlan):
        plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", precision="nf4"))
    with pytest.raises(InvalidInput, match=r"^--device: device: cuda was requested"):
        plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", device="cuda"))
    small = replace(h, ram_bytes=16 * 10**9)
    with pytest.raises(NoViablePlan, match="of RAM"):
        plan(small, MATRIX, AUTOGLM, TRANSFORMERS)


# --- driver, kernels, python, wheelhouse ---------------------------------------------------------


def test_minor_version_compatibility_is_a_warning_and_native_builds_win_within_a_release() -> None:
    p = plan(host("linux-x86_64-a10g-driver535"), MATRIX, AUTOGLM, TRANSFORMERS)
    assert any("minor-version compatibility" in w for w in p.warnings)
    h100 = plan(host("linux-x86_64-h100-80gb-driver580"), MATRIX, AUTOGLM, TRANSFORMERS)
    assert h100.variant == "cu130" and not h100.warnings  # cu132 would need minor-version compatibility


def test_old_driver_gets_exit_3_with_a_driver_remedy() -> None:
    h = _box(("Tesla T4", "7.5", 15.0), driver="418.67", cuda="10.1")
    with pytest.raises(NoViablePlan) as info:
        plan(h, MATRIX, AUTOGLM, TRANSFORMERS)
    assert "418.67" in info.value.message
    assert any("driver" in r for r in info.value.remedies)


def test_python_is_honoured_and_unsupported_python_refused() -> None:
    h = host("linux-x86_64-a10g-driver535")
    p = plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", python="3.10"))
    assert p.python == "3.10"
    assert p.packages["transformers"] == "5.20.2"  # 5.21+ needs Python >= 3.11
    with pytest.raises(NoViablePlan) as info:
        plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", python="3.8"))
    assert "Python 3.8" in info.value.message
    assert any("Python" in r for r in info.value.remedies)


def test_python_315_only_gets_torch_that_has_wheels() -> None:
    p = plan(host("linux-x86_64-h100-80gb-driver580"), MATRIX, AUTOGLM, Preferences(engine="transformers", python="3.15"))
    assert p.torch_version == Version("2.15.0")


def test_wheelhouse_restricts_torch_to_builds_present() -> None:
    h = host("linux-x86_64-cpu-only-32gb")
    available = frozenset({(Version("2.13.0"), "cpu")})
    p = plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", torch_available=available))
    assert (str(p.torch_version), p.variant, p.packages["torch"]) == ("2.13.0", "cpu", "2.13.0+cpu")
    with pytest.raises(NoViablePlan) as info:
        plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", torch_available=frozenset({(Version("2.13.0"), "cu128")})))
    assert any("wheelhouse" in r for r in info.value.remedies)


def test_pypi_default_build_installs_from_pypi_with_plain_version() -> None:
    h = host("linux-x86_64-h100-80gb-driver580")
    p = plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", torch_version=Version("2.14.1")))
    assert p.variant == "cu130"  # PyPI's default build for 2.14.1 on linux-x86_64
    assert p.index_url == "https://pypi.org/simple" and p.packages["torch"] == "2.14.1"
    cpu = plan(host("linux-x86_64-cpu-only-32gb"), MATRIX, AUTOGLM, TRANSFORMERS)
    assert cpu.index_url == "https://download.pytorch.org/whl/cpu" and cpu.packages["torch"].endswith("+cpu")


def test_variant_preference() -> None:
    h = host("linux-x86_64-h100-80gb-driver580")
    p = plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", variant="cu126"))
    assert p.variant == "cu126" and p.torch_version == Version("2.14.1")


def test_text_model_plans_too() -> None:
    glm = resolve_model("glm-4-9b-0414", CATALOG)
    p = plan(host("linux-x86_64-a10g-driver535"), MATRIX, glm, SHORT)
    assert p.model_id == "glm-4-9b-0414" and p.precision == "bf16"
    assert p.placement.breakdown["weights"] == estimate_memory(glm.config, precision="bf16",
                                                               context_tokens=4096).weights


def test_plan_json_matches_the_contract() -> None:
    doc = plan(host("linux-x86_64-a10g-driver535"), MATRIX, AUTOGLM, SHORT).to_dict()
    assert doc["schema"] == "provision.plan/v1"
    assert set(doc) >= {"model", "python", "torch", "device", "gpus", "precision", "memory", "packages",
                        "warnings", "reasons"}
    assert set(doc["torch"]) == {"version", "variant", "index_url"}
    assert doc["model"] == {"id": "autoglm-phone-9b", "repo": "zai-org/AutoGLM-Phone-9B",
                            "parameters": 10292777472}
    assert set(doc["memory"]) >= {"required_bytes", "available_bytes", "breakdown"}
    assert doc["memory"]["breakdown"]["weights"] == 20585554944
    json.dumps(doc)  # serialisable as is


def test_mixed_box_places_bf16_on_the_card_that_has_it() -> None:
    h = _box(("NVIDIA GeForce GTX 1080 Ti", "6.1", 10.9), ("NVIDIA GeForce RTX 4090", "8.9", 24.5),
             driver="550.127.05", cuda="12.4")
    p = plan(h, MATRIX, AUTOGLM, SHORT)
    assert (p.precision, p.placement.gpus) == ("bf16", (1,))
    assert_valid(p, h)


def test_mixed_box_without_room_for_bf16_uses_a_build_with_kernels_for_both_cards() -> None:
    # The 3090 is busy: bf16 (22.5 GB) fits on no bf16 card alone; fp16 fits split over both.
    h = _box(("NVIDIA GeForce GTX 1080 Ti", "6.1", 10.9), ("NVIDIA GeForce RTX 3090", "8.6", 20.0),
             driver="550.127.05", cuda="12.4")
    p = plan(h, MATRIX, AUTOGLM, SHORT)
    assert p.precision == "fp16" and p.placement.gpus == (0, 1)  # 16-bit split before quantizing
    assert p.variant == "cu126"  # sm_61 and sm_86 kernels in one build
    assert_valid(p, h)


def test_intel_mac_gets_the_last_torch_with_intel_mac_wheels() -> None:
    h = HostProfile(os="darwin", arch="x86_64", python=Version("3.11.9"), ram_bytes=64 * 10**9)
    p = plan(h, MATRIX, AUTOGLM, TRANSFORMERS)
    assert (str(p.torch_version), p.variant, p.device) == ("2.2.2", "cpu", "cpu")
    assert p.packages["torch"] == "2.2.2" and p.index_url == "https://pypi.org/simple"
    assert p.packages["transformers"] == "5.0.0"  # the last transformers 5 that accepts torch 2.2
    assert_valid(p, h)
    with pytest.raises(NoViablePlan, match=r"Python 3\.13"):
        plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", python="3.13"))


def test_python_without_torch_wheels_names_the_pythons_that_have_them() -> None:
    with pytest.raises(NoViablePlan) as info:
        plan(host("linux-x86_64-a10g-driver535"), MATRIX, AUTOGLM, Preferences(engine="transformers", python="3.16"))
    assert "Python 3.16" in info.value.message
    assert info.value.remedies[0].startswith("use a Python torch has wheels for (3.8 - 3.15)")


def test_driver_without_visible_gpus_plans_cpu_and_says_why() -> None:
    h = _box(driver="535.183.01", cuda="12.2")  # CUDA_VISIBLE_DEVICES="" leaves nvidia.gpus empty
    p = plan(h, MATRIX, AUTOGLM, TRANSFORMERS)
    assert p.device == "cpu" and p.variant == "cpu"
    assert any("no GPU is visible" in w for w in p.warnings)


def test_gpu_too_old_for_bitsandbytes_gets_a_gpu_or_cpu_remedy() -> None:
    h = _box(("Tesla K80", "3.7", 11.4), driver="470.239.06", cuda="11.4")
    with pytest.raises(NoViablePlan) as info:
        plan(h, MATRIX, AUTOGLM, TRANSFORMERS)
    assert "compute capability" in info.value.message and "3.7" in info.value.message
    assert info.value.remedies[0].startswith("use a GPU that bitsandbytes supports")
    assert "--device cpu" in info.value.remedies[0]


def test_jetson_orin_is_not_planned_onto_sbsa_wheels() -> None:
    h = HostProfile(os="linux", arch="aarch64", python=Version("3.10.12"), ram_bytes=64 * 10**9,
                    nvidia=NvidiaInfo(driver_version="540.4.0", cuda_driver_version=Version("12.6"), gpus=(
                        GpuInfo(index=0, name="Orin (nvgpu)", compute_capability=(8, 7),
                                memory_total_bytes=64 * 10**9, memory_free_bytes=60 * 10**9),)))
    with pytest.raises(NoViablePlan) as info:
        plan(h, MATRIX, AUTOGLM, TRANSFORMERS)
    assert "Jetson" in info.value.message and "SBSA" in info.value.message
    assert "JetPack" in info.value.remedies[0]
    assert plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", device="cpu")).device == "cpu"
    # A GH200 (sm_90, SBSA) on the same platform is planned as before.
    assert plan(host("linux-aarch64-gh200-driver570"), MATRIX, AUTOGLM, TRANSFORMERS).device == "cuda"


def test_a_roomier_card_without_kernels_does_not_hide_one_that_has_them() -> None:
    # The K80 has more free memory and sm_37 kernels in cu118, but bitsandbytes' 4-bit path needs
    # cc >= 5.0: the 3060 alone takes nf4 (before, only the roomiest card was tried alone).
    h = _box(("Tesla K80", "3.7", 11.4), ("NVIDIA GeForce RTX 3060", "8.6", 11.0),
             driver="470.239.06", cuda="11.4")
    p = plan(h, MATRIX, AUTOGLM, SHORT)  # 11 GB holds nf4 at 4,096 tokens, not at 8,192
    assert p.placement.gpus == (1,) and p.precision == "nf4"
    assert_valid(p, h)


# --- module structure ---------------------------------------------------------------------------


def test_no_module_imports_one_that_imports_it_back() -> None:
    """Lazy imports inside functions count too: a cycle hidden in a function is still a cycle."""
    import ast
    import graphlib

    root = Path(__file__).resolve().parent.parent
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (root / "provision").rglob("*.py")}
    graph = graphlib.TopologicalSorter()
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in files:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph.add(name, *(t for t in targets if t in files and t != name and not name.startswith(f"{t}.")))
    graph.prepare()  # raises CycleError naming the cycle


def test_a_local_model_folder_is_served_under_its_id_and_its_path_stays_out_of_the_plan(tmp_path: Path) -> None:
    folder = tmp_path / "My AutoGLM"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(AUTOGLM.config))
    local = resolve_model(str(folder), CATALOG)
    p = plan(host("linux-x86_64-h100-80gb-driver580"), MATRIX, local, TRANSFORMERS)
    assert p.serve.argv[2] == local.id == "my-autoglm" and p.serve.served_model_name == local.id
    assert p.serve.model_source is None  # serve.sh takes the folder from PROVISION_MODEL_PATH
    assert str(tmp_path) not in json.dumps(p.to_dict())


# ---------------------------------------------------------------------------
# Explanations true to what is planned and rendered (issue 14, item 7)


def _why(p: Plan, decision: str) -> str:
    return next(r.why for r in p.reasons if r.decision == decision)


def test_a_v100_plan_in_nf4_says_why_int8_was_passed_over() -> None:
    h = host("linux-x86_64-v100-16gb-driver580")
    served = plan(h, MATRIX, AUTOGLM)  # --engine auto: vLLM, whose in-flight bitsandbytes has no int8
    assert served.precision == "nf4" and "4-bit only" in _why(served, "precision")
    p = plan(h, MATRIX, AUTOGLM, TRANSFORMERS)  # at the serving context int8 does not fit: said with the numbers
    assert p.precision == "nf4" and re.search(
        r"fp16 and int8 were passed over: AutoGLM-Phone-9B needs [\d.]+ GB in fp16, [\d.]+ GB in int8; "
        r"GPU 0 \(Tesla V100-SXM2-16GB\) has", _why(p, "precision"))
    p = plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", context_tokens=4096))  # int8 fits, cannot run
    assert p.precision == "nf4"
    why = _why(p, "precision")
    bnb = p.packages["bitsandbytes"]
    assert f"int8 was passed over: bitsandbytes {bnb} int8 needs compute capability >= 7.5; Tesla V100-SXM2-16GB is 7.0" \
        in why
    assert re.search(r"fp16 was passed over: AutoGLM-Phone-9B needs [\d.]+ GB in fp16; GPU 0 \(Tesla V100-SXM2-16GB\) "
                     r"has 16\.8 GB free", why)


def test_forcing_int8_names_the_bitsandbytes_the_plan_pins() -> None:
    h = host("linux-x86_64-v100-16gb-driver580")
    pinned = plan(h, MATRIX, AUTOGLM, TRANSFORMERS).packages["bitsandbytes"]  # the nf4 plan's
    with pytest.raises(NoViablePlan) as caught:
        plan(h, MATRIX, AUTOGLM, Preferences(engine="transformers", precision="int8"))
    assert caught.value.message.startswith(f"bitsandbytes {pinned} int8 needs compute capability >= 7.5")


def test_a_t4_on_driver_470_blames_the_driver_for_the_older_torch() -> None:
    """torch 2.8 to 2.14 have wheels for Python 3.10; what rules them out is the driver: that is said first."""
    p = plan(host("linux-x86_64-t4-driver470"), MATRIX, AUTOGLM, TRANSFORMERS)
    assert str(p.torch_version) == "2.7.1"
    why = _why(p, "torch")
    nearest = why.index("torch 2.8.0 to 2.14.1 were passed over: cu126: CUDA 12.6 needs driver >= 525.60.13, "
                        "this host has 470.239.06")
    assert nearest < why.index("torch 2.15.0 was passed over: no wheels for Python 3.10")
    # the driver runs the chosen CUDA 11.8 build: no reason may say it runs "CUDA <= 11.4"
    assert "runs CUDA 11.8 builds through minor-version compatibility" in _why(p, "variant")
    assert "CUDA <=" not in json.dumps([r.why for r in p.reasons])


@pytest.mark.parametrize("name", ["linux-aarch64-gh200-driver570", "linux-x86_64-rtx3060-12gb-driver550"])
def test_a_driver_floor_is_said_once_where_it_first_decides(name: str) -> None:
    """CUDA 13.0's driver floor passes over both the engines (their CUDA 13 wheels) and torch 2.15 (its CUDA 13
    builds): the engine reason, which comes first, gives it; the torch reason points to it."""
    h = host(name)
    assert h.nvidia is not None
    floor = "CUDA 13.0 wheel needs driver >= 580.65.6"
    p = plan(h, MATRIX, AUTOGLM)  # --engine auto: transformers serve, after both engines
    assert p.serve.engine == "transformers"
    texts = [r.why for r in p.reasons]
    assert sum("580.65.6" in t for t in texts) == 1 and floor in _why(p, "engine")
    assert f"this host has {h.nvidia.driver_version}" in _why(p, "engine")
    assert _why(p, "torch").endswith("torch 2.15.0 was passed over: cu130: a CUDA 13.0 build, which needs the newer "
                                     "driver the engine reason names")
    alone = plan(h, MATRIX, AUTOGLM, TRANSFORMERS)  # no engine reason to point to: the torch reason says it
    assert _why(alone, "torch").endswith(f"torch 2.15.0 was passed over: cu130: CUDA 13.0 needs driver >= 580.65.6, "
                                         f"this host has {h.nvidia.driver_version}")


def _clauses(texts: list[str]) -> list[str]:
    return [c.strip().rstrip(".") for t in texts for c in re.split(r";\s+|\.\s+", t) if c.strip()]


@pytest.mark.parametrize("engine", ["auto", "transformers"])
@pytest.mark.parametrize("name", sorted(h.stem for h in HOSTS.glob("*.json")))
def test_no_plan_says_the_same_thing_twice(name: str, engine: str) -> None:
    """Every reference host, either engine choice: no sentence (split on "; " and ". ") of the reasons and warnings,
    or of a no-plan's message and remedies, appears twice (issue 14: the 2x RTX 4090 plan told one twice)."""
    try:
        p = plan(host(name), MATRIX, AUTOGLM, Preferences(engine=engine))
    except NoViablePlan as exc:
        texts = [exc.message, *exc.remedies]
    else:
        texts = [r.why for r in p.reasons] + list(p.warnings)
    clauses = _clauses(texts)
    assert len(clauses) > 1
    assert [c for c in set(clauses) if clauses.count(c) > 1] == []


def test_a_compatibility_warning_adds_what_the_variant_reason_does_not_say() -> None:
    p = plan(host("linux-x86_64-2x-rtx4090-driver550"), MATRIX, AUTOGLM, TRANSFORMERS)
    assert "runs CUDA 12.6 builds through minor-version compatibility" in _why(p, "variant")
    [warning] = [w for w in p.warnings if "minor-version" in w]
    assert warning == ("cu126 (CUDA 12.6) runs only through CUDA minor-version compatibility, which cannot JIT-compile "
                       "newer PTX; a driver >= 560.35.5 runs CUDA 12.6 natively")


# ---------------------------------------------------------------------------
# glibc: torch's wheels are manylinux_2_28 from 2.7.0 (torch.toml's glibc floors, read from PyPI's file names)


def test_an_old_glibc_plans_the_newest_torch_whose_wheels_install() -> None:
    """Ubuntu 18.04 (glibc 2.27): pip refuses torch 2.7.0 to 2.15.0 (manylinux_2_28); 2.6.0's x86_64 wheels are
    tagged manylinux1. The host's glibc is said once: by the engine reason where engines were passed over for it."""
    h = host("linux-x86_64-a10g-driver535-glibc2.27")
    p = plan(h, MATRIX, AUTOGLM)
    assert p.serve.engine == "transformers" and str(p.torch_version) == "2.6.0"
    assert "this host has 2.27" in _why(p, "engine")
    assert _why(p, "torch").endswith("torch 2.7.0 to 2.15.0 were passed over: the wheels need glibc >= 2.28")
    alone = plan(h, MATRIX, AUTOGLM, TRANSFORMERS)
    assert str(alone.torch_version) == "2.6.0"
    assert _why(alone, "torch").endswith("torch 2.7.0 to 2.15.0 were passed over: the wheels need glibc >= 2.28, "
                                         "this host has 2.27")
    for glibc in (Version("2.28"), None):  # at the floor, or unknown (a profile without glibc): no obstacle
        assert str(plan(replace(h, glibc=glibc), MATRIX, AUTOGLM, TRANSFORMERS).torch_version) == "2.14.1"


def test_a_glibc_below_every_torch_with_a_cuda_build_is_a_no_plan_naming_it() -> None:
    """A GH200 on glibc 2.27: aarch64 CUDA builds start at torch 2.9 (manylinux_2_28); older releases have none."""
    h = replace(host("linux-aarch64-gh200-driver570"), glibc=Version("2.27"))
    for prefs in (Preferences(), TRANSFORMERS):
        with pytest.raises(NoViablePlan) as caught:
            plan(h, MATRIX, AUTOGLM, prefs)
        assert caught.value.message == "torch 2.6.0's wheels need glibc >= 2.28, this host has 2.27"
        assert caught.value.remedies[0] == "use a Linux with glibc >= 2.28 (this host has 2.27): pip refuses wheels above it"
