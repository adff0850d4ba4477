"""How the plan is served: the contract's ``serve`` object, typed, both ways.

``argv`` is the exact server command, no shell: every value in it was validated when the matrix
and catalog loaded (flag spellings, served names, JSON built here from integers) or is a number
the planner computed, and ``from_dict`` checks each element again before a renderer sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from provision.common.fields import Fields
from provision.data.engines import IMAGE_TAG_RE

__all__ = ["ENGINES", "Serve"]

#: The engines a plan can serve with.
ENGINES = ("vllm", "sglang", "transformers")
#: An argv element: flags, numbers, model ids, paths, and the small JSON objects the planner writes.
_ARG_RE = re.compile(r'[A-Za-z0-9._:/=@+,{}"\[\] -]{1,200}')


@dataclass(frozen=True, slots=True, kw_only=True)
class Serve:
    """The server a plan runs; ``kv_cache_tokens`` is what the budget expects its cache to hold."""

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

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine, "engine_version": self.engine_version, "port": self.port,
            "served_model_name": self.served_model_name, "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size, "quantization": self.quantization,
            "image": self.image, "argv": list(self.argv), "kv_cache_tokens": self.kv_cache_tokens,
        }

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
        if image is not None and not IMAGE_TAG_RE.fullmatch(image):
            raise f.fail("image", f"{image!r} is not an image reference like 'vllm/vllm-openai:v0.33.0'")
        share = f.data.get("gpu_memory_utilization")
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1):
            raise f.fail("gpu_memory_utilization", f"{share!r} is not a fraction in (0, 1]")
        return cls(
            engine=f.choice("engine", ENGINES), engine_version=f.str("engine_version"),
            port=f.int("port", minimum=1, maximum=65535), served_model_name=f.str("served_model_name"),
            max_model_len=f.int("max_model_len", minimum=1), gpu_memory_utilization=share,
            tensor_parallel_size=f.int("tensor_parallel_size", minimum=1, maximum=64),
            quantization=f.str("quantization", required=False), image=image, argv=argv,
            kv_cache_tokens=f.int("kv_cache_tokens", required=False, minimum=0),
        )
