"""Build the virtual environment a render describes, and prove it with the smoke test.

The venv is built by the rendered ``setup-venv.sh`` itself (the same install step the
Dockerfile runs), into a fresh folder that replaces the old one only once it is complete:
a failed or interrupted build leaves the previous environment working. A venv whose
recorded lock digest matches the current lock is reused as is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.common import run as _run
from provision.common.atomic import write_atomic
from provision.common.progress import step
from provision.errors import BuildError, InvalidInput, SmokeError, write_failure
from provision.smoke.report import SmokeReport
from provision.vocab import BUILD_SCHEMA

__all__ = ["BuildResult", "build_environment", "check_rendered", "env_digest", "source_root", "venv_python"]

STAMP = ".provision-lock.sha256"
#: The toolkit source the venv's copy of provision was installed from (a checkout changes often).
TOOLKIT_STAMP = ".provision-toolkit.sha256"
_TOOLKIT_PARTS = ("pyproject.toml", "provision", "templates", "matrices")


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildResult:
    """One ``provision build``: the venv, whether it was reused, how long it took, its smoke report."""

    venv: Path
    reused: bool
    seconds: float
    smoke: SmokeReport | None

    def to_dict(self) -> dict[str, Any]:
        """The ``provision.build/v1`` document ``provision build --json`` prints."""
        return {"schema": BUILD_SCHEMA, "venv": str(self.venv), "reused": self.reused,
                "seconds": round(self.seconds, 2), "smoke": self.smoke.to_dict() if self.smoke else None}


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
    """The checkout this toolkit runs from, if it runs from one (it is installed into the venv)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "provision").is_dir() else None


def toolkit_digest(root: Path) -> str:
    """sha256 over the toolkit files a venv installs from ``root`` (package, templates, matrices)."""
    h = hashlib.sha256()
    for part in _TOOLKIT_PARTS:
        path = root / part
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                      and "__pycache__" not in p.parts)
        for file in files:
            h.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return h.hexdigest()


def _refresh_toolkit(venv: Path, root: Path, env: dict[str, str]) -> bool:
    """Reinstall only the toolkit into a reused venv when its source changed; True if it did.

    :raises BuildError: the reinstall failed (the venv keeps its previous copy).
    """
    digest = toolkit_digest(root)
    stamp = venv / TOOLKIT_STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return False
    python = str(venv_python(venv))
    argv = (["uv", "pip", "install", "--python", python, "--no-deps", "--reinstall-package", "provision", str(root)]
            if _run.find_program("uv") else
            [python, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(root)])
    try:
        proc = _run.run_process(argv, env=env)
    except _run.NotRun as exc:
        raise BuildError(f"reinstalling the provision toolkit into {venv} failed: {exc}") from None
    if proc.returncode != 0:
        raise BuildError(f"reinstalling the provision toolkit into {venv} failed: {proc.stderr.strip()[-500:]}")
    write_atomic(stamp, digest + "\n")
    return True


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


def _recover(venv: Path, old: Path) -> None:
    """After a build that was killed outright: keep a complete venv, else bring the previous one back."""
    if not old.exists():
        return
    if (venv / STAMP).is_file():
        shutil.rmtree(old, ignore_errors=True)
        return
    shutil.rmtree(venv, ignore_errors=True)
    old.rename(venv)


def build_environment(out: Path, *, smoke: bool = True, environ: dict[str, str] | None = None,
                      toolkit_source: Path | None = None, echo: Callable[[str], object] | None = None) -> BuildResult:
    """Build ``out/venv`` from the files in ``out`` (or reuse it), then run the smoke test in it.

    ``toolkit_source``: the provision checkout the venv installs the toolkit from; a reused venv
    gets a fresh copy of the toolkit (only) when that source changed. ``echo``: where the smoke
    test's own stderr goes (the CLI passes its stderr; library code prints nothing itself).

    :raises BuildError: the install failed; the old venv (if any) is kept.
    :raises SmokeError: the environment built but the model did not load or generate.
    """
    start = time.perf_counter()
    out = out.resolve()
    check_rendered(out)
    try:
        return _build(out, start, smoke=smoke, environ=environ, toolkit_source=toolkit_source, echo=echo)
    except OSError as exc:  # the folder is read-only, or the disk filled: nothing past the failed step ran
        raise write_failure(str(out), "(folder)", exc) from None


def _build(out: Path, start: float, *, smoke: bool, environ: dict[str, str] | None, toolkit_source: Path | None,
           echo: Callable[[str], object] | None) -> BuildResult:
    digest = env_digest(out)
    venv = out / "venv"
    env = dict(environ if environ is not None else os.environ)
    root = toolkit_source
    if root is not None:
        env.setdefault("PROVISION_SOURCE", str(root))
    old = out / "venv.old"
    _recover(venv, old)
    reused = _reusable(venv, digest)
    if not reused:
        # Built in place (a venv's scripts and activate files name its own path, so a venv built
        # elsewhere and renamed would point at the wrong folder); the previous one waits aside.
        if venv.exists():
            venv.rename(old)
        try:
            _run_setup(out, venv, env)
            write_atomic(venv / STAMP, digest + "\n")  # written last: marks it complete
        except BaseException:
            shutil.rmtree(venv, ignore_errors=True)
            if old.exists():
                old.rename(venv)
            raise
        shutil.rmtree(old, ignore_errors=True)
        if root is not None:
            write_atomic(venv / TOOLKIT_STAMP, toolkit_digest(root) + "\n")
    elif root is not None:
        _refresh_toolkit(venv, root, env)
    report = run_smoke_in(venv, out, env, echo or _discard) if smoke else None
    return BuildResult(venv=venv, reused=reused, seconds=time.perf_counter() - start, smoke=report)


def _discard(_text: str) -> None:
    """No one asked to see the smoke test's stderr."""


def run_smoke_in(venv: Path, out: Path, env: dict[str, str], echo: Callable[[str], object]) -> SmokeReport:
    """Run ``provision smoke`` with the venv's own Python, against the rendered lock.

    ``echo`` gets the smoke test's own progress and errors (its stderr) as they matter to a
    person, before any failure is raised.

    :raises SmokeError: the smoke test failed or printed no report.
    """
    report_path = out / "smoke.json"
    argv = [str(venv_python(venv)), "-m", "provision", "smoke", "--lock", str(out / "provision.lock.json"),
            "--json", "-o", str(report_path)]
    try:
        with step(f"running the smoke test in {venv}"):
            proc = _run.run_process(argv, env=env)
    except _run.NotRun as exc:
        raise SmokeError(f"the smoke test did not run in {venv}: {exc}") from None
    echo(proc.stderr)
    if proc.returncode != 0:
        raise SmokeError(f"the smoke test failed in {venv} (exit {proc.returncode}); see the output above")
    try:
        return SmokeReport.from_dict(json.loads(proc.stdout), source="provision smoke --json")
    except (json.JSONDecodeError, InvalidInput):
        raise SmokeError(f"the smoke test printed no JSON report: {proc.stdout[:200]!r}") from None
