"""Check every reference host's planned vLLM and SGLang command with the engine's own argument parser.

Plans each host profile (tests/fixtures/hosts/*.json and the few constructed below) the way
``provision plan --host H --engine E [--precision P] --json`` does, for ``--engine`` auto, vllm and
sglang and every ``--precision`` (and none: the planner's own pick, fp8 among them), in this process
through the planner's use case. Every engine plan's ``serve.argv`` goes to scripts/engine_args/check_argv.py
in the venv of the release the plan pins (``<venvs>/<engine>-<version>``, built by ``nox -s engine_args``
from ``scripts/engine_args/<engine>-<version>.txt``). An accepted argv must also parse to the plan's own
values (context, memory share, tensor parallel size, quantization, served name, port). Each parser must
also reject two broken commands (an unknown flag; malformed JSON for --limit-mm-per-prompt or
--mm-process-config), or the check could not fail.

    python scripts/check_engine_args.py --venvs build/engine-args [--hosts tests/fixtures/hosts]
    python scripts/check_engine_args.py --releases      # the planned (engine, release) pairs, one a line

Prints the releases the plans pin, one line per distinct command and host (with the options that
plan it), then a summary. Exit 0 when all is accepted, 1 when an argv is rejected, parses to other
values, or pins a release with no list here (tests/test_engine_args.py fails on that too, so coverage
cannot shrink unnoticed); 3 when a planned release's venv is missing or broken.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # plans with this checkout's provision package
REQS = ROOT / "scripts" / "engine_args"  # <engine>-<version>.txt: the releases with a parser
CHECKER = REQS / "check_argv.py"
ENGINES = ("vllm", "sglang")
#: ``--engine`` values that can plan vLLM or SGLang (auto takes vLLM, then SGLang).
ASKED_ENGINES = ("auto", "vllm", "sglang")

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


@dataclass(frozen=True)
class Planned:
    """One engine plan: the host, the options that asked for it, and the plan's serve object."""

    host: str
    engine_option: str  # --engine
    precision: str | None  # --precision; None: the planner's pick
    serve: dict[str, Any]

    @property
    def release(self) -> tuple[str, str]:
        return self.serve["engine"], self.serve["engine_version"]

    @property
    def options(self) -> str:
        return self.engine_option + (f"/{self.precision}" if self.precision else "")


@dataclass
class Case:
    """One argv for one parser: a planned command (with every host and option set that plans it), or a broken one."""

    engine: str
    version: str
    argv: list[str]
    serve: dict[str, Any] | None = None  # the plan's serve object; None for a broken argv
    asked: dict[str, list[str]] = field(default_factory=dict)  # host -> the options that plan this argv
    label: str = ""  # a broken argv's name
    verdict: str = "unchecked"
    detail: str = ""
    problems: list[str] = field(default_factory=list)

    def rows(self) -> list[str]:
        tail = f"{self.engine:6s} {self.version:12s} {self.verdict:9s}"
        if self.serve is None:
            return [f"{self.label:42s} {'':24s} {tail} {self.detail}"]
        return [f"{host:42s} {', '.join(opts):24s} {tail} {self.detail}" for host, opts in sorted(self.asked.items())]


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


def reference_hosts(fixtures: Path, scratch: Path) -> list[Path]:
    """The fixtures' host profiles and the constructed ones (written into ``scratch``)."""
    return sorted(fixtures.glob("*.json")) + constructed_hosts(fixtures, scratch)


def plan_all(hosts: list[Path]) -> Iterator[Planned | tuple[str, str]]:
    """Every vLLM and SGLang plan of ``hosts``: ``--engine`` auto, vllm and sglang, each ``--precision`` and none.

    Plans as ``provision plan --host H`` does (its ``PlanRequest``, the default context, no wheel folders),
    with the matrix and model loaded once. Yields a ``Planned``, or ``(label, error)`` where the planner
    refused the request as bad input; a host with no plan (``NoViablePlan``, exit 3) yields nothing.
    """
    from provision.errors import InvalidInput, NoViablePlan
    from provision.plan.search import plan
    from provision.plan.usecase import PlanRequest, load_inputs, preferences
    from provision.vocab import PRECISIONS

    for path in hosts:
        host, matrix, model = load_inputs(PlanRequest(host=path))
        for engine in ASKED_ENGINES:
            for precision in (None, *PRECISIONS):
                request = PlanRequest(host=path, engine=engine, precision=precision)
                try:
                    serve = plan(host, matrix, model, preferences(request, host, ())).serve
                except NoViablePlan:
                    continue
                except InvalidInput as e:
                    yield f"{path.stem} --engine {engine} --precision {precision}", str(e)
                    continue
                if serve is not None and serve.engine in ENGINES:
                    yield Planned(path.stem, engine, precision, serve.to_dict())


