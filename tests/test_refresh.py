"""provision.data.refresh: index parsing, merge into torch.toml, diff, deterministic TOML, validated write."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests

from provision.common.atomic import write_atomic
from provision.data.refresh import (
    WheelRow,
    apply_refresh,
    collect_rows,
    cuda_of_variant,
    dump_torch_toml,
    fetch_index,
    manylinux_floor,
    merge_floors,
    merge_torch,
    parse_index_html,
    parse_wheel_names,
    plan_refresh,
    platform_of_tag,
    refresh_torch,
    render_diff,
    wheel_floors,
)
from provision.errors import ProvisionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
INDEX = Path(__file__).parent / "fixtures" / "pytorch-index"
ALL_PY = ["3.10", "3.11", "3.12", "3.13", "3.14"]


def page(variant: str) -> str:
    return (INDEX / f"{variant}.html").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- parsing


def test_index_page_names_are_decoded_and_fragments_dropped():
    names = parse_index_html(page("cu128"))
    assert "torch-2.9.1+cu128-cp312-cp312-manylinux_2_28_x86_64.whl" in names
    assert not any("%2B" in n or "#" in n for n in names)
    assert len(names) == len(set(names)) == 42


def test_platform_tags_map_to_matrix_platforms():
    assert platform_of_tag("manylinux_2_28_x86_64") == "linux-x86_64"
    assert platform_of_tag("manylinux2014_aarch64") == "linux-aarch64"
    assert platform_of_tag("win_amd64") == "windows-x86_64"
    assert platform_of_tag("macosx_11_0_arm64") == "macos-arm64"
    assert platform_of_tag("macosx_10_9_x86_64") == "macos-x86_64"  # Intel Macs, torch <= 2.2
    assert platform_of_tag("linux_s390x") is None


def test_wheel_names_become_rows_without_free_threaded_or_foreign_builds():
    rows = parse_wheel_names(parse_index_html(page("cpu")), default_variant="cpu")
    assert WheelRow(version="2.9.1", variant="cpu", platform="macos-arm64", python="3.12") in rows
    # macOS wheels carry no local version: they belong to the page's variant
    assert {r.variant for r in rows} == {"cpu"}
    assert not any(r.python.endswith("t") for r in rows)
    # s390x and the PyPy wheel are dropped, the build-tagged 2.10.0 re-upload collapses into 2.10.0
    assert {r.platform for r in rows} == {"linux-x86_64", "linux-aarch64", "windows-x86_64", "macos-arm64"}
    assert {r.version for r in rows} == {"2.9.1", "2.10.0"}


def test_local_version_beats_page_variant_and_junk_is_skipped():
    rows = parse_wheel_names(
        [
            "torch-2.9.1+cu130-cp312-cp312-manylinux_2_28_x86_64.whl",
            "not-a-wheel.whl",
            "torchvision-0.24.1+cu130-cp312-cp312-manylinux_2_28_x86_64.whl",
        ],
        default_variant="cu128",
    )
    assert rows == [WheelRow(version="2.9.1", variant="cu130", platform="linux-x86_64", python="3.12")]


def test_rows_group_by_release_and_variant():
    rows = parse_wheel_names(parse_index_html(page("cu128")), default_variant="cu128")
    grouped = collect_rows(rows)
    assert list(grouped) == ["2.9.1", "2.10.0"]  # version order, not string order
    assert grouped["2.9.1"]["cu128"] == {
        "platforms": ["linux-x86_64", "linux-aarch64", "windows-x86_64"],
        "pythons": ALL_PY,
    }


def test_cuda_of_variant():
    assert cuda_of_variant("cu128") == "12.8"
    assert cuda_of_variant("cu118") == "11.8"
    assert cuda_of_variant("cu132") == "13.2"
    assert cuda_of_variant("cpu") is None
    assert cuda_of_variant("rocm6.4") is None


# ----------------------------------------------------------------------------- merging

EXISTING = {
    "schema_version": 1,
    "meta": {"sources": ["x"], "retrieved": "2026-11-24"},
    "release": [
        {
            "version": "2.9.1",
            "date": "2025-11-12",
            "pythons": ALL_PY,
            "torchvision": "0.24.1",
            "pypi_default": {"linux-x86_64": "cu128", "linux-aarch64": "cpu"},
            "variant": [
                {
                    "name": "cu128",
                    "cuda": "12.8",
                    "platforms": ["linux-x86_64"],
                    "pythons": ["3.10"],
                    "archs": ["sm_70", "sm_120"],
                    "ptx": [],
                    "archs_by_platform": {"linux-aarch64": ["sm_80"]},
                    "source": "hand-verified",
                },
                {"name": "cpu", "platforms": ["macos-arm64", "linux-aarch64"], "source": "pypi"},
                {"name": "cu130", "cuda": "13.0", "platforms": ["linux-x86_64"], "archs": ["sm_75"]},
            ],
        }
    ],
}


def scanned() -> dict:
    rows = []
    for variant in ("cu128", "cpu"):
        rows += parse_wheel_names(parse_index_html(page(variant)), default_variant=variant)
    return collect_rows(rows)


def test_merge_updates_platforms_and_keeps_hand_verified_fields():
    merged = merge_torch(EXISTING, scanned())
    release = merged["release"][1]
    assert release["version"] == "2.9.1"
    cu128 = next(v for v in release["variant"] if v["name"] == "cu128")
    assert cu128["platforms"] == ["linux-x86_64", "linux-aarch64", "windows-x86_64"]
    assert "pythons" not in cu128  # now equal to the release's, so not repeated
    assert cu128["archs"] == ["sm_70", "sm_120"]
    assert cu128["archs_by_platform"] == {"linux-aarch64": ["sm_80"]}
    assert cu128["source"] == "hand-verified"
    # a variant the scan did not cover is left alone
    cu130 = next(v for v in release["variant"] if v["name"] == "cu130")
    assert cu130 == {"name": "cu130", "cuda": "13.0", "platforms": ["linux-x86_64"], "archs": ["sm_75"]}
    # the input is not mutated
    assert EXISTING["release"][0]["variant"][0]["platforms"] == ["linux-x86_64"]


def test_merge_adds_unknown_release_without_inventing_verified_fields():
    merged = merge_torch(EXISTING, scanned())
    assert [r["version"] for r in merged["release"]] == ["2.10.0", "2.9.1"]  # newest first
    new = merged["release"][0]
    assert new["pythons"] == ALL_PY
    assert "date" not in new and "torchvision" not in new and "pypi_default" not in new
    assert "verified by hand" in new["note"]
    cu128 = next(v for v in new["variant"] if v["name"] == "cu128")
    assert cu128["cuda"] == "12.8"
    assert "archs" not in cu128
    assert [v["name"] for v in new["variant"]] == ["cu128", "cpu"]


def test_merge_sets_variant_pythons_only_where_they_differ():
    scan = {"2.9.1": {"cu128": {"platforms": ["linux-x86_64"], "pythons": ["3.12", "3.13"]}}}
    merged = merge_torch(EXISTING, scan)
    cu128 = next(v for v in merged["release"][0]["variant"] if v["name"] == "cu128")
    assert cu128["pythons"] == ["3.12", "3.13"]


# ----------------------------------------------------------------------------- emitter and diff


def test_emitter_is_deterministic_and_round_trips():
    merged = merge_torch(EXISTING, scanned())
    text = dump_torch_toml(merged)
    assert dump_torch_toml(merged) == text
    again = dump_torch_toml(tomllib.loads(text))
    assert again == text
    assert tomllib.loads(text)["release"][1]["variant"][0]["archs"] == ["sm_70", "sm_120"]


def test_emitter_escapes_strings():
    data = {"schema_version": 1, "release": [{"version": "1", "note": 'a "q" \\ b\nc', "variant": []}]}
    assert tomllib.loads(dump_torch_toml(data))["release"][0]["note"] == 'a "q" \\ b\nc'


def test_checked_in_torch_toml_is_exactly_what_the_emitter_writes():
    path = ROOT / "matrices" / "torch.toml"
    text = path.read_text(encoding="utf-8")
    assert dump_torch_toml(tomllib.loads(text)) == text


def test_diff_shows_changed_lines():
    old = dump_torch_toml(EXISTING)
    new = dump_torch_toml(merge_torch(EXISTING, scanned()))
    diff = render_diff(old, new, "torch.toml")
    assert diff.startswith("--- a/torch.toml\n+++ b/torch.toml\n")
    assert '-  platforms = ["linux-x86_64"]\n' in diff
    assert '+version = "2.10.0"\n' in diff
    assert render_diff(old, old) == ""


# ----------------------------------------------------------------------------- I/O edges


class _Session:
    def __init__(self, *, exc=None, status=200, text=""):
        self.exc, self.status, self.text, self.calls = exc, status, text, []

    def get(self, url, timeout):
        self.calls.append((url, timeout))
        if self.exc is not None:
            raise self.exc
        return type("R", (), {"status_code": self.status, "text": self.text})()


def test_fetch_index_unreachable_raises_provision_error():
    session = _Session(exc=requests.ConnectionError("Name or service not known"))
    with pytest.raises(ProvisionError, match=r"cannot reach .*download\.pytorch\.org/whl/cu128/torch/"):
        fetch_index("cu128", session=session, timeout=5)
    assert session.calls == [("https://download.pytorch.org/whl/cu128/torch/", 5)]


def test_fetch_index_http_error_raises_provision_error():
    with pytest.raises(ProvisionError, match="HTTP 404"):
        fetch_index("cu999", session=_Session(status=404))


def test_fetch_index_uses_requests_with_timeout(monkeypatch):
    seen = {}

    def fake_get(url, timeout):
        seen.update(url=url, timeout=timeout)
        raise requests.Timeout("slow")

    monkeypatch.setattr(requests, "get", fake_get)
    with pytest.raises(ProvisionError, match="Timeout"):
        fetch_index("cpu", base_url="https://mirror.example/whl/")
    assert seen == {"url": "https://mirror.example/whl/cpu/torch/", "timeout": 30.0}


def test_refresh_end_to_end_on_recorded_pages(tmp_path):
    path = tmp_path / "torch.toml"
    path.write_text(dump_torch_toml(EXISTING), encoding="utf-8")
    result = refresh_torch(path, ["cu128", "cpu"], fetch=page, min_version="2.10")
    assert result.changed
    assert path.read_text(encoding="utf-8") == result.old_text  # nothing written
    new = tomllib.loads(result.new_text)
    assert [r["version"] for r in new["release"]] == ["2.10.0", "2.9.1"]
    # 2.9.1 was filtered by min_version: same content (variants only put in canonical order)
    old_291 = tomllib.loads(result.old_text)["release"][0]
    new_291 = new["release"][1]
    assert {v["name"]: v for v in new_291.pop("variant")} == {v["name"]: v for v in old_291.pop("variant")}
    assert new_291 == old_291
    write_atomic(path, result.new_text)
    assert not refresh_torch(path, ["cu128", "cpu"], fetch=page, min_version="2.10").changed


# ----------------------------------------------------------------------------- glibc floors from wheel names


@pytest.mark.parametrize(("tag", "floor"), [
    ("manylinux_2_28_x86_64", (2, 28)), ("manylinux_2_17_aarch64", (2, 17)), ("manylinux1_x86_64", (2, 5)),
    ("manylinux2010_x86_64", (2, 12)), ("manylinux2014_aarch64", (2, 17)), ("linux_x86_64", None),
    ("macosx_14_0_arm64", None), ("win_amd64", None),
])  # fmt: skip
def test_manylinux_floor_reads_pep_600_and_the_legacy_tags(tag: str, floor: tuple[int, int] | None) -> None:
    assert manylinux_floor(tag) == floor


def test_wheel_floors_per_release_and_platform() -> None:
    """A wheel installs where its lowest tag does; a release needs its highest wheel's floor. Names as on PyPI."""
    names = [
        "torch-2.6.0-cp311-cp311-manylinux1_x86_64.whl",
        "torch-2.6.0-cp311-cp311-manylinux_2_28_aarch64.whl",
        "torch-2.6.0-cp311-none-macosx_11_0_arm64.whl",
        "torch-2.6.0-cp313-none-macosx_14_0_arm64.whl",  # macOS: the highest floor among the release's wheels
        "torch-2.7.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.7.0-cp313-cp313-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",  # either tag: 2.27
        "torch-2.7.0+cpu-cp311-cp311-linux_x86_64.whl",  # names no glibc
        "torchvision-0.22.0-cp311-cp311-manylinux_2_28_x86_64.whl",  # another project
        "not-a-wheel.tar.gz",
    ]
    assert wheel_floors(names, "torch") == {
        "2.6.0": {"linux-aarch64": "2.28", "linux-x86_64": "2.5", "macos-arm64": "14.0"},
        "2.7.0": {"linux-x86_64": "2.28"}}


