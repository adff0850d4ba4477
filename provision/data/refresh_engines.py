"""Backend of the engines part of ``provision matrix refresh``: re-read engine pins from the registry.

A release's pins (torch, torchvision, torchaudio, transformers, the SGLang kernel), its
Requires-Python, the Pythons it has wheels for, its platforms and its manylinux floor are all in
the registry's package metadata, so a refresh re-reads exactly those and keeps every fact that
needed a person (CUDA build, kernel architectures, images, memory defaults, notes). New releases
are added with what the metadata says and a note naming what a person must still add; the
loader then refuses the file until they do, as the torch refresh does. engines.toml is written by
this module's emitter, so the same data gives the same bytes and the leading comment block is kept.

Parsing, merging, emitting and diffing are pure; the client passed in (``pypi.PypiClient``) is the
only I/O, and tests give a recorded one.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Any, Protocol

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from provision.common.fields import Fields
from provision.data.engines import ENGINE_PLATFORMS, admits_transformers_5, known_from_files, parse_engines
from provision.data.pypi import IndexFile, parse_simple_json
from provision.data.refresh import platform_of_tag, render_diff
from provision.errors import InvalidInput, ProvisionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "ENGINES_LAYOUT",
    "EnginesRefresh",
    "MetadataSource",
    "ReleaseFacts",
    "TomlLayout",
    "check_refreshed",
    "dump_engines_toml",
    "dump_toml",
    "merge_engines",
    "metadata_facts",
    "refresh_engines",
    "release_files",
    "split_header",
    "wheel_facts",
]

#: Tables written as ``[a.b]`` headers and arrays written as ``[[a.b]]``; every other table is inline.
_TABLES = frozenset({"meta", "engine.flags", "engine.precision", "engine.tensor_parallel", "engine.memory"})
_ARRAYS = frozenset({"engine", "engine.quantization", "engine.excluded", "engine.release"})
#: A release's keys in the order a reader expects them (a refresh adds keys; this keeps them in place).
RELEASE_ORDER = (
    "version", "date", "torch", "torchvision", "torchaudio", "transformers", "requires_python", "pythons",
    "platforms", "glibc", "wheel_glibc", "cuda", "archs", "kernel", "gpu_memory_utilization", "image",
    "image_digest", "image_cuda", "variants", "unverified", "note", "source",
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


def _value(value: Any, where: str, file: str = "engines.toml") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, where, file) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v, f'{where}.{k}', file)}" for k, v in value.items()) + " }"
    raise InvalidInput(file, where, f"cannot write a value of type {type(value).__name__}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TomlLayout:
    """How an emitted file is laid out: which tables get ``[a.b]`` / ``[[a.b]]`` headers (every other
    table is inline), and the key order of the tables that have one (other tables keep theirs)."""

    tables: frozenset[str]
    arrays: frozenset[str]
    order: Mapping[str, tuple[str, ...]]
    file: str


ENGINES_LAYOUT = TomlLayout(tables=_TABLES, arrays=_ARRAYS, order={"engine.release": RELEASE_ORDER},
                            file="engines.toml")


def _ordered(path: str, table: Mapping[str, Any], layout: TomlLayout) -> list[str]:
    """Keys in the layout's order for that table (unknown ones after, as found); other tables as they come."""
    order = layout.order.get(path)
    if order is None:
        return list(table)
    known = [k for k in order if k in table]
    return known + [k for k in table if k not in order]


def _emit(lines: list[str], path: str, table: Mapping[str, Any], layout: TomlLayout) -> None:
    """Scalars and inline values first, then sub-tables and arrays of tables, in key order."""
    keys = _ordered(path, table, layout)
    children = {k: f"{path}.{k}" if path else k for k in keys}
    nested = [k for k in keys if children[k] in layout.tables or children[k] in layout.arrays]
    for key in keys:
        if key not in nested:
            lines.append(f"{_key(key)} = {_value(table[key], children[key], layout.file)}")
    for key in nested:
        child = children[key]
        items: Iterable[Any] = table[key] if child in layout.arrays else [table[key]]
        for item in items:
            if not isinstance(item, Mapping):
                raise InvalidInput(layout.file, child, f"expected a table, got {type(item).__name__}")
            lines += ["", f"[[{child}]]" if child in layout.arrays else f"[{child}]"]
            _emit(lines, child, item, layout)


def dump_toml(data: Mapping[str, Any], layout: TomlLayout, *, header: str = "") -> str:
    """TOML text for ``data`` in ``layout``: same input, same bytes; ``header`` (comments) kept on top."""
    lines: list[str] = [header.rstrip("\n"), ""] if header else []
    _emit(lines, "", data, layout)
    return "\n".join(lines) + "\n"


