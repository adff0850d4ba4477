"""engines.toml's emitter: the file is written by code so that a refresh can rewrite it byte-stably.

The refresh of engine pins from the registry (``provision matrix refresh``) joins this module;
remarks live in ``note``/``unverified`` keys and the leading comment block is kept verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from provision.errors import InvalidInput

__all__ = [
    "dump_engines_toml",
    "split_header",
]

#: Tables written as ``[a.b]`` headers and arrays written as ``[[a.b]]``; every other table is inline.
_TABLES = frozenset({"meta", "engine.flags", "engine.precision", "engine.tensor_parallel", "engine.memory"})
_ARRAYS = frozenset({"engine", "engine.quantization", "engine.excluded", "engine.release"})
#: A release's keys in the order a reader expects them (a refresh adds keys; this keeps them in place).
RELEASE_ORDER = (
    "version", "date", "torch", "torchvision", "torchaudio", "transformers", "requires_python", "pythons",
    "platforms", "glibc", "wheel_glibc", "cuda", "archs", "kernel", "gpu_memory_utilization", "image",
    "image_cuda", "variants", "unverified", "note", "source",
)
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def split_header(text: str) -> tuple[str, str]:
    """The leading comment block (kept verbatim by a refresh) and the rest of the file."""
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and (lines[n].startswith("#") or not lines[n].strip()):
        n += 1
    return "".join(lines[:n]).rstrip("\n") + "\n" if n else "", "".join(lines[n:])


def _string(value: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t"}
    out = []
    for ch in value:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v, f'{where}.{k}')}" for k, v in value.items()) + " }"
    raise InvalidInput("engines.toml", where, f"cannot write a value of type {type(value).__name__}")


def _ordered(path: str, table: Mapping[str, Any]) -> list[str]:
    """Release keys in RELEASE_ORDER (unknown ones after, as found); other tables as they come."""
    if path != "engine.release":
        return list(table)
    known = [k for k in RELEASE_ORDER if k in table]
    return known + [k for k in table if k not in RELEASE_ORDER]


def _emit(lines: list[str], path: str, table: Mapping[str, Any]) -> None:
    """Scalars and inline values first, then sub-tables and arrays of tables, in key order."""
    keys = _ordered(path, table)
    children = {k: f"{path}.{k}" if path else k for k in keys}
    nested = [k for k in keys if children[k] in _TABLES or children[k] in _ARRAYS]
    for key in keys:
        if key not in nested:
            lines.append(f"{_key(key)} = {_value(table[key], children[key])}")
    for key in nested:
        child = children[key]
        items: Iterable[Any] = table[key] if child in _ARRAYS else [table[key]]
        for item in items:
            if not isinstance(item, Mapping):
                raise InvalidInput("engines.toml", child, f"expected a table, got {type(item).__name__}")
            lines += ["", f"[[{child}]]" if child in _ARRAYS else f"[{child}]"]
            _emit(lines, child, item)


def dump_engines_toml(data: Mapping[str, Any], *, header: str = "") -> str:
    """engines.toml text for ``data``: fixed table layout, same input, same bytes."""
    lines: list[str] = [header.rstrip("\n"), ""] if header else []
    _emit(lines, "", data)
    return "\n".join(lines) + "\n"
