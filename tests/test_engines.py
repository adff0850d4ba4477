"""provision.data.engines: the engines matrix, its validation, cross-checks and rules."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from provision.data.engines import (
    ENGINE_PLATFORMS,
    REQUIRED_FLAGS,
    Known,
    QuantRule,
    admits_transformers_5,
    known_from_files,
    load_engines,
)
from provision.data.refresh_engines import dump_engines_toml, split_header
from provision.errors import InvalidInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MATRICES = Path(__file__).resolve().parents[1] / "matrices"


@pytest.fixture(scope="module")
def engines():
    return load_engines(MATRICES)


@pytest.fixture(scope="module")
def raw() -> dict:
    return tomllib.loads((MATRICES / "engines.toml").read_text(encoding="utf-8"))


def load_variant(tmp_path: Path, data: dict):
    """engines.toml rewritten from ``data`` next to the real cuda.toml and torch.toml, then loaded."""
    for name in ("cuda.toml", "torch.toml"):
        shutil.copy(MATRICES / name, tmp_path / name)
    (tmp_path / "engines.toml").write_text(dump_engines_toml(data), encoding="utf-8")
    return load_engines(tmp_path)


# ----------------------------------------------------------------------------- the real file


def test_real_file_covers_the_releases_the_planner_needs(engines):
    vllm, sglang = engines.get("vllm"), engines.get("sglang")
    assert vllm is not None and sglang is not None
    assert {"0.19.1", "0.20.0", "0.27.1", "0.28.0", "0.33.0"} <= {str(r.version) for r in vllm.releases}
    assert {"0.5.6.post1", "0.5.10", "0.5.19", "0.5.23"} <= {str(r.version) for r in sglang.releases}
    # the transformers-4 SGLang releases are kept out, and said so
    left_out = {str(x.version) for x in sglang.excluded}
    assert left_out == {"0.5.6.post2", "0.5.7", "0.5.8", "0.5.8.post1", "0.5.9"}
    assert not left_out & {str(r.version) for r in sglang.releases}


def test_every_release_loads_transformers_5_and_has_a_known_torch_and_cuda(engines):
    known = known_from_files(MATRICES)
    for engine in engines.engines:
        for release in engine.releases:
            assert admits_transformers_5(release.transformers), (engine.name, release.version)
            assert release.torch in known.torch
            assert {release.cuda, release.image_cuda, *(v.cuda for v in release.variants)} <= known.toolkits
            assert set(release.archs) == set(release.platforms) <= set(ENGINE_PLATFORMS)


def test_releases_are_newest_first(engines):
    for engine in engines.engines:
        versions = [r.version for r in engine.releases]
        assert versions == sorted(versions, reverse=True)


def test_file_order_does_not_matter(tmp_path, raw):
    data = copy.deepcopy(raw)
    data["engine"][0]["release"].reverse()
    loaded = load_variant(tmp_path, data)
    versions = [r.version for r in loaded.get("vllm").releases]
    assert versions == sorted(versions, reverse=True)


def test_flags_and_engine_rules(engines):
    vllm, sglang = engines.get("vllm"), engines.get("sglang")
    for engine in (vllm, sglang):
        assert set(REQUIRED_FLAGS) <= set(engine.flags)
        assert engine.health_route == "/health"
    assert vllm.model_flag is None and vllm.entrypoint == ("vllm", "serve")
    assert sglang.model_flag == "--model-path"
    assert vllm.tensor_parallel.encoder_data_args == ("--mm-encoder-tp-mode", "data")
    assert sglang.tensor_parallel.encoder_data_args == ("--mm-enable-dp-encoder",)
    assert vllm.memory.fraction == "per-release" and sglang.memory.fraction == "computed"
    assert all(r.gpu_memory_utilization for r in vllm.releases)
    assert not any(r.gpu_memory_utilization for r in sglang.releases)


def test_bitsandbytes_only_up_to_vllm_0_27_1_and_fp8_by_compute_capability(engines):
    vllm = engines.get("vllm")
    ampere, ada = (8, 6), (8, 9)

    def methods(version: str, cc: tuple[int, int]) -> list[tuple[str, str]]:
        release = vllm.release(version)
        return sorted((q.precision, q.kind.split(",")[0]) for q in vllm.quantizations(release, cc))

    assert ("nf4", "bitsandbytes 4-bit") in methods("0.27.1", ampere)
    assert all(p != "nf4" for p, _ in methods("0.28.0", ampere))
    assert methods("0.33.0", ampere) == [("fp8", "FP8 weight-only through Marlin kernels")]
    assert methods("0.33.0", ada) == [("fp8", "FP8 W8A8 (weights and activations)")]
    assert methods("0.33.0", (7, 5)) == []
    nf4 = next(q for q in vllm.quantization if q.precision == "nf4")
    assert nf4.requires is not None and nf4.requires.name == "bitsandbytes"


def test_min_cc_and_python(engines):
    vllm = engines.get("vllm")
    old, new = vllm.release("0.19.1"), vllm.release("0.33.0")
    assert old.min_cc("linux-x86_64") == (7, 0) < new.min_cc("linux-x86_64")
    assert new.min_cc("windows-x86_64") is None
    assert old.admits_python("3.10") and not old.admits_python("3.14")
    assert not new.admits_python("3.10") and new.admits_python("3.14")
    sglang = engines.get("sglang").release("0.5.23")
    assert sglang.pythons == ("3.11", "3.12", "3.13") and not sglang.admits_python("3.14")


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize(("spec", "admits"), [
    ("!=5.0.*,!=5.1.*,!=5.2.*,!=5.3.*,!=5.4.*,!=5.5.0,>=4.56.0", True),
    (">=5.16.1,<5.21", True),
    ("==5.0.0rc0", True),
    ("==5.19.0", True),
    ("", True),
    ("==4.57.1", False),
    ("<5", False),
    ("<5.0.0rc0", False),
    ("!=5.*", False),
    ("~=4.57", False),
    (">=6", False),
])
def test_admits_transformers_5(spec, admits):
    assert admits_transformers_5(SpecifierSet(spec)) is admits


def test_quant_rule_bounds():
    rule = QuantRule(precision="fp8", method="fp8", kind="k", min_cc=(8, 0), below_cc=(8, 9),
                     releases=SpecifierSet("<=1.0"), requires=None, in_flight=True, source="s")
    assert rule.applies(Version("1.0"), (8, 0)) and rule.applies(Version("0.5"), (8, 6))
    assert not rule.applies(Version("1.0"), (7, 5))
    assert not rule.applies(Version("1.0"), (8, 9))
    assert not rule.applies(Version("1.1"), (8, 6))


# ----------------------------------------------------------------------------- validation

V0 = "engine[0].release[0]"


def _set(path: list, value):
    def apply(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return apply


_DELETE = object()
E0, E1 = ["engine", 0], ["engine", 1]
R0 = [*E0, "release", 0]

BAD = [
    (_set(["schema_version"], 2), "schema_version", "unsupported schema_version 2"),
    (_set([*E0, "name"], "tgi"), "engine[0].name", "'tgi' is not one of vllm, sglang"),
    (_set([*E0, "flags", "port"], "port"), "engine[0].flags.port", "not like '--flag-name'"),
    (_set([*E0, "flags", "served_model_name"], _DELETE), "engine[0].flags", "missing served_model_name"),
    (_set([*E0, "precision", "bf16_min_cc"], "8"), "engine[0].precision.bf16_min_cc", "not a compute capability"),
    (_set([*E0, "precision", "below"], "int8"), "engine[0].precision.below", "is not one of fp16, fp32"),
    (_set([*E0, "quantization", 1, "below_cc"], "7.5"), "engine[0].quantization[1].below_cc", "must be above min_cc"),
    (_set([*E0, "quantization", 0, "precision"], "int4"), "engine[0].quantization[0].precision", "not one of"),
    (_set([*E0, "quantization", 2, "requires"], "bitsandbytes>>0.4"), "engine[0].quantization[2].requires",
     "not a requirement"),
    (_set([*E0, "quantization", 2, "releases"], "<=banana"), "engine[0].quantization[2].releases",
     "not a version specifier"),
    (_set([*E0, "health_route"], "health"), "engine[0].health_route", "not like '/health'"),
    (_set([*E0, "default_port"], 0), "engine[0].default_port", "out of range"),
    (_set([*E0, "entrypoint"], []), "engine[0].entrypoint", "must name the server command"),
    (_set([*E0, "memory", "fraction"], "auto"), "engine[0].memory.fraction", "is not one of"),
    (_set([*R0, "torch"], "2.99.0"), f"{V0}.torch", "torch 2.99.0 is not a release in torch.toml"),
    (_set([*R0, "torchvision"], "0.28.0"), f"{V0}.torchvision", "is not torch 2.14.0's torchvision (0.29.0)"),
    (_set([*R0, "cuda"], "12.7"), f"{V0}.cuda", "CUDA 12.7 has no toolkit row in cuda.toml"),
    (_set([*R0, "image_cuda"], "13"), f"{V0}.image_cuda", "is not like '13.0'"),
    (_set([*R0, "variants", 0, "cuda"], "12.5"), f"{V0}.variants[0].cuda", "CUDA 12.5 has no toolkit row"),
    (_set([*R0, "variants", 0, "index_url"], "http://wheels.example/x"), f"{V0}.variants[0].index_url",
     "not like 'https://host/path'"),
    (_set([*R0, "transformers"], "==4.57.1"), f"{V0}.transformers", "admits no transformers 5"),
    (_set([*R0, "transformers"], ">=5,<"), f"{V0}.transformers", "not a version specifier"),
    (_set([*R0, "requires_python"], 3.11), f"{V0}.requires_python", "expected a string, got number"),
    (_set([*R0, "platforms"], ["windows-x86_64"]), f"{V0}.platforms[0]", "is not one of linux-x86_64"),
    (_set([*R0, "platforms"], ["linux-x86_64", "linux-x86_64"]), f"{V0}.platforms", "each platform once"),
    (_set([*R0, "archs"], {"linux-x86_64": ["sm_80"]}), f"{V0}.archs", "no architectures for linux-aarch64"),
    (_set([*R0, "archs", "linux-x86_64"], ["sm75"]), f"{V0}.archs.linux-x86_64[0]", "not like 'sm_80'"),
    (_set([*R0, "archs", "linux-x86_64"], []), f"{V0}.archs.linux-x86_64", "must list the architectures"),
    (_set([*R0, "glibc"], "2.24"), f"{V0}.glibc", "below the wheel's own manylinux floor 2.28"),
    (_set([*R0, "glibc"], "2.x"), f"{V0}.glibc", "is not like '2.28'"),
    (_set([*R0, "gpu_memory_utilization"], 1.5), f"{V0}.gpu_memory_utilization", "not in (0, 1]"),
    (_set([*R0, "gpu_memory_utilization"], "0.9"), f"{V0}.gpu_memory_utilization", "expected a number"),
    (_set([*R0, "gpu_memory_utilization"], _DELETE), f"{V0}.gpu_memory_utilization", "needs a value"),
    (_set([*E1, "release", 0, "gpu_memory_utilization"], 0.9), "engine[1].release[0].gpu_memory_utilization",
     "must not have a value"),
    (_set([*R0, "image"], "lmsysorg/sglang:v0.33.0"), f"{V0}.image", "is not a tag of vllm/vllm-openai"),
    (_set([*R0, "image"], "Bad Image"), f"{V0}.image", "not like 'repo/name:tag'"),
    (_set([*R0, "pythons"], ["3.10"]), f"{V0}.pythons[0]", "3.10 is outside requires_python"),
    (_set([*R0, "pythons"], []), f"{V0}.pythons", "omit the key"),
    (_set([*R0, "unverified"], ["colour"]), f"{V0}.unverified[0]", "names no release field"),
    (_set([*R0, "date"], "Nov 2"), f"{V0}.date", "is not like '2026-04-18'"),
    (_set([*R0, "source"], _DELETE), f"{V0}.source", "required key is missing"),
    (_set([*R0, "version"], "0.32.0"), "engine[0].release[1].version", "release 0.32.0 appears twice"),
    (_set([*E1, "release", 0, "kernel"], "sglang kernel"), "engine[1].release[0].kernel", "not a requirement"),
    (_set([*E1, "release", 0, "version"], "0.5.9"), "engine[1].release[0].version", "also listed under excluded"),
]


@pytest.mark.parametrize(("mutate", "field", "problem"), BAD, ids=[f"{b[1]}:{b[2][:24]}" for b in BAD])
def test_malformed_field_names_file_and_field(tmp_path, raw, mutate, field, problem):
    data = copy.deepcopy(raw)
    mutate(data)
    with pytest.raises(InvalidInput) as caught:
        load_variant(tmp_path, data)
    assert caught.value.source == str(tmp_path / "engines.toml")
    assert caught.value.field == field
    assert problem in caught.value.problem


def test_duplicate_engine_is_named(tmp_path, raw):
    data = copy.deepcopy(raw)
    data["engine"].append(copy.deepcopy(data["engine"][0]))
    with pytest.raises(InvalidInput) as caught:
        load_variant(tmp_path, data)
    assert (caught.value.field, caught.value.problem) == ("engine[2].name", "engine 'vllm' appears twice")


def test_cross_checks_use_the_known_tables_given(tmp_path, raw):
    """A Known without CUDA 13 (as load_matrix would pass for a cuda.toml without it) rejects the 13.0 builds."""
    (tmp_path / "engines.toml").write_text(dump_engines_toml(raw), encoding="utf-8")
    known = known_from_files(MATRICES)
    without_13 = Known(toolkits=known.toolkits, families=known.families - {13}, torch=known.torch)
    with pytest.raises(InvalidInput) as caught:
        load_engines(tmp_path, without_13)
    assert caught.value.field == "engine[0].release[0].cuda"
    assert "CUDA family 13 has no row in cuda.toml" in caught.value.problem


def test_missing_file_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInput) as caught:
        load_engines(tmp_path, known_from_files(MATRICES))
    assert caught.value.problem == "no such file"


# ----------------------------------------------------------------------------- the emitter


def test_checked_in_file_is_exactly_what_the_emitter_writes(raw):
    text = (MATRICES / "engines.toml").read_text(encoding="utf-8")
    header, _body = split_header(text)
    assert header.startswith("# engines.toml")
    assert dump_engines_toml(raw, header=header) == text


def test_emitter_puts_release_keys_in_reading_order_and_escapes():
    data = {"schema_version": 1, "engine": [{"name": "vllm", "release": [
        {"source": 'a "quoted"\nline', "version": "1.0", "torch": "2.0"}]}]}
    text = dump_engines_toml(data)
    assert text.index('version = "1.0"') < text.index('torch = "2.0"') < text.index("source =")
    assert 'source = "a \\"quoted\\"\\nline"' in text
    assert tomllib.loads(text) == data
