"""An engine choice turned into a plan: pins, the server command, memory and the reasons.

The engine fixes torch exactly (its pin, from PyPI, whose default build carries the CUDA the
choice was checked against), transformers inside its range, and the server's flags: the ones the
model's users pass (from the catalog's ``serve`` table, spelled as ``engines.toml`` says per engine)
and the ones the planner computed (memory share, context, tensor-parallel size, precision).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from packaging.version import Version

from provision.plan.budget import gb
from provision.plan.compat import compatibility_warning
from provision.plan.document import Placement, Plan, Reason
from provision.plan.engine import ENGINE_LABELS, EngineSearch, TorchLimits, choose_engine, merge_explanations
from provision.plan.engine_memory import Workload
from provision.plan.rejections import Rule, Told
from provision.plan.serve import SERVE_PORT, Serve
from provision.vocab import PYPI_INDEX

if TYPE_CHECKING:
    from provision.data.catalog import ModelServe, ModelSpec
    from provision.data.engines import Engine
    from provision.data.matrix import Matrix
    from provision.host.profile import HostProfile
    from provision.plan.engine import EngineChoice

__all__ = ["ENGINE_FALLBACK", "SERVE_PORT", "NoEngine", "engine_plan", "serve_with_engine", "server_argv"]


def _flag(engine: Engine, name: str) -> str:
    return engine.flags[name]


def _share(choice: EngineChoice) -> float:
    """vLLM's fraction covers everything; SGLang's covers weights and the KV pool only."""
    b = choice.budget
    if choice.engine.memory.fraction == "computed":
        return round((b.weights + b.kv_bytes) / b.total_bytes, 3)
    return b.share


def _model_flags(engine: Engine, serve: ModelServe) -> list[str]:
    """The flags the model's users pass, in the engine's spelling; absent settings and flags are skipped."""
    out: list[str] = []
    if engine.name == "vllm":
        if serve.images_per_prompt:
            out += [_flag(engine, "limit_mm_per_prompt"), json.dumps({"image": serve.images_per_prompt}, separators=(",", ":"))]
        if serve.max_pixels:
            out += [_flag(engine, "mm_processor_kwargs"), json.dumps({"max_pixels": serve.max_pixels}, separators=(",", ":"))]
        if serve.chat_template_content_format:
            out += [_flag(engine, "chat_template_content_format"), serve.chat_template_content_format]
        if serve.mm_processor_cache_type:
            out += [_flag(engine, "mm_processor_cache_type"), serve.mm_processor_cache_type]
    else:
        if serve.max_pixels:
            config = {"image": {"max_pixels": serve.max_pixels}}
            out += [_flag(engine, "mm_process_config"), json.dumps(config, separators=(",", ":"))]
        if serve.sglang_chat_template:
            out += [_flag(engine, "chat_template"), serve.sglang_chat_template]
    return out


def _source_of(model: ModelSpec) -> str:
    """What the server loads: the repo id (engine plans are for catalog models, which have one)."""
    return model.repo or str(model.path)


def server_argv(choice: EngineChoice, model: ModelSpec, serve: ModelServe) -> tuple[str, ...]:
    """The exact server command: entrypoint, model, the planned values, then the model's own flags."""
    engine = choice.engine
    source = _source_of(model)
    argv = [*engine.entrypoint, *([engine.model_flag, source] if engine.model_flag else [source])]
    argv += [_flag(engine, "served_model_name"), serve.served_model_name,
             _flag(engine, "max_model_len"), str(choice.max_model_len),
             _flag(engine, "memory_fraction"), f"{_share(choice):g}",
             _flag(engine, "tensor_parallel_size"), str(choice.tensor_parallel_size),
             _flag(engine, "dtype"), engine.precision.dtypes[choice.compute_precision],
             _flag(engine, "port"), str(SERVE_PORT)]
    if choice.quantization is not None:
        argv += [_flag(engine, "quantization"), choice.quantization.method]
    if serve.images_per_prompt and serve.mm_encoder_tp_mode == "data":  # as Open-AutoGLM passes it, any TP size
        argv += engine.tensor_parallel.encoder_data_args
    return (*argv, *_model_flags(engine, serve))


def _packages(matrix: Matrix, choice: EngineChoice) -> dict[str, str]:
    release = choice.release
    packages = {choice.engine.package: str(release.version), "torch": str(release.torch),
                "transformers": str(choice.transformers)}
    if release.torchvision is not None:
        packages["torchvision"] = str(release.torchvision)
    needs = choice.quantization.requires if choice.quantization is not None else None
    if needs is not None:
        newest = next((b.version for b in matrix.bitsandbytes if needs.specifier.contains(b.version)), None)
        if newest is not None:
            packages[needs.name] = str(newest)
    return packages


