"""Coverage of ``nox -s engine_args``: every engine release a reference host plans has a parser list.

The session checks each planned vLLM and SGLang command with the parser of the release the plan pins,
from a venv built from ``scripts/engine_args/<engine>-<version>.txt``. These tests plan the same hosts
with the same options (scripts/check_engine_args.py's own sweep: ``--engine`` auto, vllm and sglang,
each ``--precision`` and none) and fail when the planner starts pinning a release that has no list,
so the check's coverage cannot shrink while nobody runs the (slow) session.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    from script_module import load_script  # tests/ is on sys.path (rootdir-less test modules)
except ImportError:  # pragma: no cover
    from tests.script_module import load_script

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "hosts"


cea = load_script("scripts/check_engine_args.py", "check_engine_args")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    return list(cea.plan_all(cea.reference_hosts(FIXTURES, tmp_path_factory.mktemp("hosts"))))


@pytest.fixture(scope="module")
def releases(sweep: list[Any]) -> dict[tuple[str, str], int]:
    return cea.planned_releases([p for p in sweep if isinstance(p, cea.Planned)])


def test_the_sweep_plans_both_engines_under_every_engine_option(sweep: list[Any]) -> None:
    plans = [p for p in sweep if isinstance(p, cea.Planned)]
    assert [p for p in sweep if not isinstance(p, cea.Planned)] == []  # the planner refused no request as bad input
    assert {p.engine_option for p in plans} == {"auto", "vllm", "sglang"}
    assert {p.serve["engine"] for p in plans} == {"vllm", "sglang"}
    assert any(p.precision is None and p.serve["quantization"] == "fp8" for p in plans)  # the planner's own pick
    assert {p.host for p in plans} >= set(cea.CONSTRUCTED)


def test_every_planned_release_has_a_parser_list(releases: dict[tuple[str, str], int]) -> None:
    missing = [f"{engine} {version} ({n} plans): add scripts/engine_args/{engine}-{version}.txt"
               for (engine, version), n in releases.items() if not cea.requirement_file(engine, version).exists()]
    assert missing == [], "planned releases nox -s engine_args cannot check:\n" + "\n".join(missing)


def test_every_parser_list_is_planned(releases: dict[tuple[str, str], int]) -> None:
    """A list no plan pins only costs the session a venv (2-6 GB): remove it with the release."""
    lists = {p.stem for p in cea.REQS.glob("*.txt")}
    assert lists - {f"{engine}-{version}" for engine, version in releases} == set()


@pytest.mark.parametrize("reqs", sorted(cea.REQS.glob("*.txt")), ids=lambda p: p.stem)
def test_parser_lists_pin_each_package_once_and_the_engine_first(reqs: Path) -> None:
    engine, version = reqs.stem.split("-", 1)
    lines = [line.strip() for line in reqs.read_text(encoding="utf-8").splitlines()]
    requirements = [Requirement(line) for line in lines if line and not line.startswith("#")]
    assert requirements[0].name == engine and str(requirements[0].specifier) == f"=={version}"
    for r in requirements:
        assert re.fullmatch(r"==[0-9][0-9A-Za-z.+]*", str(r.specifier)), f"{reqs.name}: {r} is not one exact pin"
    names = [canonicalize_name(r.name) for r in requirements]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    # torchvision's ops need the CUDA torch they were built with: a list that needs torchvision brings its torch
    if "torchvision" in names:
        assert "torch" in names
