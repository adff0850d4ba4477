"""What the Dockerfile of a macOS or Windows render builds: a Linux image, and which builds it installs.

Docker Desktop runs Linux containers in a VM of the host's architecture (linux/arm64 on Apple
silicon, linux/amd64 on an x86_64 Mac or PC), so the image cannot install the host's wheels: it
takes the Linux builds of the plan's pins, resolved for that Linux beside the host's own closure
(``provision.render.requirements.merge_platforms``). On linux/arm64 a plain ``torch==2.15.0`` is
PyPI's CUDA 13.2 build (torch.toml's ``pypi_default``), not the macOS wheel the venv gets; and
Docker on macOS passes neither MPS nor a GPU through. The rendered files say so in the words
``platform_note`` builds here, from the plan and the matrix (pure).
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from provision.plan.budget import gb
from provision.render.deploy import CONTAINER_ARCH, LINUX_PLATFORM

if TYPE_CHECKING:
    from provision.data.matrix import Matrix
    from provision.host.profile import HostProfile
    from provision.plan.document import Plan

__all__ = ["docker_platform", "platform_note"]

_HOST_NAMES = {"darwin": "macOS", "windows": "Windows"}
_WIDTH = 108  # the rendered files' comment width, "# " included


def docker_platform(arch: str) -> str:
    """Docker's name of the Linux platform a host of ``arch`` runs containers as: ``linux/arm64``."""
    return f"linux/{CONTAINER_ARCH.get(arch, arch)}"


def _torch_there(plan: Plan, matrix: Matrix, linux: str) -> tuple[str, bool]:
    """What the plan's torch pin installs on ``linux``, and whether that build is a CUDA build."""
    pin = plan.packages.get("torch", str(plan.torch_version))
    if "+" in pin:  # a PyTorch index build: the same variant's Linux wheel, from the same index
        return f"torch=={pin} is the same {plan.variant} build for Linux, from the same index", plan.cuda is not None
    release = next((r for r in matrix.torch if r.version == plan.torch_version), None)
    default = release.pypi_default.get(linux) if release is not None else None
    variant = release.variant(default) if release is not None and default else None
    if variant is None:
        return f"torch=={pin} is PyPI's Linux build", False
    if variant.cuda is None:
        return f"torch=={pin} is PyPI's CPU build", False
    return f"torch=={pin} is PyPI's CUDA {variant.cuda} build ({variant.name})", True


def platform_note(plan: Plan, host: HostProfile, matrix: Matrix, *, resolved_apart: bool) -> tuple[str, ...]:
    """Comment lines for the Dockerfile, compose.yaml and k8s/ of a non-Linux host; none for a Linux host.

    ``resolved_apart``: requirements.txt holds the Linux image's own closure beside the host's (markers); False
    where it pins the plan's packages only (no resolver ran), so each platform resolves the rest at install.
    """
    name = _HOST_NAMES.get(host.os)
    if name is None:
        return ()
    docker = docker_platform(host.arch)
    torch, cuda_build = _torch_there(plan, matrix, LINUX_PLATFORM.get(host.arch, f"linux-{host.arch}"))
    resolved = (f"resolved for {docker} beside this host's own (requirements.txt marks the pins only one of them "
                "installs)" if resolved_apart else
                "as requirements.txt pins them; their dependencies resolve for Linux when the image is built")
    if plan.device == "cuda":
        runs = ("the container reaches the NVIDIA GPU through Docker Desktop's WSL 2 GPU support "
                "(docker run --gpus all)")
    else:
        gpu = "neither MPS nor a GPU" if plan.device == "mps" else "no GPU"
        runs = (f"{'it runs on the CPU and brings NVIDIA CUDA libraries (a few GB); ' if cuda_build else ''}"
                f"Docker on {name} passes {gpu} through, so the model runs on the CPU in the container, slowly, "
                f"in the memory Docker's VM is given (the plan estimates {gb(plan.placement.required_bytes)})")
    venv = "setup-venv.sh" if host.os == "darwin" else "setup-venv.ps1"
    text = (f"This render is for a {name} host, and the image is Linux: {docker}, as Docker Desktop runs Linux "
            f"containers in a VM of the host's architecture. It installs the Linux builds of the plan's pins, "
            f"{resolved}. On {docker}, {torch}; {runs}. Pushed to a cluster, it runs on {docker} nodes only. "
            f"{venv} builds the environment for the {name} host itself" + (", on MPS." if plan.device == "mps" else "."))
    return tuple(textwrap.wrap(text, width=_WIDTH, break_on_hyphens=False))
