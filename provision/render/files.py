"""Render a plan into environment files: requirements, install/setup scripts, conda, Docker, CI, deployments, lock.

``render_files(RenderInputs) -> {relative path: bytes}`` is pure: the same inputs give
the same bytes. Every value is validated (``provision.common.quoting``) while the per-file
view-models are built; templates only place values through a quoting filter for their
language. ``write_rendered`` writes a render: it stages every file in a temporary
folder next to the output, refuses to overwrite files edited since the last render
(their sha256 differs from the old lock) unless forced, then moves files into place.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from packaging.version import Version

from provision import __version__
from provision.common.atomic import replace_durably, write_atomic
from provision.common.fields import Fields
from provision.common.quoting import (
    check_index_url,
    check_label,
    check_package_name,
    check_path,
    check_version,
)
from provision.data import Images
from provision.errors import InvalidInput
from provision.plan.document import Plan, variant_cuda
from provision.render.deploy import DEPLOY_FILES, DeployInputs, NodeFloor, deploy_files
from provision.render.lock import LOCK_NAME, build_lock, canonical_json, dump_lock, edited_files, read_lock, sha256_hex
from provision.render.requirements import Resolution, check_wheelhouse, torch_index_for, unresolved
from provision.render.templating import render_template as _render
from provision.vocab import DEFAULT_CONTEXT, is_buildable_variant

__all__ = [
    "FILE_NAMES",
    "EditedFiles",
    "RenderInputs",
    "render_files",
    "write_rendered",
]

WORKFLOW_PATH = ".github/workflows/provision.yml"
FILE_NAMES = (
    "requirements.txt", "install.sh", "setup-venv.sh", "setup-venv.ps1", "environment.yml",
    "Dockerfile", WORKFLOW_PATH, *DEPLOY_FILES, LOCK_NAME,
)
_EXECUTABLE = frozenset({"install.sh", "setup-venv.sh"})
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9 ._:/+=,()<>-]{0,200}$")
_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_QUANT = {"int8": "bnb-8bit", "nf4": "bnb-4bit"}
_SERVE_PORT = "8000"


class EditedFiles(InvalidInput):
    """The output folder holds files changed since the last render (exit 2 unless --force)."""

    def __init__(self, out_dir: Path, names: Sequence[str]) -> None:
        super().__init__(str(out_dir), ", ".join(names),
                         "edited since the last render (sha256 differs from provision.lock.json); "
                         "use --force to overwrite")
        self.names = tuple(names)


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderInputs:
    """Everything a render depends on; nothing else is read.

    ``variants``: one mapping per CUDA/CPU variant of the chosen torch for the CI matrix,
    each ``{"variant", "cuda", "index_url", "packages"}``. ``hashes``: the resolution
    from ``provision.render.requirements.resolve`` (None: pins without hashes).
    ``docker_env_dir``: the output folder relative to the Docker build context (the checkout root).
    ``images``: the base images and CI actions to pin, from the same ``Matrix`` as ``matrix_digest``.
    ``node_floor``: what a node's GPU needs for the plan (``provision.render.deploy.node_floor``, from the same
    ``Matrix``); a CUDA plan's deployments cannot be rendered without it. ``deploy_image``: the image name
    compose.yaml tags and k8s/ runs (None: a local name and a placeholder registry).
    """

    plan: Plan
    images: Images
    host: Mapping[str, Any]
    model: str
    context: int = DEFAULT_CONTEXT
    flags: Mapping[str, Any] = field(default_factory=dict)
    matrix_digest: str = ""
    variants: tuple[Mapping[str, Any], ...] = ()
    wheelhouse: tuple[str, ...] = ()
    index_url: str | None = None
    hashes: Resolution | None = None
    toolkit_version: str = __version__
    toolkit_source: str | None = None
    docker_env_dir: str = "."
    gpu_runner_labels: tuple[str, ...] = ("self-hosted", "linux", "gpu")
    cpu_runner_labels: tuple[str, ...] = ("ubuntu-22.04",)
    node_floor: NodeFloor | None = None
    deploy_image: str | None = None


# ---------------------------------------------------------------- view-models


def _cuda(plan: Plan) -> str | None:
    """The plan's CUDA as images and labels write it (``12.6``); None for a CPU build."""
    return str(plan.cuda) if plan.cuda else None


def _packages(f: Fields, key: str) -> tuple[tuple[str, str], ...]:
    pk = f.obj(key)
    assert pk is not None
    out = {}
    for name, version in pk.data.items():
        canon = check_package_name(name, source=f.source, field=pk.where(str(name)))
        out[canon] = check_version(version, source=f.source, field=pk.where(str(name)))
    if not out:
        raise f.fail(key, "must pin at least one package")
    return tuple(sorted(out.items()))


