"""benchmarks/gpu_workload.py's pure parts: the case plan, the predictions, the held-out table (no GPU)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

try:
    from script_module import load_script  # tests/ is on sys.path (rootdir-less test modules)
except ImportError:  # pragma: no cover
    from tests.script_module import load_script

ROOT = Path(__file__).parent.parent
HELD_OUT = ["--precisions", "nf4,bf16,int8", "--text", "25480,49152", "--screen-size", "1440x3200",
            "--screen-cases", "1:1000,3:1000,1:22368", "--allow-held-out"]


def _bench():
    return load_script("benchmarks/gpu_workload.py", "gpu_workload_bench")


def test_screen_cases_name_their_text_when_it_is_not_the_default():
    bench = _bench()
    args = argparse.Namespace(
        screen_size="1440x3200", screen_cases="1:1000,3:1000,1:22368", screens="1,3", screen_text=1000, text="")
    assert [c["case"] for c in bench._case_plan(args)] == [
        "screens-1x1440x3200", "screens-3x1440x3200", "screens-1x1440x3200-text22368"]
    args.screen_cases = ""
    assert [(c["images"], c["text_tokens_target"]) for c in bench._case_plan(args)] == [(1, 1000), (3, 1000)]


def test_held_out_sizes_are_refused_without_the_flag(capsys):
    bench = _bench()
    assert bench.main(["--out", "/nonexistent", "--text", "25480"]) == 2
    assert "held-out" in capsys.readouterr().err


def test_the_committed_predictions_are_what_predict_writes(tmp_path):
    bench = _bench()
    out = tmp_path / "predicted.json"
    assert bench.main(["--predict", str(out), *HELD_OUT]) == 0
    committed = json.loads((ROOT / "docs" / "gpu-workload-heldout-predicted.json").read_text())
    assert json.loads(out.read_text())["predictions"] == committed["predictions"]
    assert {p["visual_tokens"] for p in committed["predictions"]} == {0, 3108, 9324}


def test_the_held_out_table_meets_the_claim_in_every_row(tmp_path):
    bench = _bench()
    table = bench.compare(ROOT / "docs" / "gpu-workload-heldout-predicted.json", ROOT / "docs" / "gpu-workload-heldout.json")
    rows = [line for line in table.splitlines()[2:] if line]
    assert len(rows) == 15 and all("| yes |" in row for row in rows)
    assert "[predicted" not in table  # every measured context is the predicted one
