"""``provision render`` as a use case: plan (or read ``--plan``), resolve hashes, render, write.

The decisions a render makes beyond the templates live here: where resolutions are cached,
the toolkit's wheel and dependencies that go into every folder, the CI runner labels, and the one
``IndexProbe`` that both the wheel-folder choice and the resolver ask. The result is a
``RenderResult``; printing it is the CLI's job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from provision.errors import InvalidInput, write_failure
from provision.vocab import OUTPUT_BASE, RENDER_SCHEMA

if TYPE_CHECKING:
    from provision.common.net import IndexProbe
    from provision.data import Matrix
    from provision.host import HostProfile
    from provision.plan.document import Plan
    from provision.plan.usecase import PlanRequest
    from provision.render.requirements import Resolution

__all__ = [
    "OUTPUT_BASE",
    "RenderRequest",
    "RenderResult",
    "output_dir",
    "render_command",
    "render_target",
    "resolve_cache_dir",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderRequest:
    """What ``provision render`` was asked: plan options (or a plan file), the output and how to write it."""

    plan: PlanRequest
    out: Path
    plan_file: Path | None = None
    force: bool = False
    resolve: bool = True
    gpu_runners: tuple[str, ...] = ()  # empty: RenderInputs' default labels
    cpu_runners: tuple[str, ...] = ()
    image: str | None = None  # --image: the serving image the deployments name


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderResult:
    """What a render wrote: every file, the ones that changed, the hashes' state and the plan rendered.

    ``plan`` is the plan rendered; ``planned`` the same plan when this render made it (``None`` with
    ``--plan FILE``), for showing the planner's reasons.
    """

    out: Path
    files: Mapping[str, bytes]
    changed: tuple[str, ...]
    hashes: Resolution | None
    plan: Plan
    planned: Plan | None = None

    @property
    def hash_status(self) -> str:
        return self.hashes.status if self.hashes is not None else "none"

    def to_dict(self) -> dict[str, Any]:
        """The ``provision.render/v1`` document ``provision render --json`` prints."""
        return {"schema": RENDER_SCHEMA, "out": str(self.out), "files": sorted(self.files),
                "changed": list(self.changed), "hashes": self.hash_status, "plan": self.plan.to_dict()}


def resolve_cache_dir(environ: Mapping[str, str]) -> Path:
    """Where complete resolutions are kept between renders (``$XDG_CACHE_HOME/provision/resolve``)."""
    return Path(environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "provision" / "resolve"


def output_dir(base: Path, host_id: str, model_id: str) -> Path:
    """``base/<host-id>/<model-id>``: one folder per machine and model, so rendering another model (or for
    another machine) never overwrites a folder, nor forces its environment to be rebuilt."""
    return base / host_id / model_id


def render_target(request: RenderRequest, base: Path) -> Path:
    """The ``output_dir`` under ``base`` for what ``request`` renders, found without planning.

    The host is ``--host`` (else this machine); the model is the plan file's, else ``--model``'s id
    (a local folder's id is its slug), else the catalog's default.

    :raises InvalidInput: a bad host file, plan file or model.
    """
    from provision.plan.usecase import load_inputs

    planned = _read_plan_file(request.plan_file).model_id if request.plan_file is not None else None
    host, _, model = load_inputs(request.plan, planned)
    return output_dir(base, host.host_id, model.id)


def _check_options(request: RenderRequest) -> None:
    from provision.common.quoting import check_label
    from provision.render.deploy import check_image

    for option, labels in (("--gpu-runner", request.gpu_runners), ("--cpu-runner", request.cpu_runners)):
        for label in labels:
            check_label(label, source=option, field="label")
    if request.image is not None:
        check_image(request.image)


def _read_plan_file(path: Path) -> Plan:
    from provision.common.fields import read_json_file
    from provision.plan.document import Plan

    return Plan.from_dict(read_json_file(path), source=str(path))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Planned:
    """The render's inputs once planned (or read from ``--plan``)."""

    plan: Plan
    chosen: Plan | None
    host: HostProfile
    model_id: str
    matrix: Matrix
    variants: tuple[Plan, ...]
    wheelhouse: tuple[Path, ...]
    #: whether the torch index answered, as planned with (None: not asked); a plan file's own record
    torch_index_reachable: bool | None = None


def _plan(request: RenderRequest, index_url: str | None, environ: Mapping[str, str], probe: IndexProbe) -> _Planned:
    """The plan to render: read from ``--plan``, or planned here with its sibling variants for CI."""
    from provision.plan.search import sibling_variants
    from provision.plan.usecase import find_wheelhouses, load_inputs, plan_with_index, preferences, torch_index

    options = request.plan
    if request.plan_file is not None:
        read = _read_plan_file(request.plan_file)
        host, matrix, model = load_inputs(options, read.model_id)
        wheelhouse = find_wheelhouses(options, index_url, environ, probe)
        return _Planned(plan=read, chosen=None, host=host, model_id=model.id, matrix=matrix, variants=(),
                        wheelhouse=wheelhouse, torch_index_reachable=read.torch_index_reachable)
    host, matrix, model = load_inputs(options)
    wheelhouse = find_wheelhouses(options, index_url, environ, probe)
    chosen, prefs = plan_with_index(host, matrix, model, preferences(options, host, wheelhouse, index_url),
                                    index_reachable=lambda: probe.reachable(torch_index(index_url)))
    return _Planned(plan=chosen, chosen=chosen, host=host, model_id=model.id, matrix=matrix,
                    variants=tuple(sibling_variants(host, matrix, model, prefs, chosen)), wheelhouse=wheelhouse,
                    torch_index_reachable=prefs.torch_index_reachable)


def _engine_glibc(planned: _Planned) -> str | None:
    """The manylinux floor of an engine plan's wheels (vLLM 0.19.1's is 2.31), from the matrix; None otherwise."""
    serve = planned.plan.serve
    engine = planned.matrix.engines.get(serve.engine)
    release = engine.release(serve.engine_version) if engine is not None else None
    return str(release.glibc) if release is not None else None


def _resolve(planned: _Planned, index_url: str | None, environ: Mapping[str, str], probe: IndexProbe,
             toolkit: Sequence[str]) -> Resolution:
    """The plan's closure with ``toolkit`` (the toolkit's own requirements), hashed; on a macOS or Windows host
    also its Linux image's, in the same file. The folder's wheel then installs over pinned, hashed dependencies."""
    from provision.render.requirements import image_platform, merge_platforms, resolve, resolve_request

    host = planned.host
    torch = next((r for r in planned.matrix.torch if r.version == planned.plan.torch_version), None)
    macos = torch.macos_for(host.platform) if torch is not None else None
    request = resolve_request(planned.plan, host.to_dict(), wheelhouse=[str(w) for w in planned.wheelhouse],
                              index_url=index_url, glibc=_engine_glibc(planned), macos=str(macos) if macos else None,
                              extra_requirements=toolkit)
    resolution = resolve(request, cache_dir=resolve_cache_dir(environ), probe=probe)
    linux = image_platform(host.os, host.arch)
    if linux is None:
        return resolution
    image = resolve(replace(request, platform=linux, macos=None), cache_dir=resolve_cache_dir(environ), probe=probe)
    return merge_platforms(planned.plan.packages, resolution, image, host_os=host.os, host_platform=request.platform,
                           image_platform=linux)


class _RunnerLabels(TypedDict, total=False):
    gpu_runner_labels: tuple[str, ...]
    cpu_runner_labels: tuple[str, ...]


def _runner_labels(request: RenderRequest) -> _RunnerLabels:
    """The ``--gpu-runner``/``--cpu-runner`` overrides; absent ones keep ``RenderInputs``' defaults."""
    labels: _RunnerLabels = {}
    if request.gpu_runners:
        labels["gpu_runner_labels"] = request.gpu_runners
    if request.cpu_runners:
        labels["cpu_runner_labels"] = request.cpu_runners
    return labels


def render_command(request: RenderRequest, environ: Mapping[str, str] | None = None) -> RenderResult:
    """Plan (or read ``--plan``), resolve hashes, render every file, write them atomically.

    :raises InvalidInput: bad options or input files, or files edited since the last render.
    :raises NoViablePlan: nothing fits this host.
    """
    from provision.common.net import IndexProbe
    from provision.render.container import platform_note
    from provision.render.deploy import node_floor
    from provision.render.files import RenderInputs, render_files, write_rendered
    from provision.render.sources import resolve_index_url
    from provision.render.toolkit import toolkit_meta, toolkit_requirements, toolkit_wheel

    environ = os.environ if environ is None else environ
    if request.out.exists() and not request.out.is_dir():  # before any planning, nothing written
        raise InvalidInput("--out", "out", f"{request.out} is a file; name a folder to render into")
    probe = IndexProbe()  # one per command: the wheel folders and the resolver share its answers
    index_url = resolve_index_url(request.plan.index_url, environ)
    _check_options(request)  # before any planning or resolving
    planned = _plan(request, index_url, environ, probe)
    meta = toolkit_meta()
    hashes = _resolve(planned, index_url, environ, probe, toolkit_requirements(meta)) if request.resolve else None
    out = request.out.resolve()
    inputs = RenderInputs(
        plan=planned.plan, host=planned.host.to_dict(), model=planned.model_id, context=planned.plan.serve.max_model_len,
        flags=request.plan.flags(), images=planned.matrix.images, matrix_digest=planned.matrix.digest,
        variants=planned.variants, wheelhouse=tuple(str(w) for w in planned.wheelhouse), index_url=index_url, hashes=hashes,
        torch_index_reachable=planned.torch_index_reachable,
        toolkit=toolkit_wheel(meta),
        node_floor=node_floor(planned.plan, planned.matrix, planned.host.arch), deploy_image=request.image,
        platform_note=platform_note(planned.plan, planned.host, planned.matrix,
                                    resolved_apart=hashes is not None and any(r.marker for r in hashes.requirements)),
        **_runner_labels(request),
    )
    files = render_files(inputs)
    try:
        changed = write_rendered(out, files, force=request.force)
    except OSError as exc:  # read-only, not ours, or full: the error names the path
        raise write_failure("--out", "out", exc) from None
    return RenderResult(out=out, files=files, changed=tuple(changed), hashes=hashes, plan=planned.plan,
                        planned=planned.chosen)