def _base_image(images: Images, plan: Plan) -> tuple[str, bool]:
    """(image reference, whether the image already has the plan's Python)."""
    if plan.cuda is None:
        image = images.python_image(plan.python)
        if image is None:
            raise InvalidInput(images.source, "cpu", f"no CPU image for Python {plan.python}")
        return image.ref, True
    image = images.runtime_image(str(plan.cuda))
    if image is None:
        raise InvalidInput(images.source, "cuda", f"no runtime image for CUDA {plan.cuda} ({plan.variant})")
    return image.ref, False


def _actions(images: Images) -> dict[str, str]:
    """The workflow's ``uses:`` pins by action name (``images.toml`` has every one it needs, checked at load)."""
    return {a.name: a.pin for a in images.actions}


def _torch_index(inputs: RenderInputs, plan: Plan) -> str | None:
    """The index line for torch builds (see ``provision.render.requirements.torch_index_for``)."""
    return torch_index_for(plan.index_url, wheelhouse=inputs.wheelhouse, index_url=inputs.index_url)


def _label_value(text: str) -> str:
    if not _LABEL_VALUE_RE.fullmatch(text):
        raise InvalidInput("render", "label", f"{text!r} has characters a label may not hold")
    return text


def _one_line(text: str) -> str:
    """Free text for a comment line: printable ASCII only, whitespace collapsed."""
    clean = "".join(ch if 32 <= ord(ch) < 127 else " " for ch in text)
    return " ".join(clean.split())[:300]


def _serve_argv(plan: Plan) -> list[str]:
    """``transformers serve`` for the plan (see the Dockerfile template for why this engine)."""
    argv = ["transformers", "serve"]
    if plan.model_repo is not None:
        argv.append(plan.model_repo)
    argv += ["--host", "0.0.0.0", "--port", _SERVE_PORT]  # noqa: S104 (a server in a container)
    if plan.precision in _QUANT:
        argv += ["--quantization", _QUANT[plan.precision]]
    else:
        argv += ["--dtype", _DTYPES[plan.precision]]
    argv += ["--device", "cpu" if plan.device == "cpu" else "auto"]
    return argv


def _variant_plans(inputs: RenderInputs, plan: Plan) -> list[dict[str, Any]]:
    """One CI matrix entry per sibling variant: its runner, and the plan with that variant's build, as JSON."""
    rows = inputs.variants or ({"variant": plan.variant, "index_url": plan.index_url, "packages": plan.packages},)
    out = []
    for i, row in enumerate(rows):
        f = Fields(row, "variants", f"[{i}]")
        variant = f.str("variant")
        if not is_buildable_variant(variant):
            raise f.fail("variant", f"{variant!r} is not cpu or cuXYZ")
        index_url = check_index_url(f.str("index_url"), source="variants", field=f.where("index_url"))
        packages = dict(_packages(f, "packages"))
        version = check_version(packages.get("torch", str(plan.torch_version)).split("+")[0],
                                source="variants", field=f.where("packages"))
        placement = replace(plan.placement, device="cpu", gpus=()) if variant == "cpu" else plan.placement
        sub = replace(plan, torch_version=Version(version), variant=variant, cuda=variant_cuda(variant),
                      index_url=index_url, packages=packages, placement=placement)
        labels = inputs.cpu_runner_labels if variant == "cpu" else inputs.gpu_runner_labels
        out.append({
            "variant": variant,
            "runner": [check_label(x, field="runner_labels") for x in labels],
            "plan_json": canonical_json(sub.to_dict()).decode(),
        })
    return sorted(out, key=lambda r: r["variant"])


# ---------------------------------------------------------------- templates


@dataclass(frozen=True, slots=True, kw_only=True)
class _Checked:
    """The render's inputs beyond the plan, validated for the files they land in."""

    torch_index: str | None
    wheelhouse: tuple[str, ...]
    toolkit_source: str | None
    env_dir: str
    base_image: str
    has_python: bool
    toolkit_version: str


def _resolution(inputs: RenderInputs, plan: Plan) -> Resolution:
    """The resolver's pins (or the plan's alone, unhashed); it must pin every plan package."""
    resolution = inputs.hashes or unresolved(plan.packages, "no resolver was run for this render")
    missing = set(plan.packages) - {r.name for r in resolution.requirements}
    if missing:
        raise InvalidInput("render", "hashes", f"resolution lacks plan packages: {', '.join(sorted(missing))}")
    return resolution


