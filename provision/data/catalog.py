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
from provision.vocab import MODELS_SCHEMA, QUANTIZED

__all__ = [
    "AUTO_CLASSES",
    "MODEL_ID_RE",
    "PROCESSORS",
    "REPO_RE",
    "Catalog",
    "ModelServe",
    "ModelSpec",
    "catalog_document",
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
_SERVED_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_MEDIA_PATH_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+/?$")
_TEMPLATE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: Keys only a vision model may set: they configure image handling in the engine.
_VISION_KEYS = ("images_per_prompt", "images_per_request", "max_pixels", "mm_encoder_tp_mode",
                "mm_processor_cache_type", "allowed_local_media_path", "sglang_chat_template")
_DEFAULT_KEEP = ("lm_head",)
#: transformers' own choice for every quantized precision: everything but lm_head is quantized.
_DEFAULT_KEEP_16BIT = {p: _DEFAULT_KEEP for p in QUANTIZED}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelServe:
    """How a catalog model is served by vLLM or SGLang: the workload and the flags its users pass.

    Engine-neutral on purpose: ``matrices/engines.toml`` says how each engine spells a setting.
    """

    served_model_name: str
    context: int  # the serving context: --max-model-len / --context-length, and --context's default
    images_per_prompt: int  # the engine's per-prompt limit (--limit-mm-per-prompt); 0 for text models
    images_per_request: int  # images one request really carries: what the memory model budgets
    max_pixels: int | None  # the image processor's pixel cap; None leaves the processor's default
    chat_template_content_format: str | None
    mm_encoder_tp_mode: str | None  # "data": every GPU keeps the whole vision encoder under TP
    mm_processor_cache_type: str | None
    allowed_local_media_path: str | None
    sglang_chat_template: str | None
    source: str


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
    #: every catalog row has one; None for a local directory, which has no serving facts of its own
    serve: ModelServe | None = None

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

    def _names(self) -> dict[str, ModelSpec]:
        """Every spelling that names a model, lowercased: its id, its repo id and the repo's name."""
        names: dict[str, ModelSpec] = {}
        for m in self.models:
            names.setdefault(m.id.lower(), m)
            if m.repo is not None:
                names.setdefault(m.repo.lower(), m)
                names.setdefault(m.repo.rpartition("/")[2].lower(), m)
        return names

    def find(self, name: str) -> ModelSpec | None:
        """The model ``name`` names, whatever its case: an id, a Hugging Face repo id, or the repo's name alone."""
        return self._names().get(name.strip().lower())

    def near(self, name: str, limit: int = 3) -> tuple[str, ...]:
        """The ids of the models whose spellings are closest to ``name`` (difflib), best first."""
        import difflib

        names = self._names()
        close = difflib.get_close_matches(name.strip().lower(), list(names), n=limit * 3, cutoff=0.6)
        return tuple(dict.fromkeys(names[c].id for c in close))[:limit]


def catalog_document(catalog: Catalog) -> dict[str, Any]:
    """The ``provision.models/v1`` document ``provision models --json`` prints: every model ``--model`` takes."""
    rows = []
    for m in catalog.models:
        serve = m.serve
        rows.append({"id": m.id, "name": m.name, "repo": m.repo, "parameters": m.parameters, "default": m.default,
                     "vision": m.has_vision, "min_transformers": str(m.min_transformers),
                     "served_model_name": serve.served_model_name if serve else None,
                     "serving_context": serve.context if serve else None})
    return {"schema": MODELS_SCHEMA, "models": rows}


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
        serve=_serve(row, config),
    )


