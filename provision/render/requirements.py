"""Hash-pinned requirements from a real resolver (``uv pip compile --generate-hashes``).

The planner pins the top-level packages; the resolver pins their whole dependency
closure for the plan's Python and platform and records every distribution's sha256.
An index that cannot be reached (download.pytorch.org on an offline builder) does not
block a render: its packages keep exact pins without hashes, the rest of the closure is
resolved against PyPI, and ``Resolution.status`` says ``partial`` with the reason. A
later render on a connected machine completes it.

Layers (cog's query/parse/evaluate split): ``uv_compile`` and the index probe
(``provision.common.net``) do I/O and are injectable; ``parse_compiled`` and ``merge_resolution`` are pure and are unit
tested on recorded resolver output; ``resolve`` composes them and caches complete
results by the sha256 of their inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.common import run as _run
from provision.common.atomic import write_atomic
from provision.common.fields import Fields
from provision.common.net import probe_index
from provision.common.quoting import check_index_url, check_package_name, check_path, check_version
from provision.errors import InvalidInput
from provision.vocab import PYPI_INDEX

if TYPE_CHECKING:
    from provision.plan.document import Plan

__all__ = [
    "PYPI_INDEX",
    "TORCH_INDEX_PACKAGES",
    "CompileFailed",
    "PinnedRequirement",
    "Resolution",
    "ResolveRequest",
    "check_wheelhouse",
    "image_platform",
    "merge_platforms",
    "merge_resolution",
    "parse_compiled",
    "python_platform",
    "resolve",
    "resolve_request",
    "torch_index_for",
    "unresolved",
    "uv_compile",
]

#: Packages served from the PyTorch index when the plan's index is not PyPI.
TORCH_INDEX_PACKAGES = frozenset({"torch", "torchvision", "torchaudio"})
_RESOLVER_TIMEOUT_S = 300
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9,._-]*\])?==([^\s;\\]+)")
_HASH_OPT_RE = re.compile(r"--hash=(sha256:[0-9a-f]{64})")

_GLIBC_RE = re.compile(r"^2\.\d{1,2}$")
#: The lowest manylinux floor a resolution assumes: torch's from 2.7.0 (matrices/torch.toml's glibc). An older
#: torch's is lower (2.6.0's x86_64 wheels are manylinux1), but uv's --python-platform names no floor between 2.17
#: and 2.28, and at 2.17 bitsandbytes 0.50.2 (manylinux_2_24 wheels, no sdist) does not resolve: such a plan
#: (glibc 2.27, Ubuntu 18.04) is resolved at 2.28, and its pins install there from their older-tagged wheels.
_TORCH_GLIBC = (2, 28)
# uv's --python-platform names for the host profile's os/arch.
_PLATFORMS = {
    ("linux", "x86_64"): "x86_64-manylinux_2_28",
    ("linux", "aarch64"): "aarch64-manylinux_2_28",
    ("linux", "arm64"): "aarch64-manylinux_2_28",
    ("windows", "x86_64"): "x86_64-pc-windows-msvc",
    ("darwin", "arm64"): "aarch64-apple-darwin",
    ("darwin", "aarch64"): "aarch64-apple-darwin",
    ("darwin", "x86_64"): "x86_64-apple-darwin",
}


#: The PEP 508 ``sys_platform`` of each host profile ``os``: what tells a host's pins from its Linux image's.
SYS_PLATFORM = {"linux": "linux", "darwin": "darwin", "windows": "win32"}
_MARKER_RE = re.compile(r'^sys_platform == "(linux|darwin|win32)"$')


class CompileFailed(Exception):
    """The resolver ran and failed; ``str()`` is its last error lines."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PinnedRequirement:
    """One ``name==version`` line; ``hashes`` empty when its index was not reachable. ``marker``: a
    ``sys_platform == "..."`` marker for a pin that only one platform of a two-platform resolution needs
    (see ``merge_platforms``); None everywhere else."""

    name: str
    version: str
    hashes: tuple[str, ...] = ()
    marker: str | None = None

    @property
    def pin(self) -> str:
        """The requirement as requirements.txt writes it: ``name==version``, then `` ; marker`` when it has one."""
        return f"{self.name}=={self.version}" + (f" ; {self.marker}" if self.marker else "")

    def to_dict(self) -> dict[str, Any]:
        marker = {"marker": self.marker} if self.marker else {}
        return {"name": self.name, "version": self.version, "hashes": list(self.hashes), **marker}


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """The pinned closure plus how complete its hashes are (``complete|partial|none``)."""

    status: str
    requirements: tuple[PinnedRequirement, ...]
    reasons: tuple[str, ...] = ()
    resolver: str = "none"

    @property
    def unhashed(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.requirements if not r.hashes)

    def summary(self) -> dict[str, Any]:
        """How complete the hashes are, without the pins: what a lock records under ``hashes``."""
        return {"status": self.status, "resolver": self.resolver, "reasons": list(self.reasons),
                "unhashed": list(self.unhashed)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "requirements": [r.to_dict() for r in self.requirements]}

    @classmethod
    def from_dict(cls, data: Any, source: str = "provision.lock.json") -> Resolution:
        """Read ``to_dict``'s document back (a cache entry), validating every field.

        :raises InvalidInput: naming ``source`` and the field.
        """
        return _resolution_from_dict(data, source)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolveRequest:
    """Everything the resolution depends on; its ``key`` names the cache entry."""

    packages: Mapping[str, str]
    python: str
    platform: str
    torch_index: str | None = None  # None: every package comes from PyPI
    find_links: tuple[str, ...] = ()
    extra_requirements: tuple[str, ...] = ()  # e.g. "transformers[serving]==5.24.0"
    exclude_newer: str | None = None
    #: the macOS a macOS platform is resolved for (uv's MACOSX_DEPLOYMENT_TARGET; it assumes 13.0 without it)
    macos: str | None = None

    def key(self, resolver_version: str) -> str:
        doc = {
            "packages": dict(sorted(self.packages.items())),
            "python": self.python,
            "platform": self.platform,
            "torch_index": self.torch_index,
            "find_links": list(self.find_links),
            "extra_requirements": sorted(self.extra_requirements),
            "exclude_newer": self.exclude_newer,
            "resolver": resolver_version,
            **({"macos": self.macos} if self.macos else {}),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @property
    def torch_names(self) -> tuple[str, ...]:
        """Plan packages that only the PyTorch index serves for this variant."""
        if self.torch_index is None:
            return ()
        return tuple(n for n, v in sorted(self.packages.items()) if n in TORCH_INDEX_PACKAGES or "+" in v)


def python_platform(os_name: str, arch: str, glibc: str | None = None) -> str:
    """uv's ``--python-platform`` for a host profile's ``os`` and ``arch``.

    ``glibc`` raises a Linux platform's manylinux floor above torch's 2.28 to what an engine's wheels
    need (vLLM 0.19.1 ships manylinux_2_31 only: at 2.28 the resolver would find no wheel for it).

    :raises InvalidInput: for a combination no torch wheel exists for, or a glibc not like ``2.31``.
    """
    try:
        platform = _PLATFORMS[(os_name, arch)]
    except KeyError:
        raise InvalidInput("host", "os/arch", f"no wheel platform for {os_name}/{arch}") from None
    if glibc is None or "manylinux" not in platform:
        return platform
    if not _GLIBC_RE.fullmatch(glibc):
        raise InvalidInput("matrix", "glibc", f"{glibc!r} is not a glibc version like 2.28")
    floor = max(tuple(map(int, glibc.split("."))), _TORCH_GLIBC)
    return platform.replace("manylinux_2_28", f"manylinux_{floor[0]}_{floor[1]}")


def parse_compiled(text: str) -> tuple[PinnedRequirement, ...]:
    """Parse ``uv pip compile``/``pip-compile`` output into pins with their hashes.

    Continuation lines (``\\``), comments and option lines are handled; names are
    canonicalized and the result is sorted by name, hashes sorted, so equal closures
    compare equal whatever the resolver's formatting.
    """
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    if buf.strip():
        logical.append(buf.strip())
    pins: dict[str, PinnedRequirement] = {}
    for line in logical:
        if line.startswith("-"):
            continue  # --index-url, --find-links, ...
        m = _PIN_RE.match(line)
        if not m:
            raise CompileFailed(f"unexpected resolver line: {line[:120]!r}")
        name = check_package_name(m.group(1), source="resolver output", field="name")
        version = check_version(m.group(3), source="resolver output", field=name)
        hashes = tuple(sorted(set(_HASH_OPT_RE.findall(line))))
        pins[name] = PinnedRequirement(name=name, version=version, hashes=hashes)
    return tuple(pins[n] for n in sorted(pins))


def merge_resolution(
    packages: Mapping[str, str],
    compiled: Sequence[PinnedRequirement],
    *,
    resolver: str,
    reasons: Sequence[str] = (),
) -> Resolution:
    """Join the resolved closure with the plan's pins.

    Plan packages the resolver did not return (excluded because their index was
    unreachable) are added without hashes. A resolver pin that disagrees with the
    plan is a bug in the inputs, never silently accepted.

    :raises InvalidInput: when a resolved version differs from the plan's pin.
    """
    by_name = {r.name: PinnedRequirement(name=r.name, version=r.version, hashes=tuple(sorted(set(r.hashes))))
               for r in compiled}
    for name, version in packages.items():
        got = by_name.get(name)
        if got is None:
            by_name[name] = PinnedRequirement(name=name, version=version)
        elif got.version != version:
            raise InvalidInput("resolver output", name, f"resolved {got.version}, the plan pins {version}")
    reqs = tuple(by_name[n] for n in sorted(by_name))
    hashed = sum(1 for r in reqs if r.hashes)
    status = "complete" if hashed == len(reqs) else ("none" if hashed == 0 else "partial")
    return Resolution(status=status, requirements=reqs, reasons=tuple(reasons), resolver=resolver)


def image_platform(os_name: str, arch: str) -> str | None:
    """uv's ``--python-platform`` for the Linux image a Dockerfile rendered on a macOS or Windows host builds;
    None on Linux, whose image installs the host's own resolution.

    Docker Desktop runs Linux containers in a VM of the host's architecture: linux/arm64 on Apple silicon,
    linux/amd64 on an x86_64 Mac or PC.

    :raises InvalidInput: an architecture with no Linux wheel platform.
    """
    return None if os_name == "linux" else python_platform("linux", arch)


def merge_platforms(packages: Mapping[str, str], host: Resolution, image: Resolution, *, host_os: str,
                    host_platform: str, image_platform: str) -> Resolution:
    """One requirements.txt for a non-Linux host and its Linux image: the two resolutions of the same pins.

    A pin both closures hold at one version is written once (its hashes joined: uv lists every file of
    the version anyway); a pin only one holds, or holds at another version, carries that platform's
    ``sys_platform`` marker, so pip and uv install on each exactly its own closure (on linux/arm64 a plain
    ``torch==2.15.0`` is PyPI's CUDA build, whose nvidia-* dependencies the macOS closure lacks). Where
    either resolution has no hashes, neither file can carry them (the image would otherwise install
    with --require-hashes a closure missing its Linux dependencies): exact pins only.
    """
    reasons = [*dict.fromkeys((*host.reasons, *image.reasons))]
    both = (f"resolved for this {host_os} host ({host_platform}) and for the Linux image the Dockerfile builds "
            f"({image_platform}); a pin only one of them installs carries its sys_platform marker")
    if "none" in (host.status, image.status):
        return unresolved(packages, "; ".join([*reasons, f"no hashes: the {host_os} host's and the Linux image's "
                                                          "closures must both resolve"]))
    own, linux = (f'sys_platform == "{SYS_PLATFORM[host_os]}"', 'sys_platform == "linux"')
    by_host = {r.name: r for r in host.requirements}
    by_image = {r.name: r for r in image.requirements}
    pins: list[PinnedRequirement] = []
    for name in sorted({*by_host, *by_image}):
        h, i = by_host.get(name), by_image.get(name)
        if h is not None and i is not None and h.version == i.version:
            pins.append(replace(h, hashes=tuple(sorted({*h.hashes, *i.hashes}))))
            continue
        pins += [replace(r, marker=m) for r, m in ((h, own), (i, linux)) if r is not None]
    if any(p.marker and not p.hashes for p in pins):  # install.sh's partial path matches unhashed lines as pins
        return unresolved(packages, "; ".join([*reasons, "no hashes: a pin only one platform needs has none"]))
    hashed = sum(1 for p in pins if p.hashes)
    status = "complete" if hashed == len(pins) else "partial"
    return Resolution(status=status, requirements=tuple(pins), reasons=(both, *reasons), resolver=host.resolver)


def unresolved(packages: Mapping[str, str], reason: str) -> Resolution:
    """Exact pins only, no hashes: what a render gets without any resolver."""
    reqs = tuple(PinnedRequirement(name=n, version=packages[n]) for n in sorted(packages))
    return Resolution(status="none", requirements=reqs, reasons=(reason,), resolver="none")


def _resolution_from_dict(data: Any, source: str) -> Resolution:
    f = Fields(data, source, "hashes")
    reqs = []
    for item in f.objs("requirements"):
        name = check_package_name(item.str("name"), source=source, field=item.where("name"))
        version = check_version(item.str("version"), source=source, field=item.where("version"))
        hashes = tuple(item.strs("hashes"))
        for i, h in enumerate(hashes):
            if not _HASH_RE.fullmatch(h):
                raise InvalidInput(source, f"{item.where('hashes')}[{i}]", f"{h!r} is not sha256:<64 hex>")
        marker = item.str("marker", required=False, default="") or None
        if marker is not None and not _MARKER_RE.fullmatch(marker):
            raise InvalidInput(source, item.where("marker"), f"{marker!r} is not sys_platform == \"linux|darwin|win32\"")
        reqs.append(PinnedRequirement(name=name, version=version, hashes=hashes, marker=marker))
    return Resolution(
        status=f.choice("status", ("complete", "partial", "none")),
        requirements=tuple(sorted(reqs, key=lambda r: r.name)),
        reasons=tuple(f.strs("reasons", required=False)),
        resolver=f.str("resolver"),
    )


# ---------------------------------------------------------------- I/O edge


CompileFn = Callable[..., str]


def uv_compile(
    requirements: Sequence[str],
    *,
    python: str,
    platform: str,
    index_url: str,
    extra_index_urls: Sequence[str] = (),
    find_links: Sequence[str] = (),
    excludes: Sequence[str] = (),
    exclude_newer: str | None = None,
    macos: str | None = None,
) -> str:
    """Run ``uv pip compile --generate-hashes`` and return its output; ``macos`` is the deployment target of a
    macOS platform (torch 2.12+ ships macosx_14_0 wheels only, and uv assumes 13.0 by default).

    :raises CompileFailed: uv missing, failed or timed out (the message says which).
    """
    if _run.find_program("uv") is None:
        raise CompileFailed("uv is not on PATH")
    with tempfile.TemporaryDirectory(prefix="provision-resolve-") as tmp:
        req = Path(tmp) / "requirements.in"
        req.write_text("".join(f"{r}\n" for r in requirements), encoding="utf-8")
        argv = ["uv", "pip", "compile", str(req), "--generate-hashes", "--no-header", "--no-annotate",
                "--no-config", "--quiet", "--python-version", python, "--python-platform", platform,
                "--index-url", index_url]
        for url in extra_index_urls:
            argv += ["--extra-index-url", url]
        for link in find_links:
            argv += ["--find-links", link]
        if excludes:
            exc = Path(tmp) / "excludes.txt"
            exc.write_text("".join(f"{e}\n" for e in excludes), encoding="utf-8")
            argv += ["--excludes", str(exc)]
        if exclude_newer:
            argv += ["--exclude-newer", exclude_newer]
        env = {**os.environ, "MACOSX_DEPLOYMENT_TARGET": macos} if macos else None
        try:
            done = _run.run_process(argv, timeout=_RESOLVER_TIMEOUT_S, env=env)
        except _run.NotRun as why:
            raise CompileFailed(f"uv pip compile timed out after {_RESOLVER_TIMEOUT_S} s" if why.timed_out
                                else str(why)) from None
    if done.returncode != 0:
        tail = " | ".join(line.strip() for line in done.stderr.strip().splitlines()[-3:])
        raise CompileFailed(tail or f"uv exited {done.returncode}")
    return done.stdout


def _uv_version() -> str:
    if _run.find_program("uv") is None:
        return "uv (missing)"
    done = _run.run_command(["uv", "--version"], timeout=30)
    return (done.stdout.strip() if done is not None else "") or "uv (unknown)"


def check_wheelhouse(paths: Sequence[str]) -> tuple[str, ...]:
    """``--wheelhouse`` folders as they reach pip and the rendered files: safe, absolute paths."""
    out = []
    for i, p in enumerate(paths):
        text = check_path(p, source="--wheelhouse", field=f"[{i}]")
        if not text.startswith("/"):
            raise InvalidInput("--wheelhouse", f"[{i}]", f"{text!r} must be an absolute path")
        out.append(text)
    return tuple(out)


def resolve(
    request: ResolveRequest,
    *,
    compile_fn: CompileFn = uv_compile,
    probe: Callable[[str], str | None] = probe_index,
    resolver_version: str | None = None,
    cache_dir: Path | None = None,
) -> Resolution:
    """Resolve and hash the plan's closure, degrading to partial/none with reasons.

    1. Everything against PyPI + the PyTorch index (if reachable) + wheelhouses.
    2. PyTorch index unreachable and the wheelhouse lacks the build: resolve the rest
       with the torch packages excluded; they keep exact pins without hashes.
    3. Resolver missing or failing: exact pins, no hashes.
    What the resolver returned is cached under the request and whether the PyTorch index answered: an
    unchanged offline re-render reuses its partial resolution, and a connected one completes it.
    """
    version = resolver_version or (_uv_version() if compile_fn is uv_compile else "injected")
    why = probe(request.torch_index) if request.torch_index is not None else None
    key = request.key(version) + ("" if why is None else "-torch-index-unreachable")
    cache_file = cache_dir / f"{key}.json" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        try:
            return Resolution.from_dict(json.loads(cache_file.read_text(encoding="utf-8")), str(cache_file))
        except (InvalidInput, ValueError):
            pass  # a corrupt cache entry is re-resolved and overwritten
    pins = [f"{n}=={v}" for n, v in sorted(request.packages.items())] + list(request.extra_requirements)
    extra_indexes: list[str] = []
    reasons: list[str] = []
    if request.torch_index is not None:
        if why is None:
            extra_indexes.append(request.torch_index)
        else:
            reasons.append(f"{request.torch_index} was not reachable at render time ({why})")
    common = {"python": request.python, "platform": request.platform, "index_url": PYPI_INDEX,
              "extra_index_urls": extra_indexes, "find_links": list(request.find_links),
              "exclude_newer": request.exclude_newer, **({"macos": request.macos} if request.macos else {})}
    try:
        result = merge_resolution(request.packages, parse_compiled(compile_fn(pins, **common)),
                                  resolver=version, reasons=reasons)
    except CompileFailed as exc:
        if not reasons or not request.torch_names:
            return unresolved(request.packages, f"resolver failed: {exc}")
        torch_names = request.torch_names
        rest = [p for p in pins if p.split("==")[0].split("[")[0] not in torch_names]
        try:
            text = compile_fn(rest, excludes=list(torch_names), **common)
            result = merge_resolution(request.packages, parse_compiled(text), resolver=version, reasons=[
                *reasons, f"no hashes for {', '.join(torch_names)}: served only by that index; "
                "their own dependencies are resolved at install time"])
        except CompileFailed as exc2:
            return unresolved(request.packages, f"resolver failed: {exc2}")
    if cache_file is not None:
        with contextlib.suppress(OSError):  # a cache that cannot be written is only slower next time
            write_atomic(cache_file, json.dumps(result.to_dict(), sort_keys=True, indent=1))
    return result


def torch_index_for(plan_index: str, *, wheelhouse: Sequence[str] = (), index_url: str | None = None) -> str | None:
    """The index the torch builds come from, as requirements.txt names it.

    ``index_url`` (``--index-url`` / PROVISION_INDEX_URL) replaces the PyTorch index. A
    wheelhouse (``--wheelhouse`` / PROVISION_WHEELHOUSE) also replaces it: uv treats an
    unreachable index as fatal, so an offline machine's files must not name one. PyPI
    (macOS plans) needs no extra index line.

    :raises InvalidInput: the override is not an https index URL.
    """
    if index_url is not None:
        return check_index_url(index_url, source="--index-url", field="url")
    if wheelhouse or plan_index.rstrip("/") == PYPI_INDEX:
        return None
    return check_index_url(plan_index, source="plan", field="torch.index_url")


def resolve_request(
    plan: Plan,
    host: Mapping[str, Any],
    *,
    wheelhouse: Sequence[str] = (),
    index_url: str | None = None,
    serving: bool = True,
    extra_requirements: Sequence[str] = (),
    exclude_newer: str | None = None,
    glibc: str | None = None,
    macos: str | None = None,
) -> ResolveRequest:
    """The resolution a render of ``plan`` needs, with the same index choice as the render.

    ``serving`` adds ``transformers[serving]`` (fastapi, uvicorn, ...) to a plan served by
    ``transformers serve``, so that server runs from the same pinned closure in the venv and the
    image; vLLM and SGLang bring their own server. ``glibc``: an engine's manylinux floor; ``macos``: the
    deployment target of a macOS host's resolution (the torch release's macosx floor).

    :raises InvalidInput: a host field, the wheelhouse or the index override is malformed.
    """
    h = Fields(host, "host")
    extras = list(extra_requirements)
    if serving and plan.serve.engine == "transformers" and "transformers" in plan.packages:
        extras.append(f"transformers[serving]=={plan.packages['transformers']}")
    finds = check_wheelhouse(wheelhouse)  # before the host fields, as the errors were always ordered
    return ResolveRequest(
        packages=dict(plan.packages),
        python=plan.python,
        platform=python_platform(h.str("os"), h.str("arch"), glibc),
        torch_index=torch_index_for(plan.index_url, wheelhouse=wheelhouse, index_url=index_url),
        find_links=finds,
        extra_requirements=tuple(extras),
        exclude_newer=exclude_newer,
        macos=macos if h.str("os") == "darwin" else None,
    )
