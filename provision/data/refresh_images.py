"""Backend of the images part of ``provision matrix refresh``: record each base image's digest.

Every image a render can build on has a tag in the matrices: ``images.toml``'s uv, CUDA runtime and
Python images, and each engine release's official image in ``engines.toml``. A refresh asks each
image's registry what digest that tag has now (``provision.data.registry``) and records it beside the
tag (``digest`` in images.toml, ``image_digest`` in engines.toml), so renders pin ``name:tag@digest``.
A digest is only ever what a registry answered: nothing is recorded for a tag the registry does not
have (the line says so) and nothing at all is written while any registry cannot be reached.

Collecting, merging and emitting are pure; the ``DigestSource`` passed in is the only I/O. Both files
are written by a fixed-layout emitter (``refresh_engines.dump_toml``), so the same data gives the same
bytes and each file's leading comment block is kept.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from provision.data.refresh import render_diff
from provision.data.refresh_engines import TomlLayout, dump_engines_toml, dump_toml, split_header
from provision.data.registry import RegistryError, TagNotFound
from provision.errors import InvalidInput, ProvisionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "IMAGES_LAYOUT",
    "DigestSource",
    "FileChange",
    "ImageRefresh",
    "ImageSlot",
    "apply_image_refresh",
    "dump_images_toml",
    "image_slots",
    "merge_digests",
    "plan_image_refresh",
    "refresh_images",
]

IMAGES_LAYOUT = TomlLayout(
    tables=frozenset({"meta", "uv", "conda"}),
    arrays=frozenset({"cuda", "cpu", "action"}),
    order={"uv": ("image", "tag", "digest"), "cuda": ("cuda", "image", "tag", "digest"),
           "cpu": ("python", "image", "tag", "digest"), "action": ("name", "sha", "tag")},
    file="images.toml",
)
#: The key a digest is recorded under, per file.
_DIGEST_KEY = {"images.toml": "digest", "engines.toml": "image_digest"}


def dump_images_toml(data: Mapping[str, Any], *, header: str = "") -> str:
    """images.toml text for ``data``: fixed table layout, same input, same bytes."""
    return dump_toml(data, IMAGES_LAYOUT, header=header)


class DigestSource(Protocol):
    """What a refresh asks: the digest a tag has now (``registry.RegistryClient``)."""

    def digest(self, image: str, tag: str) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSlot:
    """One image tag in a matrix file, and the dotted field its digest goes into."""

    file: str
    where: str
    image: str
    tag: str

    @property
    def ref(self) -> str:
        return f"{self.image}:{self.tag}"


def _rows(images: Mapping[str, Any], engines: Mapping[str, Any]) -> list[tuple[ImageSlot, dict[str, Any]]]:
    """Each slot with the row (a table of the parsed file) its digest is written into."""
    out: list[tuple[ImageSlot, dict[str, Any]]] = []
    uv = images.get("uv")
    if isinstance(uv, dict):
        out.append((ImageSlot(file="images.toml", where="uv.digest", image=str(uv.get("image")),
                              tag=str(uv.get("tag"))), uv))
    for table in ("cuda", "cpu"):
        for i, row in enumerate(images.get(table, [])):
            if isinstance(row, dict):
                out.append((ImageSlot(file="images.toml", where=f"{table}[{i}].digest", image=str(row.get("image")),
                                      tag=str(row.get("tag"))), row))
    for e, engine in enumerate(engines.get("engine", [])):
        for r, release in enumerate(engine.get("release", []) if isinstance(engine, dict) else []):
            if isinstance(release, dict) and isinstance(release.get("image"), str):
                image, _, tag = release["image"].rpartition(":")
                out.append((ImageSlot(file="engines.toml", where=f"engine[{e}].release[{r}].image_digest",
                                      image=image, tag=tag), release))
    return out


def image_slots(images: Mapping[str, Any], engines: Mapping[str, Any]) -> list[ImageSlot]:
    """Every image tag a render can build on, in file order: images.toml's, then each engine release's."""
    return [slot for slot, _row in _rows(images, engines)]


def merge_digests(images: Mapping[str, Any], engines: Mapping[str, Any],
                  found: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of both files' data with ``found`` (``image:tag`` -> digest) recorded beside each tag.

    A tag not in ``found`` keeps what it had. An engine release whose image digest is recorded no
    longer lists ``image`` as unverified: its registry has that tag.
    """
    images_out: dict[str, Any] = tomllib.loads(dump_images_toml(images))  # deep copies with TOML types
    engines_out: dict[str, Any] = tomllib.loads(dump_engines_toml(engines))
    for slot, row in _rows(images_out, engines_out):
        digest = found.get(slot.ref)
        if digest is None:
            continue
        row[_DIGEST_KEY[slot.file]] = digest
        if slot.file == "engines.toml" and "image" in row.get("unverified", []):
            row["unverified"] = [x for x in row["unverified"] if x != "image"]
            if not row["unverified"]:
                del row["unverified"]
    return images_out, engines_out