def dump_engines_toml(data: Mapping[str, Any], *, header: str = "") -> str:
    """engines.toml text for ``data``: fixed table layout, same input, same bytes."""
    return dump_toml(data, ENGINES_LAYOUT, header=header)


# --------------------------------------------------------------------------- what the registry says


class MetadataSource(Protocol):
    """What a refresh reads: a project's simple-index JSON page and one wheel's METADATA."""

    def project_page(self, package: str) -> str: ...

    def metadata(self, file: IndexFile) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseFacts:
    """One release as its package metadata and wheel file names describe it (TOML-ready strings)."""

    version: str
    date: str
    torch: str
    torchvision: str | None
    torchaudio: str | None
    transformers: str
    requires_python: str
    pythons: list[str] | None  # None: abi3 or pure-Python wheels, any Python Requires-Python admits
    platforms: list[str] | None  # None: a pure-Python wheel, which installs on every platform
    wheel_glibc: str | None
    kernel: str | None


_KERNELS = frozenset({"sgl-kernel", "sglang-kernel"})
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_")
_LEGACY_MANYLINUX = {"manylinux1": "2.5", "manylinux2010": "2.12", "manylinux2014": "2.17"}
_CPYTHON = re.compile(r"^cp3(\d{1,2})$")
#: The environment Requires-Dist markers are evaluated in: the engines' main platform, no extras.
_MARKER_ENV = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}


def release_files(files: Iterable[IndexFile], package: str) -> dict[Version, list[IndexFile]]:
    """Final, non-yanked releases and their files; pre-releases and other projects' files left out."""
    out: dict[Version, list[IndexFile]] = {}
    name = canonicalize_name(package)
    for file in files:
        version = _file_version(file.filename, name)
        if version is None or file.yanked or version.is_prerelease or version.is_devrelease:
            continue
        out.setdefault(version, []).append(file)
    return out


def _file_version(filename: str, name: str) -> Version | None:
    if filename.endswith(".whl"):
        try:
            wheel_name, version, _build, _tags = parse_wheel_filename(filename)
        except (InvalidWheelFilename, InvalidVersion):
            return None
        return version if wheel_name == name else None
    match = re.fullmatch(r"(.+)-([^-]+)\.(tar\.gz|zip)", filename)
    if match is None or canonicalize_name(match.group(1)) != name:
        return None
    try:
        return Version(match.group(2))
    except InvalidVersion:
        return None


def _glibc_of(platform_tag: str) -> Version | None:
    match = _MANYLINUX.match(platform_tag)
    if match:
        return Version(f"{match.group(1)}.{match.group(2)}")
    legacy = next((v for k, v in _LEGACY_MANYLINUX.items() if platform_tag.startswith(f"{k}_")), None)
    return Version(legacy) if legacy else None


def _tag_facts(file: IndexFile) -> list[tuple[str, str | None, Version | None]]:
    """(platform or "any", CPython minor or None when not restricted, glibc floor) per engine-platform tag."""
    out = []
    for tag in parse_wheel_filename(file.filename)[3]:
        platform = "any" if tag.platform == "any" else platform_of_tag(tag.platform)
        if platform not in (*ENGINE_PLATFORMS, "any"):
            continue
        match = _CPYTHON.fullmatch(tag.interpreter)
        python = None if tag.abi == "abi3" or match is None else f"3.{match.group(1)}"
        out.append((platform, python, _glibc_of(tag.platform)))
    return out


def wheel_facts(files: Sequence[IndexFile]) -> tuple[dict[str, Any], IndexFile]:
    """Platforms, Pythons, glibc floor and date from a release's file names; and the wheel to read.

    The wheel read is the one pip prefers on linux-x86_64: the highest build tag.
    :raises ProvisionError: the release has no wheel for an engine platform.
    """
    wheels = [(f, _tag_facts(f)) for f in files if f.filename.endswith(".whl")]
    wheels = [(f, t) for f, t in wheels if t]
    if not wheels:
        raise ProvisionError(f"{files[0].filename if files else '?'}: no wheel for {', '.join(ENGINE_PLATFORMS)}")
    tags = [t for _f, ts in wheels for t in ts]
    platforms = {p for p, _py, _g in tags}
    pythons = {py for _p, py, _g in tags}
    glibc = [g for _p, _py, g in tags if g is not None]

    def preference(item: tuple[IndexFile, list[Any]]) -> tuple[bool, int, str]:
        build = parse_wheel_filename(item[0].filename)[2]
        return ("linux-aarch64" in {p for p, _py, _g in item[1]}, -(build[0] if build else -1), item[0].filename)

    dates = sorted(f.upload_time[:10] for f in files if f.upload_time)
    facts = {
        "date": dates[0] if dates else "",
        "pythons": None if None in pythons else sorted({p for p in pythons if p}, key=lambda p: int(p.split(".")[1])),
        "platforms": None if "any" in platforms else [p for p in ENGINE_PLATFORMS if p in platforms],
        "wheel_glibc": str(max(glibc)) if glibc else None,
    }
    return facts, min(wheels, key=preference)[0]


