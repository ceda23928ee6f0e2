#!/usr/bin/env bash
# The tiny LLaMA pruned by GBLM-Pruner with the PyTorch reference's gradients
# (baselines/compute_gradients.py), for the test that the suite's own gradients give the same
# pruned model (tests/tiny_llama.rs): the gradients file is made in a scratch folder and
# removed; what is kept is the small JSON of perplexities, with the commands that made it.
#
# Usage: scripts/gblm-reference.sh PRUNEBENCH PYTHON [OUT]
#   PRUNEBENCH  the release binary (target/release/prunebench)
#   PYTHON      a Python with torch, transformers, tokenizers, safetensors (baselines/)
#   OUT         the JSON (default models/tiny-llama/reference/gblm-16x256.json)
set -euo pipefail
bin=${1:?usage: $0 PRUNEBENCH PYTHON [OUT]}
py=${2:?usage: $0 PRUNEBENCH PYTHON [OUT]}
out=${3:-models/tiny-llama/reference/gblm-16x256.json}
cd "$(dirname "$0")/.."
model=models/tiny-llama
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
grads=$scratch/gradients.safetensors
common=(--nsamples 16 --seqlen 256 --seed 0)
"$py" baselines/compute_gradients.py --checkpoint "$model" --text "$model/calibration.txt" \
    "${common[@]}" --threads 1 --out "$grads" >&2
for sp in 0.5 2:4; do
    "$bin" prune-model --checkpoint "$model" --calibration-text "$model/calibration.txt" \
        "${common[@]}" --method gblm --sparsity "$sp" --gradients "$grads" \
        --eval-text "$model/evaluation.txt" --eval-windows 32 --backend cpu --json \
        >"$scratch/gblm-${sp/:/of}.json"
done
SCRATCH=$scratch PB_VERSION=$("$bin" --version | awk '{print $NF}') \
    TORCH=$("$py" -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")') \
    python3 - "$out" <<'EOF'
import json, os, sys

s = os.environ["SCRATCH"]
runs = {sp: json.load(open(os.path.join(s, f"gblm-{sp.replace(':', 'of')}.json"))) for sp in ("0.5", "2:4")}
first = runs["0.5"]
v = {
    "what": "models/tiny-llama pruned by gblm on the CPU reference with the gradients of "
            "baselines/compute_gradients.py (16 windows of 256 tokens, seed 0); perplexity on "
            "the first 32 windows of 256 tokens of evaluation.txt",
    "made_by": "scripts/gblm-reference.sh $PRUNEBENCH $PYTHON",
    "commands": [
        "$PYTHON baselines/compute_gradients.py --checkpoint models/tiny-llama --text "
        "models/tiny-llama/calibration.txt --nsamples 16 --seqlen 256 --seed 0 --threads 1 "
        "--out $GRADIENTS",
        "$PRUNEBENCH prune-model --checkpoint models/tiny-llama --calibration-text "
        "models/tiny-llama/calibration.txt --nsamples 16 --seqlen 256 --seed 0 --method gblm "
        "--sparsity {0.5,2:4} --gradients $GRADIENTS --eval-text models/tiny-llama/evaluation.txt "
        "--eval-windows 32 --backend cpu --json",
    ],
    "versions": {"prunebench": os.environ["PB_VERSION"], "gradients": os.environ["TORCH"]},
    "dense_ppl": first["perplexity"]["dense"]["ppl"],
    "gblm_ppl": {sp: r["perplexity"]["pruned"]["ppl"] for sp, r in runs.items()},
}
with open(sys.argv[1], "w") as f:
    json.dump(v, f, indent=2)
    f.write("\n")
print(f"wrote {sys.argv[1]}", file=sys.stderr)
EOF