def planned_releases(plans: list[Planned]) -> dict[tuple[str, str], int]:
    """(engine, release) -> how many plans pin it."""
    counts: dict[tuple[str, str], int] = {}
    for p in plans:
        counts[p.release] = counts.get(p.release, 0) + 1
    return dict(sorted(counts.items()))


def requirement_file(engine: str, version: str) -> Path:
    return REQS / f"{engine}-{version}.txt"


def distinct_cases(plans: list[Planned]) -> list[Case]:
    """One case per distinct (engine, release, argv), with every host and option set that plans it."""
    cases: dict[tuple[str, str, tuple[str, ...]], Case] = {}
    for p in plans:
        key = (*p.release, tuple(p.serve["argv"]))
        case = cases.setdefault(key, Case(p.release[0], p.release[1], list(p.serve["argv"]), p.serve))
        case.asked.setdefault(p.host, []).append(p.options)
    return list(cases.values())


def broken(engine: str, version: str, argv: list[str]) -> list[Case]:
    """Two commands the parser must refuse, made from a planned one."""
    flag = JSON_FLAG[engine]
    cut = list(argv)
    if flag in cut:
        i = cut.index(flag) + 1
        cut[i] = cut[i][:-1]  # drop the closing brace
    else:
        cut += [flag, "{bad"]
    return [Case(engine, version, [*argv, "--no-such-flag", "1"], label="broken: unknown flag"),
            Case(engine, version, cut, label=f"broken: bad {flag} JSON")]


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
    parser.add_argument("--releases", action="store_true",
                        help="print the planned <engine>-<version> pairs, one a line, and stop")
    args = parser.parse_args()
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        hosts = reference_hosts(args.hosts, Path(tmp))
        plans: list[Planned] = []
        for item in plan_all(hosts):
            if isinstance(item, Planned):
                plans.append(item)
            else:
                failed.append(f"{item[0]}: the planner refused it ({item[1]})")
    releases = planned_releases(plans)
    if args.releases:
        print("\n".join(f"{e}-{v}" for e, v in releases))
        return 1 if failed else 0
    print(f"{len(plans)} vLLM/SGLang plans of {len(hosts)} hosts (--engine {', '.join(ASKED_ENGINES)}; "
          f"--precision none or each) pin:")
    for (engine, version), n in releases.items():
        reqs = requirement_file(engine, version)
        venv = args.venvs / f"{engine}-{version}"
        where = (f"no list: add scripts/{REQS.name}/{reqs.name}" if not reqs.exists()
                 else f"venv {venv}" if venv.exists() else f"no venv at {venv} (nox -s engine_args builds it)")
        print(f"  {engine:6s} {version:12s} {n:4d} plans   {where}")
    unplanned = sorted(p.stem for p in REQS.glob("*.txt") if tuple(p.stem.split("-", 1)) not in releases)
    if unplanned:
        print(f"  (lists no plan pins: {', '.join(unplanned)})")
    print()
    cases = distinct_cases(plans)
    failed += [f"{engine} {version}: planned ({n} plans) but no parser here "
               f"(add scripts/{REQS.name}/{requirement_file(engine, version).name})"
               for (engine, version), n in releases.items() if not requirement_file(engine, version).exists()]
    broken_env = []
    refused: list[Case] = []
    for engine, version in releases:
        if not requirement_file(engine, version).exists():
            continue
        python = args.venvs / f"{engine}-{version}" / "bin" / "python"
        if not python.exists():
            broken_env.append(f"{engine} {version}: no venv at {python.parent.parent} (nox -s engine_args builds it)")
            continue
        group = [c for c in cases if (c.engine, c.version) == (engine, version)]
        refuse = broken(engine, version, group[0].argv)
        refused += refuse
        error = run_checker(python, engine, group + refuse)
        if error:
            broken_env.append(error)
    for row in sorted(row for c in cases for row in c.rows()) + [row for c in refused for row in c.rows()]:
        print(row)
    print(f"\n{len(cases)} distinct commands from {len(plans)} plans on {len({p.host for p in plans})} hosts, "
          f"{len(refused)} broken ones; parsers: "
          + ", ".join(f"{e} {v} ({sum((c.engine, c.version) == (e, v) for c in cases)} commands)" for e, v in releases))
    failed += [f"{c.label or ', '.join(sorted(c.asked))} {c.engine} {c.version}: {p}"
               for c in cases + refused for p in c.problems]
    for line in broken_env + failed:
        print(f"FAIL {line}")
    if broken_env:
        return 3
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
