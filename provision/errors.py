"""Expected failures, each carrying the exit code the CLI maps it to.

Library code raises these and never prints or exits; ``provision.cli.main`` is the
only place that turns them into a line on stderr and an exit status
(see the contract: 2 bad input, 3 no viable plan, 1 anything else).
"""

from __future__ import annotations

import errno

from provision.vocab import PLAN_SCHEMA

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_NO_PLAN",
    "BuildError",
    "InvalidInput",
    "NoViablePlan",
    "ProvisionError",
    "SmokeError",
    "write_failure",
]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_PLAN = 3


class ProvisionError(Exception):
    """Base of every failure the toolkit expects; ``exit_code`` is what the CLI returns."""

    exit_code = EXIT_FAILED


class InvalidInput(ProvisionError):
    """Bad input: a file, option or field that cannot be used.

    ``source`` names the file or option, ``field`` the dotted path inside it
    (``nvidia.gpus[0].compute_capability``), ``problem`` what is wrong.
    ``str()`` gives the contract's ``<source>: <field>: <problem>``.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        super().__init__(f"{source}: {field}: {problem}")


class NoViablePlan(ProvisionError):
    """Nothing fits this host and model; ``remedies`` say what to change."""

    exit_code = EXIT_NO_PLAN

    def __init__(self, message: str, remedies: list[str] | tuple[str, ...]) -> None:
        self.message = message
        self.remedies = tuple(dict.fromkeys(remedies))  # de-duplicated, order kept
        super().__init__(message)

    def to_dict(self) -> dict[str, object]:
        return {
            "schema": PLAN_SCHEMA,
            "error": "no-viable-plan",
            "message": self.message,
            "remedies": list(self.remedies),
        }


class BuildError(ProvisionError):
    """Building an environment failed; the message names the step and the fix."""


class SmokeError(ProvisionError):
    """Loading or generating with the model failed inside the built environment."""


#: Write failures that say the machine is out of room (or its disk failed), not that the path was wrong.
_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def write_failure(source: str, field: str, exc: OSError, *, where: str | None = None) -> ProvisionError:
    """The one-line error for a write that failed, naming the path that could not be written.

    A full disk (or quota, or an I/O error) is the machine's problem: exit 1. Anything else
    (permissions, a read-only filesystem, a file where a folder must be) is the path the user
    chose: the contract's bad input, exit 2. ``where`` (the file the user named) wins over the path
    ``exc`` names, which may be a folder on the way to it.
    """
    path = where if where is not None else exc.filename
    what = f"cannot write {path}: {exc.strerror or exc}" if path is not None else f"cannot write: {exc.strerror or exc}"
    if exc.errno in _NO_ROOM:
        return ProvisionError(f"{source}: {what}")
    return InvalidInput(source, field, what)