def _check(inputs: RenderInputs, plan: Plan, images: Images) -> _Checked:
    torch_index = _torch_index(inputs, plan)
    wheelhouse = check_wheelhouse(inputs.wheelhouse)
    source = None if inputs.toolkit_source is None else check_path(
        inputs.toolkit_source, source="toolkit_source", field="path")
    env_dir = check_path(inputs.docker_env_dir, source="docker_env_dir", field="path").strip("/") or "."
    base, has_python = _base_image(images, plan)
    return _Checked(torch_index=torch_index, wheelhouse=wheelhouse, toolkit_source=source, env_dir=env_dir,
                    base_image=base, has_python=has_python,
                    toolkit_version=check_version(inputs.toolkit_version, source="render", field="toolkit_version"))


def _common_view(plan: Plan, checked: _Checked, resolution: Resolution) -> dict[str, Any]:
    """What every template may show."""
    return {
        "toolkit_version": checked.toolkit_version,
        "model_id": plan.model_id, "repo": plan.model_repo, "python": plan.python, "variant": plan.variant,
        "cuda": _cuda(plan), "torch": str(plan.torch_version), "precision": plan.precision, "device": plan.device,
        "torch_index": checked.torch_index, "wheelhouse": list(checked.wheelhouse),
        "hash_status": resolution.status,
        "unhashed": [f"{r.name}=={r.version}" for r in resolution.requirements if not r.hashes],
    }


def _requirements_txt(common: Mapping[str, Any], resolution: Resolution) -> bytes:
    return _render("requirements.txt.j2", {
        **common, "reasons": [_one_line(r) for r in resolution.reasons],
        "requirements": [{"pin": f"{r.name}=={r.version}", "hashes": list(r.hashes)}
                         for r in resolution.requirements],
    })


def _environment_yml(common: Mapping[str, Any], plan: Plan, images: Images,
                     resolution: Resolution) -> bytes:
    """conda's file: pip lines carry hashes only when every line has them (pip's all-or-nothing rule)."""
    return _render("environment.yml.j2", {
        **common, "env_name": f"provision-{plan.model_id}-{plan.variant}", "pip_version": images.conda_pip,
        "pip_lines": [
            " ".join([f"{r.name}=={r.version}", *(f"--hash={h}" for h in r.hashes)])
            if resolution.status == "complete" else f"{r.name}=={r.version}"
            for r in resolution.requirements
        ],
    })


def _image_labels(inputs: RenderInputs, plan: Plan, resolution: Resolution, toolkit_version: str,
                  requirements: bytes) -> dict[str, str]:
    """The image's OCI and provision labels: what it runs and the digests it was built from."""
    nvidia = inputs.host.get("nvidia") if isinstance(inputs.host, Mapping) else None
    host_driver = nvidia.get("driver_version") if isinstance(nvidia, Mapping) else None
    torch, cuda = str(plan.torch_version), _cuda(plan)
    return {
        "org.opencontainers.image.title": f"provision {plan.model_id}",
        "org.opencontainers.image.description": f"{plan.model_id} {plan.precision} on torch {torch} {plan.variant}",
        "org.opencontainers.image.version": toolkit_version,
        "io.provision.model": plan.model_id,
        "io.provision.precision": plan.precision,
        "io.provision.torch": plan.packages.get("torch", torch),
        "io.provision.variant": plan.variant,
        "io.provision.cuda": cuda or "none",
        "io.provision.plan-sha256": sha256_hex(canonical_json(plan.to_dict())),
        "io.provision.requirements-sha256": sha256_hex(requirements),
        "io.provision.hashes": resolution.status,
        "io.provision.driver": (f"CUDA {cuda} runtime, planned for host driver "
                                f"{check_version(host_driver, source='host', field='nvidia.driver_version')}"
                                if cuda and host_driver else ("CUDA " + cuda if cuda else "cpu")),
    }


def _dockerfile(common: Mapping[str, Any], plan: Plan, images: Images, checked: _Checked,
                labels: Mapping[str, str]) -> bytes:
    return _render("Dockerfile.j2", {
        **common, "base_image": checked.base_image, "has_python": checked.has_python, "uv_image": images.uv.ref,
        "env_dir": checked.env_dir, "serve_argv": _serve_argv(plan), "port": _SERVE_PORT,
        "smoke_argv": ["provision", "smoke", "--precision", plan.precision],
        "labels": [(k, _label_value(v)) for k, v in sorted(labels.items())],
    })


