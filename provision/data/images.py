"""The base images and CI actions the rendered files pin (``matrices/images.toml``).

Read and validated with the other matrix files, so a render takes them from the
``Matrix`` it is given (``--matrix DIR`` included) and a bad row is an ``InvalidInput``
at load, naming the file and the dotted key, instead of at the render that first uses it.
Which row a plan needs (its CUDA, its Python) is still looked up at render time: the
table does not have to cover every torch build (a CUDA build without its own row takes the
newest row of its CUDA major below it; no image means that plan cannot render).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provision.common.fields import Fields
from provision.common.quoting import check_label, check_version
from provision.errors import InvalidInput
from provision.vocab import IMAGE_DIGEST_RE, PYTHON_MINOR_RE

__all__ = ["REQUIRED_ACTIONS", "Action", "CpuImage", "CudaImage", "ImageRef", "Images", "images_from_fields"]

#: The actions the rendered workflow uses; images.toml must pin each.
REQUIRED_ACTIONS = ("actions/checkout", "actions/setup-python")
_IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9./-]{0,127}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ACTION_RE = re.compile(r"^[A-Za-z0-9-]+/[A-Za-z0-9._-]+$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_CUDA_RE = re.compile(r"^\d{1,2}\.\d$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageRef:
    """A container image pinned by tag, and by digest where one was verified.

    ``digest`` is the registry's content digest of ``tag`` (its manifest list, for a multi-platform
    image) as ``provision matrix refresh --only images`` recorded it; None: the tag alone pins.
    """

    image: str
    tag: str
    digest: str | None = None

    @property
    def ref(self) -> str:
        """``image:tag`` or ``image:tag@sha256:...``, as a ``FROM`` line takes it."""
        return f"{self.image}:{self.tag}" + (f"@{self.digest}" if self.digest else "")

    @classmethod
    def parse(cls, ref: str) -> ImageRef:
        """Split ``name:tag`` or ``name:tag@sha256:...`` (an already validated reference, such as a plan's)."""
        named, _, digest = ref.partition("@")
        image, _, tag = named.rpartition(":")
        return cls(image=image, tag=tag, digest=digest or None)


@dataclass(frozen=True, slots=True, kw_only=True)
class CudaImage:
    """The runtime image for one CUDA major.minor (its tag starts with that version)."""

    cuda: str
    image: ImageRef


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuImage:
    """The slim Python image for one Python minor, for CPU plans."""

    python: str
    image: ImageRef


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """A GitHub action pinned by commit; ``tag`` only names the release in a comment."""

    name: str
    sha: str
    tag: str

    @property
    def pin(self) -> str:
        """``owner/name@<sha> # <tag>``, the ``uses:`` value of the workflow."""
        return f"{self.name}@{self.sha} # {self.tag}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Images:
    """Everything ``images.toml`` pins; ``source`` is the file, for errors about a missing row."""

    uv: ImageRef
    conda_pip: str
    cuda: tuple[CudaImage, ...]
    cpu: tuple[CpuImage, ...]
    actions: tuple[Action, ...]
    source: str

    def runtime_image(self, cuda: str) -> ImageRef | None:
        """The image of ``runtime_row(cuda)``, or None."""
        row = self.runtime_row(cuda)
        return row.image if row is not None else None

    def runtime_row(self, cuda: str) -> CudaImage | None:
        """The runtime image's row for CUDA ``major.minor``; without one, the newest row of the same major
        below it; None when there is neither.

        The image's own CUDA libraries go unused (torch's wheels bring theirs from pip); it needs a
        driver for its CUDA, which any driver that runs the build has: a same-major build runs only on
        a driver of that major's family (minor-version compatibility), so one running CUDA 13.2 builds
        runs a 13.0 image.
        """
        exact = next((row for row in self.cuda if row.cuda == cuda), None)
        if exact is not None:
            return exact
        wanted = _cuda_numbers(cuda)
        below = [row for row in self.cuda if _cuda_numbers(row.cuda)[0] == wanted[0] and _cuda_numbers(row.cuda) < wanted]
        return max(below, key=lambda row: _cuda_numbers(row.cuda), default=None)

    def python_image(self, python: str) -> ImageRef | None:
        """The slim image of Python ``python`` (a minor like ``3.11``), or None."""
        return next((row.image for row in self.cpu if row.python == python), None)


def _cuda_numbers(cuda: str) -> tuple[int, int]:
    """``"13.2"`` -> ``(13, 2)`` (rows are checked against ``_CUDA_RE`` at load; a malformed one sorts first)."""
    major, _, minor = cuda.partition(".")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else (-1, -1)


def _image_ref(row: Fields) -> ImageRef:
    image, tag = row.str("image"), row.str("tag")
    if not _IMAGE_RE.fullmatch(image) or "//" in image:
        raise row.fail("image", f"{image!r} is not an image name")
    if not _TAG_RE.fullmatch(tag):
        raise row.fail("tag", f"{tag!r} is not an image tag")
    digest = row.str("digest", required=False)
    if digest is not None and not IMAGE_DIGEST_RE.fullmatch(digest):
        raise row.fail("digest", f"{digest!r} is not sha256:<64 hex>")
    return ImageRef(image=image, tag=tag, digest=digest)


def _unique(f: Fields, key: str, values: list[str]) -> None:
    """A second row for the same CUDA, Python or action would never be used: refuse it."""
    for i, value in enumerate(values):
        if value in values[:i]:
            raise InvalidInput(f.source, f"{key}[{i}]", f"{value!r} appears twice")


def _cuda_images(f: Fields) -> tuple[CudaImage, ...]:
    rows = []
    for row in f.objs("cuda"):
        cuda = row.str("cuda")
        if not _CUDA_RE.fullmatch(cuda):
            raise row.fail("cuda", f"{cuda!r} is not a CUDA version like '12.8'")
        image = _image_ref(row)
        if not image.tag.startswith(cuda + "."):
            raise row.fail("tag", f"image CUDA does not match {cuda}")
        rows.append(CudaImage(cuda=cuda, image=image))
    _unique(f, "cuda", [r.cuda for r in rows])
    return tuple(rows)


def _cpu_images(f: Fields) -> tuple[CpuImage, ...]:
    rows = []
    for row in f.objs("cpu"):
        python = row.str("python")
        if not PYTHON_MINOR_RE.fullmatch(python):
            raise row.fail("python", f"{python!r} is not a Python version like '3.11'")
        rows.append(CpuImage(python=python, image=_image_ref(row)))
    _unique(f, "cpu", [r.python for r in rows])
    return tuple(rows)


def _actions(f: Fields) -> tuple[Action, ...]:
    actions = []
    for row in f.objs("action"):
        name, sha = row.str("name"), row.str("sha")
        if not _ACTION_RE.fullmatch(name):
            raise row.fail("name", f"{name!r} is not an action like 'owner/name'")
        if not _COMMIT_RE.fullmatch(sha):
            raise row.fail("sha", f"{sha!r} is not a 40-hex commit")
        tag = check_label(row.str("tag"), source=f.source, field=row.where("tag"))
        actions.append(Action(name=name, sha=sha, tag=tag))
    _unique(f, "action", [a.name for a in actions])
    for need in REQUIRED_ACTIONS:
        if need not in {a.name for a in actions}:
            raise f.fail("action", f"{need} is missing")
    return tuple(actions)


def images_from_fields(f: Fields) -> Images:
    """Validate a parsed ``images.toml`` (``schema_version`` already checked by the caller).

    :raises InvalidInput: naming the file and the dotted key.
    """
    meta = f.obj("meta")
    if not meta.strs("sources"):
        raise meta.fail("sources", "must list at least one source")
    meta.str("retrieved")
    conda = f.obj("conda")
    return Images(
        uv=_image_ref(f.obj("uv")),
        conda_pip=check_version(conda.str("pip"), source=f.source, field=conda.where("pip")),
        cuda=_cuda_images(f),
        cpu=_cpu_images(f),
        actions=_actions(f),
        source=f.source,
    )
