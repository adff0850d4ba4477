"""A real resolution against PyPI: a plan whose torch build is PyPI's pins torch's own dependencies with hashes.

PyPI carries one CUDA build per torch release (matrices/torch.toml ``pypi_default``); when that build is
the plan's, the resolver sees its real Requires-Dist, so the NVIDIA libraries, triton, sympy and the rest
are pinned and hashed like any other package. The test runs uv against the real index (reachable from
this project's machines and CI); it skips only where PyPI does not answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from provision.cli import main
from provision.common.net import probe_index
from provision.render.requirements import parse_compiled
from provision.vocab import PYPI_INDEX

H100 = Path(__file__).parent / "fixtures" / "hosts" / "linux-x86_64-h100-80gb-driver580.json"
#: torch 2.14.1's Linux x86_64 build on PyPI is cu130 (torch.toml), which driver 580 runs natively.
RENDER = ["render", "--host", str(H100), "--engine", "transformers", "--torch", "2.14.1", "--json"]


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """uv and PyPI as they are, and an empty resolution cache: a real resolution, not a cached one."""
    if shutil.which("uv") is None:
        pytest.skip("uv is not on PATH: no resolver")
    why = probe_index(PYPI_INDEX)
    if why is not None:
        pytest.skip(f"PyPI does not answer here: {why}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "env"


@pytest.mark.slow
def test_a_pypi_torch_build_pins_its_own_dependencies_with_hashes(live: Path, capsys) -> None:
    out = live
    assert main([*RENDER, "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"]["torch"]["variant"] == "cu130" and doc["plan"]["torch"]["index_url"] == PYPI_INDEX
    assert doc["hashes"] == "complete"
    pins = {r.name: r for r in parse_compiled((out / "requirements.txt").read_text())}
    torch_own = {"triton", "sympy", "networkx", "filelock", "fsspec", "jinja2", "typing-extensions",
                 "nvidia-cudnn-cu13", "nvidia-nccl-cu13"}
    assert torch_own <= set(pins), sorted(torch_own - set(pins))
    assert all(pins[name].hashes for name in pins)  # every line, torch's own dependencies included
    assert "--extra-index-url" not in (out / "requirements.txt").read_text()  # nothing but PyPI
    lock = json.loads((out / "provision.lock.json").read_text())
    assert lock["hashes"]["status"] == "complete" and lock["hashes"]["unhashed"] == []


@pytest.mark.slow
def test_an_unreachable_pytorch_index_gets_pypis_build_and_a_complete_lock(live: Path, monkeypatch, capsys) -> None:
    """The issue's H100 at torch 2.15.0 with download.pytorch.org unreachable: PyPI's cu132 build, every line hashed."""
    import provision.common.net

    monkeypatch.setattr(provision.common.net, "probe_index",
                        lambda url, timeout=5.0: "offline" if "download.pytorch.org" in url else None)
    out = live
    assert main(["render", "--host", str(H100), "--engine", "transformers", "--json", "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"]["torch"] == {"version": "2.15.0", "variant": "cu132", "index_url": PYPI_INDEX,
                                    "index_reachable": False}
    assert doc["hashes"] == "complete"
    pins = {r.name: r for r in parse_compiled((out / "requirements.txt").read_text())}
    assert pins["torch"].version == "2.15.0" and {"triton", "sympy", "nvidia-nccl-cu13"} <= set(pins)
    assert all(pins[name].hashes for name in pins)
