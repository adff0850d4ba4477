"""A tiny, random-weight model of the real architecture, for smoke tests without a download.

The full-size config from the catalog is shrunk (2 layers, hidden 64) while keeping the
invariants that make the architecture work: the M-RoPE sections still add up to half the
rotary dimension, the vision tower still projects into the text width, and the query heads
still divide by the key/value heads. The tokenizer is byte-level with no merges, so any text
encodes, and it carries the GLM special tokens at the same *relative* ids as the real one, so
the config's special ids (image, video, eos, pad) map across by a fixed offset.

The folder is saved with ``save_pretrained`` and then loaded through the very same
``from_pretrained`` path as real weights; only the numbers are small.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.common.progress import step
from provision.errors import InvalidInput, SmokeError

__all__ = [
    "MARKER_FILE",
    "SPECIAL_TOKENS",
    "TinyModel",
    "build_synthetic",
    "build_tiny",
    "cache_root",
    "read_marker",
    "scaled_mrope_section",
    "synthetic_config",
    "tiny_config",
    "tiny_key",
]

#: Bumped whenever the folder layout or the shrinking rules change, so old caches are not reused.
TINY_FORMAT = 1
#: Written into every folder this module builds (``kind`` tiny or synthetic): never real weights.
MARKER_FILE = "provision-stand-in.json"

#: GLM-4 special tokens in the order of their real ids, starting at ``_REAL_FIRST_SPECIAL``
#: (151329 ``<|endoftext|>`` ... 151344 ``<|video|>``; shared/notes/model-facts.md §1). Real
#: ids past the named ones (e.g. the 151348 eos of GLM-4.1V) get reserved placeholders.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
)
_REAL_FIRST_SPECIAL = 151329
_SPECIAL_SLOTS = 32  # named tokens plus reserved ones, so every real id up to 151360 maps
_BYTE_TOKENS = 256

_TEXT_DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}
_VISION_DIMS = {"hidden_size": 32, "depth": 2, "num_heads": 2, "intermediate_size": 128}
_TEXT_MODEL_TYPES = ("glm", "glm4")
_VL_MODEL_TYPES = ("glm4v",)
_TOKEN_ID_KEYS = (
    "pad_token_id",
    "eos_token_id",
    "bos_token_id",
    "image_token_id",
    "video_token_id",
    "image_start_token_id",
    "image_end_token_id",
    "video_start_token_id",
    "video_end_token_id",
)
#: Keys of a downloaded config that describe the checkpoint, not the architecture; a built folder drops them.
_DROPPED_KEYS = ("_name_or_path", "transformers_version", "quantization_config", "auto_map")

# GLM-4.1V's prompt layout ([gMASK]<sop>, role tags, image wrapped in begin/end markers),
# written here as a minimal template; it accepts string content or a list of parts.
_CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- for m in messages -%}"
    "<|{{ m['role'] }}|>{{ '\\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'image' -%}<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif part['type'] == 'video' -%}<|begin_of_video|><|video|><|end_of_video|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{{ '\\n' }}{%- endif -%}"
)

# Same values as the real checkpoint's preprocessor_config.json (model-facts.md §1).
_PREPROCESSOR = {
    "image_processor_type": "Glm4vImageProcessor",
    "processor_class": "Glm4vProcessor",
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
    "do_convert_rgb": True,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "size": {"shortest_edge": 12544, "longest_edge": 9633792},
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TinyModel:
    """A built tiny folder: where it is, whether it came from the cache, and its config."""

    path: Path
    key: str
    reused: bool
    config: dict[str, Any]


def vocab_size() -> int:
    """Bytes plus the special-token slots: every id the tiny tokenizer can produce."""
    return _BYTE_TOKENS + _SPECIAL_SLOTS


def _special_names() -> list[str]:
    names = list(SPECIAL_TOKENS)
    names += [f"<|reserved_{_REAL_FIRST_SPECIAL + i}|>" for i in range(len(names), _SPECIAL_SLOTS)]
    return names


def _map_token_id(value: Any, field: str, source: str) -> Any:
    """Move a real special-token id (or list of them) into the tiny vocabulary."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_map_token_id(v, f"{field}[{i}]", source) for i, v in enumerate(value)]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(source, field, f"expected a token id, got {value!r}")
    offset = value - _REAL_FIRST_SPECIAL
    if 0 <= offset < _SPECIAL_SLOTS:
        return _BYTE_TOKENS + offset
    if 0 <= value < _BYTE_TOKENS:  # tiny test configs that already use small ids
        return value
    raise InvalidInput(source, field, f"token id {value} is outside the GLM special-token range the tiny tokenizer mirrors")


