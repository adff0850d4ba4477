"""Validators and quoting for every value that reaches a rendered file.

Two lines of defence, both applied by ``provision.render.files``:

1. *Validate*: values with a known shape (model ids, versions, index URLs, package
   names, labels, paths) must match a strict allow-list pattern, else ``InvalidInput``.
   A value that passes cannot hold quotes, whitespace, ``$``, backticks or ``;``.
2. *Quote for the target language* anyway, so a validator mistake still cannot turn
   data into code: ``sh`` (single quotes), PowerShell (single quotes, ``'`` doubled),
   YAML/JSON (JSON-escaped double-quoted strings, ASCII only), Dockerfile exec form
   (a JSON array on one line: a newline can never start a new instruction).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from provision.errors import InvalidInput

__all__ = [
    "check_index_url",
    "check_label",
    "check_model_id",
    "check_package_name",
    "check_path",
    "check_repo_id",
    "check_version",
    "docker_exec",
    "ps_quote",
    "sh_quote",
    "yaml_str",
]

# ASCII only: unicode look-alikes (fullwidth ';', RTL marks, homoglyphs) never match.
_MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_PKG_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")  # PEP 508 name
_VERSION_RE = re.compile(r"^[0-9][A-Za-z0-9.+!_-]{0,63}$")
_URL_RE = re.compile(r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/+-]*)?$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PATH_RE = re.compile(r"^/?[A-Za-z0-9._+@-]+(/[A-Za-z0-9._+@-]+)*/?$")


def _fail(source: str, field: str, value: object, what: str) -> InvalidInput:
    return InvalidInput(source, field, f"{value!r} is not {what}")


def _text(source: str, field: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInput(source, field, f"expected a string, got {type(value).__name__}")
    return value


def check_model_id(value: object, *, source: str = "plan", field: str = "model.id") -> str:
    """A catalog id: lower-case ASCII letters, digits, ``.``, ``_``, ``-``."""
    text = _text(source, field, value)
    if not _MODEL_ID_RE.fullmatch(text):
        raise _fail(source, field, text, "a model id ([a-z0-9._-], starting with a letter or digit)")
    return text


def check_repo_id(value: object, *, source: str = "plan", field: str = "model.repo") -> str:
    """A Hugging Face repo id ``owner/name``."""
    text = _text(source, field, value)
    if not _REPO_ID_RE.fullmatch(text) or ".." in text:
        raise _fail(source, field, text, "a Hugging Face repo id (owner/name)")
    return text


def check_package_name(value: object, *, source: str = "plan", field: str = "packages") -> str:
    """A PEP 508 distribution name, returned canonicalized (``Foo_Bar`` -> ``foo-bar``)."""
    text = _text(source, field, value)
    if not _PKG_RE.fullmatch(text):
        raise _fail(source, field, text, "a PEP 508 package name")
    return canonicalize_name(text)


def check_version(value: object, *, source: str = "plan", field: str = "version") -> str:
    """A PEP 440 version kept exactly as written (``2.9.1+cu128``)."""
    text = _text(source, field, value)
    if not _VERSION_RE.fullmatch(text):
        raise _fail(source, field, text, "a version")
    try:
        Version(text)
    except InvalidVersion:
        raise _fail(source, field, text, "a PEP 440 version") from None
    return text


def check_index_url(value: object, *, source: str = "plan", field: str = "torch.index_url") -> str:
    """An https index URL with no quotes, whitespace, query, fragment or credentials."""
    text = _text(source, field, value)
    if not _URL_RE.fullmatch(text):
        raise _fail(source, field, text, "an https:// index URL (no credentials, query or whitespace)")
    return text


def check_label(value: object, *, source: str = "render", field: str = "label") -> str:
    """A runner label, image label value or similar short token."""
    text = _text(source, field, value)
    if not _LABEL_RE.fullmatch(text):
        raise _fail(source, field, text, "a label ([A-Za-z0-9._-], at most 64 characters)")
    return text


def check_path(value: object, *, source: str = "render", field: str = "path") -> str:
    """A filesystem path made of safe characters only (no spaces, quotes, ``$``, ``..``)."""
    text = _text(source, field, value)
    if not _PATH_RE.fullmatch(text) or any(part == ".." for part in text.split("/")):
        raise _fail(source, field, text, "a path of [A-Za-z0-9._+@-] segments without '..'")
    return text


def sh_quote(value: object) -> str:
    """POSIX shell word: ``shlex.quote`` (single quotes; safe for bash and sh)."""
    return shlex.quote(str(value))


def ps_quote(value: object) -> str:
    """PowerShell verbatim string: single quotes, ``'`` and its Unicode look-alikes doubled.

    PowerShell treats U+2018/U+2019/U+201A/U+201B as single quotes too, so each is
    doubled like ``'``; nothing inside a verbatim string is expanded.
    """
    text = str(value)
    out = []
    for ch in text:
        out.append(ch)
        if ch in "'\u2018\u2019\u201a\u201b":
            out.append(ch)
    return "'" + "".join(out) + "'"


def yaml_str(value: object) -> str:
    """A YAML/JSON double-quoted scalar (JSON is a YAML subset); ASCII-escaped."""
    return json.dumps(str(value), ensure_ascii=True)


def docker_exec(argv: Sequence[str]) -> str:
    """Dockerfile exec form: a one-line JSON array (newlines become ``\\n`` escapes)."""
    return json.dumps([str(a) for a in argv], ensure_ascii=True)
