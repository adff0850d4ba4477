"""Render a plan into environment files: requirements, install/setup scripts, conda, Docker, CI, serve.sh,
deployments, lock.

``render_files(RenderInputs) -> {relative path: bytes}`` is pure: the same inputs give
the same bytes. Every value is validated (``provision.common.quoting``) while the per-file
view-models are built; templates only place values through a quoting filter for their
language. ``write_rendered`` writes a render: it stages every file in a temporary
folder inside the output (beside it when the output is new), refuses to overwrite files edited since the last render
(their sha256 differs from the old lock) unless forced, then moves files into place.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from provision import __version__
from provision.common.atomic import replace_durably, write_atomic
from provision.common.quoting import (
    check_label,
    check_model_id,
    check_repo_id,
    check_version,
)
from provision.data import Images
from provision.data.images import ImageRef
from provision.errors import InvalidInput
from provision.host.profile import planning_facts
from provision.plan.document import Plan
from provision.plan.serve import Serve, serve_load, transformers_serve
from provision.render.deploy import DEPLOY_FILES, DeployInputs, NodeFloor, deploy_files
from provision.render.lock import LOCK_NAME, build_lock, canonical_json, dump_lock, edited_files, read_lock, sha256_hex
from provision.render.requirements import Resolution, check_wheelhouse, torch_index_for, unresolved
from provision.render.templating import render_template as _render
from provision.render.toolkit import ToolkitWheel
from provision.vocab import DEFAULT_CONTEXT, QUANTIZED, is_buildable_variant

__all__ = [
    "FILE_NAMES",
    "EditedFiles",
    "RenderInputs",
    "render_files",
    "write_rendered",
]

WORKFLOW_PATH = ".github/workflows/provision.yml"
DOCKERIGNORE = ".dockerignore"
#: Every rendered file but the toolkit's wheel, whose name carries the toolkit's version (``RenderInputs.toolkit``).
FILE_NAMES = (
    "requirements.txt", "install.sh", "setup-venv.sh", "setup-venv.ps1", "environment.yml",
    "Dockerfile", DOCKERIGNORE, WORKFLOW_PATH, "serve.sh", *DEPLOY_FILES, LOCK_NAME,
)
#: What the Dockerfiles copy from the render folder, their build context (the wheel's name is added).
_CONTEXT_FILES = ("requirements.txt", "install.sh", "serve.sh")
_WHEEL_RE = re.compile(r"^provision-[0-9][0-9A-Za-z.+_]*-py3-none-any\.whl$")
_EXECUTABLE = frozenset({"install.sh", "setup-venv.sh", "serve.sh"})
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9 ._:/+=,()<>@-]{0,200}$")
#: ``uv --version`` as the resolver records it: ``uv 0.13.9 (x86_64-unknown-linux-gnu)``; the version alone.
_UV_RESOLVER_RE = re.compile(r"^uv (\d+\.\d+\.\d+)(?:\s|$)")
#: What the Dockerfile's header says of each image it names.
PINNED_BY_DIGEST = "pinned by digest"
PINNED_BY_TAG = ("pinned by tag only; `provision matrix refresh --only images` on a connected machine "
                 "records digests")
_NOTE_LINE_RE = re.compile(r"^[ -~]{1,120}$")  # printable ASCII: a comment line cannot be broken out of
#: Where the images keep the Hugging Face cache (the volume) and serve.sh.
_IMAGE_HOME = "/home/app"
_IMAGE_SERVE_SH = "/opt/provision-env/serve.sh"
#: What a CPU loads: the unquantized precisions (int8 and nf4 need bitsandbytes' CUDA kernels, fp8 an engine).
_CPU_PRECISIONS = ("bf16", "fp16", "fp32")


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

    ``variants``: the CI matrix rows, the planner's plan for each CUDA/CPU variant of the chosen torch
    (``provision.plan.search.sibling_variants``; empty: the plan's own row alone). ``hashes``: the resolution
    from ``provision.render.requirements.resolve`` (None: pins without hashes).
    ``toolkit``: the running toolkit as a wheel (``provision.render.toolkit.toolkit_wheel``), written into the
    folder so that it builds and installs from that folder alone.
    ``images``: the base images and CI actions to pin, from the same ``Matrix`` as ``matrix_digest``.
    ``node_floor``: what a node's GPU needs for the plan (``provision.render.deploy.node_floor``, from the same
    ``Matrix``); a CUDA plan's deployments cannot be rendered without it. ``deploy_image``: the image name
    compose.yaml tags and k8s/ runs (None: a local name and a placeholder registry).
    ``platform_note``: comment lines on the Linux image of a macOS or Windows host
    (``provision.render.container.platform_note``), for the Dockerfile, compose.yaml and k8s/.
    """

    plan: Plan
    images: Images
    host: Mapping[str, Any]
    model: str
    context: int = DEFAULT_CONTEXT
    flags: Mapping[str, Any] = field(default_factory=dict)
    matrix_digest: str = ""
    variants: tuple[Plan, ...] = ()
    wheelhouse: tuple[str, ...] = ()
    index_url: str | None = None
    #: whether the torch index answered the planning probe (None: not asked); the lock's inputs record it
    torch_index_reachable: bool | None = None
    hashes: Resolution | None = None
    toolkit: ToolkitWheel
    toolkit_version: str = __version__
    gpu_runner_labels: tuple[str, ...] = ("self-hosted", "linux", "gpu")
    cpu_runner_labels: tuple[str, ...] = ("ubuntu-22.04",)
    node_floor: NodeFloor | None = None
    deploy_image: str | None = None
    platform_note: tuple[str, ...] = ()


