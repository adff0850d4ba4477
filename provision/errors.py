"""Expected failures, each carrying the exit code the CLI maps it to.

Library code raises these and never prints or exits; ``provision.cli.main`` is the
only place that turns them into a line on stderr and an exit status
(see the contract: 2 bad input, 3 no viable plan, 1 anything else).
"""

from __future__ import annotations

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
