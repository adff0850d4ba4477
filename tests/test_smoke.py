"""The smoke test: pure parts always, real loading (of the tiny stand-in) when torch is installed.

Tests marked ``slow`` build the tiny glm4v / glm4 model and load it through ``run_smoke`` on
CPU, the same ``from_pretrained`` path real weights take.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from provision.data.catalog import load_catalog
from provision.errors import InvalidInput, SmokeError
from provision.smoke import SmokeReport, format_report
from provision.smoke.source import missing_snapshot_files
from provision.smoke.tiny import MARKER_FILE
from provision.vocab import PRECISIONS

CATALOG = load_catalog()
SOURCES = ("weights", "synthetic", "tiny")


def assert_smoke_contract(doc: dict) -> None:
    """``provision.smoke/v1`` as shared/spec/CONTRACT.md fixes it."""
    assert doc["schema"] == "provision.smoke/v1"
    assert doc["ok"] is True
    assert isinstance(doc["model"], str) and doc["model"]
    assert doc["source"] in SOURCES
    assert doc["precision"] in PRECISIONS
    assert doc["device"] in ("cuda", "cpu", "mps")
    assert isinstance(doc["load_seconds"], float) and doc["load_seconds"] >= 0
    for key in ("peak_memory_bytes", "tokens_generated"):
        assert isinstance(doc[key], int) and not isinstance(doc[key], bool) and doc[key] >= 0, key
    assert doc["estimated_memory_bytes"] is None or isinstance(doc["estimated_memory_bytes"], int)
    assert isinstance(doc["tokens_per_second"], float) and doc["tokens_per_second"] >= 0
    json.dumps(doc)  # one JSON document


# ---------------------------------------------------------------- pure


def test_importing_smoke_and_tiny_loads_no_ml_stack() -> None:
    code = (
        "import sys, provision.smoke.run, provision.smoke.tiny; "
        "print(sorted(m for m in ('torch', 'transformers', 'tokenizers', 'huggingface_hub', 'PIL') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _shard_folder(tmp_path: Path, present: tuple[str, ...]) -> Path:
    (tmp_path / "config.json").write_text("{}")
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {}, "weight_map": {"a.weight": shards[0], "b.weight": shards[1], "c.weight": shards[1]}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in present:
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_missing_snapshot_files_names_each_absent_shard(tmp_path: Path) -> None:
    folder = _shard_folder(tmp_path, ("model-00001-of-00002.safetensors",))
    assert missing_snapshot_files(folder) == ["model-00002-of-00002.safetensors"]
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert missing_snapshot_files(folder) == []


def test_missing_snapshot_files_follows_dangling_links(tmp_path: Path) -> None:
    folder = _shard_folder(tmp_path, ("model-00001-of-00002.safetensors",))
    (folder / "model-00002-of-00002.safetensors").symlink_to(tmp_path / "blobs-never-written")
    assert missing_snapshot_files(folder) == ["model-00002-of-00002.safetensors"]


def test_missing_snapshot_files_without_index(tmp_path: Path) -> None:
    assert missing_snapshot_files(tmp_path) == ["config.json", "model.safetensors"]
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert missing_snapshot_files(tmp_path) == []


def _report(**changes: object) -> SmokeReport:
    base = {
        "model": "autoglm-phone-9b", "source": "tiny", "precision": "bf16", "device": "cpu",
        "load_seconds": 0.5, "peak_memory_bytes": 1000, "estimated_memory_bytes": 2000,
        "tokens_generated": 8, "tokens_per_second": 12.0,
    }  # fmt: skip
    return SmokeReport(**{**base, **changes})


def test_report_dict_is_the_contract_with_extras_last() -> None:
    doc = _report(estimate={"weights": 10}).to_dict()
    assert_smoke_contract(doc)
    contract_keys = [
        "schema", "ok", "model", "source", "precision", "device", "load_seconds",
        "peak_memory_bytes", "estimated_memory_bytes", "tokens_generated", "tokens_per_second",
    ]  # fmt: skip
    assert list(doc)[: len(contract_keys)] == contract_keys
    assert doc["estimate"] == {"weights": 10}
    assert "roofline" not in doc  # unset extras are left out, not null


@pytest.mark.parametrize(
    ("source", "first_line"),
    [
        ("tiny", "smoke: autoglm-phone-9b (tiny stand-in: random weights, not the real model)"),
        ("synthetic", "smoke: autoglm-phone-9b (synthetic: full-size architecture, random weights)"),
    ],
)
def test_stand_ins_are_never_called_the_real_model(source: str, first_line: str) -> None:
    report = _report(source=source)
    text = format_report(report)
    assert text.splitlines()[0] == first_line
    assert "proves the software stack, not the model's answers" in text
    assert report.to_dict()["model"] == "autoglm-phone-9b"  # the contract keeps the catalog id
    assert report.to_dict()["label"] == first_line.removeprefix("smoke: ")


FULL = {
    "ok": True, "stand_in_for": "autoglm-phone-9b", "model_path": "/m", "gpus": (0, 1), "context_tokens": 4096,
    "prompt_tokens": 4080, "weights_bytes": 10, "generate_peak_bytes": 20, "per_gpu_peak_bytes": {"0": 5, "1": 6},
    "reserved_peak_bytes": 30, "nvml_used_delta_bytes": -4, "cuda_free_delta_bytes": 7,
    "estimate": {"weights": 10, "total": 12}, "roofline": {"bytes_per_token": 2.0, "seconds_per_token": 0.5},
    "image": {"prompt_tokens": 9, "image_grid_thw": [1, 2, 2], "text": ""}, "text": "", "processor": "auto",
    "versions": {"python": "3.11.7", "torch": "2.15.0"}, "warnings": ("w1", "w2"),
}  # fmt: skip


@pytest.mark.parametrize("changes", [{}, FULL, {**FULL, "source": "weights", "stand_in_for": None, "load_seconds": 1.23456}])
def test_report_round_trips_through_json(changes: dict[str, object]) -> None:
    report = _report(**changes)
    doc = json.loads(json.dumps(report.to_dict()))
    back = SmokeReport.from_dict(doc)
    assert back.to_dict() == report.to_dict()
    assert list(back.to_dict()) == list(report.to_dict())  # same keys in the same order: the same bytes
    if changes.get("load_seconds") is None:  # nothing was rounded away
        assert back == report


@pytest.mark.parametrize(("edit", "field", "problem"), [
    ({"schema": "provision.smoke/v0"}, "schema", "expected 'provision.smoke/v1'"),
    ({"model": None}, "model", "required"),
    ({"tokens_per_second": "fast"}, "tokens_per_second", "expected a finite number"),
    ({"gpus": [0, "1"]}, "gpus", "expected GPU indices"),
    ({"estimate": {"total": 1.5}}, "estimate.total", "expected an integer"),
    ({"warnings": [3]}, "warnings[0]", "expected a string"),
])
def test_report_from_dict_names_the_bad_field(edit: dict[str, object], field: str, problem: str) -> None:
    from provision.errors import InvalidInput

    doc = {**_report().to_dict(), **edit}
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(InvalidInput) as exc:
        SmokeReport.from_dict(doc, "smoke.json")
    assert (exc.value.source, exc.value.field) == ("smoke.json", field) and problem in exc.value.problem


def test_real_weights_are_labelled_plainly() -> None:
    text = format_report(_report(source="weights"))
    assert text.splitlines()[0] == "smoke: autoglm-phone-9b"
    assert "random weights" not in text


# ---------------------------------------------------------------- slow: real loading on CPU


@pytest.fixture(scope="module")
def ml() -> None:
    for name in ("torch", "transformers", "tokenizers", "PIL", "numpy"):
        pytest.importorskip(name)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory, ml: None) -> Path:
    return tmp_path_factory.mktemp("tiny-cache")


@pytest.fixture
def empty_hf_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "hf"
    cache.mkdir()
    return cache


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tiny_glm4v_loads_and_generates_from_text_and_image(precision: str, tiny_root: Path, empty_hf_cache: Path) -> None:
    pytest.importorskip("torchvision", reason="glm4v's processor (and so transformers serve) needs torchvision")
    from provision.smoke import run_smoke

    report = run_smoke(
        model=CATALOG.get("autoglm-phone-9b"), precision=precision, device="cpu", context_tokens=64,
        new_tokens=6, tiny_root=tiny_root, hf_cache_dir=empty_hf_cache,
    )  # fmt: skip
    doc = report.to_dict()
    assert_smoke_contract(doc)
    assert (doc["model"], doc["source"]) == ("autoglm-phone-9b", "tiny")
    assert (doc["precision"], doc["device"]) == (precision, "cpu")
    assert doc["stand_in_for"] == "autoglm-phone-9b"
    assert doc["prompt_tokens"] == 58 and doc["context_tokens"] == 64
    assert doc["tokens_generated"] == 6 and doc["tokens_per_second"] > 0
    # a 224x224 picture is 16x16 patches of 14 px: 64 image tokens after the 2x2 merge
    assert doc["image"]["image_tokens"] == 64 and doc["image"]["image_grid_thw"] == [1, 16, 16]
    assert doc["image"]["tokens_generated"] == 8
    bytes_per = 4 if precision == "fp32" else 2
    params = json.loads((Path(doc["model_path"]) / MARKER_FILE).read_text())["parameters"]
    assert abs(doc["weights_bytes"] - params * bytes_per) < 1024  # + the rotary inv_freq buffers
    assert abs(doc["estimate"]["weights"] - doc["weights_bytes"]) <= 0.01 * doc["weights_bytes"]
    assert doc["estimated_memory_bytes"] == doc["estimate"]["total"]
    assert doc["versions"]["transformers"].startswith("5.")
    assert doc["processor"].startswith("Glm4vProcessor (")  # AutoProcessor's, as the server loads it
    assert doc["server_args"] == ["--dtype", "float32" if precision == "fp32" else "bfloat16"]


@pytest.mark.slow
def test_tiny_text_model_and_model_path_marker(tiny_root: Path, empty_hf_cache: Path) -> None:
    from provision.smoke import run_smoke

    first = run_smoke(model=CATALOG.get("glm-4-9b-chat-hf"), precision="fp32", device="cpu", new_tokens=3,
                      tiny_root=tiny_root, hf_cache_dir=empty_hf_cache)  # fmt: skip
    assert first.source == "tiny" and first.image is None and first.tokens_generated == 3
    # The same folder given as --model-path is still reported as the tiny stand-in it is.
    again = run_smoke(model_path=Path(first.model_path), precision="bf16", device="cpu", new_tokens=3)
    assert (again.model, again.source) == ("glm-4-9b-chat-hf", "tiny")


def _incomplete_hf_snapshot(cache: Path, repo: str) -> Path:
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0" * 40)
    snapshot = root / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    return _shard_folder(snapshot, ("model-00001-of-00002.safetensors",))


@pytest.mark.slow
def test_incomplete_cached_snapshot_is_refused_or_replaced_by_tiny(tmp_path: Path, tiny_root: Path) -> None:
    pytest.importorskip("huggingface_hub")
    pytest.importorskip("torchvision", reason="glm4v's processor (and so transformers serve) needs torchvision")
    from provision.smoke import run_smoke

    spec = CATALOG.get("autoglm-phone-9b")
    cache = tmp_path / "hf"
    _incomplete_hf_snapshot(cache, spec.repo)
    with pytest.raises(SmokeError, match=r"incomplete snapshot .*missing model-00002-of-00002\.safetensors"):
        run_smoke(model=spec, source="weights", precision="fp32", device="cpu", hf_cache_dir=cache, new_tokens=2)
    report = run_smoke(model=spec, source="auto", precision="fp32", device="cpu", hf_cache_dir=cache,
                       tiny_root=tiny_root, new_tokens=2, image=False)  # fmt: skip
    assert report.source == "tiny"
    assert any("incomplete snapshot" in w and "tiny stand-in" in w for w in report.warnings)


@pytest.mark.slow
def test_weights_source_without_a_download_says_how_to_get_one(empty_hf_cache: Path, ml: None) -> None:
    from provision.smoke import run_smoke

    with pytest.raises(SmokeError, match="huggingface-cli download zai-org/AutoGLM-Phone-9B"):
        run_smoke(model=CATALOG.get("autoglm-phone-9b"), source="weights", device="cpu", hf_cache_dir=empty_hf_cache)


@pytest.mark.slow
def test_bad_arguments_are_bad_input(tmp_path: Path, ml: None) -> None:
    from provision.smoke import run_smoke

    spec = CATALOG.get("autoglm-phone-9b")
    with pytest.raises(InvalidInput, match="--context"):
        run_smoke(model=spec, device="cpu", context_tokens=20, new_tokens=16)
    with pytest.raises(InvalidInput, match="cannot be combined with --tiny"):
        run_smoke(model=spec, device="cpu", model_path=tmp_path, source="tiny")


@pytest.mark.slow
def test_quantized_precision_without_bitsandbytes_fails_before_building(tmp_path: Path, ml: None) -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    from provision.smoke import run_smoke

    with pytest.raises(SmokeError, match=r"nf4 needs bitsandbytes.*pip install bitsandbytes"):
        # a synthetic 9B would write 20.6 GB first; the check must come before that
        run_smoke(model=CATALOG.get("autoglm-phone-9b"), source="synthetic", precision="nf4", device="cpu",
                  synthetic_root=tmp_path)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- loaded as the server loads it

ROOT = Path(__file__).resolve().parent.parent


def test_the_smoke_tests_quantization_is_the_servers() -> None:
    """``transformers serve --quantization bnb-4bit|bnb-8bit`` builds its own BitsAndBytesConfig; the test's is equal."""
    from types import SimpleNamespace

    server = pytest.importorskip("transformers.cli.serving.model_manager", reason="no transformers[serving] here")
    from provision.smoke.load import quantization_config

    for method in ("bnb-4bit", "bnb-8bit"):
        theirs = server.ModelManager.get_quantization_config(SimpleNamespace(quantization=method))
        assert quantization_config(method).to_dict() == theirs.to_dict(), method
    assert quantization_config(None) is None