# ---------------------------------------------------------------- view-models


def _cuda(plan: Plan) -> str | None:
    """The plan's CUDA as images and labels write it (``12.6``); None for a CPU build."""
    return str(plan.cuda) if plan.cuda else None


def _base_image(images: Images, plan: Plan) -> tuple[ImageRef, bool]:
    """(image, whether the image already has the plan's Python); an engine plan's is the engine's image."""
    if plan.serve.engine != "transformers":
        if plan.serve.image is None:
            raise InvalidInput("plan", "serve.image", f"a {plan.serve.engine} plan needs the engine's image")
        return ImageRef.parse(plan.serve.image), True  # validated by Serve.from_dict / the engines matrix
    if plan.cuda is None:
        image = images.python_image(plan.python)
        if image is None:
            raise InvalidInput(images.source, "cpu", f"no CPU image for Python {plan.python}")
        return image, True
    image = images.runtime_image(str(plan.cuda))
    if image is None:
        raise InvalidInput(images.source, "cuda", f"no runtime image for CUDA {plan.cuda} ({plan.variant})")
    return image, False


def _pinning(image: ImageRef) -> str:
    return PINNED_BY_DIGEST if image.digest else PINNED_BY_TAG


@dataclass(frozen=True, slots=True, kw_only=True)
class _Uv:
    """The uv the Dockerfile copies: its image, why that version, and how it is pinned."""

    image: ImageRef
    why: str
    pinning: str


def _uv_image(images: Images, resolution: Resolution) -> _Uv:
    """The uv that resolved the lock, so the image installs with the uv whose resolution it pins;
    images.toml's when no uv resolved it (no resolver ran, or another tool's name is recorded).

    images.toml's digest is its own tag's: another version is pinned by its tag.
    """
    match = _UV_RESOLVER_RE.match(resolution.resolver)
    resolver = _one_line(resolution.resolver)
    if match is None:
        return _Uv(image=images.uv, pinning=_pinning(images.uv),
                   why=f"images.toml's uv, since no uv resolved this render's lock (hashes.resolver: {resolver})")
    version = match.group(1)
    why = f"the uv that resolved this render's lock (hashes.resolver: {resolver})"
    if version == images.uv.tag:
        return _Uv(image=images.uv, why=why, pinning=_pinning(images.uv))
    return _Uv(image=replace(images.uv, tag=version, digest=None), why=why,
               pinning=f"pinned by tag only; images.toml's uv is {images.uv.tag}: set its tag to {version} and "
                       "`provision matrix refresh --only images` on a connected machine records this one's digest")


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


