"""How much memory a GLM-family model needs: a pure estimate from its ``config.json``.

``provision.data.architecture`` rebuilds the model module by module from the config (the
same modules, names and shapes that transformers creates); this module prices each of them,
so weights are counted exactly for every precision instead of "parameters x bytes". What the
estimate assumes, so that a measurement can be compared with it:

* transformers >= 5 with ``attn_implementation="sdpa"``, batch 1 (``batch_size``),
  no padding, ``generate()`` computing logits for the last position only
  (``logits_to_keep=1``, which every GLM class supports).
* bf16/fp16: 2 bytes per parameter; fp32: 4. KV cache and activations use the compute
  dtype (4 bytes in fp32, else 2; bnb int8/nf4 compute in 16-bit).
* int8 = bitsandbytes LLM.int8 (``Linear8bitLt``, threshold 6): each quantized Linear holds
  an int8 weight plus one fp32 scale per output row (``SCB``).
* nf4 = bitsandbytes 4-bit: two weights per byte, one absmax per 64 weights; with double
  quantization (the default here) the absmax are 8-bit plus one fp32 absmax per 256 blocks.
* transformers+bnb quantize every ``nn.Linear`` except ``lm_head`` (``get_keys_to_not_convert``;
  glm4v has no ``_keep_in_fp32_modules``), so the vision tower *is* quantized. Embeddings,
  RMSNorm/LayerNorm, the Conv3d patch embedding and the Conv2d downsample stay 16-bit,
  and so do all biases.
* On CUDA, large quantized blocks are rounded the way the caching allocator rounds them
  (requests >= 10 MiB round up to 2 MiB; a remainder <= 1 MiB is not split off).

Calibration (GLM-4-9B text model, H100, torch 2.11, transformers 5.17,
shared/notes/gpu-measurements.md): torch allocated after load 18.80 / 6.73 / 10.69 GB for
bf16 / nf4 / int8; the estimator gives 18.80 / 6.71 / 10.71. Peak during a 160-token
generate was 18.85 / 6.86 / 10.74 GB, and ``peak_allocated`` stays above each.
Then the full-size AutoGLM-Phone-9B architecture on the same H100 at 156 to 24576 tokens
(docs/gpu-results.md; fitted to runs 1-2, run 3 predicted before it was measured): weights
within 0.6%, the text prefill workspace within 0.04 GB of torch's peak, ``total`` 0.07-0.61 GB
above nvidia-smi's view of the process in all 26 cases.
Refit (issue 13) on the H200 fit set, docs/gpu-workload-fit.md (bf16/nf4/int8 at 8,192 and
65,536 tokens of text, one and three 1080x2400 screenshots): the allocator slack's text share
now falls past a knee (``FRAGMENTATION_LONG``), images add their own fragmentation
(``IMAGE_FRAGMENTATION``) and keep their pixels and embeddings allocated (``_images_held``).
``total`` is 0.17-0.88 GB above nvidia-smi in those 12 cases and 0.07-0.69 GB above it in the
26 H100 cases (``python benchmarks/estimate_vs_measured.py``). The held-out set, predicted before
it was measured: docs/gpu-workload-heldout.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from provision.data.architecture import Architecture, Module, Unit, architecture_of
from provision.errors import InvalidInput
from provision.vocab import DEVICES, PRECISIONS, QUANTIZED

__all__ = [
    "CUDA_CONTEXT_BYTES",
    "DEVICES",
    "PRECISIONS",
    "GpuShare",
    "GpuSplit",
    "MemoryEstimate",
    "estimate_memory",
    "split_across_gpus",
]

#: CUDA context + loaded kernels (cuBLAS, sdpa), outside torch's allocator. Measured on an
#: H100 with torch 2.11.0+cu130: nvidia-smi grew 0.651 GB at the first CUDA tensor and
#: 0.727 GB (minus reserved) once a bf16 matmul, a Linear and sdpa had run. On the H200
#: (docs/gpu-workload-fit.md) nvidia-smi minus torch's reserved peak was 0.721-0.724 GB in bf16
#: and nf4 at every length, with and without images.
CUDA_CONTEXT_BYTES = 750_000_000
#: cuBLAS + cublasLt workspaces, allocated through torch's allocator (measured 32 MiB + ~1 MiB).
CUDA_WORKSPACE_BYTES = 40 * 2**20
#: Reserved-but-unallocated memory of torch's caching allocator and other memory outside it,
#: as a fraction of the weights. Calibrated on the full-size AutoGLM-Phone-9B architecture on an
#: H100 (docs/gpu-results.md): nvidia-smi's process view minus torch's allocated peak during
#: generate was 0.77-1.02 GB (bf16), 0.90-0.91 (nf4), 1.14-1.19 (int8), of which reserved minus
#: allocated was 0.29-0.39 GB. With the 0.75 GB context these fractions put the total at or above
#: nvidia-smi's view and within 1.5 GB of the allocated peak in every run-1 case (156 and 4096 tokens), each
#: fraction near the middle of the range that does so (bf16 1.3-3.5%, nf4 1.8-7.7%, int8 4.3-5.5%).
ALLOCATOR_SLACK = {"bf16": 0.024, "fp16": 0.024, "fp32": 0.024, "nf4": 0.05, "int8": 0.049}
#: ... unless the prefill is long or holds images: the caching allocator then keeps blocks it
#: cannot reuse reserved (``torch.cuda.max_memory_reserved() - max_memory_allocated()``, "R-A"
#: below). The slack is the larger of the weights term and ``_fragmentation``: the text part,
#: plus the image part when the prompt holds images.
#:
#: Text part: ``FRAGMENTATION`` of the decoder's 16-bit prefill workspace (``_Prefill.text_plain``)
#: up to ``FRAGMENTATION_KNEE``, then ``FRAGMENTATION_LONG`` of the rest. R-A over that workspace
#: was 0.44-0.62 at 8,192-24,576 tokens (H100, docs/gpu-results.md; H200 at 8,192:
#: 0.29-0.49, docs/gpu-workload-fit.md), and at 12,288 tokens nf4 and int8 needed 0.56; 24,576
#: tokens is a 3.5 GB workspace for AutoGLM-Phone-9B. Past it the share falls: at 65,536 tokens
#: (H200, 9.33 GB workspace) R-A was 2.98 GB in bf16 (0.32) but 4.32 in nf4 (0.46) and 4.03
#: in int8 (0.43): the quantized paths' dequantized weights and int8/int32 copies interleave
#: with the activations. The long shares put the total 0.77 (bf16), 0.54 (nf4) and 0.88 GB
#: (int8) above nvidia-smi there; the former single 0.6 put it 1.3-2.6 GB above.
FRAGMENTATION = 0.6
FRAGMENTATION_KNEE = 3_500_000_000
FRAGMENTATION_LONG = {"bf16": 0.28, "fp16": 0.28, "fp32": 0.28, "nf4": 0.47, "int8": 0.47}
#: Image part: the vision tower's pass leaves blocks sized by its patches in the cache, which
#: the decoder's differently sized tensors reuse only in part. H200 fit set, 1080x2400
#: screenshots (12,432 patches each) with 1,000 text tokens: R-A was 0.55 / 0.96 / 0.65 GB
#: (bf16 / nf4 / int8) with one screenshot and 1.37 / 1.54 / 1.67 with three, against
#: 0.29 / 0.18 / 0.34 and 0.57 / 0.50 / 0.34 for text prompts of 4,096 and 8,192 tokens.
#: Beyond the text part (0.35 / 0.88 GB at those contexts) this needed 0.14-0.59 GB with one
#: image and 0.46-0.63 with three; a fixed 0.70 GB plus 8 kB per patch (0.80 / 1.00 GB) covers
#: both with 0.21 GB or more to spare. Whether the two parts add up with a long text history
#: as well was not in the fit set (see docs/gpu-workload-heldout.md).
IMAGE_FRAGMENTATION = 700_000_000
IMAGE_FRAGMENTATION_PER_PATCH = 8_000
#: Memory outside torch's allocator beyond the CUDA context: bitsandbytes' LLM.int8 path held
#: 0.05-0.07 GB more there than bf16/nf4 (nvidia-smi minus reserved: 0.80 vs 0.73 GB; on the
#: H200 0.789-0.791 GB).
CONTEXT_EXTRA = {"int8": 50_000_000}
#: Off CUDA: a Python process with torch + transformers + tokenizer (not measured, a round figure)
#: plus 2% allocator fragmentation.
CPU_RUNTIME_BYTES = 1_000_000_000
CPU_SLACK = 0.02
#: bitsandbytes 4-bit block sizes (CUDA defaults) and transformers' bnb max_memory factor.
NF4_BLOCK = 64
NF4_NESTED_BLOCK = 256
BNB_MAX_MEMORY_FACTOR = 0.90

_MIB = 2**20


# ---------------------------------------------------------------- bytes


def _skipped(name: str, keep: Sequence[str]) -> bool:
    """transformers' rule: a module stays unquantized if a skip key names it or one of its parents."""
    dotted = f".{name}."
    return any(f".{key}." in dotted or name.startswith(f"{key}.") for key in keep)


