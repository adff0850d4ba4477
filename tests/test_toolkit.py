"""The toolkit wheel a render writes: complete, reproducible, and the same from a checkout or an install.

The last test installs that wheel (non-editable, outside the checkout), renders with it into a folder
elsewhere, and checks the folder builds from itself alone: what the issue's done-when asks.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from provision.common.fields import read_toml_file
from provision.common.resources import data_dir, package_dir
from provision.render.toolkit import ENDPOINT_EXTRA, toolkit_meta, toolkit_requirements, toolkit_wheel

try:
    from test_lint import tool  # tests/ is on sys.path (rootdir-less test modules)
    from test_render import _copy_sources
except ImportError:  # pragma: no cover
    from tests.test_lint import tool
    from tests.test_render import _copy_sources

ROOT = Path(__file__).resolve().parent.parent
HOSTS = ROOT / "tests" / "fixtures" / "hosts"


@pytest.fixture(scope="module")
def wheel() -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(toolkit_wheel().data))


def test_the_same_sources_give_the_same_bytes():
    first, second = toolkit_wheel(), toolkit_wheel()
    assert first.name == "provision-0.1.0-py3-none-any.whl"
    assert first.data == second.data


def test_the_wheel_holds_every_module_template_and_matrix(wheel: zipfile.ZipFile):
    names = set(wheel.namelist())
    modules = {f"provision/{p.relative_to(package_dir()).as_posix()}" for p in package_dir().rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules and modules <= names
    for kind in ("templates", "matrices"):
        files = {f"provision/_data/{kind}/{p.relative_to(data_dir(kind)).as_posix()}"
                 for p in data_dir(kind).rglob("*") if p.is_file()}
        assert files and files <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in wheel.infolist())


def test_record_lists_every_file_with_its_digest(wheel: zipfile.ZipFile):
    import base64
    import hashlib

    info = "provision-0.1.0.dist-info"
    rows = [line.split(",") for line in wheel.read(f"{info}/RECORD").decode().splitlines()]
    assert {r[0] for r in rows} == set(wheel.namelist())
    for name, digest, size in rows:
        if name == f"{info}/RECORD":
            assert digest == size == ""
            continue
        data = wheel.read(name)
        assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert int(size) == len(data)


def test_metadata_says_what_pyproject_declares(wheel: zipfile.ZipFile):
    project = read_toml_file(ROOT / "pyproject.toml")["project"]
    meta = Parser().parsestr(wheel.read("provision-0.1.0.dist-info/METADATA").decode())
    assert (meta["Name"], meta["Version"], meta["Requires-Python"]) == (
        project["name"], project["version"], project["requires-python"])
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    plain = {str(r) for r in requires if r.marker is None or "extra" not in str(r.marker)}
    assert plain == {str(Requirement(r)) for r in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        ours = {r.name for r in requires if r.marker is not None and r.marker.evaluate({"extra": extra})
                and not r.marker.evaluate({"extra": ""})}
        assert ours == {Requirement(r).name for r in reqs}
    assert sorted(meta.get_all("Provides-Extra")) == sorted(project["optional-dependencies"])
    entry = wheel.read("provision-0.1.0.dist-info/entry_points.txt").decode()
    assert "provision = provision.cli:main" in entry


def test_the_toolkit_requirements_are_its_dependencies_and_the_endpoint_client():
    meta = toolkit_meta()
    names = {Requirement(r).name for r in toolkit_requirements(meta)}
    assert {"packaging", "jinja2", "requests", "rich", "openai", "pillow"} <= names
    assert names == {Requirement(r).name for r in (*meta.dependencies, *meta.extras[ENDPOINT_EXTRA])}
    assert "torch" not in names  # the smoke extra is the plan's to pin


@pytest.mark.slow
def test_an_installed_toolkit_renders_a_folder_that_builds_from_itself(tmp_path: Path):
    """Installed from its wheel (not editable), run outside the checkout, rendering into a folder elsewhere."""
    ours = toolkit_wheel()
    (tmp_path / ours.name).write_bytes(ours.data)
    site = tmp_path / "site"
    uv = shutil.which("uv")  # nox's venvs are uv's, without pip
    installer = [uv, "pip", "install", "--python", sys.executable] if uv else [sys.executable, "-m", "pip", "install"]
    subprocess.run([*installer, "--quiet", "--no-deps", "--no-index", "--target", str(site), str(tmp_path / ours.name)],
                   check=True, capture_output=True)
    out = tmp_path / "elsewhere" / "env"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "PROVISION_"))}
    env["PYTHONPATH"] = str(site)
    where = subprocess.run([sys.executable, "-c", "import provision; print(provision.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(site))  # the installed copy, not the checkout
    done = subprocess.run([sys.executable, "-m", "provision", "render", "--no-resolve", "--json",
                           "--host", str(HOSTS / "linux-x86_64-rtx4090-driver550.json"), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / ours.name).read_bytes() == ours.data  # the installed toolkit re-creates the same wheel
    dockerfile = (out / "Dockerfile").read_text()
    sources = _copy_sources(dockerfile)
    assert sources and all((out / s).is_file() for s in sources)
    assert str(ROOT) not in "".join(p.read_text() for p in out.rglob("*") if p.is_file() and p.suffix != ".whl")
    assert json.loads((out / "provision.lock.json").read_text())["files"][ours.name]
    lint = subprocess.run([tool("hadolint"), "--no-color", str(out / "Dockerfile")], capture_output=True, text=True)
    assert lint.returncode == 0 and lint.stdout.strip() == "", lint.stdout + lint.stderr
