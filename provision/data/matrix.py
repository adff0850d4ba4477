"""Load and cross-check the matrices (``matrices/*.toml``): one ``Matrix`` for all of them.

Everything is validated once, here, into frozen dataclasses with real
``Version``/``SpecifierSet`` values; the planner, the render (base images, CI actions)
and detection (the GPU table) then trust the data and never re-parse. A bad file is one
``InvalidInput`` naming the file and dotted key. The digest recorded in locks covers
every file, so two matrices that render differently never share a digest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from provision.common.fields import Fields, read_toml
from provision.data.engines import Engines, Known, parse_engines
from provision.data.gpus import GpuTable, gpu_table_from_fields
from provision.data.images import Images, images_from_fields
from provision.errors import InvalidInput
from provision.vocab import ARCH_RE, CC_RE, PLATFORMS, PYTHON_MINOR_RE, PYTORCH_INDEX, VARIANT_RE

__all__ = [
    "PLATFORMS",
    "BnbRelease",
    "Companion",
    "CudaFamily",
    "CudaToolkit",
    "Matrix",
    "TorchRelease",
    "TorchVariant",
    "load_matrix",
]

#: Every file a ``Matrix`` is read from, in digest order.
MATRIX_FILES = ("cuda.toml", "torch.toml", "bitsandbytes.toml", "companions.toml", "models.toml", "images.toml",
                "gpus.toml", "engines.toml")


def on_pypi(platform: str, pypi_default: Mapping[str, str], variant: str) -> bool:
    """PyPI carries macOS wheels and each platform's default build, under the plain version."""
    return platform.startswith("macos") or pypi_default.get(platform) == variant


@dataclass(frozen=True, slots=True, kw_only=True)
class CudaFamily:
    """Minor-version compatibility: a driver at ``*_min_driver`` runs any ``major.x`` build."""

    major: int
    linux_min_driver: Version
    windows_min_driver: Version

    def min_driver(self, os_name: str) -> Version:
        return self.windows_min_driver if os_name == "windows" else self.linux_min_driver


@dataclass(frozen=True, slots=True, kw_only=True)
class CudaToolkit:
    """A CUDA toolkit and the driver it needs for full compatibility."""

    version: Version
    linux_min_driver: Version
    windows_min_driver: Version | None  # None: NVIDIA lists none; the family floor applies


@dataclass(frozen=True, slots=True, kw_only=True)
class TorchVariant:
    """One build flavour of a torch release, as named by the PyTorch index (``cu128``)."""

    name: str
    cuda: Version | None
    platforms: tuple[str, ...]
    archs: tuple[str, ...] = ()
    ptx: tuple[str, ...] = ()
    archs_by_platform: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    ptx_by_platform: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    pythons: tuple[str, ...] | None = None
    source: str = ""

    def archs_for(self, platform: str) -> tuple[str, ...]:
        return self.archs_by_platform.get(platform, self.archs)

    def ptx_for(self, platform: str) -> tuple[str, ...]:
        return self.ptx_by_platform.get(platform, self.ptx)

    @property
    def index_url(self) -> str:
        return f"{PYTORCH_INDEX}{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TorchRelease:
    version: Version
    date: str
    pythons: tuple[str, ...]
    torchvision: Version | None
    torchaudio: Version | None
    pypi_default: dict[str, str] = field(hash=False)
    variants: tuple[TorchVariant, ...]
    source: str = ""
    #: the glibc floor of the release's torch and torchvision wheels per Linux platform (their manylinux tags)
    glibc: dict[str, Version] = field(default_factory=dict, hash=False)
    #: the same per macOS platform (the highest macosx tag among their wheels): the resolver's deployment target
    macos: dict[str, Version] = field(default_factory=dict, hash=False)

    def variant(self, name: str) -> TorchVariant | None:
        return next((v for v in self.variants if v.name == name), None)

    def pythons_for(self, variant: TorchVariant) -> tuple[str, ...]:
        return variant.pythons if variant.pythons is not None else self.pythons

    def on_pypi(self, variant: TorchVariant, platform: str) -> bool:
        return on_pypi(platform, self.pypi_default, variant.name)

    def glibc_for(self, platform: str) -> Version | None:
        """The glibc this release's wheels need on ``platform``; None off Linux or where the matrix records none."""
        return self.glibc.get(platform)

    def macos_for(self, platform: str) -> Version | None:
        """The macOS this release's wheels are built for on ``platform``; None off macOS or where none is recorded."""
        return self.macos.get(platform)


