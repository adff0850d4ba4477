"""The Linux image of a macOS or Windows render: its own resolution and what the files say about it (issue 14).

A macOS plan pins ``torch==2.15.0``; its Dockerfile builds a linux/arm64 image, where that pin is PyPI's CUDA
13.2 build with nvidia-* dependencies the macOS closure lacks. Installed with --require-hashes from the Mac's
closure, uv refuses the image (measured: "Hash-checking is required, but no trusted hash was provided for:
`cuda-toolkit`"); the render therefore resolves both platforms into one requirements.txt, with markers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import provision.render.requirements as requirements
from provision.data.catalog import load_catalog, resolve_model
from provision.data.matrix import load_matrix
from provision.errors import InvalidInput
from provision.host.profile import load_host
from provision.plan.search import plan
from provision.plan.usecase import PlanRequest
from provision.render.container import docker_platform, platform_note
from provision.render.requirements import PinnedRequirement, Resolution, merge_platforms, unresolved
from provision.render.usecase import RenderRequest, render_command

HOSTS = Path(__file__).parent / "fixtures" / "hosts"
MATRIX = load_matrix()
AUTOGLM = resolve_model("autoglm-phone-9b", load_catalog())
H1, H2, H3 = ("sha256:" + c * 64 for c in "abc")
LINUX = 'sys_platform == "linux"'
DARWIN = 'sys_platform == "darwin"'


def _pin(name: str, version: str, *hashes: str) -> PinnedRequirement:
    return PinnedRequirement(name=name, version=version, hashes=hashes)


def _res(*pins: PinnedRequirement, status: str = "complete", reasons: tuple[str, ...] = ()) -> Resolution:
    return Resolution(status=status, requirements=pins, reasons=reasons, resolver="uv 0.13.9")


def _merge(host: Resolution, image: Resolution) -> Resolution:
    return merge_platforms({"torch": "2.15.0"}, host, image, host_os="darwin", host_platform="aarch64-apple-darwin",
                           image_platform="aarch64-manylinux_2_28")


# ---------------------------------------------------------------- merge_platforms (pure)


def test_pins_both_closures_hold_alike_are_written_once_and_the_rest_carry_their_platform() -> None:
    merged = _merge(_res(_pin("torch", "2.15.0", H1), _pin("filelock", "4.3.1", H2)),
                    _res(_pin("torch", "2.15.0", H1, H3), _pin("filelock", "4.3.1", H2),
                         _pin("nvidia-cublas", "13.4.1.3", H3)))
    assert merged.status == "complete"
    assert [r.pin for r in merged.requirements] == ["filelock==4.3.1", f"nvidia-cublas==13.4.1.3 ; {LINUX}",
                                                     "torch==2.15.0"]
    assert merged.requirements[-1].hashes == (H1, H3)  # the two resolutions' hashes of one version, joined
    assert merged.reasons[0].startswith("resolved for this darwin host (aarch64-apple-darwin) and for the Linux "
                                        "image the Dockerfile builds (aarch64-manylinux_2_28)")


def test_a_pin_the_two_closures_hold_at_other_versions_is_written_for_each() -> None:
    merged = _merge(_res(_pin("torch", "2.15.0", H1), _pin("numpy", "2.4.6", H2)),
                    _res(_pin("torch", "2.15.0", H1), _pin("numpy", "2.3.0", H3)))
    assert [r.pin for r in merged.requirements] == [f"numpy==2.4.6 ; {DARWIN}", f"numpy==2.3.0 ; {LINUX}",
                                                     "torch==2.15.0"]


@pytest.mark.parametrize("failed", ["host", "image"])
def test_a_side_without_hashes_leaves_both_without_them(failed: str) -> None:
    """The image must not install the host's hashed closure with --require-hashes, nor the host the image's."""
    ok = _res(_pin("torch", "2.15.0", H1), _pin("filelock", "4.3.1", H2))
    none = unresolved({"torch": "2.15.0"}, "resolver failed: offline")
    merged = _merge(none, ok) if failed == "host" else _merge(ok, none)
    assert merged.status == "none" and [r.pin for r in merged.requirements] == ["torch==2.15.0"]
    assert "resolver failed: offline" in merged.reasons[0] and "must both resolve" in merged.reasons[0]


def test_a_marked_pin_without_hashes_is_not_written() -> None:
    """install.sh's pip path installs the unhashed pins by exact line: they must be unmarked."""
    merged = _merge(_res(_pin("torch", "2.15.0"), _pin("filelock", "4.3.1", H2), status="partial"),
                    _res(_pin("torch", "2.15.0"), _pin("triton", "3.9.0"), status="partial"))
    assert merged.status == "none" and all(r.marker is None for r in merged.requirements)