def metadata_facts(text: str, source: str) -> dict[str, Any]:
    """Requires-Python and the pins a plan depends on, from a METADATA file.

    Requirements behind an ``extra`` or a marker false on linux-x86_64 are not pins of the release.
    An inexact torch requirement is kept as written, so the loader refuses it by name.
    """
    message = HeaderParser().parsestr(text)
    environment: dict[str, str] = {**{k: str(v) for k, v in default_environment().items()}, **_MARKER_ENV}
    pins: dict[str, Requirement] = {}
    for line in message.get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            raise ProvisionError(f"{source}: unreadable Requires-Dist {line!r}") from None
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        pins.setdefault(canonicalize_name(req.name), req)
    if "torch" not in pins or "transformers" not in pins:
        raise ProvisionError(f"{source}: METADATA pins no torch or no transformers")
    kernel = next((pins[k] for k in sorted(_KERNELS) if k in pins), None)
    return {
        "torch": _exact(pins["torch"]),
        "torchvision": _exact(pins["torchvision"]) if "torchvision" in pins and pins["torchvision"].specifier else None,
        "torchaudio": _exact(pins["torchaudio"]) if "torchaudio" in pins and pins["torchaudio"].specifier else None,
        "transformers": str(pins["transformers"].specifier),
        "requires_python": _python_spec(message.get("Requires-Python"), source),
        "kernel": f"{kernel.name}{kernel.specifier}" if kernel is not None else None,
    }


def _exact(req: Requirement) -> str:
    """``==X`` -> ``X``; anything else stays as written (the loader names it as not a version)."""
    clauses = list(req.specifier)
    if len(clauses) == 1 and clauses[0].operator in ("==", "===") and "*" not in clauses[0].version:
        return clauses[0].version
    return str(req.specifier)


def _python_spec(text: str | None, source: str) -> str:
    try:
        return str(SpecifierSet(text or ""))
    except InvalidSpecifier:
        raise ProvisionError(f"{source}: unreadable Requires-Python {text!r}") from None


# --------------------------------------------------------------------------- merging into the file

#: The release keys a refresh owns; every other key was put there by a person and is kept.
REFRESHED = ("torch", "torchvision", "torchaudio", "transformers", "requires_python", "pythons", "platforms",
             "wheel_glibc", "kernel")
_ADDED_NOTE = ("added by `provision matrix refresh` from the registry's metadata; cuda, archs, image, image_cuda, "
               "glibc (with torch's and the kernel's floors), gpu_memory_utilization where the engine has one, "
               "variants and source still to be verified by hand")


def merge_engines(existing: Mapping[str, Any], scanned: Mapping[str, Sequence[ReleaseFacts]]) -> dict[str, Any]:
    """engines.toml data with the scanned facts folded in; nothing a person wrote is changed or deleted.

    A listed release gets the refreshed keys (a pin the metadata no longer has is removed, and
    glibc rises to the wheel's floor if it was below); a new one is added with the facts and a
    note saying what is still missing. Releases stay newest first.
    """
    data: dict[str, Any] = tomllib.loads(dump_engines_toml(existing))  # a deep copy with TOML types
    for engine in data.get("engine", []):
        releases: list[dict[str, Any]] = engine.setdefault("release", [])
        by_version = {str(r.get("version")): r for r in releases}
        for fact in scanned.get(str(engine.get("name")), ()):
            row = by_version.get(fact.version)
            if row is None:
                row = {"version": fact.version, "date": fact.date, "note": _ADDED_NOTE,
                       "source": "Requires-Dist, Requires-Python and wheel tags: METADATA and file names of the "
                                 "PyPI wheels (matrix refresh)"}
                releases.append(row)
            _update(row, fact)
        engine["release"] = sorted(releases, key=lambda r: Version(str(r["version"])), reverse=True)
    return data


def _update(row: dict[str, Any], fact: ReleaseFacts) -> None:
    for key in REFRESHED:
        value = getattr(fact, key)
        if key == "platforms" and value is None:  # a pure-Python wheel: the file's platforms stand
            row.setdefault("platforms", list(ENGINE_PLATFORMS))
        elif value is None:
            row.pop(key, None)
        else:
            row[key] = value
    floor = row.get("wheel_glibc")
    if floor is not None and ("glibc" not in row or Version(str(row["glibc"])) < Version(floor)):
        row["glibc"] = floor


# --------------------------------------------------------------------------- the refresh


