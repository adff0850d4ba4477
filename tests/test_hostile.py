"""Bad and hostile input through the real command line: exit 2, one line, nothing written, nothing run.

The CLI runs in-process (``provision.cli.main``) for speed, and through ``python -m provision``
where the real exit status matters. Hypothesis drives the host-profile loader, the matrix
loader and the argument parser with mutated documents and random argv.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import provision.cli
from provision.cli import main
from provision.common.fields import MAX_INPUT_BYTES
from provision.errors import InvalidInput, NoViablePlan
from provision.host.profile import HostProfile, host_from_dict, load_host

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
HOSTILE = FIXTURES / "hostile"
A10G = FIXTURES / "hosts" / "linux-x86_64-a10g-driver535.json"
MATRICES = ROOT / "matrices"
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def wired(command: str) -> bool:
    return hasattr(provision.cli, f"_cmd_{command}")


def needs(command: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not wired(command), reason=f"provision.cli has no _cmd_{command} yet")


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_bad_input(rc: int, out: str, err: str, source: object, field: str | None = None) -> None:
    """Exit 2, stdout empty, stderr exactly ``error: <source>: <field>: <what>`` on one line."""
    assert rc == 2, (rc, err)
    assert "Traceback" not in err
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    prefix = f"error: {source}: " + (f"{field}: " if field is not None else "")
    assert err.startswith(prefix), f"{err!r} does not start with {prefix!r}"
    assert len(err.strip()) > len(prefix), "the problem is missing"


# ---------------------------------------------------------------------------
# Host profiles: the held-back corpus is of this shape


HOST_FIELDS = {
    "arch-unknown.json": "arch",
    "cc-absurd.json": "nvidia.gpus[0].compute_capability",
    "cc-number.json": "nvidia.gpus[0].compute_capability",
    "cc-unparseable.json": "nvidia.gpus[0].compute_capability",
    "cuda-driver-bad.json": "nvidia.cuda_driver_version",
    "disk-negative.json": "disk_free_bytes",
    "driver-injection.json": "nvidia.driver_version",
    "driver-unparseable.json": "nvidia.driver_version",
    "empty.json": "(document)",
    "free-above-total.json": "nvidia.gpus[0].memory_free_bytes",
    "free-negative.json": "nvidia.gpus[0].memory_free_bytes",
    "gpu-duplicate-index.json": "nvidia.gpus[1].index",
    "gpu-index-negative.json": "nvidia.gpus[0].index",
    "gpu-name-empty.json": "nvidia.gpus[0].name",
    "gpu-name-newline.json": "nvidia.gpus[0].name",
    "gpu-string.json": "nvidia.gpus[0]",
    "gpu-too-many.json": "nvidia.gpus",
    "glibc-number.json": "glibc",
    "glibc-unparseable.json": "glibc",
    "gpus-object.json": "nvidia.gpus",
    "memory-absurd.json": "nvidia.gpus[0].memory_total_bytes",
    "memory-zero.json": "nvidia.gpus[0].memory_total_bytes",
    "nan-ram.json": "(document)",
    "not-an-object.json": "(document)",
    "not-utf8.json": "(document)",
    "nvidia-missing.json": "nvidia",
    "nvidia-string.json": "nvidia",
    "os-missing.json": "os",
    "os-number.json": "os",
    "python-2.json": "python",
    "python-unparseable.json": "python",
    "ram-absurd.json": "ram_bytes",
    "ram-bool.json": "ram_bytes",
    "ram-float.json": "ram_bytes",
    "ram-negative.json": "ram_bytes",
    "ram-string.json": "ram_bytes",
    "ram-zero.json": "ram_bytes",
    "schema-missing.json": "schema",
    "truncated.json": "(document)",
    "unknown-schema.json": "schema",
}


def test_every_host_fixture_is_in_the_table() -> None:
    assert sorted(p.name for p in (HOSTILE / "hosts").glob("*.json")) == sorted(HOST_FIELDS)


@pytest.mark.parametrize("name", sorted(HOST_FIELDS))
def test_plan_rejects_bad_host(capsys: pytest.CaptureFixture[str], name: str) -> None:
    path = HOSTILE / "hosts" / name
    assert_bad_input(*run(capsys, "plan", "--host", path, "--json"), path, HOST_FIELDS[name])


@needs("render")
@pytest.mark.parametrize("name", ["free-above-total.json", "truncated.json", "gpu-name-newline.json",
                                  "driver-injection.json", "unknown-schema.json"])
def test_render_rejects_bad_host_and_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    name: str) -> None:
    path = HOSTILE / "hosts" / name
    out = tmp_path / "out"
    assert_bad_input(*run(capsys, "render", "--host", path, "--out", out, "--no-resolve"), path, HOST_FIELDS[name])
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left beside it either


def big_file(path: Path) -> Path:
    with path.open("wb") as fh:
        fh.write(b"{" + b" " * (MAX_INPUT_BYTES + 16) + b"}")
    return path


def deep_json(path: Path, depth: int = 100_000) -> Path:
    path.write_text("[" * depth + "]" * depth)
    return path


@pytest.mark.parametrize("make", [big_file, deep_json], ids=["huge", "deep"])
def test_huge_and_deep_host_files(capsys: pytest.CaptureFixture[str], tmp_path: Path, make: Any) -> None:
    path = make(tmp_path / "host.json")
    field = "(file)" if make is big_file else "(document)"
    assert_bad_input(*run(capsys, "plan", "--host", path), path, field)


def test_missing_and_directory_host(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert_bad_input(*run(capsys, "plan", "--host", tmp_path / "nope.json"), tmp_path / "nope.json", "(file)")
    assert_bad_input(*run(capsys, "plan", "--host", tmp_path), tmp_path, "(file)")


@pytest.mark.parametrize(("argv", "source"), [
    (["plan", "--context", "-5"], "command line"),
    (["plan", "--context", "1e309"], "command line"),
    (["plan", "--precision", "int3"], "command line"),
    (["plan", "--python", "3.11; touch /tmp/pwned"], "--python"),
    (["plan", "--torch", "latest"], "--torch"),
    (["plan", "--variant", "cu12$(id)"], "--variant"),
    (["plan", "--bogus"], "command line"),
    (["plan", "\n"], "command line"),  # a raw newline in an unknown argument must not split the line
    ([], "command line"),
])
def test_bad_options(capsys: pytest.CaptureFixture[str], argv: list[str], source: str) -> None:
    extra = ["--host", str(A10G)] if argv and argv[0] == "plan" else []
    assert_bad_input(*run(capsys, *argv, *extra), source)


def test_real_exit_code_through_python_m(tmp_path: Path) -> None:
    bad = HOSTILE / "hosts" / "free-above-total.json"
    proc = subprocess.run([sys.executable, "-m", "provision", "plan", "--host", str(bad), "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (f"error: {bad}: nvidia.gpus[0].memory_free_bytes: 24146608129 is more than "
                           "memory_total_bytes (24146608128)\n")


# ---------------------------------------------------------------------------
# Plans and locks


PLAN_FIELDS = {
    "index-url-http.json": "torch.index_url",
    "index-url-injection.json": "torch.index_url",
    "model-id-fullwidth-semicolon.json": "model.id",
    "model-id-newline.json": "model.id",
    "model-id-number.json": "model.id",
    "model-id-rtl-override.json": "model.id",
    "no-viable-plan.json": "error",
    "not-an-object.json": "(document)",
    "package-name-injection.json": "packages.torch; touch /tmp/pwned",
    "packages-list.json": "packages",
    "precision-bad.json": "precision",
    "python-bad.json": "python",
    "repo-quote.json": "model.repo",
    "repo-traversal.json": "model.repo",
    "truncated.json": "(document)",
    "unknown-schema.json": "schema",
    "variant-bad.json": "torch.variant",
    "version-backticks.json": "torch.version",
    "version-injection.json": "packages.accelerate",
}


def test_every_plan_fixture_is_in_the_table() -> None:
    assert sorted(p.name for p in (HOSTILE / "plans").glob("*.json")) == sorted(PLAN_FIELDS)


@needs("render")
@pytest.mark.parametrize("name", sorted(PLAN_FIELDS))
def test_render_rejects_bad_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    path = HOSTILE / "plans" / name
    out = tmp_path / "out"
    assert_bad_input(*run(capsys, "render", "--plan", path, "--host", A10G, "--out", out, "--no-resolve"),
                     path, PLAN_FIELDS[name])
    assert not out.exists()


@needs("render")
@pytest.mark.parametrize("make", [big_file, deep_json], ids=["huge", "deep"])
def test_render_rejects_huge_and_deep_plans(capsys: pytest.CaptureFixture[str], tmp_path: Path, make: Any) -> None:
    path = make(tmp_path / "plan.json")
    out = tmp_path / "out"
    field = "(file)" if make is big_file else "(document)"
    assert_bad_input(*run(capsys, "render", "--plan", path, "--host", A10G, "--out", out, "--no-resolve"), path,
                     field)
    assert not out.exists()


LOCK_FIELDS = {
    "files-not-digests.json": "files.install.sh",
    "not-an-object.json": "(document)",
    "plan-index-url-injection.json": "plan.torch.index_url",
    "plan-missing.json": "plan",
    "plan-model-id-newline.json": "plan.model.id",
    "plan-packages-injection.json": "plan.packages.transformers",
    "truncated.json": "(document)",
    "unknown-schema.json": "schema",
}


def test_every_lock_fixture_is_in_the_table() -> None:
    assert sorted(p.name for p in (HOSTILE / "locks").glob("*.json")) == sorted(LOCK_FIELDS)


@pytest.fixture
def a10g_detected(monkeypatch: pytest.MonkeyPatch) -> HostProfile:
    """Commands that detect the machine see the A10G profile instead (no real probing in tests)."""
    import provision.host

    host = load_host(A10G)
    monkeypatch.setattr(provision.host, "detect_host", lambda **_: host)  # the name callers import
    return host


@needs("doctor")
@pytest.mark.parametrize("name", sorted(LOCK_FIELDS))
def test_doctor_rejects_bad_lock(capsys: pytest.CaptureFixture[str], a10g_detected: HostProfile, name: str) -> None:
    path = HOSTILE / "locks" / name
    assert_bad_input(*run(capsys, "doctor", "--lock", path, "--json"), path, LOCK_FIELDS[name])


@needs("doctor")
@pytest.mark.parametrize("make", [big_file, deep_json], ids=["huge", "deep"])
def test_doctor_rejects_huge_and_deep_locks(capsys: pytest.CaptureFixture[str], a10g_detected: HostProfile,
                                            tmp_path: Path, make: Any) -> None:
    path = make(tmp_path / "provision.lock.json")
    assert_bad_input(*run(capsys, "doctor", "--lock", path), path, "(file)" if make is big_file else "(document)")


#: The lock fields smoke reads (model, precision, placement); it never runs the pins or index.
SMOKE_LOCKS = ["files-not-digests.json", "not-an-object.json", "plan-missing.json", "plan-model-id-newline.json",
               "truncated.json", "unknown-schema.json"]


@needs("smoke")
@pytest.mark.parametrize("name", SMOKE_LOCKS)
def test_smoke_rejects_bad_lock(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    path = HOSTILE / "locks" / name
    report = tmp_path / "smoke.json"
    rc, out, err = run(capsys, "smoke", "--lock", path, "--json", "-o", report)
    assert_bad_input(rc, out, err, path)
    assert not report.exists()


@needs("doctor")
def test_doctor_bad_lock_through_python_m(tmp_path: Path) -> None:
    bad = HOSTILE / "locks" / "plan-index-url-injection.json"
    proc = subprocess.run([sys.executable, "-m", "provision", "doctor", "--lock", str(bad), "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: {bad}: plan.torch.index_url: ") and proc.stderr.count("\n") == 1


# ---------------------------------------------------------------------------
# Matrices (--matrix DIR with one broken file)


def broken_matrix(tmp_path: Path, name: str, old: str | None, new: str) -> Path:
    root = tmp_path / "matrices"
    shutil.copytree(MATRICES, root)
    path = root / name
    text = path.read_text(encoding="utf-8")
    if old is None:
        text += new
    else:
        assert old in text, f"{old!r} not in {name}"
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")
    return root


MATRIX_CASES = [
    ("cuda.toml", None, "\n[[family]\n", r"\(document\)"),
    ("cuda.toml", "schema_version = 1", "schema_version = 2", r"schema_version"),
    ("cuda.toml", "schema_version = 1", 'schema_version = "1"', r"schema_version"),
    ("cuda.toml", 'linux_min_driver = "', 'linux_min_driver = "x', r"(family|toolkit)\[\d+\]\.linux_min_driver"),
    ("torch.toml", "schema_version = 1", "schema_version = 99", r"schema_version"),
    ("torch.toml", 'version = "2.', 'version = "two.', r"release\[\d+\]\.version"),
    ("torch.toml", '"sm_80"', '"sm80"', r"release\[\d+\]\.variant\[\d+\]\.archs\[\d+\]"),
    ("torch.toml", 'platforms = ["', 'platforms = ["plan9", "', r"release\[\d+\]\.variant\[\d+\]\.platforms\[0\]"),
    ("bitsandbytes.toml", 'min_cc_int8 = "7.5"', 'min_cc_int8 = "seven"', r"release\[0\]\.min_cc_int8"),
    ("bitsandbytes.toml", 'cuda_libs = ["11.8"', "cuda_libs = [11.8", r"release\[0\]\.cuda_libs\[0\]"),
    ("bitsandbytes.toml", 'torch = ">=2.4,<3"', 'torch = ">=>2.4"', r"release\[0\]\.torch"),
    ("companions.toml", 'version = "5.24.0"', 'version = "latest"', r"package\[0\]\.version"),
    ("companions.toml", 'name = "transformers"', 'name = "transformers; touch /tmp/pwned"', r"package\[0\]\.name"),
    ("models.toml", "schema_version = 1", "schema_version = -1", r"schema_version"),
    ("models.toml", 'id = "autoglm-phone-9b"', 'id = "autoglm-phone-9b$(touch /tmp/pwned)"', r"model\[0\]\.id"),
    ("models.toml", "parameters = 10292777472", "parameters = -10292777472", r"model\[0\]\.parameters"),
]


@pytest.mark.parametrize(("name", "old", "new", "field"), MATRIX_CASES)
def test_broken_matrix(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, old: str | None, new: str,
                       field: str) -> None:
    root = broken_matrix(tmp_path, name, old, new)
    rc, out, err = run(capsys, "plan", "--host", A10G, "--matrix", root, "--json")
    assert_bad_input(rc, out, err, root / name)
    assert re.match(rf"^error: {re.escape(str(root / name))}: {field}: ", err), err


@pytest.mark.parametrize("name", ["cuda.toml", "torch.toml", "models.toml"])
def test_missing_huge_and_deep_matrix_files(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    root = broken_matrix(tmp_path, name, None, "")
    (root / name).unlink()
    assert_bad_input(*run(capsys, "plan", "--host", A10G, "--matrix", root), root / name, "(file)")
    with (root / name).open("w") as fh:
        fh.write("schema_version = 1\n" + "# padding\n" * (MAX_INPUT_BYTES // 10 + 1))
    assert_bad_input(*run(capsys, "plan", "--host", A10G, "--matrix", root), root / name, "(file)")
    (root / name).write_text("schema_version = 1\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    assert_bad_input(*run(capsys, "plan", "--host", A10G, "--matrix", root), root / name, "(document)")


# ---------------------------------------------------------------------------
# Hostile model ids and paths


HOSTILE_IDS = [
    "$(touch /tmp/pwned)",
    "`touch /tmp/pwned`",
    "autoglm-phone-9b; touch /tmp/pwned",
    "autoglm-phone-9b\uff1btouch /tmp/pwned",  # fullwidth semicolon
    "autoglm-phone-9b\u202e",  # right-to-left override
    "autoglm-phone-9b\nRUN touch /tmp/pwned",
    "autoglm-phone-9b' && touch /tmp/pwned && '",
    'autoglm-phone-9b" && touch /tmp/pwned && "',
]  # "AUTOGLM-PHONE-9B" is not here: ids match in any case and resolve to the catalog's own spelling


@pytest.mark.parametrize("model", HOSTILE_IDS)
def test_hostile_model_ids_are_bad_input(capsys: pytest.CaptureFixture[str], model: str) -> None:
    assert_bad_input(*run(capsys, "plan", "--host", A10G, "--model", model, "--json"), "--model")


def test_model_path_traversal_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    # A ../-path from wherever the checkout lies up to /etc: a directory, but without a model config.json
    etc = os.path.relpath("/etc")
    assert etc.startswith("..")
    rc, out, err = run(capsys, "plan", "--host", A10G, "--model", etc)
    assert_bad_input(rc, out, err, Path(etc, "config.json"), "(file)")


# ---------------------------------------------------------------------------
# Property tests


VALID_HOST = json.loads(A10G.read_text())
json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False), st.text(max_size=12),
    st.sampled_from(["8.6", "535.183.01", "12.2", "3.11.7", "linux", "x86_64", "provision.host/v1", "-1", "1e9"]),
)
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


def leaf_paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths += leaf_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            paths += leaf_paths(value, (*prefix, i))
    return paths


HOST_PATHS = leaf_paths(VALID_HOST)


@pytest.mark.filterwarnings("ignore::provision.common.fields.UnknownKeyWarning")
@FAST
@given(edits=st.lists(st.tuples(st.sampled_from(HOST_PATHS), json_value | st.just("__delete__")),
                      min_size=1, max_size=3))
def test_host_loader_only_raises_invalid_input(edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    doc = copy.deepcopy(VALID_HOST)
    for path, value in edits:
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if value == "__delete__":
                del parent[path[-1]]
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the parent
    try:
        host = host_from_dict(doc, "host.json")
    except InvalidInput as exc:
        assert exc.source == "host.json" and "\n" not in str(exc)
        return
    assert host_from_dict(host.to_dict(), "again") == host  # what loads round-trips
    assert host.ram_bytes > 0
    assert all(0 <= g.memory_free_bytes <= g.memory_total_bytes for g in host.gpus)


@FAST
@given(doc=json_value)
def test_host_loader_on_arbitrary_json(doc: Any) -> None:
    with pytest.raises(InvalidInput):
        host_from_dict(doc, "host.json")


_ASSIGNMENT = re.compile(r"^(\s*[A-Za-z_][\w-]*\s*=\s*)(\S.*)$", re.MULTILINE)
MATRIX_TEXT = {name: (MATRICES / name).read_text(encoding="utf-8")
               for name in ("cuda.toml", "torch.toml", "bitsandbytes.toml", "companions.toml", "models.toml",
                            "images.toml", "gpus.toml")}
toml_literal = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(
        str(f), repr(f))),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=16).map(lambda s: json.dumps(s)),
    st.sampled_from(['"12.8"', '"sm_86"', '"3.11"', '"cpu"', '"cu999"', '"linux-x86_64"', '">=2.4"', '""',
                     "[]", '["sm_80"]', "{}", '{ "linux-x86_64" = "cu128" }', "1979-05-27", '"0.0"', '"7.5"']),
)


@FAST
@given(name=st.sampled_from(sorted(MATRIX_TEXT)), pick=st.integers(min_value=0, max_value=10**6),
       value=toml_literal)
def test_matrix_loader_on_mutated_values(name: str, pick: int, value: str) -> None:
    """Replace one value in one matrix file: it loads (and the planner copes) or is one InvalidInput."""
    from provision.data.catalog import load_catalog, resolve_model
    from provision.data.matrix import load_matrix
    from provision.plan.search import plan

    text = MATRIX_TEXT[name]
    spots = list(_ASSIGNMENT.finditer(text))
    m = spots[pick % len(spots)]
    mutated = text[:m.start(2)] + value + text[m.end(2):]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "matrices"
        shutil.copytree(MATRICES, root)
        (root / name).write_text(mutated, encoding="utf-8")
        try:
            matrix = load_matrix(root)
            catalog = load_catalog(root / "models.toml")
        except InvalidInput as exc:
            # the mutated file, or the file whose cross-reference into it now dangles
            assert Path(exc.source).parent == root and Path(exc.source).name in MATRIX_TEXT, exc
            assert "\n" not in str(exc)
            return
        model = resolve_model(catalog.default.id, catalog)
        for host_file in ("linux-x86_64-a10g-driver535.json", "linux-x86_64-cpu-only-32gb.json"):
            with contextlib.suppress(NoViablePlan):
                plan(load_host(FIXTURES / "hosts" / host_file), matrix, model)


ARGV_TOKENS = [
    "plan", "doctor", "detect", "render", "--host", "--model", "--python", "--context", "--precision", "--device",
    "--torch", "--variant", "--json", "--lock", "--plan", "--force", "--matrix", "--index-url", "--help",
    "--version", "--wheelhouse", str(A10G), str(HOSTILE / "hosts" / "truncated.json"),
    str(HOSTILE / "plans" / "index-url-injection.json"), str(HOSTILE / "locks" / "truncated.json"),
    str(HOSTILE), "autoglm-phone-9b", "glm-4-9b-chat-hf", "../../etc", "$(touch /tmp/pwned)", "3.11", "2.7",
    "-5", "0", "99999999999", "bf16", "nf4", "int3", "cuda", "cpu", "mps", "cu128", "cu99x", "", "\n", "\uff1b",
    "\u202e", "nan", "1e309", "https://example.org/simple", "/nonexistent/dir",
]


@FAST
@given(argv=st.lists(st.sampled_from(ARGV_TOKENS) | st.text(max_size=6), max_size=6))
def test_random_argv_never_tracebacks(a10g_detected: HostProfile, tmp_path_factory: pytest.TempPathFactory,
                                      argv: list[str]) -> None:
    if "render" in argv:
        argv = [*argv, "--no-resolve", "--out", str(tmp_path_factory.mktemp("render") / "out")]
    if "--wheelhouse" in argv:  # 'auto' would probe the network
        argv = [a for a in argv if a != "auto"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except KeyError as exc:  # a subcommand the CLI parses but has not wired yet
            cmd = str(exc).strip("'\"").removeprefix("_cmd_")
            if not wired(cmd):
                return
            raise
    assert rc in (0, 1, 2, 3), (argv, rc, err.getvalue())
    assert "Traceback" not in err.getvalue()
    if rc == 2:
        assert err.getvalue().startswith("error: ") and err.getvalue().count("\n") == 1, (argv, err.getvalue())


# ---------------------------------------------------------------------------
# End to end: hostile values through plan -> render -> the rendered scripts, run for real


SHELL_NAMES = ("install.sh", "setup-venv.sh")
INSTRUCTIONS = {"FROM", "RUN", "COPY", "ENV", "ARG", "LABEL", "USER", "WORKDIR", "EXPOSE", "VOLUME", "CMD",
                "ENTRYPOINT", "HEALTHCHECK", "SHELL", "STOPSIGNAL", "ONBUILD", "ADD"}


def hostile_text(marker: Path) -> str:
    """Every quoting trap at once; running any part of it creates ``marker``."""
    return (f"$(touch {marker}) `touch {marker}`; touch {marker} && touch {marker} | touch {marker} "
            f"'\\'' \" \\\" $'\\x27' \uff1b\u202e ${{IFS}}")


def dockerfile_instructions(text: str) -> list[str]:
    """The instruction keyword of every logical line (continuations joined, comments dropped)."""
    out, continued = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if not continued and stripped and not stripped.startswith("#"):
            out.append(stripped.split()[0].upper())
        continued = stripped.endswith("\\")
    return out


FAKE_PYTHON = """#!/bin/sh
# Stands in for python: records its argv, fakes `-m venv` and the version probe, installs nothing.
printf '%s\\n' "$*" >> "$FAKE_LOG"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    for last; do :; done
    mkdir -p "$last/bin" && cp "$0" "$last/bin/python" && chmod +x "$last/bin/python"
    exit 0