def _serve(row: Fields, config: Mapping[str, Any]) -> ModelServe:
    """The ``[model.serve]`` table, checked against the row's own config (context, vision)."""
    serve = row.obj("serve")
    vision = config.get("model_type") == "glm4v"
    if not vision:
        for key in _VISION_KEYS:
            if serve.has(key):
                raise serve.fail(key, "a text-only model takes no images")
    text = config.get("text_config", {}) if vision else config
    longest = text.get("max_position_embeddings") if isinstance(text, Mapping) else None
    context = serve.int("context", minimum=1)
    if isinstance(longest, int) and context > longest:
        raise serve.fail("context", f"{context} exceeds the model's max_position_embeddings {longest}")
    per_prompt = serve.int("images_per_prompt", minimum=1, maximum=1000) if vision else 0
    per_request = serve.int("images_per_request", minimum=1, maximum=per_prompt) if vision else 0
    return ModelServe(
        served_model_name=_pattern(serve, "served_model_name", _SERVED_NAME_RE) or "",
        context=context,
        images_per_prompt=per_prompt,
        images_per_request=per_request,
        max_pixels=serve.int("max_pixels", required=False, minimum=1),
        chat_template_content_format=serve.choice("chat_template_content_format", ("auto", "string", "openai"),
                                                  required=False),
        mm_encoder_tp_mode=serve.choice("mm_encoder_tp_mode", ("weights", "data"), required=False),
        mm_processor_cache_type=serve.choice("mm_processor_cache_type", ("lru", "shm"), required=False),
        allowed_local_media_path=_media_path(serve),
        sglang_chat_template=_pattern(serve, "sglang_chat_template", _TEMPLATE_RE, required=False),
        source=serve.str("source"),
    )


def _pattern(f: Fields, key: str, pattern: re.Pattern[str], *, required: bool = True) -> str | None:
    text = f.str(key, required=required)
    if text is not None and not pattern.fullmatch(text):
        raise f.fail(key, f"{text!r} must match {pattern.pattern}")
    return text


def _media_path(serve: Fields) -> str | None:
    """An absolute folder the server may read images from; never the whole filesystem."""
    text = serve.str("allowed_local_media_path", required=False)
    if text is None:
        return None
    if text.strip("/") == "":
        raise serve.fail("allowed_local_media_path", "'/' lets any request read any file the server can; name a folder")
    if not _MEDIA_PATH_RE.fullmatch(text) or "/../" in f"{text}/" or "/./" in f"{text}/":
        raise serve.fail("allowed_local_media_path", f"{text!r} is not an absolute folder path")
    return text


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
    """A catalog id, a Hugging Face repo id of a catalog model, or a local directory holding ``config.json``.

    Ids and repo ids match whatever their case (``zai-org/AutoGLM-Phone-9B``, ``AutoGLM-Phone-9B`` and
    ``autoglm-phone-9b`` are one model). A catalog match wins over a same-named directory. A path that
    is not a directory says so; anything else is exit 2 with the nearest ids.

    :raises InvalidInput: unknown id or repo, a missing directory, a directory without a usable config.json.
    """
    spec = catalog.get(id_or_dir) or catalog.find(id_or_dir)
    if spec is not None:
        return spec
    directory = Path(id_or_dir).expanduser()
    if id_or_dir.strip() and exists(directory):
        return _local_spec(directory, read_config)
    if id_or_dir.strip() and directory.exists():
        raise InvalidInput("--model", "model", f"{id_or_dir}: is a file; a model directory holds config.json")
    if _looks_like_path(id_or_dir):
        raise InvalidInput("--model", "model", f"{id_or_dir}: no such directory")
    near = catalog.near(id_or_dir)
    hint = f"did you mean {' or '.join(near)}?" if near else f"known ids: {', '.join(catalog.ids)}."
    raise InvalidInput("--model", "model", f"{id_or_dir!r} is not a known model; {hint} `provision models` lists "
                                           "them; a local model is a directory holding config.json")


def _looks_like_path(text: str) -> bool:
    """A local path rather than an id or ``owner/name``: absolute, ``./``, ``../``, ``~``, or deeper than one slash."""
    return (text.startswith(("/", "./", "../", "~", "\\")) or Path(text).is_absolute() or text.count("/") > 1
            or "\\" in text or text in (".", ".."))


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
