"""Where packages come from: wheel folders, index overrides, and what pip is configured with.

On a machine that cannot reach the PyTorch index (an air-gapped box, or CI with only a PyPI
mirror), torch must come from a wheelhouse. These helpers find the folders the user or pip
points at and list the torch builds in them, so the planner can restrict itself to builds that
will actually install. Precedence: ``--wheelhouse`` > ``PROVISION_WHEELHOUSE`` > none.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from packaging.tags import Tag
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import Version

from provision.errors import InvalidInput

__all__ = [
    "INDEX_URL_ENV",
    "WHEELHOUSE_ENV",
    "pip_find_links",
    "pip_index_urls",
    "pip_local_index_folders",
    "read_pip_config",
    "resolve_index_url",
    "resolve_wheelhouses",
    "torch_builds",
    "wheel_builds",
]

WHEELHOUSE_ENV = "PROVISION_WHEELHOUSE"
INDEX_URL_ENV = "PROVISION_INDEX_URL"
_URL_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d+)?(/[A-Za-z0-9._~%/+-]*)?$")
_PLATFORM_TAGS = {
    "linux-x86_64": re.compile(r"^(manylinux\w*_x86_64|linux_x86_64)$"),
    "linux-aarch64": re.compile(r"^(manylinux\w*_aarch64|linux_aarch64)$"),
    "windows-x86_64": re.compile(r"^win_amd64$"),
    "macos-arm64": re.compile(r"^macosx_\d+_\d+_(arm64|universal2)$"),
    "macos-x86_64": re.compile(r"^macosx_\d+_\d+_(x86_64|intel|universal2)$"),
}


def resolve_wheelhouses(cli: Iterable[str] | None, environ: Mapping[str, str], *,
                        index_reachable: Callable[[], bool] | None = None) -> tuple[Path, ...]:
    """Folders to take wheels from: the CLI's, else the environment's (os.pathsep-separated).

    ``auto`` means: only if the PyTorch index cannot be reached, the local find-links
    folders pip is configured with (``index_reachable`` asks, through the command's one
    ``provision.common.net.IndexProbe``).

    :raises InvalidInput: when a named folder does not exist.
    """
    items = list(cli or [])
    source = "--wheelhouse"
    if not items and environ.get(WHEELHOUSE_ENV):
        items = [p for p in environ[WHEELHOUSE_ENV].split(os.pathsep) if p]
        source = WHEELHOUSE_ENV
    if items == ["auto"]:
        if index_reachable is None or index_reachable():
            return ()
        config = read_pip_config(environ)
        return tuple(dict.fromkeys((*pip_find_links(environ, config), *pip_local_index_folders(environ, config))))
    out = []
    for item in items:
        path = Path(item.removeprefix("file://")).expanduser()
        if not path.is_dir():
            raise InvalidInput(source, item, "no such directory")
        out.append(path.resolve())
    return tuple(dict.fromkeys(out))


def resolve_index_url(cli: str | None, environ: Mapping[str, str]) -> str | None:
    """An index URL override for torch (a mirror of the PyTorch index), validated.

    :raises InvalidInput: for anything but a plain http(s) URL.
    """
    source, value = ("--index-url", cli) if cli else (INDEX_URL_ENV, environ.get(INDEX_URL_ENV))
    if not value:
        return None
    if not _URL_RE.fullmatch(value):
        shown = re.sub(r"//[^/@]*@", "//***@", value)  # never echo credentials
        raise InvalidInput(source, "url", f"{shown!r} is not a plain http(s) URL")
    return value.rstrip("/")


def read_pip_config(environ: Mapping[str, str]) -> str:
    """pip's configuration files flattened to ``section.key=value`` lines (what ``pip config list`` shows)."""
    home = Path(environ.get("HOME", "~")).expanduser()
    xdg = [p for p in environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep) if p]
    files = [Path("/etc/pip.conf"), *(Path(d) / "pip" / "pip.conf" for d in xdg),
             home / ".pip" / "pip.conf", home / ".config" / "pip" / "pip.conf"]
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    lines = []
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            continue
        for section in parser.sections():
            for key, value in parser.items(section):
                lines.append(f"{section}.{key}={value}")
    return "\n".join(lines)


