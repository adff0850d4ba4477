"""Stage 3, render: a plan into pinned, hashed environment files and their lock.

The public face: ``render_command`` (what ``provision render`` runs: plan, resolve, render,
write) with its ``RenderRequest`` and ``RenderResult``, and the pure core under it,
``render_files(RenderInputs)``, with the writer ``write_rendered``. They load on first use,
so ``provision plan``, which reads ``render.sources``, does not import the renderer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provision.common.lazy import lazy_names

if TYPE_CHECKING:
    from provision.render.files import RenderInputs, render_files, write_rendered
    from provision.render.usecase import RenderRequest, RenderResult, render_command

__all__ = ["RenderInputs", "RenderRequest", "RenderResult", "render_command", "render_files", "write_rendered"]

_HOMES = {
    "RenderInputs": "provision.render.files",
    "render_files": "provision.render.files",
    "write_rendered": "provision.render.files",
    "RenderRequest": "provision.render.usecase",
    "RenderResult": "provision.render.usecase",
    "render_command": "provision.render.usecase",
}

__getattr__ = lazy_names(__name__, _HOMES)
