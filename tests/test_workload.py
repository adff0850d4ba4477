"""What the transformers path budgets per request: visual tokens, the catalog's workload, the overrides."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provision.cli import main
from provision.data.catalog import load_catalog
from provision.errors import InvalidInput
from provision.plan.memory import estimate_memory
from provision.plan.workload import PHONE_SCREEN, Workload, visual_tokens, workload_for

CATALOG = load_catalog()
AUTOGLM = CATALOG.get("autoglm-phone-9b")
TEXT_MODEL = CATALOG.get("glm-4-9b-chat-hf")
HOSTS = Path(__file__).parent / "fixtures" / "hosts"
A100 = HOSTS / "linux-x86_64-a100-80gb-driver550.json"


@pytest.mark.parametrize(("size", "cap", "tokens"), [
    ((1080, 2400), 5_000_000, 3108),  # measured: a 168x74 patch grid (shared/notes/serving.md)
    ((1440, 3200), 5_000_000, 3108),  # the same grid: the cap counts the temporal factor 2
    ((2400, 1080), 5_000_000, 3108),  # landscape
    ((1080, 2400), None, 3354),  # the processor's own cap (11.76 MP) leaves it at 172x78 patches
    ((720, 1600), 5_000_000, 1482),  # under the cap: each side rounded to 28 pixels (728x1596)
    ((10, 10), 5_000_000, 9),  # scaled up to 28x28, then past the floor of 12,544 pixels: 84x84, 6x6 patches
])
def test_visual_tokens_follow_the_processors_resize(size, cap, tokens):
    assert visual_tokens(AUTOGLM, width=size[0], height=size[1], max_pixels=cap) == tokens


@given(st.integers(300, 8000), st.floats(0.2, 5.0), st.integers(1_000_000, 20_000_000))
def test_visual_tokens_never_exceed_the_cap(width, aspect, cap):
    """Any screen-like image (aspect up to 1:5) stays under cap / (temporal 2 x 14^2 x merge 2^2)."""
    height = max(300, int(width * aspect))
    tokens = visual_tokens(AUTOGLM, width=width, height=height, max_pixels=cap)
    assert 1 <= tokens <= cap // (2 * 14 * 14 * 4)


def test_a_text_model_has_no_visual_tokens():
    assert visual_tokens(TEXT_MODEL, width=1080, height=2400) == 0


def test_the_catalog_workload_is_one_5_mp_screenshot():
    assert (AUTOGLM.serve.images_per_request, AUTOGLM.serve.max_pixels) == (1, 5_000_000)
    wl = workload_for(AUTOGLM, context_tokens=25_480)
    assert wl == Workload(context_tokens=25_480, images=1, max_pixels=5_000_000, tokens_per_image=3108)
    assert wl.image_tokens == 3108
    assert wl.describe() == "25,480 tokens incl. one 5.0 MP screenshot (3,108 visual tokens)"
    assert PHONE_SCREEN == (1080, 2400)


def test_overrides_and_their_description():
    three = workload_for(AUTOGLM, context_tokens=25_480, images=3, max_pixels=2_000_000)
    per = visual_tokens(AUTOGLM, width=1080, height=2400, max_pixels=2_000_000)
    assert (three.images, three.image_tokens) == (3, 3 * per) and per < 3108
    assert three.describe() == f"25,480 tokens incl. three 2.0 MP screenshots ({per:,} visual tokens each)"
    assert workload_for(AUTOGLM, context_tokens=8192, images=0).describe() == "8,192 tokens of text"
    local = replace(AUTOGLM, serve=None)  # a local folder: no serving facts, text unless --images says so
    assert workload_for(local, context_tokens=8192).images == 0
    assert workload_for(local, context_tokens=8192, images=1).max_pixels is None  # the processor's own cap
    assert workload_for(local, context_tokens=8192, images=1).tokens_per_image == 3354


def test_a_short_context_budgets_the_screenshots_that_fit():
    assert workload_for(AUTOGLM, context_tokens=3108).images == 0  # no room for a text token beside it
    assert workload_for(AUTOGLM, context_tokens=3109).images == 1
    with pytest.raises(InvalidInput) as info:
        workload_for(AUTOGLM, context_tokens=4096, images=2)
    assert (info.value.source, info.value.field) == ("--images", "images")


def test_bad_workloads_are_bad_input():
    with pytest.raises(InvalidInput, match="text-only"):
        workload_for(TEXT_MODEL, context_tokens=4096, images=1)
    assert workload_for(TEXT_MODEL, context_tokens=4096).images == 0
    with pytest.raises(InvalidInput, match="floor"):
        workload_for(AUTOGLM, context_tokens=4096, max_pixels=1000)
    with pytest.raises(InvalidInput, match="negative"):
        workload_for(AUTOGLM, context_tokens=4096, images=-1)


def _plan(capsys, *args: str) -> dict:
    """The transformers path's plan: its memory budget is the one the workload sizes (an engine profiles its own)."""
    assert main(["plan", "--host", str(A100), "--engine", "transformers", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_plans_budget_and_name_the_catalog_workload(capsys):
    doc = _plan(capsys, "--context", "25480")
    [reason] = [r for r in doc["reasons"] if r["decision"] == "workload"]
    assert reason["choice"] == "25,480 tokens incl. one 5.0 MP screenshot (3,108 visual tokens)"
    assert "catalog" in reason["why"]
    est = estimate_memory(AUTOGLM.config, precision="bf16", context_tokens=25_480, image_tokens=3108)
    assert doc["memory"]["required_bytes"] == est.total
    text = _plan(capsys, "--context", "25480", "--images", "0")
    assert text["memory"]["required_bytes"] == estimate_memory(AUTOGLM.config, precision="bf16",
                                                               context_tokens=25_480).total < est.total
    assert any(r["choice"] == "25,480 tokens of text" for r in text["reasons"])


def test_images_and_max_pixels_override_the_catalog(capsys):
    small = _plan(capsys, "--context", "25480", "--images", "3", "--max-pixels", "1000000")
    per = visual_tokens(AUTOGLM, width=1080, height=2400, max_pixels=1_000_000)
    est = estimate_memory(AUTOGLM.config, precision="bf16", context_tokens=25_480, image_tokens=3 * per)
    assert small["memory"]["required_bytes"] == est.total
    [reason] = [r for r in small["reasons"] if r["decision"] == "workload"]
    assert reason["choice"].startswith("25,480 tokens incl. three 1.0 MP screenshots")
    assert reason["why"].startswith("--images and --max-pixels as given")


def test_the_human_plan_says_what_memory_was_budgeted_for(capsys):
    assert main(["plan", "--host", str(A100), "--engine", "transformers"]) == 0  # the default context: 25,480
    out = " ".join(capsys.readouterr().out.split())
    assert "for 25,480 tokens incl. one 5.0 MP screenshot (3,108 visual tokens)" in out


@pytest.mark.parametrize(("args", "where"), [
    (["--context", "4096", "--images", "2"], "error: --images: images: 2 screenshot(s)"),  # 6,216 visual tokens
    (["--images", "9"], "error: --images: images: 9 screenshot(s)"),  # 27,972 in the default 25,480
    (["--images", "-1"], "error: command line: options: "),
    (["--max-pixels", "100"], "error: command line: options: "),
    (["--model", "glm-4-9b-chat-hf", "--images", "1"], "error: --images: images: GLM-4-9B"),
])
def test_bad_workload_options_are_one_line_and_exit_2(capsys, args, where):
    assert main(["plan", "--host", str(A100), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(where) and err.count("\n") == 1, err


def test_the_lock_records_the_workload_options():
    from provision.plan.usecase import PlanRequest

    assert PlanRequest(images=2, max_pixels=2_000_000).flags() == {
        "device": "auto", "engine": "auto", "images": 2, "max_pixels": 2_000_000}
    assert "images" not in PlanRequest().flags()
