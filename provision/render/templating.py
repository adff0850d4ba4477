"""The one Jinja environment every rendered file goes through, and its quoting filters.

``StrictUndefined`` makes a missing view value an error; no autoescape, because the outputs are
shell, PowerShell, YAML and Dockerfile text, each quoted by its own filter (``shquote``,
``psquote``, ``yamlstr``, ``dockerexec``) from ``provision.common.quoting``. Shared by
``provision.render.files`` and ``provision.render.deploy``.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from provision.common.quoting import docker_exec, ps_quote, sh_quote, yaml_str
from provision.common.resources import data_dir

if TYPE_CHECKING:
    from collections.abc import Mapping

    import jinja2

__all__ = ["render_template"]


@cache
def _environment(template_dir: str) -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 (shell/YAML/Dockerfile text, quoted per language by filters)
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(shquote=sh_quote, psquote=ps_quote, yamlstr=yaml_str, dockerexec=docker_exec)
    return env


def render_template(name: str, view: Mapping[str, Any]) -> bytes:
    """``templates/<name>`` rendered with ``view``, as UTF-8 bytes."""
    text = _environment(str(data_dir("templates"))).get_template(name).render(**view)
    return text.encode("utf-8")
