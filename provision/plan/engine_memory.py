"""What a serving engine needs on each GPU: a pure budget for vLLM and SGLang.

An engine does not size memory the way ``from_pretrained`` does. At start it loads the weights,
runs a profiling forward pass at its largest batch (text and, for a vision model, the largest
images a prompt may carry), captures CUDA graphs, and gives what is left of its share of the GPU
to the KV cache. It refuses to start when that cache cannot hold one ``max_model_len`` sequence,
and when the share it asks for is not free. This module mirrors that arithmetic so the planner
can choose the share and the context before anything is installed.

Sources per term (engines.toml and shared/notes/serving.md carry the links):

* weights: the catalog's parameter counts by part, 2 bytes in 16-bit. fp8 and bitsandbytes
  quantize the decoder's Linear layers; the embeddings, lm_head and the vision tower are counted
  16-bit, which over-counts if an engine quantizes them too.
* KV cache: 2 (K, V) x KV heads x head_dim x 2 bytes x layers per token; KV heads split over
  the tensor-parallel ranks and are replicated once the ranks outnumber them (vLLM).
* profiling peak: the MLP's gate/up output and activation plus the residual stream for the
  batched tokens of one step, and fp32 logits for every sequence sampled. vLLM's server default
  for ``max_num_batched_tokens`` is 2,048 on most GPUs, 8,192 on H100/H200-class cards and 16,384
  on GPUs of 160 GiB and more (vllm/engine/arg_utils.py in the 0.19-0.33 wheels, read for this
  toolkit); the budget follows those steps by total memory, with 256 sequences sampled.
* vision encoder profiling: as many max-size images as fit in one step's token budget (the
  per-prompt limit does not multiply them), their patches through one vision MLP beside the
  encoder's residual stream.
* CUDA graphs: bounded, not derived: 1.25 GiB (logs of 7-9 B models show 0.3-1.2 GiB at the
  default capture sizes); ``--enforce-eager`` drops the term.
* outside torch: the CUDA context this toolkit measured on H100/H200 (0.75 GB), plus NCCL's
  buffers with tensor parallelism (bounded at 0.4 GB).
* load peak of in-flight quantization: an engine that allocates the checkpoint's 16-bit Linear
  weights, loads them all and only then quantizes layer by layer (SGLang's ``--quantization fp8``,
  engines.toml ``loads_16_bit_first``) briefly holds the 16-bit weights of its rank next to the
  CUDA context, before any KV cache exists: that must fit in the free memory too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from provision.data.architecture import Architecture, architecture_of

if TYPE_CHECKING:
    from provision.data.catalog import ModelSpec

__all__ = [
    "CUDA_GRAPH_BYTES",
    "KV_BLOCK_TOKENS",
    "EngineBudget",
    "Workload",
    "batched_tokens",
    "engine_budget",
    "image_tokens",
    "kv_bytes_per_token",
    "load_peak_bytes",
    "weights_per_gpu",
]

_GIB = 2**30
#: Bytes per decoder Linear weight by precision. fp8: one byte (per-tensor scales are noise).
#: bitsandbytes 4-bit: half a byte plus one fp32 absmax per 64 weights.
_LINEAR_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "nf4": 0.5 + 4 / 64}
#: The paged KV cache hands out blocks of 16 tokens (vLLM's and SGLang's default block).
KV_BLOCK_TOKENS = 16
#: vLLM's default tokens per step by GPU size: (at least this many GiB, tokens), largest first.
BATCHED_TOKENS = ((160, 16384), (70, 8192), (0, 2048))
MAX_SEQS = 256
CUDA_GRAPH_BYTES = int(1.25 * _GIB)
CUDA_CONTEXT_BYTES = 750_000_000
NCCL_BYTES = 400_000_000
#: Left unclaimed when the share is taken from free memory: vLLM refuses a share above free.
FREE_MARGIN_BYTES = 256 * 2**20


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """What the server must hold: the longest sequence and the images a prompt may carry."""

    max_model_len: int
    images_per_prompt: int
    max_pixels: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineBudget:
    """One GPU under tensor parallelism, in bytes. ``share`` is the fraction of total memory taken."""

    total_bytes: int
    free_bytes: int
    share: float
    weights: int
    activations: int
    encoder: int
    cuda_graphs: int
    non_torch: int
    kv_per_token: int
    kv_bytes: int = 0

    @property
    def fixed(self) -> int:
        """Everything but the KV cache (the text and vision profiling passes run one after the other)."""
        return self.weights + max(self.activations, self.encoder) + self.cuda_graphs + self.non_torch

    @property
    def kv_tokens(self) -> int:
        """Whole blocks of tokens the cache holds."""
        return self.kv_bytes // self.kv_per_token // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS

    def required(self, tokens: int) -> int:
        """What this GPU must give the engine to serve one sequence of ``tokens``."""
        return self.fixed + tokens * self.kv_per_token

    def breakdown(self) -> dict[str, int]:
        return {"weights": self.weights, "activations": max(self.activations, self.encoder),
                "cuda_graphs": self.cuda_graphs, "overhead": self.non_torch, "kv_cache": self.kv_bytes}


def image_tokens(a: Architecture, max_pixels: int | None) -> int:
    """Visual tokens of one image at the pixel cap: pixels / (patch^2 x temporal x merge^2).

    The cap counts the temporal factor (a still image is repeated twice), which is why a
    1080x2400 screenshot under 5,000,000 pixels becomes 3,108 tokens (measured, serving.md).
    """
    if a.vision is None or max_pixels is None:
        return 0
    v = a.vision
    return max_pixels // (v["patch"] ** 2 * v["temporal_patch"] * v["merge"] ** 2)


def kv_bytes_per_token(a: Architecture, tp: int) -> int:
    """K and V of one token on one GPU: KV heads split over the ranks, at least one each."""
    heads_here = max(1, a.kv_heads // tp)
    return 2 * heads_here * a.head_dim * 2 * a.layers


def weights_per_gpu(model: ModelSpec, precision: str, tp: int) -> int:
    """The decoder split over ``tp`` ranks; the vision tower whole on each (encoder in data mode)."""
    parts = model.parameters_by_part
    decoder = parts.get("decoder_layers", 0)
    sixteen = parts.get("embed_tokens", 0) + parts.get("lm_head", 0) + parts.get("final_norm", 0)
    text = math.ceil((decoder * _LINEAR_BYTES[precision] + 2 * sixteen) / tp)
    return text + 2 * parts.get("vision", 0)


def load_peak_bytes(model: ModelSpec, tp: int) -> int:
    """What one rank holds while loading the whole 16-bit checkpoint before quantizing it."""
    return weights_per_gpu(model, "bf16", tp) + CUDA_CONTEXT_BYTES + (NCCL_BYTES if tp > 1 else 0)


def batched_tokens(total_bytes: int) -> int:
    """The tokens one profiling step batches on a GPU of ``total_bytes``."""
    return next(tokens for gib, tokens in BATCHED_TOKENS if total_bytes >= gib * _GIB)


def _text_activations(a: Architecture, tp: int, tokens: int) -> int:
    mlp = tokens * (3 * a.intermediate // tp) * 2
    residual = tokens * 4 * a.hidden * 2
    logits = MAX_SEQS * a.vocab * 4 * 2
    return mlp + residual + logits


def _encoder_activations(a: Architecture, workload: Workload, tokens: int) -> int:
    per_image = image_tokens(a, workload.max_pixels)
    if a.vision is None or per_image == 0 or workload.images_per_prompt == 0:
        return 0
    v = a.vision
    images = max(1, min(workload.images_per_prompt, max(tokens, per_image) // per_image))
    patches = images * per_image * v["merge"] ** 2
    return patches * (3 * v["intermediate"] + 4 * v["hidden"]) * 2 + images * per_image * a.hidden * 2


def engine_budget(model: ModelSpec, *, precision: str, tp: int, total_bytes: int, free_bytes: int,
                  default_share: float | None, workload: Workload, eager: bool = False,
                  arch: Architecture | None = None) -> EngineBudget:
    """One GPU's budget at the largest share its free memory allows (at most the engine's default).

    ``default_share`` None means the engine computes its share at start (SGLang): then the
    budget takes all free memory but the margin, and the renderer passes the share explicitly.
    ``arch``: the model's architecture when the caller has parsed it already (a search asks often).
    """
    a = architecture_of(model) if arch is None else arch
    ceiling = (free_bytes - FREE_MARGIN_BYTES) / total_bytes
    share = math.floor(min(ceiling, default_share if default_share is not None else ceiling) * 1000) / 1000
    budget = EngineBudget(
        total_bytes=total_bytes, free_bytes=free_bytes, share=max(0.0, share),
        weights=weights_per_gpu(model, precision, tp), activations=_text_activations(a, tp, batched_tokens(total_bytes)),
        encoder=_encoder_activations(a, workload, batched_tokens(total_bytes)), cuda_graphs=0 if eager else CUDA_GRAPH_BYTES,
        non_torch=CUDA_CONTEXT_BYTES + (NCCL_BYTES if tp > 1 else 0), kv_per_token=kv_bytes_per_token(a, tp),
    )
    return replace(budget, kv_bytes=max(0, int(budget.share * total_bytes) - budget.fixed))