def pip_find_links(environ: Mapping[str, str], config_text: str | None) -> tuple[Path, ...]:
    """The local find-links folders pip is configured with (``PIP_FIND_LINKS``, ``pip config list``)."""
    raw: list[str] = []
    if environ.get("PIP_FIND_LINKS"):
        raw.extend(environ["PIP_FIND_LINKS"].split())
    for line in (config_text or "").splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith("find-links"):
            raw.extend(value.strip().strip("'\"").split())
    out = []
    for item in raw:
        path = Path(item.removeprefix("file://"))
        if path.is_dir():
            out.append(path.resolve())
    return tuple(dict.fromkeys(out))


#: The projects whose builds must match torch's: the folders holding their wheels join a wheelhouse.
_TORCH_FAMILY = ("torch", "torchvision")
_HREF_RE = re.compile(r'href="([^"#]+)')


def pip_index_urls(environ: Mapping[str, str], config_text: str | None) -> tuple[str, ...]:
    """The indexes pip is configured with (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``, ``pip config list``), in order.

    uv reads none of pip's configuration: ``nox -s engine_args`` hands these to it.
    """
    raw: list[str] = []
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        raw.extend(environ.get(name, "").split())
    for line in (config_text or "").splitlines():
        key, _, value = line.partition("=")
        if key.strip().endswith(("index-url", "extra-index-url")):
            raw.extend(value.strip().strip("'\"").split())
    return tuple(dict.fromkeys(raw))


def pip_local_index_folders(environ: Mapping[str, str], config_text: str | None,
                            projects: Iterable[str] = _TORCH_FAMILY) -> tuple[Path, ...]:
    """Folders holding the torch-family wheels that pip's local ``file://`` indexes link to.

    A mirror on disk (``index-url``/``extra-index-url = file:///srv/pypi/simple``) is a source pip
    installs from without a network; its ``<project>/index.html`` pages name the wheel files.
    """
    out: list[Path] = []
    for url in pip_index_urls(environ, config_text):
        if not url.startswith("file://"):
            continue
        root = Path(url.removeprefix("file://"))
        for project in projects:
            page = root / project / "index.html"
            try:
                text = page.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for href in _HREF_RE.findall(text):
                wheel = (page.parent / href.removeprefix("file://")).resolve()
                if wheel.suffix == ".whl" and wheel.is_file():
                    out.append(wheel.parent)
    return tuple(dict.fromkeys(out))


def _python_matches(tag: Tag, python: str) -> bool:
    major, minor = python.split(".")
    return tag.interpreter in (f"cp{major}{minor}", f"py{major}", f"py{major}{minor}") and tag.abi != f"cp{major}{minor}t"


def torch_builds(folders: Iterable[Path], *, python: str, platform: str) -> frozenset[tuple[Version, str]]:
    """(version, variant) of every torch wheel in ``folders`` that installs on ``python``/``platform``.

    The variant is the local version label (``2.13.0+cpu`` -> ``cpu``), or "" for a plain PyPI build.
    """
    return wheel_builds(folders, "torch", python=python, platform=platform)


def wheel_builds(folders: Iterable[Path], project: str, *, python: str, platform: str) -> frozenset[tuple[Version, str]]:
    """(version, local label) of every ``project`` wheel in ``folders`` that installs on ``python``/``platform``."""
    pattern = _PLATFORM_TAGS[platform]
    found = set()
    for folder in folders:
        for wheel in sorted(folder.glob(f"{project}-*.whl")):
            try:
                name, version, _build, tags = parse_wheel_filename(wheel.name)
            except InvalidWheelFilename:
                continue
            if name != project:
                continue
            if any(_python_matches(t, python) and pattern.match(t.platform) for t in tags):
                found.add((Version(version.public), version.local or ""))
    return frozenset(found)
