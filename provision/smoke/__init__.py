"""Stage 5, smoke: load the model in the planned precision and generate, inside the built environment.

The public face: ``smoke_command`` (what ``provision smoke`` runs), ``run_smoke`` (the run
itself) and ``SmokeReport`` (``provision.smoke/v1``) with its human ``format_report``. Nothing
here imports torch until a run starts.
"""

from __future__ import annotations

from provision.smoke.report import SmokeReport, format_report
from provision.smoke.run import run_smoke
from provision.smoke.usecase import smoke_command

__all__ = ["SmokeReport", "format_report", "run_smoke", "smoke_command"]
