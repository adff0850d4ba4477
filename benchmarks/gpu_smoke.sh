#!/usr/bin/env bash
# The GPU proof in one go, for a lent machine (see docs/gpu-results.md):
#   carried wheels (.whl/, e.g. bitsandbytes) -> host profile from real NVML -> `pytest -m gpu`
#   -> benchmarks/gpu_smoke.py (synthetic full-size model, every precision).
# Everything lands in $OUT (default ./gpu-smoke-out).
set -uo pipefail
OUT=${OUT:-gpu-smoke-out}
mkdir -p "$OUT"
# shellcheck source=benchmarks/carried-wheels.sh
source "$(dirname "$0")/carried-wheels.sh"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python3 -c 'import sys, torch, transformers, accelerate, bitsandbytes; print(sys.version.split()[0], torch.__version__, torch.version.cuda, transformers.__version__, accelerate.__version__, bitsandbytes.__version__, torch.cuda.get_device_name(0))'
python3 -m provision detect --json >"$OUT/h100-detected.json" 2>"$OUT/detect.err"; echo "detect rc=$?"
timeout 180 python3 -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors tests >"$OUT/pytest-gpu.log" 2>&1
echo "pytest -m gpu rc=$?"; tail -15 "$OUT/pytest-gpu.log"
python3 benchmarks/gpu_smoke.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log"
