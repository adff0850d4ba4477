"""How the plan is served: the contract's ``serve`` object, typed, both ways.

``argv`` is the exact server command, no shell: every value in it was validated when the matrix
and catalog loaded (flag spellings, served names, JSON built here from integers) or is a number
the planner computed, and ``from_dict`` checks each element again before a renderer sees it.
Every plan carries one: vLLM and SGLang plans from ``provision.plan.engine_plan``, the others
``transformers serve`` (``transformers_serve`` below).

``serve.sh`` runs ``argv`` with two values replaced, so both must be findable: the value after
``--port`` (it is ``port``), and for vLLM and SGLang the model (``model_source``, once in argv).
A ``transformers serve`` command names the served model instead, which pins the server to that
name; ``serve.sh`` makes the name a folder that links to the weights (see ``templates/serve.sh.j2``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from provision.common.fields import Fields
from provision.data.engines import IMAGE_REF_RE
from provision.errors import InvalidInput

__all__ = ["ENGINES", "SERVE_PORT", "ModelLoad", "Serve", "model_load", "serve_load", "transformers_serve"]

#: The engines a plan can serve with.
ENGINES = ("vllm", "sglang", "transformers")
#: The port Open-AutoGLM's phone agent calls (``http://localhost:8000/v1``).
SERVE_PORT = 8000
#: An argv element: flags, numbers, model ids, paths, and the small JSON objects the planner writes.
_ARG_RE = re.compile(r'[A-Za-z0-9._:/=@+,{}"\[\] -]{1,200}')
#: ``transformers serve``'s 16-bit and 32-bit ``--dtype`` values, and its in-flight bitsandbytes modes.
_TRANSFORMERS_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_TRANSFORMERS_QUANT = {"int8": "bnb-8bit", "nf4": "bnb-4bit"}
_PRECISION_OF = {v: k for k, v in _TRANSFORMERS_QUANT.items()}


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """How a plan's model is loaded by transformers in process: by ``transformers serve`` and by the smoke test.

    ``dtype`` (``bfloat16``, ``float16``, ``float32``) is every weight bitsandbytes does not quantize;
    ``quantization`` is ``transformers serve``'s in-flight bitsandbytes mode (``bnb-4bit``, ``bnb-8bit``)
    or None. The server takes both as ``--dtype`` and ``--quantization`` (``argv``); the smoke test passes
    the same to ``from_pretrained`` with the server's own ``BitsAndBytesConfig`` for the mode. Neither sets
    bitsandbytes' compute dtype or skipped modules, which ``transformers serve`` has no flags for: both
    take transformers' defaults (nf4 computes in float32; the output embedding, ``lm_head``, stays
    unquantized, which is what the catalog's ``keep_16bit`` records for the memory estimate).
    """

    dtype: str
    quantization: str | None = None

    @property
    def precision(self) -> str:
        """The precision this loads in: the bitsandbytes mode's, else the dtype's (an engine's fp8 gives its 16-bit)."""
        if self.quantization is not None:
            return _PRECISION_OF[self.quantization]
        return next(p for p, dtype in _TRANSFORMERS_DTYPES.items() if dtype == self.dtype)

    @property
    def argv(self) -> tuple[str, ...]:
        """The server's load flags: ``--dtype`` always (``auto`` would pick bf16 on a GPU without it)."""
        return ("--dtype", self.dtype, *(("--quantization", self.quantization) if self.quantization else ()))


def model_load(precision: str, *, bf16: bool = True) -> ModelLoad:
    """The one place a plan's precision becomes load settings, for the server command and the smoke test.

    ``bf16``: every GPU the model is placed on computes in bf16 (compute capability 8.0 or newer); the
    unquantized parts of an int8 or nf4 model are then bfloat16 (the checkpoint's own type), else float16.
    An engine's ``fp8`` loads here in its 16-bit type (transformers has no in-flight fp8).

    :raises InvalidInput: an unknown precision.
    """
    if precision in _TRANSFORMERS_QUANT or precision == "fp8":
        return ModelLoad("bfloat16" if bf16 else "float16", _TRANSFORMERS_QUANT.get(precision))
    if precision not in _TRANSFORMERS_DTYPES:
        raise InvalidInput("plan", "precision", f"{precision!r} has no transformers load settings")
    return ModelLoad(_TRANSFORMERS_DTYPES[precision])


def serve_load(serve: Serve, precision: str) -> ModelLoad:
    """The load a plan's server command asks for, read back from ``serve.argv`` (the plan's one record of it).

    A ``transformers serve`` command names both flags; a vLLM or SGLang plan's ``--dtype`` gives the 16-bit
    type, and its precision the bitsandbytes mode the smoke test loads in process (an engine's fp8: none).
    """
    value = {flag: serve.argv[i + 1] for i, flag in enumerate(serve.argv[:-1]) if flag in ("--dtype", "--quantization")}
    if serve.engine == "transformers" and value.get("--dtype") in _TRANSFORMERS_DTYPES.values():
        return ModelLoad(value["--dtype"], value.get("--quantization"))
    return model_load(_PRECISION_OF.get(value.get("--quantization", ""), precision),
                      bf16=value.get("--dtype") != "float16")


@dataclass(frozen=True, slots=True, kw_only=True)
class Serve:
    """The server a plan runs; ``kv_cache_tokens`` is what the budget expects its cache to hold.

    ``model_source`` is the Hugging Face repo the weights come from; None for a model planned from a
    local folder, whose path stays out of the plan (``serve.sh`` then needs ``PROVISION_MODEL_PATH``).
    """

    engine: str
    engine_version: str
    port: int
    served_model_name: str
    max_model_len: int
    gpu_memory_utilization: float | None
    tensor_parallel_size: int
    quantization: str | None
    image: str | None
    argv: tuple[str, ...]
    kv_cache_tokens: int | None = None
    model_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "engine_version": self.engine_version, "port": self.port,
            "served_model_name": self.served_model_name, "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size, "quantization": self.quantization,
            "image": self.image, "argv": list(self.argv), "kv_cache_tokens": self.kv_cache_tokens,
            "model_source": self.model_source,
        }

    @property
    def port_index(self) -> int:
        """Where ``argv`` holds the port's value (``serve.sh`` puts ``PROVISION_SERVE_PORT`` there)."""
        return _slots(self.engine, self.argv, self.port, self.model_source)[0]

    @property
    def model_index(self) -> int | None:
        """Where ``argv`` names the model for vLLM and SGLang; None for ``transformers serve``."""
        return _slots(self.engine, self.argv, self.port, self.model_source)[1]

    @classmethod
    def from_dict(cls, f: Fields) -> Serve:
        """Read ``serve`` from its Fields; :raises InvalidInput: naming the field."""
        argv = tuple(f.strs("argv"))
        for i, arg in enumerate(argv):
            if not _ARG_RE.fullmatch(arg):
                raise f.item_fail("argv", i, f"{arg!r} is not a plain argument")
        if not argv:
            raise f.fail("argv", "the server command is empty")
        image = f.str("image", required=False)
        if image is not None and not IMAGE_REF_RE.fullmatch(image):
            raise f.fail("image", f"{image!r} is not an image reference like 'vllm/vllm-openai:v0.33.0' "
                                  "(optionally @sha256:<64 hex>)")
        share = f.data.get("gpu_memory_utilization")
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1):
            raise f.fail("gpu_memory_utilization", f"{share!r} is not a fraction in (0, 1]")
        source = f.str("model_source", required=False)
        if source is not None and not _ARG_RE.fullmatch(source):
            raise f.fail("model_source", f"{source!r} is not a plain argument")
        engine, port = f.choice("engine", ENGINES), f.int("port", minimum=1, maximum=65535)
        try:
            _slots(engine, argv, port, source)
        except InvalidInput as exc:
            raise f.fail("argv", exc.problem) from None
        return cls(
            engine=engine, engine_version=f.str("engine_version"),
            port=port, served_model_name=f.str("served_model_name"),
            max_model_len=f.int("max_model_len", minimum=1), gpu_memory_utilization=share,
            tensor_parallel_size=f.int("tensor_parallel_size", minimum=1, maximum=64),
            quantization=f.str("quantization", required=False), image=image, argv=argv,
            kv_cache_tokens=f.int("kv_cache_tokens", required=False, minimum=0), model_source=source,
        )