def _is_engine(plan: Plan) -> bool:
    """A vLLM or SGLang plan: the engine's own build of torch, its official image, one CI row."""
    return plan.serve.engine != "transformers"


def _smoke_precision(plan: Plan) -> str:
    """What ``provision smoke`` loads: the plan's server's load (``serve_load``), e.g. an engine's fp8 in its 16-bit type.

    The smoke test loads the model in process through transformers, which has no online fp8; it
    proves the environment's torch and transformers load the model, and the served proof is the server's.
    """
    return serve_load(plan.serve, plan.precision).precision


def _serve_lines(serve: Serve) -> list[list[dict[str, str | None]]]:
    """``serve.argv`` for serve.sh, a flag and its value to a line: each word as text to quote, or the
    variable that replaces it (``port``, ``model``)."""
    slots = {serve.port_index: "port"}
    if serve.model_index is not None:
        slots[serve.model_index] = "model"
    lines: list[list[dict[str, str | None]]] = []
    for i, word in enumerate(serve.argv):
        item = {"var": slots.get(i), "text": word}
        follows_flag = i > 0 and serve.argv[i - 1].startswith("-") and not word.startswith("-")
        if follows_flag and len(lines[-1]) == 1:
            lines[-1].append(item)
        else:
            lines.append([item])
    return lines


def _serve_sh(common: Mapping[str, Any], plan: Plan) -> bytes:
    """serve.sh: the plan's server command, run with the host, port and model the environment gives."""
    serve = plan.serve
    name = check_model_id(serve.served_model_name, source="plan", field="serve.served_model_name")
    return _render("serve.sh.j2", {
        **common, "engine": serve.engine, "engine_version": serve.engine_version, "served_model_name": name,
        "port": serve.port, "model_source": serve.model_source, "lines": _serve_lines(serve),
    })


def _ci_plan(plan: Plan) -> Plan:
    """The plan a CI row runs: the row's own, or for an MPS plan its CPU twin (no CI runner has MPS).

    The twin is what ``plan(..., device="cpu")`` gives on the same Mac: one macOS torch wheel serves both
    devices and the planner budgets both in host memory at the same precision, so only the device, its
    sentence and the server's ``--device`` change.
    """
    if plan.device != "mps":
        return plan
    placement = replace(plan.placement, device="cpu", why=plan.placement.why.replace("unified memory (MPS)", "RAM"))
    s = plan.serve
    serve = transformers_serve(served_model_name=s.served_model_name, model_source=s.model_source,
                               transformers_version=s.engine_version, precision=plan.precision, device="cpu",
                               context=s.max_model_len)
    reasons = tuple(replace(r, choice="cpu", why=placement.why) if r.decision == "device" else r for r in plan.reasons)
    return replace(plan, placement=placement, serve=serve, reasons=reasons)


def _check_runnable(plan: Plan, row: int) -> None:
    """A CI row's plan must load where its job runs: a CPU row in a 16- or 32-bit precision and a server on
    ``--device cpu``; bitsandbytes pinned wherever a precision needs it (int8 and nf4 load through it).

    :raises InvalidInput: naming the row of ``variants``.
    """
    where = f"[{row}]"
    if plan.precision in QUANTIZED and "bitsandbytes" not in plan.packages:
        raise InvalidInput("variants", f"{where}.packages", f"{plan.precision} loads through bitsandbytes, "
                                                            f"which the {plan.variant} row does not pin")
    if plan.device == "cuda":
        return
    if plan.precision not in _CPU_PRECISIONS:
        raise InvalidInput("variants", f"{where}.precision", f"{plan.precision} does not load on a CPU "
                                                             f"(a CPU row needs one of {', '.join(_CPU_PRECISIONS)})")
    argv = plan.serve.argv
    if serve_load(plan.serve, plan.precision).precision != plan.precision or (
            plan.serve.engine == "transformers" and dict(itertools.pairwise(argv)).get("--device") != "cpu"):
        raise InvalidInput("variants", f"{where}.serve.argv", f"{' '.join(plan.serve.argv)!r} does not serve "
                                                              f"{plan.precision} on the CPU")


