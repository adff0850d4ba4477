"""Run the rendered workflow's CPU job on this machine, step by step, as a GitHub runner would.

    python benchmarks/ci_cpu_job.py [--out DIR] [--keep] [-- RENDER ARGS]

1. Renders this machine's environment as ``nox -s provision`` does (``provision detect``, then
   ``provision render --wheelhouse auto`` unless RENDER ARGS say otherwise) into ``DIR/render``.
2. Takes the first row of its workflow whose device is not CUDA and runs the job's steps in order, each
   under ``bash --noprofile --norc -eo pipefail`` (the runner's ``shell: bash``) from this checkout (the
   job's workspace), with ``RUNNER_TEMP``, ``GITHUB_ENV`` (read back after every step, as the runner does),
   ``GITHUB_STEP_SUMMARY`` and ``GITHUB_WORKSPACE`` set and the job's and steps' ``env`` with their
   ``${{ matrix.* }}`` and ``${{ github.workspace }}`` values filled in. The ``uses:`` steps are stood in
   for: checkout is this checkout, setup-python a fresh venv of this Python put first on ``PATH``. A
   step's ``if:`` is evaluated for the forms the workflow uses (``always()``, the ``matrix.device`` and
   ``env`` tests); any other stops the run. After a failed step only ``always()`` steps run.
   One thing is added that a runner does not need: ``PROVISION_WHEELHOUSE=auto`` for the render step, because
   this machine reaches no PyTorch index (the job's render then takes torch from pip's local folders).
3. Writes each step's seconds and exit status, and the job summary, to ``DIR/ci-cpu-job.json``.

Exit status 0 when every step that ran passed. It builds a real venv and starts a real server
(the tiny stand-in without cached weights): minutes, not a unit test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_EXPR = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
_CONDITIONS = {
    "always()": lambda ctx: True,
    "matrix.device == 'cuda' && env.JOB_MODEL_SOURCE != ''":
        lambda ctx: ctx["matrix"]["device"] == "cuda" and ctx["env"].get("JOB_MODEL_SOURCE", "") != "",
}


def _provision(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "provision", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"provision {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def _fill(text: str, ctx: dict[str, Any]) -> str:
    """``${{ matrix.x }}`` and ``${{ github.workspace }}``; anything else stops the run (it was not expected)."""
    def value(match: re.Match[str]) -> str:
        scope, _, name = match[1].partition(".")
        if scope in ("matrix", "github") and name in ctx[scope]:
            return str(ctx[scope][name])
        raise SystemExit(f"unexpected expression {match[0]!r}")
    return _EXPR.sub(value, text)


def _runs(step: dict[str, Any], ctx: dict[str, Any], failed: bool) -> bool:
    condition = step.get("if")
    if condition is None:
        return not failed
    if condition not in _CONDITIONS:
        raise SystemExit(f"unexpected condition {condition!r}")
    return _CONDITIONS[condition](ctx) and (condition == "always()" or not failed)


def _read_github_env(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def run_job(workflow: dict[str, Any], row: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    """Every step of the job for ``row``; the record of each."""
    job = workflow["jobs"]["environment"]
    runner = work / "runner"
    runner.mkdir(parents=True)
    python = work / "setup-python"
    subprocess.run([sys.executable, "-m", "venv", str(python)], check=True)
    ctx: dict[str, Any] = {"matrix": row, "github": {"workspace": str(ROOT)}, "env": {}}
    base = {**os.environ, "RUNNER_TEMP": str(runner), "GITHUB_ENV": str(runner / "github_env"),
            "GITHUB_STEP_SUMMARY": str(runner / "summary.md"), "GITHUB_WORKSPACE": str(ROOT), "CI": "true",
            "PATH": f"{python / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    base.pop("PYTHONPATH", None)
    base.pop("VIRTUAL_ENV", None)
    ctx["env"] = {k: _fill(str(v), ctx) for k, v in job.get("env", {}).items()}
    records, failed = [], False
    for step in job["steps"]:
        name = step.get("name") or step.get("uses", "")
        if "uses" in step:  # checkout: this checkout; setup-python: the venv above
            records.append({"step": name, "stood_in": True})
            continue
        if not _runs(step, ctx, failed):
            records.append({"step": name, "skipped": True})
            print(f"-- skipped: {name}", flush=True)
            continue
        env = {**base, **ctx["env"], **_read_github_env(runner / "github_env"),
               **{k: _fill(str(v), ctx) for k, v in step.get("env", {}).items()}}
        if "provision render" in step["run"]:  # this machine's stand-in for the PyTorch index (install.sh reads a folder)
            env["PROVISION_WHEELHOUSE"] = "auto"
        print(f"-- {name}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", _fill(step["run"], ctx)],
                              cwd=ROOT, env=env, check=False).returncode
        seconds = round(time.perf_counter() - start, 1)
        print(f"-- exit {code} after {seconds} s", flush=True)
        records.append({"step": name, "exit": code, "seconds": seconds})
        failed = failed or code != 0
    return records


def main() -> int:
    import yaml

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="where the render, the job's files and the record go (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the job's folder (its venv is several GB)")
    p.add_argument("render_args", nargs="*", help="provision render arguments (default: --wheelhouse auto)")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="ci-cpu-job-"))
    out.mkdir(parents=True, exist_ok=True)
    host = out / "host.json"
    _provision("detect", "-o", str(host))
    render = out / "render"
    _provision("render", "--host", str(host), *(args.render_args or ["--wheelhouse", "auto"]), "--out", str(render),
               "--force")
    workflow = yaml.safe_load((render / ".github" / "workflows" / "provision.yml").read_text())
    rows = [r for r in workflow["jobs"]["environment"]["strategy"]["matrix"]["include"] if r["device"] != "cuda"]
    if not rows:
        raise SystemExit("the workflow has no CPU row for this machine")
    work = out / "job"
    if work.exists():
        shutil.rmtree(work)
    start = time.perf_counter()
    try:
        steps = run_job(workflow, rows[0], work)
        summary = (work / "runner" / "summary.md").read_text() if (work / "runner" / "summary.md").is_file() else ""
        endpoint = work / "runner" / "endpoint.json"
        record = {"variant": rows[0]["variant"], "device": rows[0]["device"], "steps": steps,
                  "seconds": round(time.perf_counter() - start, 1), "summary": summary,
                  "endpoint": json.loads(endpoint.read_text()) if endpoint.is_file() and endpoint.stat().st_size else None}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    (out / "ci-cpu-job.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "summary"}, indent=2))
    return 0 if all(s.get("exit", 0) == 0 for s in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())