def _slots(engine: str, argv: tuple[str, ...], port: int, source: str | None) -> tuple[int, int | None]:
    """The indices of the port's value and of the model in ``argv``.

    :raises InvalidInput: (``plan``, ``serve.argv``) when either is missing, repeated or disagrees.
    """
    ports = [i + 1 for i, arg in enumerate(argv[:-1]) if arg == "--port"]
    if len(ports) != 1 or argv[ports[0]] != str(port):
        raise InvalidInput("plan", "serve.argv", f"must hold '--port {port}' once (serve.sh replaces that value)")
    if engine == "transformers":
        return ports[0], None
    models = [i for i, arg in enumerate(argv) if arg == source]
    if source is None or len(models) != 1:
        raise InvalidInput("plan", "serve.argv", f"must name model_source {source!r} once (serve.sh replaces it)")
    return ports[0], models[0]


def transformers_serve(*, served_model_name: str, model_source: str | None, transformers_version: str,
                       precision: str, device: str, context: int, bf16: bool = True) -> Serve:
    """``transformers serve`` (transformers[serving]) for a plan of the in-process stack.

    The command names the served model, which pins the server to that one model under that name
    (``/v1/models`` lists it, and a request for another name is refused): the name the phone agent
    sends. ``--device auto`` lets accelerate place the weights, over several GPUs by ``device_map``
    when one does not hold them, so ``tensor_parallel_size`` is 1. The server has no context limit of
    its own; ``max_model_len`` is the context the plan budgeted memory for. No ``--host``: ``serve.sh``
    adds it. The load flags are ``model_load``'s (``bf16``: the planned GPUs compute in bf16), which the
    smoke test loads with too.
    """
    argv = ["transformers", "serve", served_model_name, "--port", str(SERVE_PORT),
            *model_load(precision, bf16=bf16).argv, "--device", "cpu" if device == "cpu" else "auto"]
    return Serve(engine="transformers", engine_version=transformers_version, port=SERVE_PORT,
                 served_model_name=served_model_name, max_model_len=context, gpu_memory_utilization=None,
                 tensor_parallel_size=1, quantization=_TRANSFORMERS_QUANT.get(precision), image=None,
                 argv=tuple(argv), model_source=model_source)
