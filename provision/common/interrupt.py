"""SIGTERM and SIGHUP end a command the way Ctrl-C does: as an exception, so cleanup code runs.

Python turns SIGINT into ``KeyboardInterrupt`` but dies at once on SIGTERM (what ``kill``,
CI runners and nox's "terminate" step send) and SIGHUP (a closed terminal), skipping every
``finally``. Inside ``interrupt_on_signals`` those raise ``Interrupted`` instead, a
``KeyboardInterrupt`` that remembers its signal, so the same handlers stop a server or
remove a half-built folder whichever signal came. SIGKILL cannot be caught: code that must
survive it keeps every state on disk recoverable (``provision.build``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["CAUGHT", "Interrupted", "exit_status", "interrupt_on_signals", "signals_held"]

#: The signals turned into ``Interrupted`` (SIGINT already raises ``KeyboardInterrupt``).
CAUGHT = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class Interrupted(KeyboardInterrupt):
    """A signal asked the process to stop; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a process ended by this interrupt: 128 + the signal (130 for Ctrl-C)."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT))


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Interrupted`` while inside; the previous handlers come back after.

    A no-op outside the main thread, where Python cannot install handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in CAUGHT}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Held:
    def __init__(self) -> None:
        self.pending: int | None = None

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.pending is None:
            self.pending = signum


@contextlib.contextmanager
def signals_held(*, deliver: bool = True) -> Iterator[_Held]:
    """SIGINT, SIGTERM and SIGHUP wait while inside: a step that must not be cut in half (start a
    process and record it; kill a process group and reap it) runs whole.

    With ``deliver``, the first signal that arrived is raised on the way out, as ``KeyboardInterrupt``
    for SIGINT and ``Interrupted`` for the others; else the caller reads ``pending`` and decides.
    """
    held = _Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {s: signal.signal(s, held) for s in (signal.SIGINT, *CAUGHT)}
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if deliver and held.pending is not None:
        raise KeyboardInterrupt if held.pending == signal.SIGINT else Interrupted(held.pending)
