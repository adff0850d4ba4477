"""Long steps say what they are doing: library code names a step, the CLI decides how it is shown.

``with step("loading ..."):`` around anything that can take more than a few seconds (building a
synthetic model, loading weights, installing an environment). Nothing is shown unless a reporter
was installed with ``reporting(...)``; ``provision.cli`` installs one that draws a rich status on
stderr, so ``--json`` stdout stays one document and library code never prints.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

__all__ = ["Reporter", "reporting", "step"]

#: Given a step's text, a context manager that shows it while the step runs.
Reporter = Callable[[str], contextlib.AbstractContextManager[None]]

_REPORTER: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("provision_progress", default=None)


@contextlib.contextmanager
def step(text: str) -> Iterator[None]:
    """Run the body as one named step, shown by the installed reporter (if any)."""
    reporter = _REPORTER.get()
    if reporter is None:
        yield
        return
    with reporter(text):
        yield


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    """Show every ``step`` opened inside the body with ``reporter``."""
    token = _REPORTER.set(reporter)
    try:
        yield
    finally:
        _REPORTER.reset(token)
