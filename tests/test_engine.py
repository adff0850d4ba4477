"""The serving-engine decision (plan/engine.py) and its memory budget (plan/engine_memory.py).

Reference hosts: each row names the machine, what the engine search must choose, and why that is
right by the engine facts in matrices/engines.toml (the sources are there and in
shared/notes/serving.md). Profiles are built here from public GPU specifications; the
driver's CUDA is the one NVIDIA's release notes give for that branch.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from packaging.version import Version

from provision.data import load_catalog, load_matrix, resolve_model
from provision.data.architecture import architecture_of
from provision.errors import NoViablePlan
from provision.host import host_from_dict, load_host
from provision.plan.engine import MIN_SERVING_CONTEXT, EngineChoice, EngineSearch, choose_engine
from provision.plan.engine_memory import (
    KV_BLOCK_TOKENS,
    Workload,
    engine_budget,
    image_tokens,
    kv_bytes_per_token,
    load_peak_bytes,
    weights_per_gpu,
)
from provision.plan.rejections import Rule

MATRIX = load_matrix()
MODEL = resolve_model("autoglm-phone-9b", load_catalog(MATRIX.catalog_path))
SERVE = MODEL.serve
assert SERVE is not None
WORKLOAD = Workload(max_model_len=SERVE.context, images_per_prompt=SERVE.images_per_prompt,
                    max_pixels=SERVE.max_pixels)
FIXTURES = Path(__file__).parent / "fixtures" / "hosts"
GB = 10**9


def box(gpu: str, cc: str, total_gb: float, driver: str, cuda: str, *, count: int = 1, python: str = "3.12.3",
        os_name: str = "linux", arch: str = "x86_64", used_gb: float = 0.6, glibc: str | None = None) -> dict:
    total = int(total_gb * GB)
    gpus = [{"index": i, "name": gpu, "compute_capability": cc, "memory_total_bytes": total,
             "memory_free_bytes": total - int(used_gb * GB)} for i in range(count)]
    return {"schema": "provision.host/v1", "os": os_name, "arch": arch, "python": python, "ram_bytes": 128 * 2**30,
            **({"glibc": glibc} if glibc else {}),
            "nvidia": {"driver_version": driver, "cuda_driver_version": cuda, "gpus": gpus}}


def choose(profile: dict | str) -> tuple[EngineChoice | None, EngineSearch]:
    host = load_host(FIXTURES / f"{profile}.json") if isinstance(profile, str) else host_from_dict(profile)
    search = EngineSearch()
    choice = choose_engine(host, MATRIX, MODEL, MATRIX.engines.engines, python=host.python_minor,
                           workload=WORKLOAD, search=search)
    return choice, search


# (name, host, engine, release, precision, tensor-parallel size, why)
REFERENCE = [
    ("h100-80gb-driver580", "linux-x86_64-h100-80gb-driver580", "vllm", "0.33.0", "bf16", 1,
     "driver 580 runs vLLM's CUDA 13.0 wheels; sm_90 is in 0.33.0's kernels; 20.6 GB of bf16 fits"),
    ("h200-141gb-driver580", box("NVIDIA H200", "9.0", 150.0, "580.95.05", "13.0"), "vllm", "0.33.0", "bf16", 1,
     "as the H100, with room for a KV cache of over a million tokens"),
    ("l4-driver550", "linux-x86_64-l4-driver550", "vllm", "0.19.1", "fp8", 1,
     "550 runs CUDA <= 12.4, so no CUDA 13 vLLM (0.20.0+); 0.19.1 (CUDA 12.9) runs by minor-version "
     "compatibility; bf16 (25 GB with the profiling peak) overflows 0.9 x 24 GB; cc 8.9 has FP8 W8A8"),
    ("rtx4090-driver550", "linux-x86_64-rtx4090-driver550", "vllm", "0.19.1", "fp8", 1, "as the L4"),
    ("rtx5090-driver570", box("NVIDIA GeForce RTX 5090", "12.0", 34.2, "570.133.07", "12.8"), "vllm", "0.19.1",
     "bf16", 1, "570 cannot run CUDA 13; 0.19.1 and torch 2.10 cu128 both carry sm_120; 32 GB holds bf16"),
    ("rtx5090-driver580", box("NVIDIA GeForce RTX 5090", "12.0", 34.2, "580.95.05", "13.0"), "vllm", "0.33.0",
     "bf16", 1, "580 runs the newest vLLM; 0.92 x 34.2 GB holds bf16 and the full context"),
    ("a100-40gb-driver535", "linux-x86_64-a100-40gb-driver535", "vllm", "0.19.1", "bf16", 1,
     "535 (CUDA 12.2) runs 0.19.1 by minor-version compatibility; Python 3.10 gets transformers 5.20.2"),
    ("a10g-driver535", "linux-x86_64-a10g-driver535", "vllm", "0.19.1", "fp8", 1,
     "cc 8.6: FP8 weight-only through Marlin; bf16 does not fit 0.9 x 24 GB"),
    ("t4-driver535", "linux-x86_64-t4-driver535", "vllm", "0.19.1", "nf4", 1,
     "cc 7.5: fp16 (no bf16) does not fit 16 GB, FP8 needs 8.0, in-flight bitsandbytes 4-bit (vLLM <= 0.27.1)"),
    ("v100-16gb-driver535", "linux-x86_64-v100-16gb-driver535", "vllm", "0.19.1", "nf4", 1,
     "0.19.1's CUDA 12.9 wheel and torch 2.10 cu128 are the last with sm_70 kernels; 4-bit fits 16 GB"),
    ("2x-rtx3090-driver550", box("NVIDIA GeForce RTX 3090", "8.6", 25.4, "550.120", "12.4", count=2), "vllm",
     "0.19.1", "bf16", 2, "bf16 does not fit one card; tensor parallel over two beats quantizing"),
    ("2x-rtx4090-driver550", "linux-x86_64-2x-rtx4090-driver550", "vllm", "0.19.1", "bf16", 2, "as 2x RTX 3090"),
    ("2x-rtx4060ti-16gb-driver550", box("NVIDIA GeForce RTX 4060 Ti", "8.9", 17.2, "550.120", "12.4", count=2),
     "vllm", "0.19.1", "bf16", 2, "bf16 on one 16 GB card overflows; over two (the vision tower whole on each, "
     "vLLM's 2,048-token profiling step below 70 GiB) it fits: tensor parallel before quantizing"),
]

NO_ENGINE = [
    ("linux-aarch64-gh200-driver570", "570 cannot run CUDA 13 engines; torch 2.10 (vLLM 0.19.1) is CPU-only on "
     "PyPI for aarch64", "wheel needs driver >= 580.65.6, this host has 570.133.20"),
    ("linux-x86_64-gtx1080ti-driver535", "cc 6.1: no engine ships sm_60 kernels", "no kernels"),
    ("linux-x86_64-rtx3060-12gb-driver550", "12 GB: not even 4-bit with the profiling peak fits", "per GPU at the least"),
    ("windows-x86_64-rtx4070-driver566", "no engine wheels for Windows", "Linux"),
    ("macos-arm64-m2-32gb", "no NVIDIA GPU", "NVIDIA GPU"),
    ("linux-x86_64-cpu-only-32gb", "no NVIDIA GPU", "NVIDIA GPU"),
    ("linux-x86_64-a10g-driver535-glibc2.27", "Ubuntu 18.04's glibc 2.27 is below every engine's floor (vLLM "
     "2.28-2.35, SGLang 2.28-2.34: the wheels' manylinux tags and torch's manylinux_2_28)",
     "its wheels need glibc >= 2.28, this host has 2.27"),
]


@pytest.mark.parametrize(("name", "host", "engine", "release", "precision", "tp", "why"), REFERENCE,
                         ids=[r[0] for r in REFERENCE])
def test_reference_hosts_choose_the_engine(name, host, engine, release, precision, tp, why):
    choice, _ = choose(host)
    assert choice is not None, why
    assert (choice.engine.name, str(choice.release.version), choice.precision, choice.tensor_parallel_size) == (
        engine, release, precision, tp), why
    assert choice.torch.version == choice.release.torch  # the engine's pin, not the newest torch
    assert choice.release.transformers.contains(choice.transformers) and choice.transformers >= MODEL.min_transformers
    assert choice.max_model_len == SERVE.context
    assert choice.budget.kv_tokens >= SERVE.context


def test_reference_set_covers_the_machines_the_issue_names():
    names = " ".join(r[0] for r in REFERENCE) + " " + " ".join(r[0] for r in NO_ENGINE)
    for needed in ("h100", "h200", "l4", "rtx4090", "rtx5090-driver570", "rtx5090-driver580", "a100-40gb", "a10g",
                   "t4", "v100", "2x-rtx3090", "2x-rtx4060ti", "gh200", "macos", "windows", "cpu-only"):
        assert needed in names, needed
    assert len(REFERENCE) >= 12


@pytest.mark.parametrize(("host", "why", "said"), NO_ENGINE, ids=[r[0] for r in NO_ENGINE])
def test_hosts_no_engine_serves_say_why(host, why, said):
    choice, search = choose(host)
    assert choice is None, why
    texts = [search.explain(e) for e in MATRIX.engines.engines]
    assert all(t is not None for t in texts)
    assert said in " ".join(t for t in texts if t)


def test_driver_550_never_gets_a_cuda_13_engine():
    for name in ("linux-x86_64-l4-driver550", "linux-x86_64-rtx4090-driver550", "linux-x86_64-2x-rtx4090-driver550"):
        choice, search = choose(name)
        assert choice is not None and choice.release.cuda.major == 12
        assert choice.variant.cuda is not None and choice.variant.cuda.major == 12
        assert "vLLM 0.33.0 passed over: the CUDA 13.0 wheel needs driver >= 580.65.6" in (search.explain(choice.engine) or "")


def test_v100_gets_only_an_engine_build_with_sm70_kernels():
    for driver, cuda in (("535.183.01", "12.2"), ("580.95.05", "13.0")):
        choice, _ = choose(box("Tesla V100-SXM2-16GB", "7.0", 17.2, driver, cuda))
        assert choice is not None
        assert "sm_70" in choice.release.archs_for("linux-x86_64")
        assert "sm_70" in choice.variant.archs_for("linux-x86_64")


def test_a_busy_gpu_lowers_the_share_to_what_is_free():
    """Other processes keep their memory: the share never asks for more than is free."""
    idle, _ = choose(box("NVIDIA H100 80GB HBM3", "9.0", 85.0, "580.95.05", "13.0", used_gb=0.6))
    busy, _ = choose(box("NVIDIA H100 80GB HBM3", "9.0", 85.0, "580.95.05", "13.0", used_gb=40.0))
    assert idle is not None and busy is not None
    assert idle.budget.share == 0.92  # vLLM 0.33.0's default
    assert busy.budget.share * busy.budget.total_bytes <= busy.budget.free_bytes
    assert busy.budget.share < idle.budget.share and busy.budget.kv_tokens < idle.budget.kv_tokens


def _forced(profile: dict, precision: str, engines=MATRIX.engines.engines) -> EngineChoice | None:
    search = EngineSearch()
    host = host_from_dict(profile)
    return choose_engine(host, MATRIX, MODEL, engines, python=host.python_minor, workload=WORKLOAD,
                         search=search, forced_precision=precision)


def test_a_context_that_does_not_fit_is_lowered_not_refused_above_the_floor():
    """bf16 on a card that holds the weights but not 25,480 tokens of cache gets the context it holds."""
    tight = box("NVIDIA H100 80GB HBM3", "9.0", 85.0, "580.95.05", "13.0", used_gb=85.0 - 26.0)
    choice = _forced(tight, "bf16")
    assert choice is not None
    assert MIN_SERVING_CONTEXT <= choice.max_model_len < SERVE.context
    assert choice.max_model_len % KV_BLOCK_TOKENS == 0
    assert choice.budget.kv_tokens >= choice.max_model_len
    assert _forced(box("NVIDIA H100 80GB HBM3", "9.0", 85.0, "580.95.05", "13.0", used_gb=85.0 - 25.5), "bf16") is None


def test_the_full_context_in_fp8_comes_before_a_shorter_one_in_bf16():
    """Open-AutoGLM's clients expect the serving context; 8-bit weights keep it where 16-bit would cut it."""
    choice, _ = choose(box("NVIDIA H100 80GB HBM3", "9.0", 85.0, "580.95.05", "13.0", used_gb=85.0 - 26.0))
    assert choice is not None and choice.precision == "fp8" and choice.max_model_len == SERVE.context


