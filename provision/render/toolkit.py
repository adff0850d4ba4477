"""The running toolkit as a wheel, so a render folder installs provision without a checkout.

A render folder is the whole Docker build context and the only thing ``setup-venv.sh`` needs:
the toolkit goes into it as ``provision-<version>-py3-none-any.whl``, made here from the files
this process runs from, whether that is a checkout (``templates/`` and ``matrices/`` beside the
package, metadata from ``pyproject.toml``) or an installed wheel (``provision/_data/``, metadata
from the installed distribution). Both give the same bytes for the same sources: entries are
sorted, timestamps fixed and metadata written in one canonical form, so renders stay
byte-identical and the lock can record the wheel's sha256 like any other file.

The toolkit's own dependencies (``toolkit_requirements``) join the plan's resolution, so they are
pinned and hashed in requirements.txt with everything else; installing the wheel afterwards only
checks them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from provision.common.resources import DATA_NAMES, data_dir, package_dir
from provision.errors import ProvisionError

__all__ = ["ENDPOINT_EXTRA", "ToolkitMeta", "ToolkitWheel", "toolkit_meta", "toolkit_requirements", "toolkit_wheel",
           "wheel_name"]

#: The extra whose packages every render installs: ``provision smoke --endpoint`` runs from any venv.
ENDPOINT_EXTRA = "endpoint"
#: 1980-01-01, the earliest time a zip entry can carry: no build clock leaks into the bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_EXTRA_MARKER_RE = re.compile(r"""^(?P<req>.*?)\s*;\s*extra\s*==\s*["'](?P<extra>[A-Za-z0-9._-]+)["']\s*$""")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolkitMeta:
    """What the wheel's METADATA and entry points say: the project as ``pyproject.toml`` declares it."""

    name: str
    version: str
    summary: str
    requires_python: str
    dependencies: tuple[str, ...]
    extras: Mapping[str, tuple[str, ...]]
    scripts: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolkitWheel:
    """A wheel's file name and bytes, as a render writes it into the folder."""

    name: str
    data: bytes = field(repr=False)


def _canonical(text: str, source: str) -> str:
    """One spelling per requirement (``packaging``'s), whichever tool wrote the metadata."""
    try:
        return str(Requirement(text))
    except InvalidRequirement as exc:
        raise ProvisionError(f"{source}: unreadable requirement {text!r}: {exc}") from None


def _from_pyproject(path: Path) -> ToolkitMeta:
    from provision.common.fields import read_toml_file

    project = read_toml_file(path)["project"]
    return ToolkitMeta(
        name=project["name"], version=project["version"], summary=project.get("description", ""),
        requires_python=project.get("requires-python", ""),
        dependencies=tuple(_canonical(r, str(path)) for r in project.get("dependencies", [])),
        extras={k: tuple(_canonical(r, str(path)) for r in v)
                for k, v in sorted(project.get("optional-dependencies", {}).items())},
        scripts=dict(sorted(project.get("scripts", {}).items())),
    )


def _first(values: list[str] | None) -> str:
    return values[0] if values else ""


def _from_installed() -> ToolkitMeta:
    from importlib import metadata

    try:
        dist = metadata.distribution("provision")
    except metadata.PackageNotFoundError:
        raise ProvisionError("provision runs neither from a checkout nor from an installed distribution; "
                             "reinstall provision") from None
    meta = dist.metadata
    deps: list[str] = []
    extras: dict[str, list[str]] = {e: [] for e in meta.get_all("Provides-Extra") or []}
    for line in dist.requires or []:
        m = _EXTRA_MARKER_RE.match(line)
        if m:
            extras.setdefault(m["extra"], []).append(_canonical(m["req"], "provision METADATA"))
        else:
            deps.append(_canonical(line, "provision METADATA"))
    return ToolkitMeta(
        name=meta["Name"], version=meta["Version"], summary=_first(meta.get_all("Summary")),
        requires_python=_first(meta.get_all("Requires-Python")), dependencies=tuple(deps),
        extras={k: tuple(v) for k, v in sorted(extras.items())},
        scripts={ep.name: ep.value for ep in sorted(dist.entry_points, key=lambda e: e.name)
                 if ep.group == "console_scripts"},
    )


def toolkit_meta() -> ToolkitMeta:
    """The running toolkit's project metadata: its checkout's ``pyproject.toml``, else its installed METADATA."""
    pyproject = package_dir().parent / "pyproject.toml"
    if pyproject.is_file() and (package_dir().parent / "templates").is_dir():
        return _from_pyproject(pyproject)
    return _from_installed()


def toolkit_requirements(meta: ToolkitMeta) -> tuple[str, ...]:
    """What the toolkit needs installed beside it: its dependencies and the endpoint proof's client."""
    return (*meta.dependencies, *meta.extras.get(ENDPOINT_EXTRA, ()))


def wheel_name(meta: ToolkitMeta) -> str:
    return f"{meta.name}-{meta.version}-py3-none-any.whl"


def _metadata_text(meta: ToolkitMeta) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {meta.name}", f"Version: {meta.version}"]
    if meta.summary:
        lines.append(f"Summary: {meta.summary}")
    if meta.requires_python:
        lines.append(f"Requires-Python: {meta.requires_python}")
    lines += [f"Requires-Dist: {r}" for r in meta.dependencies]
    for extra, reqs in meta.extras.items():
        lines.append(f"Provides-Extra: {extra}")
        for r in reqs:
            req = Requirement(r)
            marker = f"({req.marker}) and " if req.marker else ""
            req.marker = None
            lines.append(f'Requires-Dist: {req}; {marker}extra == "{extra}"')
    return "\n".join(lines) + "\n"


def _sources() -> dict[str, Path]:
    """Wheel path -> file: the package's modules, and the data directories under ``provision/_data``."""
    package = package_dir()
    out: dict[str, Path] = {}
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if rel.parts[0] == "_data" or any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        if path.is_file() and (path.suffix == ".py" or path.name == "py.typed"):
            out[f"provision/{rel.as_posix()}"] = path
    for name in DATA_NAMES:
        root = data_dir(name)
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                out[f"provision/_data/{name}/{rel.as_posix()}"] = path
    return out


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def toolkit_wheel(meta: ToolkitMeta | None = None) -> ToolkitWheel:
    """A wheel of the running toolkit; the same sources give the same bytes.

    :raises ProvisionError: the toolkit's files or metadata cannot be found (a broken install).
    """
    meta = meta or toolkit_meta()
    info = f"{meta.name}-{meta.version}.dist-info"
    entries: dict[str, bytes] = {name: path.read_bytes() for name, path in _sources().items()}
    entries[f"{info}/METADATA"] = _metadata_text(meta).encode()
    entries[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: provision {meta.version}\n"
                                "Root-Is-Purelib: true\nTag: py3-none-any\n").encode()
    if meta.scripts:
        entries[f"{info}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
            f"{name} = {target}\n" for name, target in meta.scripts.items())).encode()
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in sorted(entries.items()))
    entries[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name in sorted(entries, key=lambda n: (n.startswith(info), n)):  # dist-info last, as installers expect
            item = zipfile.ZipInfo(name, date_time=_EPOCH)
            item.compress_type = zipfile.ZIP_DEFLATED
            item.external_attr = 0o644 << 16
            wheel.writestr(item, entries[name], compresslevel=9)
    return ToolkitWheel(name=wheel_name(meta), data=buffer.getvalue())
