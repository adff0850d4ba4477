"""Beside the pipeline: diagnose the current environment against the machine and the model.

The public face: ``run_doctor`` gathers the facts and runs every check; ``DoctorReport`` is
the ``provision.doctor/v1`` document of its findings. The checks themselves live in
``checks`` (torch and GPU) and ``install_checks`` (packages, cache, disk, lock drift).
"""

from __future__ import annotations

from provision.doctor.checks import Finding
from provision.doctor.report import DoctorReport, format_findings
from provision.doctor.run import run_doctor

__all__ = ["DoctorReport", "Finding", "format_findings", "run_doctor"]
