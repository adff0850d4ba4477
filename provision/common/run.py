"""The one place the toolkit starts a subprocess.

An argv list (never a shell string), a timeout, text capture and the caller's
environment. A missing program, a timeout or an OS refusal is an expected
outcome that the probes turn into "not found here", so it comes back as ``None``
instead of an exception; a non-zero exit status is returned for the caller to judge.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

__all__ = ["find_program", "run_command"]


def find_program(name: str) -> str | None:
    """Where ``name`` is on PATH, or None. Tests replace this to block real tools."""
    return shutil.which(name)


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str] | None:
    """Run ``argv`` and capture its text output.

    Returns the finished process (whatever its exit status) or ``None`` when the
    program is not on PATH, could not be started (``OSError``) or ran past
    ``timeout`` seconds (it is killed). Output is decoded as UTF-8 with
    replacement, so odd bytes never raise. ``env`` replaces the environment when
    given; by default the child inherits ours.

    :raises ValueError: if ``argv`` is empty (a programming error, not bad input).
    """
    if not argv:
        raise ValueError("run_command needs a program to run")
    program = find_program(argv[0])  # a path is checked as given, a bare name searched on PATH
    if program is None:
        return None
    try:
        return subprocess.run(
            [program, *argv[1:]],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            check=False,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired, OSError):
        return None
