"""``provision serve``: checks a rendered, built folder, then becomes its serve.sh.

The refusals run through ``main()``; the launch runs ``python -m provision serve`` as a real child
process whose folder's ``venv/bin`` holds a stand-in ``transformers`` that prints what it got: that
proves what reaches the server (argv, host, port, the tiny model under the served name), not a server.
The served proof with a real server is ``nox -s serve`` and tests/test_endpoint.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from provision.build import lock_digest
from provision.cli import main
from provision.plan.document import Plan
from provision.plan.usecase import PlanRequest
from provision.render.usecase import RenderRequest, render_command
from provision.smoke.report import SmokeReport

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
CPU = HOSTS / "linux-x86_64-cpu-only-32gb.json"
STAND_IN = """#!{python}
import json, os, sys
name = sys.argv[2]
print(json.dumps({{"argv": sys.argv[1:], "link": os.path.realpath(name) if os.path.islink(name) else None,
                  "env": {{k: v for k, v in os.environ.items() if k.startswith("PROVISION_")}}}}), flush=True)
"""


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, Plan]:
    """A CPU render with a venv/bin whose ``transformers`` is the stand-in, and a tiny model's smoke report."""
    out = tmp_path / "render"
    plan = render_command(RenderRequest(plan=PlanRequest(host=CPU, engine="transformers"), out=out, resolve=False),
                          environ={}).plan
    bin_dir = out / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    stand_in = bin_dir / "transformers"
    stand_in.write_text(STAND_IN.format(python=sys.executable), encoding="utf-8")
    stand_in.chmod(0o755)
    tiny = tmp_path / "tiny model"
    tiny.mkdir()
    (tiny / "config.json").write_text("{}", encoding="utf-8")
    write_report(out, source="tiny", model_path=str(tiny))
    return out, plan


def write_report(out: Path, *, source: str, model_path: str, lock_sha256: str | None = "") -> None:
    """A smoke report as the build writes it: of the render in ``out`` unless ``lock_sha256`` says otherwise."""
    report = SmokeReport(model="autoglm-phone-9b", source=source, precision="bf16", device="cpu", load_seconds=0.1,
                         peak_memory_bytes=1, estimated_memory_bytes=None, tokens_generated=1, tokens_per_second=1.0,
                         model_path=model_path, lock_sha256=lock_digest(out) if lock_sha256 == "" else lock_sha256)
    (out / "smoke.json").write_text(json.dumps(report.to_dict()), encoding="utf-8")


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "provision", "serve", *args], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def test_serve_becomes_serve_sh_with_host_port_the_tiny_model_and_extra_args(built: tuple[Path, Plan]) -> None:
    out, plan = built
    done = _serve(str(out), "--port", "18081", "--tiny", "--", "--log-level", "info")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert plan.serve is not None
    expected = list(plan.serve.argv[1:])
    expected[expected.index("--port") + 1] = "18081"
    assert got["argv"] == [*expected, "--host", "127.0.0.1", "--log-level", "info"]
    assert got["link"] == str((out.parent / "tiny model").resolve())  # served name -> the tiny model
    assert got["env"]["PROVISION_SERVE_PORT"] == "18081"
    assert "serving autoglm-phone-9b" in done.stderr and "http://127.0.0.1:18081/v1" in done.stderr
    assert "--model autoglm-phone-9b" in done.stderr  # how to point the phone agent at it


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "0"], "--port: port: 0 is not a TCP port (1-65535)"),
    (["--port", "70000"], "--port: port: 70000 is not a TCP port (1-65535)"),
    (["--host", "a b"], "--host: host: 'a b' is not an IP address or host name"),
    (["--host", "x;rm -rf /"], "--host: host: 'x;rm -rf /' is not an IP address or host name"),
])
def test_bad_options_are_one_line_and_exit_2(built: tuple[Path, Plan], args: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = built
    assert main(["serve", str(out), *args]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_folder_that_is_not_rendered_or_not_built_is_refused(built: tuple[Path, Plan], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    assert "not a rendered folder" in capsys.readouterr().err
    out, _ = built
    (out / "venv" / "bin" / "transformers").unlink()
    (out / "venv" / "bin").rmdir()
    assert main(["serve", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: venv: not built") and err.count("\n") == 1


def test_tiny_needs_the_builds_smoke_report(built: tuple[Path, Plan], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = built
    tiny = json.loads((out / "smoke.json").read_text(encoding="utf-8"))["model_path"]
    write_report(out, source="weights", model_path="/models/x")
    assert main(["serve", str(out), "--tiny"]) == 2
    assert "names no tiny model folder" in capsys.readouterr().err
    for stale in ("0" * 64, None):  # a report of another render (say, another model), or one that names none
        write_report(out, source="tiny", model_path=tiny, lock_sha256=stale)
        assert main(["serve", str(out), "--tiny"]) == 2
        assert capsys.readouterr().err == (f"error: {out / 'smoke.json'}: lock_sha256: tested another render (not "
                                           f"this provision.lock.json); run `provision build {out}` first: its smoke "
                                           "test writes it\n")
    (out / "smoke.json").unlink()
    assert main(["serve", str(out), "--tiny"]) == 2
    assert "no smoke report; run `provision build" in capsys.readouterr().err


def test_a_model_path_without_config_is_refused(built: tuple[Path, Plan], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = built
    assert main(["serve", str(out), "--model-path", str(tmp_path)]) == 2
    assert "holds no config.json" in capsys.readouterr().err


def test_only_serve_takes_arguments_after_a_double_dash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--host", str(CPU), "--", "--x"]) == 2
    assert capsys.readouterr().err == "error: command line: --: provision plan takes no arguments after --\n"