def test_merge_floors_takes_the_higher_of_torch_and_its_torchvision() -> None:
    existing = {"release": [{"version": "2.6.0", "torchvision": "0.21.0", "glibc": {"linux-aarch64": "2.17"}},
                            {"version": "2.5.1", "torchvision": "0.20.1", "glibc": {"linux-aarch64": "2.17"}}]}
    merged = merge_floors(existing, {"2.6.0": {"linux-x86_64": "2.5", "linux-aarch64": "2.28", "macos-arm64": "11.0"}},
                          {"0.21.0": {"linux-x86_64": "2.17", "macos-arm64": "12.0"}})
    assert merged["release"][0]["glibc"] == {"linux-aarch64": "2.28", "linux-x86_64": "2.17"}
    assert merged["release"][0]["macos"] == {"macos-arm64": "12.0"}
    assert merged["release"][1] == existing["release"][1]  # nothing scanned: kept as recorded
    assert existing["release"][0]["glibc"] == {"linux-aarch64": "2.17"}  # the input is not changed


def test_refresh_rewrites_glibc_from_pypis_wheel_names(tmp_path: Path) -> None:
    data = tomllib.loads((ROOT / "matrices" / "torch.toml").read_text(encoding="utf-8"))
    release = next(r for r in data["release"] if r["version"] == "2.9.1")
    release["glibc"] = {"linux-x86_64": "2.17", "linux-aarch64": "2.28"}  # a stale floor
    path = tmp_path / "torch.toml"
    path.write_text(dump_torch_toml(data), encoding="utf-8")
    pypi = {"torch": ["torch-2.9.1-cp311-cp311-manylinux_2_28_x86_64.whl"],
            "torchvision": ["torchvision-0.24.1-cp311-cp311-manylinux_2_28_x86_64.whl"]}
    result = refresh_torch(path, [], fetch=page, pypi=pypi.__getitem__)
    assert result.diff.count("\n+glibc") == 1 and '+glibc = { linux-x86_64 = "2.28", linux-aarch64 = "2.28" }' in result.diff