def test_from_pretrained_gets_the_plans_dtype_and_the_servers_quantization(ml: None) -> None:
    import torch

    from provision.plan.serve import model_load
    from provision.smoke.load import from_pretrained_kwargs

    t4 = from_pretrained_kwargs(load=model_load("nf4", bf16=False), device="cuda", gpus=(0,), max_memory=None,
                                device_map=None)
    assert t4["dtype"] is torch.float16 and t4["device_map"] == {"": 0}
    quant = t4["quantization_config"]
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    assert quant.bnb_4bit_compute_dtype is torch.float32 and quant.llm_int8_skip_modules is None  # the server's
    cpu = from_pretrained_kwargs(load=model_load("bf16"), device="cpu", gpus=(), max_memory=None, device_map=None)
    assert cpu["dtype"] is torch.bfloat16 and "quantization_config" not in cpu


@pytest.mark.slow
def test_the_catalogs_unquantized_modules_are_what_the_server_leaves_unquantized(ml: None) -> None:
    """The server names no skipped modules: transformers skips its default. The memory estimate's list must be it."""
    import torch
    import transformers
    from transformers.quantizers.base import get_keys_to_not_convert

    for model_id in CATALOG.ids:
        spec = CATALOG.get(model_id)
        config = dict(spec.config)
        with torch.device("meta"):
            model = getattr(transformers, spec.auto_class).from_config(
                transformers.AutoConfig.for_model(config.pop("model_type"), **config))
        default = sorted(get_keys_to_not_convert(model))
        assert {p: sorted(spec.skip_modules(p)) for p in ("int8", "nf4")} == {"int8": default, "nf4": default}, model_id


