"""The matrix loader: every file of ``matrices/`` validated into one ``Matrix``, in the digest, from ``--matrix``.

A wrong or missing key in any file is the contract's one exit-2 line naming the file and
the dotted key (asserted exactly, through the real command line); cross-checks between
rows and files fail the same way; the digest changes with any byte of any file; and
``--matrix DIR`` reaches every reader (planner, render, detection).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import provision.host
from provision.cli import main
from provision.data.matrix import MATRIX_FILES, load_matrix
from provision.errors import InvalidInput
from provision.host.profile import HostProfile, load_host

ROOT = Path(__file__).resolve().parent.parent
MATRICES = ROOT / "matrices"
A10G = Path(__file__).parent / "fixtures" / "hosts" / "linux-x86_64-a10g-driver535.json"


def copy_matrices(tmp_path: Path, name: str | None = None, old: str = "", new: str = "") -> Path:
    """A copy of the bundled matrices, with the first ``old`` in ``name`` replaced by ``new``."""
    root = tmp_path / "matrices"
    shutil.copytree(MATRICES, root)
    if name is not None:
        path = root / name
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {name}"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return root


def plan_with(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> tuple[int, str, str]:
    rc = main(["plan", "--host", str(A10G), "--matrix", str(root), "--json", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- each file: a missing key and a wrong type are one exit-2 line --------------------------------

#: (file, old text, new text, the dotted key and problem the error line must name)
BROKEN = [
    ("cuda.toml", 'windows_min_driver = "452.39"\n', "", "family[0].windows_min_driver: required key is missing"),
    ("cuda.toml", "major = 11", 'major = "11"', "family[0].major: expected an integer, got string"),
    ("cuda.toml", "schema_version = 1", "schema_version = 2",
     "schema_version: unsupported schema_version 2; this provision reads 1"),
    ("torch.toml", 'date = "2026-10-28"\n', "", "release[0].date: required key is missing"),
    ("torch.toml", 'glibc = { linux-x86_64 = "2.28", linux-aarch64 = "2.28" }', 'glibc = { macos-arm64 = "14.0" }',
     "release[0].glibc.macos-arm64: 'macos-arm64' is not one of linux-x86_64, linux-aarch64"),
    ("torch.toml", 'glibc = { linux-x86_64 = "2.28", linux-aarch64 = "2.28" }', 'glibc = { linux-x86_64 = "manylinux_2_28" }',
     "release[0].glibc.linux-x86_64: 'manylinux_2_28' is not a glibc version like 2.28"),
    ("torch.toml", 'pythons = ["3.11", "3.12", "3.13", "3.14", "3.15"]', 'pythons = "3.11"',
     "release[0].pythons: expected an array, got string"),
    ("bitsandbytes.toml", 'min_cc_4bit = "6.0"\n', "", "release[0].min_cc_4bit: required key is missing"),
    ("bitsandbytes.toml", 'pythons = ">=3.10"', "pythons = 3.10", "release[0].pythons: expected a string, got number"),
    ("companions.toml", 'version = "5.24.0"\n', "", "package[0].version: required key is missing"),
    ("companions.toml", 'requires_torch = ">=2.6"', "requires_torch = 2.6",
     "package[0].requires_torch: expected a string, got number"),
    ("models.toml", 'repo = "zai-org/AutoGLM-Phone-9B"\n', "", "model[0].repo: required key is missing"),
    ("models.toml", "default = true", 'default = "yes"', "model[0].default: expected true or false, got string"),
    ("images.toml", 'tag = "0.13.9"\n', "", "uv.tag: required key is missing"),
    ("images.toml", 'pip = "26.3"', "pip = 26.3", "conda.pip: expected a string, got number"),
    ("images.toml", "schema_version = 1", "schema_version = 2",
     "schema_version: unsupported schema_version 2; this provision reads 1"),
    ("images.toml", "[meta]\nsources = [", "[meta]\nsourcez = [", "meta.sources: required key is missing"),
    ("images.toml", 'tag = "0.13.9"', 'tag = "0.13.9; rm -rf /"', "uv.tag: '0.13.9; rm -rf /' is not an image tag"),
    ("images.toml", 'image = "ghcr.io/astral-sh/uv"', 'image = "ghcr.io//uv"', "uv.image: 'ghcr.io//uv' is not an image name"),
    ("images.toml", 'tag = "0.13.9"', 'tag = "0.13.9"\ndigest = "sha256:abc"',
     "uv.digest: 'sha256:abc' is not sha256:<64 hex>"),
    ("images.toml", 'tag = "3.11-slim-bookworm"', 'tag = "3.11-slim-bookworm"\ndigest = "sha256:' + "A" * 64 + '"',
     "cpu[1].digest: 'sha256:" + "A" * 64 + "' is not sha256:<64 hex>"),
    ("engines.toml", 'image = "vllm/vllm-openai:v0.33.0"', 'image = "vllm/vllm-openai:v0.33.0"\nimage_digest = "v0.33.0"',
     "engine[0].release[0].image_digest: 'v0.33.0' is not like 'sha256:<64 hex>'"),
    ("images.toml", 'pip = "26.3"', 'pip = "26.3 && curl x"', "conda.pip: '26.3 && curl x' is not a version"),
    ("images.toml", 'cuda = "12.8"', 'cuda = "12.9"', "cuda[4].tag: image CUDA does not match 12.9"),
    ("images.toml", 'cuda = "12.8"', "cuda = 12.8", "cuda[4].cuda: expected a string, got number"),
    ("images.toml", 'cuda = "12.8"', 'cuda = "twelve"', "cuda[4].cuda: 'twelve' is not a CUDA version like '12.8'"),
    ("images.toml", 'python = "3.10"', 'python = "3.11"', "cpu[1]: '3.11' appears twice"),
    ("images.toml", 'python = "3.10"', 'python = "py3"', "cpu[0].python: 'py3' is not a Python version like '3.11'"),
    ("images.toml", 'sha = "11bd71901bbe5b1630ceea73d27597364c9af683"', 'sha = "main"',
     "action[0].sha: 'main' is not a 40-hex commit"),
    ("images.toml", 'name = "actions/checkout"', 'name = "actions/checkout@v4"',
     "action[0].name: 'actions/checkout@v4' is not an action like 'owner/name'"),
    ("images.toml", 'name = "actions/checkout"', 'name = "actions/cache"', "action: actions/checkout is missing"),
    ("images.toml", 'tag = "v4.2.2"', 'tag = "v4.2.2 # x"',
     "action[0].tag: 'v4.2.2 # x' is not a label ([A-Za-z0-9._-], at most 64 characters)"),
    ("gpus.toml", 'compute_capability = "6.1"\n', "", "gpu[0].compute_capability: required key is missing"),
    ("gpus.toml", "memory_mib = 11264", 'memory_mib = "11264"', "gpu[0].memory_mib: expected an integer, got string"),
    ("gpus.toml", "schema_version = 1", "schema_version = 2",
     "schema_version: unsupported schema_version 2; expected 1"),
]


@pytest.mark.parametrize(("name", "old", "new", "message"), BROKEN, ids=[f"{c[0]}:{c[3]}" for c in BROKEN])
def test_a_broken_file_is_one_exit_2_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, old: str,
                                          new: str, message: str) -> None:
    root = copy_matrices(tmp_path, name, old, new)
    rc, out, err = plan_with(capsys, root)
    assert (rc, out, err) == (2, "", f"error: {root / name}: {message}\n")


@pytest.mark.parametrize("name", MATRIX_FILES)
def test_a_missing_file_is_one_exit_2_line(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    root = copy_matrices(tmp_path)
    (root / name).unlink()
    rc, out, err = plan_with(capsys, root)
    assert (rc, out, err) == (2, "", f"error: {root / name}: (file): no such file\n")


@pytest.mark.parametrize("name", ["images.toml", "gpus.toml"])
def test_invalid_toml_names_the_file(tmp_path: Path, name: str) -> None:
    root = copy_matrices(tmp_path)
    (root / name).write_text("schema_version = 1\n[meta\n")
    with pytest.raises(InvalidInput) as err:
        load_matrix(root)
    assert (err.value.source, err.value.field) == (str(root / name), "(document)")
    assert err.value.problem.startswith("invalid TOML")


# --- cross-checks ----------------------------------------------------------------------------------


CROSS = [
    ("cuda.toml", '[[toolkit]]\nversion = "13.2"', '[[toolkit]]\nversion = "13.1"', "torch.toml",
     "release[0].variant[1].cuda: CUDA 13.2 (torch 2.15.0) has no row in cuda.toml"),
    ("cuda.toml", "major = 13", "major = 14", "torch.toml",
     "release[0].variant[0].cuda: CUDA family 13 has no row in cuda.toml"),
    ("torch.toml", 'linux-aarch64 = "cu132"', 'linux-aarch64 = "cu999"', "torch.toml",
     "release[0].pypi_default.linux-aarch64: 'cu999' is not a variant of torch 2.15.0"),
    ("torch.toml", 'version = "2.14.1"', 'version = "2.15.0"', "torch.toml",
     "release[1].version: release 2.15.0 appears twice"),
    ("torch.toml", 'cuda = "13.0"', 'cuda = "12.8"', "torch.toml",
     "release[0].variant[0].cuda: 12.8 does not match variant name 'cu130'"),
    ("gpus.toml", 'names = ["NVIDIA GeForce GTX 1080"]', 'names = ["GeForce GTX 1080 Ti"]', "gpus.toml",
     "gpu[1].names[0]: 'GeForce GTX 1080 Ti' is already listed in gpu[0]"),
]


@pytest.mark.parametrize(("name", "old", "new", "blamed", "message"), CROSS, ids=[c[4] for c in CROSS])
def test_cross_checks(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, old: str, new: str, blamed: str,
                      message: str) -> None:
    root = copy_matrices(tmp_path, name, old, new)
    rc, out, err = plan_with(capsys, root)
    assert (rc, out, err) == (2, "", f"error: {root / blamed}: {message}\n")


# --- the digest ------------------------------------------------------------------------------------


def test_every_torch_release_has_a_glibc_floor_for_each_linux_platform_it_ships() -> None:
    """The floors are the manylinux tags of PyPI's torch and torchvision wheel names (torch.toml's meta note):
    manylinux_2_28 on both Linux platforms from 2.7.0; 2.6.0 is manylinux_2_28 on aarch64 but still manylinux1
    on x86_64; before it manylinux2014 (2.17) on aarch64 and manylinux1 (2.5) on x86_64."""
    matrix = load_matrix()
    for release in matrix.torch:
        linux = {p for v in release.variants for p in v.platforms if p.startswith("linux-")}
        assert set(release.glibc) == linux, release.version
    floors = {str(r.version): {p: str(v) for p, v in r.glibc.items()} for r in matrix.torch}
    assert floors["2.15.0"] == floors["2.7.0"] == {"linux-x86_64": "2.28", "linux-aarch64": "2.28"}
    assert floors["2.6.0"] == {"linux-x86_64": "2.5", "linux-aarch64": "2.28"}
    assert floors["2.5.1"] == floors["2.2.0"] == {"linux-x86_64": "2.5", "linux-aarch64": "2.17"}


def test_matrix_files_are_every_file_of_the_folder() -> None:
    assert sorted(MATRIX_FILES) == sorted(p.name for p in MATRICES.glob("*.toml"))


def test_the_digest_depends_on_the_bytes_not_the_folder(tmp_path: Path) -> None:
    assert load_matrix(copy_matrices(tmp_path)).digest == load_matrix().digest


@pytest.mark.parametrize("name", MATRIX_FILES)
def test_the_digest_covers_every_file(tmp_path: Path, name: str) -> None:
    root = copy_matrices(tmp_path)
    with (root / name).open("a", encoding="utf-8") as fh:
        fh.write("\n# one more comment\n")
    assert load_matrix(root).digest != load_matrix().digest


# --- --matrix DIR reaches every reader -------------------------------------------------------------


def _render(tmp_path: Path, *argv: str) -> dict[str, str]:
    """A transformers render (its Dockerfile builds on nvidia/cuda with uv; an engine's on the engine's image)."""
    out = tmp_path / "out"
    assert main(["render", "--host", str(A10G), "--out", str(out), "--no-resolve", "--engine", "transformers",
                 *argv]) == 0
    return {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file() and p.suffix != ".whl"}


def test_render_takes_images_and_actions_from_the_matrix_it_is_given(tmp_path: Path) -> None:
    root = copy_matrices(tmp_path, "images.toml", 'tag = "0.13.9"', 'tag = "0.9.99"')
    text = (root / "images.toml").read_text()
    text = text.replace('tag = "12.6.3-cudnn-runtime-ubuntu24.04"', 'tag = "12.6.9-cudnn-runtime-ubuntu24.04"')
    text = text.replace('pip = "26.3"', 'pip = "26.9"').replace("11bd71901bbe5b1630ceea73d27597364c9af683", "f" * 40)
    (root / "images.toml").write_text(text)
    files = _render(tmp_path, "--matrix", str(root))
    assert "COPY --from=ghcr.io/astral-sh/uv:0.9.99 " in files["Dockerfile"]
    assert "FROM nvidia/cuda:12.6.9-cudnn-runtime-ubuntu24.04 AS runtime" in files["Dockerfile"]
    assert '- "pip=26.9"' in files["environment.yml"]
    assert f"actions/checkout@{'f' * 40} # v4.2.2" in files[".github/workflows/provision.yml"]
    lock = json.loads(files["provision.lock.json"])
    assert lock["inputs"]["matrix_digest"] == load_matrix(root).digest != load_matrix().digest


def test_the_bundled_render_keeps_the_bundled_pins(tmp_path: Path) -> None:
    files = _render(tmp_path)
    assert "ghcr.io/astral-sh/uv:0.13.9 " in files["Dockerfile"]
    assert json.loads(files["provision.lock.json"])["inputs"]["matrix_digest"] == load_matrix().digest


def test_detection_takes_the_gpu_table_from_the_matrix_root(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_matrices(tmp_path, "gpus.toml", 'names = ["NVIDIA A10G"]', 'names = ["NVIDIA A10G", "Lab GPU 7"]')
    asked: list[object] = []

    def detect_host(*, probes: provision.host.Probes) -> HostProfile:
        asked.append(probes.gpu_table().lookup("Lab GPU 7"))
        return load_host(A10G)

    monkeypatch.setattr(provision.host, "detect_host", detect_host)
    assert main(["plan", "--matrix", str(root), "--json"]) == 0
    assert asked == [((8, 6), 23028 * 1024 * 1024)]
    assert json.loads(capsys.readouterr().out)["torch"]["variant"] == "cu128"  # vLLM 0.19.1's torch 2.10.0


def test_the_bundled_gpu_table_is_detections_default() -> None:
    assert provision.host.Probes().gpu_table() == load_matrix().gpus


# --- the package -----------------------------------------------------------------------------------


def test_data_imports_no_later_stage() -> None:
    """data/ is what every stage reads; it must not import plan, render, host or the CLI back."""
    code = ("import sys, provision.data, provision.data.refresh; "
            "later = sorted(m for m in sys.modules if m.startswith(('provision.plan', 'provision.render', "
            "'provision.host', 'provision.smoke', 'provision.doctor', 'provision.cli', 'provision.display', "
            "'provision.build'))); "
            "print(later); sys.exit(1 if later else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