def _reasons(host: HostProfile, model: ModelSpec, choice: EngineChoice, search: EngineSearch,
             python: str, better: Sequence[Engine]) -> tuple[Reason, ...]:
    release, engine, b = choice.release, choice.engine, choice.budget
    label = ENGINE_LABELS.get(engine.name, engine.name)
    engine_why = f"{label} {release.version}: every rule holds on this host"
    for other in better:  # the engines preferred to this one, each passed over with its reason
        why = search.explain(other)
        engine_why += f"; {why}" if why else ""
    passed = search.explain(engine)
    if passed and release.version != engine.releases[0].version:
        engine_why += f"; {passed}"
    gpus = ", ".join(f"GPU {i}" for i in choice.gpus)
    return (
        Reason(decision="engine", choice=f"{engine.name} {release.version}", why=engine_why),
        Reason(decision="python", choice=python,
               why=f"the host's Python is {host.python}; {label} {release.version} needs {release.requires_python}"),
        Reason(decision="torch", choice=str(release.torch), why=f"{label} {release.version} pins torch=={release.torch}"),
        Reason(decision="variant", choice=choice.variant.name,
               why=f"{choice.driver_why}; torch {release.torch}'s PyPI build is {choice.variant.name}; "
                   f"{label}'s wheel is built for CUDA {release.cuda}; installed from PyPI"),
        Reason(decision="precision", choice=choice.precision, why=_precision_why(choice)),
        Reason(decision="device", choice="cuda",
               why=f"{gb(b.required(choice.max_model_len))} per GPU for {choice.max_model_len:,} tokens fits in "
                   f"{b.share:g} of {gb(b.total_bytes)} on {gpus} (KV cache for {b.kv_tokens:,} tokens)"),
        Reason(decision="transformers", choice=str(choice.transformers),
               why=f"{label} {release.version} needs {release.transformers}; {model.name} needs "
                   f">= {model.min_transformers}; the newest release in the matrix inside both"),
    )


def _precision_why(choice: EngineChoice) -> str:
    if choice.precision in ("bf16", "fp16"):
        if choice.tensor_parallel_size > 1:
            return f"16-bit split by tensor parallelism over {choice.tensor_parallel_size} GPUs, before quantizing"
        return "the checkpoint's 16-bit weights fit" + ("" if choice.precision == "bf16" else " (no bf16 below 8.0)")
    assert choice.quantization is not None
    return f"16-bit does not fit; {choice.quantization.kind}"


def engine_plan(host: HostProfile, matrix: Matrix, model: ModelSpec, choice: EngineChoice, search: EngineSearch,
                *, python: str, better: Sequence[Engine] = (), target: int | None = None) -> Plan:
    """The plan that serves ``model`` with ``choice``; ``better`` are the engines tried before it.

    ``target``: the context the search set out to serve (default: the model's serving context); a
    choice below it carries a warning with the context it serves and why.
    """
    assert model.serve is not None
    b, release = choice.budget, choice.release
    tp = choice.tensor_parallel_size
    reasons = _reasons(host, model, choice, search, python, better)
    placement = Placement(device="cuda", gpus=choice.gpus, precision=choice.precision,
                          required_bytes=b.required(choice.max_model_len) * tp,
                          available_bytes=int(b.share * b.total_bytes) * tp, breakdown=b.breakdown(),
                          why=next(r.why for r in reasons if r.decision == "device"))
    warnings = []
    if not choice.native:
        warnings.append(compatibility_warning(f"{ENGINE_LABELS.get(choice.engine.name)} {release.version}'s CUDA "
                                              f"{release.cuda} wheel", host.os, matrix, release.cuda))
    target = model.serve.context if target is None else target
    if choice.max_model_len < target:
        warnings.append(f"context lowered to {choice.max_model_len:,} tokens: {target:,} needs "
                        f"{gb(b.required(target))} per GPU in {choice.precision}, {gb(b.share * b.total_bytes)} "
                        f"({b.share:g} of {gb(b.total_bytes)}) is what {ENGINE_LABELS.get(choice.engine.name)} may "
                        "take, and nothing the search tried holds it whole")
    serve = Serve(engine=choice.engine.name, engine_version=str(release.version), port=SERVE_PORT,
                  served_model_name=model.serve.served_model_name, max_model_len=choice.max_model_len,
                  gpu_memory_utilization=_share(choice), tensor_parallel_size=tp,
                  quantization=choice.quantization.method if choice.quantization else None,
                  image=release.image_ref, argv=server_argv(choice, model, model.serve), kv_cache_tokens=b.kv_tokens,
                  model_source=_source_of(model))
    return Plan(model_id=model.id, model_repo=model.repo, parameters=model.parameters, python=python,
                torch_version=Version(str(release.torch)), variant=choice.variant.name, index_url=PYPI_INDEX,
                placement=placement, packages=_packages(matrix, choice), warnings=tuple(warnings),
                reasons=reasons, cuda=choice.variant.cuda, serve=serve)