def test_a_marker_survives_the_cache_and_a_foreign_one_is_refused() -> None:
    merged = _merge(_res(_pin("torch", "2.15.0", H1)), _res(_pin("torch", "2.15.0", H1), _pin("triton", "3.9.0", H2)))
    assert Resolution.from_dict(json.loads(json.dumps(merged.to_dict()))) == merged
    doc = merged.to_dict()
    doc["requirements"][1]["marker"] = 'sys_platform == "linux" --hash=sha256:x'
    with pytest.raises(InvalidInput, match="requirements"):
        Resolution.from_dict(doc, "cache.json")


# ---------------------------------------------------------------- the note (pure)


def test_a_macos_plans_image_is_linux_arm64_with_pypis_cuda_build_on_the_cpu() -> None:
    host = load_host(HOSTS / "macos-arm64-m2-32gb.json")
    p = plan(host, MATRIX, AUTOGLM)
    assert (p.device, p.packages["torch"]) == ("mps", "2.15.0")
    text = " ".join(platform_note(p, host, MATRIX, resolved_apart=True))
    release = next(r for r in MATRIX.torch if r.version == p.torch_version)
    assert release.pypi_default["linux-aarch64"] == "cu132"  # torch.toml: what PyPI serves linux/arm64
    assert "the image is Linux: linux/arm64" in text
    assert "On linux/arm64, torch==2.15.0 is PyPI's CUDA 13.2 build (cu132); it runs on the CPU" in text
    assert "Docker on macOS passes neither MPS nor a GPU through" in text
    assert "setup-venv.sh builds the environment for the macOS host itself, on MPS" in text
    assert "requirements.txt marks the pins only one of them installs" in text
    unresolved_text = " ".join(platform_note(p, host, MATRIX, resolved_apart=False))
    assert "their dependencies resolve for Linux when the image is built" in unresolved_text


def test_a_windows_gpu_plans_image_takes_the_same_cuda_build_for_linux() -> None:
    host = load_host(HOSTS / "windows-x86_64-rtx4070-driver566.json")
    p = plan(host, MATRIX, AUTOGLM)
    text = " ".join(platform_note(p, host, MATRIX, resolved_apart=True))
    assert f"On linux/amd64, torch=={p.packages['torch']} is the same {p.variant} build for Linux" in text
    assert "WSL 2 GPU support (docker run --gpus all)" in text and "setup-venv.ps1" in text


def test_a_linux_render_says_nothing_of_it() -> None:
    host = load_host(HOSTS / "linux-x86_64-cpu-only-32gb.json")
    assert platform_note(plan(host, MATRIX, AUTOGLM), host, MATRIX, resolved_apart=False) == ()
    assert docker_platform("arm64") == "linux/arm64" and docker_platform("x86_64") == "linux/amd64"


# ---------------------------------------------------------------- the render


def test_a_macos_render_resolves_its_image_for_linux_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    asked: list[requirements.ResolveRequest] = []

    def recorded(request: requirements.ResolveRequest, **_kw: object) -> Resolution:
        """The two closures uv gave for these pins (the Linux one adds PyPI's CUDA build's dependencies)."""
        asked.append(request)
        pins = [_pin(n, v, H1) for n, v in request.packages.items()]
        if request.platform.endswith("manylinux_2_28"):
            pins += [_pin("nvidia-cublas", "13.4.1.3", H2), _pin("triton", "3.9.0", H3)]
        return _res(*sorted(pins, key=lambda r: r.name))

    monkeypatch.setattr(requirements, "resolve", recorded)
    out = tmp_path / "out"
    render_command(RenderRequest(plan=PlanRequest(host=HOSTS / "macos-arm64-m2-32gb.json"), out=out),
                   environ={"XDG_CACHE_HOME": str(tmp_path)})
    mac, linux = asked
    # the Mac's closure for the macOS its torch's wheels need (uv assumes 13.0: torch 2.15.0 is macosx_14_0 only)
    assert (mac.platform, mac.macos) == ("aarch64-apple-darwin", "14.0")
    assert (linux.platform, linux.macos, linux.packages) == ("aarch64-manylinux_2_28", None, mac.packages)
    reqs = (out / "requirements.txt").read_text()
    assert f"nvidia-cublas==13.4.1.3 ; {LINUX} \\\n" in reqs and f"triton==3.9.0 ; {LINUX} \\\n" in reqs
    assert "\ntorch==2.15.0 \\\n" in reqs and "Hashes: complete" in reqs
    dockerfile = (out / "Dockerfile").read_text()
    assert "# This render is for a macOS host, and the image is Linux: linux/arm64" in dockerfile
    assert "PyPI's CUDA 13.2 build (cu132)" in dockerfile.replace("\n# ", " ")
    compose = (out / "compose.yaml").read_text()
    assert compose.startswith("# Rendered by provision") and "bf16, cpu (no GPU)." in compose.splitlines()[0]
    assert "the image is Linux: linux/arm64" in compose
    assert "runs on linux/arm64 nodes only" in (out / "k8s" / "deployment.yaml").read_text().replace("\n# ", " ")
    lock = json.loads((out / "provision.lock.json").read_text())
    assert lock["hashes"]["status"] == "complete" and lock["plan"]["device"] == "mps"
