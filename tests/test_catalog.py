"""The model catalog, ``--model`` resolution and the packaged-data resolver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from packaging.version import Version

from provision.common import resources
from provision.common.resources import data_dir
from provision.data.catalog import REPO_RE, load_catalog, resolve_model
from provision.errors import InvalidInput, ProvisionError

REPO_ROOT = Path(__file__).resolve().parents[1]

_ROW = """
[[model]]
id = "{id}"
name = "Tiny GLM"
repo = "{repo}"
auto_class = "AutoModelForCausalLM"
processor = "AutoTokenizer"
min_transformers = "4.46.0"
parameters = {parameters}
default = {default}
source = "test"
[model.serve]
served_model_name = "{id}"
context = 2048
source = "test"
[model.parameters_by_part]
embed_tokens = 6400
decoder_layers = 14080
final_norm = 64
lm_head = 6400
[model.config]
model_type = "glm"
hidden_size = 64
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
head_dim = 32
intermediate_size = 8
vocab_size = 100
"""
# One glm layer: q 64x64+64, k 64x32+32, v 64x32+32, o 64x64, gate_up 64x16, down 8x64, 2 norms.
_PARAMS = 6400 + (4160 + 2080 + 2080 + 4096 + 1024 + 512 + 128) + 64 + 6400


_HEAD = 'schema_version = 1\n[meta]\nsources = ["x"]\nretrieved = "2026-11-24"\n'


def _toml(tmp_path: Path, *rows: dict, head: str = _HEAD) -> Path:
    body = head
    for row in rows:
        values = {"id": "tiny", "repo": "org/tiny", "parameters": _PARAMS, "default": "false"} | row
        body += _ROW.format(**values)
    path = tmp_path / "models.toml"
    path.write_text(body)
    return path


def test_hand_count_of_the_test_row():
    assert _PARAMS == 6400 + 14_080 + 64 + 6400


def test_default_catalog():
    catalog = load_catalog()
    assert catalog.ids == ("autoglm-phone-9b", "autoglm-phone-9b-multilingual", "glm-4.1v-9b-thinking",
                           "glm-4-9b-0414", "glm-4-9b-chat-hf")
    assert catalog.default.id == "autoglm-phone-9b"
    auto = catalog.get("autoglm-phone-9b")
    assert auto.repo == "zai-org/AutoGLM-Phone-9B"
    assert auto.auto_class == "AutoModelForImageTextToText" and auto.processor == "AutoProcessor"
    assert auto.min_transformers == Version("5.0.0")
    assert "rope_parameters" in auto.config["text_config"]
    assert auto.parameters == 10_292_777_472 and auto.has_vision
    chat = catalog.get("glm-4-9b-chat-hf")
    assert chat.auto_class == "AutoModelForCausalLM" and chat.processor == "AutoTokenizer"
    assert chat.min_transformers == Version("4.46.0") and not chat.has_vision
    assert catalog.get("glm-4-9b-0414").min_transformers == Version("4.51.3")
    assert catalog.get("glm-4.1v-9b-thinking").min_transformers == Version("4.53.0")
    assert all(REPO_RE.match(m.repo) for m in catalog.models)
    assert all(m.skip_modules("int8") == ("lm_head",) for m in catalog.models)


def test_a_valid_minimal_catalog(tmp_path):
    catalog = load_catalog(_toml(tmp_path, {"default": "true"}, {"id": "tiny-2"}))
    assert catalog.ids == ("tiny", "tiny-2") and catalog.default.id == "tiny"


@pytest.mark.parametrize(
    ("rows", "field", "problem"),
    [
        (({"default": "true"}, {"default": "false"}), "model[1].id", "duplicate id 'tiny'"),
        (({"default": "true"}, {"id": "b", "default": "true"}), "model", "found 2 (tiny, b)"),
        (({},), "model", "found 0"),
        (({"id": "Tiny", "default": "true"},), "model[0].id", "must match"),
        (({"id": "a;rm -rf", "default": "true"},), "model[0].id", "must match"),
        (({"id": "-x", "default": "true"},), "model[0].id", "must match"),
        (({"repo": "org/../x", "default": "true"},), "model[0].repo", "not a Hugging Face repo id"),
        (({"repo": "org/a b", "default": "true"},), "model[0].repo", "not a Hugging Face repo id"),
        (({"repo": "just-a-name", "default": "true"},), "model[0].repo", "not a Hugging Face repo id"),
        (({"parameters": _PARAMS + 1, "default": "true"},), "model[0].parameters", "counted from config"),
    ],
)
def test_catalog_errors_name_file_and_key(tmp_path, rows, field, problem):
    path = _toml(tmp_path, *rows)
    with pytest.raises(InvalidInput) as err:
        load_catalog(path)
    assert err.value.source == str(path)
    assert err.value.field == field
    assert problem in err.value.problem
    assert str(err.value).startswith(f"{path}: {field}: ")


def test_catalog_schema_and_config_errors(tmp_path):
    path = _toml(tmp_path, {"default": "true"}, head='schema_version = 2\n[meta]\nsources = ["x"]\nretrieved = "d"\n')
    with pytest.raises(InvalidInput, match="schema_version: 2 is not supported"):
        load_catalog(path)
    path.write_text(_toml(tmp_path, {"default": "true"}).read_text().replace("hidden_size = 64", 'hidden_size = "64"'))
    with pytest.raises(InvalidInput) as err:
        load_catalog(path)
    assert err.value.field == "model[0].config.hidden_size"
    with pytest.raises(InvalidInput, match="no such file"):
        load_catalog(tmp_path / "missing.toml")


# ---------------------------------------------------------------- [model.serve]


def _max_positions(config: dict) -> int:
    return (config.get("text_config") or config)["max_position_embeddings"]


def test_autoglm_is_served_as_open_autoglm_serves_it():
    catalog = load_catalog()
    for model_id in ("autoglm-phone-9b", "autoglm-phone-9b-multilingual"):
        serve = catalog.get(model_id).serve
        assert serve.served_model_name == model_id
        assert serve.context == 25480
        assert (serve.images_per_prompt, serve.images_per_request) == (10, 1)
        assert serve.max_pixels == 5_000_000
        assert serve.chat_template_content_format == "string"
        assert (serve.mm_encoder_tp_mode, serve.mm_processor_cache_type) == ("data", "shm")
        assert serve.sglang_chat_template == "glm-4v"
        assert serve.allowed_local_media_path is None  # "/" is Open-AutoGLM's, refused here (see models.toml)


def test_every_catalog_model_serves_within_its_own_window_and_text_models_take_no_images():
    for model in load_catalog().models:
        serve = model.serve
        assert 0 < serve.context <= _max_positions(model.config)
        if model.has_vision:
            assert 1 <= serve.images_per_request <= serve.images_per_prompt
            assert serve.mm_encoder_tp_mode == "data"
        else:
            assert serve.served_model_name == model.id
            assert serve.images_per_prompt == serve.images_per_request == 0
            assert serve.max_pixels is None and serve.mm_encoder_tp_mode is None


def test_local_directories_have_no_serving_facts(tmp_path):
    local = resolve_model(str(_write_config(tmp_path / "m", _glm4v(v5=True))), load_catalog())
    assert local.is_local and local.serve is None


_AUTOGLM_SOURCE = 'source = "https://github.com/zai-org/Open-AutoGLM/blob/main/README_en.md (vLLM and SGLang'


@pytest.mark.parametrize(
    ("old", "new", "field", "problem"),
    [
        ("context = 25480", "context = 70000", "context", "70000 exceeds the model's max_position_embeddings 65536"),
        ("context = 25480", "context = 0", "context", "out of range"),
        ('served_model_name = "autoglm-phone-9b"', 'served_model_name = "AutoGLM Phone"', "served_model_name",
         "must match"),
        ("\nimages_per_request = 1\n", "\nimages_per_request = 11\n", "images_per_request", "out of range [1, 10]"),
        ("images_per_prompt = 10", "images_per_prompt = 0", "images_per_prompt", "out of range"),
        ('mm_encoder_tp_mode = "data"', 'mm_encoder_tp_mode = "both"', "mm_encoder_tp_mode", "is not one of"),
        ('mm_processor_cache_type = "shm"', 'mm_processor_cache_type = "disk"', "mm_processor_cache_type",
         "is not one of"),
        ('chat_template_content_format = "string"', 'chat_template_content_format = "text"',
         "chat_template_content_format", "is not one of"),
        ("max_pixels = 5000000", 'max_pixels = "5000000"', "max_pixels", "expected an integer"),
        ('sglang_chat_template = "glm-4v"', 'sglang_chat_template = "glm 4v; rm"', "sglang_chat_template",
         "must match"),
        (_AUTOGLM_SOURCE, 'allowed_local_media_path = "/"\n' + _AUTOGLM_SOURCE, "allowed_local_media_path",
         "'/' lets any request read any file"),
        (_AUTOGLM_SOURCE, 'allowed_local_media_path = "/srv/../etc"\n' + _AUTOGLM_SOURCE,
         "allowed_local_media_path", "is not an absolute folder path"),
        (_AUTOGLM_SOURCE, 'allowed_local_media_path = "media"\n' + _AUTOGLM_SOURCE, "allowed_local_media_path",
         "is not an absolute folder path"),
    ],
)
def test_serve_errors_name_the_field(tmp_path, old, new, field, problem):
    text = (REPO_ROOT / "matrices" / "models.toml").read_text()
    assert old in text
    path = tmp_path / "models.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(InvalidInput) as err:
        load_catalog(path)
    assert (err.value.source, err.value.field) == (str(path), f"model[0].serve.{field}")
    assert problem in err.value.problem


def test_a_media_folder_is_accepted(tmp_path):
    text = (REPO_ROOT / "matrices" / "models.toml").read_text()
    path = tmp_path / "models.toml"
    path.write_text(text.replace(_AUTOGLM_SOURCE, 'allowed_local_media_path = "/srv/screens"\n' + _AUTOGLM_SOURCE, 1))
    assert load_catalog(path).default.serve.allowed_local_media_path == "/srv/screens"


def test_text_models_take_no_image_settings_and_serve_is_required(tmp_path):
    path = _toml(tmp_path, {"default": "true"})
    path.write_text(path.read_text().replace("context = 2048", "context = 2048\nimages_per_prompt = 1"))
    with pytest.raises(InvalidInput) as err:
        load_catalog(path)
    assert (err.value.field, err.value.problem) == ("model[0].serve.images_per_prompt", "a text-only model takes no images")
    path.write_text(path.read_text().replace("[model.serve]", "[model.unused]"))
    with pytest.raises(InvalidInput) as err:
        load_catalog(path)
    assert (err.value.field, err.value.problem) == ("model[0].serve", "required key is missing")


# ---------------------------------------------------------------- resolve_model


def _write_config(directory: Path, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _glm4v(v5: bool) -> dict:
    text = {"model_type": "glm4v_text", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "intermediate_size": 128, "vocab_size": 1000}
    if v5:
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 2, 4], "partial_rotary_factor": 0.5}
    else:
        text["rope_scaling"] = {"rope_type": "default", "mrope_section": [2, 2, 4]}
    vision = {"hidden_size": 32, "depth": 2, "num_heads": 2, "out_hidden_size": 64, "intermediate_size": 128}
    return {"model_type": "glm4v", "text_config": text, "vision_config": vision}


def test_resolve_catalog_id():
    catalog = load_catalog()
    assert resolve_model("glm-4-9b-chat-hf", catalog) is catalog.get("glm-4-9b-chat-hf")


def test_resolve_unknown_id_lists_known_ids():
    catalog = load_catalog()
    with pytest.raises(InvalidInput) as err:
        resolve_model("glm-5", catalog, exists=lambda p: False)
    assert err.value.source == "--model"
    assert "autoglm-phone-9b" in err.value.problem and "glm-4-9b-chat-hf" in err.value.problem


def test_resolve_local_glm4v_directories(tmp_path):
    catalog = load_catalog()
    v5 = resolve_model(str(_write_config(tmp_path / "My AutoGLM!", _glm4v(True))), catalog)
    assert v5.is_local and v5.repo is None and v5.path == tmp_path / "My AutoGLM!"
    assert v5.id == "my-autoglm" and v5.name == "My AutoGLM!"
    assert v5.auto_class == "AutoModelForImageTextToText" and v5.processor == "AutoProcessor"
    assert v5.min_transformers == Version("5.0.0")
    assert v5.parameters == sum(v5.parameters_by_part.values()) > 0
    v4 = resolve_model(str(_write_config(tmp_path / "v4", _glm4v(False))), catalog)
    assert v4.min_transformers == Version("4.53.0")


def test_resolve_local_text_model(tmp_path):
    config = {"model_type": "glm", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 8, "vocab_size": 100}
    spec = resolve_model(str(_write_config(tmp_path / "glm", config)), load_catalog())
    assert spec.auto_class == "AutoModelForCausalLM" and spec.processor == "AutoTokenizer"
    assert spec.parameters == _PARAMS and spec.min_transformers == Version("4.46.0")


def test_resolve_local_directory_errors(tmp_path):
    catalog = load_catalog()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput) as err:
        resolve_model(str(tmp_path / "empty"), catalog)
    assert err.value.source == str(tmp_path / "empty" / "config.json") and "no such file" in err.value.problem
    _write_config(tmp_path / "llama", {"model_type": "llama"})
    with pytest.raises(InvalidInput) as err:
        resolve_model(str(tmp_path / "llama"), catalog)
    assert err.value.field == "model_type"
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[1]")
    with pytest.raises(InvalidInput, match="expected a JSON object"):
        resolve_model(str(tmp_path / "list"), catalog)


def test_resolve_uses_injected_probe(tmp_path):
    seen = []
    catalog = load_catalog()
    with pytest.raises(InvalidInput):
        resolve_model("/nowhere", catalog, exists=lambda p: seen.append(p) or False)
    assert seen == [Path("/nowhere")]


# ---------------------------------------------------------------- data_dir


def test_data_dir_in_a_checkout():
    assert data_dir("matrices") == REPO_ROOT / "matrices"
    assert (data_dir("matrices") / "models.toml").is_file()


def test_data_dir_prefers_the_installed_layout(tmp_path, monkeypatch):
    package = tmp_path / "site" / "provision"
    (package / "_data" / "templates").mkdir(parents=True)
    (tmp_path / "site" / "templates").mkdir()
    monkeypatch.setattr(resources, "package_dir", lambda: package)
    assert data_dir("templates") == package / "_data" / "templates"
    with pytest.raises(ProvisionError, match="cannot find the packaged matrices/"):
        data_dir("matrices")
    with pytest.raises(ValueError):
        data_dir("../etc")


@pytest.mark.parametrize("name", ["zai-org/AutoGLM-Phone-9B", "ZAI-ORG/autoglm-phone-9b", "AutoGLM-Phone-9B",
                                  "autoglm-phone-9b", "AUTOGLM-PHONE-9B", " autoglm-phone-9b "])
def test_resolve_by_hugging_face_repo_id_in_any_case(name):
    catalog = load_catalog()
    assert resolve_model(name, catalog, exists=lambda p: False) is catalog.get("autoglm-phone-9b")


def test_resolve_a_path_that_is_not_there_says_no_such_directory(tmp_path):
    catalog = load_catalog()
    for path in ("/nonexistent/dir", "./models/autoglm", "~/nowhere/x", str(tmp_path / "gone")):
        with pytest.raises(InvalidInput) as err:
            resolve_model(path, catalog)
        assert err.value.problem == f"{path}: no such directory", path
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InvalidInput, match=r"is a file; a model directory holds config\.json"):
        resolve_model(str(tmp_path / "config.json"), catalog)


@pytest.mark.parametrize(("typed", "meant"), [
    ("autoglm-phone-9", "did you mean autoglm-phone-9b or autoglm-phone-9b-multilingual?"),
    ("autoglm-phone9b", "did you mean autoglm-phone-9b"),
    ("zai-org/AutoGLM-Phone-9", "did you mean autoglm-phone-9b"),
    ("glm-4-9b", "did you mean glm-4-9b-0414 or glm-4-9b-chat-hf?"),
])
def test_near_misses_get_did_you_mean(typed, meant):
    with pytest.raises(InvalidInput) as err:
        resolve_model(typed, load_catalog(), exists=lambda p: False)
    assert err.value.problem.startswith(f"{typed!r} is not a known model; {meant}")
    assert "`provision models` lists them" in err.value.problem
