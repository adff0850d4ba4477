"""Wheel sources: wheelhouse resolution, pip config reading, torch builds in a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version

from provision.errors import InvalidInput
from provision.render.sources import (
    pip_find_links,
    pip_index_urls,
    read_pip_config,
    resolve_index_url,
    resolve_wheelhouses,
    torch_builds,
)


def _touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).write_bytes(b"")


def test_torch_builds_reads_local_labels_and_filters_python_and_platform(tmp_path: Path) -> None:
    _touch(
        tmp_path,
        "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.13.0+cu128-cp312-cp312-manylinux_2_28_x86_64.whl",
        "torch-2.12.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.12.0-cp311-cp311-manylinux_2_28_aarch64.whl",
        "torch-2.11.0-cp311-none-macosx_11_0_arm64.whl",
        "torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "not-a-wheel.whl",
    )
    found = torch_builds([tmp_path], python="3.11", platform="linux-x86_64")
    assert found == {(Version("2.13.0"), "cpu"), (Version("2.12.0"), "")}
    assert torch_builds([tmp_path], python="3.12", platform="linux-x86_64") == {(Version("2.13.0"), "cu128")}
    assert torch_builds([tmp_path], python="3.11", platform="macos-arm64") == {(Version("2.11.0"), "")}
    assert torch_builds([tmp_path], python="3.11", platform="linux-aarch64") == {(Version("2.12.0"), "")}


def test_wheelhouse_cli_beats_environment_and_missing_dir_is_bad_input(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    env = {"PROVISION_WHEELHOUSE": f"{b}"}
    assert resolve_wheelhouses([str(a)], env) == (a.resolve(),)
    assert resolve_wheelhouses(None, env) == (b.resolve(),)
    assert resolve_wheelhouses(None, {}) == ()
    with pytest.raises(InvalidInput, match=r"^--wheelhouse: .*/nope: no such directory$"):
        resolve_wheelhouses([str(tmp_path / "nope")], {})
    with pytest.raises(InvalidInput, match=r"^PROVISION_WHEELHOUSE: "):
        resolve_wheelhouses(None, {"PROVISION_WHEELHOUSE": str(tmp_path / "nope")})


def test_auto_wheelhouse_uses_pip_find_links_only_when_index_unreachable(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    env = {"PIP_FIND_LINKS": str(wheels), "HOME": str(tmp_path), "XDG_CONFIG_DIRS": str(tmp_path / "none")}
    assert resolve_wheelhouses(["auto"], env, index_reachable=lambda: True) == ()
    assert resolve_wheelhouses(["auto"], env, index_reachable=lambda: False) == (wheels.resolve(),)


def test_pip_config_files_are_read(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nfind-links = {wheels}\nindex-url = https://mirror.example/simple\n")
    env = {"PIP_CONFIG_FILE": str(conf), "HOME": str(tmp_path), "XDG_CONFIG_DIRS": str(tmp_path / "none")}
    text = read_pip_config(env)
    assert f"global.find-links={wheels}" in text.splitlines()
    assert pip_find_links(env, text) == (wheels.resolve(),)
    # A find-links entry that is a URL or a missing folder is not a local wheelhouse.
    assert pip_find_links({}, "global.find-links=https://example.org/wheels /does/not/exist") == ()


def test_pip_index_urls_come_from_the_environment_then_the_config_once_each(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\n"
                    "extra-index-url = file:///srv/pypi/simple https://extra.example/simple\n")
    env = {"PIP_CONFIG_FILE": str(conf), "HOME": str(tmp_path), "XDG_CONFIG_DIRS": str(tmp_path / "none"),
           "PIP_EXTRA_INDEX_URL": "https://env.example/simple https://extra.example/simple"}
    assert pip_index_urls(env, read_pip_config(env)) == (
        "https://env.example/simple", "https://extra.example/simple", "https://mirror.example/simple",
        "file:///srv/pypi/simple")
    assert pip_index_urls({}, "global.find-links=/w") == ()


@pytest.mark.parametrize(
    "url",
    ["https://mirror.example/whl/cu128; rm -rf /", "file:///etc", "https://x/$(id)", "https://a b", "ftp://x/y"],
)
def test_index_url_override_is_validated(url: str) -> None:
    with pytest.raises(InvalidInput, match=r"^--index-url: url: .* is not a plain http\(s\) URL$"):
        resolve_index_url(url, {})


def test_index_url_from_environment() -> None:
    assert resolve_index_url(None, {"PROVISION_INDEX_URL": "https://mirror.example/whl/cu128/"}) == (
        "https://mirror.example/whl/cu128"
    )
    assert resolve_index_url(None, {}) is None
