"""The model catalog (``matrices/models.toml``) and ``--model ID_OR_DIR`` resolution.

Ids and repo names end up in shell scripts and Dockerfiles, so both are checked
against strict patterns here, once, and every row's parameter counts are recomputed
from its own ``config`` so that a hand edit cannot leave the table inconsistent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import Version

from provision.common.fields import Fields, read_json_file, read_toml_file
from provision.common.resources import data_dir
from provision.data.architecture import parameters_by_part, parse_architecture
from provision.errors import InvalidInput
from provision.vocab import QUANTIZED

__all__ = [
    "AUTO_CLASSES",
    "MODEL_ID_RE",
    "PROCESSORS",
    "REPO_RE",
    "Catalog",
    "ModelSpec",
    "default_catalog_path",
    "load_catalog",
    "resolve_model",
]

MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,63}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
AUTO_CLASSES = ("AutoModelForImageTextToText", "AutoModelForCausalLM")
PROCESSORS = ("AutoProcessor", "AutoTokenizer")
SCHEMA_VERSION = 1

#: What a local checkpoint's ``model_type`` implies: (auto class, processor, min transformers).
#: glm4v: 4.53.0 reads the v4 rope layout; the v5 ``rope_parameters`` layout needs 5.0.0.
_FAMILY = {
    "glm4v": ("AutoModelForImageTextToText", "AutoProcessor", "4.53.0"),
    "glm4": ("AutoModelForCausalLM", "AutoTokenizer", "4.51.3"),
    "glm": ("AutoModelForCausalLM", "AutoTokenizer", "4.46.0"),
}
_V5_ROPE = "5.0.0"
_DEFAULT_KEEP = ("lm_head",)
#: transformers' own choice for every quantized precision: everything but lm_head is quantized.
_DEFAULT_KEEP_16BIT = {p: _DEFAULT_KEEP for p in QUANTIZED}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """One model the toolkit can provision; ``repo`` is None for a local directory."""

    id: str
    name: str
    repo: str | None
    auto_class: str
    processor: str
    min_transformers: Version
    parameters: int
    parameters_by_part: dict[str, int] = field(compare=False)
    config: dict[str, Any] = field(compare=False, repr=False)
    keep_16bit: dict[str, tuple[str, ...]] = field(compare=False)
    source: str = ""
    default: bool = False
    is_local: bool = False
    path: Path | None = None

    @property
    def model_type(self) -> str:
        return str(self.config["model_type"])

    @property
    def has_vision(self) -> bool:
        return self.model_type == "glm4v"

    def skip_modules(self, precision: str) -> tuple[str, ...]:
        """The Linear modules bitsandbytes leaves 16-bit at ``precision`` (empty when unquantized)."""
        return self.keep_16bit[precision] if precision in QUANTIZED else ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalog:
    models: tuple[ModelSpec, ...]
    source: str = ""

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    @property
    def default(self) -> ModelSpec:
        return next(m for m in self.models if m.default)

    def get(self, model_id: str) -> ModelSpec | None:
        return next((m for m in self.models if m.id == model_id), None)


def default_catalog_path() -> Path:
    return data_dir("matrices") / "models.toml"


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate ``models.toml``.

    :raises InvalidInput: unreadable file, wrong schema, a bad or duplicate id, a repo that is
        not ``owner/name``, not exactly one default, or counts that disagree with the config.
    """
    path = path or default_catalog_path()
    src = str(path)
    doc = Fields(read_toml_file(path), src)
    version = doc.int("schema_version")
    if version != SCHEMA_VERSION:
        raise doc.fail("schema_version", f"{version} is not supported; expected {SCHEMA_VERSION}")
    meta = doc.obj("meta")
    assert meta is not None
    meta.strs("sources")
    meta.str("retrieved")
    rows = doc.objs("model")
    if not rows:
        raise doc.fail("model", "the catalog lists no models")
    models: list[ModelSpec] = []
    for row in rows:
        spec = _spec_from_row(row)
        if any(m.id == spec.id for m in models):
            raise row.fail("id", f"duplicate id {spec.id!r}")
        models.append(spec)
    defaults = [m.id for m in models if m.default]
    if len(defaults) != 1:
        raise doc.fail("model", f"exactly one model must have default = true, found {len(defaults)}"
                       + (f" ({', '.join(defaults)})" if defaults else ""))
    return Catalog(models=tuple(models), source=src)


