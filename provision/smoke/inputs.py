"""The smoke test's inputs: the model's processors, its chat template, a text and an image prompt.

Prompts go through the checkpoint's own chat template so the token counts are the ones a user
gets; when a processor cannot be built (transformers 5.x without torchvision), the tokenizer and
the PIL image processor are used directly. torch, numpy and PIL are imported inside functions.
"""

from __future__ import annotations

import json
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
    """What turns prompts into model inputs, and how it was obtained (for the report)."""

    processor: Any  # the model's AutoProcessor, or None
    tokenizer: Any
    image_processor: Any  # None for text-only models
    how: str

    @property
    def template_owner(self) -> Any:
        """Whoever carries the chat template: the processor where there is one."""
        return self.processor or self.tokenizer


def load_processors(path: Path, vision: bool) -> Processors:
    """The model's own processor where it can be built, else the tokenizer (+ image processor).

    transformers 5.x cannot build Glm4vProcessor without torchvision (its video processor needs
    it), so then the tokenizer and the PIL image processor are used directly and the image
    tokens are expanded here.
    """
    import transformers

    if vision:
        try:
            proc = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
            return Processors(processor=proc, tokenizer=proc.tokenizer, image_processor=proc.image_processor,
                              how=type(proc).__name__)  # fmt: skip
        except (ImportError, ValueError, TypeError, AttributeError, OSError) as exc:
            reason = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else type(exc).__name__
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_proc = _pil_image_processor(transformers, path)
        how = f"{type(tokenizer).__name__} + {type(image_proc).__name__} (AutoProcessor unavailable: {reason})"
        return Processors(processor=None, tokenizer=tokenizer, image_processor=image_proc, how=how)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return Processors(processor=None, tokenizer=tokenizer, image_processor=None, how=type(tokenizer).__name__)


def _pil_image_processor(transformers: Any, path: Path) -> Any:
    """The PIL backend of the folder's image processor (transformers 5.17's AutoImageProcessor
    itself needs torchvision; 5.24's falls back to PIL on its own)."""
    try:
        declared = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8"))
        name = str(declared.get("image_processor_type", "")).removesuffix("Fast").removesuffix("Pil")
    except (OSError, ValueError, AttributeError):
        name = ""
    pil = getattr(transformers, f"{name}Pil", None) if name else None
    try:
        if pil is not None:
            return pil.from_pretrained(path, local_files_only=True)
        return transformers.AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (ImportError, OSError, ValueError) as exc:
        raise SmokeError(f"cannot load the image processor of {path}: {exc}; install torchvision matching torch") from exc


def _render(template_owner: Any, messages: list[dict[str, Any]]) -> str:
    """The chat template's text; GLM-4's layout for checkpoints that ship without one."""
    if getattr(template_owner, "chat_template", None):
        return str(template_owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    parts = []
    for m in messages:
        content = m["content"]
        if not isinstance(content, str):
            content = "".join(
                "<|begin_of_image|><|image|><|end_of_image|>" if p["type"] == "image" else p.get("text", "") for p in content
            )
        parts.append(f"<|{m['role']}|>\n{content}")
    return "[gMASK]<sop>" + "".join(parts) + "<|assistant|>\n"


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
    """Text+image inputs; with no processor the image tokens are expanded to match the grid."""
    content = [{"type": "image"}, {"type": "text", "text": _IMAGE_PROMPT}]
    image = _synthetic_image()
    text = _render(procs.template_owner, [{"role": "user", "content": content}])
    image_id = int(model_config.image_token_id)
    if procs.processor is not None:
        encoded = dict(procs.processor(text=[text], images=[image], return_tensors="pt"))
        if "mm_token_type_ids" not in encoded:  # processors before 5.x's default return it only on request
            encoded["mm_token_type_ids"] = (encoded["input_ids"] == image_id).long()
        return encoded
    return _expanded_image_inputs(procs, text, image, image_id)


def _expanded_image_inputs(procs: Processors, text: str, image: Any, image_id: int) -> dict[str, Any]:
    """What the processor would build: one ``<|image|>`` per merged patch, then the pixels."""
    import torch

    vision = procs.image_processor(images=[image], return_tensors="pt")
    merge = int(getattr(procs.image_processor, "merge_size", 2))
    count = int(vision["image_grid_thw"][0].prod()) // (merge * merge)
    image_token = "<|image|>"  # noqa: S105 - a vocabulary entry, not a secret
    if text.count(image_token) != 1:
        raise SmokeError(f"the chat template produced {text.count(image_token)} image placeholders, expected 1")
    text = text.replace(image_token, image_token * count)
    ids = torch.tensor([procs.tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)
    if int((ids == image_id).sum()) != count:
        raise SmokeError(f"tokenizer does not map {image_token} to the config's image_token_id {image_id}")
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == image_id).long(),
        "pixel_values": vision["pixel_values"],
        "image_grid_thw": vision["image_grid_thw"],
    }


def snippet(tokenizer: Any, ids: Any) -> str:
    """The start of the generated text, for the report; ids outside the vocabulary are dropped."""
    valid = [int(i) for i in ids if 0 <= int(i) < len(tokenizer)]
    text: str = tokenizer.decode(valid, skip_special_tokens=True)
    return text.encode("utf-8", "replace").decode("utf-8")[:_SNIPPET_CHARS]