def _lock(inputs: RenderInputs, checked: _Checked, resolution: Resolution, files: Mapping[str, bytes]) -> bytes:
    """The lock: every input, the plan, the hashes' state and the digest of every other file."""
    return dump_lock(build_lock(
        inputs={
            "host": dict(inputs.host), "matrix_digest": inputs.matrix_digest, "model": inputs.model,
            "context": inputs.context, "flags": dict(inputs.flags), "toolkit_version": inputs.toolkit_version,
            "wheelhouse": list(checked.wheelhouse), "index_url": inputs.index_url,
            "runner_labels": {"gpu": list(inputs.gpu_runner_labels), "cpu": list(inputs.cpu_runner_labels)},
            "docker_env_dir": checked.env_dir, "deploy_image": inputs.deploy_image,
        },
        plan=inputs.plan.to_dict(),
        hashes=resolution.summary(),
        files=files,
    ))


def render_files(inputs: RenderInputs) -> dict[str, bytes]:
    """All rendered files, keyed by their path inside the output folder.

    Values are checked in the order the files are written, so the first bad one is reported.

    :raises InvalidInput: a plan, label or path value fails validation, or ``images`` has no row for the plan.
    """
    plan = inputs.plan
    if inputs.matrix_digest and not _SHA_RE.fullmatch(inputs.matrix_digest):
        raise InvalidInput("render", "matrix_digest", "expected a sha256 hex digest")
    images = inputs.images
    resolution = _resolution(inputs, plan)
    checked = _check(inputs, plan, images)
    common = _common_view(plan, checked, resolution)
    files: dict[str, bytes] = {}
    files["requirements.txt"] = _requirements_txt(common, resolution)
    files["install.sh"] = _render("install.sh.j2", common)
    files["setup-venv.sh"] = _render("setup-venv.sh.j2", {**common, "toolkit_source": checked.toolkit_source})
    files["setup-venv.ps1"] = _render("setup-venv.ps1.j2", {**common, "toolkit_source": checked.toolkit_source})
    files["environment.yml"] = _environment_yml(common, plan, images, resolution)
    labels = _image_labels(inputs, plan, resolution, checked.toolkit_version, files["requirements.txt"])
    files["Dockerfile"] = _dockerfile(common, plan, images, checked, labels)
    files[WORKFLOW_PATH] = _render("provision.yml.j2", {
        **common, "actions": _actions(images), "matrix": _variant_plans(inputs, plan),
    })
    files.update(deploy_files(plan, DeployInputs(
        floor=inputs.node_floor or NodeFloor(), arch=str(inputs.host.get("arch")), env_dir=checked.env_dir,
        image=inputs.deploy_image, toolkit_version=checked.toolkit_version)))
    files[LOCK_NAME] = _lock(inputs, checked, resolution, files)
    return files


# ---------------------------------------------------------------- the writer


def _mode(name: str) -> int:
    return 0o755 if name in _EXECUTABLE else 0o644


def write_rendered(out_dir: Path, files: Mapping[str, bytes], *, force: bool = False) -> list[str]:
    """Write ``files`` under ``out_dir`` all-or-nothing; return the names that changed.

    Every file is first written (fsynced, by ``provision.common.atomic``) into a temp folder
    beside ``out_dir`` (same filesystem), then moved over its target with ``os.replace``.
    A file whose bytes differ from the sha256 the previous lock recorded was edited by
    someone: refuse unless ``force``.

    :raises EditedFiles: edited files are in the way and ``force`` is false.
    """
    out_dir = Path(out_dir)
    old = read_lock(out_dir / LOCK_NAME) if (out_dir / LOCK_NAME).is_file() else None
    if not force:
        if old is not None:
            edited = edited_files(out_dir, old, [n for n in files if n != LOCK_NAME])
        else:  # no lock: anything already there was not written by us
            edited = [n for n in files if (out_dir / n).exists()]
        if edited:
            raise EditedFiles(out_dir, edited)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.render-", dir=out_dir.parent))
    stage.chmod(0o755)
    changed = []
    try:
        for name in sorted(files):
            write_atomic(stage / name, files[name], mode=_mode(name))
        if not out_dir.exists():
            replace_durably(stage, out_dir)  # a fresh folder appears whole
            return sorted(files)
        # lock last: until it lands, the old lock still describes the old files
        for name in sorted(files, key=lambda n: (n == LOCK_NAME, n)):
            target = out_dir / name
            if target.is_file() and target.read_bytes() == files[name] and (
                    os.access(target, os.X_OK) == (name in _EXECUTABLE)):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            replace_durably(stage / name, target)
            changed.append(name)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return changed
