#!/usr/bin/env bash
# prunebench's whole GPU check in one run, for a machine with an NVIDIA GPU and PyTorch but no
# Rust: environment, full-size verification of every backend, timings of every backend and of
# the PyTorch baseline, the report, and a short table last. Every step has its own time limit
# and a failing step does not stop the others.
#
# Usage: gpu-check.sh BUNDLE_DIR OUT_DIR [MODEL] [TOKENS]
#   BUNDLE_DIR  made by scripts/gpu-bundle.sh (binary, baseline, Vulkan loader packages)
#   OUT_DIR     where results, logs and the report go
#   MODEL       shapes to verify and time (default llama-7b)
#   TOKENS      calibration tokens per sample (default 2048, as the papers)
# Environment: STEP_LIMIT (seconds per step, default 150), SAMPLES (default 16), BIG_MODEL
# (a whole layer that must complete and verify, default llama2-70b; "none" to skip).
set -u
bundle=$(cd "${1:?usage: gpu-check.sh BUNDLE_DIR OUT_DIR [MODEL] [TOKENS]}" && pwd)
out=${2:?usage: gpu-check.sh BUNDLE_DIR OUT_DIR [MODEL] [TOKENS]}
model=${3:-llama-7b}
tokens=${4:-2048}
limit=${STEP_LIMIT:-150}
samples=${SAMPLES:-16}
big=${BIG_MODEL:-llama2-70b}
mkdir -p "$out"
pb="$bundle/prunebench"
summary="$out/summary.txt"
: > "$summary"

step() { # step NAME COMMAND...: runs with a time limit, logs to OUT/NAME.log, records status
    local name=$1
    shift
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    printf '%-28s rc=%-4s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$summary"
}

# The Vulkan loader, where the machine has none (wgpu needs it; CUDA does not).
if ! ldconfig -p | grep -q libvulkan.so.1 && ls "$bundle"/debs/*.deb > /dev/null 2>&1; then
    for f in "$bundle"/debs/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
# The NVIDIA Vulkan driver manifest, where the loader does not find it by itself.
if [ -z "${VK_DRIVER_FILES:-}" ]; then
    for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d; do
        if [ -f "$d/nvidia_icd.json" ]; then
            export VK_DRIVER_FILES="$d/nvidia_icd.json"
            break
        fi
    done
fi
for d in /usr/local/cuda/lib64 /usr/local/nvidia/lib64; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
# CubeCL compiles its CUDA kernels at run time with NVRTC and the CUDA headers: the bundle's
# (from PyPI wheels, scripts/cuda-toolkit.sh) where the machine has no toolkit of its own.
if [ -z "${CUDA_PATH:-}" ] && [ ! -f /usr/local/cuda/include/cuda_runtime.h ] \
    && [ -f "$bundle/cuda/site/nvidia/cu13/include/cuda_runtime.h" ]; then
    export CUDA_PATH="$bundle/cuda/site/nvidia/cu13"
    export LD_LIBRARY_PATH="$CUDA_PATH/lib:${LD_LIBRARY_PATH:-}"
fi

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' 2>&1
    echo "CUDA_PATH=${CUDA_PATH:-} (NVRTC and headers CubeCL compiles with)"
    "$pb" devices 2>&1
} > "$out/environment.txt"
cat "$out/environment.txt"

backends="cubecl-cuda wgpu cubecl-wgpu"
common=(--model "$model" --tokens "$tokens" --samples "$samples")
for b in $backends; do
    adapter=()
    [ "$b" != cubecl-cuda ] && adapter=(--adapter nvidia)
    step "verify-$b" "$pb" verify --backend "$b" "${adapter[@]}" "${common[@]}"
done
for b in $backends; do
    adapter=()
    [ "$b" != cubecl-cuda ] && adapter=(--adapter nvidia)
    step "bench-$b" "$pb" bench --backend "$b" "${adapter[@]}" "${common[@]}" --out "$out/$b.json"
done
step pytorch python3 "$bundle/pytorch_baseline.py" --model "$model" --tokens "$tokens" \
    --samples "$samples" --out "$out/pytorch.json"
if [ "$big" != none ]; then
    step "verify-layer-$big" "$pb" verify --backend cubecl-cuda --model "$big" --tokens 512 \
        --samples 4 --skip-ops --methods sparsegpt,wanda --sparsities 0.5
fi
step report "$pb" report "$out"/*.json --out "$out/report"

echo
echo "== summary (rc 124 = step limit of ${limit}s reached)"
cat "$summary"
for f in "$out"/verify-*.log; do
    echo "== $(basename "$f"): $(grep -E 'ops .* passed' "$f" | tail -1)"
done
grep -hE '^(PRUNE_WANDA|HESSIAN|GRAD_FUSED|OBS_|ACT_STAT|LAYER)' "$out"/bench-*.log 2>/dev/null | head -40
