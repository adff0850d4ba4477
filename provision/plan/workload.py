"""What one request holds, for the transformers path's memory budget: tokens and screenshots.

The phone agent sends one screenshot per request (the catalog's ``images_per_request``) and
asks the server to cap images at ``max_pixels`` (5,000,000 for AutoGLM, as Open-AutoGLM's
engine commands pass it). The image processor resizes every image to a grid of 28-pixel
squares (patch 14 x merge 2) whose pixel count, times the temporal factor 2 a still image is
repeated by, stays under the cap; each 2x2 group of patches becomes one visual token. Measured
with transformers 5.17 on an H200 (shared/notes/serving.md, docs/gpu-workload-fit.md): a
1080x2400 and a 1440x3200 screenshot both become a 168x74 patch grid under 5,000,000, 3,108
visual tokens. ``visual_tokens`` reproduces that rule; the planner budgets each image as a
``PHONE_SCREEN`` screenshot. Pure: no torch, no transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from provision.data.architecture import architecture_of
from provision.errors import InvalidInput

if TYPE_CHECKING:
    from provision.data.catalog import ModelSpec

__all__ = ["PHONE_SCREEN", "PROCESSOR_MAX_PIXELS", "Workload", "visual_tokens", "workload_for"]

#: The screenshot an image is budgeted as: a 1080x2400 phone (width, height). Under a 5 MP cap
#: every 9:20 phone (1080x2400, 1440x3200) gives the same grid; any aspect ratio gives at most
#: max_pixels / (2 x 14^2 x 2^2) tokens (3,188 at 5 MP, 2.6% above the phone's 3,108).
PHONE_SCREEN = (1080, 2400)
#: ``Glm4vImageProcessor``'s own cap (size["longest_edge"] = 28 * 28 * 15000) where the catalog sets none,
#: and its floor (size["shortest_edge"] = 112 * 112); transformers 5.x.
PROCESSOR_MAX_PIXELS = 11_760_000
PROCESSOR_MIN_PIXELS = 12_544
_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def visual_tokens(spec_or_config: Any, *, width: int, height: int, max_pixels: int | None = None) -> int:
    """Visual tokens of one ``width`` x ``height`` image under ``max_pixels`` (None: the processor's cap).

    The processor's resize rule: each side rounded to a multiple of ``patch x merge``; if the
    rounded frame, counted ``temporal`` times, exceeds the cap, both sides shrink by
    sqrt(temporal x width x height / cap) and round down; below the floor they grow and round up.
    0 for a model without a vision tower.
    """
    a = architecture_of(spec_or_config)
    if a.vision is None:
        return 0
    if width < 1 or height < 1:
        raise ValueError("an image has a positive width and height")
    v = a.vision
    factor, frames = v["patch"] * v["merge"], v["temporal_patch"]
    cap = PROCESSOR_MAX_PIXELS if max_pixels is None else max_pixels
    if min(width, height) < factor:  # tiny images are scaled up to one square first
        scale = max(factor / width, factor / height)
        width, height = int(width * scale), int(height * scale)
    w, h = round(width / factor) * factor, round(height / factor) * factor
    if frames * w * h > cap:
        beta = math.sqrt(frames * width * height / cap)
        w = max(factor, math.floor(width / beta / factor) * factor)
        h = max(factor, math.floor(height / beta / factor) * factor)
    elif frames * w * h < PROCESSOR_MIN_PIXELS:
        beta = math.sqrt(PROCESSOR_MIN_PIXELS / (frames * width * height))
        w = math.ceil(width * beta / factor) * factor
        h = math.ceil(height * beta / factor) * factor
    return (w // v["patch"]) * (h // v["patch"]) // v["merge"] ** 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """One request: ``context_tokens`` in all (prompt + answer), ``images`` of them screenshots."""

    context_tokens: int
    images: int = 0
    max_pixels: int | None = None
    tokens_per_image: int = 0

    @property
    def image_tokens(self) -> int:
        """The visual tokens among ``context_tokens``."""
        return self.images * self.tokens_per_image

    def describe(self) -> str:
        """``25,480 tokens incl. one 5.0 MP screenshot (3,108 visual tokens)``, or ``4,096 tokens of text``."""
        if not self.images:
            return f"{self.context_tokens:,} tokens of text"
        count = _WORDS[self.images] if self.images < len(_WORDS) else f"{self.images:,}"
        cap = PROCESSOR_MAX_PIXELS if self.max_pixels is None else self.max_pixels
        plural = "s" if self.images > 1 else ""
        each = f"{self.tokens_per_image:,} visual tokens" + (" each" if self.images > 1 else "")
        return f"{self.context_tokens:,} tokens incl. {count} {cap / 1e6:.1f} MP screenshot{plural} ({each})"


def workload_for(model: ModelSpec, *, context_tokens: int, images: int | None = None,
                 max_pixels: int | None = None) -> Workload:
    """The request the transformers path budgets: the catalog's images per request and pixel cap
    (``model.serve``), each overridable (``--images``, ``--max-pixels``); a local folder without
    serving facts is budgeted for text unless ``--images`` says otherwise.

    A ``--context`` too short for the catalog's screenshots budgets as many as fit (none below
    3,109 tokens for AutoGLM); ``--images`` that do not fit is bad input.

    :raises InvalidInput: images for a text-only model, ``--images`` beyond ``--context``, a pixel cap below
        the processor's floor.
    """
    serve = model.serve
    asked = images is not None
    if images is None:
        images = serve.images_per_request if serve is not None else 0
    if max_pixels is None and serve is not None:
        max_pixels = serve.max_pixels
    if images < 0:
        raise InvalidInput("--images", "images", f"{images} is negative")
    if max_pixels is not None and max_pixels < PROCESSOR_MIN_PIXELS:
        raise InvalidInput("--max-pixels", "max_pixels", f"{max_pixels} is below the processor's floor "
                                                         f"{PROCESSOR_MIN_PIXELS:,}")
    if images and not model.has_vision:
        raise InvalidInput("--images", "images", f"{model.name} is a text-only model and takes no images")
    if not images:
        return Workload(context_tokens=context_tokens)
    per_image = visual_tokens(model, width=PHONE_SCREEN[0], height=PHONE_SCREEN[1], max_pixels=max_pixels)
    fit = (context_tokens - 1) // per_image  # at least one text token beside the images
    if images > fit and asked:
        raise InvalidInput("--images", "images",
                           f"{images} screenshot(s) of {per_image:,} visual tokens do not fit in {context_tokens:,} "
                           f"tokens of context; raise --context or lower --images / --max-pixels")
    images = min(images, fit)  # the catalog's default yields to a short --context
    if not images:
        return Workload(context_tokens=context_tokens, tokens_per_image=per_image)
    return Workload(context_tokens=context_tokens, images=images, max_pixels=max_pixels, tokens_per_image=per_image)
