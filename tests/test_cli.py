"""The command line as other programs use it: JSON on stdout, exit codes, the light planner path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from provision.cli import main

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
A10G = HOSTS / "linux-x86_64-a10g-driver535.json"
RTX3070 = HOSTS / "linux-x86_64-rtx3070-8gb-driver550.json"


def test_plan_json_is_exactly_one_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--host", str(A10G), "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)  # one document, nothing else on stdout
    # the defaults (--engine auto, the serving context): driver 535 runs vLLM 0.19.1's CUDA 12.9 wheel, whose torch
    # 2.10.0 is PyPI's cu128 build; bf16 overflows 0.9 x 24 GB, cc 8.6 has FP8 weight-only
    assert doc["schema"] == "provision.plan/v1" and doc["precision"] == "fp8"
    assert doc["torch"]["variant"] == "cu128"
    assert (doc["serve"]["engine"], doc["serve"]["engine_version"], doc["serve"]["max_model_len"]) == (
        "vllm", "0.19.1", 25480)
    assert main(["plan", "--host", str(A10G), "--engine", "transformers", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["serve"]["engine"], doc["torch"]["variant"], doc["serve"]["max_model_len"]) == (
        "transformers", "cu126", 25480)


def test_no_plan_is_exit_3_with_the_no_plan_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--host", str(RTX3070), "--json"]) == 3
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["error"] == "no-viable-plan" and doc["remedies"]
    assert "no viable plan" in captured.err


def test_bad_option_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--host", str(A10G), "--context", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: command line: options: ") and err.count("\n") == 1


def test_human_plan_shows_every_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--host", str(A10G)]) == 0
    out = capsys.readouterr().out
    for decision in ("python", "torch", "variant", "precision", "device", "transformers"):
        assert decision in out
    assert "[cu128]" in out  # rich markup must not eat the variant


def test_plan_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys; from provision.cli import main; "
        f"rc = main(['plan', '--host', {str(A10G)!r}, '--json']); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'pynvml', 'bitsandbytes', 'accelerate') "
        "if m in sys.modules); print(heavy, file=sys.stderr); sys.exit(rc if not heavy else 99)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_plan_loads_neither_the_renderer_nor_the_smoke_runner() -> None:
    """The package faces load on first use: planning reads render.sources, not the renderer."""
    code = (
        "import sys; from provision.cli import main; "
        f"rc = main(['plan', '--host', {str(A10G)!r}, '--json']); "
        "loaded = sorted(m for m in ('provision.render.files', 'provision.render.usecase', 'provision.smoke.run', "
        "'jinja2') if m in sys.modules); print(loaded, file=sys.stderr); sys.exit(rc if not loaded else 99)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_python_dash_m_is_the_same_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "provision", "plan", "--host", str(RTX3070), "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["error"] == "no-viable-plan"


def _render(out: Path, *extra: str) -> dict[str, bytes]:
    assert main(["render", "--host", str(A10G), "--out", str(out), "--no-resolve", *extra]) == 0
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_render_twice_is_byte_identical_and_the_lock_records_inputs(tmp_path: Path) -> None:
    first = _render(tmp_path / "a")
    second = _render(tmp_path / "b")
    assert first == second
    lock = json.loads(first["provision.lock.json"])
    assert lock["plan"]["torch"]["variant"] == "cu128" and lock["plan"]["serve"]["engine"] == "vllm"
    assert lock["inputs"]["model"] == "autoglm-phone-9b" and len(lock["inputs"]["matrix_digest"]) == 64
    # the options as given (the default engine; no --context) and the context the plan serves
    assert lock["inputs"]["flags"] == {"device": "auto", "engine": "auto"} and lock["inputs"]["context"] == 25480
    assert set(lock["files"]) == set(first) - {"provision.lock.json"}


def test_two_detections_of_one_machine_render_the_same_bytes(tmp_path: Path) -> None:
    """A second detection reads other free disk and RAM figures (and from another folder): the render is unchanged."""
    first = json.loads(A10G.read_text())
    second = {**first, "disk_free_bytes": 12_345_678_901, "ram_available_bytes": 9_876_543_210,
              "detected_by": {"disk": "/elsewhere", "ram": "/proc/meminfo"}}
    first["disk_free_bytes"] = 98_765_432_109
    hosts = []
    for i, doc in enumerate((first, second)):
        hosts.append(tmp_path / f"host{i}.json")
        hosts[-1].write_text(json.dumps(doc))
    a = _render(tmp_path / "a", "--host", str(hosts[0]))
    b = _render(tmp_path / "b", "--host", str(hosts[1]))
    assert a == b
    assert "disk_free_bytes" not in json.loads(a["provision.lock.json"])["inputs"]["host"]


def test_render_ci_matrix_lists_the_sibling_variants(tmp_path: Path) -> None:
    files = _render(tmp_path / "h100", "--host", str(HOSTS / "linux-x86_64-h100-80gb-driver580.json"),
                    "--engine", "transformers")  # an engine plan has one row: the engine's own torch build
    workflow = files[".github/workflows/provision.yml"].decode()
    for variant in ("cu130", "cu132", "cpu"):  # torch 2.15.0's builds for linux-x86_64
        assert f'variant: "{variant}"' in workflow


def test_render_with_a_wheelhouse_plans_only_for_wheels_present(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (wheels / "torchvision-0.27.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    cpu = HOSTS / "linux-x86_64-cpu-only-32gb.json"
    files = _render(tmp_path / "out", "--host", str(cpu), "--wheelhouse", str(wheels))
    requirements = files["requirements.txt"].decode()
    assert "torch==2.12.0+cpu" in requirements and f"--find-links {wheels}" in requirements
    assert "torchvision==0.27.0+cpu" in requirements
    assert "download.pytorch.org" not in requirements


@pytest.mark.parametrize("source", ["wheelhouse", "mirror", "index"])
def test_the_variant_reason_names_where_requirements_take_torch_from(tmp_path: Path, source: str) -> None:
    """Issue 14: a CPU plan said "installed from https://download.pytorch.org/whl/cpu" while its requirements took
    torch from a --find-links folder (and the lock's index_url was null)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (wheels / "torchvision-0.27.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    mirror = "https://mirror.example/whl/cpu"
    extra = {"wheelhouse": ["--wheelhouse", str(wheels)], "mirror": ["--index-url", mirror, "--torch", "2.12.0"],
             "index": ["--torch", "2.12.0"]}[source]
    files = _render(tmp_path / "out", "--host", str(HOSTS / "linux-x86_64-cpu-only-32gb.json"), *extra)
    requirements = files["requirements.txt"].decode()
    lock = json.loads(files["provision.lock.json"])
    why = next(r["why"] for r in lock["plan"]["reasons"] if r["decision"] == "variant")
    installed = why.rpartition("; ")[2]
    if source == "wheelhouse":
        assert installed == (f"installed from the wheels in {wheels} (--find-links), not from its index "
                             "https://download.pytorch.org/whl/cpu")
        assert f"--find-links {wheels}" in requirements and "--extra-index-url" not in requirements
    elif source == "mirror":
        assert installed == f"installed from the --index-url mirror {mirror} (in place of https://download.pytorch.org/whl/cpu)"
        assert f"--extra-index-url {mirror}" in requirements and "download.pytorch.org" not in requirements
        assert lock["inputs"]["index_url"] == mirror
    else:
        assert installed == "installed from https://download.pytorch.org/whl/cpu"
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements


def test_a_wheelhouse_without_the_cpu_torchvision_takes_pypis_build_that_runs_on_the_cpu(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """glm4v's processor needs torchvision built like torch: a CPU torch alone cannot serve images."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    cpu = str(HOSTS / "linux-x86_64-cpu-only-32gb.json")
    assert main(["plan", "--host", cpu, "--wheelhouse", str(wheels)]) == 3
    assert "torchvision 0.28.0 (cpu build)" in capsys.readouterr().err
    (wheels / "torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (wheels / "torchvision-0.29.1-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert main(["plan", "--host", cpu, "--wheelhouse", str(wheels), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["device"] == "cpu" and plan["torch"]["variant"] == "cu130"
    assert plan["packages"]["torch"] == "2.14.1" and plan["packages"]["torchvision"] == "0.29.1"
    why = next(r["why"] for r in plan["reasons"] if r["decision"] == "variant")
    assert "also runs on the CPU" in why
    (wheels / "torchvision-0.28.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    assert main(["plan", "--host", cpu, "--wheelhouse", str(wheels), "--torch", "2.13.0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["torch"]["variant"] == "cpu"


def test_runner_labels_reach_the_workflow_and_are_validated(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    h100 = str(HOSTS / "linux-x86_64-h100-80gb-driver580.json")
    files = _render(tmp_path / "a", "--host", h100, "--gpu-runner", "self-hosted", "--gpu-runner", "h100")
    workflow = files[".github/workflows/provision.yml"].decode()
    assert 'runner: ["self-hosted", "h100"]' in workflow
    capsys.readouterr()
    bad = ["render", "--host", h100, "--out", str(tmp_path / "b"), "--no-resolve", "--gpu-runner", "x; rm -rf /"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --gpu-runner: label: ") and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_render_writes_the_deployments_and_image_reaches_them(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """compose.yaml and k8s/ come with every render; --image names the image both use, checked before planning."""
    files = _render(tmp_path / "a", "--image", "ghcr.io/me/autoglm:cu126")
    assert {"compose.yaml", "k8s/deployment.yaml", "k8s/service.yaml", "k8s/pvc.yaml"} <= set(files)
    assert 'image: "ghcr.io/me/autoglm:cu126"' in files["compose.yaml"].decode()
    assert 'image: "ghcr.io/me/autoglm:cu126"' in files["k8s/deployment.yaml"].decode()
    lock = json.loads(files["provision.lock.json"])
    assert lock["inputs"]["deploy_image"] == "ghcr.io/me/autoglm:cu126"
    assert set(lock["files"]) == set(files) - {"provision.lock.json"}
    capsys.readouterr()
    bad = ["render", "--host", str(A10G), "--out", str(tmp_path / "b"), "--no-resolve", "--image", "x:1;id"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --image: image: ") and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_a_local_model_directory_plans_and_says_where_it_is(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from provision.data.catalog import load_catalog

    model = tmp_path / "My AutoGLM"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(load_catalog().default.config))
    assert main(["plan", "--host", str(A10G), "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert "my-autoglm (local directory): bf16" in out
    assert main(["plan", "--host", str(A10G), "--model", str(model), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"]["id"] == "my-autoglm" and doc["model"]["repo"] is None


def test_wheelhouse_auto_probes_the_index_once_per_render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Unreachable and no local wheels: the wheel-folder choice and the resolver both ask, the network once."""
    import provision.common.net
    import provision.common.run
    import provision.render.sources

    probes: list[str] = []

    def unreachable(url: str, timeout: float = 5.0) -> str:
        probes.append(url)
        return "offline"

    real_find = provision.common.run.find_program
    monkeypatch.setattr(provision.common.net, "probe_index", unreachable)
    monkeypatch.setattr(provision.render.sources, "pip_find_links", lambda environ, config: ())
    monkeypatch.setattr(provision.common.run, "find_program", lambda name: None if name == "uv" else real_find(name))
    out = tmp_path / "out"
    cpu = HOSTS / "linux-x86_64-cpu-only-32gb.json"
    assert main(["render", "--host", str(cpu), "--out", str(out), "--wheelhouse", "auto", "--json"]) == 0
    assert probes == ["https://download.pytorch.org/whl/"]
    doc = json.loads(capsys.readouterr().out)
    assert doc["hashes"] == "none"  # the resolver ran (uv missing) after asking the same probe
    assert "resolver failed: uv is not on PATH" in (out / "requirements.txt").read_text()


def test_render_out_naming_a_file_is_bad_input_and_writes_nothing(tmp_path, capsys):
    target = tmp_path / "out.txt"
    target.write_text("mine\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["render", "--host", str(HOSTS / "linux-x86_64-cpu-only-32gb.json"), "--no-resolve",
                 "--out", str(target)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: --out: out: {target} is a file; name a folder to render into\n"
    assert target.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == before


def test_detect_output_naming_a_folder_or_an_unwritable_place_is_bad_input(tmp_path, capsys, monkeypatch):
    import provision.host

    host = provision.host.load_host(HOSTS / "linux-x86_64-cpu-only-32gb.json")
    monkeypatch.setattr(provision.host, "detect_host", lambda *a, **kw: host)
    assert main(["detect", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: -o: output: {tmp_path} is a folder; name the file to write\n"
    assert list(tmp_path.iterdir()) == []  # no temp file left behind
    blocked = tmp_path / "file"
    blocked.write_text("x")
    assert main(["detect", "-o", str(blocked / "host.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: -o: output: cannot write {blocked / 'host.json'}: ") and err.count("\n") == 1


def test_models_lists_the_catalog_as_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    from provision.data import load_catalog

    assert main(["models", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "provision.models/v1"
    catalog = load_catalog()
    assert [m["id"] for m in doc["models"]] == list(catalog.ids)
    first = doc["models"][0]
    assert first == {"id": "autoglm-phone-9b", "name": "AutoGLM-Phone-9B", "repo": "zai-org/AutoGLM-Phone-9B",
                     "parameters": 10292777472, "default": True, "vision": True, "min_transformers": "5.0.0",
                     "served_model_name": "autoglm-phone-9b", "serving_context": 25480}
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for m in doc["models"]:  # whole, on one line each: what a user copies into --model
        assert any(line.split() and line.split()[0] == m["id"] and m["repo"] in line.split() for line in text.splitlines())


def test_models_by_repo_id_plan_the_same_as_by_catalog_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--host", str(A10G), "--json"]) == 0
    by_id = json.loads(capsys.readouterr().out)
    for name in ("zai-org/AutoGLM-Phone-9B", "AutoGLM-Phone-9B"):
        assert main(["plan", "--host", str(A10G), "--model", name, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == by_id


def test_an_unknown_torch_release_blames_torch_not_the_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--host", str(A10G), "--torch", "9.9.9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --torch: torch: 9.9.9 is not a torch release in the matrix") and err.count("\n") == 1
    assert "host profile" not in err
    assert main(["plan", "--host", str(A10G), "--torch", "2.9.2"]) == 2
    assert "did you mean 2.9.1" in capsys.readouterr().err


def _options(parser, name="provision"):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _options(subparser, f"{name} {sub}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield name, parser, action


def test_every_option_has_help_and_shows_its_default() -> None:
    import argparse

    from provision.cli import _build_parser

    missing, no_default = [], []
    for name, parser, action in _options(_build_parser()):
        flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
        shown = parser._get_formatter()._get_help_string(action)
        if not shown:
            missing.append(flag)
        elif (action.option_strings and not action.required and "default" not in shown
              and not isinstance(action, argparse._StoreTrueAction)):
            no_default.append(flag)
    assert missing == [] and no_default == []


def test_stand_in_options_say_what_they_do(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smoke", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--tiny load a small model of the same architecture with random weights" in text
    assert "--synthetic build the full-size architecture with random weights" in text
    assert "checks RAM, GPU memory and disk first" in text
    assert main(["plan", "--help"]) == 0
    assert "(default: auto)" in capsys.readouterr().out  # --device, filled in by the formatter


def test_the_cpu_machines_get_a_plan_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`nox -s provision`'s default host: a 2-core, 25 GB CPU machine (its own `provision detect`), and 32 GB."""
    small = str(HOSTS / "linux-x86_64-cpu-only-25gb-detected.json")
    assert main(["plan", "--host", small, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    context = doc["serve"]["max_model_len"]
    assert doc["serve"]["engine"] == "transformers" and doc["device"] == "cpu" and 8192 <= context < 25480
    assert doc["warnings"][0].startswith(f"context lowered to {context:,} tokens: 25,480 needs ")
    assert main(["plan", "--host", small]) == 0
    assert f"context lowered to {context:,} tokens" in capsys.readouterr().out
    assert main(["plan", "--host", str(HOSTS / "linux-x86_64-cpu-only-32gb.json"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["serve"]["max_model_len"] == 25480 and not any("context" in w for w in doc["warnings"])
    assert main(["plan", "--host", small, "--context", "25480", "--json"]) == 3  # asked for: not lowered
    assert json.loads(capsys.readouterr().out)["error"] == "no-viable-plan"


def test_help_states_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: auto: vLLM, else SGLang, where the host runs them, else transformers serve)" in text
    assert "(default: the model's serving context from the catalog, 25480 for autoglm-phone-9b" in text


def test_render_folders_are_keyed_by_host_and_model(tmp_path: Path) -> None:
    """What ``nox -s provision`` renders into: a second model gets its own folder and leaves the first alone."""
    from provision.cli import render_out_dir
    from provision.errors import InvalidInput
    from provision.host import load_host

    base, host_id = tmp_path / "build" / "provision", load_host(A10G).host_id
    first = render_out_dir(["--host", str(A10G), "--wheelhouse", "auto"], base)
    second = render_out_dir(["--host", str(A10G), "--model=glm-4-9b-chat-hf"], base)
    assert (first, second) == (base / host_id / "autoglm-phone-9b", base / host_id / "glm-4-9b-chat-hf")
    before = _render(first)
    _render(second, "--model", "glm-4-9b-chat-hf")
    assert {str(p.relative_to(first)): p.read_bytes() for p in sorted(first.rglob("*")) if p.is_file()} == before
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(json.loads((second / "provision.lock.json").read_text())["plan"]))
    assert render_out_dir(["--host", str(A10G), "--plan", str(plan_file)], base) == second  # the plan's model
    with pytest.raises(InvalidInput, match="'nope' is not a known model"):
        render_out_dir(["--host", str(A10G), "--model", "nope"], base)


def test_serve_without_a_folder_takes_this_hosts_one_rendered_model(tmp_path: Path) -> None:
    from provision.errors import InvalidInput
    from provision.serve import default_serve_dir

    host_dir = tmp_path / "build" / "provision" / "linux-x86_64-py3.11-cpu"
    assert default_serve_dir(None, "linux-x86_64-py3.11-cpu", "autoglm-phone-9b") is None  # no checkout
    assert default_serve_dir(tmp_path, "linux-x86_64-py3.11-cpu", "autoglm-phone-9b") == host_dir / "autoglm-phone-9b"
    (host_dir / "glm-4-9b-chat-hf").mkdir(parents=True)
    (host_dir / "glm-4-9b-chat-hf" / "provision.lock.json").write_text("{}")
    assert default_serve_dir(tmp_path, "linux-x86_64-py3.11-cpu", "autoglm-phone-9b") == host_dir / "glm-4-9b-chat-hf"
    (host_dir / "local-model").mkdir()
    (host_dir / "local-model" / "provision.lock.json").write_text("{}")
    with pytest.raises(InvalidInput, match="holds renders of glm-4-9b-chat-hf, local-model; name the folder"):
        default_serve_dir(tmp_path, "linux-x86_64-py3.11-cpu", "autoglm-phone-9b")
    (host_dir / "autoglm-phone-9b").mkdir()
    (host_dir / "autoglm-phone-9b" / "provision.lock.json").write_text("{}")
    assert default_serve_dir(tmp_path, "linux-x86_64-py3.11-cpu", "autoglm-phone-9b") == host_dir / "autoglm-phone-9b"