def _variant_plans(inputs: RenderInputs, plan: Plan) -> list[dict[str, Any]]:
    """One CI matrix entry per sibling plan (``sibling_variants``): its device, runner, and the plan as JSON.

    A job runs on the GPU runner labels when its plan places the model on CUDA, else on the CPU labels.
    Each row's plan is read back as ``provision render --plan`` reads it in the job, so a row that
    would fail there fails this render. An engine plan has one row, its own: the engine pins torch to one build.

    :raises InvalidInput: a row that is not a buildable variant, or whose plan its runner cannot load.
    """
    rows = (plan,) if _is_engine(plan) else (inputs.variants or (plan,))
    out = []
    for i, row in enumerate(rows):
        if not is_buildable_variant(row.variant):
            raise InvalidInput("variants", f"[{i}].variant", f"{row.variant!r} is not cpu or cuXYZ")
        sub = Plan.from_dict(_ci_plan(row).to_dict(), source="variants", where=f"[{i}]")
        _check_runnable(sub, i)
        labels = inputs.gpu_runner_labels if sub.device == "cuda" else inputs.cpu_runner_labels
        out.append({
            "variant": sub.variant,
            "device": sub.device,
            "precision": sub.precision,
            "torch_pin": sub.packages.get("torch", ""),
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
    toolkit_wheel: str
    base_image: ImageRef
    has_python: bool
    toolkit_version: str
    platform_note: tuple[str, ...] = ()


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
    if not _WHEEL_RE.fullmatch(inputs.toolkit.name):
        raise InvalidInput("render", "toolkit", f"{inputs.toolkit.name!r} is not a provision wheel's file name")
    base, has_python = _base_image(images, plan)
    for i, line in enumerate(inputs.platform_note):
        if not _NOTE_LINE_RE.fullmatch(line):
            raise InvalidInput("render", f"platform_note[{i}]", "expected one line of printable ASCII (120 at most)")
    return _Checked(torch_index=torch_index, wheelhouse=wheelhouse, toolkit_wheel=inputs.toolkit.name,
                    base_image=base, has_python=has_python, platform_note=inputs.platform_note,
                    toolkit_version=check_version(inputs.toolkit_version, source="render", field="toolkit_version"))


def _common_view(plan: Plan, checked: _Checked, resolution: Resolution) -> dict[str, Any]:
    """What every template may show."""
    return {
        "toolkit_version": checked.toolkit_version,
        "model_id": plan.model_id, "repo": plan.model_repo, "python": plan.python, "variant": plan.variant,
        "cuda": _cuda(plan), "torch": str(plan.torch_version), "precision": plan.precision, "device": plan.device,
        "engine": plan.serve.engine, "port": plan.serve.port,
        "torch_index": checked.torch_index, "wheelhouse": list(checked.wheelhouse),
        "toolkit_wheel": checked.toolkit_wheel, "hash_status": resolution.status,
        "unhashed": [r.pin for r in resolution.requirements if not r.hashes],
    }


def _requirements_txt(common: Mapping[str, Any], resolution: Resolution) -> bytes:
    return _render("requirements.txt.j2", {
        **common, "reasons": [_one_line(r) for r in resolution.reasons],
        "requirements": [{"pin": r.pin, "hashes": list(r.hashes)} for r in resolution.requirements],
    })


def _environment_yml(common: Mapping[str, Any], plan: Plan, images: Images,
                     resolution: Resolution, toolkit: ToolkitWheel) -> bytes:
    """conda's file: pip lines carry hashes only when every line has them (pip's all-or-nothing rule).

    The last line is the toolkit's wheel in this folder (conda runs pip in the file's folder).
    """
    complete = resolution.status == "complete"
    lines = [" ".join([r.pin, *(f"--hash={h}" for h in r.hashes)]) if complete else r.pin
             for r in resolution.requirements]
    wheel = f"./{toolkit.name}"
    lines.append(f"{wheel} --hash=sha256:{sha256_hex(toolkit.data)}" if complete else wheel)
    return _render("environment.yml.j2", {
        **common, "env_name": f"provision-{plan.model_id}-{plan.variant}", "pip_version": images.conda_pip,
        "pip_lines": lines,
    })


def _image_labels(inputs: RenderInputs, plan: Plan, resolution: Resolution, toolkit_version: str,
                  requirements: bytes) -> dict[str, str]:
    """The image's OCI and provision labels: what it runs and the digests it was built from."""
    nvidia = inputs.host.get("nvidia") if isinstance(inputs.host, Mapping) else None
    host_driver = nvidia.get("driver_version") if isinstance(nvidia, Mapping) else None
    torch, cuda = str(plan.torch_version), _cuda(plan)
    driver = check_version(host_driver, source="host", field="nvidia.driver_version") if host_driver else None
    if _is_engine(plan):  # the official image brings its own CUDA runtime
        runtime = f"the CUDA runtime of {plan.serve.image}" + (f", planned for host driver {driver}" if driver else "")
    elif cuda:
        runtime = f"CUDA {cuda} runtime" + (f", planned for host driver {driver}" if driver else "")
    else:
        runtime = "cpu"
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
        "io.provision.driver": runtime,
        "io.provision.engine": f"{plan.serve.engine} {plan.serve.engine_version}",
    }


def _health_probe(port: int) -> list[str]:
    """The HEALTHCHECK command: GET /health (vLLM, SGLang and transformers serve all answer it) on serve.sh's port."""
    return ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % "
            f"os.environ.get('PROVISION_SERVE_PORT', '{port}'), timeout=4)"]


