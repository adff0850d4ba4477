"""The README's examples run as written.

Every line that starts with ``provision `` inside a fenced command block (``sh``, ``bash``,
``console``, ``shell`` or no language; ``text`` blocks are usage synopses) runs as
``python -m provision ...`` from a folder where the checkout's ``tests/`` fixtures are where the
README says, and must end with the exit code its ``# exit N`` comment names (else 0), with no
traceback. The few that need a GPU, the network, a build or a running server are listed in
``NOT_RUN`` with the reason; that list may only name lines the README has.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\s*$")
_COMMAND_BLOCKS = {"", "sh", "bash", "console", "shell"}

#: README lines not run here, and why (each is run by the nox session named).
NOT_RUN = {
    "provision build build/example-cpu":
        "installs torch and transformers into a venv from the network (nox -s provision builds and proves one)",
    "provision serve build/example-cpu --tiny":
        "needs the built venv and serves in the foreground until stopped (nox -s serve runs it)",
    "provision serve": "serves this machine's built environment in the foreground until stopped (nox -s serve runs it)",
    "provision serve --host 0.0.0.0": "serves in the foreground until stopped, on every address (nox -s serve runs it)",
    "provision serve --tiny": "needs the build's tiny stand-in and serves until stopped (nox -s serve runs it)",
    "provision smoke --endpoint http://127.0.0.1:8000/v1 --concurrency 4":
        "needs a running server (nox -s serve proves one; tests/test_endpoint.py proves real local servers)",
    "provision matrix refresh --only engines": "reads the engines' wheels from PyPI over the network",
}
#: Lines whose exit code is what they find about this machine, not the README's claim.
ANY_OF = {"provision doctor": (0, 1)}


def readme_commands(text: str) -> list[tuple[str, int]]:
    """``(command, expected exit)`` for every ``provision`` line of a fenced command block."""
    found: list[tuple[str, int]] = []
    language: str | None = None
    for line in text.splitlines():
        fence = _FENCE.match(line.strip())
        if fence:
            language = fence.group(1) if language is None else None
            continue
        if language in _COMMAND_BLOCKS and line.startswith("provision "):
            command, _, comment = line.partition("#")
            code = re.match(r"\s*exit (\d)", comment)
            found.append((command.strip(), int(code.group(1)) if code else 0))
    return found


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_has_examples_and_the_skip_list_names_only_its_lines() -> None:
    lines = [command for command, _ in COMMANDS]
    assert len(lines) >= 8 and len(set(lines)) == len(lines)
    assert set(NOT_RUN) <= set(lines) and set(ANY_OF) <= set(lines)


def test_readme_commands_are_found_in_command_blocks_only() -> None:
    text = "```text\nprovision plan [--host FILE]\n```\n```sh\nprovision models  # exit 0\nprovision x # exit 3\n```\n"
    assert readme_commands(text) == [("provision models", 0), ("provision x", 3)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like the checkout for the examples' relative paths, so outputs land outside it."""
    work = tmp_path_factory.mktemp("readme")
    (work / "tests").symlink_to(ROOT / "tests")
    return work


@pytest.mark.parametrize(("command", "expected"), COMMANDS, ids=[c for c, _ in COMMANDS])
def test_readme_example_runs_as_written(command: str, expected: int, workdir: Path) -> None:
    if command in NOT_RUN:
        pytest.skip(NOT_RUN[command])
    argv = shlex.split(command)
    if argv[1] == "smoke":
        pytest.importorskip("torch", reason="the smoke test loads a model: needs torch and transformers")
        pytest.importorskip("transformers", reason="the smoke test loads a model: needs torch and transformers")
        pytest.importorskip("torchvision", reason="glm4v's processor needs torchvision, in the smoke test as in the "
                                                  "server")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    env.pop("PROVISION_DEBUG", None)
    done = subprocess.run([sys.executable, "-m", "provision", *argv[1:]], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in ANY_OF.get(command, (expected,)), f"exit {done.returncode}:\n{done.stderr[-2000:]}"
    if "--json" in argv:
        json.loads(done.stdout)