def test_the_search_prefers_16_bit_over_several_gpus_to_quantizing_on_one():
    choice, _ = choose(box("NVIDIA A10G", "8.6", 24.1, "535.183.01", "12.2", count=2))
    assert choice is not None and choice.precision == "bf16" and choice.tensor_parallel_size == 2


def test_forced_precision_an_engine_cannot_serve_passes_over_with_a_reason():
    host = load_host(FIXTURES / "linux-x86_64-h100-80gb-driver580.json")
    search = EngineSearch()
    assert choose_engine(host, MATRIX, MODEL, MATRIX.engines.engines, python="3.12", workload=WORKLOAD,
                         search=search, forced_precision="int8") is None
    assert "does not serve int8" in (search.explain(MATRIX.engines.engines[0]) or "")


# ---------------------------------------------------------------- the memory budget


def test_kv_cache_per_token_matches_the_model_arithmetic():
    a = architecture_of(MODEL)
    assert kv_bytes_per_token(a, 1) == 40 * 2 * 2 * 128 * 2 == 40 * 1024  # 40 KiB, shared/notes/serving.md
    assert kv_bytes_per_token(a, 2) == kv_bytes_per_token(a, 1) // 2
    assert kv_bytes_per_token(a, 4) == kv_bytes_per_token(a, 2)  # 2 KV heads: replicated past two ranks


