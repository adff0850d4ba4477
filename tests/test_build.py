"""Crash safety: a failed or interrupted build keeps the previous venv; renders never clobber edits.

``build_environment`` runs a fake rendered folder whose setup-venv.sh only makes a folder
(no pip, no network); the render tests go through the real CLI. The states a kill can leave
are built here by hand; tests/test_interrupts.py signals real builds at those moments.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import provision.build
import provision.cli
import provision.common.run
from provision.build import BUILD_LOCK, STAMP, build_environment, current_smoke_report, env_digest, lock_digest
from provision.cli import main
from provision.errors import BuildError, InvalidInput, SmokeError
from provision.smoke.report import SmokeReport
from provision.vocab import BUILD_SCHEMA

A10G = Path(__file__).parent / "fixtures" / "hosts" / "linux-x86_64-a10g-driver535.json"

#: A setup-venv.sh that counts its runs, then builds a minimal "venv" at $1 (or fails).
FAKE_SETUP = """#!/usr/bin/env bash
set -euo pipefail
echo run >> runs.txt
mkdir -p "$1/bin"
printf '#!/bin/sh\\nexit 0\\n' > "$1/bin/python"
chmod +x "$1/bin/python"
echo "{marker}" > "$1/marker"
{tail}
"""
INDEX_FAILURE = """echo "Looking in indexes: https://download.pytorch.org/whl/cu126"
echo "ERROR: Could not find a version that satisfies the requirement torch==2.14.1+cu126"
echo "ERROR: No matching distribution found for torch==2.14.1+cu126"
exit 1"""


def rendered(out: Path, *, marker: str = "new", tail: str = "") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "requirements.txt").write_text("torch==2.14.1+cu126\n")
    (out / "install.sh").write_text("#!/bin/sh\nexit 0\n")
    (out / "setup-venv.sh").write_text(FAKE_SETUP.format(marker=marker, tail=tail))
    return out


def venv_dir(out: Path, name: str = "venv-000000000000-previous", *, marker: str = "old",
             stamp: str = "0" * 64) -> Path:
    """A venv folder as a build leaves it (``stamp`` None: one cut short before it was stamped)."""
    venv = out / name
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    (venv / "marker").write_text(f"{marker}\n")
    if stamp is not None:
        (venv / STAMP).write_text(stamp + "\n")
    return venv


def old_venv(out: Path) -> Path:
    """A working previous environment, built from other files (its stamp does not match): ``venv`` links to it."""
    target = venv_dir(out)
    (out / "venv").symlink_to(target.name)
    return target


def legacy_venv(out: Path) -> Path:
    """A previous environment in the layout before links: ``venv`` is the folder itself."""
    return venv_dir(out, "venv")


def runs(out: Path) -> int:
    path = out / "runs.txt"
    return len(path.read_text().split()) if path.exists() else 0


def leftovers(out: Path) -> list[str]:
    """What a build may leave beside ``venv`` and the folder it names: none of it should survive a build."""
    link = out / "venv"
    current = os.readlink(link) if link.is_symlink() else "venv"
    return sorted(p.name for p in out.iterdir() if p.name.startswith(("venv", ".venv"))
                  and p.name not in ("venv", current))


def current(out: Path) -> str:
    """The marker of the environment ``venv`` names now."""
    return (out / "venv" / "marker").read_text().strip()


def without_progress(err: str) -> str:
    """stderr without the CLI's status lines for long steps (``... ...`` when one starts, ``...: done in`` at its end)."""
    return "".join(line for line in err.splitlines(keepends=True)
                   if not line.rstrip("\n").endswith(" ...") and ": done in " not in line)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}


