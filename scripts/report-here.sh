#!/usr/bin/env bash
# Benchmarks every backend present on this machine and the PyTorch baseline on the same
# shapes, and renders the report: what produced the committed report under reports/.
# Usage: scripts/report-here.sh OUT_DIR [MODEL] [ADAPTER]
#   OUT_DIR  gets results/*.json and the report (report.md, report.html, charts)
#   MODEL    shapes: a model name (default tiny), or a Hugging Face folder (models/tiny-llama):
#            its shapes for the ops, its layer 0 for the whole-layer records, and the whole
#            model for the whole-model records (the gradient pass, GRADIENTS, and the
#            sequential loop per method, MODEL_*) on MODEL_TEXT (default FOLDER/calibration.txt)
#   ADAPTER  a wgpu adapter name substring (default: best)
# Environment: PYTHON, a Python with PyTorch (default python3; the baseline is skipped if it
# cannot import torch); BACKENDS (default "cpu wgpu cubecl-wgpu"); SAMPLES (16) and TOKENS
# (256), the calibration windows; ALSO, folders whose JSON files the report shows beside the
# runs: quality results (scripts/quality-table.sh's, which the summary opens with) and
# `prunebench compile` files (the CUDA resources section).
set -euo pipefail
out=${1:?usage: report-here.sh OUT_DIR [MODEL] [ADAPTER]}
model=${2:-tiny}
adapter=${3:-}
python=${PYTHON:-python3}
samples=${SAMPLES:-16}
tokens=${TOKENS:-256}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/results"
(cd "$repo" && cargo build --release)
pb="$repo/target/release/prunebench"
shape=(--model "$model")
torch_shape=(--model "$model")
if [ -d "$model" ]; then
    text=${MODEL_TEXT:-$model/calibration.txt}
    shape=(--checkpoint "$model" --model-text "$text")
    # The baseline runs the same shapes (synthetic weights) and the same whole-model windows.
    torch_shape=(--model "$(basename "$model")" --checkpoint "$model" --model-text "$text")
fi
for b in ${BACKENDS:-cpu wgpu cubecl-wgpu}; do
    args=(bench --backend "$b" "${shape[@]}" --samples "$samples" --tokens "$tokens"
        --out "$out/results/$b.json")
    [ -n "$adapter" ] && [ "$b" != cpu ] && args+=(--adapter "$adapter")
    "$pb" "${args[@]}" | tee "$out/results/$b.log"
done
if "$python" -c 'import torch' 2> /dev/null; then
    "$python" "$repo/baselines/pytorch_baseline.py" "${torch_shape[@]}" --tokens "$tokens" \
        --samples "$samples" --out "$out/results/pytorch.json"
else
    echo "no PyTorch for $python: baseline skipped"
fi
also=()
for d in ${ALSO:-}; do
    also+=("$d"/*.json)
done
"$pb" report "$out"/results/*.json "${also[@]}" --out "$out"
