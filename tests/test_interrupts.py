"""Interrupts of real processes: ``provision build``, ``nox -s provision`` and the serve session's server group.

Each test starts the real program as a child in a process group of its own and signals it at a
known moment: SIGINT to the group (Ctrl-C in a terminal), SIGTERM to the process (``kill``, or
nox's terminate step), SIGKILL to the group (where no handler runs). Then it checks what a person
would next rely on: ``venv`` names a complete environment whose Python imports provision, no
report of another render is taken for this one, and the next run succeeds.

What is real: the rendered setup-venv.sh and install.sh, the venv (``python -m venv``), the build,
its swap and cleanup, the smoke test (the tiny model loaded through transformers in the built
venv), nox and the noxfile. What stands in: ``uv`` on PATH, for the package download only. It
makes the venv with ``python -m venv`` and "installs" by linking this interpreter's packages into it
(a ``.pth`` file) instead of downloading torch, and the toolkit by unpacking the folder's wheel of it
into the venv, as an installer does with a pure wheel; it announces each step in a
folder of phase files and, when asked, waits at one so the test can signal it there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from provision.build import STAMP, current_smoke_report, lock_digest
from provision.common.net import free_port
from provision.errors import InvalidInput

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and links")]

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "tests" / "fixtures" / "hosts" / "linux-x86_64-cpu-only-32gb.json"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
#: Render A, then render B: another torch pin, so B rebuilds the venv and A's smoke report is another render's.
#: A text model: the smoke test loads glm4v's processor as the server does, which needs torchvision, and the
#: interpreter whose packages the stand-in venv links may lack it; the build is what is under test here.
RENDER_A = ["--host", str(CPU), "--python", PYTHON, "--no-resolve", "--model", "glm-4-9b-chat-hf"]
RENDER_B = [*RENDER_A, "--torch", "2.14.1"]

UV = '''#!{python}
"""Stand-in for uv (see tests/test_interrupts.py): a real venv, packages linked instead of downloaded."""
import os, subprocess, sys, sysconfig, time, zipfile
from pathlib import Path

SITE = {site!r}

def phase(name):
    folder = os.environ.get("STANDIN_PHASES")
    if folder:
        Path(folder, name).write_text(str(os.getpid()))
    if os.environ.get("STANDIN_HOLD") == name:
        time.sleep(300)  # until the test's signal

def purelib(python):
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip())

args = sys.argv[1:]
if args[:1] == ["venv"]:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", args[-1]], check=True)
    phase("venv")  # a venv with no packages yet
elif args[:2] == ["pip", "install"] and "--python" in args:
    site = purelib(args[args.index("--python") + 1])
    if "-r" in args:
        (site / "standin-packages.pth").write_text(SITE + "\\n")
        phase("install")  # the packages are in, the toolkit not yet
    else:
        zipfile.ZipFile(args[-1]).extractall(site)  # the toolkit's wheel: pure Python, unpacked as is
        phase("toolkit")
else:
    sys.exit(f"uv stand-in: not modelled: {{args}}")
'''

LAUNCHER = '''#!{python}
import sys
sys.path.insert(0, {root!r})
from provision.cli import main
sys.exit(main())
'''


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PATH with the uv stand-in and a ``provision`` that runs this checkout, and a HOME shared by the
    tests (the tiny model is built once). No PYTHONPATH: a venv imports provision only through its own install."""
    import sysconfig

    base = tmp_path_factory.mktemp("tools")
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name, text in (("uv", UV.format(python=sys.executable, site=sysconfig.get_paths()["purelib"])),
                       ("provision", LAUNCHER.format(python=sys.executable, root=str(ROOT)))):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    # PIP_FIND_LINKS: nox's --wheelhouse auto would plan from a machine's local wheel folder, whatever it holds.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "PROVISION_", "VIRTUAL_ENV", "UV_", "PIP_FIND_LINKS"))}
    env.update(PATH=f"{bin_dir}:/usr/bin:/bin", HOME=str(base / "home"), PYTHONDONTWRITEBYTECODE="1",
               HF_HUB_OFFLINE="1", NO_COLOR="1")
    return env


