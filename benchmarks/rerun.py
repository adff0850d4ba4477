"""Time an unchanged re-run of ``nox -s provision``'s steps, and a cold one from a fresh clone; print the seconds.

    python benchmarks/rerun.py [--out DIR] [--nox] [--cold] [-- RENDER ARGS]

Runs ``provision detect``, ``provision render`` and ``provision build`` as their own processes,
the way ``nox -s provision`` runs them, into the same folder (default: the one ``nox -s provision``
uses, ``build/provision/<host-id>/<model-id>/``; render arguments default to ``--wheelhouse auto``).
The first pass makes sure the folder is rendered and built (a cold build installs everything; its
time is printed, not judged). The second pass is the figure: it must change no rendered file and
reuse the environment, and it says whether the smoke report was reused too. Target (issue 14):
under 10 s. ``--nox`` also times a second ``nox -s provision`` itself (its own venv and install
steps included). ``--cold`` clones the checkout (its committed state) into a temporary folder and
times a first ``nox -s provision`` there: its own nox venv, detect, render, the environment's install
and the smoke test. Target (issue 14): under 30 s. Package caches (uv's, pip's) are the machine's, as a
user's second project would find them; nothing of the checkout's own build/ is reused.

It needs the toolkit's own dependencies (jinja2, rich, packaging) in the Python that runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BUILD = ROOT / "build" / "provision"


def _provision(*args: str) -> tuple[float, str]:
    """Run ``python -m provision ARGS`` from the checkout; its seconds and stdout (exit on failure)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "provision", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"provision {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def _pass(out: Path | None, render_args: list[str]) -> dict[str, object]:
    """One detect -> render -> build; the seconds of each and what the render and build report."""
    host = BUILD / "host.json"
    BUILD.mkdir(parents=True, exist_ok=True)
    detect, _ = _provision("detect", "-o", str(host))
    args = ["--host", str(host), *render_args]
    if out is None:
        from provision.cli import render_out_dir

        out = render_out_dir(args, BUILD)
    render, rendered = _provision("render", *args, "--out", str(out), "--json")
    build, built = _provision("build", str(out), "--json")
    r, b = json.loads(rendered), json.loads(built)
    return {"out": out, "detect": detect, "render": render, "build": build, "changed": r["changed"],
            "reused": b["reused"], "smoke_reused": b.get("smoke_reused", False)}


def _line(p: dict[str, object]) -> str:
    total = sum(float(p[k]) for k in ("detect", "render", "build"))  # type: ignore[arg-type]
    changed = p["changed"]
    assert isinstance(changed, list)
    return (f"detect {p['detect']:.2f} s, render {p['render']:.2f} s ({len(changed)} files changed), "
            f"build {p['build']:.2f} s (environment {'reused' if p['reused'] else 'built'}, smoke test "
            f"{'not rerun: report reused' if p['smoke_reused'] else 'run'}); total {total:.2f} s")


def _time_nox() -> float:
    subprocess.run(["nox", "-s", "provision"], cwd=ROOT, check=True, capture_output=True)
    start = time.perf_counter()
    subprocess.run(["nox", "-s", "provision"], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


_STEP_RE = re.compile(r"^(installing the environment|running the smoke test) (?:into|in) .*?: done in ([0-9.]+) s$", re.M)


def _time_cold() -> tuple[float, dict[str, float]]:
    """A first ``nox -s provision`` in a fresh clone: its seconds, and the install and smoke steps' own."""
    with tempfile.TemporaryDirectory(prefix="provision-cold-") as tmp:
        clone = Path(tmp) / "provision"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        start = time.perf_counter()
        proc = subprocess.run(["nox", "-s", "provision"], cwd=clone, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"nox -s provision failed in the fresh clone:\n{(proc.stdout + proc.stderr)[-3000:]}")
    steps = {}
    for m in _STEP_RE.finditer(proc.stdout + proc.stderr):
        steps[m.group(1)] = float(m.group(2))
    return seconds, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the folder to render and build (default: nox -s provision's)")
    parser.add_argument("--nox", action="store_true", help="also time a second `nox -s provision`")
    parser.add_argument("--cold", action="store_true", help="also time a first `nox -s provision` in a fresh clone")
    parser.add_argument("render_args", nargs=argparse.REMAINDER, help="after --: arguments for provision render")
    args = parser.parse_args()
    render_args = args.render_args[1:] if args.render_args[:1] == ["--"] else args.render_args
    if not any(a.startswith("--wheelhouse") for a in render_args):
        render_args = ["--wheelhouse", "auto", *render_args]

    first = _pass(args.out, render_args)
    print(f"folder: {first['out']}")
    print(f"first pass:  {_line(first)}")
    warm = _pass(Path(str(first["out"])), render_args)
    print(f"second pass: {_line(warm)}   target < 10 s")
    if warm["changed"] or not warm["reused"]:
        raise SystemExit("the unchanged second pass rewrote files or rebuilt the environment")
    if args.nox:
        print(f"second nox -s provision: {_time_nox():.1f} s   target < 10 s")
    if args.cold:
        seconds, steps = _time_cold()
        parts = ", ".join(f"{name} {s:.1f} s" for name, s in steps.items())
        print(f"cold nox -s provision in a fresh clone: {seconds:.1f} s ({parts})   target < 30 s")


if __name__ == "__main__":
    main()