@dataclass(frozen=True, slots=True, kw_only=True)
class BnbRelease:
    version: Version
    torch: SpecifierSet
    pythons: SpecifierSet
    platforms: tuple[str, ...]
    cuda_libs: tuple[Version, ...]
    min_cc_int8: tuple[int, int]
    fast_cc_int8: tuple[int, int]
    min_cc_4bit: tuple[int, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class Companion:
    """A package we pin beside torch, with what it needs from torch and Python."""

    name: str
    version: Version
    requires_torch: SpecifierSet
    requires_python: SpecifierSet


@dataclass(frozen=True, slots=True, kw_only=True)
class Matrix:
    """Everything under one ``matrices/`` folder, validated; the catalog is read from ``catalog_path``."""

    families: tuple[CudaFamily, ...]
    toolkits: tuple[CudaToolkit, ...]
    torch: tuple[TorchRelease, ...]  # newest first
    bitsandbytes: tuple[BnbRelease, ...]  # newest first
    companions: tuple[Companion, ...]  # per name, newest first
    images: Images  # base images and CI actions the rendered files pin
    gpus: GpuTable  # GPU model -> compute capability and memory, for detection
    engines: Engines  # the serving engines and their releases, newest first
    digest: str  # sha256 over the matrix files, recorded in locks
    root: Path  # the folder the files were read from
    #: compute capabilities of Jetson iGPUs under L4T, which the index's aarch64 builds do not run on
    tegra: tuple[tuple[int, int], ...] = ()

    @property
    def catalog_path(self) -> Path:
        """The model catalog that travels with these matrices."""
        return self.root / "models.toml"

    def family(self, major: int) -> CudaFamily | None:
        return next((f for f in self.families if f.major == major), None)

    def toolkit(self, version: Version) -> CudaToolkit | None:
        key = Version(f"{version.major}.{version.minor}")
        return next((t for t in self.toolkits if t.version == key), None)

    def companion_versions(self, name: str) -> tuple[Companion, ...]:
        return tuple(c for c in self.companions if c.name == name)


def _spec(f: Fields, key: str, *, required: bool = True) -> SpecifierSet:
    """A specifier; an empty string means "no bound" (METADATA sets none)."""
    raw = f.data.get(key)
    if raw == "":
        return SpecifierSet()
    text = f.str(key, required=required, default="")
    try:
        return SpecifierSet(text or "")
    except InvalidSpecifier:
        raise f.fail(key, f"{text!r} is not a version specifier") from None


def _cc(f: Fields, key: str) -> tuple[int, int]:
    text = f.str(key)
    if not CC_RE.fullmatch(text):
        raise f.fail(key, f"{text!r} is not a compute capability like '7.5'")
    major, minor = text.split(".")
    return int(major), int(minor)


def _platforms(f: Fields, key: str) -> tuple[str, ...]:
    items = f.strs(key)
    for i, item in enumerate(items):
        if item not in PLATFORMS:
            raise f.item_fail(key, i, f"{item!r} is not one of {', '.join(PLATFORMS)}")
    if not items:
        raise f.fail(key, "must list at least one platform")
    return tuple(items)


def _archs(f: Fields, key: str, *, required: bool = True) -> tuple[str, ...]:
    items = f.strs(key, required=required)
    for i, item in enumerate(items):
        if not ARCH_RE.fullmatch(item):
            raise f.item_fail(key, i, f"{item!r} is not an architecture like 'sm_86'")
    return tuple(items)


def _pythons(f: Fields, key: str, *, required: bool = True) -> tuple[str, ...]:
    items = f.strs(key, required=required)
    for i, item in enumerate(items):
        if not PYTHON_MINOR_RE.fullmatch(item):
            raise f.item_fail(key, i, f"{item!r} is not a Python version like '3.11'")
    return tuple(items)


def _check_schema(f: Fields) -> None:
    version = f.int("schema_version", minimum=0)
    if version != 1:
        raise f.fail("schema_version", f"unsupported schema_version {version}; this provision reads 1")


def _load_tegra(f: Fields) -> tuple[tuple[int, int], ...]:
    tegra = f.obj("tegra", required=False)
    if tegra is None:
        return ()
    out = []
    for i, text in enumerate(tegra.strs("compute_capabilities")):
        if not CC_RE.fullmatch(text):
            raise InvalidInput(f.source, f"tegra.compute_capabilities[{i}]", f"{text!r} is not like '8.7'")
        major, minor = text.split(".")
        out.append((int(major), int(minor)))
    return tuple(out)


def _load_cuda(f: Fields) -> tuple[tuple[CudaFamily, ...], tuple[CudaToolkit, ...]]:
    _check_schema(f)
    families = []
    for row in f.objs("family"):
        families.append(
            CudaFamily(
                major=row.int("major", minimum=1, maximum=99),
                linux_min_driver=row.version("linux_min_driver"),
                windows_min_driver=row.version("windows_min_driver"),
            )
        )
    toolkits = []
    for row in f.objs("toolkit"):
        version = row.version("version")
        assert version is not None
        if len(version.release) != 2:
            raise row.fail("version", f"{version} must be major.minor")
        toolkits.append(
            CudaToolkit(
                version=version,
                linux_min_driver=row.version("linux_min_driver"),
                windows_min_driver=row.version("windows_min_driver", required=False),
            )
        )
    return tuple(families), tuple(sorted(toolkits, key=lambda t: t.version))


def _archs_by_platform(v: Fields, key: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    bp = v.obj(key, required=False)
    if bp is not None:
        for platform in bp.data:
            if platform not in PLATFORMS:
                raise bp.fail(platform, f"{platform!r} is not one of {', '.join(PLATFORMS)}")
            out[platform] = _archs(bp, platform, required=True)
    return out


def _load_variant(v: Fields) -> TorchVariant:
    name = v.str("name")
    if not VARIANT_RE.fullmatch(name):
        raise v.fail("name", f"{name!r} is not a PyTorch index name like 'cu128' or 'cpu'")
    cuda = v.version("cuda", required=name != "cpu")
    if name == "cpu" and cuda is not None:
        raise v.fail("cuda", "a cpu variant has no CUDA version")
    if cuda is not None and name != f"cu{cuda.major}{cuda.minor}":
        raise v.fail("cuda", f"{cuda} does not match variant name {name!r}")
    by_platform = _archs_by_platform(v, "archs_by_platform")
    ptx_by_platform = _archs_by_platform(v, "ptx_by_platform")
    pythons = _pythons(v, "pythons", required=False) if v.has("pythons") else None
    archs = _archs(v, "archs", required=cuda is not None)
    if cuda is not None and not archs:
        raise v.fail("archs", "a CUDA variant must list the architectures it was compiled for")
    return TorchVariant(
        name=name,
        cuda=cuda,
        platforms=_platforms(v, "platforms"),
        archs=archs,
        ptx=_archs(v, "ptx", required=False),
        archs_by_platform=by_platform,
        ptx_by_platform=ptx_by_platform,
        pythons=pythons,
        source=v.str("source", required=False, default=""),
    )


def _load_torch(f: Fields) -> tuple[TorchRelease, ...]:
    _check_schema(f)
    releases = []
    seen: set[Version] = set()
    for row in f.objs("release"):
        version = row.version("version")
        assert version is not None
        if version in seen:
            raise row.fail("version", f"release {version} appears twice")
        seen.add(version)
        variants = tuple(_load_variant(v) for v in row.objs("variant"))
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise row.fail("variant", "a variant name appears twice")
        defaults: dict[str, str] = {}
        pd = row.obj("pypi_default", required=False)
        if pd is not None:
            for platform in pd.data:
                if platform not in PLATFORMS:
                    raise pd.fail(platform, f"{platform!r} is not one of {', '.join(PLATFORMS)}")
                default = pd.str(platform)
                if default not in names:
                    raise pd.fail(platform, f"{default!r} is not a variant of torch {version}")
                defaults[platform] = default
        releases.append(
            TorchRelease(
                version=version,
                glibc=_os_floors(row, "glibc", "linux-", _GLIBC_RE, "a glibc version like 2.28"),
                macos=_os_floors(row, "macos", "macos-", _MACOS_RE, "a macOS version like 14.0"),
                date=row.str("date"),
                pythons=_pythons(row, "pythons"),
                torchvision=row.version("torchvision", required=False),
                torchaudio=row.version("torchaudio", required=False),
                pypi_default=defaults,
                variants=variants,
                source=row.str("source", required=False, default=""),
            )
        )
    return tuple(sorted(releases, key=lambda r: r.version, reverse=True))


_GLIBC_RE = re.compile(r"^2\.\d{1,2}$")
_MACOS_RE = re.compile(r"^\d{2}\.\d{1,2}$")


def _os_floors(row: Fields, key: str, prefix: str, pattern: re.Pattern[str], like: str) -> dict[str, Version]:
    """A release's optional ``glibc`` / ``macos`` table: platform (``prefix``-named) -> version."""
    table = row.obj(key, required=False)
    if table is None:
        return {}
    allowed = [p for p in PLATFORMS if p.startswith(prefix)]
    floors = {}
    for platform in table.data:
        if platform not in allowed:
            raise table.fail(platform, f"{platform!r} is not one of {', '.join(allowed)}")
        text = table.str(platform)
        if not pattern.fullmatch(text):
            raise table.fail(platform, f"{text!r} is not {like}")
        floors[platform] = Version(text)
    return floors


def _load_bnb(f: Fields) -> tuple[BnbRelease, ...]:
    _check_schema(f)
    out = []
    for row in f.objs("release"):
        libs = []
        for i, text in enumerate(row.strs("cuda_libs")):
            if not re.fullmatch(r"^\d{2}\.\d$", text):
                raise InvalidInput(row.source, f"{row.where('cuda_libs')}[{i}]", f"{text!r} is not a CUDA version")
            libs.append(Version(text))
        version = row.version("version")
        assert version is not None
        out.append(
            BnbRelease(
                version=version,
                torch=_spec(row, "torch"),
                pythons=_spec(row, "pythons"),
                platforms=_platforms(row, "platforms"),
                cuda_libs=tuple(libs),
                min_cc_int8=_cc(row, "min_cc_int8"),
                fast_cc_int8=_cc(row, "fast_cc_int8"),
                min_cc_4bit=_cc(row, "min_cc_4bit"),
            )
        )
    return tuple(sorted(out, key=lambda r: r.version, reverse=True))


def _load_companions(f: Fields) -> tuple[Companion, ...]:
    _check_schema(f)
    out = []
    for row in f.objs("package"):
        name = row.str("name")
        if not re.fullmatch(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
            raise row.fail("name", f"{name!r} is not a package name")
        version = row.version("version")
        assert version is not None
        out.append(
            Companion(
                name=canonicalize_name(name),
                version=version,
                requires_torch=_spec(row, "requires_torch", required=False),
                requires_python=_spec(row, "requires_python", required=False),
            )
        )
    return tuple(sorted(out, key=lambda c: (c.name, c.version), reverse=True))


def _load_images(f: Fields) -> Images:
    _check_schema(f)
    return images_from_fields(f)


def _cross_check(path: Path, families: tuple[CudaFamily, ...], toolkits: tuple[CudaToolkit, ...],
                 releases: tuple[TorchRelease, ...]) -> None:
    """Every CUDA a torch build uses must have a driver floor, so no choice points at unknown data."""
    known = {t.version for t in toolkits}
    majors = {f.major for f in families}
    for i, release in enumerate(releases):
        for j, variant in enumerate(release.variants):
            if variant.cuda is None:
                continue
            where = f"release[{i}].variant[{j}].cuda"
            if variant.cuda not in known:
                raise InvalidInput(str(path), where, f"CUDA {variant.cuda} (torch {release.version}) has no row in cuda.toml")
            if variant.cuda.major not in majors:
                raise InvalidInput(str(path), where, f"CUDA family {variant.cuda.major} has no row in cuda.toml")


def _digest(contents: dict[str, bytes]) -> str:
    """sha256 over the matrix files' names and bytes, in MATRIX_FILES order (models.toml when present)."""
    h = hashlib.sha256()
    for name in MATRIX_FILES:
        if name in contents:
            h.update(name.encode() + b"\0" + contents[name] + b"\0")
    return h.hexdigest()


def load_matrix(root: Path | None = None) -> Matrix:
    """Read every matrix file under ``root`` (default: the bundled ``matrices/``).

    :raises InvalidInput: naming the file and the key that is wrong.
    """
    if root is None:
        from provision.common.resources import data_dir

        root = data_dir("matrices")
    contents: dict[str, bytes] = {}

    def fields(name: str) -> Fields:  # each file read and parsed once; its bytes feed the digest
        data, contents[name] = read_toml(root / name)
        return Fields(data, str(root / name))

    cuda = fields("cuda.toml")
    families, toolkits = _load_cuda(cuda)
    releases = _load_torch(fields("torch.toml"))
    _cross_check(root / "torch.toml", families, toolkits, releases)
    bitsandbytes = _load_bnb(fields("bitsandbytes.toml"))
    companions = _load_companions(fields("companions.toml"))
    tegra = _load_tegra(cuda)
    catalog = root / "models.toml"
    if catalog.is_file():
        contents["models.toml"] = catalog.read_bytes()
    images = _load_images(fields("images.toml"))
    gpus = gpu_table_from_fields(fields("gpus.toml"))
    known = Known(toolkits=frozenset(t.version for t in toolkits), families=frozenset(f.major for f in families),
                  torch={r.version: r.torchvision for r in releases})
    engines = parse_engines(fields("engines.toml"), known)
    return Matrix(
        families=families,
        toolkits=toolkits,
        torch=releases,
        bitsandbytes=bitsandbytes,
        companions=companions,
        images=images,
        gpus=gpus,
        engines=engines,
        digest=_digest(contents),
        root=root,
        tegra=tegra,
    )
