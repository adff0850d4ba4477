"""Build the virtual environment a render describes, and prove it with the smoke test.

The venv is built by the rendered ``setup-venv.sh`` itself (the same install step the
Dockerfile runs) into a folder of its own, ``venv-<digest>-<random>``, and ``venv`` is a
symbolic link to the current one. A finished build is stamped, then swapped in by replacing
that link in one ``rename`` (atomic on POSIX), then the previous folder is removed. So at
every instant, even after SIGKILL of the whole process group, ``venv`` names a complete
environment (or nothing, before the first build); whatever an interrupted build left beside
it is removed when the next build starts. A venv whose stamp matches the install files is
reused as is. Two builds of one folder never run at once (a lock file, released by the
kernel however its holder ends).

The smoke report, ``smoke.json``, belongs to the render it tested: it records the sha256 of
the lock, is written whole and only after the test passed, and ``current_smoke_report``
refuses one whose lock has changed since, so a report from another render is never shown
as this one's.
A reused venv keeps its smoke report too when nothing the smoke test depends on changed
(``smoke_key``: the lock, the toolkit, the weights it finds).

The toolkit comes from the folder too: the wheel the render wrote beside the install files.
A reused venv gets that wheel reinstalled (alone) when its sha256 differs from the one the
venv was given, so working on provision never rebuilds the environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.common import run as _run
from provision.common.atomic import replace_durably, write_atomic
from provision.common.progress import step
from provision.errors import BuildError, InvalidInput, SmokeError, write_failure
from provision.smoke.report import SmokeReport
from provision.vocab import BUILD_SCHEMA

__all__ = ["BuildResult", "build_environment", "check_rendered", "current_smoke_report", "env_digest", "lock_digest",
           "source_root", "toolkit_wheel_path", "venv_python"]

STAMP = ".provision-lock.sha256"
#: The link a build swaps; the folders it names, and the link's temporary twin during a swap.
VENV = "venv"
_VENV_DIR = re.compile(r"venv-[0-9a-f]{12}-[A-Za-z0-9_]{8}")
_SWAP = ".venv.swap"
#: Where the venv of the layout before links waited during a swap (recovered at the next start).
_LEGACY_OLD = "venv.old"
#: Held (``flock``) for the length of a build: the kernel releases it however the build ends.
BUILD_LOCK = ".provision-build.lock"
SMOKE_REPORT = "smoke.json"
#: The sha256 of the toolkit wheel the venv's copy of provision was installed from.
TOOLKIT_STAMP = ".provision-toolkit.sha256"
#: What the last passing smoke test in this venv proved (``smoke_key``); removed with the venv.
SMOKE_STAMP = ".provision-smoke.sha256"
_TOOLKIT_WHEEL = re.compile(r"provision-[^/]+-py3-none-any\.whl")


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildResult:
    """One ``provision build``: the venv, whether it was reused, how long it took, its smoke report."""

    venv: Path
    reused: bool
    seconds: float
    smoke: SmokeReport | None
    #: The smoke report is the previous run's: nothing it depends on changed since (``smoke_key``).
    smoke_reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The ``provision.build/v1`` document ``provision build --json`` prints."""
        return {"schema": BUILD_SCHEMA, "venv": str(self.venv), "reused": self.reused,
                "seconds": round(self.seconds, 2), "smoke": self.smoke.to_dict() if self.smoke else None,
                "smoke_reused": self.smoke_reused}


#: The rendered files that decide what gets installed. The lock also records volatile host
#: facts (free memory, free disk), so it is not what decides reuse.
ENV_FILES = ("requirements.txt", "install.sh", "setup-venv.sh")


def check_rendered(out: Path) -> None:
    """``out`` must be a folder ``provision render`` wrote: what ``provision build`` and ``serve`` are given.

    :raises InvalidInput: ``out`` is missing, a file, or a folder without the rendered install files.
    """
    if not out.exists():
        raise InvalidInput(str(out), "(folder)", "no such folder; render one first: provision render --out DIR")
    if not out.is_dir():
        raise InvalidInput(str(out), "(folder)", "is a file, not a folder; name the folder provision render wrote")
    missing = [name for name in ENV_FILES if not (out / name).is_file()]
    if missing:
        raise InvalidInput(str(out), "(folder)", f"not a rendered folder (no {', '.join(missing)}); "
                                                 f"run provision render --out {out} first")


