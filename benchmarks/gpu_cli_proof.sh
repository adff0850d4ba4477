#!/usr/bin/env bash
# The user-facing commands on a lent GPU machine, as a user would type them:
#   provision detect / plan / doctor, then `provision smoke --synthetic` in every precision
#   (each builds the full-size architecture with random weights, loads it through
#   from_pretrained, generates, and deletes the temporary checkpoint).
# Carried wheels (.whl/: bitsandbytes) are installed first. Results land in $OUT.
set -uo pipefail
OUT=${OUT:-gpu-cli-out}
mkdir -p "$OUT"
# shellcheck source=benchmarks/carried-wheels.sh
source "$(dirname "$0")/carried-wheels.sh"
python3 -m provision detect --json >"$OUT/detect.json"; echo "detect rc=$?"
python3 -m provision plan --json >"$OUT/plan.json"; echo "plan rc=$?"
python3 -m provision doctor --json >"$OUT/doctor.json"; echo "doctor rc=$?"
for precision in ${PRECISIONS:-bf16 fp16 nf4 int8}; do
  start=$(date +%s)
  python3 -m provision smoke --synthetic --precision "$precision" --json -o "$OUT/smoke-$precision.json" \
    >/dev/null 2>"$OUT/smoke-$precision.err"
  echo "smoke --synthetic --precision $precision rc=$? in $(( $(date +%s) - start )) s"
  tail -3 "$OUT/smoke-$precision.err"
done
left=$(find /tmp -maxdepth 1 \( -iname '*provision*' -o -iname '*synthetic*' \) -print)
echo "${left:-no synthetic checkpoints left in /tmp}"
df -h /tmp | tail -1