_HIDE_TORCHVISION = "raise ImportError('torchvision is hidden by this test')\n"


@pytest.mark.slow
def test_without_torchvision_the_smoke_test_fails_as_the_server_does(tmp_path: Path, ml: None) -> None:
    """glm4v's processor needs torchvision; ``transformers serve`` has no fallback, so the smoke test has none.

    The test fails with one line and exit 1. Where ``PROVISION_SERVE_PYTHON`` names a Python with
    transformers[serving], the server is started on the same folder without torchvision too, and must fail.
    """
    from provision.smoke.tiny import build_tiny

    tiny = build_tiny(CATALOG.get("autoglm-phone-9b").config, model_id="autoglm-phone-9b",
                      root=tmp_path / "provision" / "tiny").path  # where --tiny finds it (XDG_CACHE_HOME below)
    hidden = tmp_path / "hide" / "torchvision"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(_HIDE_TORCHVISION)
    env = {**os.environ, "PYTHONPATH": f"{hidden.parent}:{ROOT}", "XDG_CACHE_HOME": str(tmp_path),
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "provision", "smoke", "--tiny", "--new-tokens", "2", "--json"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "AutoProcessor" in errors[0] and "torchvision is hidden" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    server_python = os.environ.get("PROVISION_SERVE_PYTHON")
    if server_python:
        (tmp_path / "autoglm-phone-9b").symlink_to(tiny, target_is_directory=True)
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = str(free.getsockname()[1])
        served = subprocess.run([server_python, "-m", "transformers.cli.transformers", "serve", "autoglm-phone-9b",
                                 "--host", "127.0.0.1", "--port", port, "--device", "cpu", "--dtype", "float32"],
                                cwd=tmp_path,
                                capture_output=True, text=True, env={**env, "PYTHONPATH": str(hidden.parent)},
                                timeout=300, check=False)
        assert served.returncode != 0 and "torchvision is hidden" in served.stderr + served.stdout


@pytest.mark.slow
def test_the_report_says_which_processor_and_load_flags_the_run_used(tiny_root: Path, empty_hf_cache: Path) -> None:
    from provision.smoke import run_smoke

    report = run_smoke(model=CATALOG.get("glm-4-9b-chat-hf"), precision="bf16", device="cpu", new_tokens=2,
                       tiny_root=tiny_root, hf_cache_dir=empty_hf_cache)
    assert report.server_args == ("--dtype", "bfloat16")
    assert report.processor and "Tokenizer" in report.processor  # a text model's AutoProcessor is its tokenizer
    assert "transformers serve --dtype bfloat16" in format_report(report)


# ---------------------------------------------------------------- gpu


@pytest.mark.gpu
@pytest.mark.slow
def test_tiny_glm4v_on_cuda_reports_allocator_memory(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    from provision.smoke import run_smoke

    report = run_smoke(model=CATALOG.get("autoglm-phone-9b"), device="cuda", precision="bf16", new_tokens=8,
                       tiny_root=tmp_path / "tiny", hf_cache_dir=tmp_path / "hf", measure_bandwidth=True)  # fmt: skip
    doc = report.to_dict()
    assert_smoke_contract(doc)
    assert doc["source"] == "tiny" and doc["gpus"] == [0]
    assert doc["weights_bytes"] > 0 and doc["peak_memory_bytes"] >= doc["weights_bytes"]
    assert doc["roofline"]["copy_bandwidth_bytes_per_second"] > 1e11
    assert doc["image"]["image_tokens"] == 64


def test_a_gpu_load_that_offloads_to_the_cpu_is_refused() -> None:
    from types import SimpleNamespace

    from provision.errors import SmokeError
    from provision.smoke.load import check_not_offloaded

    split = SimpleNamespace(hf_device_map={"model.visual": 0, "model.language_model.layers.39": "cpu"})
    with pytest.raises(SmokeError, match="never offloads silently"):
        check_not_offloaded(split, "auto")
    with pytest.raises(SmokeError, match=r"model\.language_model\.layers\.39"):
        check_not_offloaded(split, {"model.visual": 0, "model.language_model.layers.39": 1})
    check_not_offloaded(SimpleNamespace(hf_device_map={"": 0}), {"": 0})  # all on the GPU
    check_not_offloaded(SimpleNamespace(hf_device_map={"": "cpu"}), {"": "cpu"})  # a CPU plan
