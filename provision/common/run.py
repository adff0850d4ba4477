"""The one place the toolkit starts a subprocess.

An argv list (never a shell string), an optional timeout, UTF-8 text with replacement (odd
bytes never raise), no stdin, and the caller's environment. Every call ends in ``spawn``, the
single ``subprocess.run`` of the package, which tests replace to stand in for real programs.

A server that must run beside the caller is the one exception: ``process_group`` starts it with
``subprocess.Popen`` in a process group of its own and stops that whole group on the way out,
whatever ends the block (an error, Ctrl-C, SIGTERM).

Two ways to ask: ``run_process`` raises ``NotRun`` (with the reason) when the program is not
on PATH, could not be started or ran past its timeout, for callers that report why;
``run_command`` returns ``None`` instead, for probes that turn all of that into "not found
here". Either way a non-zero exit status is returned for the caller to judge.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from provision.common.interrupt import Interrupted, signals_held

__all__ = ["NotRun", "find_program", "group_alive", "process_group", "replace_process", "run_command", "run_process",
           "spawn", "stop_group"]


class NotRun(Exception):
    """The program did not run to completion; ``str()`` says why in a few words, naming it."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


def find_program(name: str) -> str | None:
    """Where ``name`` is on PATH, or None. Tests replace this to block real tools."""
    return shutil.which(name)


def spawn(argv: Sequence[str], **options: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, check=False, **options)``: the package's only call of it."""
    return subprocess.run(list(argv), check=False, **options)


def replace_process(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Become ``argv`` (``os.execve``): a foreground server then gets Ctrl-C and SIGTERM itself.

    Returns only by raising: :raises NotRun: the program could not be started.
    """
    if not argv:
        raise ValueError("replace_process needs a program to run")
    try:
        os.execve(argv[0], list(argv), dict(env))  # noqa: S606 (an argv list, no shell)
    except OSError as exc:
        raise NotRun(f"could not start {argv[0]}: {exc.strerror or exc}") from None


def run_process(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log: IO[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion and return it, whatever its exit status.

    Output is captured as text, or with ``log`` both streams go to that open file instead.
    ``env`` replaces the environment when given; by default the child inherits ours.

    :raises NotRun: the program is not on PATH, the OS refused to start it, or it ran past
        ``timeout`` seconds (it is killed).
    :raises ValueError: ``argv`` is empty (a programming error, not bad input).
    """
    if not argv:
        raise ValueError("run_process needs a program to run")
    program = find_program(argv[0])  # a path is checked as given, a bare name searched on PATH
    if program is None:
        raise NotRun(f"{argv[0]} is not on PATH")
    output: dict[str, Any] = {"capture_output": True} if log is None else {"stdout": log, "stderr": subprocess.STDOUT}
    try:
        return spawn(
            [program, *argv[1:]], text=True, encoding="utf-8", errors="replace", timeout=timeout,
            env=dict(env) if env is not None else None, cwd=cwd, stdin=subprocess.DEVNULL, **output,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise NotRun(f"{argv[0]} timed out after {timeout:g} s", timed_out=True) from None
    except OSError as exc:  # FileNotFoundError included: the program vanished after the lookup
        raise NotRun(f"could not start {argv[0]}: {exc.strerror or exc}") from None


def run_command(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str] | None:
    """``run_process`` for probes: ``None`` where it raises ``NotRun``.

    :raises ValueError: if ``argv`` is empty (a programming error, not bad input).
    """
    try:
        return run_process(argv, timeout=timeout, env=env, cwd=cwd)
    except NotRun:
        return None


@contextlib.contextmanager
def process_group(
    argv: Sequence[str],
    *,
    stdout: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    grace_s: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in a new session (its own process group) for the length of the block, then stop the group.

    Output (both streams) goes to ``stdout``, stdin is empty. Signals wait while the process starts and
    is recorded, so no interrupt lands between the two and leaves it running unseen; one that came then
    is raised inside the block. On the way out, for any reason, ``stop_group`` ends every process of it.

    :raises OSError: the program could not be started.
    """
    with signals_held(deliver=False) as held:
        proc = subprocess.Popen(
            list(argv), stdout=stdout, stderr=subprocess.STDOUT if stdout is not None else None,
            stdin=subprocess.DEVNULL, env=dict(env) if env is not None else None, start_new_session=True,
        )  # fmt: skip
    try:
        if held.pending is not None:
            raise KeyboardInterrupt if held.pending == signal.SIGINT else Interrupted(held.pending)
        yield proc
    finally:
        stop_group(proc, grace_s=grace_s)


def group_alive(proc: subprocess.Popen[bytes]) -> bool:
    """Whether any process of the group ``proc`` leads is left (the leader reaped first, so it counts only alive)."""
    proc.poll()
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we may not signal is still a member
        return True
    return True


def _wait_group(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while group_alive(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def stop_group(proc: subprocess.Popen[bytes], *, grace_s: float) -> None:
    """Stop every process in the group ``proc`` leads, as Ctrl-C in its terminal would, and reap the leader.

    SIGINT to the group, then SIGKILL once ``grace_s`` has passed with any of it left, or at once
    when an interrupt (a second Ctrl-C, SIGTERM) arrives while waiting: that interrupt is raised
    again once the group is gone, so the caller still stops. The SIGKILL step itself is not cut short.
    """
    interrupt: KeyboardInterrupt | None = None
    try:
        _signal_group(proc, signal.SIGINT)
        if _wait_group(proc, grace_s):
            return
    except KeyboardInterrupt as exc:
        interrupt = exc
    with signals_held():  # a further signal is raised after the kill, not instead of it
        _signal_group(proc, signal.SIGKILL)
        _wait_group(proc, 10.0)  # SIGKILL is not refused; only a process stuck in the kernel outlives it
    if interrupt is not None:
        raise interrupt