# ----------------------------------------------------------------------------- the command's two steps


def _matrix_copy(tmp_path, edit):
    """The bundled matrices, with ``edit`` applied to torch.toml's data (written back canonically)."""
    import shutil

    root = tmp_path / "matrices"
    shutil.copytree(ROOT / "matrices", root)
    data = tomllib.loads((root / "torch.toml").read_text(encoding="utf-8"))
    edit(data)
    (root / "torch.toml").write_text(dump_torch_toml(data), encoding="utf-8")
    return root


def test_plan_then_apply_writes_a_refresh_that_validates(tmp_path):
    def drop_platform(data):
        release = next(r for r in data["release"] if r["version"] == "2.9.1")
        next(v for v in release["variant"] if v["name"] == "cu128")["platforms"].remove("linux-aarch64")

    root = _matrix_copy(tmp_path, drop_platform)
    refresh = plan_refresh(root, ["cu128", "cpu"], fetch=page)
    assert refresh.path == root / "torch.toml" and refresh.variants == ("cu128", "cpu")
    added = [line for line in refresh.result.diff.splitlines() if line.startswith("+") and "linux-aarch64" in line]
    assert refresh.result.changed and added
    assert (root / "torch.toml").read_text(encoding="utf-8") == refresh.result.old_text  # planning writes nothing
    apply_refresh(refresh)
    assert (root / "torch.toml").read_text(encoding="utf-8") == refresh.result.new_text
    assert not plan_refresh(root, ["cu128", "cpu"], fetch=page).result.changed


