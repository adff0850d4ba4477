"""Check every reference host's planned vLLM and SGLang command with the engine's own argument parser.

Plans each host profile (tests/fixtures/hosts/*.json and the few constructed below) with
``python -m provision plan --host H --engine vllm|sglang --json``, skipping a host where that engine
has no plan (exit 3), and hands each plan's ``serve.argv`` to scripts/engine_args/check_argv.py in
the venv of the release the plan pins (``<venvs>/<engine>-<version>``, built by ``nox -s engine_args``).
An accepted argv must also parse to the plan's own values (context, memory share, tensor parallel
size, quantization, served name, port). Each parser must also reject two broken commands (an unknown
flag; malformed JSON for --limit-mm-per-prompt or --mm-process-config), or the check could not fail.

    python scripts/check_engine_args.py --venvs build/engine-args [--hosts tests/fixtures/hosts]

Prints one line per host and engine ("no plan" where the planner has none), then a summary. Exit 0
when all is accepted, 1 when an argv is rejected, parses to other values, or pins a release with no
parser here; 3 when a parser's venv is missing or broken.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQS = ROOT / "scripts" / "engine_args"  # <engine>-<version>.txt: the releases with a parser
CHECKER = REQS / "check_argv.py"
ENGINES = ("vllm", "sglang")

#: Hosts the fixtures lack that put other flags in front of the newest parsers: name -> (fixture, driver, CUDA).
#: With driver 580 these plan vLLM 0.33.0 with --quantization fp8 or tensor parallelism, and SGLang with TP 2
#: or a lowered context; the fixtures' older drivers plan vLLM 0.19.1 there.
CONSTRUCTED = {
    "constructed-2x-rtx4090-driver580": ("linux-x86_64-2x-rtx4090-driver550.json", "580.95.05", "13.0"),
    "constructed-l4-driver580": ("linux-x86_64-l4-driver550.json", "580.95.05", "13.0"),
    "constructed-rtx4090-driver580": ("linux-x86_64-rtx4090-driver550.json", "580.95.05", "13.0"),
}

#: The flag whose JSON value each engine must refuse when it is cut short.
JSON_FLAG = {"vllm": "--limit-mm-per-prompt", "sglang": "--mm-process-config"}


@dataclass
class Case:
    """One argv for one parser: a host's planned command, or a broken one that must be refused."""

    label: str
    engine: str
    version: str
    argv: list[str]
    serve: dict[str, Any] | None = None  # the plan's serve object; None for a broken argv
    verdict: str = "unchecked"
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    def row(self) -> str:
        return f"{self.label:42s} {self.engine:6s} {self.version:7s} {self.verdict:9s} {self.detail}"


def constructed_hosts(fixtures: Path, out: Path) -> list[Path]:
    """The CONSTRUCTED hosts whose fixture is in ``fixtures``, written into ``out``."""
    paths = []
    for name, (base, driver, cuda) in CONSTRUCTED.items():
        if not (fixtures / base).exists():
            continue
        host = json.loads((fixtures / base).read_text(encoding="utf-8"))
        host["nvidia"].update(driver_version=driver, cuda_driver_version=cuda)
        path = out / f"{name}.json"
        path.write_text(json.dumps(host, indent=1), encoding="utf-8")
        paths.append(path)
    return paths


def plan(host: Path, engine: str) -> tuple[dict[str, Any] | None, str]:
    """The plan's serve object, or None with why (no plan for this engine; the planner failed)."""
    proc = subprocess.run([sys.executable, "-m", "provision", "plan", "--host", str(host), "--engine", engine, "--json"],
                          capture_output=True, text=True, check=False, timeout=300)
    if proc.returncode == 0:
        serve: dict[str, Any] = json.loads(proc.stdout)["serve"]
        return serve, ""
    last = next((line.strip() for line in reversed(proc.stderr.splitlines()) if line.strip()), "")
    return None, f"exit {proc.returncode}: {last}"


def broken(engine: str, version: str, argv: list[str]) -> list[Case]:
    """Two commands the parser must refuse, made from a planned one."""
    flag = JSON_FLAG[engine]
    cut = list(argv)
    if flag in cut:
        i = cut.index(flag) + 1
        cut[i] = cut[i][:-1]  # drop the closing brace
    else:
        cut += [flag, "{bad"]
    return [Case("broken: unknown flag", engine, version, [*argv, "--no-such-flag", "1"]),
            Case(f"broken: bad {flag} JSON", engine, version, cut)]