@dataclass(frozen=True, slots=True, kw_only=True)
class EnginesRefresh:
    """What a refresh would change (nothing is written here) and what it chose not to do."""

    old_text: str
    new_text: str
    diff: str
    messages: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.old_text != self.new_text


def _wanted(engine: Mapping[str, Any], available: Iterable[Version]) -> tuple[list[Version], list[Version], list[str]]:
    """(listed releases on the index, new releases, notes): new = newer than the oldest listed, not excluded."""
    listed = {Version(str(r["version"])) for r in engine.get("release", [])}
    excluded = {Version(str(x["version"])) for x in engine.get("excluded", [])}
    on_index = set(available)
    oldest = min(listed, default=Version("0"))
    new = sorted(v for v in on_index if v > oldest and v not in listed and v not in excluded)
    notes = [f"{engine.get('name')} {v}: listed but not on the index; kept as it is" for v in sorted(listed - on_index)]
    return sorted(listed & on_index), new, notes


def _scan(engine: Mapping[str, Any], source: MetadataSource) -> tuple[list[ReleaseFacts], list[str]]:
    package, name = str(engine.get("package")), str(engine.get("name"))
    page = parse_simple_json(source.project_page(package), f"the {package} index page")
    files = release_files(page, package)
    listed, new, notes = _wanted(engine, files)
    out = []
    for version in [*listed, *new]:
        wheel, chosen = wheel_facts(files[version])
        fact = ReleaseFacts(version=str(version), **wheel, **metadata_facts(source.metadata(chosen), chosen.filename))
        if version in new and not admits_transformers_5(SpecifierSet(fact.transformers)):
            notes.append(f"{name} {version}: transformers {fact.transformers} admits no transformers 5; not added "
                         "(list it under excluded to silence this)")
            continue
        out.append(fact)
    return out, notes


def refresh_engines(engines_toml: Path, source: MetadataSource) -> EnginesRefresh:
    """Re-read every listed release (and newer ones) from the registry; the new file text and its diff.

    :raises InvalidInput: engines.toml is not TOML.
    :raises ProvisionError: the registry cannot be read.
    """
    try:
        old_text = Path(engines_toml).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(str(engines_toml), "(file)", f"cannot read: {exc}") from None
    try:
        existing = tomllib.loads(old_text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(str(engines_toml), "(document)", f"invalid TOML: {exc}") from None
    scanned: dict[str, list[ReleaseFacts]] = {}
    messages: list[str] = []
    for engine in existing.get("engine", []):
        scanned[str(engine.get("name"))], notes = _scan(engine, source)
        messages += notes
    header, _body = split_header(old_text)
    new_text = dump_engines_toml(merge_engines(existing, scanned), header=header)
    return EnginesRefresh(old_text=old_text, new_text=new_text, diff=render_diff(old_text, new_text, Path(engines_toml).name),
                          messages=tuple(messages))


def check_refreshed(new_text: str, engines_toml: Path) -> None:
    """Validate refreshed text against the cuda.toml and torch.toml beside it, before anything is written.

    :raises ProvisionError: "not written", naming the first field a person has to fill in.
    """
    try:
        parse_engines(Fields(tomllib.loads(new_text), str(engines_toml)), known_from_files(Path(engines_toml).parent))
    except InvalidInput as exc:
        raise ProvisionError(
            f"not written: the refreshed engines.toml needs facts only a person can add ({exc.field}: {exc.problem}); "
            "apply the diff above and fill them in by hand"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineRefresh:
    """A refresh read but not yet written: where it goes, which index it came from, what changes."""

    path: Path
    index: str
    result: EnginesRefresh


def plan_engine_refresh(matrix_dir: Path | None, index: str, *, verify: str | bool = True,
                        source: MetadataSource | None = None) -> EngineRefresh:
    """Re-read engines.toml's pins from ``index`` (the one pip is configured with); nothing is written.

    :raises InvalidInput: engines.toml is not TOML.
    :raises ProvisionError: the registry cannot be read.
    """
    from provision.common.resources import data_dir
    from provision.data.pypi import PypiClient

    # Not load_matrix: a stale engines.toml is what a refresh repairs, so it must not have to validate first.
    path = (matrix_dir if matrix_dir is not None else data_dir("matrices")) / "engines.toml"
    result = refresh_engines(path, source if source is not None else PypiClient(index, verify=verify))
    return EngineRefresh(path=path, index=index, result=result)


def apply_engine_refresh(refresh: EngineRefresh) -> None:
    """Write the refreshed engines.toml once it validates against the matrix beside it.

    :raises ProvisionError: the new releases need facts only a person can add; nothing is written.
    """
    from provision.common.atomic import write_atomic

    check_refreshed(refresh.result.new_text, refresh.path)
    write_atomic(refresh.path, refresh.result.new_text)