# --------------------------------------------------------------------------- the refresh


@dataclass(frozen=True, slots=True, kw_only=True)
class FileChange:
    """One file's text before and after a refresh."""

    path: Path
    old_text: str
    new_text: str

    @property
    def changed(self) -> bool:
        return self.old_text != self.new_text


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRefresh:
    """What a refresh would change (nothing is written here), what it left out, and what it could not ask.

    ``unreachable``: one line per image whose registry could not say; while any is there, nothing is written.
    ``messages``: tags a registry does not have (no digest recorded for them).
    """

    files: tuple[FileChange, ...]
    images: int
    messages: tuple[str, ...]
    unreachable: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return any(f.changed for f in self.files)

    @property
    def diff(self) -> str:
        return "".join(render_diff(f.old_text, f.new_text, f.path.name) for f in self.files)


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(str(path), "(file)", f"cannot read: {exc}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(str(path), "(document)", f"invalid TOML: {exc}") from None


def refresh_images(images_toml: Path, engines_toml: Path, source: DigestSource) -> ImageRefresh:
    """Ask ``source`` for the digest of every image tag in both files; the new texts and what was not found.

    :raises InvalidInput: a file cannot be read or is not TOML.
    """
    images_text, images = _read(Path(images_toml))
    engines_text, engines = _read(Path(engines_toml))
    refs = {slot.ref: slot for slot in image_slots(images, engines)}
    found: dict[str, str] = {}
    messages: list[str] = []
    unreachable: list[str] = []
    for ref, slot in refs.items():
        try:
            found[ref] = source.digest(slot.image, slot.tag)
        except TagNotFound as exc:
            messages.append(f"{ref}: {exc}; no digest recorded ({slot.file}: {slot.where})")
        except RegistryError as exc:
            unreachable.append(f"{ref}: {exc}")
    new_images, new_engines = merge_digests(images, engines, found)
    files = (
        FileChange(path=Path(images_toml), old_text=images_text,
                   new_text=dump_images_toml(new_images, header=split_header(images_text)[0])),
        FileChange(path=Path(engines_toml), old_text=engines_text,
                   new_text=dump_engines_toml(new_engines, header=split_header(engines_text)[0])),
    )
    return ImageRefresh(files=files, images=len(refs), messages=tuple(messages), unreachable=tuple(unreachable))


def plan_image_refresh(matrix_dir: Path | None, *, source: DigestSource | None = None) -> ImageRefresh:
    """Ask the registries for the digests of the matrix folder's images; nothing is written.

    ``source`` defaults to a ``RegistryClient`` on the images' own registries.

    :raises InvalidInput: a file cannot be read or is not TOML.
    """
    from provision.common.resources import data_dir
    from provision.data.registry import RegistryClient

    # Not load_matrix: a refresh must also run on a folder that another refresh left to complete.
    root = matrix_dir if matrix_dir is not None else data_dir("matrices")
    return refresh_images(root / "images.toml", root / "engines.toml",
                          source if source is not None else RegistryClient())


def apply_image_refresh(refresh: ImageRefresh) -> list[Path]:
    """Write the changed files once the whole matrix folder validates with them; the paths written.

    :raises ProvisionError: a registry could not be reached, or the refreshed folder does not load;
        nothing is written.
    """
    from provision.common.atomic import write_atomic
    from provision.data.matrix import load_matrix

    if refresh.unreachable:
        raise ProvisionError(f"not written: {len(refresh.unreachable)} of {refresh.images} images' registries "
                             "could not be reached")
    changed = [f for f in refresh.files if f.changed]
    if not changed:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "matrices"
        shutil.copytree(changed[0].path.parent, trial)
        for f in changed:
            (trial / f.path.name).write_text(f.new_text, encoding="utf-8")
        try:
            load_matrix(trial)
        except InvalidInput as exc:
            raise ProvisionError(f"not written: the refreshed matrix does not load ({exc})") from None
    for f in changed:
        write_atomic(f.path, f.new_text)
    return [f.path for f in changed]