def provision(env: dict[str, str], *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["provision", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


class Child:
    """A program in a process group of its own, its output in a file, its helpers' phases in a folder."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, hold: str | None) -> None:
        self.phases = cwd / f"phases-{time.monotonic_ns()}"
        self.phases.mkdir()
        self.log = self.phases / "output.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(argv, env={**env, "STANDIN_PHASES": str(self.phases),
                                                    "STANDIN_HOLD": hold or ""},
                                         cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, phase: str | None = None, text: str | None = None, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (phase and (self.phases / phase).exists()) or (text and text in self.output()):
                return
            if self.proc.poll() is not None:
                pytest.fail(f"ended ({self.proc.returncode}) before {phase or text!r}:\n{self.output()}")
            time.sleep(0.05)
        pytest.fail(f"no {phase or text!r} within {timeout} s:\n{self.output()}")

    def signal(self, signum: int, *, group: bool) -> int:
        (os.killpg if group else os.kill)(self.proc.pid, signum)
        return self.proc.wait(timeout=60)

    def reap(self) -> None:
        """A helper a signal to one process left running (it sleeps in a phase) goes with its group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.reap()


def venv_state(out: Path, env: dict[str, str]) -> tuple[Path, str]:
    """The folder ``venv`` names now (it must be complete and import provision as installed from the folder's
    wheel, this checkout's code), and its stamp."""
    link = out / "venv"
    assert link.is_symlink(), f"{link} is not a link"
    target = link.resolve()
    stamp = (target / STAMP).read_text().strip()  # complete: a build stamps its folder before the swap
    done = subprocess.run([str(link / "bin" / "python"), "-c", "import provision; print(provision.__file__)"],
                          env=env, cwd=out, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    installed = Path(done.stdout.strip()).resolve()
    assert installed.is_relative_to(target) and installed.read_bytes() == (ROOT / "provision" / "__init__.py").read_bytes()
    return target, stamp


def no_report_of(out: Path) -> None:
    """Nothing in ``out`` is taken for this render's smoke report."""
    with pytest.raises(InvalidInput) as exc:
        current_smoke_report(out)
    assert exc.value.field in ("(file)", "lock_sha256"), str(exc.value)


def leftovers(out: Path, target: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()
                  if p.name.startswith(("venv-", ".venv", "venv.")) and p != target)


#: (where the build is, the signal, to the whole group?) in the order they hit the same folder.
BEFORE_SWAP = [("venv", signal.SIGINT, True), ("install", signal.SIGTERM, False), ("install", signal.SIGKILL, True),
               ("toolkit", signal.SIGINT, True)]
AFTER_SWAP = [("smoke", signal.SIGINT, True), ("smoke", signal.SIGTERM, False), ("smoke", signal.SIGKILL, True)]


def expected_status(signum: int, group: bool) -> int:
    return -signal.SIGKILL if signum == signal.SIGKILL else 128 + signum


def test_provision_build_interrupted_anywhere_keeps_a_working_venv(tmp_path: Path, tools: dict[str, str],
                                                                   children: list[Child]) -> None:
    out = tmp_path / "out"
    assert provision(tools, "render", *RENDER_A, "--out", str(out), cwd=tmp_path).returncode == 0
    first = provision(tools, "build", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    previous, stamp_a = venv_state(out, tools)
    assert current_smoke_report(out).source == "tiny"  # render A's proof

    rendered = provision(tools, "render", *RENDER_B, "--out", str(out), cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    no_report_of(out)  # A's report still lies there; it is not B's
    serve = provision(tools, "serve", str(out), "--tiny", cwd=tmp_path, timeout=60)
    assert serve.returncode == 2 and "smoke.json: lock_sha256: tested another render" in serve.stderr

    for phase, signum, group in BEFORE_SWAP:
        child = Child(["provision", "build", str(out)], tools, tmp_path, hold=phase)
        children.append(child)
        child.wait_for(phase)
        assert child.signal(signum, group=group) == expected_status(signum, group), child.output()
        assert venv_state(out, tools) == (previous, stamp_a), (phase, signum)  # untouched: A's venv, working
        no_report_of(out)
        child.reap()

    for _, signum, group in AFTER_SWAP:  # B's venv is complete and swapped in; its smoke test is cut short
        child = Child(["provision", "build", str(out)], tools, tmp_path, hold=None)
        children.append(child)
        child.wait_for(text="running the smoke test in")
        time.sleep(1.5)  # inside the test: the venv's Python is importing torch and transformers
        assert child.signal(signum, group=group) == expected_status(signum, group), child.output()
        target, stamp = venv_state(out, tools)
        assert target != previous and not previous.exists() and stamp != stamp_a  # B's venv, complete
        no_report_of(out)
        child.reap()

    again = provision(tools, "build", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    target, _ = venv_state(out, tools)
    report = current_smoke_report(out)  # B's own report now
    assert report.lock_sha256 == lock_digest(out) and report.source == "tiny"
    assert leftovers(out, target) == []  # what the interrupted builds left is gone


def nox_checkout(tmp_path: Path) -> Path:
    """This checkout's noxfile in a folder of its own, so nox writes build/provision/ there, not into the checkout."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copy(ROOT / "noxfile.py", root / "noxfile.py")
    for name in ("provision", "templates", "matrices", "pyproject.toml"):
        (root / name).symlink_to(ROOT / name)
    return root


def test_nox_provision_interrupted_keeps_the_previous_venv_and_prints_no_path(tmp_path: Path,
                                                                              tools: dict[str, str],
                                                                              children: list[Child]) -> None:
    """The issue's case: Ctrl-C (SIGINT to nox's process group) during a rebuild, then SIGTERM to nox alone."""
    pytest.importorskip("nox")
    root = nox_checkout(tmp_path)
    env = {**tools, "PROVISION_NOX_SYSTEM": "1"}
    nox = [sys.executable, "-m", "nox", "-f", str(root / "noxfile.py"), "-s", "provision", "--"]
    first = subprocess.run([*nox, *RENDER_A], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    activate = next(line.split("activate with: source ", 1)[1].strip()
                    for line in (first.stdout + first.stderr).splitlines() if "activate with: source " in line)
    out = Path(activate).parents[2]
    assert Path(activate).is_file()
    previous, stamp_a = venv_state(out, tools)

    for signum, group in ((signal.SIGINT, True), (signal.SIGTERM, False)):
        child = Child([*nox, *RENDER_B], env, tmp_path, hold="install")
        children.append(child)
        child.wait_for("install")
        child.signal(signum, group=group)
        assert child.proc.returncode == 130, child.output()  # nox: interrupted
        assert "activate with:" not in child.output()
        assert venv_state(out, tools) == (previous, stamp_a)
        no_report_of(out)
        child.reap()

    last = subprocess.run([*nox, *RENDER_B], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          check=False)
    assert last.returncode == 0, last.stdout + last.stderr
    target, stamp = venv_state(out, tools)
    assert stamp != stamp_a and Path(activate).resolve().parents[1] == target
    assert current_smoke_report(out).lock_sha256 == lock_digest(out)
    assert leftovers(out, target) == []


# ----------------------------------------------------------------------------- the serve session's server

STOPPER = '''
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from provision.common.interrupt import exit_status, interrupt_on_signals
from provision.common.run import process_group

server = [sys.executable, "-c", {server!r}, sys.argv[1]]
try:
    with interrupt_on_signals(), open(sys.argv[2], "wb") as log, \\
            process_group(server, stdout=log, grace_s=float(sys.argv[3])):
        Path(sys.argv[4]).write_text("serving")
        time.sleep(300)  # where the session waits for /health and runs the endpoint proof
except KeyboardInterrupt as exc:  # as nox ends an interrupted session
    sys.exit(exit_status(exc))
'''

#: A small HTTP server with a worker process in its group; STUBBORN: both ignore SIGINT (a shutdown that hangs).
SERVER = textwrap.dedent('''
    import http.server, os, signal, sys, time
    if os.environ.get("STUBBORN"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.fork() == 0:
        time.sleep(300)
        os._exit(0)
    print(os.getpgid(0), flush=True)
    http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
''')


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize(("signals", "stubborn"), [
    ([signal.SIGINT], False),                # Ctrl-C in nox's terminal: the server is in another group; nox stops it
    ([signal.SIGTERM], False),               # kill of nox alone: the same, no orphaned server
    ([signal.SIGTERM], True),                # a server that ignores Ctrl-C: SIGKILL once the grace is over
    ([signal.SIGINT, signal.SIGINT], True),  # impatient: the second Ctrl-C kills at once instead of waiting
])
def test_the_serve_sessions_server_group_is_stopped_by_any_interrupt(tmp_path: Path, signals: list[int],
                                                                     stubborn: bool) -> None:
    """The serve session's own code (process_group under interrupt_on_signals) in a real process, a real
    HTTP server with a worker in its group; the stopper is signalled while it waits, as nox is."""
    port, ready, log = free_port(), tmp_path / "ready", tmp_path / "server.log"
    grace = 1.5 if len(signals) == 1 else 60.0
    env = {**os.environ, "STUBBORN": "1" if stubborn else ""}
    stopper = subprocess.Popen([sys.executable, "-c", STOPPER.format(root=str(ROOT), server=SERVER), str(port),
                                str(log), str(grace), str(ready)], env=env, start_new_session=True)
    group = None
    try:
        deadline = time.monotonic() + 60
        while not (ready.exists() and _listening(port) and log.read_text().strip()):
            assert stopper.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.05)
        group = int(log.read_text().split()[0])
        assert group not in (os.getpgid(stopper.pid), os.getpgid(0))  # a terminal's Ctrl-C does not reach it
        start = time.monotonic()
        for signum in signals:
            if signum == signal.SIGINT:
                os.killpg(stopper.pid, signum)  # as a terminal sends it: to the stopper's whole group
            else:
                os.kill(stopper.pid, signum)
            time.sleep(0.3)
        status = stopper.wait(timeout=30)
        took = time.monotonic() - start
        assert status == 128 + signals[0]  # it ended as interrupted ...
        assert _gone(group) and not _listening(port)  # ... after every process of the server's group was gone
        if stubborn:
            assert (took < 10) if len(signals) > 1 else (took >= grace)
    finally:
        for pgid in (stopper.pid, group):
            if pgid is not None and not _gone(pgid):
                os.killpg(pgid, signal.SIGKILL)
        stopper.wait(timeout=30)