def test_image_tokens_at_the_pixel_cap():
    """5,000,000 pixels, patch 14, temporal 2, merge 2: at most 3,188 tokens (3,108 measured for 1080x2400)."""
    a = architecture_of(MODEL)
    assert image_tokens(a, 5_000_000) == 3188
    assert image_tokens(a, None) == 0


def test_weights_per_gpu_by_precision_and_split():
    bf16 = weights_per_gpu(MODEL, "bf16", 1)
    assert bf16 == 2 * MODEL.parameters  # every parameter 16-bit
    assert weights_per_gpu(MODEL, "fp8", 1) < 0.65 * bf16
    assert weights_per_gpu(MODEL, "nf4", 1) < weights_per_gpu(MODEL, "fp8", 1)
    vision = 2 * MODEL.parameters_by_part["vision"]
    assert weights_per_gpu(MODEL, "bf16", 2) == pytest.approx((bf16 - vision) / 2 + vision, abs=1)


def test_budget_adds_up_and_respects_the_share():
    b = engine_budget(MODEL, precision="bf16", tp=1, total_bytes=85 * GB, free_bytes=84 * GB, default_share=0.92,
                      workload=WORKLOAD)
    assert b.share == 0.92
    assert b.fixed + b.kv_bytes == int(0.92 * 85 * GB)
    assert b.required(SERVE.context) == b.fixed + SERVE.context * b.kv_per_token
    assert set(b.breakdown()) == {"weights", "activations", "cuda_graphs", "overhead", "kv_cache"}
    eager = engine_budget(MODEL, precision="bf16", tp=1, total_bytes=85 * GB, free_bytes=84 * GB, default_share=0.92,
                          workload=WORKLOAD, eager=True)
    assert eager.cuda_graphs == 0 and eager.kv_bytes > b.kv_bytes


