"""Measure the light path and the warm re-provision, and print the figures.

    python benchmarks/bench_provision.py [--host tests/fixtures/hosts/linux-x86_64-a10g-driver535.json] [--warm]

1. ``provision plan`` per process (cold interpreter), best of N, and whether torch or
   transformers were imported (``python -X importtime``). Target: < 0.5 s.
2. plan + render in one process (what ``provision render`` costs once started). Target: < 0.5 s.
3. With ``--warm``: a second ``nox -s provision`` on an unchanged lock (environment reused). Target: < 10 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _time_cmd(argv: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, cwd=ROOT)
        best = min(best, time.perf_counter() - start)
    return best


def _heavy_imports(argv: list[str]) -> list[str]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, cwd=ROOT,
                          check=True)
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    return sorted(names & {"torch", "transformers", "pynvml", "accelerate", "bitsandbytes"})


def _plan_and_render_in_process(host: Path) -> float:
    from provision.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        code = main(["render", "--host", str(host), "--out", str(Path(tmp) / "out"), "--no-resolve"])
        elapsed = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"render failed with exit {code}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", type=Path, default=ROOT / "tests/fixtures/hosts/linux-x86_64-a10g-driver535.json")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warm", action="store_true", help="also time a warm `nox -s provision`")
    args = parser.parse_args()

    plan_argv = ["-m", "provision", "plan", "--host", str(args.host), "--json"]
    per_process = _time_cmd([sys.executable, *plan_argv], args.repeat)
    heavy = _heavy_imports(plan_argv)
    print(f"provision plan, one process (best of {args.repeat}): {per_process:.3f} s   target < 0.5 s")
    print(f"heavy modules imported by provision plan: {', '.join(heavy) or 'none'}")
    first = _plan_and_render_in_process(args.host)  # includes importing jinja2, rich, the matrices
    in_process = min(_plan_and_render_in_process(args.host) for _ in range(args.repeat))
    print(f"plan + render in one process, first call (imports included): {first:.3f} s   target < 0.5 s")
    print(f"plan + render in one process, again (best of {args.repeat}): {in_process:.3f} s")
    if args.warm:
        subprocess.run(["nox", "-s", "provision"], check=True, cwd=ROOT, capture_output=True)
        start = time.perf_counter()
        subprocess.run(["nox", "-s", "provision"], check=True, cwd=ROOT, capture_output=True)
        print(f"warm nox -s provision (environment reused): {time.perf_counter() - start:.1f} s   target < 10 s")


if __name__ == "__main__":
    main()
