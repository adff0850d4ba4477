"""Every failure a user can cause ends in one line and the documented exit code, never a traceback.

Read-only folders are real (``read_only`` binds root too); a full disk is ``os.fsync`` failing with
ENOSPC, which is where a real one surfaces for a small file on most filesystems.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision.cli import main

ROOT = Path(__file__).resolve().parent.parent
HOSTS = Path(__file__).parent / "fixtures" / "hosts"
CPU = HOSTS / "linux-x86_64-cpu-only-32gb.json"
RENDER = ["render", "--host", str(CPU), "--no-resolve"]


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err.rstrip("\n")


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- provision build


def test_build_of_a_file_is_one_line_not_a_traceback(tmp_path, capsys):
    target = tmp_path / "notes.md"
    target.write_text("mine\n")
    assert main(["build", str(target)]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"error: {target}: (folder): is a file, not a folder; name the folder provision render wrote")
    assert main(["build", str(tmp_path / "missing")]) == 2
    assert "no such folder" in one_line(capsys.readouterr().err)


def test_build_of_a_folder_that_is_not_a_render_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "requirements.txt").write_text("torch==2.9.1\n")
    assert main(["build", str(tmp_path)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == (f"error: {tmp_path}: (folder): not a rendered folder (no install.sh, setup-venv.sh); "
                    f"run provision render --out {tmp_path} first")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requirements.txt"]  # nothing written


def test_build_in_a_read_only_render_is_one_line_and_keeps_the_venv(tmp_path, capsys, read_only):
    out = tmp_path / "out"
    assert main([*RENDER, "--out", str(out)]) == 0
    (out / "venv" / "bin").mkdir(parents=True)
    (out / "venv" / "bin" / "python").write_text("old\n")
    capsys.readouterr()
    before = tree(out)
    read_only(out)
    assert main(["build", str(out), "--no-smoke"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out}: (folder): cannot write {out}") and line.endswith("Permission denied")
    assert tree(out) == before


# ----------------------------------------------------------------------------- render's output folder


def test_render_into_a_writable_folder_under_a_read_only_parent(tmp_path, capsys, read_only):
    """The common mounted /out: the user owns the folder, not its parent; the render stages inside it."""
    out = tmp_path / "mnt" / "out"
    out.mkdir(parents=True)
    read_only(tmp_path / "mnt")
    assert main([*RENDER, "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "provision.lock.json").is_file() and (out / "requirements.txt").is_file()
    assert not [p for p in out.iterdir() if ".render-" in p.name]  # the stage is gone
    assert main([*RENDER, "--out", str(out)]) == 0  # and again, over its own files


def test_render_into_a_read_only_folder_names_it(tmp_path, capsys, read_only):
    out = read_only(tmp_path / "out")
    assert main([*RENDER, "--out", str(out)]) == 2
    assert one_line(capsys.readouterr().err) == f"error: --out: out: cannot write {out}: Permission denied"
    assert list(out.iterdir()) == []


def test_render_of_a_new_folder_under_a_read_only_parent_names_the_parent(tmp_path, capsys, read_only):
    parent = read_only(tmp_path / "mnt")
    assert main([*RENDER, "--out", str(parent / "out")]) == 2
    assert one_line(capsys.readouterr().err) == f"error: --out: out: cannot write {parent}: Permission denied"
    assert list(parent.iterdir()) == []


def _disk_full(monkeypatch):
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)


def test_a_full_disk_during_render_is_exit_1_and_leaves_the_old_render(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main([*RENDER, "--out", str(out)]) == 0
    capsys.readouterr()
    before = tree(out)
    _disk_full(monkeypatch)
    assert main([*RENDER, "--out", str(out), "--context", "4096"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line == f"error: --out: cannot write {out}/.dockerignore: No space left on device"  # the first, in order
    assert tree(out) == before and not [p for p in out.iterdir() if ".render-" in p.name]


def test_detect_output_into_a_read_only_folder_or_a_full_disk(tmp_path, capsys, monkeypatch, read_only):
    import provision.host

    host = provision.host.load_host(CPU)
    monkeypatch.setattr(provision.host, "detect_host", lambda *a, **kw: host)
    folder = read_only(tmp_path / "ro")
    assert main(["detect", "-o", str(folder / "host.json")]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: -o: output: cannot write {folder}/")
    _disk_full(monkeypatch)
    target = tmp_path / "host.json"
    assert main(["detect", "-o", str(target)]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: -o: cannot write ") and line.endswith("No space left on device")
    assert not target.exists() and list(tmp_path.glob(".host.json.*")) == []


# ----------------------------------------------------------------------------- anything unexpected


def test_an_unexpected_exception_is_one_internal_line(capsys, monkeypatch):
    import provision.plan.usecase

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("gpus")

    monkeypatch.setattr(provision.plan.usecase, "plan_command", broken)
    monkeypatch.delenv("PROVISION_DEBUG", raising=False)
    assert main(["plan", "--host", str(CPU)]) == 1
    assert one_line(capsys.readouterr().err) == (
        "error: internal: KeyError: 'gpus' (rerun with PROVISION_DEBUG=1 for the traceback)")
    monkeypatch.setenv("PROVISION_DEBUG", "1")
    assert main(["plan", "--host", str(CPU)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in broken" in err
    assert err.splitlines()[-1] == "error: internal: KeyError: 'gpus'"


def test_an_unexpected_os_error_is_one_line_naming_the_file(capsys, monkeypatch):
    import provision.plan.usecase

    def unreadable(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", "/etc/provision.conf")

    monkeypatch.setattr(provision.plan.usecase, "plan_command", unreadable)
    assert main(["plan", "--host", str(CPU)]) == 1
    assert one_line(capsys.readouterr().err) == "error: /etc/provision.conf: Permission denied"


# ----------------------------------------------------------------------------- nox -s provision


def _nox() -> list[str]:
    try:
        import nox  # noqa: F401 - the test group installs it
    except ImportError:
        pytest.skip("nox is not installed here (it is in the test dependency group)")
    return [sys.executable, "-m", "nox", "-f", str(ROOT / "noxfile.py")]


@pytest.mark.parametrize(("args", "message"), [
    (["--model-path"], "--model-path needs a folder"),
    (["--model-path", "--precision", "nf4"], "--model-path needs a folder"),
    (["--model-path="], "--model-path needs a folder"),
    (["--model-path", "/nonexistent/weights"], "--model-path /nonexistent/weights: no such directory"),
])
def test_nox_provision_model_path_without_a_folder_is_a_clean_session_error(tmp_path, args, message):
    env = {**os.environ, "PROVISION_NOX_SYSTEM": "1"}  # no venv: the session fails before it would detect
    done = subprocess.run([*_nox(), "-s", "provision", "--", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"Session provision aborted: {message}" in output
    assert "Traceback" not in output and "IndexError" not in output


def test_json_stays_one_document_when_a_command_fails(capsys):
    assert main(["build", str(ROOT / "README.md"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and one_line(captured.err)
    json.dumps(captured.err)  # the line is printable text


# ----------------------------------------------------------------------------- unknown keys


def test_a_misspelled_host_key_is_a_warning_line_and_the_plan_still_comes(tmp_path, capsys):
    data = json.loads((HOSTS / "linux-x86_64-a10g-driver535.json").read_text())
    data["nvidia"]["gpus"][0]["memory_fre_bytes"] = data["nvidia"]["gpus"][0].pop("memory_free_bytes")
    host = tmp_path / "host.json"
    host.write_text(json.dumps(data))
    assert main(["plan", "--host", str(host), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["schema"] == "provision.plan/v1"
    assert captured.err == (f"warning: {host}: nvidia.gpus[0].memory_fre_bytes: unknown key, ignored; "
                            "did you mean memory_free_bytes?\n")


def test_smoke_model_path_that_is_not_there_says_no_such_directory(tmp_path, capsys):
    assert main(["smoke", "--model-path", str(tmp_path / "gone")]) == 2
    assert one_line(capsys.readouterr().err) == f"error: --model-path: {tmp_path / 'gone'}: no such directory"
    assert main(["smoke", "--model-path", str(tmp_path)]) == 2
    assert one_line(capsys.readouterr().err) == f"error: --model-path: {tmp_path}: no config.json in this directory"
