"""``provision doctor``: diagnose the current Python environment against the machine and the model.

The usual failures show up in environments people already have: a CPU-only torch on a
GPU machine, a torch build without kernels for the GPU, a driver too old for torch's
CUDA, bitsandbytes without a library for this CUDA, transformers too old for the
model's config, a half-finished model download. This module wires the pieces together:
``facts`` gathers (the only I/O), ``expected`` says what should be installed, and
``checks`` / ``install_checks`` judge, each check a pure function returning a ``Finding``
whose ``fix`` is a command to run; ``report`` is the document they make together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provision.common.fields import read_json_file
from provision.doctor.checks import (
    Finding,
    check_bf16,
    check_bitsandbytes,
    check_cuda_available,
    check_torch,
    check_torch_arch,
    check_torch_cuda_build,
)
from provision.doctor.expected import Expected
from provision.doctor.facts import CacheScan, Facts, find_lock, gather_facts, scan_model_cache, with_versions_of
from provision.doctor.install_checks import (
    check_accelerate,
    check_disk,
    check_lock_drift,
    check_model_cache,
    check_transformers,
)
from provision.errors import InvalidInput, NoViablePlan, ProvisionError

if TYPE_CHECKING:
    from pathlib import Path

    from provision.data import Matrix, ModelSpec

__all__ = ["evaluate", "run_doctor"]

def evaluate(facts: Facts, matrix: Matrix, model: ModelSpec, expected: Expected | None, scan: CacheScan, *,
             lock_path: Path | None = None, plan_note: Finding | None = None) -> list[Finding]:
    """Every check, in the order a person fixes things."""
    findings = [
        check_torch(facts, expected),
        check_torch_cuda_build(facts, matrix, expected),
        check_torch_arch(facts, matrix, expected),
        check_cuda_available(facts, matrix, expected),
        check_bf16(facts, expected),
        check_bitsandbytes(facts, matrix, expected),
        check_transformers(facts, matrix, model, expected),
        check_accelerate(facts, expected),
        check_model_cache(scan, model),
        check_disk(facts, scan, model),
        check_lock_drift(facts, expected, lock_path),
    ]
    if plan_note is not None:
        findings.insert(0, plan_note)
    return findings


def _read_expected(lock_path: Path) -> Expected:
    from provision.render.lock import read_lock

    if not lock_path.is_file():
        # read_json_file names the reason (missing, a directory, unreadable)
        read_json_file(lock_path)
        raise InvalidInput(str(lock_path), "(file)", "no such file")
    lock = read_lock(lock_path)
    assert lock is not None
    from provision.plan.document import Plan

    return Expected.from_plan(Plan.from_dict(lock.get("plan"), source=str(lock_path), where="plan"), str(lock_path))


def _found_lock(facts: Facts, model_id: str | None) -> tuple[Expected | None, Path | None]:
    """The lock beside this environment, if any; a stray unreadable one nobody asked for is not fatal."""
    found = find_lock(facts.host, model_id=model_id)
    if found is None:
        return None, None
    try:
        return _read_expected(found), found
    except InvalidInput:
        return None, None


def run_doctor(*, model_id: str | None = None, lock_path: Path | None = None, facts: Facts | None = None,
               matrix: Matrix | None = None, search_lock: bool = True) -> list[Finding]:
    """Gather (unless ``facts`` is given), work out what should be installed, and run every check.

    The expected environment is the lock's plan when there is a lock (``lock_path``, or found
    by ``find_lock``), else the planner's choice for this host.

    :raises InvalidInput: a bad ``--lock`` file or ``--model``.
    """
    from provision.data import load_catalog, load_matrix, resolve_model

    expected = _read_expected(lock_path) if lock_path is not None else None
    if matrix is None:
        matrix = load_matrix()
    catalog = load_catalog(matrix.catalog_path)
    gathered = facts is None
    if facts is None:
        facts = gather_facts()
    if lock_path is None and search_lock:
        expected, lock_path = _found_lock(facts, model_id)
    if gathered and expected is not None:  # every package the lock pins, not only the watched ones
        facts = with_versions_of(facts, expected.packages)
    model = resolve_model(model_id or (expected.model_id if expected else catalog.default.id), catalog)
    plan_note = None
    if expected is None:
        expected, plan_note = _plan_here(facts, matrix, model)
    elif expected.model_id != model.id:
        plan_note = Finding(check="lock.model", status="warn",
                            message=f"{lock_path} is for model {expected.model_id}, not {model.id}",
                            evidence={"lock": str(lock_path)})
    scan = scan_model_cache(model, facts.cache_dir)
    return evaluate(facts, matrix, model, expected, scan, lock_path=lock_path, plan_note=plan_note)


def _plan_here(facts: Facts, matrix: Matrix, model: ModelSpec) -> tuple[Expected | None, Finding | None]:
    """What the planner would install here; when it cannot plan, that becomes a warning, not an error.

    Without a lock the checks judge the in-process stack (torch, transformers, accelerate,
    bitsandbytes) that ``provision smoke`` loads, so the plan is ``--engine transformers``'s; an engine
    environment is judged against its lock, which names the engine's own pins.
    """
    from provision.plan.document import Preferences
    from provision.plan.search import plan

    try:
        planned = plan(facts.host, matrix, model, Preferences(python=facts.python_minor, engine="transformers"))
    except NoViablePlan as exc:
        return None, Finding(check="plan", status="warn", message=f"no viable plan for this host: {exc.message}",
                             evidence={"remedies": list(exc.remedies)})
    except ProvisionError as exc:
        return None, Finding(check="plan", status="warn", message=f"could not plan for this host: {exc}")
    return Expected.from_plan(planned, "planned for this host"), None
