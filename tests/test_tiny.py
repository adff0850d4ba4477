"""provision.smoke.tiny: the tiny stand-in mirrors the real architecture, maps its ids, builds atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import provision.smoke.tiny as tiny
from provision.data.catalog import load_catalog
from provision.errors import InvalidInput
from provision.smoke.tiny import (
    MARKER_FILE,
    SPECIAL_TOKENS,
    build_tiny,
    cache_root,
    read_marker,
    scaled_mrope_section,
    synthetic_config,
    tiny_config,
    tiny_key,
    vocab_size,
)

CATALOG = load_catalog()
#: What a tiny config may differ in from the real one: checkpoint bookkeeping dropped, dtype respelled.
_CHECKPOINT_KEYS = {"_name_or_path", "transformers_version", "quantization_config", "auto_map", "torch_dtype"}


def _text(cfg: dict) -> dict:
    return cfg.get("text_config", cfg)


# ---------------------------------------------------------------- the config mirrors the architecture


@pytest.mark.parametrize("model_id", CATALOG.ids)
def test_tiny_config_has_the_real_configs_keys(model_id: str) -> None:
    full = CATALOG.get(model_id).config
    cfg = tiny_config(full)
    for part in (None, "text_config", "vision_config"):
        real = full if part is None else full.get(part)
        small = cfg if part is None else cfg.get(part)
        if real is None:
            assert small is None
            continue
        assert set(small) - {"dtype"} == set(real) - _CHECKPOINT_KEYS - {"dtype"}, part  # nothing lost or invented
        assert small["dtype"] == "float32"


@pytest.mark.parametrize("model_id", CATALOG.ids)
def test_tiny_config_keeps_the_architecture_invariants(model_id: str) -> None:
    full = CATALOG.get(model_id).config
    cfg = tiny_config(full)
    text = _text(cfg)
    assert cfg["model_type"] == full["model_type"]
    assert cfg.get("architectures") == full.get("architectures")
    assert text["num_hidden_layers"] == 2 and text["hidden_size"] == 64
    assert text["num_attention_heads"] % text["num_key_value_heads"] == 0
    assert text["vocab_size"] == vocab_size() < 1000
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    factor = rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 0.5))
    if rope.get("mrope_section"):
        assert sum(rope["mrope_section"]) == head_dim * factor / 2
    if "vision_config" in cfg:
        assert cfg["vision_config"]["out_hidden_size"] == text["hidden_size"]
        assert cfg["vision_config"]["depth"] == 2
    ids = [cfg.get("image_token_id"), text.get("pad_token_id"), *(text.get("eos_token_id") or [])]
    assert all(i is None or 0 <= i < vocab_size() for i in ids)
    assert full == CATALOG.get(model_id).config  # the catalog's config is not mutated


@pytest.mark.parametrize(
    ("section", "total", "expected"),
    [
        ([8, 12, 12], 8, [2, 3, 3]),
        ([8, 12, 12], 32, [8, 12, 12]),
        ([8, 12, 12], 3, [1, 1, 1]),
        ([2, 1, 1], 4, [2, 1, 1]),
    ],
)
def test_scaled_mrope_section(section: list[int], total: int, expected: list[int]) -> None:
    assert scaled_mrope_section(section, total) == expected


def test_scaled_mrope_section_refuses_too_few_pairs() -> None:
    with pytest.raises(ValueError, match="cannot split 2"):
        scaled_mrope_section([8, 12, 12], 2)


def test_synthetic_config_keeps_every_dimension() -> None:
    full = CATALOG.get("autoglm-phone-9b").config
    cfg = synthetic_config(full)
    assert cfg["text_config"]["hidden_size"] == full["text_config"]["hidden_size"] == 4096
    assert cfg["text_config"]["vocab_size"] == full["text_config"]["vocab_size"]
    assert cfg["vision_config"] == full["vision_config"]
    assert cfg["image_token_id"] == 256 + 14


def test_tiny_config_rejects_other_architectures() -> None:
    with pytest.raises(InvalidInput, match="no tiny recipe for 'llama'"):
        tiny_config({"model_type": "llama", "hidden_size": 4096})


# ---------------------------------------------------------------- the token ids


def test_tiny_config_maps_special_ids_by_offset() -> None:
    cfg = tiny_config(CATALOG.get("autoglm-phone-9b").config)
    # 151343 <|image|> is the 15th GLM special token (151329 <|endoftext|> is the first).
    assert cfg["image_token_id"] == 256 + 14
    assert cfg["text_config"]["pad_token_id"] == 256


@pytest.mark.parametrize(("value", "mapped"), [
    (151329, 256), (151344, 256 + 15), (151348, 256 + 19), (151360, 256 + 31),  # specials, named and reserved
    (0, 0), (255, 255),  # small test ids are bytes already
    ([151329, 151336], [256, 263]), (None, None),
])
def test_real_ids_move_into_the_tiny_vocabulary(value: Any, mapped: Any) -> None:
    full = {"model_type": "glm4", "eos_token_id": value}
    assert tiny_config(full)["eos_token_id"] == mapped


@pytest.mark.parametrize(("value", "field"), [
    (42_000, "image_token_id"), (151361, "image_token_id"), (256, "image_token_id"), (-1, "image_token_id"),
    (True, "image_token_id"), ("151343", "image_token_id"), ([151329, 7.5], "image_token_id[1]"),
])
def test_ids_outside_the_glm_range_are_bad_input(value: Any, field: str) -> None:
    full = json.loads(json.dumps(CATALOG.get("autoglm-phone-9b").config))
    full["image_token_id"] = value
    with pytest.raises(InvalidInput) as err:
        tiny_config(full, source="config.json")
    assert (err.value.source, err.value.field) == ("config.json", field)


def test_the_offline_tokenizer_puts_the_special_tokens_where_the_config_says() -> None:
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    tok = tiny._build_tokenizer()
    cfg = tiny_config(CATALOG.get("autoglm-phone-9b").config)
    assert len(tok) == vocab_size()
    assert tok.convert_tokens_to_ids("<|image|>") == cfg["image_token_id"]
    assert tok.convert_tokens_to_ids("<|endoftext|>") == cfg["text_config"]["pad_token_id"] == tok.pad_token_id
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(name) == 256 + i
    text = "héllo, 世界 <|user|>"
    ids = tok(text)["input_ids"]
    assert all(0 <= i < vocab_size() for i in ids) and tok.decode(ids) == text  # any text encodes, byte-exact


# ---------------------------------------------------------------- the cache key and folder


def test_the_cache_key_follows_config_format_and_transformers() -> None:
    cfg = tiny_config(CATALOG.get("glm-4-9b-chat-hf").config)
    key = tiny_key(cfg, "5")
    assert len(key) == 16 and int(key, 16) >= 0
    assert tiny_key(dict(reversed(list(cfg.items()))), "5") == key  # key order is not content
    assert tiny_key(cfg, "6") != key  # a new transformers major may save differently
    assert tiny_key({**cfg, "num_hidden_layers": 3}, "5") != key


def test_a_new_folder_format_changes_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(CATALOG.get("glm-4-9b-chat-hf").config)
    before = tiny_key(cfg, "5")
    monkeypatch.setattr(tiny, "TINY_FORMAT", tiny.TINY_FORMAT + 1)
    assert tiny_key(cfg, "5") != before


def test_cache_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "provision" / "tiny"


def test_read_marker(tmp_path: Path) -> None:
    assert read_marker(tmp_path) is None  # real weights carry no marker
    (tmp_path / MARKER_FILE).write_text('{"kind": "synthetic"}')
    assert read_marker(tmp_path) == {"kind": "synthetic"}
    (tmp_path / MARKER_FILE).write_text("[not json")
    assert read_marker(tmp_path) == {"kind": "tiny"}  # a damaged marker still marks a stand-in


def _fake_write(calls: list[Path], *, fail: bool = False, race: Path | None = None) -> Any:
    """Stands in for the torch part of a build: files in ``dest``, then a crash or a rival build."""

    def write(dest: Path, cfg: dict, *, model_id: str, key: str) -> None:
        calls.append(dest)
        (dest / "config.json").write_text(json.dumps(cfg))
        if fail:
            raise KeyboardInterrupt  # killed halfway
        if race is not None:  # another process finished the same key first
            race.mkdir()
            (race / MARKER_FILE).write_text('{"kind": "tiny"}')
            (race / "config.json").write_text("{}")
        (dest / MARKER_FILE).write_text(json.dumps({"kind": "tiny", "key": key}))

    return write


def test_a_build_appears_whole_and_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(tiny, "_write_folder", _fake_write(calls))
    config = CATALOG.get("glm-4-9b-chat-hf").config
    first = build_tiny(config, model_id="glm-4-9b-chat-hf", root=tmp_path)
    assert first.reused is False and first.path == tmp_path / first.key
    assert calls[0].parent == tmp_path and calls[0].name.startswith(f".{first.key}-")  # built aside, then renamed
    assert (first.path / MARKER_FILE).is_file()
    again = build_tiny(config, model_id="glm-4-9b-chat-hf", root=tmp_path)
    assert (again.path, again.reused, len(calls)) == (first.path, True, 1)  # not built twice
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.key]


def test_an_interrupted_build_leaves_nothing_under_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiny, "_write_folder", _fake_write([], fail=True))
    with pytest.raises(KeyboardInterrupt):
        build_tiny(CATALOG.get("glm-4-9b-chat-hf").config, model_id="glm-4-9b-chat-hf", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_rival_build_that_won_the_race_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CATALOG.get("glm-4-9b-chat-hf").config
    final = tmp_path / tiny_key(tiny_config(config), tiny._transformers_major())
    monkeypatch.setattr(tiny, "_write_folder", _fake_write([], race=final))
    result = build_tiny(config, model_id="glm-4-9b-chat-hf", root=tmp_path)
    assert (result.path, result.reused) == (final, True)
    assert (final / "config.json").read_text() == "{}"  # the rival's folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name]


@pytest.mark.slow
def test_tiny_build_is_cached_by_config(tmp_path: Path) -> None:
    for name in ("torch", "transformers", "tokenizers"):
        pytest.importorskip(name)
    config = CATALOG.get("glm-4-9b-0414").config
    first = build_tiny(config, model_id="glm-4-9b-0414", root=tmp_path)
    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    second = build_tiny(config, model_id="glm-4-9b-0414", root=tmp_path)
    assert (second.path, second.reused) == (first.path, True)
    assert (second.path / "model.safetensors").stat().st_mtime_ns == stamp
    other = build_tiny(CATALOG.get("glm-4-9b-chat-hf").config, model_id="glm-4-9b-chat-hf", root=tmp_path)
    assert other.key != first.key
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind
    assert sum(f.stat().st_size for f in first.path.iterdir()) < 2_000_000