def _quantized_weight_bytes(weight: int, rows: int, precision: str, double_quant: bool) -> int:
    if precision == "int8":
        return weight + 4 * rows
    blocks = math.ceil(weight / NF4_BLOCK)
    if double_quant:
        return math.ceil(weight / 2) + blocks + 4 * math.ceil(blocks / NF4_NESTED_BLOCK) + 4
    return math.ceil(weight / 2) + 4 * blocks


def _rounding(size: int) -> int:
    """Bytes the CUDA caching allocator adds to a block of ``size`` bytes (large-pool rule)."""
    if size < 10 * _MIB:
        return 0
    rest = -size % (2 * _MIB)
    return rest if rest <= _MIB else 0


@dataclass(frozen=True, slots=True)
class _Opts:
    precision: str
    device: str
    keep: tuple[str, ...]
    double_quant: bool


def _is_quantized(m: Module, o: _Opts) -> bool:
    return o.precision in QUANTIZED and m.kind == "linear" and not _skipped(m.name, o.keep)


def _module_bytes(m: Module, o: _Opts) -> tuple[int, int]:
    """(bytes held, bytes accelerate's device map counts for it)."""
    if o.precision == "fp32":
        return 4 * (m.weight + m.bias), 4 * (m.weight + m.bias)
    if _is_quantized(m, o):
        packed = m.weight if o.precision == "int8" else math.ceil(m.weight / 2)  # the weight's own bytes
        q = _quantized_weight_bytes(m.weight, m.rows, o.precision, o.double_quant)
        if o.device == "cuda":
            q += _rounding(packed)
        return q + 2 * m.bias, packed + 2 * m.bias
    return 2 * (m.weight + m.bias), 2 * (m.weight + m.bias)