def _dockerfile(common: Mapping[str, Any], plan: Plan, images: Images, checked: _Checked,
                labels: Mapping[str, str], resolution: Resolution) -> bytes:
    """The transformers plan's builder/runtime image, or an engine plan's image on the engine's own."""
    serve = plan.serve
    view = {
        **common, "base_image": checked.base_image.ref, "base_digest": checked.base_image.digest is not None,
        "port": serve.port,
        "engine": serve.engine, "engine_version": serve.engine_version, "home": _IMAGE_HOME,
        "serve_sh": _IMAGE_SERVE_SH, "serve_cmd": ["bash", _IMAGE_SERVE_SH], "health_cmd": _health_probe(serve.port),
        "smoke_argv": ["provision", "smoke", "--precision", _smoke_precision(plan)],
        "labels": [(k, _label_value(v)) for k, v in sorted(labels.items())],
        "gpu_flags": "--gpus all " if plan.device == "cuda" else "", "platform_note": list(checked.platform_note),
    }
    pins = [f"{checked.base_image.ref}: {_pinning(checked.base_image)}"]
    if _is_engine(plan):
        return _render("Dockerfile.engine.j2", {**view, "ipc": "--ipc=host ", "image_pins": pins})
    uv = _uv_image(images, resolution)
    row = images.runtime_row(str(plan.cuda)) if plan.cuda else None
    return _render("Dockerfile.j2", {
        **view, "has_python": checked.has_python, "uv_image": uv.image.ref, "uv_version": uv.image.tag,
        "uv_why": uv.why, "image_pins": [*pins, f"{uv.image.ref}: {uv.pinning}"],
        "image_cuda": row.cuda if row is not None else None,
    })


def _workflow(common: Mapping[str, Any], inputs: RenderInputs, plan: Plan, images: Images) -> bytes:
    """The CI workflow: one job per row of ``_variant_plans``, each building, smoke-testing and serving its plan."""
    rows = _variant_plans(inputs, plan)
    source = plan.serve.model_source
    return _render("provision.yml.j2", {
        **common, "actions": _actions(images), "matrix": rows, "engine_plan": _is_engine(plan),
        "engine_version": plan.serve.engine_version,
        "model_source": check_repo_id(source, source="plan", field="serve.model_source") if source else None,
        "has_cpu_row": any(r["device"] != "cuda" for r in rows), "has_gpu_row": any(r["device"] == "cuda" for r in rows),
        # a plain pin on a CPU row is PyPI's build for the host's platform: on a Linux runner, a CUDA build
        "pypi_cpu_torch": next((r["torch_pin"] for r in rows if r["device"] != "cuda" and "+" not in r["torch_pin"]), None),
    })