@dataclass(frozen=True, slots=True)
class NoEngine:
    """Why no engine serves here (a sentence per engine passed over) and what would change that.

    ``merged``: the same reasons with each told once (``vLLM 0.33.0 and SGLang 0.5.23 passed over: ...``),
    for the engine decision's reason; ``told``: the host facts they state (see ``EngineSearch.told``).
    """

    reasons: tuple[str, ...]
    remedies: tuple[str, ...] = ()
    merged: tuple[str, ...] = ()
    told: Told = field(default_factory=Told)


#: What always applies when an asked-for engine cannot serve.
ENGINE_FALLBACK = "--engine auto serves with transformers where no engine runs; --engine transformers plans for it directly"


def _glibc_remedy(host: HostProfile, matrix: Matrix, model: ModelSpec, engines: Sequence[Engine], *, python: str,
                  workload: Workload, precision: str | None, search: EngineSearch, limits: TorchLimits,
                  floor: int | None) -> str | None:
    """The glibc that gets an engine onto this host, when glibc is what stops it: the search rerun without the check."""
    if host.glibc is None or not search.of(Rule.GLIBC):
        return None
    relaxed = choose_engine(replace(host, glibc=None), matrix, model, engines, python=python, workload=workload,
                            search=EngineSearch(), forced_precision=precision, limits=limits, floor=floor)
    if relaxed is None:
        return None  # something else binds too: a newer glibc alone gives no plan
    label = ENGINE_LABELS.get(relaxed.engine.name, relaxed.engine.name)
    return (f"use a Linux with glibc >= {relaxed.release.glibc} (this host has {host.glibc}): {label} "
            f"{relaxed.release.version} runs here then; or serve from the engine's container image, whose own glibc "
            "is used (only the kernel and the NVIDIA driver come from the host)")


def serve_with_engine(host: HostProfile, matrix: Matrix, model: ModelSpec, *, engine: str, python: str,
                      context: int | None, precision: str | None, limits: TorchLimits | None = None) -> Plan | NoEngine:
    """The engine plan ``engine`` (``auto``, ``vllm``, ``sglang``) asks for, or why each engine was passed over.

    ``context``: ``--context``, served exactly or not at all; None serves the model's serving
    context, lowered to what fits (down to ``MIN_SERVING_CONTEXT``) when nothing holds it whole.
    """
    engines = [e for e in matrix.engines.engines if engine in ("auto", e.name)]
    if model.serve is None:
        items = [(f"{ENGINE_LABELS.get(e.name, e.name)} passed over",
                  f"{model.name} has no serving facts in the catalog (a local model directory)") for e in engines]
        return NoEngine(tuple(f"{who}: {why}" for who, why in items), (ENGINE_FALLBACK,), merge_explanations(items))
    workload = Workload(max_model_len=context or model.serve.context, images_per_prompt=model.serve.images_per_prompt,
                        max_pixels=model.serve.max_pixels)
    search = EngineSearch()
    limits = limits or TorchLimits()
    choice = choose_engine(host, matrix, model, engines, python=python, workload=workload, search=search,
                           forced_precision=precision, limits=limits, floor=context)
    if choice is None:
        glibc = _glibc_remedy(host, matrix, model, engines, python=python, workload=workload, precision=precision,
                              search=search, limits=limits, floor=context)
        return NoEngine(tuple(t for t in (search.explain(e) for e in engines) if t),
                        (*([glibc] if glibc else []), ENGINE_FALLBACK),
                        merge_explanations([item for e in engines for item in search.explain_items(e)]),
                        search.told(engines))
    return engine_plan(host, matrix, model, choice, search, python=python,
                       better=engines[:engines.index(choice.engine)], target=workload.max_model_len)
