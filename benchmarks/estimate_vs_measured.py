"""Compare provision.plan.memory's estimate with the H100 measurements in docs/gpu-results-run*.json.

    python benchmarks/estimate_vs_measured.py

Prints, per precision and context, the weights error, the prefill workspace (torch's peak minus
weights and KV cache) next to its estimate, and where the total estimate lands between the two
measured views of GPU use during generate: torch's allocated peak and nvidia-smi's per-process
figure (NVML delta). Targets (issue 4): weights within 3% of allocated after load; total >= the
GPU use measured during generate and at most 1.5 GB above it. "ok" checks total within
[nvidia-smi, nvidia-smi + 1 GB], and total <= allocated peak + 1.5 GB up to 4096 tokens (beyond,
the caching allocator alone holds 1.2-2.6 GB above the peak; see docs/gpu-results.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provision.data import load_catalog, resolve_model  # noqa: E402
from provision.plan.memory import estimate_memory  # noqa: E402

GB = 1e9


RUNS = sorted((ROOT / "docs").glob("gpu-results-run*.json"))


def rows(paths: list[Path] = RUNS) -> list[dict]:
    """Each measured row with the current estimate next to it."""
    spec = resolve_model("autoglm-phone-9b", load_catalog())
    out = []
    for row in (r for path in paths for r in json.loads(path.read_text())["rows"]):
        est = estimate_memory(spec, precision=row["precision"], context_tokens=row["context"],
                              image_tokens=row.get("image_tokens") or 0)
        out.append({**row, "est": est})
    return out


def main() -> int:
    print("| precision | context | weights err % | prefill meas. | prefill est. | alloc peak | NVML | est. total "
          "| total - NVML | total - peak | ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for r in rows():
        est = r["est"]
        err = 100 * (est.weights - r["weights_measured"]) / r["weights_measured"]
        prefill = r["peak_memory_bytes"] - r["weights_measured"] - est.kv_cache
        used = max(r["nvml_delta"], r["peak_memory_bytes"])
        ok = abs(err) <= 3 and used <= est.total <= used + 1.0 * GB
        ok = ok and (r["context"] > 4096 or est.total - r["peak_memory_bytes"] <= 1.5 * GB)
        failures += not ok
        image = " + image" if r.get("image_tokens") else ""
        print(f"| {r['precision']} | {r['context']}{image} | {err:+.2f} | {prefill / GB:.3f} | "
              f"{est.activations / GB:.3f} | {r['peak_memory_bytes'] / GB:.3f} | {r['nvml_delta'] / GB:.3f} | "
              f"{est.total / GB:.3f} | {(est.total - r['nvml_delta']) / GB:+.3f} | "
              f"{(est.total - r['peak_memory_bytes']) / GB:+.3f} | {'yes' if ok else 'NO'} |")
    return 1 if failures else 0

if __name__ == "__main__":
    raise SystemExit(main())