def test_success_swaps_in_the_new_venv(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out")
    previous = old_venv(out)
    result = build_environment(out, smoke=False, environ=env)
    assert result.reused is False and result.venv == out.resolve() / "venv"
    assert current(out) == "new" and (out / "venv").is_symlink()
    target = os.readlink(out / "venv")
    assert target.startswith(f"venv-{env_digest(out)[:12]}-") and "/" not in target  # relative: the folder can move
    assert (out / "venv" / STAMP).read_text().strip() == env_digest(out)
    assert not previous.exists() and leftovers(out) == []
    assert runs(out) == 1


def test_the_venv_keeps_the_path_it_was_built_at(tmp_path: Path, env: dict[str, str]) -> None:
    """Its scripts and activate name that path, so the folder is never renamed: only the link moves."""
    out = rendered(tmp_path / "out", tail='echo "$1" > "$1/built-at"')
    build_environment(out, smoke=False, environ=env)
    assert Path((out / "venv" / "built-at").read_text().strip()) == (out / "venv").resolve()


def test_a_build_of_the_layout_before_links_replaces_its_folder(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out")
    legacy_venv(out)
    build_environment(out, smoke=False, environ=env)
    assert current(out) == "new" and (out / "venv").is_symlink() and leftovers(out) == []


def test_matching_digest_reuses_without_running_setup(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out")
    build_environment(out, smoke=False, environ=env)
    again = build_environment(out, smoke=False, environ=env)
    assert again.reused is True and runs(out) == 1
    (out / "requirements.txt").write_text("torch==2.14.1+cu128\n")  # a new render: rebuild
    third = build_environment(out, smoke=False, environ=env)
    assert third.reused is False and runs(out) == 2 and leftovers(out) == []


def test_failed_build_keeps_the_old_venv_and_names_the_fix(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out", tail=INDEX_FAILURE)
    venv = old_venv(out)
    before = {p.relative_to(venv): p.read_bytes() for p in venv.rglob("*") if p.is_file()}
    with pytest.raises(BuildError) as exc:
        build_environment(out, smoke=False, environ=env)
    message = str(exc.value)
    assert "setup-venv.sh failed (exit 1)" in message
    assert "No matching distribution found for torch==2.14.1+cu126" in message
    assert "--wheelhouse" in message  # the offline fix
    assert {p.relative_to(venv): p.read_bytes() for p in venv.rglob("*") if p.is_file()} == before
    assert (out / "venv").resolve() == venv and leftovers(out) == []
    assert runs(out) == 1


def test_failed_first_build_leaves_nothing(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out", tail="exit 3")
    with pytest.raises(BuildError, match=r"exit 3"):
        build_environment(out, smoke=False, environ=env)
    assert not (out / "venv").exists() and not (out / "venv").is_symlink() and leftovers(out) == []


def test_interrupted_build_keeps_the_old_venv(tmp_path: Path, env: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = rendered(tmp_path / "out")
    venv = old_venv(out)
    real_spawn = provision.common.run.spawn

    def interrupted(argv: list[str], **kwargs: Any) -> Any:
        real_spawn(argv, **kwargs)  # the setup got as far as writing the new venv in its own folder ...
        assert [current(out), *leftovers(out)] == ["old", Path(argv[-1]).name]  # ... venv still the old one
        raise KeyboardInterrupt  # ... when Ctrl-C arrived

    monkeypatch.setattr(provision.common.run, "spawn", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_environment(out, smoke=False, environ=env)
    assert (out / "venv").resolve() == venv and current(out) == "old"
    assert leftovers(out) == []


@pytest.mark.parametrize("state", ["half-built", "stamped, not swapped in", "swap link", "previous not removed"])
def test_what_a_killed_build_leaves_is_cleaned_and_the_venv_kept(tmp_path: Path, env: dict[str, str],
                                                                 state: str) -> None:
    """SIGKILL can stop a build between any two steps; ``venv`` names the previous build until the swap."""
    out = rendered(tmp_path / "out")
    good = old_venv(out)
    (good / STAMP).write_text(env_digest(out) + "\n")  # the previous build matches the current files
    if state == "half-built":
        venv_dir(out, f"venv-{env_digest(out)[:12]}-abcd1234", marker="half", stamp=None)
    elif state == "stamped, not swapped in":
        venv_dir(out, f"venv-{env_digest(out)[:12]}-abcd1234", marker="new", stamp=env_digest(out))
    elif state == "swap link":
        (out / ".venv.swap").symlink_to("venv-000000000000-missing0")
    else:  # the link moved to the new build, the old folder's removal was cut short
        (out / "venv").unlink()
        (out / "venv").symlink_to(venv_dir(out, "venv-111111111111-newbuild", marker="new",
                                           stamp=env_digest(out)).name)
        (good / "bin" / "python").unlink()
    assert leftovers(out) != []
    result = build_environment(out, smoke=False, environ=env)
    assert result.reused is True and runs(out) == 0 and leftovers(out) == []
    assert current(out) == ("new" if state == "previous not removed" else "old")


@pytest.mark.parametrize("venv_state", ["half-built", "missing", "complete"])
def test_a_killed_build_of_the_layout_before_links_is_recovered(tmp_path: Path, env: dict[str, str],
                                                                venv_state: str) -> None:
    """The earlier layout moved the old venv to venv.old during a build; the next build sorts out what is left."""
    out = rendered(tmp_path / "out")
    aside = venv_dir(out, "venv.old", stamp=env_digest(out))
    if venv_state == "half-built":
        (out / "venv" / "bin").mkdir(parents=True)  # never stamped
    elif venv_state == "complete":
        venv_dir(out, "venv", marker="new", stamp=env_digest(out))
    result = build_environment(out, smoke=False, environ=env)
    assert result.reused is True and runs(out) == 0 and leftovers(out) == []
    assert current(out) == ("new" if venv_state == "complete" else "old") and not aside.exists()


def test_two_builds_of_one_folder_do_not_run_at_once(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out")
    previous = old_venv(out)
    with (out / BUILD_LOCK).open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a build running now (the kernel frees it however that one ends)
        with pytest.raises(BuildError, match=r"another provision build of .* is running"):
            build_environment(out, smoke=False, environ=env)
    assert runs(out) == 0 and (out / "venv").resolve() == previous
    build_environment(out, smoke=False, environ=env)  # released: the next one runs
    assert current(out) == "new"


def test_unrendered_folder_is_bad_input(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(InvalidInput, match=r"not a rendered folder \(no requirements.txt, install.sh, setup-venv.sh\)"):
        build_environment(tmp_path, smoke=False, environ=env)


@pytest.mark.skipif(not hasattr(provision.cli, "_cmd_build"), reason="provision.cli has no _cmd_build yet")
def test_build_command_reports_the_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = rendered(tmp_path / "out", tail=INDEX_FAILURE)
    venv = old_venv(out)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    rc = main(["build", str(out), "--no-smoke"])
    err = without_progress(capsys.readouterr().err)
    assert rc == 1
    assert err.startswith("error: setup-venv.sh failed (exit 1)") and "Traceback" not in err
    assert (venv / "marker").read_text() == "old\n"


REPORT = SmokeReport(model="autoglm-phone-9b", source="tiny", precision="fp32", device="cpu", load_seconds=0.25,
                     peak_memory_bytes=1000, estimated_memory_bytes=None, tokens_generated=16, tokens_per_second=40.5,
                     warnings=("a warning",))


def with_smoke(stdout: str) -> str:
    """A setup tail whose venv python acts as ``provision smoke``: progress on stderr, ``stdout`` on stdout."""
    return f"""cat > "$1/bin/python" <<'PY'
#!/bin/sh
echo "loading the tiny model" >&2
cat <<'JSON'
{stdout}
JSON
PY
chmod +x "$1/bin/python"
"""


def test_build_reads_the_smoke_report_back_typed(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out", tail=with_smoke(json.dumps(REPORT.to_dict())))
    echoed: list[str] = []
    result = build_environment(out, environ=env, echo=echoed.append)
    assert result.smoke == REPORT
    assert echoed == ["loading the tiny model\n"]  # the smoke test's stderr goes where the caller says
    doc = result.to_dict()
    assert doc["schema"] == BUILD_SCHEMA and doc["smoke"] == REPORT.to_dict() and doc["reused"] is False


def test_a_smoke_test_without_a_report_fails_after_showing_its_output(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out", tail=with_smoke("not json"))
    echoed: list[str] = []
    with pytest.raises(SmokeError, match="printed no JSON report"):
        build_environment(out, environ=env, echo=echoed.append)
    assert echoed == ["loading the tiny model\n"]


def test_the_smoke_report_names_the_render_it_tested(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out", tail=with_smoke(json.dumps(REPORT.to_dict())))
    (out / "provision.lock.json").write_text('{"render": "A"}\n')
    result = build_environment(out, environ=env)
    assert result.smoke is not None and result.smoke.lock_sha256 == lock_digest(out)
    assert json.loads((out / "smoke.json").read_text())["lock_sha256"] == lock_digest(out)
    assert current_smoke_report(out) == result.smoke
    (out / "provision.lock.json").write_text('{"render": "B"}\n')  # another render (say, another model)
    with pytest.raises(InvalidInput, match=r"smoke.json: lock_sha256: tested another render"):
        current_smoke_report(out)
    build_environment(out, smoke=False, environ=env)
    assert not (out / "smoke.json").exists()  # a build does not leave another render's report standing


def test_a_failed_smoke_test_removes_the_previous_report(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out", tail=with_smoke(json.dumps(REPORT.to_dict())))
    build_environment(out, environ=env)
    assert (out / "smoke.json").exists()
    rendered(out, marker="broken", tail=with_smoke("not json"))  # a rebuild whose smoke test fails
    with pytest.raises(SmokeError):
        build_environment(out, environ=env)
    assert not (out / "smoke.json").exists()


def test_build_command_json_carries_the_smoke_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = rendered(tmp_path / "out", tail=with_smoke(json.dumps(REPORT.to_dict())))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert main(["build", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["schema"] == BUILD_SCHEMA and doc["smoke"] == REPORT.to_dict()
    progress = [line for line in captured.err.splitlines() if line.endswith(" ...") or ": done in " in line]
    assert [line.split(" into ")[0].split(" in /")[0] for line in progress[::2]] == [
        "installing the environment", "running the smoke test"]  # the long steps, shown by the CLI
    assert without_progress(captured.err) == "loading the tiny model\n"  # library code printed nothing of its own
    assert main(["build", str(out)]) == 0  # reused now; the person sees where the report is
    err = capsys.readouterr().err.replace("\n", "")  # rich wraps long paths
    assert "environment reused: " in err and f"smoke report: {out / 'smoke.json'}" in err


def with_counted_smoke(report: SmokeReport) -> str:
    """A setup tail whose venv python acts as ``provision smoke --lock OUT/provision.lock.json``: counts its runs
    in OUT/smokes.txt and prints ``report``."""
    doc = json.dumps(report.to_dict())
    return f"""cat > "$1/bin/python" <<'PY'
#!/bin/sh
prev=""; for a in "$@"; do [ "$prev" = "--lock" ] && lock="$a"; prev="$a"; done
echo smoke >> "$(dirname "$lock")/smokes.txt"
cat <<'JSON'
{doc}
JSON
PY
chmod +x "$1/bin/python"
"""


def smokes(out: Path) -> int:
    path = out / "smokes.txt"
    return len(path.read_text().split()) if path.exists() else 0


def download(models: Path) -> None:
    """What ``huggingface-cli download`` leaves in the cache: a ref and a snapshot of files."""
    (models / "refs").mkdir(parents=True)
    (models / "refs" / "main").write_text("0" * 40)
    (models / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (models / "snapshots" / ("0" * 40) / "config.json").write_text("{}")


def test_an_unchanged_rebuild_keeps_the_smoke_report_until_something_it_proves_changes(
        tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out", tail=with_counted_smoke(REPORT))
    plan = {"model": {"id": "autoglm-phone-9b", "repo": "zai-org/AutoGLM-Phone-9B"}}
    (out / "provision.lock.json").write_text(json.dumps({"plan": plan}))
    tested = dataclasses.replace(REPORT, lock_sha256=lock_digest(out))  # the build names the render it tested
    first = build_environment(out, environ=env)
    assert (first.smoke, first.smoke_reused, smokes(out)) == (tested, False, 1)
    again = build_environment(out, environ=env)
    assert (again.reused, again.smoke, again.smoke_reused, smokes(out)) == (True, tested, True, 1)
    assert again.to_dict()["smoke_reused"] is True
    # each of these is a reason to prove the environment again
    changes = [
        lambda: (out / "provision.lock.json").write_text(json.dumps({"plan": plan, "files": {}})),  # a re-render
        lambda: env.update(PROVISION_MODEL_PATH=str(tmp_path / "weights")),  # other weights
        lambda: download(tmp_path / ".cache/huggingface/hub/models--zai-org--AutoGLM-Phone-9B"),  # weights came
        lambda: (out / "smoke.json").unlink(),  # the report is gone
    ]
    for n, change in enumerate(changes, start=2):
        change()
        result = build_environment(out, environ=env)
        assert (result.reused, result.smoke_reused, smokes(out)) == (True, False, n), n
        assert build_environment(out, environ=env).smoke_reused and smokes(out) == n  # and then it holds again


def test_a_failed_smoke_test_is_never_reused(tmp_path: Path, env: dict[str, str]) -> None:
    out = rendered(tmp_path / "out", tail=with_counted_smoke(REPORT))
    build_environment(out, environ=env)
    (out / "smoke.json").write_text(json.dumps({**REPORT.to_dict(), "ok": False, "lock_sha256": lock_digest(out)}))
    assert build_environment(out, environ=env).smoke_reused is False and smokes(out) == 2


def test_the_smoke_key_follows_the_toolkit() -> None:
    from provision.build import smoke_key

    out = Path("/nonexistent")
    assert smoke_key(out, "a" * 64, {}) == smoke_key(out, "a" * 64, {"OTHER": "x"})
    assert smoke_key(out, "a" * 64, {}) != smoke_key(out, "b" * 64, {})


# ---------------------------------------------------------------------------
# Renders: atomic, and never over a user's edits without --force


def render(out: Path, *extra: str) -> int:
    return main(["render", "--host", str(A10G), "--out", str(out), "--no-resolve", *extra])


@pytest.mark.skipif(not hasattr(provision.cli, "_cmd_render"), reason="provision.cli has no _cmd_render yet")
def test_render_refuses_to_overwrite_edits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert render(out) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert render(out) == 0  # unchanged files re-render cleanly
    capsys.readouterr()
    edited = (out / "setup-venv.sh").read_text() + "# my local tweak\n"
    (out / "setup-venv.sh").write_text(edited)
    assert render(out, "--precision", "nf4") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {out}") and "setup-venv.sh" in err and "--force" in err
    assert (out / "setup-venv.sh").read_text() == edited
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "setup-venv.sh"} == {
        k: v for k, v in first.items() if k != "setup-venv.sh"}  # nothing else changed either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    assert render(out, "--precision", "nf4", "--force") == 0
    assert "# my local tweak" not in (out / "setup-venv.sh").read_text()
    assert (out / "provision.lock.json").read_bytes() != first["provision.lock.json"]


@pytest.mark.skipif(not hasattr(provision.cli, "_cmd_render"), reason="provision.cli has no _cmd_render yet")
def test_render_refuses_foreign_files_without_a_lock(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "Dockerfile").write_text("FROM scratch\n")
    assert render(out) == 2
    assert "Dockerfile" in capsys.readouterr().err
    assert (out / "Dockerfile").read_text() == "FROM scratch\n"
    assert sorted(p.name for p in out.iterdir()) == ["Dockerfile"]


WHEEL = "provision-0.1.0-py3-none-any.whl"


def with_toolkit(out: Path, data: bytes = b"wheel 1") -> Path:
    """The toolkit wheel in a rendered folder, listed by its lock as a render writes it."""
    (out / WHEEL).write_bytes(data)
    (out / "provision.lock.json").write_text(json.dumps({"files": {WHEEL: "0" * 64}}))
    return out / WHEEL


def test_the_toolkit_wheel_is_the_one_the_lock_lists(tmp_path: Path) -> None:
    out = rendered(tmp_path / "out")
    assert provision.build.toolkit_wheel_path(out) is None  # an older render: no wheel
    wheel = with_toolkit(out)
    (out / "provision-0.0.9-py3-none-any.whl").write_bytes(b"a stale wheel of an older version")
    assert provision.build.toolkit_wheel_path(out) == wheel
    (out / "provision.lock.json").write_text("{not json")
    assert provision.build.toolkit_wheel_path(out) is None


def test_reused_venv_gets_the_changed_toolkit_reinstalled(tmp_path: Path, env: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    out = rendered(tmp_path / "out")
    wheel = with_toolkit(out)
    build_environment(out, smoke=False, environ=env)
    stamp = out / "venv" / provision.build.TOOLKIT_STAMP
    assert stamp.read_text().strip() == hashlib.sha256(b"wheel 1").hexdigest()
    calls: list[list[str]] = []
    real_spawn = provision.common.run.spawn

    def record(argv: list[str], **kwargs: Any) -> Any:
        if "install" in argv:
            calls.append(argv)
            return subprocess.CompletedProcess(argv, 0, "", "")
        return real_spawn(argv, **kwargs)

    monkeypatch.setattr(provision.common.run, "spawn", record)
    again = build_environment(out, smoke=False, environ=env)
    assert again.reused and calls == [] and runs(out) == 1  # nothing changed: nothing reinstalled
    wheel.write_bytes(b"wheel 2")  # a new render of the toolkit (the install files unchanged)
    third = build_environment(out, smoke=False, environ=env)
    assert third.reused and runs(out) == 1  # the environment stays ...
    assert len(calls) == 1 and str(wheel) in calls[0] and "--no-deps" in calls[0]  # ... the toolkit is refreshed
    assert stamp.read_text().strip() == hashlib.sha256(b"wheel 2").hexdigest()
