"""Before a long build or load, the smoke test checks RAM, GPU memory and disk, and refuses with the numbers.

The decision is pure (``check_fits``); the command tests give it a machine with little free RAM
(``available_ram``, the one probe of it) and a tripwire where the minutes-long build would start.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provision.cli import main
from provision.data import load_catalog
from provision.errors import SmokeError
from provision.smoke.fit import Need, Room, check_fits, need_for

AUTOGLM = load_catalog().get("autoglm-phone-9b")
GB = 10**9


def test_a_run_that_fits_passes_and_an_unknown_amount_is_not_checked() -> None:
    need = Need(what="x", ram=20 * GB, gpu=10 * GB, disk=5 * GB, disk_root=Path("/tmp"))
    check_fits(need, Room(ram=21 * GB, gpus={0: 6 * GB, 1: 5 * GB}, disk={Path("/tmp"): 6 * GB}))
    check_fits(need, Room(ram=None))


def test_every_shortfall_is_named_with_the_numbers() -> None:
    need = Need(what="the synthetic autoglm-phone-9b", ram=41_200_000_000, gpu=22 * GB, disk=22 * GB,
                disk_root=Path("/tmp"), why="an estimate")
    room = Room(ram=22_800_000_000, gpus={0: 8 * GB, 1: 8 * GB}, disk={Path("/tmp"): 10 * GB})
    with pytest.raises(SmokeError) as err:
        check_fits(need, room)
    assert str(err.value) == (
        "the synthetic autoglm-phone-9b needs 41.2 GB of RAM, 22.8 GB is available; and 22.0 GB of GPU memory, "
        "16.0 GB is free (GPU 0 8.0 GB, GPU 1 8.0 GB); and 22.0 GB of disk under /tmp, 10.0 GB is free (set TMPDIR "
        "to a larger disk) (an estimate); refusing before it starts. Free memory, choose a smaller --precision, or "
        "prove the stack only with --tiny")


def test_the_synthetic_need_is_the_planners_load_estimate_and_its_bf16_build() -> None:
    from provision.plan.memory import estimate_memory

    cpu = need_for(AUTOGLM.config, what="s", precision="fp32", device="cpu", context=None,
                   synthetic_parameters=AUTOGLM.parameters, disk_root=Path("/tmp"))
    fp32 = estimate_memory(dict(AUTOGLM.config), precision="fp32", context_tokens=1024, device="cpu").total
    assert (cpu.ram, cpu.gpu) == (fp32, 0) and cpu.ram > 4 * AUTOGLM.parameters
    assert cpu.disk == int(AUTOGLM.parameters * 2 * 1.05) + (1 << 30)
    gpu = need_for(AUTOGLM.config, what="s", precision="bf16", device="cuda", context=25480,
                   synthetic_parameters=AUTOGLM.parameters)
    bf16 = estimate_memory(dict(AUTOGLM.config), precision="bf16", context_tokens=25480, device="cuda").total
    assert (gpu.ram, gpu.gpu) == (0, bf16)  # built on the GPU when it fits there


@pytest.fixture
def small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 GB of RAM available, and a tripwire where building a synthetic model would start."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import provision.smoke.tiny

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("the synthetic model was built before RAM was checked")

    monkeypatch.setattr("provision.smoke.fit.available_ram", lambda: 8 * GB)
    monkeypatch.setattr(provision.smoke.tiny, "build_synthetic", tripwire)


def test_smoke_synthetic_refuses_before_building_when_ram_is_short(small_machine: None,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["smoke", "--synthetic", "--precision", "bf16", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    line = captured.err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("error: the synthetic autoglm-phone-9b needs ") and " GB of RAM, 8.0 GB is available" in line
    assert "the planner's estimate for bf16 on CPU at 1,024 tokens; building it takes 20.6 GB of bf16 weights" in line


def test_a_real_checkpoint_too_big_for_this_machine_is_refused_before_loading(
        small_machine: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "AutoGLM-Phone-9B"
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps(AUTOGLM.config))
    (weights / "model.safetensors").write_bytes(b"")  # present: what would be loaded does not matter, it is not
    assert main(["smoke", "--model-path", str(weights), "--precision", "fp32"]) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: autoglm-phone-9b from {weights} needs ") and "of RAM, 8.0 GB is available" in line
    assert "\n" not in line


def test_loading_shows_its_progress_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    # the text model: glm4v's processor needs torchvision, which a test environment may lack
    assert main(["smoke", "--tiny", "--model", "glm-4-9b-chat-hf", "--json", "--new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["source"] == "tiny"  # stdout is still the one document
    lines = [line for line in captured.err.splitlines() if line.startswith("loading ")]
    assert lines[0].endswith(" in fp32 onto cpu ...") and "in fp32 onto cpu: done in " in lines[-1]