def test_an_engine_that_computes_its_share_takes_the_free_memory():
    b = engine_budget(MODEL, precision="bf16", tp=1, total_bytes=85 * GB, free_bytes=60 * GB, default_share=None,
                      workload=WORKLOAD)
    assert b.share * 85 * GB <= 60 * GB and b.share >= 0.69


def test_engine_releases_pin_a_torch_the_matrix_knows():
    for engine in MATRIX.engines.engines:
        for release in engine.releases:
            assert any(t.version == release.torch for t in MATRIX.torch), (engine.name, release.version)
            assert release.version >= Version("0.5")


# ---------------------------------------------------------------- the engine in the plan


OPEN_AUTOGLM_FLAGS = [("--served-model-name", "autoglm-phone-9b"), ("--max-model-len", "25480"),
                      ("--limit-mm-per-prompt", '{"image":10}'), ("--mm-processor-kwargs", '{"max_pixels":5000000}'),
                      ("--chat-template-content-format", "string"), ("--mm-encoder-tp-mode", "data"),
                      ("--mm-processor-cache-type", "shm")]


def _engine_plan(profile: dict | str, engine: str = "auto"):
    from provision.plan.document import Preferences
    from provision.plan.search import plan

    host = load_host(FIXTURES / f"{profile}.json") if isinstance(profile, str) else host_from_dict(profile)
    return plan(host, MATRIX, MODEL, Preferences(engine=engine))


@pytest.mark.parametrize(("name", "host", "engine", "release", "precision", "tp", "why"), REFERENCE,
                         ids=[r[0] for r in REFERENCE])
def test_engine_plans_carry_the_server_and_round_trip(name, host, engine, release, precision, tp, why):
    from provision.plan.document import Plan

    chosen = _engine_plan(host)
    assert chosen.serve is not None and chosen.serve.engine == engine and chosen.serve.engine_version == release
    assert Plan.from_dict(chosen.to_dict()) == chosen
    assert chosen.reasons[0].decision == "engine"
    argv = chosen.serve.argv
    assert argv[:3] == ("vllm", "serve", "zai-org/AutoGLM-Phone-9B")
    pairs = set(itertools.pairwise(argv))
    for pair in OPEN_AUTOGLM_FLAGS:
        assert pair in pairs, pair
    assert ("--tensor-parallel-size", str(tp)) in pairs
    assert ("--port", "8000") in pairs
    assert chosen.packages["vllm"] == release and chosen.packages["torch"] == str(chosen.torch_version)
    assert (("--quantization", "bitsandbytes") in pairs) == (precision == "nf4")
    assert (("--quantization", "fp8") in pairs) == (precision == "fp8")
    if precision == "nf4":
        assert "bitsandbytes" in chosen.packages


def test_auto_falls_back_to_transformers_and_says_why():
    for host in ("windows-x86_64-rtx4070-driver566", "macos-arm64-m2-32gb", "linux-x86_64-cpu-only-32gb",
                 "linux-x86_64-rtx3060-12gb-driver550"):
        chosen = _engine_plan(host)
        assert chosen.serve.engine == "transformers" and chosen.serve.image is None
        assert chosen.serve.engine_version == chosen.packages["transformers"]
        assert chosen.reasons[0].decision == "engine"
        assert chosen.reasons[0].choice == f"transformers {chosen.packages['transformers']}"
        assert "passed over" in chosen.reasons[0].why or "serve on Linux" in chosen.reasons[0].why


def test_an_engine_asked_for_that_cannot_run_is_a_no_plan():
    from provision.errors import NoViablePlan

    with pytest.raises(NoViablePlan, match=r"--engine vllm: vLLM 0\.33\.0 passed over"):
        _engine_plan("linux-x86_64-gtx1080ti-driver535", engine="vllm")


def test_engine_transformers_keeps_the_transformers_plan_and_serves_it_with_transformers_serve():
    from provision.plan.document import Plan

    chosen = _engine_plan("linux-x86_64-h100-80gb-driver580", engine="transformers")
    assert "vllm" not in chosen.packages and chosen.to_dict()["serve"]["engine"] == "transformers"
    assert chosen.serve.argv == ("transformers", "serve", "autoglm-phone-9b", "--port", "8000",
                                 "--dtype", "bfloat16", "--device", "auto")
    assert chosen.serve.model_source == "zai-org/AutoGLM-Phone-9B"
    assert (chosen.serve.tensor_parallel_size, chosen.serve.gpu_memory_utilization) == (1, None)
    assert chosen.reasons[0].decision == "engine" and "--engine transformers" in chosen.reasons[0].why
    assert Plan.from_dict(chosen.to_dict()) == chosen


