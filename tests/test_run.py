"""provision.common.run: the one place a subprocess starts, and the only module that imports subprocess."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest

import provision.common.run
from provision.common.run import NotRun, run_command, run_process

PACKAGE = Path(provision.common.run.__file__).resolve().parents[1]
#: Calls that start a program without ``subprocess``.
_OS_SPAWNERS = {"system", "popen", "spawnl", "spawnv", "spawnve", "spawnlp", "execv", "execve", "execvp", "startfile"}


def _modules() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(PACKAGE.parent)), ast.parse(p.read_text(encoding="utf-8")))
            for p in sorted(PACKAGE.rglob("*.py"))]


def test_only_the_chokepoint_imports_subprocess() -> None:
    importers = set()
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "subprocess" for a in node.names):
                importers.add(name)
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "subprocess":
                importers.add(name)
    assert importers == {"provision/common/run.py"}


def test_no_module_starts_programs_through_os() -> None:
    """Only ``common.run.replace_process`` may call ``os.execve`` (``provision serve`` becomes the server)."""
    calls = [f"{name}:{node.func.attr}" for name, tree in _modules() for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "os" and node.func.attr in _OS_SPAWNERS]
    assert calls == ["provision/common/run.py:execve"]


def test_spawn_is_the_single_subprocess_call() -> None:
    """``spawn`` runs programs to completion; ``process_group`` alone starts one that runs beside us (a server)."""
    tree = ast.parse(Path(provision.common.run.__file__).read_text(encoding="utf-8"))
    users = [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
             and any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                     and isinstance(n.func.value, ast.Name) and n.func.value.id == "subprocess"
                     and n.func.attr in ("run", "Popen", "call", "check_call", "check_output") for n in ast.walk(node))]
    assert users == ["spawn", "process_group"]


def test_run_command_captures_text_and_status() -> None:
    done = run_command([sys.executable, "-c", "import sys; print('é'); sys.exit(3)"], timeout=30)
    assert done is not None
    assert (done.returncode, done.stdout.strip()) == (3, "é")


def test_run_command_expected_failures_are_none() -> None:
    assert run_command(["provision-no-such-program-x"], timeout=5) is None
    assert run_command([sys.executable, "-c", "import time; time.sleep(10)"], timeout=0.5) is None
    with pytest.raises(ValueError):
        run_command([], timeout=1)


def test_run_command_passes_the_environment() -> None:
    done = run_command(
        [sys.executable, "-c", "import os; print(os.environ['PROVISION_T'])"], timeout=30,
        env={"PROVISION_T": "x1", "PATH": "", "SYSTEMROOT": "C:\\Windows"},
    )
    assert done is not None and done.stdout.strip() == "x1"


def test_run_process_says_why_it_did_not_run() -> None:
    with pytest.raises(NotRun, match=r"^provision-no-such-program-x is not on PATH$") as missing:
        run_process(["provision-no-such-program-x"])
    assert missing.value.timed_out is False
    with pytest.raises(NotRun, match=r"timed out after 0\.5 s$") as slow:
        run_process([sys.executable, "-c", "import time; time.sleep(10)"], timeout=0.5)
    assert slow.value.timed_out is True


def test_run_process_logs_both_streams_to_a_file(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    code = "import sys; print('out'); sys.stdout.flush(); print('err', file=sys.stderr)"
    with log.open("w", encoding="utf-8") as fh:
        done = run_process([sys.executable, "-c", code], log=fh, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout is None
    assert log.read_text(encoding="utf-8").split() == ["out", "err"]


def test_children_get_no_stdin_and_tests_can_swap_spawn(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake(argv: list[str], **options: Any) -> Any:
        seen.update(argv=argv, **options)
        raise FileNotFoundError(argv[0])  # the program vanished after the PATH lookup

    monkeypatch.setattr(provision.common.run, "spawn", fake)
    assert run_command([sys.executable, "-V"], timeout=5) is None
    assert seen["argv"][1:] == ["-V"] and seen["stdin"] is provision.common.run.subprocess.DEVNULL
    assert seen["timeout"] == 5 and seen["capture_output"] is True
