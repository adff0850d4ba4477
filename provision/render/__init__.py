"""Stage 3, render: a plan into pinned, hashed environment files and their lock.

The public face: ``render_command`` (what ``provision render`` runs: plan, resolve, render,
write) with its ``RenderRequest`` and ``RenderResult``, and the pure core under it,
``render_files(RenderInputs)``, with the writer ``write_rendered``.
"""

from __future__ import annotations

from provision.render.files import RenderInputs, render_files, write_rendered
from provision.render.usecase import RenderRequest, RenderResult, render_command

__all__ = ["RenderInputs", "RenderRequest", "RenderResult", "render_command", "render_files", "write_rendered"]