# ---------------------------------------------------------------- estimate


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryEstimate:
    """Bytes one device needs. ``total`` is what must be free (nvidia-smi's view on CUDA).

    ``peak_allocated`` (weights + kv_cache + activations) is what
    ``torch.cuda.max_memory_allocated()`` should stay under during ``generate``.
    """

    precision: str
    device: str
    context_tokens: int
    weights: int
    kv_cache: int
    activations: int
    overhead: int
    weights_by_part: dict[str, int] = field(default_factory=dict)
    overhead_parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    @property
    def peak_allocated(self) -> int:
        return self.weights + self.kv_cache + self.activations

    @property
    def breakdown(self) -> dict[str, int]:
        """The plan's ``memory.breakdown``."""
        return {"weights": self.weights, "kv_cache": self.kv_cache, "activations": self.activations,
                "overhead": self.overhead}


def _check(precision: str, device: str, context_tokens: int, batch_size: int, image_tokens: int) -> None:
    if precision not in PRECISIONS:
        raise InvalidInput("--precision", "precision", f"{precision!r} is not one of {', '.join(PRECISIONS)}")
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not one of {DEVICES}")
    if not 1 <= context_tokens <= 2**24:
        raise InvalidInput("--context", "context", f"{context_tokens} is out of range [1, {2**24}]")
    if batch_size < 1 or image_tokens < 0 or image_tokens > context_tokens:
        raise ValueError("batch_size must be >= 1 and 0 <= image_tokens <= context_tokens")


