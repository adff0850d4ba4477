"""The doctor's document: every finding, their tally, and whether the environment is healthy.

``provision doctor --json`` prints ``DoctorReport.to_dict()`` (``provision.doctor/v1``);
``from_dict`` reads it back. ``format_findings`` is the plain-text view for logs; the rich
table is ``provision.display``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from provision.common.fields import Fields
from provision.doctor.checks import STATUSES, Finding
from provision.vocab import DOCTOR_SCHEMA

__all__ = ["MARKS", "DoctorReport", "finding_from_dict", "format_findings", "shown_fix"]

#: How each status is written in text and tables.
MARKS = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


@dataclass(frozen=True, slots=True, kw_only=True)
class DoctorReport:
    """The findings in the order a person fixes things; healthy when none failed."""

    findings: tuple[Finding, ...]

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(1 for f in self.findings if f.status == s) for s in STATUSES}

    @property
    def ok(self) -> bool:
        return self.counts["fail"] == 0

    def tally(self) -> str:
        """``1 failed, 2 warnings, 7 ok, 1 skipped``."""
        c = self.counts
        return f"{c['fail']} failed, {c['warn']} warnings, {c['ok']} ok, {c['skip']} skipped"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": DOCTOR_SCHEMA, "ok": self.ok, "counts": self.counts,
                "findings": [f.to_dict() for f in self.findings]}

    @classmethod
    def from_dict(cls, data: object, source: str = "doctor report") -> DoctorReport:
        """Read ``to_dict``'s document back (``ok`` and ``counts`` are derived from the findings).

        :raises InvalidInput: naming ``source`` and the field that is wrong.
        """
        f = Fields(data, source)
        if f.str("schema") != DOCTOR_SCHEMA:
            raise f.fail("schema", f"expected {DOCTOR_SCHEMA!r}")
        return cls(findings=tuple(finding_from_dict(item) for item in f.objs("findings")))


def finding_from_dict(f: Fields) -> Finding:
    """One ``Finding.to_dict()`` back into a ``Finding``."""
    evidence = f.obj("evidence", required=False)
    return Finding(check=f.str("check"), status=f.choice("status", STATUSES), message=f.str("message"),
                   evidence=dict(evidence.data) if evidence is not None else {}, fix=f.str("fix", required=False))


def shown_fix(finding: Finding) -> str | None:
    """A fix is only worth showing next to a problem."""
    return finding.fix if finding.fix and finding.status in ("fail", "warn") else None


def format_findings(findings: Sequence[Finding]) -> str:
    """Plain text, one block per finding: for logs and environments without rich."""
    lines = []
    for f in findings:
        lines.append(f"[{MARKS[f.status]:>4}] {f.check}: {f.message}")
        if fix := shown_fix(f):
            lines.append(f"       fix: {fix}")
    report = DoctorReport(findings=tuple(findings))
    lines.append(f"{'healthy' if report.ok else 'problems found'}: {report.tally()}")
    return "\n".join(lines)
