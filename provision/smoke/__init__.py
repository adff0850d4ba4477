"""Stage 5, smoke: load the model in the planned precision and generate, inside the built environment.

The public face: ``smoke_command`` (what ``provision smoke`` runs), ``endpoint_command``
(``provision smoke --endpoint``: prove a running server), ``run_smoke`` (the run itself) and
``SmokeReport`` (``provision.smoke/v1``) with its human ``format_report``. They load on first
use, so reading a report (``provision build``) does not import the runner; nothing here imports
torch (or the openai client) until a run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provision.common.lazy import lazy_names

if TYPE_CHECKING:
    from provision.smoke.report import SmokeReport, format_report
    from provision.smoke.run import run_smoke
    from provision.smoke.usecase import endpoint_command, smoke_command

__all__ = ["SmokeReport", "endpoint_command", "format_report", "run_smoke", "smoke_command"]

_HOMES = {
    "SmokeReport": "provision.smoke.report",
    "endpoint_command": "provision.smoke.usecase",
    "format_report": "provision.smoke.report",
    "run_smoke": "provision.smoke.run",
    "smoke_command": "provision.smoke.usecase",
}

__getattr__ = lazy_names(__name__, _HOMES)
