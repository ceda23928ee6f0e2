#!/usr/bin/env bash
# Benchmarks every backend present on this machine and the PyTorch baseline on the same
# shapes, and renders the report: what produced the committed report under reports/.
# Usage: scripts/report-here.sh OUT_DIR [MODEL] [ADAPTER]
#   OUT_DIR  gets results/*.json and the report (report.md, report.html, charts)
#   MODEL    shapes (default tiny); ADAPTER a wgpu adapter name substring (default: best)
# Environment: PYTHON, a Python with PyTorch (default python3; the baseline is skipped if it
# cannot import torch); BACKENDS (default "cpu wgpu cubecl-wgpu").
set -euo pipefail
out=${1:?usage: report-here.sh OUT_DIR [MODEL] [ADAPTER]}
model=${2:-tiny}
adapter=${3:-}
python=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/results"
(cd "$repo" && cargo build --release)
pb="$repo/target/release/prunebench"
for b in ${BACKENDS:-cpu wgpu cubecl-wgpu}; do
    args=(bench --backend "$b" --model "$model" --out "$out/results/$b.json")
    [ -n "$adapter" ] && [ "$b" != cpu ] && args+=(--adapter "$adapter")
    "$pb" "${args[@]}" | tee "$out/results/$b.log"
done
if "$python" -c 'import torch' 2> /dev/null; then
    "$python" "$repo/baselines/pytorch_baseline.py" --model "$model" --tokens 256 --samples 16 \
        --out "$out/results/pytorch.json"
else
    echo "no PyTorch for $python: baseline skipped"
fi
"$pb" report "$out"/results/*.json --out "$out"