def _int8_workspace(quantized: Sequence[Module], vectors: int) -> int:
    """LLM.int8 beside one Linear's 16-bit output, for ``vectors`` input tokens or patches: the
    int32 accumulator (4 bytes per output feature) and the int8 copy of the input (1 byte per
    input feature), for the Linear where they are largest."""
    return vectors * max(4 * m.rows + m.weight // m.rows for m in quantized)


@dataclass(frozen=True, slots=True)
class _Prefill:
    """What one prefill over some units needs beside the weights and the KV cache."""

    peak: int  # torch's allocated peak above weights + KV cache
    text_plain: int  # the decoder's 16-bit workspace (what the allocator fragments; see FRAGMENTATION)
    patches: int  # vision patches encoded on this device (0: no image, or the tower lives elsewhere)


def _images_held(a: Architecture, image_tokens: int, cb: int) -> int:
    """Bytes an image prompt keeps alive through the whole prefill: the processor's fp32
    ``pixel_values`` (in_channels x temporal x patch^2 values per patch, merge^2 patches per
    visual token) and the merger's output, the visual tokens' embeddings in the compute dtype.
    Fit set (docs/gpu-workload-fit.md): with three 1080x2400 screenshots (9,324 visual tokens)
    torch's peak minus weights, KV cache and the text term was 0.258 GB in bf16 and nf4; this
    gives 0.252 GB (0.046 / 0.10 measured vs 0.084 GB for one screenshot)."""
    v = a.vision
    if v is None:
        return 0
    per_patch = v["in_channels"] * v["temporal_patch"] * v["patch"] ** 2 * 4
    return image_tokens * (v["merge"] ** 2 * per_patch + v["out_hidden"] * cb)


def _activations(
    a: Architecture, units: Sequence[Unit], o: _Opts, tokens: int, batch: int, image_tokens: int
) -> _Prefill:
    """Peak transient bytes of one prefill over ``units`` (layers run one at a time), the
    decoder's 16-bit part of it, and the vision patches encoded here.

    A decoder layer holds its input and residuals (``hidden``) while one phase runs: attention,
    the MLP's activation (gate_up output, act(gate), product), or under nf4 one Linear's output
    next to its weight dequantized to 16-bit. LLM.int8 adds the int32 accumulator and the int8
    copy of the input of its largest Linear. Checked against an H100 at 1024-24576 tokens
    (docs/gpu-results.md) and an H200 at 8192 and 65536 (docs/gpu-workload-fit.md): within
    0.04 GB of ``max_memory_allocated`` minus weights and KV cache for text prompts in every
    precision.

    With images the vision tower runs first, over every patch of every image (one pass), then
    the decoder over the whole context; the device that holds the tower also holds the pixels and
    the visual embeddings through both (``_images_held``). The vision block's phases mirror the
    decoder's; under int8 its Linears' LLM.int8 workspace is over patches, the merger's over
    visual tokens.
    """
    cb = 4 if o.precision == "fp32" else 2
    t = tokens * batch
    prefill = tokens > 1
    peak = plain = 0
    if any(u.decoder_layers for u in units):
        hidden = 4 * t * a.hidden * cb  # residual, normed input, block output, next residual
        qkv = t * (a.heads + 2 * a.kv_heads) * a.head_dim * cb
        attn = qkv + 3 * t * a.heads * a.head_dim * cb  # K and V repeated to all heads for sdpa, output
        mlp = t * 4 * a.intermediate * cb  # gate_up output, act(gate), act*up
        plain = hidden + max(attn, mlp)
        quantized = [m for u in units if u.decoder_layers for m in u.modules if _is_quantized(m, o)]
        phases = [attn, mlp]
        if prefill and o.precision == "nf4":
            phases += [t * m.rows * cb + m.weight * cb for m in quantized]
        peak = hidden + max(phases)
        if prefill and o.precision == "int8" and quantized:
            peak += _int8_workspace(quantized, t)
    patches = 0
    if image_tokens and a.vision and any(u.part == "vision" for u in units):
        v = a.vision
        visual = image_tokens * batch
        patches = visual * v["merge"] ** 2
        block = 3 * patches * v["hidden"] * cb + max(
            patches * 4 * v["hidden"] * cb + 2 * patches * v["hidden"] * 4,  # qkv + out, fp32 rotary q/k
            3 * patches * v["out_hidden"] * cb,  # gate, up, product
        )
        merger = visual * (2 * v["out_hidden"] + 3 * v["intermediate"]) * cb
        quantized = [m for u in units if u.part == "vision" for m in u.modules if _is_quantized(m, o)]
        in_blocks = [m for m in quantized if ".blocks." in m.name]
        in_merger = [m for m in quantized if ".blocks." not in m.name]
        if quantized and o.precision == "nf4":
            block += max(m.weight for m in in_blocks) * cb if in_blocks else 0
            merger += max(m.weight for m in in_merger) * cb if in_merger else 0
        elif quantized:
            block += _int8_workspace(in_blocks, patches) if in_blocks else 0
            merger += _int8_workspace(in_merger, visual) if in_merger else 0
        held = _images_held(a, visual, cb)
        peak = max(peak, block, merger) + held
    if any(u.part == "lm_head" for u in units):
        logits = batch * a.vocab * (cb + 3 * 4)  # last-position logits, fp32 copy, scores, probs
        peak, plain = peak + logits, plain + logits
    if o.device == "cuda":
        peak += CUDA_WORKSPACE_BYTES
    return _Prefill(peak=peak, text_plain=plain, patches=patches)


def _fragmentation(pre: _Prefill, precision: str) -> int:
    """What the caching allocator keeps reserved beyond the allocated peak after a long or image prefill."""
    text = FRAGMENTATION * min(pre.text_plain, FRAGMENTATION_KNEE) + FRAGMENTATION_LONG[precision] * max(
        0, pre.text_plain - FRAGMENTATION_KNEE)
    image = IMAGE_FRAGMENTATION + IMAGE_FRAGMENTATION_PER_PATCH * pre.patches if pre.patches else 0
    return int(text + image)


def _estimate_units(
    a: Architecture, units: Sequence[Unit], o: _Opts, tokens: int, batch: int, image_tokens: int
) -> MemoryEstimate:
    by_part: dict[str, int] = {}
    for u in units:
        for m in u.modules:
            by_part[m.part or u.part] = by_part.get(m.part or u.part, 0) + _module_bytes(m, o)[0]
    weights = sum(by_part.values())
    cb = 4 if o.precision == "fp32" else 2
    layers = sum(u.decoder_layers for u in units)
    kv = tokens * batch * layers * a.kv_bytes_per_token_layer * cb
    pre = _activations(a, units, o, tokens, batch, image_tokens)
    activations = pre.peak
    if o.device == "cuda":
        slack = max(int(weights * ALLOCATOR_SLACK[o.precision]), _fragmentation(pre, o.precision))
        overhead = {"cuda_context": CUDA_CONTEXT_BYTES + CONTEXT_EXTRA.get(o.precision, 0), "allocator_slack": slack}
    else:
        overhead = {"runtime": CPU_RUNTIME_BYTES, "allocator_slack": int(weights * CPU_SLACK)}
    return MemoryEstimate(
        precision=o.precision, device=o.device, context_tokens=tokens, weights=weights, kv_cache=kv,
        activations=activations, overhead=sum(overhead.values()),
        weights_by_part=by_part, overhead_parts=overhead,
    )


def _keep_for(spec_or_config: Any, precision: str, keep_16bit: Sequence[str] | None) -> Sequence[str] | None:
    """An explicit ``keep_16bit`` wins; else a ``ModelSpec``'s catalog entry; else transformers' default."""
    if keep_16bit is not None:
        return keep_16bit
    skip = getattr(spec_or_config, "skip_modules", None)
    return (skip(precision) or None) if callable(skip) else None


def _opts(precision: str, device: str, keep_16bit: Sequence[str] | None, double_quant: bool) -> _Opts:
    return _Opts(precision, device, tuple(keep_16bit) if keep_16bit is not None else ("lm_head",), double_quant)


def estimate_memory(
    spec_or_config: Any,
    *,
    precision: str,
    context_tokens: int,
    device: str = "cuda",
    batch_size: int = 1,
    image_tokens: int = 0,
    keep_16bit: Sequence[str] | None = None,
    double_quant: bool = True,
) -> MemoryEstimate:
    """Memory to load the whole model on one device and generate up to ``context_tokens``.

    ``spec_or_config``: a ``ModelSpec`` (its ``config``), a config mapping, or an ``Architecture``.
    ``image_tokens``: how many of the context tokens are image tokens (after the 2x2 merge);
    sizes the vision tower's workspace. ``keep_16bit``: Linear modules bnb must skip (default
    ``["lm_head"]``, transformers' own choice; add ``"model.visual"`` to keep the vision tower 16-bit).

    :raises InvalidInput: unknown precision, a context out of range, or a bad config.
    """
    _check(precision, device, context_tokens, batch_size, image_tokens)
    a = architecture_of(spec_or_config)
    o = _opts(precision, device, _keep_for(spec_or_config, precision, keep_16bit), double_quant)
    return _estimate_units(a, a.units, o, context_tokens, batch_size, image_tokens)


# ---------------------------------------------------------------- multi-GPU


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuShare:
    """The units one GPU holds, and what that costs it."""

    index: int
    units: tuple[str, ...]
    decoder_layers: tuple[int, int]  # [first, last) decoder layer indices; (0, 0) when none
    estimate: MemoryEstimate
    free_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSplit:
    """A layer-granular placement over GPUs. ``fits`` is False when some unit found no room."""

    fits: bool
    precision: str
    shares: tuple[GpuShare, ...] = ()
    max_memory: dict[int, int] = field(default_factory=dict)
    #: module name -> GPU, exactly this placement, for ``from_pretrained(device_map=...)``.
    device_map: dict[str, int] = field(default_factory=dict)
    unplaced: tuple[str, ...] = ()

    @property
    def gpus(self) -> tuple[int, ...]:
        return tuple(s.index for s in self.shares)

    @property
    def required_bytes(self) -> int:
        return sum(s.estimate.total for s in self.shares)


def split_across_gpus(
    spec_or_config: Any,
    *,
    precision: str,
    context_tokens: int,
    free_bytes: Sequence[int] | Mapping[int, int],
    batch_size: int = 1,
    image_tokens: int = 0,
    keep_16bit: Sequence[str] | None = None,
    double_quant: bool = True,
) -> GpuSplit:
    """Fill GPUs in order with whole units (vision tower, embeddings, decoder layers, head).

    Each GPU pays its own CUDA context, allocator slack, KV cache for its layers and a full
    activation workspace; the first holds the embeddings (and the vision tower), the last the
    final norm and ``lm_head``. GPUs left empty are not used. ``max_memory`` is meant for
    ``from_pretrained(device_map="auto", max_memory=...)``: each used GPU but the last gets
    exactly its planned bytes as accelerate counts them (quantized weights at 1 or 0.5 byte,
    divided by transformers' bnb factor 0.9; GPU 0 also gets room for the largest unit, which
    accelerate holds back there); the last GPU gets what it has left.

    :raises InvalidInput: as ``estimate_memory``.
    """
    _check(precision, "cuda", context_tokens, batch_size, image_tokens)
    a = architecture_of(spec_or_config)
    o = _opts(precision, "cuda", _keep_for(spec_or_config, precision, keep_16bit), double_quant)
    frees = dict(free_bytes) if isinstance(free_bytes, Mapping) else dict(enumerate(free_bytes))
    units = list(a.units)

    def estimate(us: Sequence[Unit]) -> MemoryEstimate:
        return _estimate_units(a, us, o, context_tokens, batch_size, image_tokens)

    placed, pos = _fill(units, frees, estimate)
    if pos < len(units):
        return GpuSplit(fits=False, precision=precision, unplaced=tuple(u.name for u in units[pos:]))
    shares, max_memory = _shares(placed, frees, units, o)
    return GpuSplit(fits=True, precision=precision, shares=shares, max_memory=max_memory,
                    device_map=_device_map(placed))


#: One used GPU: its index, the units it holds, and their estimate.
_Placed = tuple[int, list[Unit], MemoryEstimate]


def _fill(units: Sequence[Unit], frees: Mapping[int, int],
          estimate: Callable[[Sequence[Unit]], MemoryEstimate]) -> tuple[list[_Placed], int]:
    """Give each GPU, in index order, as many of the next units as fit; returns how far it got."""
    placed: list[_Placed] = []
    pos = 0
    for gpu in sorted(frees):
        if pos == len(units):
            break
        take: list[Unit] = []
        est: MemoryEstimate | None = None
        while pos < len(units):
            trial = estimate([*take, units[pos]])
            if trial.total > frees[gpu]:
                break
            take.append(units[pos])
            pos += 1
            est = trial
        if est is not None:  # a GPU that cannot hold even the next unit is skipped
            placed.append((gpu, take, est))
    return placed, pos


def _device_map(placed: Sequence[_Placed]) -> dict[str, int]:
    """Module name -> GPU for exactly this placement."""
    device_map: dict[str, int] = {}
    for gpu, us, _ in placed:
        for u in us:
            if u.part == "lm_head":  # the final norm travels with the head
                device_map.update((m.name, gpu) for m in u.modules)
            else:
                device_map[u.name] = gpu
    # The rotary embedding holds only buffers; it runs once per forward, beside the first layer.
    first_layer = next(name for name in device_map if ".layers." in name)
    device_map[first_layer.split("layers.")[0] + "rotary_emb"] = device_map[first_layer]
    return device_map


def _shares(placed: Sequence[_Placed], frees: Mapping[int, int], units: Sequence[Unit],
            o: _Opts) -> tuple[tuple[GpuShare, ...], dict[int, int]]:
    """Each used GPU's share and its ``max_memory`` budget, as accelerate counts bytes."""
    counted = {u.name: sum(_module_bytes(m, o)[1] for m in u.modules) for u in units}
    largest = max(counted.values())
    factor = BNB_MAX_MEMORY_FACTOR if o.precision in QUANTIZED else 1.0
    shares, max_memory = [], {}
    start = 0
    for n, (gpu, us, est) in enumerate(placed):
        layers = sum(u.decoder_layers for u in us)
        shares.append(GpuShare(index=gpu, units=tuple(u.name for u in us), estimate=est, free_bytes=frees[gpu],
                               decoder_layers=(start, start + layers) if layers else (0, 0)))
        start += layers
        if n == len(placed) - 1:
            budget = frees[gpu] - (est.total - est.weights)
        else:
            budget = sum(counted[u.name] for u in us) + (largest if n == 0 else 0)
        max_memory[gpu] = math.ceil(budget / factor)
    return tuple(shares), max_memory