def _spec_from_row(row: Fields) -> ModelSpec:
    model_id = row.str("id")
    if not MODEL_ID_RE.fullmatch(model_id):
        raise row.fail("id", f"{model_id!r} must match {MODEL_ID_RE.pattern}")
    repo = row.str("repo")
    if not REPO_RE.fullmatch(repo) or ".." in repo:
        raise row.fail("repo", f"{repo!r} is not a Hugging Face repo id (owner/name)")
    config_fields = row.obj("config")
    assert config_fields is not None
    config = dict(config_fields.data)
    arch = parse_architecture(config, source=row.source, path=row.where("config"))
    parameters = row.int("parameters", minimum=1)
    counted = parameters_by_part(arch)
    if parameters != sum(counted.values()):
        raise row.fail("parameters", f"{parameters} disagrees with {sum(counted.values())} counted from config")
    by_part_fields = row.obj("parameters_by_part")
    assert by_part_fields is not None
    by_part = {key: by_part_fields.int(key) for key in by_part_fields.data}
    if by_part != counted:
        raise row.fail("parameters_by_part", f"{by_part} disagrees with {counted} counted from config")
    return ModelSpec(
        id=model_id,
        name=row.str("name"),
        repo=repo,
        auto_class=row.choice("auto_class", AUTO_CLASSES),
        processor=row.choice("processor", PROCESSORS),
        min_transformers=row.version("min_transformers"),
        parameters=parameters,
        parameters_by_part=by_part,
        config=config,
        keep_16bit=_keep(row),
        source=row.str("source"),
        default=row.bool("default", required=False, default=False),
    )


def _keep(row: Fields) -> dict[str, tuple[str, ...]]:
    keep = row.obj("keep_16bit", required=False)
    if keep is None:
        return dict(_DEFAULT_KEEP_16BIT)
    for key in keep.data:
        if key not in QUANTIZED:
            raise keep.fail(key, f"expected one of {', '.join(QUANTIZED)}")
    return {p: tuple(keep.strs(p)) if keep.has(p) else _DEFAULT_KEEP for p in QUANTIZED}


# ---------------------------------------------------------------- --model


def resolve_model(
    id_or_dir: str,
    catalog: Catalog,
    *,
    exists: Callable[[Path], bool] = Path.is_dir,
    read_config: Callable[[Path], Any] = read_json_file,
) -> ModelSpec:
    """A catalog id, or a local directory holding a transformers ``config.json``.

    An id wins over a same-named directory; a value that is neither is exit 2 listing the ids.

    :raises InvalidInput: unknown id, a directory without a usable config.json.
    """
    spec = catalog.get(id_or_dir)
    if spec is not None:
        return spec
    directory = Path(id_or_dir).expanduser()
    if id_or_dir.strip() and exists(directory):
        return _local_spec(directory, read_config)
    raise InvalidInput(
        "--model", "model",
        f"{id_or_dir!r} is not a known model; known ids: {', '.join(catalog.ids)} "
        "(or a directory holding config.json)",
    )


def _local_spec(directory: Path, read_config: Callable[[Path], Any]) -> ModelSpec:
    config_path = directory / "config.json"
    data = read_config(config_path)
    source = str(config_path)
    if not isinstance(data, Mapping):
        raise InvalidInput(source, "(document)", "expected a JSON object")
    config = dict(data)
    arch = parse_architecture(config, source=source)
    auto_class, processor, minimum = _FAMILY[arch.family]
    text = config.get("text_config")
    if arch.family == "glm4v" and isinstance(text, Mapping) and "rope_parameters" in text:
        minimum = _V5_ROPE
    by_part = parameters_by_part(arch)
    name = directory.resolve().name or "model"
    return ModelSpec(
        id=_local_id(name),
        name=name,
        repo=None,
        auto_class=auto_class,
        processor=processor,
        min_transformers=Version(minimum),
        parameters=sum(by_part.values()),
        parameters_by_part=by_part,
        config=config,
        keep_16bit=dict(_DEFAULT_KEEP_16BIT),
        source=source,
        is_local=True,
        path=directory,
    )


def _local_id(name: str) -> str:
    """A safe id from a directory name: lowercase, runs of other characters become '-'."""
    slug = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.")[:64].strip("-.")
    return slug if slug and MODEL_ID_RE.fullmatch(slug) else "local-model"
