"""Serving engines (vLLM, SGLang) and their releases, from ``matrices/engines.toml``.

The planner picks an engine release the way it picks a torch build: by platform, driver
(through the release's CUDA and cuda.toml), compute capability, Python and glibc. So the
file is validated completely here, once, into frozen dataclasses, and cross-checked
against cuda.toml and torch.toml: a release whose CUDA has no driver floor, or whose torch
pin is not a torch release we know, would otherwise be a plan nobody can install.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from provision.common.fields import Fields, read_toml
from provision.vocab import ARCH_RE, CC_RE, IMAGE_DIGEST_RE, PYTHON_MINOR_RE, parse_arch

__all__ = [
    "ENGINE_NAMES",
    "ENGINE_PLATFORMS",
    "IMAGE_REF_RE",
    "IMAGE_TAG_RE",
    "REQUIRED_FLAGS",
    "Engine",
    "EngineRelease",
    "EngineVariant",
    "Engines",
    "Excluded",
    "Known",
    "MemoryRule",
    "PrecisionRule",
    "QuantRule",
    "TensorParallel",
    "admits_transformers_5",
    "known_from_files",
    "load_engines",
    "parse_engines",
]

ENGINE_NAMES = ("vllm", "sglang")
#: The only platforms either engine publishes CUDA wheels for (names as in vocab.PLATFORMS).
ENGINE_PLATFORMS = ("linux-x86_64", "linux-aarch64")
#: Logical flag names every engine must spell, so the renderer never meets a missing one.
REQUIRED_FLAGS = (
    "served_model_name", "max_model_len", "memory_fraction", "tensor_parallel_size",
    "quantization", "dtype", "port", "host",
)
#: Precisions an engine reaches by quantizing in flight (vocab.PRECISIONS plus the engines' fp8).
QUANT_PRECISIONS = ("fp8", "int8", "nf4")
#: Release fields an ``unverified`` entry may name (``archs.linux-aarch64`` names one platform).
RELEASE_FIELDS = (
    "version", "date", "torch", "torchvision", "torchaudio", "transformers", "requires_python",
    "pythons", "platforms", "glibc", "wheel_glibc", "cuda", "archs", "kernel",
    "gpu_memory_utilization", "image", "image_digest", "image_cuda", "variants",
)

_FLAG_RE = re.compile(r"^--[a-z0-9][a-z0-9-]*$")
_ARG_RE = re.compile(r"^[A-Za-z0-9._:/=-]+$")
#: An image reference with its tag, ``vllm/vllm-openai:v0.33.0`` (the plan's ``serve.image`` too).
IMAGE_TAG_RE = re.compile(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
#: The same, pinned by digest where one is recorded: ``vllm/vllm-openai:v0.33.0@sha256:<64 hex>`` (``serve.image``).
IMAGE_REF_RE = re.compile(IMAGE_TAG_RE.pattern.rstrip("$") + f"(?:@{IMAGE_DIGEST_RE.pattern})?$")
_URL_RE = re.compile(r"^https://[A-Za-z0-9.-]+(?:/[A-Za-z0-9._~%/+-]*)?$")
_ROUTE_RE = re.compile(r"^/[a-z0-9_/-]*$")
_GLIBC_RE = re.compile(r"^2\.\d{1,2}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def admits_transformers_5(spec: SpecifierSet) -> bool:
    """Whether ``spec`` lets any transformers 5.x (pre-releases included) in.

    A set of ``==``/``!=``/``<``/``>=`` clauses can only change its answer at the versions it
    names, so testing 5.0.0rc0, 5.0.0 and every named 5.x version plus its next patch and
    minor decides it without enumerating releases.
    """
    probes = {Version("5.0.0rc0"), Version("5.0.0")}
    for clause in spec:
        text = clause.version.rstrip(".*")
        try:
            named = Version(text)
        except ValueError:
            continue
        if named.major != 5:
            continue
        major, minor, patch = (*named.release, 0, 0)[:3]
        probes |= {named, Version(f"{major}.{minor}.{patch + 1}"), Version(f"{major}.{minor + 1}.0")}
    return any(spec.contains(v, prereleases=True) for v in probes)


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecisionRule:
    """16-bit precision by compute capability: bf16 from ``bf16_min_cc``, ``below`` under it."""

    bf16_min_cc: tuple[int, int]
    below: str
    dtypes: dict[str, str] = field(hash=False)  # precision -> the engine's --dtype value
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantRule:
    """A precision the engine reaches by quantizing the 16-bit checkpoint at load."""

    precision: str
    method: str  # the --quantization value
    kind: str
    min_cc: tuple[int, int]
    below_cc: tuple[int, int] | None  # the rule holds for min_cc <= cc < below_cc
    releases: SpecifierSet  # engine releases that have the method; empty = all
    requires: Requirement | None  # a package the engine does not depend on itself
    in_flight: bool
    #: the whole 16-bit checkpoint is loaded onto the GPU before it is quantized (a load-time peak)
    loads_16_bit_first: bool = False
    source: str

    def applies(self, version: Version, cc: tuple[int, int]) -> bool:
        """Whether this release quantizes this way on a GPU of compute capability ``cc``."""
        if cc < self.min_cc or (self.below_cc is not None and cc >= self.below_cc):
            return False
        return self.releases.contains(version, prereleases=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorParallel:
    """What a tensor-parallel size must divide, and the args that keep the vision encoder whole."""

    must_divide: tuple[str, ...]  # text-config keys
    encoder_data_args: tuple[str, ...]
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryRule:
    """How the engine's memory fraction defaults: a number per release, or computed at start."""

    fraction: str  # "per-release" | "computed"
    covers: str
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineVariant:
    """A build of the release for another CUDA than PyPI's, and where it installs from."""

    cuda: Version
    install: str
    index_url: str | None
    image: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineRelease:
    version: Version
    date: str
    torch: Version
    torchvision: Version | None
    torchaudio: Version | None
    transformers: SpecifierSet
    requires_python: SpecifierSet
    pythons: tuple[str, ...] | None  # CPython minors with wheels; None: any Requires-Python admits
    platforms: tuple[str, ...]
    glibc: Version  # the effective floor: engine wheel, torch and kernel wheels together
    wheel_glibc: Version | None  # the engine wheel's own manylinux tag; None for a pure-Python wheel
    cuda: Version  # CUDA of the default (PyPI) build
    archs: dict[str, tuple[str, ...]] = field(hash=False)  # cubins per platform
    kernel: Requirement | None
    gpu_memory_utilization: float | None
    image: str
    image_cuda: Version
    variants: tuple[EngineVariant, ...]
    unverified: tuple[str, ...]
    note: str
    source: str
    #: the registry's digest of ``image`` (``provision matrix refresh --only images``); None: the tag alone pins
    image_digest: str | None = None

    @property
    def image_ref(self) -> str:
        """``image``, pinned by its digest where one is recorded: what a plan's ``serve.image`` and ``FROM`` take."""
        return f"{self.image}@{self.image_digest}" if self.image_digest else self.image

    def archs_for(self, platform: str) -> tuple[str, ...]:
        return self.archs.get(platform, ())

    def min_cc(self, platform: str) -> tuple[int, int] | None:
        """The lowest compute capability the default build has kernels for; None off its platforms."""
        archs = self.archs_for(platform)
        return min(parse_arch(a) for a in archs) if archs else None

    def admits_python(self, python: str) -> bool:
        """Installable on CPython ``X.Y``: Requires-Python and, where restricted, a wheel for it."""
        if self.pythons is not None and python not in self.pythons:
            return False
        return self.requires_python.contains(f"{python}.0", prereleases=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Excluded:
    """A release left out on purpose, so that a refresh does not add it back."""

    version: Version
    why: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Engine:
    name: str
    package: str
    entrypoint: tuple[str, ...]
    health_route: str
    default_port: int
    platforms: tuple[str, ...]
    image_repository: str
    flags: dict[str, str] = field(hash=False)
    precision: PrecisionRule
    quantization: tuple[QuantRule, ...]
    tensor_parallel: TensorParallel
    memory: MemoryRule
    excluded: tuple[Excluded, ...]
    releases: tuple[EngineRelease, ...]  # newest first
    note: str
    source: str

    @property
    def model_flag(self) -> str | None:
        """The flag before the model path; None when the model is the first positional argument."""
        return self.flags.get("model")

    def release(self, version: Version | str) -> EngineRelease | None:
        key = Version(str(version))
        return next((r for r in self.releases if r.version == key), None)

    def quantizations(self, release: EngineRelease, cc: tuple[int, int]) -> tuple[QuantRule, ...]:
        return tuple(q for q in self.quantization if q.applies(release.version, cc))


@dataclass(frozen=True, slots=True, kw_only=True)
class Engines:
    engines: tuple[Engine, ...]
    source: str = ""

    def get(self, name: str) -> Engine | None:
        return next((e for e in self.engines if e.name == name), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Known:
    """What the rest of the matrix knows, for the cross-checks."""

    toolkits: frozenset[Version]  # cuda.toml toolkit rows, major.minor
    families: frozenset[int]  # cuda.toml family rows
    torch: Mapping[Version, Version | None]  # torch.toml release -> its torchvision


# ------------------------------------------------------------------ small readers


def _cc(f: Fields, key: str, *, required: bool = True) -> tuple[int, int] | None:
    text = f.str(key, required=required)
    if text is None:
        return None
    if not CC_RE.fullmatch(text):
        raise f.fail(key, f"{text!r} is not a compute capability like '8.0'")
    major, minor = text.split(".")
    return int(major), int(minor)


def _spec(f: Fields, key: str) -> SpecifierSet:
    """A specifier; "" means no bound (the METADATA sets none)."""
    text = f.data.get(key)
    if text == "":
        return SpecifierSet()
    text = f.str(key)
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        raise f.fail(key, f"{text!r} is not a version specifier") from None


def _requirement(f: Fields, key: str) -> Requirement | None:
    text = f.str(key, required=False)
    if text is None:
        return None
    try:
        return Requirement(text)
    except InvalidRequirement:
        raise f.fail(key, f"{text!r} is not a requirement like 'bitsandbytes>=0.46.1'") from None


def _version_re(f: Fields, key: str, pattern: re.Pattern[str], like: str, *, required: bool = True) -> Version | None:
    text = f.str(key, required=required)
    if text is None:
        return None
    if not pattern.fullmatch(text):
        raise f.fail(key, f"{text!r} is not like {like!r}")
    return Version(text)


def _matching(f: Fields, key: str, pattern: re.Pattern[str], like: str, *, required: bool = True) -> str | None:
    text = f.str(key, required=required)
    if text is not None and not pattern.fullmatch(text):
        raise f.fail(key, f"{text!r} is not like {like!r}")
    return text


def _strs_matching(f: Fields, key: str, pattern: re.Pattern[str], like: str) -> tuple[str, ...]:
    items = f.strs(key)
    for i, item in enumerate(items):
        if not pattern.fullmatch(item):
            raise f.item_fail(key, i, f"{item!r} is not like {like!r}")
    return tuple(items)


def _platforms(f: Fields, key: str) -> tuple[str, ...]:
    items = f.strs(key)
    for i, item in enumerate(items):
        if item not in ENGINE_PLATFORMS:
            raise f.item_fail(key, i, f"{item!r} is not one of {', '.join(ENGINE_PLATFORMS)}")
    if not items or len(set(items)) != len(items):
        raise f.fail(key, "must list each platform once, at least one")
    return tuple(items)


def _fraction(f: Fields, key: str) -> float | None:
    """A number in (0, 1]; TOML writes 0.9 as a float, never as a bool or a string."""
    if not f.has(key):
        return None
    value = f.data[key]
    if isinstance(value, bool) or not isinstance(value, float | int):
        raise f.fail(key, "expected a number between 0 and 1")
    if not 0 < value <= 1:
        raise f.fail(key, f"{value} is not in (0, 1]")
    return float(value)


# ------------------------------------------------------------------ engine-level tables


def _flags(f: Fields) -> dict[str, str]:
    table = f.obj("flags")
    out = {key: _matching(table, key, _FLAG_RE, "--flag-name") or "" for key in table.data}
    missing = [k for k in REQUIRED_FLAGS if k not in out]
    if missing:
        raise f.fail("flags", f"missing {', '.join(missing)}")
    return out


def _precision(f: Fields) -> PrecisionRule:
    p = f.obj("precision")
    bf16 = _cc(p, "bf16_min_cc")
    assert bf16 is not None
    dtypes = p.obj("dtypes")
    values = {}
    for key in dtypes.data:
        if key not in ("bf16", "fp16", "fp32"):
            raise dtypes.fail(key, "expected bf16, fp16 or fp32")
        values[key] = _matching(dtypes, key, _ARG_RE, "bfloat16") or ""
    below = p.choice("below", ("fp16", "fp32"))
    for needed in ("bf16", below):
        if needed not in values:
            raise p.fail("dtypes", f"no --dtype value for {needed}")
    return PrecisionRule(bf16_min_cc=bf16, below=below, dtypes=values, source=p.str("source"))


def _quant_rule(q: Fields) -> QuantRule:
    min_cc = _cc(q, "min_cc")
    below_cc = _cc(q, "below_cc", required=False)
    assert min_cc is not None
    if below_cc is not None and below_cc <= min_cc:
        raise q.fail("below_cc", "must be above min_cc")
    releases = _spec(q, "releases") if q.has("releases") else SpecifierSet()
    return QuantRule(
        precision=q.choice("precision", QUANT_PRECISIONS),
        method=_matching(q, "method", _ARG_RE, "fp8") or "",
        kind=q.str("kind"),
        min_cc=min_cc,
        below_cc=below_cc,
        releases=releases,
        requires=_requirement(q, "requires"),
        in_flight=q.bool("in_flight"),
        loads_16_bit_first=q.bool("loads_16_bit_first", required=False, default=False),
        source=q.str("source"),
    )


def _tensor_parallel(f: Fields) -> TensorParallel:
    t = f.obj("tensor_parallel")
    return TensorParallel(
        must_divide=_strs_matching(t, "must_divide", re.compile(r"^[a-z_]+$"), "num_attention_heads"),
        encoder_data_args=_strs_matching(t, "encoder_data_args", _ARG_RE, "--mm-encoder-tp-mode"),
        source=t.str("source"),
    )


def _memory(f: Fields) -> MemoryRule:
    m = f.obj("memory")
    return MemoryRule(
        fraction=m.choice("fraction", ("per-release", "computed")),
        covers=m.str("covers"),
        source=m.str("source"),
    )


def _excluded(f: Fields) -> tuple[Excluded, ...]:
    return tuple(Excluded(version=row.version("version"), why=row.str("why")) for row in f.objs("excluded", required=False))


# ------------------------------------------------------------------ releases


def _archs(r: Fields, platforms: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    table = r.obj("archs")
    out = {}
    for platform in table.data:
        if platform not in platforms:
            raise table.fail(platform, f"{platform!r} is not one of this release's platforms ({', '.join(platforms)})")
        out[platform] = _strs_matching(table, platform, ARCH_RE, "sm_80")
        if not out[platform]:
            raise table.fail(platform, "must list the architectures the build has kernels for")
    missing = [p for p in platforms if p not in out]
    if missing:
        raise r.fail("archs", f"no architectures for {', '.join(missing)}")
    return out


def _variant(v: Fields) -> EngineVariant:
    cuda = _version_re(v, "cuda", re.compile(r"^\d{2}\.\d$"), "12.9")
    assert cuda is not None
    return EngineVariant(
        cuda=cuda,
        install=v.str("install"),
        index_url=_matching(v, "index_url", _URL_RE, "https://host/path", required=False),
        image=_matching(v, "image", IMAGE_TAG_RE, "repo/name:tag", required=False),
    )


def _pythons(r: Fields) -> tuple[str, ...] | None:
    if not r.has("pythons"):
        return None
    items = _strs_matching(r, "pythons", PYTHON_MINOR_RE, "3.11")
    if not items:
        raise r.fail("pythons", "omit the key when any Python is allowed")
    return items


def _unverified(r: Fields) -> tuple[str, ...]:
    items = r.strs("unverified", required=False)
    for i, item in enumerate(items):
        if item.split(".", 1)[0] not in RELEASE_FIELDS:
            raise r.item_fail("unverified", i, f"{item!r} names no release field")
    return tuple(items)


def _release(r: Fields) -> EngineRelease:
    platforms = _platforms(r, "platforms")
    glibc = _version_re(r, "glibc", _GLIBC_RE, "2.28")
    wheel_glibc = _version_re(r, "wheel_glibc", _GLIBC_RE, "2.28", required=False)
    cuda = _version_re(r, "cuda", re.compile(r"^\d{2}\.\d$"), "13.0")
    image_cuda = _version_re(r, "image_cuda", re.compile(r"^\d{2}\.\d$"), "13.0")
    assert glibc is not None and cuda is not None and image_cuda is not None
    if wheel_glibc is not None and glibc < wheel_glibc:
        raise r.fail("glibc", f"{glibc} is below the wheel's own manylinux floor {wheel_glibc}")
    return EngineRelease(
        version=r.version("version"),
        date=_matching(r, "date", _DATE_RE, "2026-04-18") or "",
        torch=r.version("torch"),
        torchvision=r.version("torchvision", required=False),
        torchaudio=r.version("torchaudio", required=False),
        transformers=_spec(r, "transformers"),
        requires_python=_spec(r, "requires_python"),
        pythons=_pythons(r),
        platforms=platforms,
        glibc=glibc,
        wheel_glibc=wheel_glibc,
        cuda=cuda,
        archs=_archs(r, platforms),
        kernel=_requirement(r, "kernel"),
        gpu_memory_utilization=_fraction(r, "gpu_memory_utilization"),
        image=_matching(r, "image", IMAGE_TAG_RE, "repo/name:tag") or "",
        image_digest=_matching(r, "image_digest", IMAGE_DIGEST_RE, "sha256:<64 hex>", required=False),
        image_cuda=image_cuda,
        variants=tuple(_variant(v) for v in r.objs("variants", required=False)),
        unverified=_unverified(r),
        note=r.str("note", required=False, default=""),
        source=r.str("source"),
    )


def _check_release(r: Fields, release: EngineRelease, engine: Fields, memory: MemoryRule, known: Known) -> None:
    """What one release must agree on, with itself, its engine and the rest of the matrix."""
    if not admits_transformers_5(release.transformers):
        raise r.fail("transformers", f"{release.transformers} admits no transformers 5; list the release under excluded")
    for i, python in enumerate(release.pythons or ()):
        if not release.requires_python.contains(f"{python}.0", prereleases=True):
            raise r.item_fail("pythons", i, f"{python} is outside requires_python {release.requires_python}")
    repository = engine.str("image_repository")
    if not release.image.startswith(f"{repository}:"):
        raise r.fail("image", f"{release.image!r} is not a tag of {repository}")
    per_release = memory.fraction == "per-release"
    if per_release != (release.gpu_memory_utilization is not None):
        need = "needs" if per_release else "must not have"
        raise r.fail("gpu_memory_utilization", f"{need} a value: this engine's memory fraction is {memory.fraction}")
    for key, cuda in (("cuda", release.cuda), ("image_cuda", release.image_cuda)):
        _check_cuda(r, key, cuda, known)
    for v, variant in zip(r.objs("variants", required=False), release.variants, strict=True):
        _check_cuda(v, "cuda", variant.cuda, known)
    if release.torch not in known.torch:
        raise r.fail("torch", f"torch {release.torch} is not a release in torch.toml")
    paired = known.torch[release.torch]
    if release.torchvision is not None and paired is not None and release.torchvision != paired:
        raise r.fail("torchvision",
                     f"{release.torchvision} is not torch {release.torch}'s torchvision ({paired}) in torch.toml")


def _check_cuda(f: Fields, key: str, cuda: Version, known: Known) -> None:
    """A CUDA without a cuda.toml row would leave the planner without a driver floor."""
    if cuda not in known.toolkits:
        raise f.fail(key, f"CUDA {cuda} has no toolkit row in cuda.toml")
    if cuda.major not in known.families:
        raise f.fail(key, f"CUDA family {cuda.major} has no row in cuda.toml")


def _releases(e: Fields, platforms: tuple[str, ...], memory: MemoryRule, known: Known,
              excluded: tuple[Excluded, ...]) -> tuple[EngineRelease, ...]:
    out: list[EngineRelease] = []
    left_out = {x.version for x in excluded}
    for r in e.objs("release"):
        release = _release(r)
        if any(o.version == release.version for o in out):
            raise r.fail("version", f"release {release.version} appears twice")
        if release.version in left_out:
            raise r.fail("version", f"release {release.version} is also listed under excluded")
        outside = [p for p in release.platforms if p not in platforms]
        if outside:
            raise r.fail("platforms", f"{', '.join(outside)} is not a platform of the engine")
        _check_release(r, release, e, memory, known)
        out.append(release)
    if not out:
        raise e.fail("release", "the engine lists no releases")
    return tuple(sorted(out, key=lambda x: x.version, reverse=True))


def _engine(e: Fields, known: Known) -> Engine:
    name = e.choice("name", ENGINE_NAMES)
    platforms = _platforms(e, "platforms")
    memory = _memory(e)
    excluded = _excluded(e)
    quantization = tuple(_quant_rule(q) for q in e.objs("quantization", required=False))
    entrypoint = _strs_matching(e, "entrypoint", _ARG_RE, "vllm")
    if not entrypoint:
        raise e.fail("entrypoint", "must name the server command")
    return Engine(
        name=name,
        package=_matching(e, "package", re.compile(r"^[a-z0-9][a-z0-9._-]*$"), "vllm") or "",
        entrypoint=entrypoint,
        health_route=_matching(e, "health_route", _ROUTE_RE, "/health") or "",
        default_port=e.int("default_port", minimum=1, maximum=65535),
        platforms=platforms,
        image_repository=_matching(e, "image_repository", re.compile(r"^[a-z0-9]+(?:[._/-][a-z0-9]+)*$"),
                                   "vllm/vllm-openai") or "",
        flags=_flags(e),
        precision=_precision(e),
        quantization=quantization,
        tensor_parallel=_tensor_parallel(e),
        memory=memory,
        excluded=excluded,
        releases=_releases(e, platforms, memory, known, excluded),
        note=e.str("note", required=False, default=""),
        source=e.str("source"),
    )


def parse_engines(doc: Fields, known: Known) -> Engines:
    """Validate a parsed engines.toml against ``known``; newest release first per engine.

    :raises InvalidInput: naming the file and the dotted field that is wrong.
    """
    version = doc.int("schema_version", minimum=0)
    if version != 1:
        raise doc.fail("schema_version", f"unsupported schema_version {version}; this provision reads 1")
    meta = doc.obj("meta")
    meta.strs("sources")
    meta.str("retrieved")
    engines: list[Engine] = []
    for e in doc.objs("engine"):
        engine = _engine(e, known)
        if any(x.name == engine.name for x in engines):
            raise e.fail("name", f"engine {engine.name!r} appears twice")
        engines.append(engine)
    if not engines:
        raise doc.fail("engine", "the file lists no engines")
    return Engines(engines=tuple(engines), source=doc.source)


def known_from_files(root: Path) -> Known:
    """The cross-check facts read straight from cuda.toml and torch.toml under ``root``.

    For a standalone load; ``load_matrix`` builds the same from the tables it validated.
    """
    cuda = Fields(read_toml(root / "cuda.toml")[0], str(root / "cuda.toml"))
    torch = Fields(read_toml(root / "torch.toml")[0], str(root / "torch.toml"))
    return Known(
        toolkits=frozenset(row.version("version") for row in cuda.objs("toolkit")),
        families=frozenset(row.int("major") for row in cuda.objs("family")),
        torch={row.version("version"): row.version("torchvision", required=False) for row in torch.objs("release")},
    )


def load_engines(root: Path, known: Known | None = None) -> Engines:
    """Read ``root/engines.toml`` and check it against ``known`` (default: root's cuda.toml and torch.toml).

    :raises InvalidInput: naming the file and the dotted field that is wrong.
    """
    path = root / "engines.toml"
    data, _raw = read_toml(path)
    return parse_engines(Fields(data, str(path)), known if known is not None else known_from_files(root))