fi
if [ "$1" = "-c" ]; then echo "$FAKE_MINOR"; fi
exit 0
"""


def run_rendered_scripts(out: Path, tmp: Path) -> str:
    """Execute the rendered setup-venv.sh (and through it install.sh) with a fake Python: no network, no pip."""
    lock = json.loads((out / "provision.lock.json").read_text())
    fake = tmp / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp / "fake.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "FAKE_LOG": str(log), "FAKE_MINOR": lock["plan"]["python"],
           "PROVISION_PYTHON": str(fake), "PROVISION_INSTALLER": "pip"}
    proc = subprocess.run(["bash", str(out / "setup-venv.sh"), str(tmp / "venv")], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    assert f"-m pip install --disable-pip-version-check --no-compile -r {out / 'requirements.txt'}" in text
    wheel = next(out.glob("provision-*-py3-none-any.whl"))  # the toolkit, from the folder alone
    assert f"-m pip install --disable-pip-version-check --no-deps --force-reinstall {wheel}" in text
    return text


def check_rendered(out: Path, tmp: Path, marker: Path, hostile: str) -> None:
    for name in SHELL_NAMES:
        subprocess.run(["bash", "-n", str(out / name)], check=True, timeout=30)
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for name, data in files.items():
        if name == "provision.lock.json":  # JSON data, never run: the value may sit there, escaped
            assert json.loads(data)["schema"] == "provision.lock/v1"
            assert not set(data.decode("ascii")) & {"\n\r"}  # ASCII-only JSON: no raw newline or RTL
            continue
        assert hostile.encode() not in data, f"{name} holds the hostile text"
        assert "\uff1b".encode() not in data and "\u202e".encode() not in data, name
    assert set(dockerfile_instructions(files["Dockerfile"].decode())) <= INSTRUCTIONS
    run_rendered_scripts(out, tmp)
    assert not marker.exists(), "a hostile value ran as a command"


@needs("render")
def test_hostile_gpu_name_renders_inert(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    marker = tmp_path / "MARK"
    name = hostile_text(marker)
    doc = json.loads(A10G.read_text())
    doc["nvidia"]["gpus"][0]["name"] = name
    hostile_host = tmp_path / "host.json"
    hostile_host.write_text(json.dumps(doc))
    out = tmp_path / "out"
    rc, _out, err = run(capsys, "render", "--host", hostile_host, "--out", out, "--no-resolve")
    if rc == 2:  # refusing the name is fine too, as long as it is one clean line naming the field
        assert_bad_input(rc, "", err, hostile_host, "nvidia.gpus[0].name")
        return
    assert rc == 0, err
    check_rendered(out, tmp_path, marker, name)
    benign = tmp_path / "benign"
    assert run(capsys, "render", "--host", A10G, "--out", benign, "--no-resolve")[0] == 0
    assert dockerfile_instructions((out / "Dockerfile").read_text()) == dockerfile_instructions(
        (benign / "Dockerfile").read_text())


@needs("render")
@pytest.mark.parametrize("dirname", [
    "m$(touch MARK)", "m`touch MARK`", "m;touch MARK", "m'q\"x", "m\nRUN touch MARK", "m\uff1btouch MARK",
    "m\u202eKRAM", "--model",
])
def test_hostile_local_model_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, dirname: str) -> None:
    from provision.data.catalog import load_catalog

    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "models" / dirname
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text(json.dumps(load_catalog().get("autoglm-phone-9b").config))
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "render", "--host", A10G, "--model", model_dir, "--out", out, "--no-resolve",
                          "--json")
    if rc == 2:
        assert_bad_input(rc, stdout, err, "--model")
        assert not out.exists()
        return
    assert rc == 0, err
    plan_doc = json.loads(stdout)["plan"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", plan_doc["model"]["id"])  # a safe id, whatever the folder
    check_rendered(out, tmp_path, tmp_path / "MARK", str(model_dir))
    assert not (tmp_path / "MARK").exists() and not (out / "MARK").exists()


@needs("render")
@pytest.mark.parametrize(("option", "value"), [
    ("--index-url", "https://mirror.example/simple$(touch MARK)"),
    ("--index-url", "https://user:secret@mirror.example/simple"),
    ("--index-url", "https://mirror.example/simple\nRUN touch MARK"),
    ("--wheelhouse", "/wheels;touch MARK"),
    ("--wheelhouse", "/wheels/../../etc"),
    ("--wheelhouse", "/wheels `touch MARK`"),
])
def test_hostile_sources_are_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, option: str, value: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROVISION_WHEELHOUSE", raising=False)
    monkeypatch.delenv("PROVISION_INDEX_URL", raising=False)
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "render", "--host", A10G, option, value, "--out", out, "--no-resolve")
    assert_bad_input(rc, stdout, err, option)
    assert not out.exists() and not (tmp_path / "MARK").exists()
    assert "secret" not in err  # credentials in a URL are not echoed into logs


# ---------------------------------------------------------------------------
# Secrets


FAKE_TOKEN = "hf_fakeSECRETtoken0123456789abcdefABCDEF"


@needs("render")
def test_tokens_never_reach_rendered_files_or_output(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     a10g_detected: HostProfile) -> None:
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    outputs = []
    out = tmp_path / "out"
    for argv in (["plan", "--json"], ["render", "--out", out, "--no-resolve", "--json"], ["detect", "--json"],
                 ["doctor", "--json"], ["doctor", "--lock", out / "provision.lock.json"]):
        if not wired(str(argv[0])):
            continue
        rc, stdout, err = run(capsys, *argv)
        assert rc in (0, 1), (argv, err)
        outputs += [stdout, err]
    outputs += [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()]
    blob = "\n".join(outputs)
    assert "provision.lock.json" in blob  # the render really happened
    assert FAKE_TOKEN not in blob and "hf_fakeSECRET" not in blob
