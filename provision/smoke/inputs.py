"""The smoke test's inputs: the model's processor, its chat template, a text and an image prompt.

The processor is loaded exactly as ``transformers serve`` loads it (``AutoProcessor.from_pretrained``),
and prompts go through the checkpoint's own chat template, as the server applies it. The server has no
fallback for either (a glm4v processor without torchvision, a checkpoint without a chat template), so
neither has the smoke test: what would stop the server fails the test. torch, numpy and PIL are imported
inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provision.errors import InvalidInput, SmokeError

__all__ = ["MIN_PROMPT_TOKENS", "Processors", "image_inputs", "load_processors", "snippet", "text_inputs"]

MIN_PROMPT_TOKENS = 16

_TEXT_PROMPT = "You are controlling a phone. In one sentence, what would you tap to open the settings?"
_IMAGE_PROMPT = "Describe this screenshot in one sentence."
# Repeated to fill long prompts: plain prose, so real tokenizers give realistic token counts.
_FILLER = (
    "The phone agent reads the screen, decides on one action, taps or types, and then looks again. "
    "It keeps a short memory of what it has done so far and stops when the task is finished. "
)
_IMAGE_SIDE = 224  # 16x16 patches of 14 px -> 64 image tokens after the 2x2 merge
_SNIPPET_CHARS = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Processors:
    """What ``AutoProcessor`` gave: the processor (None when it is the tokenizer itself), and its class names."""

    processor: Any
    tokenizer: Any
    image_processor: Any  # None for text-only models
    how: str

    @property
    def template_owner(self) -> Any:
        """Whoever carries the chat template: the processor where there is one."""
        return self.processor or self.tokenizer


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_processors(path: Path, vision: bool) -> Processors:
    """The model's processor as ``transformers serve`` loads it: ``AutoProcessor.from_pretrained`` (offline here).

    For a text model that is the tokenizer; a vision model's must carry an image processor, or the
    server could not take the phone's screenshot.

    :raises SmokeError: ``AutoProcessor`` fails (glm4v's processor needs torchvision) or gives no image
        processor for a vision model: the server would fail the same way.
    """
    import transformers

    try:
        proc = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
    except (ImportError, ValueError, TypeError, AttributeError, OSError) as exc:
        raise SmokeError(f"the processor of {path} does not load as transformers serve loads it "
                         f"(AutoProcessor.from_pretrained): {type(exc).__name__}: {_first_line(exc)}") from exc
    if isinstance(proc, transformers.PreTrainedTokenizerBase):
        if vision:
            raise SmokeError(f"AutoProcessor gives only a tokenizer ({type(proc).__name__}) for the vision model in "
                             f"{path}: the server could not read images")
        return Processors(processor=None, tokenizer=proc, image_processor=None, how=type(proc).__name__)
    image_processor = getattr(proc, "image_processor", None)
    if vision and image_processor is None:
        raise SmokeError(f"{type(proc).__name__} from {path} has no image processor: the server could not read images")
    how = f"{type(proc).__name__} ({type(proc.tokenizer).__name__}" + (
        f" + {type(image_processor).__name__})" if image_processor is not None else ")")
    return Processors(processor=proc, tokenizer=proc.tokenizer, image_processor=image_processor, how=how)


def _render(template_owner: Any, messages: list[dict[str, Any]]) -> str:
    """The chat template's text, as the server renders a chat request.

    :raises SmokeError: the checkpoint has no chat template (the server's chat completions need one).
    """
    if not getattr(template_owner, "chat_template", None):
        raise SmokeError(f"{type(template_owner).__name__} has no chat template: the server cannot answer chat "
                         "requests with it")
    return str(template_owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def text_inputs(procs: Processors, vision: bool, prompt_tokens: int | None) -> dict[str, Any]:
    """A chat prompt; with ``prompt_tokens`` padded with prose to exactly that many tokens."""
    import torch

    tokenizer = procs.tokenizer
    marker = "\u241fPROVISION_FILL\u241f"
    body = marker if prompt_tokens else _TEXT_PROMPT
    content: Any = [{"type": "text", "text": body}] if vision else body
    text = _render(procs.template_owner, [{"role": "user", "content": content}])
    if not prompt_tokens:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        pre, _, post = text.partition(marker)
        head = tokenizer(pre, add_special_tokens=False)["input_ids"]
        tail = tokenizer(post, add_special_tokens=False)["input_ids"]
        room = prompt_tokens - len(head) - len(tail)
        if room < 0:
            raise InvalidInput("--context", "(value)", f"too short for the chat prompt ({len(head) + len(tail)})")
        one = tokenizer(_FILLER, add_special_tokens=False)["input_ids"]
        filler = tokenizer(_FILLER * (room // max(len(one), 1) + 2), add_special_tokens=False)["input_ids"]
        ids = head + filler[:room] + tail
    input_ids = torch.tensor([ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _synthetic_image() -> Any:
    """A fixed, non-trivial RGB picture (gradients plus seeded noise): no files needed."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:_IMAGE_SIDE, 0:_IMAGE_SIDE]
    base = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.float64) * (255 / _IMAGE_SIDE)
    noisy = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, mode="RGB") if _pil_takes_mode() else Image.fromarray(noisy)


def _pil_takes_mode() -> bool:
    import PIL

    return int(PIL.__version__.split(".")[0]) < 11  # the mode argument is deprecated since Pillow 11


def image_inputs(procs: Processors, model_config: Any) -> dict[str, Any]:
    """Text+image inputs through the model's own processor, as the server builds them."""
    content = [{"type": "image"}, {"type": "text", "text": _IMAGE_PROMPT}]
    text = _render(procs.template_owner, [{"role": "user", "content": content}])
    encoded = dict(procs.processor(text=[text], images=[_synthetic_image()], return_tensors="pt"))
    if "mm_token_type_ids" not in encoded:  # processors before 5.x's default return it only on request
        encoded["mm_token_type_ids"] = (encoded["input_ids"] == int(model_config.image_token_id)).long()
    return encoded


def snippet(tokenizer: Any, ids: Any) -> str:
    """The start of the generated text, for the report; ids outside the vocabulary are dropped."""
    valid = [int(i) for i in ids if 0 <= int(i) < len(tokenizer)]
    text: str = tokenizer.decode(valid, skip_special_tokens=True)
    return text.encode("utf-8", "replace").decode("utf-8")[:_SNIPPET_CHARS]