def _drop_engine_releases_pinning(root, torch: str) -> None:
    """engines.toml cross-checks its torch pins against torch.toml: drop the releases pinning ``torch``."""
    from provision.data.refresh_engines import dump_engines_toml, split_header

    text = (root / "engines.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    for engine in data["engine"]:
        engine["release"] = [r for r in engine["release"] if r["torch"] != torch]
    (root / "engines.toml").write_text(dump_engines_toml(data, header=split_header(text)[0]), encoding="utf-8")


def test_apply_refuses_rows_only_a_person_can_complete(tmp_path):
    root = _matrix_copy(tmp_path, lambda data: data.update(release=[r for r in data["release"]
                                                                    if r["version"] != "2.10.0"]))
    _drop_engine_releases_pinning(root, "2.10.0")
    refresh = plan_refresh(root, ["cu128", "cpu"], fetch=page)
    assert refresh.result.changed
    with pytest.raises(ProvisionError, match=r"not written: .*archs: required key is missing"):
        apply_refresh(refresh)
    assert (root / "torch.toml").read_text(encoding="utf-8") == refresh.result.old_text
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_plan_refresh_defaults_to_every_variant_in_the_matrix(tmp_path):
    root = _matrix_copy(tmp_path, lambda data: None)
    asked: list[str] = []
    refresh = plan_refresh(root, fetch=lambda v: asked.append(v) or "<html></html>")
    assert refresh.variants == tuple(asked) == tuple(sorted(set(asked))) and "cu128" in asked and "cpu" in asked


def test_the_cli_advice_names_only_options_matrix_refresh_accepts(monkeypatch, capsys):
    """An unreachable index: the advice must be something ``provision matrix refresh`` can be given."""
    import re

    from provision.cli import main

    def offline(url, timeout):
        raise requests.ConnectionError("no route to host")

    monkeypatch.setattr(requests, "get", offline)
    assert main(["matrix", "refresh", "--only", "torch"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the PyTorch wheel index" in err
    assert main(["matrix", "refresh", "--help"]) == 0
    accepted = set(re.findall(r"--[a-z][a-z-]*", capsys.readouterr().out))
    advised = set(re.findall(r"--[a-z][a-z-]*", err))
    assert advised and advised <= accepted, advised - accepted
