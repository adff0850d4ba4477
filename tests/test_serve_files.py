"""Rendered serving files for every reference host: serve.sh runs the plan's command, the Dockerfile runs serve.sh.

Each host that plans is rendered with ``--engine auto`` and ``--engine transformers`` (and the H100 with
``--engine sglang``). serve.sh is then run with stand-in executables named like the engines first on
PATH, which print the argument vector they got: the test compares it with ``plan.serve.argv``, host,
port and model replaced as serve.sh documents. That proves the script's argument passing (quoting,
substitution, ``exec``), not a server; the served proofs run a real server (``provision smoke --endpoint``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from provision.errors import NoViablePlan
from provision.plan.document import Plan
from provision.plan.usecase import PlanRequest
from provision.render.usecase import RenderRequest, render_command

try:
    from test_lint import tool  # tests/ is on sys.path (rootdir-less test modules)
except ImportError:  # pragma: no cover
    from tests.test_lint import tool

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
CASES = [(path.stem, engine) for path in sorted(HOSTS.glob("*.json")) for engine in ("auto", "transformers")]
CASES.append(("linux-x86_64-h100-80gb-driver580", "sglang"))
FAKE_ENGINE = """#!{python}
import json, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (os.write(1, b"SIGTERM\\n"), os._exit(0)))
name = sys.argv[2] if len(sys.argv) > 2 else ""
print(json.dumps({{"exe": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "pid": os.getpid(),
                  "link": os.path.realpath(name) if name and os.path.islink(name) else None}}), flush=True)
if os.environ.get("FAKE_ENGINE_WAIT"):
    time.sleep(30)
"""


def _render(out: Path, host: str, engine: str) -> Plan | None:
    request = RenderRequest(plan=PlanRequest(host=HOSTS / f"{host}.json", engine=engine), out=out, resolve=False)
    try:
        return render_command(request, environ={}).plan
    except NoViablePlan:
        return None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[Path, Plan]]:
    """Every case that plans, rendered once: (host, engine) -> (folder, plan)."""
    root = tmp_path_factory.mktemp("serve-files")
    out = {}
    for host, engine in CASES:
        folder = root / f"{host}-{engine}"
        planned = _render(folder, host, engine)
        if planned is not None:
            out[(host, engine)] = (folder, planned)
    return out


@pytest.fixture(scope="module")
def fake_engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of stand-ins named like the engines' entrypoints, each printing its argv as JSON."""
    folder = tmp_path_factory.mktemp("bin")
    for name in ("vllm", "python3", "transformers"):
        (folder / name).write_text(FAKE_ENGINE.format(python=sys.executable))
        (folder / name).chmod(0o755)
    return folder


def case(rendered: dict, host: str, engine: str) -> tuple[Path, Plan]:
    if (host, engine) not in rendered:
        pytest.skip(f"no plan for {host} with --engine {engine}")
    return rendered[(host, engine)]


def run_serve(folder: Path, bin_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """serve.sh ARGS with only PATH (the stand-ins first), HOME and ``env`` in its environment."""
    environ = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(folder), **env}
    return subprocess.run(["bash", str(folder / "serve.sh"), *args],
                          capture_output=True, text=True, env=environ, timeout=60, check=False, cwd=folder)


def expected_argv(plan: Plan, *, host: str = "127.0.0.1", port: int | None = None, model: str | None = None,
                  extra: tuple[str, ...] = ()) -> list[str]:
    """``serve.argv`` as serve.sh documents it: the port and (vLLM, SGLang) model replaced, then --host and extras."""
    s = plan.serve
    argv = list(s.argv)
    argv[s.port_index] = str(port or s.port)
    if s.model_index is not None:
        argv[s.model_index] = model or str(s.model_source)
    return [*argv, "--host", host, *extra]


def test_the_reference_hosts_cover_every_engine(rendered) -> None:
    engines = {(p.serve.engine, p.serve.tensor_parallel_size > 1, p.precision) for p in
               (plan for _, plan in rendered.values())}
    assert {e for e, _, _ in engines} == {"vllm", "sglang", "transformers"}
    assert any(split for e, split, _ in engines if e == "vllm")  # tensor parallel over two GPUs
    assert {"fp8", "nf4"} <= {p for e, _, p in engines if e == "vllm"}
    assert len(rendered) >= 35


@pytest.mark.parametrize(("host", "engine"), CASES, ids=[f"{h}-{e}" for h, e in CASES])
def test_every_plan_renders_serve_sh_and_a_dockerfile_that_runs_it(rendered, host: str, engine: str) -> None:
    folder, plan = case(rendered, host, engine)
    assert (engine == "transformers") <= (plan.serve.engine == "transformers")
    assert os.access(folder / "serve.sh", os.X_OK)
    lock = json.loads((folder / "provision.lock.json").read_text())
    assert Plan.from_dict(lock["plan"]) == plan and "serve.sh" in lock["files"]
    df = (folder / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", df, re.M)
    assert stages[-1][1] == "serve" and "smoke" in {name for _, name in stages}
    serve_stage = df[df.index(f"FROM {stages[-1][0]} AS serve"):]
    assert json.loads(re.search(r"^CMD (.+)$", serve_stage, re.M)[1]) == ["bash", "/opt/provision-env/serve.sh"]
    assert re.search(r"^ENV PROVISION_SERVE_HOST=0\.0\.0\.0$", serve_stage, re.M)
    assert re.findall(r"^USER (\S+)$", df, re.M)[-1] == "10001:10001"
    health = json.loads(re.search(r"^HEALTHCHECK .* CMD (.+)$", serve_stage, re.M)[1])
    assert "/health" in health[-1] and "PROVISION_SERVE_PORT" in health[-1]
    assert not re.search(r"^(ENV|ARG)\b.*(TOKEN|SECRET)", df, re.M)
    if plan.serve.engine == "transformers":
        assert stages[0][1] == "builder" and "install.sh" in df
    else:  # the engine's official image, pinned by release; our own installs stay out of it
        assert stages[0] == (plan.serve.image, "engine") and "install.sh" not in df
        assert re.search(r"^ENTRYPOINT \[\]$", df, re.M)
        assert re.search(r'--constraint /tmp/engine-constraints.txt "/opt/provision-env/provision-[^"/]+\.whl\[smoke\]"', df)
        assert "HF_HOME=/home/app/.cache/huggingface" in df


@pytest.mark.lint
@pytest.mark.parametrize(("host", "engine"), CASES, ids=[f"{h}-{e}" for h, e in CASES])
def test_hadolint_and_shellcheck_pass(rendered, host: str, engine: str) -> None:
    folder, _ = case(rendered, host, engine)
    result = subprocess.run([tool("hadolint"), "--no-color", str(folder / "Dockerfile")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    scripts = [str(folder / name) for name in ("serve.sh", "setup-venv.sh", "install.sh")]
    result = subprocess.run([tool("shellcheck"), "--severity=style", *scripts],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.lint
@pytest.mark.parametrize(("host", "engine"), [c for c in CASES if c[1] != "transformers"],
                         ids=[f"{h}-{e}" for h, e in CASES if e != "transformers"])
def test_an_engine_plans_workflow_is_one_valid_job_that_smoke_tests_what_loads_in_process(
        rendered, host: str, engine: str) -> None:
    import yaml

    folder, plan = case(rendered, host, engine)
    if plan.serve.engine == "transformers":
        pytest.skip(f"--engine auto serves {host} with transformers (its CI matrix: tests/test_render.py)")
    workflow = folder / ".github" / "workflows" / "provision.yml"
    result = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(workflow)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    job = yaml.safe_load(workflow.read_text())["jobs"]["environment"]
    (row,) = job["strategy"]["matrix"]["include"]
    assert Plan.from_dict(json.loads(row["plan"])) == plan
    (build,) = [s["run"] for s in job["steps"] if "provision build" in s.get("run", "")]
    # the lock decides what loads in process (serve_load: an engine's fp8 in its 16-bit dtype), as the server loads
    assert build == 'provision build "$RUNNER_TEMP/env" --json'


@pytest.mark.parametrize(("host", "engine"), CASES, ids=[f"{h}-{e}" for h, e in CASES])
def test_serve_sh_runs_the_plans_command_with_host_port_and_model_replaced(
        rendered, fake_engines: Path, tmp_path: Path, host: str, engine: str) -> None:
    folder, plan = case(rendered, host, engine)
    weights = tmp_path / "my weights (v1)"  # a folder name with spaces and parentheses
    weights.mkdir()
    extra = ["--log-level", "debug info"]
    done = run_serve(folder, fake_engines, *extra, PROVISION_SERVE_HOST="0.0.0.0", PROVISION_SERVE_PORT="08081",
                     PROVISION_MODEL_PATH=str(weights))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    want = expected_argv(plan, host="0.0.0.0", port=8081, model=str(weights), extra=tuple(extra))
    assert [got["exe"], *got["argv"]] == want
    if plan.serve.engine == "transformers":  # the served name, linked to the weights from a fresh folder
        assert got["link"] == str(weights)
    defaults = run_serve(folder, fake_engines, PROVISION_MODEL_PATH=str(weights))
    assert json.loads(defaults.stdout)["argv"] == expected_argv(plan, model=str(weights))[1:]


@pytest.mark.parametrize("engine", ["auto", "sglang"])
def test_engine_plans_serve_the_repo_by_default(rendered, fake_engines: Path, engine: str) -> None:
    folder, plan = case(rendered, "linux-x86_64-h100-80gb-driver580", engine)
    done = run_serve(folder, fake_engines)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert [got["exe"], *got["argv"]] == expected_argv(plan)
    assert "zai-org/AutoGLM-Phone-9B" in got["argv"] and "--served-model-name" in got["argv"]


def test_transformers_serve_finds_the_repo_in_the_hugging_face_cache(rendered, tmp_path: Path) -> None:
    """No PROVISION_MODEL_PATH: the weights' snapshot (huggingface_hub, offline here) is linked under the served name."""
    folder, plan = case(rendered, "linux-x86_64-cpu-only-32gb", "transformers")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "transformers").write_text(FAKE_ENGINE.format(python=sys.executable))
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')  # the venv's, with huggingface_hub
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    repo = tmp_path / "hf" / "hub" / "models--zai-org--AutoGLM-Phone-9B"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    done = run_serve(folder, bin_dir, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["argv"] == expected_argv(plan)[1:] and got["link"] == str(snapshot)
    missing = run_serve(folder, bin_dir, HF_HOME=str(tmp_path / "empty"), HF_HUB_OFFLINE="1")
    assert missing.returncode != 0 and not missing.stdout
    assert missing.stderr.startswith("serve.sh: cannot get zai-org/AutoGLM-Phone-9B: ")
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("port", ["80; rm -rf /", "0", "65536", "8000 --debug", "$(id)", "-1", "0x50", "123456"])
def test_a_bad_port_is_one_line_and_exit_2(rendered, fake_engines: Path, port: str) -> None:
    for engine in ("auto", "transformers"):
        folder, _ = case(rendered, "linux-x86_64-h100-80gb-driver580", engine)
        done = run_serve(folder, fake_engines, PROVISION_SERVE_PORT=port)
        assert done.returncode == 2 and done.stdout == ""  # the server never started
        assert len(done.stderr.splitlines()) == 1
        assert done.stderr.startswith("serve.sh: PROVISION_SERVE_PORT must be an integer 1-65535, not ")


def test_a_bad_host_or_model_folder_is_refused(rendered, fake_engines: Path, tmp_path: Path) -> None:
    folder, _ = case(rendered, "linux-x86_64-h100-80gb-driver580", "auto")
    for env, says in (({"PROVISION_SERVE_HOST": "--debug"}, "PROVISION_SERVE_HOST must be an address"),
                      ({"PROVISION_SERVE_HOST": "0.0.0.0 --x"}, "PROVISION_SERVE_HOST must be an address"),
                      ({"PROVISION_MODEL_PATH": str(tmp_path / "absent")}, "PROVISION_MODEL_PATH is not a folder")):
        done = run_serve(folder, fake_engines, **env)
        assert (done.returncode, done.stdout) == (2, "")
        assert done.stderr.startswith(f"serve.sh: {says}") and len(done.stderr.splitlines()) == 1


def test_a_local_model_folder_needs_provision_model_path(tmp_path: Path, fake_engines: Path) -> None:
    from provision.data.catalog import load_catalog

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps(load_catalog().get("autoglm-phone-9b").config))
    out = tmp_path / "out"
    request = RenderRequest(plan=PlanRequest(host=HOSTS / "linux-x86_64-a10g-driver535.json", model=str(weights)),
                            out=out, resolve=False)
    plan = render_command(request, environ={}).plan
    assert str(weights) not in (out / "serve.sh").read_text()  # the folder stays out of the rendered files
    done = run_serve(out, fake_engines)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "serve.sh: this plan serves a model from a local folder: set PROVISION_MODEL_PATH to it\n"
    done = run_serve(out, fake_engines, PROVISION_MODEL_PATH=str(weights))
    got = json.loads(done.stdout)
    assert got["argv"] == expected_argv(plan)[1:] and got["link"] == str(weights)


def test_the_render_folders_venv_goes_first_on_path(rendered, tmp_path: Path) -> None:
    """``provision build`` makes venv/ next to serve.sh: its engine runs, whatever PATH holds."""
    folder, plan = case(rendered, "linux-x86_64-h100-80gb-driver580", "auto")
    copy = tmp_path / "render"
    copy.mkdir()
    (copy / "serve.sh").write_bytes((folder / "serve.sh").read_bytes())
    (copy / "venv" / "bin").mkdir(parents=True)
    (copy / "venv" / "bin" / "vllm").write_text(FAKE_ENGINE.format(python=sys.executable))
    (copy / "venv" / "bin" / "vllm").chmod(0o755)
    done = run_serve(copy, tmp_path / "nowhere")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["argv"] == expected_argv(plan)[1:]


def test_the_server_replaces_serve_sh_so_signals_reach_it(rendered, fake_engines: Path) -> None:
    folder, _ = case(rendered, "linux-x86_64-h100-80gb-driver580", "auto")
    env = {"PATH": f"{fake_engines}{os.pathsep}{os.environ['PATH']}", "FAKE_ENGINE_WAIT": "1"}
    with subprocess.Popen(["bash", str(folder / "serve.sh")], stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert started["pid"] == proc.pid  # exec: the server is the process that was started
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "SIGTERM"
        assert proc.wait(timeout=10) == 0
