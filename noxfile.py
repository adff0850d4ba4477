"""Sessions: ``provision`` (the main job), ``serve``, ``tests``, ``lint``, ``render_matrix``, ``conda``, ``docker``,
``engine_args``.

Sessions only compose ``provision`` commands and tool calls; every decision lives in the
``provision`` package, where it is tested.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # the sessions call into the checkout's provision package
BUILD = ROOT / "build" / "provision"
nox.options.sessions = ["provision"]
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True


def _pyproject_group(name: str) -> list[str]:
    return nox.project.dependency_groups(nox.project.load_toml(ROOT / "pyproject.toml"), name)


def _install_toolkit(session: nox.Session) -> None:
    session.install("-e", str(ROOT))


def _cpu_torch(session: nox.Session, *, vision: bool = True) -> list[str]:
    """A CPU torch (and its torchvision, which glm4v's processor needs) for the tests: from pip's local wheel
    folders when one lies there, else the CPU index.

    uv does not read pip's config, so the folders are handed over; PyPI's Linux torch is a CUDA
    build of several GB, which the tests do not need. Without a local CPU torchvision for the local
    torch, PyPI's torch and torchvision from pip's local indexes where they lie there; else the tests
    that load glm4v's processor skip (the smoke test then fails, as the server would).
    """
    from provision.data import load_matrix
    from provision.render.sources import pip_find_links, read_pip_config, torch_builds, wheel_builds

    folders = pip_find_links(os.environ, read_pip_config(os.environ))
    python = ".".join(session.run("python", "-c", "import sys; print(*sys.version_info[:2])",
                                  silent=True).split())
    local = sorted(v for v, variant in torch_builds(folders, python=python, platform=_platform()) if variant == "cpu")
    if local:
        links = [arg for folder in folders for arg in ("--find-links", str(folder))]
        release = next((r for r in load_matrix(ROOT / "matrices").torch if r.version == local[-1]), None)
        wheels = wheel_builds(folders, "torchvision", python=python, platform=_platform())
        pair = [f"torchvision=={release.torchvision}+cpu"] if vision and release is not None and \
            release.torchvision is not None and (release.torchvision, "cpu") in wheels else []
        if vision and not pair and (on_disk := _pypi_pair_on_disk(python)):
            return on_disk  # PyPI's torch (a CUDA build, runs on the CPU) with its torchvision, from local disk
        return [*links, f"torch=={local[-1]}+cpu", *pair]
    return ["--extra-index-url", "https://download.pytorch.org/whl/cpu", "torch", *(["torchvision"] if vision else [])]


def _pypi_pair_on_disk(python: str) -> list[str]:
    """PyPI's torch and the torchvision built for it, where pip's local indexes hold both (no download).

    A CPU torch alone cannot load glm4v's processor (it needs torchvision, and PyPI's is built against
    PyPI's torch), so where no CPU torchvision lies locally this pair keeps those tests running.
    """
    from provision.data import load_matrix
    from provision.render.sources import (
        pip_index_urls,
        pip_local_index_folders,
        read_pip_config,
        torch_builds,
        wheel_builds,
    )

    config = read_pip_config(os.environ)
    folders = pip_local_index_folders(os.environ, config)
    torches = sorted(v for v, variant in torch_builds(folders, python=python, platform=_platform()) if not variant)
    visions = wheel_builds(folders, "torchvision", python=python, platform=_platform())
    for version in reversed(torches):
        release = next((r for r in load_matrix(ROOT / "matrices").torch if r.version == version), None)
        if release is not None and release.torchvision is not None and (release.torchvision, "") in visions:
            # the local indexes themselves, so torch's own CUDA libraries come from disk too (uv reads no pip config)
            local = [a for url in pip_index_urls(os.environ, config) if url.startswith("file://")
                     for a in ("--extra-index-url", url)]
            return [*local, f"torch=={version}", f"torchvision=={release.torchvision}"]
    return []


def _platform() -> str:
    """The wheel platform of the interpreter running nox (a build host nobody detected)."""
    import platform

    from provision.host import wheel_platform

    os_name = {"darwin": "darwin", "win32": "windows"}.get(sys.platform, "linux")
    return wheel_platform(os_name, platform.machine().lower())


def _out_dir(session: nox.Session, render_args: list[str]) -> Path:
    """build/provision/<host-id>/<model-id>/ for these ``provision render`` arguments (a bad one ends the session)."""
    from provision.cli import render_out_dir
    from provision.errors import InvalidInput

    try:
        return render_out_dir(render_args, BUILD)
    except InvalidInput as exc:
        session.error(f"error: {exc}")


def _detect_and_render(session: nox.Session, *render_args: str) -> Path:
    """``provision detect`` then ``provision render`` into build/provision/<host-id>/<model-id>/; returns that folder.

    One folder per host and model: rendering another model leaves the first one's files and environment alone.
    """
    BUILD.mkdir(parents=True, exist_ok=True)
    host_json = BUILD / "host.json"
    session.run("provision", "detect", "-o", str(host_json))
    args = ["--host", str(host_json), *render_args]
    out = _out_dir(session, args)
    session.run("provision", "render", *args, "--out", str(out))
    return out


def _split_model_path(args: list[str]) -> tuple[list[str], Path | None]:
    """``--model-path DIR`` (or ``--model-path=DIR``) out of the session's arguments, the folder resolved.

    :raises ValueError: the option has no value, or its value is not a folder (the session's one-line error).
    """
    rest: list[str] = []
    path: str | None = None
    items = iter(args)
    for arg in items:
        if arg == "--model-path":
            value = next(items, None)
            if value is None or value.startswith("-"):
                raise ValueError("--model-path needs a folder: nox -s provision -- --model-path /models/AutoGLM-Phone-9B")
            path = value
        elif arg.startswith("--model-path="):
            path = arg.partition("=")[2]
            if not path:
                raise ValueError("--model-path needs a folder: nox -s provision -- --model-path /models/AutoGLM-Phone-9B")
        else:
            rest.append(arg)
    if path is None:
        return rest, None
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(f"--model-path {path}: no such directory")
    return rest, folder


@nox.session(python=False if os.environ.get("PROVISION_NOX_SYSTEM") else None)
def provision(session: nox.Session) -> None:
    """Detect this machine, plan, render, build the environment and prove it with the smoke test.

    Extra arguments go to ``provision render`` (e.g. ``-- --model glm-4-9b-0414 --precision nf4``).
    ``--model-path DIR`` is passed to the smoke test instead.
    """
    if session.python is not False:
        _install_toolkit(session)
    try:
        args, model_path = _split_model_path(list(session.posargs))
    except ValueError as exc:
        session.error(str(exc))
    smoke_env = {} if model_path is None else {"PROVISION_MODEL_PATH": str(model_path)}
    if not any(a.startswith("--wheelhouse") for a in args):
        args = ["--wheelhouse", "auto", *args]
    from provision.common.interrupt import interrupt_on_signals

    with interrupt_on_signals():  # SIGTERM stops the build as Ctrl-C does (nox interrupts, then ends, its child)
        out = _detect_and_render(session, *args)
        session.run("provision", "build", str(out), env=smoke_env)
    session.log(f"environment files: {out}")
    session.log(f"activate with: source {out / 'venv' / 'bin' / 'activate'}")  # venv names a finished build only


#: What the tiny-model tests load besides a CPU torch (see _cpu_torch).
SMOKE_DEPS = [
    "transformers>=5",
    "accelerate",
    "pillow",
    "safetensors",
    "huggingface_hub",
    "tokenizers",
]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, with torch (CPU) and transformers so the tiny-model loads run for real.

    The ``endpoint`` extra (the openai client) lets the endpoint proof's tests run against their
    local servers; its live tests against ``transformers serve`` also need ``PROVISION_SERVE_PYTHON``.
    """
    session.install("-e", f"{ROOT}[endpoint]", *_pyproject_group("test"), *SMOKE_DEPS, *_cpu_torch(session))
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the package, tests and this file; mypy --strict over the package."""
    session.install("-e", str(ROOT), *_pyproject_group("lint"))
    session.run("ruff", "check", "provision", "tests", "noxfile.py", "benchmarks")
    session.run("mypy")
    shellcheck = ROOT / "build" / "tools" / "venv" / "bin" / "shellcheck"  # scripts/install-lint-tools.sh
    scripts = [str(p) for p in (*ROOT.glob("benchmarks/*.sh"), *ROOT.glob("scripts/*.sh"), ROOT / ".ci" / "run")]
    if shellcheck.exists():
        session.run(str(shellcheck), "-x", "--shell=bash", *scripts, external=True)
    else:
        session.warn("shellcheck not installed (scripts/install-lint-tools.sh): shell scripts not checked")


def _newest_torch_variants() -> tuple[str, list[str]]:
    """The newest torch in the matrix and its linux-x86_64 builds: what the rendered CI matrix runs."""
    from provision.data import load_matrix

    release = load_matrix(ROOT / "matrices").torch[0]
    return str(release.version), sorted(v.name for v in release.variants if "linux-x86_64" in v.platforms)


TORCH, VARIANTS = _newest_torch_variants()


@nox.session
@nox.parametrize("variant", VARIANTS)
def render_matrix(session: nox.Session, variant: str) -> None:
    """Render every CUDA variant of the chosen torch: the local twin of the CI matrix.

    Plans for ``PROVISION_MATRIX_HOST`` (default: the H100 reference host, whose driver runs them all).
    """
    _install_toolkit(session)
    default = ROOT / "tests" / "fixtures" / "hosts" / "linux-x86_64-h100-80gb-driver580.json"
    host = Path(os.environ.get("PROVISION_MATRIX_HOST", default))
    device = ["--device", "cpu"] if variant == "cpu" else []
    session.run("provision", "render", "--host", str(host), "--torch", TORCH, "--variant", variant, *device,
                "--out", str(BUILD / "matrix" / variant), "--force", *session.posargs)


@nox.session
def conda(session: nox.Session) -> None:
    """Build the rendered environment.yml with conda/mamba/micromamba and run the smoke test in it."""
    tool = next((t for t in ("micromamba", "mamba", "conda") if shutil.which(t)), None)
    if tool is None:
        session.skip("no conda, mamba or micromamba on PATH: cannot build environment.yml here")
    _install_toolkit(session)
    out = _detect_and_render(session, *session.posargs)
    prefix = out / "conda-env"
    session.run(tool, "env", "create", "--yes", "--prefix", str(prefix), "--file", str(out / "environment.yml"),
                external=True)
    session.run(tool, "run", "--prefix", str(prefix), "python", "-m", "pip", "install", "--no-deps", str(ROOT),
                external=True)
    session.run(tool, "run", "--prefix", str(prefix), "python", "-m", "provision", "smoke", "--lock",
                str(out / "provision.lock.json"), external=True)


@nox.session
def docker(session: nox.Session) -> None:
    """docker build (BuildKit) the rendered Dockerfile, then run the smoke test in the container."""
    if shutil.which("docker") is None:
        session.skip("no docker client on PATH")
    probe = session.run("docker", "info", external=True, silent=True, success_codes=[0, 1])
    if not probe or "Server Version" not in str(probe):
        session.skip("no Docker engine is running (docker info failed): cannot build the image here")
    _install_toolkit(session)
    out = _detect_and_render(session, *session.posargs)
    tag = f"provision-smoke:{out.parent.name.lower()}-{out.name}"  # <host-id>-<model-id>
    # The smoke target is the serving image with `provision smoke` (planned precision) as its entry.
    # The render folder is the whole build context (its Dockerfile copies only files that lie in it).
    session.run("docker", "build", "--target", "smoke", "-t", tag, str(out), external=True, env={"DOCKER_BUILDKIT": "1"})
    gpus = [] if out.parent.name.endswith("-cpu") else ["--gpus", "all"]
    session.run("docker", "run", "--rm", *gpus, tag, external=True)


#: One requirement list per engine release whose argument parser checks the planned server commands.
ENGINE_ARGS = ROOT / "scripts" / "engine_args"


def _engine_venv(session: nox.Session, venv: Path, reqs: Path, extra: list[str]) -> None:
    """A venv at ``venv`` with ``reqs`` (and ``extra``) installed ``--no-deps``, wheels only.

    With uv (what nox makes its own venvs with), from a cache beside the venvs whose files they
    hardlink, so the venvs share the wheels they have in common (torch, transformers, ...) on disk and
    a rebuild is seconds; uv reads none of pip's configuration, so pip's indexes and find-links go to it.
    Without uv: ``python -m venv`` and pip.
    """
    uv = shutil.which("uv")
    if uv is None:
        session.run("python", "-m", "venv", str(venv))
        session.run(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary",
                    ":all:", "-r", str(reqs), *extra, external=True)
        return
    from provision.render.sources import pip_find_links, pip_index_urls, read_pip_config

    config = read_pip_config(os.environ)
    sources = [*(a for url in pip_index_urls(os.environ, config) for a in ("--extra-index-url", url)),
               *(a for folder in pip_find_links(os.environ, config) for a in ("--find-links", str(folder)))]
    env = {"UV_CACHE_DIR": str(venv.parent / ".uv-cache")}
    python = session.run("python", "-c", "import sys; print(sys.executable)", silent=True).strip()
    session.run(uv, "venv", "--quiet", "--python", python, str(venv), external=True, env=env)
    # Every line is an exact pin: take it from whichever index has it (a local mirror holds some releases only).
    session.run(uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "--no-deps",
                "--only-binary", ":all:", "--index-strategy", "unsafe-best-match", *sources, "-r", str(reqs), *extra,
                external=True, env=env)


@nox.session
def engine_args(session: nox.Session) -> None:
    """Check every reference host's planned vLLM and SGLang command with the engine's own argument parser.

    Builds one venv per ``scripts/engine_args/<engine>-<version>.txt`` under build/engine-args/ (``--no-deps``;
    a CPU torch unless the list pins its own, as a list whose engine imports torchvision does; rebuilt
    only when its list changes; a venv whose list is gone is removed), then runs
    scripts/check_engine_args.py (arguments after ``--`` go to it), which fails when a planned release
    has no list or no venv.
    """
    _install_toolkit(session)
    venvs = BUILD.parent / "engine-args"
    cpu_torch = _cpu_torch(session, vision=False)  # the argument parsers need no image processing
    for stale in sorted(venvs.glob("*/provision-engine-args.sha256")):
        if not (ENGINE_ARGS / f"{stale.parent.name}.txt").exists():
            session.log(f"removing {stale.parent}: its list is gone")
            shutil.rmtree(stale.parent)
    for reqs in sorted(ENGINE_ARGS.glob("*.txt")):
        venv = venvs / reqs.stem
        text = reqs.read_text(encoding="utf-8")
        torch = [] if any(line.replace(" ", "").startswith("torch==") for line in text.splitlines()) else cpu_torch
        stamp = hashlib.sha256("\n".join([text, *torch]).encode()).hexdigest()
        done = venv / "provision-engine-args.sha256"
        if done.exists() and done.read_text(encoding="utf-8") == stamp:
            continue
        shutil.rmtree(venv, ignore_errors=True)
        _engine_venv(session, venv, reqs, torch)
        done.write_text(stamp, encoding="utf-8")
    session.run("python", str(ROOT / "scripts" / "check_engine_args.py"), "--venvs", str(venvs), *session.posargs)


def _wait_healthy(session: nox.Session, url: str, server: subprocess.Popen[bytes], log: Path, deadline_s: float) -> None:
    """Wait for the server's health route (``provision.common.net.wait_healthy``); end the session with its log if not."""
    from provision.common.net import NotHealthy, wait_healthy

    try:
        waited = wait_healthy(url, deadline_s=deadline_s, running=lambda: server.poll() is None, interval_s=1)
    except NotHealthy as exc:
        why = f"the server exited ({server.returncode}) before it was healthy" if exc.exited else str(exc)
        session.error(f"{why}:\n{_tail(log)}")
    session.log(f"server healthy after {waited:.0f} s: {url}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


@nox.session(python=False if os.environ.get("PROVISION_NOX_SYSTEM") else None)
def serve(session: nox.Session) -> None:
    """Build (or reuse) this machine's environment, start its server, prove it with the phone agent's request.

    provision (render + build, the venv reused when unchanged) -> ``provision serve`` on 127.0.0.1 on a free port
    -> wait for /health -> ``provision smoke --endpoint`` with a small load probe -> ``endpoint.json`` next to the
    lock -> stop the server, also on failure. Without weights in the Hugging Face cache the server serves the
    tiny stand-in the build's smoke test made. Arguments go to ``provision render``.

    Ctrl-C or SIGTERM at any point stops the server's whole process group (it runs in its own, so a
    terminal's Ctrl-C does not reach it directly) and leaves no ``endpoint.json``: the old one is removed
    before the server starts and the new one is written whole, only by a finished proof.
    """
    if session.python is not False:
        session.install("-e", f"{ROOT}[endpoint]")
    from provision.build import current_smoke_report
    from provision.common.interrupt import interrupt_on_signals
    from provision.common.net import free_port
    from provision.common.run import process_group
    from provision.errors import InvalidInput

    args = list(session.posargs)
    if not any(a.startswith("--wheelhouse") for a in args):
        args = ["--wheelhouse", "auto", *args]
    with interrupt_on_signals():
        out = _detect_and_render(session, *args)
        session.run("provision", "build", str(out))
        try:
            smoke = current_smoke_report(out)
        except InvalidInput as exc:
            session.error(str(exc))
        port = free_port()
        log = out / "serve.log"
        program = shutil.which("provision", path=None if session.python is False else session.bin)
        if program is None:
            session.error("provision is not on the session's PATH")
        argv = [program, "serve", str(out), "--host", "127.0.0.1", "--port", str(port)]
        if smoke.source == "tiny":
            argv.append("--tiny")
        report = out / "endpoint.json"
        report.unlink(missing_ok=True)  # only this run's finished proof may stand here
        session.log(" ".join(argv) + f"  (log: {log})")
        with log.open("wb") as sink, process_group(argv, stdout=sink, grace_s=30) as server:
            _wait_healthy(session, f"http://127.0.0.1:{port}/health", server, log,
                          float(os.environ.get("PROVISION_SERVE_DEADLINE", "900")))
            session.run("provision", "smoke", "--endpoint", f"http://127.0.0.1:{port}/v1", "--lock",
                        str(out / "provision.lock.json"), "--concurrency", "2", "--requests", "4", "-o", str(report))
            session.log(f"endpoint report: {report}")