def env_digest(out: Path) -> str:
    """sha256 over the files that define the environment's contents."""
    h = hashlib.sha256()
    for name in ENV_FILES:
        path = out / name
        try:
            h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
        except FileNotFoundError:
            raise InvalidInput(str(path), "(file)", "no such file; run provision render first") from None
    return h.hexdigest()


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def source_root() -> Path | None:
    """The checkout this toolkit runs from, if it runs from one (where ``nox -s provision`` renders into)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "provision").is_dir() else None


def toolkit_wheel_path(out: Path) -> Path | None:
    """The toolkit wheel the render of ``out`` wrote (the one its lock lists), or None in an older render."""
    lock = out / "provision.lock.json"
    try:
        files = json.loads(lock.read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        return None
    names = [n for n in files if isinstance(n, str) and _TOOLKIT_WHEEL.fullmatch(n)] if isinstance(files, dict) else []
    return out / names[0] if len(names) == 1 and (out / names[0]).is_file() else None


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refresh_toolkit(venv: Path, wheel: Path, digest: str, env: dict[str, str]) -> bool:
    """Reinstall only the toolkit into a reused venv when the folder's wheel (sha256 ``digest``) changed;
    True if it did.

    :raises BuildError: the reinstall failed (the venv keeps its previous copy).
    """
    stamp = venv / TOOLKIT_STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    python = str(venv_python(venv))
    argv = (["uv", "pip", "install", "--python", python, "--no-deps", "--reinstall-package", "provision", str(wheel)]
            if _run.find_program("uv") else
            [python, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)])
    try:
        proc = _run.run_process(argv, env=env)
    except _run.NotRun as exc:
        raise BuildError(f"reinstalling the provision toolkit into {venv} failed: {exc}") from None
    if proc.returncode != 0:
        raise BuildError(f"reinstalling the provision toolkit into {venv} failed: {proc.stderr.strip()[-500:]}")
    write_atomic(stamp, digest + "\n")
    return True


def smoke_key(out: Path, toolkit: str, environ: Mapping[str, str]) -> str:
    """sha256 over everything a smoke test's result depends on beyond the venv's installed packages.

    The lock (the plan, and the digest of every rendered file), the toolkit that runs the test
    (``toolkit``: its source digest or version), the weights it is pointed at (``PROVISION_MODEL_PATH``)
    and the Hugging Face cache's record of the plan's repo (a download since the last run changes
    which weights the test finds). The venv's packages are covered by reusing it only when its
    install files are unchanged.
    """
    from provision.doctor.facts import hub_cache_dir
    from provision.render.lock import LOCK_NAME

    lock_path = out / LOCK_NAME
    lock = lock_path.read_bytes() if lock_path.is_file() else b""
    h = hashlib.sha256()
    for part in (lock, toolkit.encode(), environ.get("PROVISION_MODEL_PATH", "").encode()):
        h.update(part + b"\0")
    try:
        plan = json.loads(lock).get("plan", {}) if lock else {}
        repo = plan.get("model", {}).get("repo") if isinstance(plan, dict) else None
    except (ValueError, AttributeError):
        repo = None
    if isinstance(repo, str) and "/" in repo:
        home = Path(environ["HOME"]) if environ.get("HOME") else None  # the smoke test's own home
        models = hub_cache_dir(environ, home) / f"models--{repo.replace('/', '--')}"
        h.update(str(models).encode() + b"\0")
        for ref in sorted((models / "refs").glob("*")) if (models / "refs").is_dir() else []:
            h.update(ref.name.encode() + b"=" + ref.read_bytes() + b"\0")
        for snapshot in sorted((models / "snapshots").glob("*/*")) if (models / "snapshots").is_dir() else []:
            h.update(str(snapshot.relative_to(models)).encode() + b"\0")
    return h.hexdigest()


def _previous_smoke(venv: Path, out: Path, key: str) -> SmokeReport | None:
    """The report of the last smoke test in ``venv`` when it passed with this ``key``; else None (run it)."""
    stamp = venv / SMOKE_STAMP
    if not stamp.is_file() or stamp.read_text().strip() != key:
        return None
    try:
        return current_smoke_report(out)  # this render's, and passed
    except InvalidInput:
        return None


def _reusable(venv: Path, digest: str) -> bool:
    stamp = venv / STAMP
    return venv_python(venv).exists() and stamp.is_file() and stamp.read_text().strip() == digest


def _run_setup(out: Path, target: Path, env: dict[str, str]) -> None:
    script = out / "setup-venv.sh"  # present: env_digest has read it
    log = out / "build.log"
    with log.open("w", encoding="utf-8") as fh, step(f"installing the environment into {target} (log: {log})"):
        try:
            proc = _run.run_process(["bash", str(script), str(target)], cwd=out, env=env, log=fh)
        except _run.NotRun as exc:
            raise BuildError(f"setup-venv.sh did not run ({exc}); the previous environment is untouched") from None
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        hint = ""
        text = "\n".join(tail)
        if "download.pytorch.org" in text or "No matching distribution" in text or "not found" in text:
            hint = (" If the PyTorch index cannot be reached, pass --wheelhouse DIR (or PROVISION_WHEELHOUSE) "
                    "with the torch wheel, or --index-url for a mirror, and render again.")
        raise BuildError(f"setup-venv.sh failed (exit {proc.returncode}); the previous environment is untouched. "
                         f"Last lines of {log}:\n" + text + ("\n" + hint if hint else ""))


def lock_digest(out: Path) -> str | None:
    """sha256 of the rendered lock's bytes: what a smoke report names as the render it tested; None without one."""
    try:
        return hashlib.sha256((out / "provision.lock.json").read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def current_smoke_report(out: Path) -> SmokeReport:
    """The smoke report in ``out`` if it tested the render that is there now.

    :raises InvalidInput: there is none, it cannot be read, it failed, or it tested another
        render (its ``lock_sha256`` is not the lock's, or it has none).
    """
    path = out / SMOKE_REPORT
    hint = f"run `provision build {out}` first: its smoke test writes it"
    try:
        report = SmokeReport.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
    except FileNotFoundError:
        raise InvalidInput(str(path), "(file)", f"no smoke report; {hint}") from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(str(path), "(file)", f"unreadable ({exc}); {hint}") from None
    if report.lock_sha256 is None or report.lock_sha256 != lock_digest(out):
        raise InvalidInput(str(path), "lock_sha256", f"tested another render (not this provision.lock.json); {hint}")
    if not report.ok:
        raise InvalidInput(str(path), "ok", f"the smoke test failed; {hint}")
    return report


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold ``out``'s build lock for the block; another build of ``out`` running now is a failure.

    :raises BuildError: another build holds it.
    :raises OSError: the lock file cannot be created (a read-only folder).
    """
    fd = os.open(out / BUILD_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if sys.platform != "win32":
            import fcntl

            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BuildError(f"another provision build of {out} is running; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def _target(out: Path) -> Path | None:
    """The folder ``out/venv`` links to (a venv of the layout before links is its own target); None if none."""
    venv = out / VENV
    if venv.is_symlink():
        return out / venv.readlink().name
    return venv if venv.is_dir() else None


def _recover(out: Path) -> None:
    """Finish or undo what an interrupted build left, keeping the environment ``venv`` names.

    A legacy ``venv.old`` (set aside by a swap out of the layout before links) comes back unless
    the swap got as far as the link; the swap's temporary link and every ``venv-*`` folder that
    ``venv`` does not name (half-built, or a previous one whose removal was cut short) go.
    """
    venv, old = out / VENV, out / _LEGACY_OLD
    if old.exists():
        if venv.is_symlink() or (venv / STAMP).is_file():
            shutil.rmtree(old, ignore_errors=True)
        else:  # a folder-layout build cut short: its half-built venv in place, the good one aside
            if venv.exists():
                shutil.rmtree(venv, ignore_errors=True)
            old.rename(venv)
    (out / _SWAP).unlink(missing_ok=True)
    current = _target(out)
    for entry in out.iterdir():
        if _VENV_DIR.fullmatch(entry.name) and entry != current and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _swap_in(out: Path, staging: Path) -> None:
    """Make ``out/venv`` name ``staging`` in one rename, then remove the folder it named before."""
    venv, swap = out / VENV, out / _SWAP
    previous = _target(out)
    swap.unlink(missing_ok=True)
    swap.symlink_to(staging.name, target_is_directory=True)  # relative: the folder can move
    if previous is not None and previous == venv:  # the layout before links: its folder steps aside first
        previous = out / _LEGACY_OLD
        venv.rename(previous)  # until the next rename, no venv: _recover brings this one back
    replace_durably(swap, venv)
    if previous is not None and previous != staging:
        shutil.rmtree(previous, ignore_errors=True)


def _stale_smoke(out: Path) -> None:
    """Remove a smoke report that tested another render (readers refuse it anyway)."""
    try:
        current_smoke_report(out)
    except InvalidInput:
        (out / SMOKE_REPORT).unlink(missing_ok=True)


def build_environment(out: Path, *, smoke: bool = True, environ: dict[str, str] | None = None,
                      echo: Callable[[str], object] | None = None) -> BuildResult:
    """Build ``out/venv`` from the files in ``out`` (or reuse it), then run the smoke test in it.

    A reused venv gets the folder's toolkit wheel reinstalled (only) when it changed. ``echo``: where the
    smoke test's own stderr goes (the CLI passes its stderr; library code prints nothing itself).

    :raises BuildError: the install failed, or another build of ``out`` is running; the old venv (if any) is kept.
    :raises SmokeError: the environment built but the model did not load or generate.
    """
    start = time.perf_counter()
    out = out.resolve()
    check_rendered(out)
    try:
        with _exclusive(out):
            return _build(out, start, smoke=smoke, environ=environ, echo=echo)
    except OSError as exc:  # the folder is read-only, or the disk filled: nothing past the failed step ran
        raise write_failure(str(out), "(folder)", exc) from None


def _build(out: Path, start: float, *, smoke: bool, environ: dict[str, str] | None,
           echo: Callable[[str], object] | None) -> BuildResult:
    digest = env_digest(out)
    venv = out / VENV
    env = dict(environ if environ is not None else os.environ)
    wheel = toolkit_wheel_path(out)
    toolkit = _file_digest(wheel) if wheel is not None else None
    _recover(out)
    _stale_smoke(out)
    reused = _reusable(venv, digest)
    if not reused:
        # Built in a folder of its own, which keeps its name (a venv's scripts and activate files
        # name its path); only the link moves.
        staging = Path(tempfile.mkdtemp(prefix=f"venv-{digest[:12]}-", dir=out))
        try:
            staging.chmod(0o755)
            _run_setup(out, staging, env)
            if toolkit is not None and not env.get("PROVISION_SOURCE"):
                write_atomic(staging / TOOLKIT_STAMP, toolkit + "\n")
            write_atomic(staging / STAMP, digest + "\n")  # written last: marks it complete
            _swap_in(out, staging)
        except BaseException:
            with contextlib.suppress(OSError):  # what a kill skips here, the next build's _recover does
                _recover(out)  # the half-built folder goes; venv still names the previous one
            raise
    elif wheel is not None and toolkit is not None:
        _refresh_toolkit(venv, wheel, toolkit, env)
    report, smoke_reused = None, False
    if smoke:
        from provision import __version__

        key = smoke_key(out, toolkit or __version__, env)
        report = _previous_smoke(venv, out, key) if reused else None
        smoke_reused = report is not None
        if report is None:
            (venv / SMOKE_STAMP).unlink(missing_ok=True)
            report = run_smoke_in(venv, out, env, echo or _discard)
            write_atomic(venv / SMOKE_STAMP, key + "\n")
    return BuildResult(venv=venv, reused=reused, seconds=time.perf_counter() - start, smoke=report,
                       smoke_reused=smoke_reused)


def _discard(_text: str) -> None:
    """No one asked to see the smoke test's stderr."""


def run_smoke_in(venv: Path, out: Path, env: dict[str, str], echo: Callable[[str], object]) -> SmokeReport:
    """Run ``provision smoke`` with the venv's own Python, against the rendered lock, and keep its report.

    ``echo`` gets the smoke test's own progress and errors (its stderr) as they matter to a
    person, before any failure is raised. The report is written to ``out/smoke.json`` whole,
    naming the lock it tested, only once the test passed; a failed test removes the previous
    report, which no longer describes this folder.

    :raises SmokeError: the smoke test failed or printed no report.
    """
    report_path = out / SMOKE_REPORT
    tested = lock_digest(out)
    argv = [str(venv_python(venv)), "-m", "provision", "smoke", "--lock", str(out / "provision.lock.json"), "--json"]
    # install.sh compiles no bytecode ahead of time: the first imports here write it into the venv,
    # as an ahead-of-time compile would have (which PYTHONDONTWRITEBYTECODE does not stop either).
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    try:
        try:
            with step(f"running the smoke test in {venv}"):
                proc = _run.run_process(argv, env=env)
        except _run.NotRun as exc:
            raise SmokeError(f"the smoke test did not run in {venv}: {exc}") from None
        echo(proc.stderr)
        if proc.returncode != 0:
            raise SmokeError(f"the smoke test failed in {venv} (exit {proc.returncode}); see the output above")
        try:
            report = SmokeReport.from_dict(json.loads(proc.stdout), source="provision smoke --json")
        except (json.JSONDecodeError, InvalidInput):
            raise SmokeError(f"the smoke test printed no JSON report: {proc.stdout[:200]!r}") from None
    except SmokeError:
        report_path.unlink(missing_ok=True)
        raise
    report = dataclasses.replace(report, lock_sha256=tested)
    write_atomic(report_path, json.dumps(report.to_dict(), indent=2) + "\n")
    return report
