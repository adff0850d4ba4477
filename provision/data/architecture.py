"""What the model is: a GLM-family ``config.json`` rebuilt module by module.

The modules, names and shapes are the ones transformers creates, grouped into the units a
device map places whole (the vision tower, the embeddings, each decoder layer, the head).
The catalog checks its parameter counts against this; ``provision.plan.memory`` prices
the same modules in bytes. Pure: no torch, no transformers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from provision.common.fields import Fields

__all__ = [
    "FAMILIES",
    "Architecture",
    "Module",
    "Unit",
    "architecture_of",
    "parameter_count",
    "parameters_by_part",
    "parse_architecture",
]

FAMILIES = ("glm4v", "glm4", "glm")


@dataclass(frozen=True, slots=True)
class Module:
    """One module with parameters, named as transformers names it."""

    name: str
    kind: str  # linear | embedding | norm | conv
    weight: int
    bias: int = 0
    rows: int = 0  # output features of a Linear (LLM.int8 keeps one scale per row)
    part: str = ""  # overrides the unit's part (the final norm travels with lm_head)


@dataclass(frozen=True, slots=True)
class Unit:
    """What a device map places as a whole: the vision tower, embeddings, one layer, or the head."""

    name: str
    part: str
    modules: tuple[Module, ...]
    decoder_layers: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Architecture:
    """The dimensions the estimator needs, parsed and checked from a config."""

    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool
    norms_per_layer: int
    vision: dict[str, int] | None = None
    units: tuple[Unit, ...] = field(default=(), repr=False)

    @property
    def kv_bytes_per_token_layer(self) -> int:
        """K and V of one token in one layer, in elements."""
        return 2 * self.kv_heads * self.head_dim



# ---------------------------------------------------------------- parsing


def parse_architecture(config: Mapping[str, Any], *, source: str = "config.json", path: str = "") -> Architecture:
    """Read a GLM / GLM-4 / GLM-4.1V config (v4 or v5 layout) into an ``Architecture``.

    :raises InvalidInput: unsupported ``model_type`` or a missing / wrong dimension,
        naming ``source`` and the dotted key.
    """
    top = Fields(config, source, path)
    family = top.str("model_type")
    if family not in FAMILIES:
        hint = " (use glm-4-9b-chat-hf, the transformers-native conversion)" if family == "chatglm" else ""
        raise top.fail("model_type", f"{family!r} is not supported; expected one of {', '.join(FAMILIES)}{hint}")
    text = top.obj("text_config") if family == "glm4v" else top
    assert text is not None
    hidden = text.int("hidden_size", minimum=1)
    heads = text.int("num_attention_heads", minimum=1)
    kv_heads = text.int("num_key_value_heads", required=False, default=heads, minimum=1)
    if heads % kv_heads:
        raise text.fail("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}")
    if family == "glm4v":  # Glm4vTextAttention ignores head_dim
        head_dim = hidden // heads
    else:
        head_dim = text.int("head_dim", required=False, default=hidden // heads, minimum=1)
    tied = text.bool("tie_word_embeddings", required=False, default=None)
    if tied is None:
        tied = top.bool("tie_word_embeddings", required=False, default=False)
    arch = Architecture(
        family=family,
        hidden=hidden,
        layers=text.int("num_hidden_layers", minimum=1, maximum=10_000),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=text.int("intermediate_size", minimum=1),
        vocab=text.int("vocab_size", minimum=1),
        tied=tied,
        qkv_bias=True if family == "glm4v" else text.bool("attention_bias", required=False, default=True),
        norms_per_layer=2 if family == "glm" else 4,
        vision=_parse_vision(top.obj("vision_config"), hidden) if family == "glm4v" else None,
    )
    return _with_units(arch)


def _parse_vision(vis: Fields | None, text_hidden: int) -> dict[str, int]:
    assert vis is not None
    image = vis.data.get("image_size", 336)
    if isinstance(image, list) and image and all(isinstance(x, int) and not isinstance(x, bool) for x in image):
        image = image[0]
    if not isinstance(image, int) or isinstance(image, bool) or image < 1:
        raise vis.fail("image_size", f"expected a positive integer, got {image!r}")
    dims = {
        "hidden": vis.int("hidden_size", minimum=1),
        "depth": vis.int("depth", minimum=1, maximum=10_000),
        "heads": vis.int("num_heads", minimum=1),
        "out_hidden": vis.int("out_hidden_size", minimum=1),
        "intermediate": vis.int("intermediate_size", minimum=1),
        "patch": vis.int("patch_size", required=False, default=14, minimum=1),
        "temporal_patch": vis.int("temporal_patch_size", required=False, default=2, minimum=1),
        "in_channels": vis.int("in_channels", required=False, default=3, minimum=1),
        "merge": vis.int("spatial_merge_size", required=False, default=2, minimum=1),
        "qkv_bias": int(vis.bool("attention_bias", required=False, default=False)),
        "image_size": image,
    }
    if dims["out_hidden"] != text_hidden:
        raise vis.fail("out_hidden_size", f"{dims['out_hidden']} must equal text_config.hidden_size {text_hidden}")
    return dims


def _linear(name: str, fan_in: int, fan_out: int, *, bias: bool = False) -> Module:
    return Module(name, "linear", fan_in * fan_out, fan_out if bias else 0, fan_out)


def _vision_unit(v: Mapping[str, int]) -> Unit:
    h, o, p = v["hidden"], v["out_hidden"], "model.visual."
    mods = [
        Module(p + "embeddings.position_embedding", "embedding", (v["image_size"] // v["patch"]) ** 2 * h),
        Module(p + "patch_embed.proj", "conv", v["in_channels"] * v["temporal_patch"] * v["patch"] ** 2 * h, h),
    ]
    for i in range(v["depth"]):
        b = f"{p}blocks.{i}."
        mods += [
            Module(b + "norm1", "norm", h),
            Module(b + "norm2", "norm", h),
            _linear(b + "attn.qkv", h, 3 * h, bias=bool(v["qkv_bias"])),
            _linear(b + "attn.proj", h, h),
            _linear(b + "mlp.gate_proj", h, o),  # the block MLP is sized by out_hidden_size
            _linear(b + "mlp.up_proj", h, o),
            _linear(b + "mlp.down_proj", o, h),
        ]
    mods += [
        Module(p + "post_conv_layernorm", "norm", h),
        Module(p + "post_layernorm", "norm", h),
        Module(p + "downsample", "conv", h * o * v["merge"] ** 2, o),
        _linear(p + "merger.proj", o, o),
        Module(p + "merger.post_projection_norm", "norm", o, o),  # LayerNorm: weight + bias
        _linear(p + "merger.gate_proj", o, v["intermediate"]),
        _linear(p + "merger.up_proj", o, v["intermediate"]),
        _linear(p + "merger.down_proj", v["intermediate"], o),
    ]
    return Unit("model.visual", "vision", tuple(mods))


def _with_units(a: Architecture) -> Architecture:
    prefix = "model.language_model." if a.family == "glm4v" else "model."
    units = [_vision_unit(a.vision)] if a.vision else []
    embed = Module(prefix + "embed_tokens", "embedding", a.vocab * a.hidden)
    units.append(Unit(prefix + "embed_tokens", "embed_tokens", (embed,)))
    norms = ["input_layernorm", "post_attention_layernorm", "post_self_attn_layernorm", "post_mlp_layernorm"]
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    for i in range(a.layers):
        b = f"{prefix}layers.{i}."
        mods = (
            _linear(b + "self_attn.q_proj", a.hidden, q, bias=a.qkv_bias),
            _linear(b + "self_attn.k_proj", a.hidden, kv, bias=a.qkv_bias),
            _linear(b + "self_attn.v_proj", a.hidden, kv, bias=a.qkv_bias),
            _linear(b + "self_attn.o_proj", q, a.hidden),
            _linear(b + "mlp.gate_up_proj", a.hidden, 2 * a.intermediate),
            _linear(b + "mlp.down_proj", a.intermediate, a.hidden),
            *(Module(b + n, "norm", a.hidden) for n in norms[: a.norms_per_layer]),
        )
        units.append(Unit(f"{prefix}layers.{i}", "decoder_layers", mods, decoder_layers=1))
    head = [Module(prefix + "norm", "norm", a.hidden, part="final_norm")]
    if not a.tied:  # a tied lm_head shares embed_tokens' storage
        head.append(_linear("lm_head", a.hidden, a.vocab))
    units.append(Unit("lm_head", "lm_head", tuple(head)))
    return replace(a, units=tuple(units))


def architecture_of(spec_or_config: Any) -> Architecture:
    """An ``Architecture`` from one, a ``ModelSpec`` (its ``config``) or a config mapping."""
    if isinstance(spec_or_config, Architecture):
        return spec_or_config
    config = getattr(spec_or_config, "config", spec_or_config)
    return parse_architecture(config)


def parameter_count(spec_or_config: Any) -> int:
    """All parameters, as ``sum(p.numel() for p in model.parameters())`` reports them."""
    return sum(parameters_by_part(spec_or_config).values())


def parameters_by_part(spec_or_config: Any) -> dict[str, int]:
    """Parameters per part: ``vision``, ``embed_tokens``, ``decoder_layers``, ``final_norm``, ``lm_head``.

    ``lm_head`` is absent when it is tied to ``embed_tokens``.
    """
    parts: dict[str, int] = {}
    for unit in architecture_of(spec_or_config).units:
        for m in unit.modules:
            part = m.part or unit.part
            parts[part] = parts.get(part, 0) + m.weight + m.bias
    return parts
