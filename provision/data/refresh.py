"""Backend of ``provision matrix refresh``: re-read the PyTorch wheel indexes into torch.toml.

The wheel index pages (PEP 503 simple pages under ``https://download.pytorch.org/whl/<variant>/torch/``)
are the only place that says which platforms and Python versions each ``torch+<variant>`` build
exists for.  Everything else in torch.toml (GPU architectures, PTX, dates, pairings, sources) is
verified by hand, so a refresh only rewrites ``platforms`` / ``pythons`` and adds rows it has never
seen, and always shows a diff before anything is written.  The wheel file names also carry each
build's platform tag: a release's ``glibc`` (manylinux) and ``macos`` (macosx) floors are rewritten from
them (the index pages', and PyPI's torch and torchvision pages' where the caller passes ``pypi``).

Pure functions do the parsing, merging, rendering and diffing; ``fetch_index`` reads the index and
``apply_refresh`` writes (through ``provision.common.atomic``) only what validates with the other
matrices. ``plan_refresh`` and ``apply_refresh`` are the command's two steps: the diff is shown between them.
"""

from __future__ import annotations

import difflib
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from provision.common.atomic import write_atomic
from provision.data.matrix import load_matrix, on_pypi
from provision.errors import InvalidInput, ProvisionError
from provision.vocab import PLATFORMS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "DEFAULT_INDEX_URL",
    "TORCH_HEADER",
    "MatrixRefresh",
    "RefreshResult",
    "WheelRow",
    "apply_refresh",
    "collect_rows",
    "cuda_of_variant",
    "dump_torch_toml",
    "fetch_index",
    "manylinux_floor",
    "merge_floors",
    "merge_torch",
    "parse_index_html",
    "parse_wheel_names",
    "plan_refresh",
    "platform_of_tag",
    "refresh_torch",
    "render_diff",
    "wheel_floors",
]

DEFAULT_INDEX_URL = "https://download.pytorch.org/whl"

TORCH_HEADER = """\
# torch.toml: PyTorch releases, their wheel variants and what each variant runs on.
# Schema: matrices/README.md.  Written by provision/refresh.py's emitter (stable key order,
# byte-identical on re-run); `provision matrix refresh` rewrites only `platforms`/`pythons`
# from the PyTorch wheel indexes and keeps every hand-verified field (archs, ptx, sources, notes).
# How each block was obtained is in its `source` and `note` keys.
"""

