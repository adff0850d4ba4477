"""Typed, path-aware readers for JSON/TOML data.

Every loader (host profiles, matrices, lock files, model configs) reads through
these so that any wrong value becomes one ``InvalidInput`` naming the file and the
dotted path of the field, e.g. ``host.json: nvidia.gpus[1].memory_total_bytes: ...``.
"""

from __future__ import annotations

import builtins
import difflib
import json
import sys
import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

from packaging.version import InvalidVersion, Version

from provision.errors import InvalidInput

__all__ = ["MAX_INPUT_BYTES", "Fields", "UnknownKeyWarning", "read_json_file", "read_toml_file"]

#: Inputs larger than this are refused before parsing (a host profile is < 10 kB).
MAX_INPUT_BYTES = 8 * 1024 * 1024
_MAX_DEPTH = 64
_MAX_INT = 2**62


def _depth(value: object, limit: int) -> int:
    """Nesting depth, stopping early once ``limit`` is passed."""
    stack: list[tuple[object, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, Mapping):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _read_bytes(path: Path) -> bytes:
    source = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_BYTES:
            raise InvalidInput(source, "(file)", f"file is {size} bytes; the limit is {MAX_INPUT_BYTES}")
        return path.read_bytes()
    except IsADirectoryError:
        raise InvalidInput(source, "(file)", "is a directory, expected a file") from None
    except FileNotFoundError:
        raise InvalidInput(source, "(file)", "no such file") from None
    except OSError as exc:
        raise InvalidInput(source, "(file)", f"cannot read: {exc.strerror or exc}") from None


def _check_depth(source: str, data: object) -> None:
    if _depth(data, _MAX_DEPTH) > _MAX_DEPTH:
        raise InvalidInput(source, "(document)", f"nested deeper than {_MAX_DEPTH} levels")


def read_json_file(path: Path) -> Any:
    """Parse a JSON file or raise ``InvalidInput`` naming the line and column."""
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
        data = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise InvalidInput(str(path), "(document)", "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            str(path), "(document)", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except ValueError as exc:  # NaN/Infinity constants, or too deep for the decoder
        raise InvalidInput(str(path), "(document)", f"invalid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput(str(path), "(document)", f"nested deeper than {_MAX_DEPTH} levels") from None
    _check_depth(str(path), data)
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def read_toml_file(path: Path) -> dict[str, Any]:
    """Parse a TOML file or raise ``InvalidInput`` with the parser's message."""
    return read_toml(path)[0]


def read_toml(path: Path) -> tuple[dict[str, Any], bytes]:
    """``read_toml_file``, plus the bytes it parsed (for a digest without a second read)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    raw = _read_bytes(path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidInput(str(path), "(document)", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(str(path), "(document)", f"invalid TOML: {exc}") from None
    except RecursionError:
        raise InvalidInput(str(path), "(document)", f"nested deeper than {_MAX_DEPTH} levels") from None
    _check_depth(str(path), data)
    return data, raw


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


class UnknownKeyWarning(UserWarning):
    """A document has a key its reader does not know: ignored, as the contract says, but said.

    ``str()`` is ``<source>: <field>: unknown key, ignored[; did you mean <key>?]``; the CLI prints it
    on stderr as a ``warning:`` line.
    """

    def __init__(self, source: str, field: str, nearest: str | None) -> None:
        self.source, self.field, self.nearest = source, field, nearest
        hint = f"; did you mean {nearest}?" if nearest else ""
        super().__init__(f"{source}: {field}: unknown key, ignored{hint}")


class Fields:
    """A mapping read at a known place: ``Fields(data, "host.json", "nvidia")``.

    Each getter validates one key and raises ``InvalidInput`` with the full path.
    """

    __slots__ = ("data", "path", "source")

    # Once ``def str`` (``bool``, ``int``, ``list``) runs, the bare name means that method in the class
    # body, so signatures from there on spell the built-in types ``builtins.*``. The overloads say
    # what the checks guarantee: ``required=True`` or a non-None ``default`` never returns None.

    def __init__(self, data: object, source: str, path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise InvalidInput(source, path or "(document)", f"expected an object, got {_type_name(data)}")
        self.data: Mapping[str, Any] = data
        self.source = source
        self.path = path

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: str, problem: str) -> InvalidInput:
        return InvalidInput(self.source, self.where(key), problem)

    def item_fail(self, key: str, index: int, problem: str) -> InvalidInput:
        """The error for item ``index`` of the list under ``key``: ``path.key[index]``."""
        return InvalidInput(self.source, f"{self.where(key)}[{index}]", problem)

    def warn_unknown(self, known: Collection[str]) -> None:
        """Warn (``UnknownKeyWarning``) about every key not in ``known``, naming the nearest known one."""
        for key in self.data:
            if key not in known:
                near = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                warnings.warn(UnknownKeyWarning(self.source, self.where(str(key)), near[0] if near else None),
                              stacklevel=2)

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def _get(self, key: str, types: tuple[type, ...], expected: str, *, required: bool, default: Any) -> Any:
        if key not in self.data:
            if required:
                raise self.fail(key, "required key is missing")
            return default
        value = self.data[key]
        if value is None and not required:
            return default
        # bool is an int subclass in Python: never accept it where a number is meant.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise self.fail(key, f"expected {expected}, got {_type_name(value)}")
        return value

    @overload
    def str(
        self, key: builtins.str, *, required: Literal[True] = ..., default: builtins.str | None = ...
    ) -> builtins.str: ...
    @overload
    def str(self, key: builtins.str, *, required: builtins.bool, default: builtins.str) -> builtins.str: ...
    @overload
    def str(self, key: builtins.str, *, required: builtins.bool, default: None = ...) -> builtins.str | None: ...
    def str(
        self, key: builtins.str, *, required: builtins.bool = True, default: builtins.str | None = None
    ) -> builtins.str | None:
        value: builtins.str | None = self._get(key, (str,), "a string", required=required, default=default)
        if key in self.data and isinstance(value, str) and not value.strip():
            raise self.fail(key, "must not be empty")
        return value

    @overload
    def bool(
        self, key: builtins.str, *, required: Literal[True] = ..., default: builtins.bool | None = ...
    ) -> builtins.bool: ...
    @overload
    def bool(self, key: builtins.str, *, required: builtins.bool, default: builtins.bool) -> builtins.bool: ...
    @overload
    def bool(self, key: builtins.str, *, required: builtins.bool, default: None = ...) -> builtins.bool | None: ...
    def bool(
        self, key: builtins.str, *, required: builtins.bool = True, default: builtins.bool | None = None
    ) -> builtins.bool | None:
        value: builtins.bool | None = self._get(key, (bool,), "true or false", required=required, default=default)
        return value

    @overload
    def int(
        self, key: builtins.str, *, required: Literal[True] = ..., default: builtins.int | None = ...,
        minimum: builtins.int = ..., maximum: builtins.int = ...,
    ) -> builtins.int: ...
    @overload
    def int(
        self, key: builtins.str, *, required: builtins.bool, default: builtins.int,
        minimum: builtins.int = ..., maximum: builtins.int = ...,
    ) -> builtins.int: ...
    @overload
    def int(
        self, key: builtins.str, *, required: builtins.bool, default: None = ...,
        minimum: builtins.int = ..., maximum: builtins.int = ...,
    ) -> builtins.int | None: ...
    def int(
        self, key: builtins.str, *, required: builtins.bool = True, default: builtins.int | None = None,
        minimum: builtins.int = 0, maximum: builtins.int = _MAX_INT,
    ) -> builtins.int | None:
        value: builtins.int | None = self._get(key, (int,), "an integer", required=required, default=default)
        if value is not None and not minimum <= value <= maximum:
            raise self.fail(key, f"{value} is out of range [{minimum}, {maximum}]")
        return value

    @overload
    def version(self, key: builtins.str, *, required: Literal[True] = ...) -> Version: ...
    @overload
    def version(self, key: builtins.str, *, required: builtins.bool) -> Version | None: ...
    def version(self, key: builtins.str, *, required: builtins.bool = True) -> Version | None:
        text = self.str(key, required=required)
        if text is None:
            return None
        try:
            return Version(text)
        except InvalidVersion:
            raise self.fail(key, f"{text!r} is not a version") from None

    @overload
    def choice(
        self, key: builtins.str, choices: Sequence[builtins.str], *, required: Literal[True] = ...,
        default: builtins.str | None = ...,
    ) -> builtins.str: ...
    @overload
    def choice(
        self, key: builtins.str, choices: Sequence[builtins.str], *, required: builtins.bool, default: builtins.str,
    ) -> builtins.str: ...
    @overload
    def choice(
        self, key: builtins.str, choices: Sequence[builtins.str], *, required: builtins.bool, default: None = ...,
    ) -> builtins.str | None: ...
    def choice(
        self, key: builtins.str, choices: Sequence[builtins.str], *, required: builtins.bool = True,
        default: builtins.str | None = None,
    ) -> builtins.str | None:
        value = self.str(key, required=required, default=default)
        if value is not None and value not in choices:
            raise self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    @overload
    def obj(self, key: builtins.str, *, required: Literal[True] = ...) -> Fields: ...
    @overload
    def obj(self, key: builtins.str, *, required: builtins.bool) -> Fields | None: ...
    def obj(self, key: builtins.str, *, required: builtins.bool = True) -> Fields | None:
        value = self._get(key, (dict,), "an object", required=required, default=None)
        return None if value is None else Fields(value, self.source, self.where(key))

    def list(self, key: builtins.str, *, required: builtins.bool = True) -> builtins.list[Any]:
        value = self._get(key, (list,), "an array", required=required, default=[])
        return list(value)

    def objs(self, key: builtins.str, *, required: builtins.bool = True) -> builtins.list[Fields]:
        """An array of objects, each wrapped with its indexed path."""
        items = self.list(key, required=required)
        base = self.where(key)
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise InvalidInput(self.source, f"{base}[{i}]", f"expected an object, got {_type_name(item)}")
            out.append(Fields(item, self.source, f"{base}[{i}]"))
        return out

    def strs(self, key: builtins.str, *, required: builtins.bool = True) -> builtins.list[builtins.str]:
        items = self.list(key, required=required)
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise self.item_fail(key, i, f"expected a string, got {_type_name(item)}")
        return items
