"""PyPI's torch build where the PyTorch index cannot be reached, so a lock hashes every package.

Facts the expectations rest on (matrices/*.toml carry the sources):
- PyPI's torch 2.15.0 for linux-x86_64 is the cu132 build (``pypi_default``); 2.14.x's is cu130.
- Driver 580.159 runs CUDA 13.0 natively (toolkit floor 580.95.05) and 13.2 through minor-version
  compatibility (family 13 floor 580.65.06); 13.2 natively needs 595.71.05.
- CUDA 13 builds start at sm_75 (a V100, sm_70, has no kernels in them).
- Driver 570 is below the CUDA 13 family floor: it runs no cu130/cu132 build at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import provision.common.net
from provision.cli import main
from provision.data.catalog import load_catalog, resolve_model
from provision.data.matrix import load_matrix
from provision.errors import InvalidInput, NoViablePlan
from provision.host.profile import HostProfile, load_host
from provision.plan.document import Plan, Preferences
from provision.plan.search import plan
from provision.plan.usecase import plan_with_index
from provision.vocab import PYPI_INDEX

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
H100 = HOSTS / "linux-x86_64-h100-80gb-driver580.json"
MATRIX = load_matrix()
AUTOGLM = resolve_model("autoglm-phone-9b", load_catalog())
TRANSFORMERS = Preferences(engine="transformers")
OFFLINE = replace(TRANSFORMERS, torch_index_reachable=False)


def _host(name: str) -> HostProfile:
    return load_host(HOSTS / f"{name}.json")


def _why(p: Plan, decision: str) -> str:
    return next(r.why for r in p.reasons if r.decision == decision)


def test_an_unreachable_index_plans_pypis_build_of_the_same_release_and_says_why() -> None:
    h100 = load_host(H100)
    index, pypi = plan(h100, MATRIX, AUTOGLM, TRANSFORMERS), plan(h100, MATRIX, AUTOGLM, OFFLINE)
    assert (index.variant, index.index_url) == ("cu130", "https://download.pytorch.org/whl/cu130")
    assert (pypi.torch_version, pypi.variant, pypi.index_url) == (Version("2.15.0"), "cu132", PYPI_INDEX)
    # PyPI names its build by the plain version: the resolver finds torch's Requires-Dist there and hashes all of it
    assert (pypi.packages["torch"], pypi.packages["torchvision"]) == ("2.15.0", "0.29.2")
    assert (pypi.precision, pypi.placement.gpus, pypi.serve.max_model_len) == (
        index.precision, index.placement.gpus, index.serve.max_model_len)
    assert {k: v for k, v in pypi.packages.items() if k not in ("torch", "torchvision")} == {
        k: v for k, v in index.packages.items() if k not in ("torch", "torchvision")}
    why = _why(pypi, "variant")
    assert why.startswith("PyPI's torch 2.15.0 for linux-x86_64 is this cu132 build; the PyTorch index was not "
                          "reachable, so PyPI's build is planned, and a render hashes it and every dependency "
                          "(cu130 from that index would run natively); driver 580.159.04 (CUDA 13.0) runs CUDA 13.2 "
                          "builds through minor-version compatibility")
    assert why.endswith("; installed from PyPI")
    assert any("cu132 (CUDA 13.2) runs only through CUDA minor-version compatibility" in w for w in pypi.warnings)
    assert pypi.to_dict()["torch"] == {"version": "2.15.0", "variant": "cu132", "index_url": PYPI_INDEX,
                                       "index_reachable": False}


def test_a_reachable_or_unknown_index_plans_as_before() -> None:
    h100 = load_host(H100)
    unknown = plan(h100, MATRIX, AUTOGLM, TRANSFORMERS)
    reachable = plan(h100, MATRIX, AUTOGLM, replace(TRANSFORMERS, torch_index_reachable=True))
    assert unknown.torch_index_reachable is None and "index_reachable" not in unknown.to_dict()["torch"]
    assert reachable.to_dict()["torch"].pop("index_reachable") is True
    assert replace(reachable, torch_index_reachable=None) == unknown
    assert "not reachable" not in _why(unknown, "variant")


def test_a_newer_cuda_on_the_index_is_named_when_pypis_build_runs_natively() -> None:
    """Driver 595.71 runs CUDA 13.2 natively: on torch 2.14.1, PyPI's cu130 then gives up the index's newer cu132."""
    h100 = load_host(H100)
    assert h100.nvidia is not None
    new_driver = replace(h100, nvidia=replace(h100.nvidia, driver_version="595.71.05", cuda_driver_version=Version("13.2")))
    prefs = replace(OFFLINE, torch_version=Version("2.14.1"))
    assert plan(new_driver, MATRIX, AUTOGLM, replace(prefs, torch_index_reachable=None)).variant == "cu132"
    pypi = plan(new_driver, MATRIX, AUTOGLM, prefs)
    assert (pypi.variant, pypi.index_url, pypi.packages["torch"]) == ("cu130", PYPI_INDEX, "2.14.1")
    assert "(cu132 from that index has the newer CUDA 13.2)" in _why(pypi, "variant")
    assert not any("minor-version" in w for w in pypi.warnings)


@pytest.mark.parametrize(("name", "why"), [
    ("linux-x86_64-v100-16gb-driver580", "PyPI's cu130 for 2.14.1 has no sm_70 kernels"),
    ("linux-aarch64-gh200-driver570", "driver 570 is below the CUDA 13 family floor: PyPI's cu130 does not run"),
    ("linux-x86_64-rtx4090-driver550", "driver 550 runs no CUDA 13 build"),
])
def test_pypis_build_is_planned_only_where_it_runs(name: str, why: str) -> None:
    h = _host(name)
    assert plan(h, MATRIX, AUTOGLM, OFFLINE) == replace(plan(h, MATRIX, AUTOGLM, TRANSFORMERS),
                                                        torch_index_reachable=False), why


@pytest.mark.parametrize("name", sorted(p.stem for p in HOSTS.glob("*.json")))
@pytest.mark.parametrize("engine", ["transformers", "auto"])
def test_an_unreachable_index_never_costs_release_precision_placement_or_context(name: str, engine: str) -> None:
    h, prefs = _host(name), Preferences(engine=engine)
    try:
        index = plan(h, MATRIX, AUTOGLM, prefs)
    except NoViablePlan:
        with pytest.raises(NoViablePlan):
            plan(h, MATRIX, AUTOGLM, replace(prefs, torch_index_reachable=False))
        return
    pypi = plan(h, MATRIX, AUTOGLM, replace(prefs, torch_index_reachable=False))
    assert (pypi.torch_version, pypi.precision, pypi.placement.gpus, pypi.serve.engine, pypi.serve.max_model_len) == (
        index.torch_version, index.precision, index.placement.gpus, index.serve.engine, index.serve.max_model_len)
    if pypi.variant != index.variant:
        assert pypi.index_url == PYPI_INDEX != index.index_url and pypi.device == "cuda"
        assert f"({index.variant} from that index " in _why(pypi, "variant")
    else:
        assert replace(pypi, torch_index_reachable=None) == index


def test_variant_and_wheel_folders_keep_priority() -> None:
    h100 = load_host(H100)
    assert plan(h100, MATRIX, AUTOGLM, replace(OFFLINE, variant="cu130")).variant == "cu130"
    wheels = frozenset({(Version("2.15.0"), "cu130")})
    local = plan(h100, MATRIX, AUTOGLM, replace(OFFLINE, torch_available=wheels, torchvision_available=frozenset(
        {(Version("0.29.2"), "cu130")})))
    assert (local.variant, local.packages["torch"]) == ("cu130", "2.15.0+cu130")


def test_cpu_plans_keep_the_cpu_build() -> None:
    """PyPI's linux-x86_64 build is CUDA's: on a CPU it would only add gigabytes of NVIDIA libraries."""
    cpu = _host("linux-x86_64-cpu-only-32gb")
    assert plan(cpu, MATRIX, AUTOGLM, OFFLINE).variant == "cpu"


def test_the_index_is_asked_only_where_the_answer_can_change_the_plan() -> None:
    asked: list[str] = []

    def offline() -> bool:
        asked.append("asked")
        return False

    h100, cpu = load_host(H100), _host("linux-x86_64-cpu-only-32gb")
    for h, prefs in ((cpu, TRANSFORMERS), (h100, Preferences()), (h100, replace(TRANSFORMERS, variant="cu130"))):
        chosen, used = plan_with_index(h, MATRIX, AUTOGLM, prefs, index_reachable=offline)
        assert used.torch_index_reachable is None and chosen == plan(h, MATRIX, AUTOGLM, prefs)
    assert asked == []  # a CPU build, vLLM's PyPI torch, a named variant: the index cannot change them
    chosen, used = plan_with_index(h100, MATRIX, AUTOGLM, TRANSFORMERS, index_reachable=offline)
    assert asked == ["asked"] and used.torch_index_reachable is False and chosen.variant == "cu132"


def test_a_plan_document_keeps_what_it_was_planned_with() -> None:
    doc = plan(load_host(H100), MATRIX, AUTOGLM, OFFLINE).to_dict()
    assert Plan.from_dict(json.loads(json.dumps(doc))).torch_index_reachable is False
    del doc["torch"]["index_reachable"]
    assert Plan.from_dict(doc).torch_index_reachable is None
    doc["torch"]["index_reachable"] = "no"
    with pytest.raises(InvalidInput, match=r"torch\.index_reachable"):
        Plan.from_dict(doc)


# ---------------------------------------------------------------- the commands


def _offline_index(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    probes: list[str] = []

    def unreachable(url: str, timeout: float = 5.0) -> str:
        probes.append(url)
        return "offline"

    monkeypatch.setattr(provision.common.net, "probe_index", lambda url, timeout=5.0: unreachable(url))
    return probes


def _hashes(name: str) -> str:
    digest = re.sub(r"[^0-9a-f]", "0", name.encode().hex())[:64].ljust(64, "0")
    return f"    --hash=sha256:{digest}"


def test_plan_and_render_ask_once_and_plan_the_same_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The H100 of the issue, offline: one probe per command, PyPI's cu132 in both, and every line of the lock hashed."""
    import provision.render.requirements as requirements

    probes = _offline_index(monkeypatch)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a fresh resolution, cached there only
    assert main(["plan", "--host", str(H100), "--engine", "transformers", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert probes == ["https://download.pytorch.org/whl/"]
    assert planned["torch"] == {"version": "2.15.0", "variant": "cu132", "index_url": PYPI_INDEX,
                                "index_reachable": False}

    compiled: list[dict[str, object]] = []
    real_resolve = requirements.resolve

    def fake_uv(reqs: list[str], **kw: object) -> str:
        """What a resolver returns for PyPI's torch: its own dependencies too, each with its hashes."""
        compiled.append({"reqs": list(reqs), **kw})
        versions: dict[str, str] = {}
        for text in reqs:  # the plan's pins as they are; the toolkit's ranges (jinja2>=3.1) at some version
            req = Requirement(text)
            exact = next((s.version for s in req.specifier if s.operator == "=="), None)
            versions[req.name] = exact or versions.get(req.name, "1.0")
        pins = [f"{name}=={version}" for name, version in versions.items()]
        pins += ["nvidia-cublas==13.4.1.3", "triton==3.9.0", "sympy==1.14.0", "networkx==3.7"]
        return "".join(f"{p} \\\n{_hashes(p)}\n" for p in pins)

    monkeypatch.setattr(requirements, "resolve", lambda request, **kw: real_resolve(request, **{**kw, "compile_fn": fake_uv}))
    probes.clear()
    out = tmp_path / "out"
    assert main(["render", "--host", str(H100), "--engine", "transformers", "--out", str(out), "--json"]) == 0
    rendered = json.loads(capsys.readouterr().out)
    assert probes == ["https://download.pytorch.org/whl/"]  # planning asked; the resolver needs no torch index
    assert rendered["plan"] == planned and rendered["hashes"] == "complete"
    (call,) = compiled
    assert call["extra_index_urls"] == [] and call["index_url"] == PYPI_INDEX
    text = (out / "requirements.txt").read_text()
    assert "extra-index-url" not in text and "Hashes: complete" in text
    for pin in ("torch==2.15.0 \\", "torchvision==0.29.2 \\", "nvidia-cublas==13.4.1.3 \\", "triton==3.9.0 \\"):
        assert pin in text
    lock = json.loads((out / "provision.lock.json").read_text())
    assert lock["inputs"]["torch_index_reachable"] is False and lock["plan"]["torch"]["index_reachable"] is False
    assert lock["hashes"]["unhashed"] == []
    docker = (out / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS builder" in docker
    assert "# Base image: CUDA 13.0 runtime: images.toml has no CUDA 13.2 image" in docker


def test_a_render_the_index_cannot_change_asks_nothing_and_records_null(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    probes = _offline_index(monkeypatch)
    out = tmp_path / "out"
    assert main(["render", "--host", str(HOSTS / "linux-x86_64-cpu-only-32gb.json"), "--out", str(out),
                 "--no-resolve"]) == 0
    assert probes == []
    assert json.loads((out / "provision.lock.json").read_text())["inputs"]["torch_index_reachable"] is None


def test_a_plan_file_renders_with_its_own_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probes = _offline_index(monkeypatch)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan(load_host(H100), MATRIX, AUTOGLM, OFFLINE).to_dict()))
    out = tmp_path / "out"
    assert main(["render", "--plan", str(plan_file), "--host", str(H100), "--out", str(out), "--no-resolve"]) == 0
    assert probes == []  # the plan is the file's
    lock = json.loads((out / "provision.lock.json").read_text())
    assert lock["inputs"]["torch_index_reachable"] is False and lock["plan"]["torch"]["variant"] == "cu132"