def _lock(inputs: RenderInputs, checked: _Checked, resolution: Resolution, files: Mapping[str, bytes]) -> bytes:
    """The lock: every input that changes the plan, the plan, the hashes' state and the digest of every other file.

    Of the host it keeps only what plans are made from (``planning_facts``): free disk and RAM readings
    would make an unchanged machine's second render differ from its first.
    """
    return dump_lock(build_lock(
        inputs={
            "host": planning_facts(inputs.host), "matrix_digest": inputs.matrix_digest, "model": inputs.model,
            "context": inputs.context, "flags": dict(inputs.flags), "toolkit_version": inputs.toolkit_version,
            "wheelhouse": list(checked.wheelhouse), "index_url": inputs.index_url,
            "torch_index_reachable": inputs.torch_index_reachable,
            "runner_labels": {"gpu": list(inputs.gpu_runner_labels), "cpu": list(inputs.cpu_runner_labels)},
            "deploy_image": inputs.deploy_image,
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
    files["setup-venv.sh"] = _render("setup-venv.sh.j2", common)
    files["setup-venv.ps1"] = _render("setup-venv.ps1.j2", common)
    files[checked.toolkit_wheel] = inputs.toolkit.data
    files["environment.yml"] = _environment_yml(common, plan, images, resolution, inputs.toolkit)
    files["serve.sh"] = _serve_sh(common, plan)
    labels = _image_labels(inputs, plan, resolution, checked.toolkit_version, files["requirements.txt"])
    files["Dockerfile"] = _dockerfile(common, plan, images, checked, labels, resolution)
    files[DOCKERIGNORE] = _render("dockerignore.j2", {**common, "context_files": [*_CONTEXT_FILES, checked.toolkit_wheel]})
    files[WORKFLOW_PATH] = _workflow(common, inputs, plan, images)
    files.update(deploy_files(plan, DeployInputs(
        floor=inputs.node_floor or NodeFloor(), arch=str(inputs.host.get("arch")),
        image=inputs.deploy_image, toolkit_version=checked.toolkit_version, platform_note=checked.platform_note)))
    files[LOCK_NAME] = _lock(inputs, checked, resolution, files)
    return files


# ---------------------------------------------------------------- the writer


def _mode(name: str) -> int:
    return 0o755 if name in _EXECUTABLE else 0o644


def _stage_folder(out_dir: Path) -> Path:
    """A new temporary folder on ``out_dir``'s filesystem: inside it when it exists, else beside it.

    An existing output (a mounted ``/out`` whose parent is not the user's) needs nothing from its
    parent; a new one is staged beside it, so it appears whole with one rename.

    :raises OSError: that folder cannot be written; ``filename`` names it.
    """
    where = out_dir if out_dir.is_dir() else out_dir.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.render-", dir=where))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(where)) from None
    stage.chmod(0o755)
    return stage


def write_rendered(out_dir: Path, files: Mapping[str, bytes], *, force: bool = False) -> list[str]:
    """Write ``files`` under ``out_dir`` all-or-nothing; return the names that changed.

    Every file is first written (fsynced, by ``provision.common.atomic``) into a temp folder
    inside ``out_dir`` (beside it when it is new; same filesystem), then moved over its target
    with ``os.replace``.
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
    stage = _stage_folder(out_dir)
    changed = []
    try:
        for name in sorted(files):
            try:
                write_atomic(stage / name, files[name], mode=_mode(name))
            except OSError as exc:  # named as the file it was to become, not the stage's copy
                raise OSError(exc.errno, exc.strerror, str(out_dir / name)) from exc
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
