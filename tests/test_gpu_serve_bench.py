"""benchmarks/gpu_serve.py's pure parts: the stand-in's head rewrite, the decode bytes, the roofline, the probe cut."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

try:
    from script_module import load_script  # tests/ is on sys.path (rootdir-less test modules)
except ImportError:  # pragma: no cover
    from tests.script_module import load_script

ROOT = Path(__file__).resolve().parent.parent


gs = load_script("benchmarks/gpu_serve.py", "gpu_serve_bench")

CONFIG = {"tie_word_embeddings": False,
          "text_config": {"num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32}}


def _checkpoint(folder: Path) -> dict[str, Any]:
    torch = pytest.importorskip("torch")
    save_file = pytest.importorskip("safetensors.torch").save_file
    gen = torch.Generator().manual_seed(0)
    first = {"model.visual.patch.weight": torch.randn(8, 8, generator=gen).to(torch.bfloat16),
             "model.language_model.embed_tokens.weight": torch.randn(300, 32, generator=gen).to(torch.bfloat16)}
    second = {"model.language_model.layers.0.mlp.weight": torch.randn(64, 32, generator=gen).to(torch.bfloat16),
              "lm_head.weight": torch.randn(300, 32, generator=gen).to(torch.bfloat16)}
    save_file(first, str(folder / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(second, str(folder / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    return {**first, **second}


def test_byte_rows_only_zeroes_the_head_past_the_bytes_and_nothing_else(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    load_file = pytest.importorskip("safetensors.torch").load_file
    before = _checkpoint(tmp_path)
    info = gs.byte_rows_only(tmp_path, 256)
    assert info == {"tensor": "lm_head.weight", "shard": "model-00002-of-00002.safetensors", "rows": 300,
                    "rows_kept": 256}
    after = {**load_file(str(tmp_path / "model-00001-of-00002.safetensors")),
             **load_file(str(tmp_path / "model-00002-of-00002.safetensors"))}
    head = after["lm_head.weight"]
    assert torch.equal(head[:256], before["lm_head.weight"][:256])
    assert bool((head[256:] == 0).all()) and bool((before["lm_head.weight"][256:] != 0).any())
    assert all(torch.equal(after[k], v) for k, v in before.items() if k != "lm_head.weight")
    # greedy decoding now always lands on a byte id
    logits = torch.randn(50, 32).to(torch.bfloat16) @ head.T
    assert int(logits.argmax(-1).max()) < 256


def test_byte_rows_only_without_a_head_stops(tmp_path: Path) -> None:
    save_file = pytest.importorskip("safetensors.torch").save_file
    torch = pytest.importorskip("torch")
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(SystemExit, match=r"no lm_head\.weight"):
        gs.byte_rows_only(tmp_path, 256)


def test_decode_bytes_reads_the_headers_and_leaves_out_vision_and_input_embeddings(tmp_path: Path) -> None:
    _checkpoint(tmp_path)
    tensors = gs.safetensors_tensors(tmp_path)
    assert tensors["lm_head.weight"] == 300 * 32 * 2 and len(tensors) == 4
    moved = gs.decode_bytes(tensors, CONFIG)
    assert moved == {"weights": (64 * 32 + 300 * 32) * 2, "kv_per_token": 2 * 3 * 2 * 8 * 2,
                     "all_tensors": (8 * 8 + 300 * 32 + 64 * 32 + 300 * 32) * 2}
    tied = gs.decode_bytes(tensors, {**CONFIG, "tie_word_embeddings": True})
    assert tied["weights"] == moved["weights"] + 300 * 32 * 2


def test_roofline_is_bandwidth_over_bytes_at_the_mean_context() -> None:
    moved = {"weights": 1000, "kv_per_token": 10, "all_tensors": 1200}
    report = {"tokens_per_second": 2.0, "prompt_tokens": 100, "tokens_generated": 50}
    out = gs.roofline(report, moved, {"copy": 11_250.0})
    assert out == {"bytes_per_token": 2250, "mean_context_tokens": 125.0, "tokens_per_second": 2.0,
                   "roofline_tokens_per_second_copy": 5.0, "fraction_of_roofline_copy": 0.4}
    assert gs.roofline({**report, "tokens_per_second": 0.0}, moved, {"copy": 1.0}) is None


@pytest.mark.parametrize(("wanted", "per_request", "left", "sent"), [
    (16, 5.0, 200.0, 16),  # fits whole
    (16, 5.0, 60.0, 11),  # 12 requests' time, one of them the proof request
    (16, 5.0, 4.0, 0),
    (16, 5.0, -1.0, 0),
    (16, 0.0, 10.0, 16),  # nothing measured yet: as asked
])
def test_fit_requests(wanted: int, per_request: float, left: float, sent: int) -> None:
    assert gs.fit_requests(wanted, 4, per_request, left) == sent


def test_parse_probes_and_report_tables() -> None:
    assert gs.parse_probes("1:8,4:16,8") == [(1, 8), (4, 16), (8, 32)]
    doc = json.loads((ROOT / "docs" / "gpu-serve.json").read_text())
    tables = gs.report_tables(doc)
    assert "| eager | single | 256 | 3756 | 0.407 | 10.297 |" in tables
    assert "| eager | 8 | 16 | 128 | 0 | 57.054 |" in tables