# Keys in the order a reader expects them; anything else follows alphabetically.
_KEY_ORDER: dict[str, tuple[str, ...]] = {
    "meta": ("sources", "retrieved", "note"),
    "release": (
        "version",
        "date",
        "pythons",
        "torchvision",
        "torchaudio",
        "pypi_default",
        "glibc",
        "macos",
        "source",
        "note",
    ),
    "variant": (
        "name",
        "cuda",
        "platforms",
        "pythons",
        "archs",
        "ptx",
        "archs_by_platform",
        "ptx_by_platform",
        "source",
        "note",
    ),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WheelRow:
    """One torch wheel file reduced to what the matrix records."""

    version: str  # public version, e.g. "2.9.1"
    variant: str  # "cu128", "cpu", ...
    platform: str  # one of PLATFORMS
    python: str  # CPython minor, e.g. "3.12"


@dataclass(frozen=True, slots=True, kw_only=True)
class RefreshResult:
    """What a refresh would change: the old and new file text and their unified diff."""

    old_text: str
    new_text: str
    diff: str

    @property
    def changed(self) -> bool:
        return self.old_text != self.new_text


# --------------------------------------------------------------------------- parsing


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.texts: list[str] = []
        self._in_a = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._in_a = True
            self.texts.append("")
            self.hrefs.append(dict(attrs).get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_a = False

    def handle_data(self, data: str) -> None:
        if self._in_a and self.texts:
            self.texts[-1] += data


def parse_index_html(html: str) -> list[str]:
    """File names linked from a PEP 503 page (href basename, ``%2B`` decoded, fragment dropped)."""
    parser = _AnchorParser()
    parser.feed(html)
    names: list[str] = []
    for href, text in zip(parser.hrefs, parser.texts, strict=True):
        path = urlsplit(href).path if href else ""
        name = unquote(path.rsplit("/", 1)[-1]) if path else text.strip()
        if name.endswith(".whl"):
            names.append(name)
    return names


def platform_of_tag(tag_platform: str) -> str | None:
    """Map a wheel platform tag to the matrix platform name; None for platforms we do not plan for."""
    if tag_platform == "win_amd64":
        return "windows-x86_64"
    if tag_platform.startswith(("manylinux", "linux")):
        if tag_platform.endswith("_x86_64"):
            return "linux-x86_64"
        if tag_platform.endswith("_aarch64"):
            return "linux-aarch64"
        return None
    if tag_platform.startswith("macosx_") and tag_platform.endswith("_arm64"):
        return "macos-arm64"
    if tag_platform.startswith("macosx_") and tag_platform.endswith("_x86_64"):
        return "macos-x86_64"
    return None


_CP = re.compile(r"^cp(\d)(\d+)$")


def parse_wheel_names(filenames: Iterable[str], *, default_variant: str) -> list[WheelRow]:
    """Turn torch wheel file names into rows.

    The variant is the local version (``+cu128``); a wheel without one (macOS wheels on the cpu
    index, PyPI-style names) belongs to ``default_variant``, the index the page came from.
    Free-threaded (``cp313t``) and non-CPython wheels are left out: the planner does not pick them.
    Names that are not valid wheel names are skipped.
    """
    rows: set[WheelRow] = set()
    for filename in filenames:
        try:
            name, version, _build, tags = parse_wheel_filename(filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        if name != "torch":
            continue
        variant = version.local or default_variant
        public = version.public
        for tag in tags:
            match = _CP.match(tag.interpreter)
            if match is None or tag.abi.endswith("t"):
                continue
            platform = platform_of_tag(tag.platform)
            if platform is None:
                continue
            python = f"{match.group(1)}.{match.group(2)}"
            rows.add(WheelRow(version=public, variant=variant, platform=platform, python=python))
    return sorted(rows, key=lambda r: (Version(r.version), r.variant, r.platform, _pykey(r.python)))


#: The legacy manylinux tags and the glibc they promise (PEP 513, 571, 599); PEP 600 tags spell it out.
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
_PEP600 = re.compile(r"^manylinux_(\d+)_(\d+)_")


def manylinux_floor(tag_platform: str) -> tuple[int, int] | None:
    """The glibc a manylinux platform tag needs (``manylinux_2_28_x86_64`` -> (2, 28), ``manylinux2014_*`` ->
    (2, 17)); None for a tag that names none (``linux_x86_64``, macOS, Windows)."""
    match = _PEP600.match(tag_platform)
    if match is not None:
        return int(match.group(1)), int(match.group(2))
    return _LEGACY_MANYLINUX.get(tag_platform.split("_", 1)[0])


def os_floor(tag_platform: str) -> tuple[int, int] | None:
    """The OS version a platform tag needs: glibc for manylinux (``manylinux_floor``), macOS for macosx
    (``macosx_14_0_arm64`` -> (14, 0)); None for a tag that names none."""
    if tag_platform.startswith("macosx_"):
        parts = tag_platform.split("_")
        return (int(parts[1]), int(parts[2])) if len(parts) > 3 and parts[1].isdigit() and parts[2].isdigit() else None
    return manylinux_floor(tag_platform)


def wheel_floors(filenames: Iterable[str], package: str) -> dict[str, dict[str, str]]:
    """``package``'s OS floor per public version and platform, from its wheel file names: glibc on Linux
    platforms, the macOS version on macOS ones.

    A wheel installs where any one of its tags does, so its floor is its lowest tag's; a release
    and platform take the highest floor among their wheels (every build must install). Wheels
    whose tags name no floor (``linux_x86_64``, ``win_amd64``) add nothing.
    """
    floors: dict[str, dict[str, tuple[int, int]]] = {}
    for filename in filenames:
        try:
            name, version, _build, tags = parse_wheel_filename(filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        if name != package:
            continue
        by_platform: dict[str, tuple[int, int]] = {}
        for tag in tags:
            platform, floor = platform_of_tag(tag.platform), os_floor(tag.platform)
            if platform is not None and floor is not None:
                by_platform[platform] = min(floor, by_platform.get(platform, floor))
        release = floors.setdefault(version.public, {})
        for platform, floor in by_platform.items():
            release[platform] = max(floor, release.get(platform, floor))
    return {v: {p: f"{f[0]}.{f[1]}" for p, f in sorted(fl.items())} for v, fl in floors.items() if fl}


def _pykey(python: str) -> tuple[int, ...]:
    return tuple(int(p) for p in python.split("."))


def collect_rows(rows: Iterable[WheelRow]) -> dict[str, dict[str, dict[str, list[str]]]]:
    """Group rows as release -> variant -> {"platforms": [...], "pythons": [...]} (sorted)."""
    grouped: dict[str, dict[str, dict[str, set[str]]]] = {}
    for row in rows:
        entry = grouped.setdefault(row.version, {}).setdefault(row.variant, {"platforms": set(), "pythons": set()})
        entry["platforms"].add(row.platform)
        entry["pythons"].add(row.python)
    return {
        version: {
            variant: {
                "platforms": _sort_platforms(entry["platforms"]),
                "pythons": sorted(entry["pythons"], key=_pykey),
            }
            for variant, entry in sorted(variants.items())
        }
        for version, variants in sorted(grouped.items(), key=lambda kv: Version(kv[0]))
    }


def _sort_platforms(platforms: Iterable[str]) -> list[str]:
    order = {p: i for i, p in enumerate(PLATFORMS)}
    return sorted(set(platforms), key=lambda p: (order.get(p, len(order)), p))


def cuda_of_variant(variant: str) -> str | None:
    """``cu128`` -> ``"12.8"``, ``cu118`` -> ``"11.8"``; None for cpu and other accelerators."""
    match = re.fullmatch(r"cu(\d{2})(\d)", variant)
    return f"{int(match.group(1))}.{match.group(2)}" if match else None


# --------------------------------------------------------------------------- merging


def merge_torch(
    existing: Mapping[str, Any],
    scanned: Mapping[str, Mapping[str, Mapping[str, list[str]]]],
    *,
    scanned_from: str = "download.pytorch.org wheel index",
) -> dict[str, Any]:
    """Fold scanned index rows into torch.toml data; hand-verified fields are kept as they are.

    For a variant the index lists, ``platforms`` become exactly what the index shows (a platform
    the file listed but the index does not is kept: the PyPI-only default builds, e.g. the
    linux-aarch64 CPU wheel of an old release, are never on a variant page), and ``pythons`` is
    written only where it differs from the release's.  Variants and releases the file lacks are
    added with what the index can tell; their ``archs`` stay absent until someone verifies them.
    Nothing is deleted.
    """
    data: dict[str, Any] = _deepcopy(existing)
    releases: list[dict[str, Any]] = data.setdefault("release", [])
    by_version = {str(r.get("version")): r for r in releases}
    for version, variants in scanned.items():
        release = by_version.get(version)
        if release is None:
            all_pythons = sorted({p for v in variants.values() for p in v["pythons"]}, key=_pykey)
            release = {
                "version": version,
                "pythons": all_pythons,
                "note": f"added by refresh from {scanned_from}; date, torchvision and "
                "pypi_default still to be verified by hand",
                "variant": [],
            }
            releases.append(release)
            by_version[version] = release
        release_pythons = list(release.get("pythons", []))
        variant_list: list[dict[str, Any]] = release.setdefault("variant", [])
        by_name = {str(v.get("name")): v for v in variant_list}
        for name, seen in variants.items():
            variant = by_name.get(name)
            if variant is None:
                variant = {"name": name}
                cuda = cuda_of_variant(name)
                if cuda is not None:
                    variant["cuda"] = cuda
                variant["source"] = f"{scanned_from} (refresh); archs not yet verified"
                variant_list.append(variant)
                by_name[name] = variant
            kept = [p for p in variant.get("platforms", []) if p not in seen["platforms"]]
            pypi_only = [p for p in kept if _is_pypi_only(release, name, p)]
            variant["platforms"] = _sort_platforms([*seen["platforms"], *pypi_only])
            if list(seen["pythons"]) == release_pythons:
                variant.pop("pythons", None)
            else:
                variant["pythons"] = list(seen["pythons"])
    data["release"] = sorted(releases, key=lambda r: Version(str(r["version"])), reverse=True)
    for release in data["release"]:
        release["variant"] = sorted(release.get("variant", []), key=_variant_key)
    return data


def merge_floors(existing: Mapping[str, Any], torch: Mapping[str, Mapping[str, str]],
                 torchvision: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """Set each release's ``glibc`` (Linux platforms) and ``macos`` (macOS platforms) floors from the scanned ones
    (``wheel_floors``): per platform the higher of torch's and its torchvision's; a platform no scanned wheel
    names keeps its recorded floor."""
    data: dict[str, Any] = _deepcopy(existing)
    for release in data.get("release", []):
        scans = [torch.get(str(release.get("version")), {}), torchvision.get(str(release.get("torchvision")), {})]
        for key, prefix in (("glibc", "linux-"), ("macos", "macos-")):
            floors = dict(release.get(key, {}))
            for platform in sorted({p for scan in scans for p in scan if p.startswith(prefix)}):
                floors[platform] = max((scan[platform] for scan in scans if platform in scan), key=_pykey)
            if floors:
                release[key] = floors
    return data


def _is_pypi_only(release: Mapping[str, Any], variant: str, platform: str) -> bool:
    """macOS wheels and PyPI's own default builds live on PyPI, not (only) on the variant page."""
    return on_pypi(platform, release.get("pypi_default", {}), variant)


def _variant_key(variant: Mapping[str, Any]) -> tuple[int, tuple[int, ...], str]:
    name = str(variant.get("name", ""))
    cuda = cuda_of_variant(name)
    if cuda is not None:
        return (0, _pykey(cuda), name)
    return (1 if name == "cpu" else 2, (), name)


def _deepcopy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_deepcopy(v) for v in value]
    return value


# --------------------------------------------------------------------------- TOML emitter


def _ordered_keys(table: str, keys: Iterable[str]) -> list[str]:
    preferred = _KEY_ORDER.get(table, ())
    keys = list(keys)
    head = [k for k in preferred if k in keys]
    return head + sorted(k for k in keys if k not in preferred)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _string(value: str) -> str:
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        keys = sorted(value, key=lambda k: (PLATFORMS.index(k) if k in PLATFORMS else 99, k))
        return "{ " + ", ".join(f"{_key(k)} = {_value(value[k], where)}" for k in keys) + " }"
    raise InvalidInput("torch.toml", where, f"cannot write a value of type {type(value).__name__}")


def dump_torch_toml(data: Mapping[str, Any], *, header: str = TORCH_HEADER) -> str:
    """Render torch.toml data as TOML text with a fixed key and row order (same input, same bytes)."""
    lines: list[str] = [header.rstrip("\n"), ""] if header else []
    lines.append(f"schema_version = {_value(data.get('schema_version', 1), 'schema_version')}")
    meta = data.get("meta")
    if isinstance(meta, Mapping):
        lines += ["", "[meta]"]
        lines += [f"{_key(k)} = {_value(meta[k], 'meta.' + k)}" for k in _ordered_keys("meta", meta)]
    for i, release in enumerate(data.get("release", [])):
        lines += ["", "[[release]]"]
        for k in _ordered_keys("release", (k for k in release if k != "variant")):
            lines.append(f"{_key(k)} = {_value(release[k], f'release[{i}].{k}')}")
        for j, variant in enumerate(release.get("variant", [])):
            lines += ["", "  [[release.variant]]"]
            for k in _ordered_keys("variant", variant):
                lines.append(f"  {_key(k)} = {_value(variant[k], f'release[{i}].variant[{j}].{k}')}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- diff, write, fetch


def render_diff(old_text: str, new_text: str, path: str = "torch.toml") -> str:
    """Unified diff of the file before and after, as shown to the user before writing."""
    return "".join(
        difflib.unified_diff(
            old_text.splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            fromfile=f"a/{path}",
            tofile=f"b/{path}",
        )
    )


def fetch_index(
    variant: str,
    *,
    base_url: str = DEFAULT_INDEX_URL,
    timeout: float = 30.0,
    session: Any = None,
) -> str:
    """HTML of ``<base_url>/<variant>/torch/``; ProvisionError naming the URL when it cannot be read."""
    import requests

    url = f"{base_url.rstrip('/')}/{variant}/torch/"
    getter = session if session is not None else requests
    try:
        response = getter.get(url, timeout=timeout)
    except requests.RequestException as exc:
        raise ProvisionError(
            f"cannot reach the PyTorch wheel index {url}: {exc.__class__.__name__}: {exc}; "
            "check the network (HTTPS_PROXY is honoured), or refresh the engine pins alone with --only engines"
        ) from exc
    if response.status_code != 200:
        raise ProvisionError(f"the PyTorch wheel index {url} answered HTTP {response.status_code}")
    html: str = response.text
    return html


def refresh_torch(
    torch_toml: Path,
    variants: Sequence[str],
    *,
    fetch: Callable[[str], str] = fetch_index,
    min_version: str | None = None,
    pypi: Callable[[str], list[str]] | None = None,
) -> RefreshResult:
    """Read the index page of each variant and work out the new torch.toml (nothing is written).

    ``min_version`` drops releases older than it from what is added (old releases already in
    the file are left alone). ``pypi``: a project's wheel file names on PyPI (torch and torchvision), whose
    platform tags join the index pages' in the ``glibc`` and ``macos`` floors.
    """
    torch_toml = Path(torch_toml)
    old_text = torch_toml.read_text(encoding="utf-8")
    try:
        existing = tomllib.loads(old_text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(str(torch_toml), "(file)", f"not valid TOML: {exc}") from exc
    rows: list[WheelRow] = []
    names: list[str] = []
    for variant in variants:
        page = parse_index_html(fetch(variant))
        names += page
        rows += parse_wheel_names(page, default_variant=variant)
    names += pypi("torch") if pypi is not None else []
    floors = wheel_floors(names, "torch")
    if min_version is not None:
        floor = Version(min_version)
        rows = [r for r in rows if Version(r.version) >= floor]
        floors = {v: f for v, f in floors.items() if Version(v) >= floor}
    vision = wheel_floors(pypi("torchvision"), "torchvision") if pypi is not None else {}
    merged = merge_floors(merge_torch(existing, collect_rows(rows)), floors, vision)
    new_text = dump_torch_toml(merged)
    return RefreshResult(old_text=old_text, new_text=new_text, diff=render_diff(old_text, new_text, torch_toml.name))


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True, slots=True, kw_only=True)
class MatrixRefresh:
    """A refresh of one matrix folder's torch.toml: which file, which variants, what would change."""

    path: Path
    variants: tuple[str, ...]
    result: RefreshResult


def plan_refresh(
    matrix_dir: Path | None,
    variants: Sequence[str] | None = None,
    *,
    fetch: Callable[[str], str] = fetch_index,
    pypi: Callable[[str], list[str]] | None = None,
) -> MatrixRefresh:
    """Read the index for ``variants`` (default: every variant the matrix has), and ``pypi``'s file names for the
    OS floors (see ``refresh_torch``); nothing is written.

    :raises InvalidInput: the matrix folder does not load.
    :raises ProvisionError: the index cannot be read.
    """
    matrix = load_matrix(matrix_dir)
    path = matrix.root / "torch.toml"
    chosen = tuple(variants or sorted({v.name for r in matrix.torch for v in r.variants}))
    return MatrixRefresh(path=path, variants=chosen,
                         result=refresh_torch(path, chosen, fetch=fetch, min_version="2.2", pypi=pypi))


def apply_refresh(refresh: MatrixRefresh) -> None:
    """Write the refreshed torch.toml, but only once the whole matrix folder validates with it.

    :raises ProvisionError: the new rows need facts only a person can add; nothing is written.
    """
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "matrices"
        shutil.copytree(refresh.path.parent, trial)
        (trial / refresh.path.name).write_text(refresh.result.new_text, encoding="utf-8")
        try:
            load_matrix(trial)
        except InvalidInput as exc:
            raise ProvisionError(
                f"not written: the refreshed torch.toml needs facts only a person can add ({exc.field}: "
                f"{exc.problem}); apply the diff above and fill in archs, date and torchvision by hand"
            ) from None
    write_atomic(refresh.path, refresh.result.new_text)