def _map_token_ids(holder: dict[str, Any], prefix: str, source: str) -> None:
    """Move every special-token id key of ``holder`` (a config or its text_config) in place."""
    for key in _TOKEN_ID_KEYS:
        if key in holder:
            holder[key] = _map_token_id(holder[key], f"{prefix}{key}", source)


def scaled_mrope_section(section: list[int], total: int) -> list[int]:
    """Shrink M-RoPE sections to add up to ``total``, keeping their proportions (real: 8,12,12)."""
    if not section or total < len(section):
        raise ValueError(f"cannot split {total} rotary pairs into {len(section)} sections")
    whole = sum(section)
    scaled = [max(1, s * total // whole) for s in section]
    i = len(scaled) - 1
    while sum(scaled) != total:  # put the rounding remainder on the last sections
        step = 1 if sum(scaled) < total else -1
        if scaled[i] + step >= 1:
            scaled[i] += step
        i = (i - 1) % len(scaled)
    return scaled


def _shrink_text(text: dict[str, Any], source: str, prefix: str) -> None:
    """Shrink a text decoder config in place, keeping rotary invariants."""
    text.update(_TEXT_DIMS)
    head_dim = _TEXT_DIMS["hidden_size"] // _TEXT_DIMS["num_attention_heads"]
    if "head_dim" in text:
        text["head_dim"] = head_dim
    text["vocab_size"] = vocab_size()
    _map_token_ids(text, prefix, source)
    # v5 keeps rotary settings in rope_parameters, v4 at top level plus rope_scaling.
    rope = text.get("rope_parameters") if isinstance(text.get("rope_parameters"), dict) else None
    scaling = text.get("rope_scaling") if isinstance(text.get("rope_scaling"), dict) else None
    factor = (rope or {}).get("partial_rotary_factor", text.get("partial_rotary_factor", 0.5))
    for holder in (rope, scaling):
        if holder is not None and holder.get("mrope_section"):
            pairs = int(head_dim * factor) // 2
            holder["mrope_section"] = scaled_mrope_section(list(holder["mrope_section"]), pairs)


def tiny_config(full: Mapping[str, Any], *, source: str = "model config") -> dict[str, Any]:
    """The tiny config for a full-size GLM config: same architecture and keys, tiny widths.

    Pure; raises ``InvalidInput`` for model types without a tiny recipe.
    """
    cfg = copy.deepcopy(dict(full))
    model_type = cfg.get("model_type")
    for key in _DROPPED_KEYS:
        cfg.pop(key, None)
    if model_type in _VL_MODEL_TYPES:
        text = cfg.get("text_config")
        vision = cfg.get("vision_config")
        if not isinstance(text, dict) or not isinstance(vision, dict):
            raise InvalidInput(source, "text_config", "a glm4v config needs text_config and vision_config")
        _shrink_text(text, source, "text_config.")
        vision.update(_VISION_DIMS)
        vision["out_hidden_size"] = text["hidden_size"]
        _map_token_ids(cfg, "", source)
        # Top-level copies of text keys (older layouts) must agree with text_config.
        for key in (*_TEXT_DIMS, "vocab_size"):
            if key in cfg:
                cfg[key] = text[key]
    elif model_type in _TEXT_MODEL_TYPES:
        _shrink_text(cfg, source, "")
    else:
        raise InvalidInput(
            source,
            "model_type",
            f"no tiny recipe for {model_type!r}; supported: {', '.join(_VL_MODEL_TYPES + _TEXT_MODEL_TYPES)}",
        )
    cfg["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", False))
    for holder in (cfg, cfg.get("text_config"), cfg.get("vision_config")):
        if isinstance(holder, dict):  # saved in fp32; the smoke run picks the precision
            holder.pop("torch_dtype", None)
            holder["dtype"] = "float32"
    return cfg


def _transformers_major() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers").split(".", 1)[0]
    except PackageNotFoundError:
        return "none"


def tiny_key(config: Mapping[str, Any], transformers_major: str) -> str:
    """Cache key: the tiny config, the folder format and the transformers major version."""
    blob = json.dumps(
        {"format": TINY_FORMAT, "transformers": transformers_major, "config": config},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/provision/tiny`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "provision" / "tiny"


def read_marker(path: Path) -> dict[str, Any] | None:
    """The stand-in marker of a folder (``kind``: tiny or synthetic), or ``None`` for real weights."""
    marker = path / MARKER_FILE
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"kind": "tiny"}
    return data if isinstance(data, dict) else {"kind": "tiny"}


def _auto_class(model_type: str) -> str:
    return "AutoModelForImageTextToText" if model_type in _VL_MODEL_TYPES else "AutoModelForCausalLM"


def _build_tokenizer() -> Any:
    """Byte-level BPE without merges: 256 byte tokens, then the GLM special tokens."""
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(_special_names())
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",  # noqa: S106 - vocabulary entries, not secrets
        pad_token="<|endoftext|>",  # noqa: S106
        chat_template=_CHAT_TEMPLATE,
        padding_side="left",
    )


def _write_processing_files(dest: Path, model_type: str) -> None:
    """Tokenizer, and for glm4v the image-processor config and chat template, as a checkpoint has."""
    _build_tokenizer().save_pretrained(dest)
    if model_type in _VL_MODEL_TYPES:
        (dest / "preprocessor_config.json").write_text(json.dumps(_PREPROCESSOR, indent=2) + "\n")
        (dest / "chat_template.jinja").write_text(_CHAT_TEMPLATE)


def _write_marker(dest: Path, kind: str, model_id: str, parameters: int, **extra: Any) -> None:
    import transformers

    marker = {
        "kind": kind,
        "stand_in_for": model_id,
        "format": TINY_FORMAT,
        "transformers": transformers.__version__,
        "parameters": parameters,
        **extra,
    }
    (dest / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _write_folder(dest: Path, cfg: dict[str, Any], *, model_id: str, key: str) -> None:
    """Instantiate the random model from ``cfg`` and save model, tokenizer and processor files."""
    import torch
    import transformers

    model_type = cfg["model_type"]
    config = transformers.AutoConfig.for_model(**cfg)
    torch.manual_seed(0)
    model = getattr(transformers, _auto_class(model_type)).from_config(config, dtype=torch.float32)
    model.save_pretrained(dest, safe_serialization=True)
    _write_processing_files(dest, model_type)
    _write_marker(dest, "tiny", model_id, sum(p.numel() for p in model.parameters()), key=key)


def build_tiny(
    full_config: Mapping[str, Any],
    *,
    model_id: str,
    root: Path | None = None,
    source: str = "model config",
) -> TinyModel:
    """Build (or reuse) the tiny stand-in for ``full_config`` and return its folder.

    Built in a temporary folder beside the cache entry and renamed into place, so a crash
    or a concurrent build never leaves a half-written folder under the key.
    """
    cfg = tiny_config(full_config, source=source)
    key = tiny_key(cfg, _transformers_major())
    root = root or cache_root()
    final = root / key
    if (final / MARKER_FILE).is_file():
        return TinyModel(path=final, key=key, reused=True, config=cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    except OSError as exc:
        raise SmokeError(f"cannot create the tiny-model cache under {root}: {exc}") from exc
    try:
        with step(f"building the tiny stand-in for {model_id} (random weights) in {final}"):
            _write_folder(tmp, cfg, model_id=model_id, key=key)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / MARKER_FILE).is_file():  # not a concurrent build that won the race
                raise
            return TinyModel(path=final, key=key, reused=True, config=cfg)
    except ImportError as exc:
        raise SmokeError(
            f"building the tiny model needs torch, transformers and tokenizers ({exc}); "
            "install them with: pip install 'provision[smoke]'"
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TinyModel(path=final, key=key, reused=False, config=cfg)


def synthetic_config(full: Mapping[str, Any], *, source: str = "model config") -> dict[str, Any]:
    """The full-size config with its special-token ids moved into the tiny tokenizer's range.

    Every dimension, and so every byte of weights, KV cache and activations, stays real; only
    which ids mean "image" or "end of text" changes, so the byte-level tokenizer can drive it.
    """
    cfg = copy.deepcopy(dict(full))
    for key in _DROPPED_KEYS:
        cfg.pop(key, None)
    _map_token_ids(cfg, "", source)
    if isinstance(cfg.get("text_config"), dict):
        _map_token_ids(cfg["text_config"], "text_config.", source)
    return cfg


def _param_count(cls: Any, config: Any) -> int:
    import torch

    with torch.device("meta"):
        model = cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


def build_synthetic(
    full_config: Mapping[str, Any],
    *,
    model_id: str,
    root: Path | None = None,
    init_device: str = "cpu",
    max_shard_size: str = "5GB",
) -> Path:
    """Save the full-size architecture with random bf16 weights into a new folder under ``root``.

    The caller owns the folder and deletes it. The weights are initialised on ``init_device``
    ("cuda" is much faster for 10 B parameters) and the folder is sharded like a real
    checkpoint, so loading it exercises the same index-and-shards path.
    """
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise SmokeError(
            f"a synthetic model needs torch and transformers ({exc}); install them with: pip install 'provision[smoke]'"
        ) from exc
    cfg = synthetic_config(full_config, source=f"catalog model {model_id}")
    model_type = str(cfg.get("model_type"))
    config = transformers.AutoConfig.for_model(**cfg)
    cls = getattr(transformers, _auto_class(model_type))
    count = _param_count(cls, config)
    need = count * 2  # bf16
    root = root or Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    free_disk = shutil.disk_usage(root).free
    if free_disk < need * 1.05 + (1 << 30):
        raise SmokeError(
            f"a synthetic {model_id} needs {need / 1e9:.1f} GB of disk under {root}; "
            f"{free_disk / 1e9:.1f} GB is free (set TMPDIR or pass another folder)"
        )
    if init_device == "cuda" and torch.cuda.is_available() and torch.cuda.mem_get_info(0)[0] < need * 1.1:
        init_device = "cpu"
    dest = Path(tempfile.mkdtemp(prefix=f"provision-synthetic-{model_id}-", dir=root))
    try:
        torch.manual_seed(0)
        with step(f"building the synthetic {model_id}: {count / 1e9:.2f} B random bf16 weights on {init_device}"), \
                torch.device(init_device):
            model = cls.from_config(config, dtype=torch.bfloat16)
        with step(f"writing its checkpoint ({need / 1e9:.1f} GB) to {dest}"):
            model.save_pretrained(dest, safe_serialization=True, max_shard_size=max_shard_size)
        del model
        if init_device == "cuda":
            torch.cuda.empty_cache()
        _write_processing_files(dest, model_type)
        _write_marker(dest, "synthetic", model_id, count)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest
