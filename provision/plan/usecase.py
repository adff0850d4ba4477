"""``provision plan`` as a use case: the plan stage's edge, where options meet the machine.

The planner itself (``provision.plan.search``) is pure; this module gathers what it needs:
the host (a ``--host`` file or this machine), the matrix, the model, the wheel folders (``auto``
asks the network once, through the command's ``IndexProbe``), the preferences parsed from the
options, and, where the answer could change the plan, whether the torch index answers (the same
probe: PyPI's build then comes first, so the lock can hash everything). ``provision render`` plans
through the same steps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provision.errors import InvalidInput
from provision.vocab import DEFAULT_ENGINE, PYPI_INDEX, PYTHON_MINOR_RE, PYTORCH_INDEX, is_buildable_variant

if TYPE_CHECKING:
    from provision.common.net import IndexProbe
    from provision.data import Matrix, ModelSpec
    from provision.host import HostProfile
    from provision.plan.document import Plan, Preferences

__all__ = ["PlanRequest", "find_wheelhouses", "load_inputs", "plan_command", "plan_with_index", "preferences",
           "torch_index"]

#: The options a lock records as the render's flags (``None`` ones are left out).
_FLAG_NAMES = ("context", "device", "engine", "images", "max_pixels", "model", "precision", "python", "torch_version",
               "variant")


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRequest:
    """The plan options of ``provision plan`` / ``render``, as typed on the command line (not yet checked)."""

    host: Path | None = None
    model: str | None = None
    python: str | None = None
    #: ``--context``; None: the model's serving context, lowered to what fits (see ``Preferences``)
    context: int | None = None
    precision: str | None = None
    device: str = "auto"
    torch_version: str | None = None
    variant: str | None = None
    wheelhouse: tuple[str, ...] | None = None
    index_url: str | None = None
    matrix: Path | None = None
    #: ``auto`` (the default) serves with vLLM or SGLang where their rules hold; ``transformers`` never does
    engine: str = DEFAULT_ENGINE
    #: ``--images`` / ``--max-pixels``: the request the memory budget holds; None: the catalog's
    images: int | None = None
    max_pixels: int | None = None

    def flags(self) -> dict[str, Any]:
        """The options the lock records, sorted by name."""
        values = {name: getattr(self, name) for name in _FLAG_NAMES}
        return {name: value for name, value in values.items() if value is not None}


def load_inputs(request: PlanRequest, model_id: str | None = None) -> tuple[HostProfile, Matrix, ModelSpec]:
    """Host, matrix and model: ``model_id`` (a plan's) wins over ``--model``, then the catalog default.

    :raises InvalidInput: a bad matrix folder, model or host file.
    """
    from provision.data import load_catalog, load_matrix, resolve_model

    matrix = load_matrix(request.matrix)
    catalog = load_catalog(matrix.catalog_path)
    if model_id is None:
        model_id = catalog.default.id if request.model is None else request.model
    model = resolve_model(model_id, catalog)
    _check_torch(request.torch_version, matrix)
    return _host(request.host, matrix), matrix, model


def _check_torch(text: str | None, matrix: Matrix) -> None:
    """``--torch`` must name a release the matrix has: otherwise no host could ever get a plan.

    :raises InvalidInput: naming the releases there are (a malformed version is ``preferences``' to refuse).
    """
    from packaging.version import InvalidVersion, Version

    try:
        wanted = Version(text) if text else None
    except InvalidVersion:
        return
    releases = [str(r.version) for r in matrix.torch]
    if wanted is None or any(r.version == wanted for r in matrix.torch):
        return
    import difflib

    near = difflib.get_close_matches(str(wanted), releases, n=2, cutoff=0.8)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    raise InvalidInput("--torch", "torch", f"{text} is not a torch release in the matrix (matrices/torch.toml has "
                                           f"{releases[-1]} to {releases[0]}){hint}")


def _host(path: Path | None, matrix: Matrix) -> HostProfile:
    """The ``--host`` profile, else this machine (GPU facts the driver omits from ``matrix``'s table)."""
    if path is not None:
        from provision.host import load_host

        return load_host(path)
    from provision.host import Probes, detect_host

    return detect_host(probes=Probes(gpu_table=lambda: matrix.gpus))


def torch_index(index_url: str | None) -> str:
    """The index torch's builds come from: ``--index-url`` (``PROVISION_INDEX_URL``), else the PyTorch index."""
    return index_url or PYTORCH_INDEX


def find_wheelhouses(request: PlanRequest, index_url: str | None, environ: Mapping[str, str],
                     probe: IndexProbe) -> tuple[Path, ...]:
    """The wheel folders to take torch from; ``auto`` asks ``probe`` about ``index_url`` (else the PyTorch index).

    :raises InvalidInput: a named folder does not exist.
    """
    from provision.render.sources import resolve_wheelhouses

    index = torch_index(index_url)
    return resolve_wheelhouses(request.wheelhouse, environ, index_reachable=lambda: probe.reachable(index))


def plan_with_index(host: HostProfile, matrix: Matrix, model: ModelSpec, prefs: Preferences, *,
                    index_reachable: Callable[[], bool]) -> tuple[Plan, Preferences]:
    """The plan, and the preferences it was made with: where the torch index's reachability could change it
    (a CUDA build from that index, no wheel folders or ``--variant`` naming the build), ``index_reachable``
    is asked once and the plan made with its answer, so an unreachable index gets PyPI's build where it runs.

    Only that case asks, so a plan the network cannot change waits for no network (and records None).

    :raises InvalidInput: bad preferences.
    :raises NoViablePlan: nothing fits.
    """
    from dataclasses import replace

    from provision.plan.search import plan

    chosen = plan(host, matrix, model, prefs)
    if prefs.torch_index_reachable is not None or not prefs.index_decides or chosen.device != "cuda" \
            or chosen.index_url.rstrip("/") == PYPI_INDEX:
        return chosen, prefs
    prefs = replace(prefs, torch_index_reachable=index_reachable())
    return plan(host, matrix, model, prefs), prefs


def preferences(request: PlanRequest, host: HostProfile, wheelhouses: tuple[Path, ...],
                index_url: str | None = None) -> Preferences:
    """The options as the planner's ``Preferences``; the torch builds found in ``wheelhouses`` limit the choice.

    ``wheelhouses`` and ``index_url`` (the ``--index-url`` mirror) are also where the rendered files take torch
    from, which the plan's variant reason names.

    :raises InvalidInput: a malformed ``--python``, ``--torch`` or ``--variant``.
    """
    from packaging.version import InvalidVersion, Version

    from provision.plan.document import Preferences
    from provision.render.sources import torch_builds, wheel_builds

    python = request.python
    if python is not None and not PYTHON_MINOR_RE.fullmatch(python):
        raise InvalidInput("--python", "python", f"{python!r} is not a Python version like '3.11'")
    torch_version = None
    if request.torch_version:
        try:
            torch_version = Version(request.torch_version)
        except InvalidVersion:
            raise InvalidInput("--torch", "torch", f"{request.torch_version!r} is not a version") from None
    available = vision = None
    if wheelhouses:
        available = torch_builds(wheelhouses, python=python or host.python_minor, platform=host.platform)
        vision = wheel_builds(wheelhouses, "torchvision", python=python or host.python_minor, platform=host.platform)
    variant = request.variant
    if variant is not None and not is_buildable_variant(variant):
        raise InvalidInput("--variant", "variant", f"{variant!r} is not a variant like 'cu128' or 'cpu'")
    return Preferences(python=python, context_tokens=request.context, precision=request.precision,
                       device=request.device, torch_version=torch_version, variant=variant, torch_available=available,
                       torchvision_available=vision, wheelhouse=tuple(str(w) for w in wheelhouses),
                       index_url=index_url, engine=request.engine, images=request.images, max_pixels=request.max_pixels)


def plan_command(request: PlanRequest, environ: Mapping[str, str] | None = None) -> Plan:
    """Plan for the requested host and model.

    :raises InvalidInput: bad options or input files.
    :raises NoViablePlan: nothing fits; carries remedies.
    """
    from provision.common.net import IndexProbe
    from provision.render.sources import resolve_index_url

    environ = os.environ if environ is None else environ
    host, matrix, model = load_inputs(request)
    probe = IndexProbe()  # one per command: the wheel folders and the torch build share its answer
    index_url = resolve_index_url(request.index_url, environ)
    wheelhouses = find_wheelhouses(request, index_url, environ, probe)
    chosen, _ = plan_with_index(host, matrix, model, preferences(request, host, wheelhouses, index_url),
                                index_reachable=lambda: probe.reachable(torch_index(index_url)))
    return chosen