def run_checker(python: Path, engine: str, cases: list[Case]) -> str:
    """Check ``cases`` in one process; fills each verdict. Returns an environment error, or ""."""
    proc = subprocess.run([str(python), str(CHECKER), "--engine", engine, "--batch", "-"],
                          input=json.dumps([c.argv for c in cases]), capture_output=True, text=True, check=False,
                          timeout=900)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return f"{python}: checker failed: {tail[0]}"
    if proc.returncode == 3 or report["error"]:
        return f"{python}: {report['error']}"
    if report["version"] != cases[0].version:
        return f"{python}: holds {engine} {report['version']}, not {cases[0].version}"
    for case, result in zip(cases, report["results"], strict=True):
        if case.serve is None:
            case.verdict = "refused" if not result["ok"] else "ACCEPTED"
            case.detail = result["error"] or "the parser accepted a broken command: this check cannot fail"
            if result["ok"]:
                case.problems.append(case.detail)
        elif not result["ok"]:
            case.verdict, case.detail = "REJECTED", f"{result['stage']}: {result['error']}"
            case.problems.append(case.detail)
        else:
            case.verdict = "accepted"
            values = result["values"]
            case.problems += [f"{k} parses to {values[k]!r}, the plan says {case.serve[k]!r}"
                              for k in values if values[k] != case.serve[k]]
            case.detail = "; ".join(case.problems) or shlex.join(case.argv)
            if case.problems:
                case.verdict = "MISMATCH"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=Path, default=ROOT / "tests" / "fixtures" / "hosts")
    parser.add_argument("--venvs", type=Path, default=ROOT / "build" / "engine-args",
                        help="folder with one venv per parser, named <engine>-<version>")
    args = parser.parse_args()
    cases: list[Case] = []
    failed: list[str] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        hosts = sorted(args.hosts.glob("*.json")) + constructed_hosts(args.hosts, Path(tmp))
        for host in hosts:
            for engine in ENGINES:
                serve, why = plan(host, engine)
                if serve is None:
                    if why.startswith("exit 3:"):
                        skipped.append(f"{host.stem:42s} {engine:6s} -       no plan")
                    else:
                        failed.append(f"{host.stem} {engine}: the planner failed ({why})")
                    continue
                cases.append(Case(host.stem, engine, serve["engine_version"], serve["argv"], serve))
    parsers = sorted({(c.engine, c.version) for c in cases})
    failed += [f"{c.label} {c.engine} {c.version}: no parser here (add scripts/{REQS.name}/{c.engine}-{c.version}.txt)"
               for c in cases if not (REQS / f"{c.engine}-{c.version}.txt").exists()]
    broken_env = []
    for engine, version in parsers:
        python = args.venvs / f"{engine}-{version}" / "bin" / "python"
        if not (REQS / f"{engine}-{version}.txt").exists():
            continue
        if not python.exists():
            broken_env.append(f"{engine} {version}: no venv at {python.parent.parent} (nox -s engine_args builds it)")
            continue
        group = [c for c in cases if (c.engine, c.version) == (engine, version)]
        refuse = broken(engine, version, group[0].argv)
        cases += refuse
        error = run_checker(python, engine, group + refuse)
        if error:
            broken_env.append(error)
    planned = [c for c in cases if c.serve is not None]
    for row in [*sorted([c.row() for c in planned] + skipped), *sorted(c.row() for c in cases if c.serve is None)]:
        print(row)
    print(f"\n{len(planned)} planned commands on {len({c.label for c in planned})} hosts, "
          f"{len(cases) - len(planned)} broken ones; parsers: "
          + ", ".join(f"{e} {v} ({sum(c.version == v and c.engine == e for c in planned)} planned)" for e, v in parsers))
    failed += [f"{c.label} {c.engine} {c.version}: {p}" for c in cases for p in c.problems]
    for line in broken_env + failed:
        print(f"FAIL {line}")
    if broken_env:
        return 3
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