def test_sglang_plans_use_its_own_flags():
    chosen = _engine_plan("linux-x86_64-h100-80gb-driver580", engine="sglang")
    assert chosen.serve is not None and chosen.serve.engine == "sglang"
    argv = chosen.serve.argv
    assert argv[:5] == ("python3", "-m", "sglang.launch_server", "--model-path", "zai-org/AutoGLM-Phone-9B")
    pairs = set(itertools.pairwise(argv))
    assert ("--context-length", "25480") in pairs and ("--tp-size", "1") in pairs
    assert ("--mm-process-config", '{"image":{"max_pixels":5000000}}') in pairs
    assert "--mm-enable-dp-encoder" in argv
    share = dict(itertools.pairwise(argv))["--mem-fraction-static"]
    assert 0 < float(share) < 1  # weights and the KV pool only, as SGLang counts it


def test_cli_plan_engine_auto_json_and_the_engine_plan_renders(tmp_path, capsys):
    import yaml

    from provision.cli import main

    host = str(FIXTURES / "linux-x86_64-h100-80gb-driver580.json")
    assert main(["plan", "--host", host, "--engine", "auto", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["serve"]["engine"] == "vllm" and doc["serve"]["max_model_len"] == 25480
    assert doc["packages"]["vllm"] == "0.33.0"
    assert main(["plan", "--host", host, "--engine", "auto", "--context", "16384", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["serve"]["max_model_len"] == 16384
    out = tmp_path / "out"
    assert main(["render", "--host", host, "--engine", "auto", "--out", str(out), "--no-resolve"]) == 0
    capsys.readouterr()
    req = (out / "requirements.txt").read_text()
    pins = sorted(ln for ln in req.splitlines() if ln and not ln.startswith("#"))
    # the engine and its exact torch, all from PyPI: no PyTorch index line, no transformers[serving]
    assert pins == ["torch==2.14.0", "torchvision==0.29.0", "transformers==5.20.2", "vllm==0.33.0"]
    assert "FROM vllm/vllm-openai:v0.33.0 AS engine" in (out / "Dockerfile").read_text()
    rows = yaml.safe_load((out / ".github/workflows/provision.yml").read_text())["jobs"]["environment"]
    assert [r["variant"] for r in rows["strategy"]["matrix"]["include"]] == ["cu130"]  # the engine's build only
    lock = json.loads((out / "provision.lock.json").read_text())
    assert lock["plan"]["serve"] == doc["serve"] and "serve.sh" in lock["files"]
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(doc))
    again = tmp_path / "again"
    assert main(["render", "--host", host, "--plan", str(plan_file), "--out", str(again), "--no-resolve"]) == 0
    assert (again / "serve.sh").read_bytes() == (out / "serve.sh").read_bytes()


# ---------------------------------------------------------------- SGLang's exact transformers pins


VLLM, SGLANG = MATRIX.engines.engines


def _sglang(profile: dict | str) -> tuple[EngineChoice | None, EngineSearch]:
    host = load_host(FIXTURES / f"{profile}.json") if isinstance(profile, str) else host_from_dict(profile)
    search = EngineSearch()
    return choose_engine(host, MATRIX, MODEL, [SGLANG], python=host.python_minor, workload=WORKLOAD,
                         search=search), search


def test_every_sglang_pin_the_model_can_use_is_a_transformers_row():
    """SGLang pins transformers exactly; without that release in companions.toml the release is passed over."""
    rows = {c.version for c in MATRIX.companion_versions("transformers")}
    for release in SGLANG.releases:
        (clause,) = release.transformers
        pinned = Version(clause.version)
        assert clause.operator == "==", release.version
        assert pinned in rows or pinned < MODEL.min_transformers, (release.version, pinned)


@pytest.mark.parametrize(("host", "release", "transformers", "precision"), [
    # driver 550 runs CUDA 12: SGLang's PyPI builds are CUDA 13.0 from 0.5.11 (0.5.11-0.5.19 have a cu129
    # lane off PyPI, which the planner does not install), so 0.5.10.post1 (CUDA 12.9), which pins 5.3.0
    ("linux-x86_64-a100-80gb-driver550", "0.5.10.post1", "5.3.0", "bf16"),
    # Python 3.10 on driver 580: 0.5.22+ need Python >= 3.11; 0.5.21 pins 5.12.1
    (box("NVIDIA H100 80GB HBM3", "9.0", 85.0, "580.95.05", "13.0", python="3.10.14"), "0.5.21", "5.12.1", "bf16"),
    ("linux-x86_64-h100-80gb-driver580", "0.5.23", "5.19.0", "bf16"),
], ids=["a100-80gb-driver550", "h100-driver580-py3.10", "h100-driver580"])
def test_sglang_asked_for_gets_its_release_with_the_transformers_it_pins(host, release, transformers, precision):
    chosen = _engine_plan(host, engine="sglang")
    assert chosen.serve is not None and chosen.serve.engine_version == release
    assert chosen.packages["transformers"] == transformers and chosen.packages["sglang"] == release
    assert chosen.placement.precision == precision


def test_driver_550_passes_sglangs_cuda_13_builds_over():
    chosen, search = _sglang("linux-x86_64-a100-80gb-driver550")
    assert chosen is not None and str(chosen.release.version) == "0.5.10.post1"
    refused = search.passed_over["sglang"]
    for version in ("0.5.11", "0.5.19", "0.5.23"):
        assert "the CUDA 13.0 wheel needs driver >= 580.65.6" in refused[Version(version)].why, version


# ---------------------------------------------------------------- SGLang's precision rules


@pytest.mark.parametrize(("host", "release", "kind"), [
    # cc 8.9: FP8 W8A8; 24 GB cannot hold bf16 plus SGLang's profiling and cache, FP8 can
    ("linux-x86_64-l4-driver550", "0.5.10.post1", "FP8 W8A8"),
    (box("NVIDIA L4", "8.9", 24.2, "580.95.05", "13.0"), "0.5.23", "FP8 W8A8"),
    # cc 8.6: FP8 weight-only through Marlin (SGLang turns it on for 8.0 <= cc < 8.9)
    ("linux-x86_64-a10g-driver535", "0.5.10.post1", "Marlin"),
], ids=["l4-driver550", "l4-driver580", "a10g-driver535"])
def test_sglang_quantizes_to_fp8_where_16_bit_does_not_fit(host, release, kind):
    choice, _ = _sglang(host)
    assert choice is not None and choice.precision == "fp8" and str(choice.release.version) == release
    assert choice.quantization is not None and choice.quantization.method == "fp8" and kind in choice.quantization.kind
    assert choice.compute_precision == "bf16" and choice.max_model_len == SERVE.context
    assert _forced(host if isinstance(host, dict) else json.loads((FIXTURES / f"{host}.json").read_text()),
                   "bf16", [SGLANG]) is None  # 16-bit does not fit: that is why FP8
    chosen = _engine_plan(host, engine="sglang")
    pairs = set(itertools.pairwise(chosen.serve.argv))
    assert ("--quantization", "fp8") in pairs and ("--dtype", "bfloat16") in pairs
    assert "bitsandbytes" not in chosen.packages


def test_sglang_fp8_needs_room_for_the_16_bit_checkpoint_it_loads_first():
    """SGLang allocates and loads the 16-bit Linear weights whole, then quantizes: a 16 GB card cannot load them."""
    assert load_peak_bytes(MODEL, 1) > 20 * GB
    choice, search = _sglang(box("NVIDIA GeForce RTX 4060 Ti", "8.9", 17.2, "580.95.05", "13.0"))
    assert choice is None
    assert "fp8 (loaded in 16-bit before it is quantized) on NVIDIA GeForce RTX 4060 Ti" in (search.explain(SGLANG) or "")


def test_sglang_has_no_fp8_below_8_0_and_no_in_flight_4_bit():
    assert not SGLANG.quantizations(SGLANG.releases[0], (7, 5))
    assert {q.precision for q in SGLANG.quantization} == {"fp8"}
    assert all(q.loads_16_bit_first for q in SGLANG.quantization)
    assert SGLANG.quantizations(SGLANG.releases[0], (8, 0))[0].kind.startswith("FP8 weight-only")


# ---------------------------------------------------------------- glibc: the wheels' manylinux floor


UBUNTU_1804 = "linux-x86_64-a10g-driver535-glibc2.27"  # Ubuntu 18.04: glibc 2.27
RHEL_8 = "linux-x86_64-a100-40gb-driver535-glibc2.28"  # RHEL 8 / Debian 10: glibc 2.28


def test_an_old_glibc_passes_every_engine_over_naming_both_versions():
    choice, search = choose(UBUNTU_1804)
    assert choice is None
    assert search.explain(VLLM) == "vLLM 0.33.0 passed over: its wheels need glibc >= 2.28, this host has 2.27"
    assert search.explain(SGLANG) == "SGLang 0.5.23 passed over: its wheels need glibc >= 2.34, this host has 2.27"
    assert {r.rule for r in search.rejections} == {Rule.GLIBC}
    assert {(str(r.glibc), str(r.glibc_floor)) for r in search.of(Rule.GLIBC)} >= {("2.27", "2.28"), ("2.27", "2.35")}


@pytest.mark.parametrize("glibc", [None, "2.31", "2.39"])
def test_glibc_unknown_or_at_the_floor_is_no_obstacle(glibc):
    """The same A10G on driver 535 gets vLLM 0.19.1 (manylinux_2_31) once glibc is unknown or new enough."""
    choice, _ = choose(box("NVIDIA A10G", "8.6", 24.1, "535.183.01", "12.2", glibc=glibc))
    assert choice is not None and (choice.engine.name, str(choice.release.version)) == ("vllm", "0.19.1")


def test_auto_on_an_old_glibc_serves_with_transformers_and_says_why():
    chosen = _engine_plan(UBUNTU_1804)
    assert chosen.serve.engine == "transformers" and chosen.reasons[0].choice == f"transformers {chosen.serve.engine_version}"
    assert "vLLM 0.33.0 passed over: its wheels need glibc >= 2.28, this host has 2.27" in chosen.reasons[0].why


def test_the_no_plan_remedy_names_the_glibc_that_gives_a_plan():
    with pytest.raises(NoViablePlan) as err:
        _engine_plan(UBUNTU_1804, engine="vllm")
    assert err.value.message == "--engine vllm: vLLM 0.33.0 passed over: its wheels need glibc >= 2.28, this host has 2.27"
    # 2.28 would admit vLLM 0.33.0's wheels, but driver 535 cannot run them: 0.19.1 (manylinux_2_31) is what runs
    assert err.value.remedies[0].startswith("use a Linux with glibc >= 2.31 (this host has 2.27): vLLM 0.19.1 runs here")
    with pytest.raises(NoViablePlan) as err:
        _engine_plan(UBUNTU_1804, engine="sglang")
    assert err.value.remedies[0].startswith("use a Linux with glibc >= 2.28 (this host has 2.27): SGLang 0.5.10.post1")


def test_no_glibc_remedy_where_a_newer_glibc_would_not_give_a_plan():
    """A GTX 1080 Ti has no engine kernels: upgrading glibc changes nothing, so it is not offered."""
    with pytest.raises(NoViablePlan) as err:
        _engine_plan(box("NVIDIA GeForce GTX 1080 Ti", "6.1", 11.8, "535.183.01", "12.2", glibc="2.27"), engine="vllm")
    assert not any("glibc" in r for r in err.value.remedies)


def test_glibc_2_28_and_driver_535_get_sglang_and_say_why_not_vllm():
    """vLLM's CUDA 12.9 build (0.19.1) is manylinux_2_31 and its CUDA 13 builds need driver 580; SGLang 0.5.10.post1
    (CUDA 12.9, manylinux_2_28 with torch 2.9.1) runs: the better engine is passed over with both reasons."""
    chosen = _engine_plan(RHEL_8)
    assert chosen.serve is not None and (chosen.serve.engine, chosen.serve.engine_version) == ("sglang", "0.5.10.post1")
    assert chosen.packages["transformers"] == "5.3.0" and chosen.packages["torch"] == "2.9.1"
    assert chosen.placement.precision == "bf16"
    why = chosen.reasons[0].why
    assert "vLLM 0.33.0 passed over: the CUDA 13.0 wheel needs driver >= 580.65.6" in why
    assert "vLLM 0.19.1 (CUDA 12.9): its wheels need glibc >= 2.31, this host has 2.28" in why
    assert "SGLang 0.5.23 passed over: its wheels need glibc >= 2.34, this host has 2.28" in why
    assert chosen.serve.argv[:3] == ("python3", "-m", "sglang.launch_server")


# ---------------------------------------------------------------- the defaults: `provision plan` with no options


def _default_plan(profile: dict | str):
    from provision.plan.document import Preferences
    from provision.plan.search import plan

    assert Preferences().engine == "auto" and Preferences().context_tokens is None
    host = load_host(FIXTURES / f"{profile}.json") if isinstance(profile, str) else host_from_dict(profile)
    return host, plan(host, MATRIX, MODEL)


def _every_host() -> list[dict | str]:
    return [*sorted(p.stem for p in FIXTURES.glob("*.json")), *(r[1] for r in REFERENCE if isinstance(r[1], dict))]


def _default_plans():
    out = []
    for profile in _every_host():
        try:
            out.append(_default_plan(profile))
        except NoViablePlan:
            continue
    return out


def test_an_h100_on_driver_580_plans_vllm_on_cuda_13_by_default():
    _, chosen = _default_plan("linux-x86_64-h100-80gb-driver580")
    vllm = MATRIX.engines.get("vllm")
    release = vllm.release(chosen.serve.engine_version)
    assert (chosen.serve.engine, chosen.serve.engine_version) == ("vllm", "0.33.0")
    assert release.cuda.major == 13 and chosen.cuda is not None and chosen.cuda.major == 13  # a CUDA 13 build
    assert chosen.packages["torch"] == str(release.torch) == str(chosen.torch_version)  # exactly the engine's pin
    transformers = Version(chosen.packages["transformers"])
    assert release.transformers.contains(transformers) and transformers >= MODEL.min_transformers
    assert chosen.precision == "bf16" and chosen.serve.tensor_parallel_size == 1 == len(chosen.placement.gpus)
    assert chosen.serve.max_model_len == 25480 and not chosen.warnings
    pairs = set(itertools.pairwise(chosen.serve.argv))
    for pair in [*OPEN_AUTOGLM_FLAGS, ("--port", "8000"), ("--tensor-parallel-size", "1"), ("--dtype", "bfloat16")]:
        assert pair in pairs, pair
    # Open-AutoGLM's `--allowed-local-media-path /` is left out on purpose (matrices/models.toml): the agent sends
    # the screenshot as a data: URL, and "/" would let any client read any file the server can
    assert "--allowed-local-media-path" not in chosen.serve.argv


def test_driver_550_never_gets_a_cuda_13_engine_build_by_default():
    seen = 0
    for host, chosen in _default_plans():
        if host.nvidia is None or Version(host.nvidia.driver_version) >= Version("580") or chosen.serve.engine == \
                "transformers":
            continue
        release = MATRIX.engines.get(chosen.serve.engine).release(chosen.serve.engine_version)
        assert release.cuda.major == 12 and chosen.cuda is not None and chosen.cuda.major == 12, host
        seen += 1
    assert seen >= 8  # L4, RTX 4090, A10G, T4, V100 on 535, 2x RTX 3090/4090/4060 Ti, RTX 5090 on 570...


def test_a_v100_never_gets_an_engine_build_without_sm70_kernels_by_default():
    for profile in ("linux-x86_64-v100-16gb-driver535", "linux-x86_64-v100-16gb-driver580",
                    box("Tesla V100-SXM2-32GB", "7.0", 34.1, "580.95.05", "13.0")):
        host, chosen = _default_plan(profile)
        assert chosen.serve.engine == "vllm", profile  # vLLM 0.19.1: the last with sm_70 kernels
        release = MATRIX.engines.get("vllm").release(chosen.serve.engine_version)
        variant = next(t for t in MATRIX.torch if t.version == chosen.torch_version).variant(chosen.variant)
        assert "sm_70" in release.archs_for(host.platform) and "sm_70" in variant.archs_for(host.platform)
        assert release.cuda.major == 12


def test_windows_and_macos_get_transformers_serve_by_default():
    for profile in ("windows-x86_64-rtx4070-driver566", "macos-arm64-m2-32gb"):
        _, chosen = _default_plan(profile)
        assert chosen.serve.engine == "transformers" and chosen.serve.argv[:2] == ("transformers", "serve")
        assert "vllm" not in chosen.packages and "sglang" not in chosen.packages
        assert "passed over" in chosen.reasons[0].why or "serve on Linux" in chosen.reasons[0].why


def test_an_explicit_context_is_served_exactly_or_not_at_all():
    """The default lowers the context to what fits (down to 8,192); an asked-for one is the user's: never lowered."""
    from provision.plan.document import Preferences
    from provision.plan.search import plan

    tight = host_from_dict(box("NVIDIA H100 80GB HBM3", "9.0", 85.0, "580.95.05", "13.0", used_gb=85.0 - 26.0))
    lowered = plan(tight, MATRIX, MODEL, Preferences(engine="vllm", precision="bf16"))
    context = lowered.serve.max_model_len
    assert MIN_SERVING_CONTEXT <= context < SERVE.context
    assert ("--max-model-len", str(context)) in set(itertools.pairwise(lowered.serve.argv))
    assert lowered.warnings[-1].startswith(f"context lowered to {context:,} tokens: 25,480 needs ")
    assert lowered.placement.required_bytes < lowered.placement.available_bytes
    assert plan(tight, MATRIX, MODEL, Preferences(engine="vllm", precision="bf16",
                                                  context_tokens=context)).serve.max_model_len == context
    with pytest.raises(NoViablePlan, match=r"at 25,480 tokens needs"):
        plan(tight, MATRIX, MODEL, Preferences(engine="vllm", precision="bf16", context_tokens=25480))


def test_torch_options_an_engine_cannot_meet_pass_it_over_instead_of_being_ignored():
    """An engine pins torch exactly: --torch, --variant or a wheelhouse it does not match pass it over, with why."""
    from provision.plan.document import Preferences
    from provision.plan.search import plan

    h100 = load_host(FIXTURES / "linux-x86_64-h100-80gb-driver580.json")
    pinned = plan(h100, MATRIX, MODEL, Preferences(torch_version=Version("2.13.0")))
    assert pinned.serve.engine == "vllm" and pinned.torch_version == Version("2.13.0")  # a release pinning 2.13.0
    assert "it pins torch 2.14.0, and --torch asks for 2.13.0" in pinned.reasons[0].why
    other = plan(h100, MATRIX, MODEL, Preferences(torch_version=Version("2.15.0")))
    assert other.serve.engine == "transformers" and other.torch_version == Version("2.15.0")
    cu126 = plan(h100, MATRIX, MODEL, Preferences(variant="cu126"))
    assert cu126.serve.engine == "transformers" and cu126.variant == "cu126"
    assert "--variant asks for cu126" in cu126.reasons[0].why
    wheels = plan(h100, MATRIX, MODEL, Preferences(torch_available=frozenset({(Version("2.14.0"), "")})))
    assert wheels.serve.engine == "vllm" and wheels.packages["torch"] == "2.14.0"
    none = plan(h100, MATRIX, MODEL, Preferences(torch_available=frozenset({(Version("2.14.1"), "cu126")})))
    assert none.serve.engine == "transformers" and "not in the configured wheel sources" in none.reasons[0].why
