#!/usr/bin/env bash
# Builds what a bare GPU machine needs to run prunebench's GPU check, into one folder:
#   prunebench            release binary with every backend (CUDA loaded at run time)
#   pytorch_baseline.py   the PyTorch baseline
#   gpu-check.sh          the check itself
#   debs/                 the Vulkan loader packages (amd64), for machines without one
#   cuda/                 NVRTC and the CUDA headers (scripts/cuda-toolkit.sh), for machines
#                         without a toolkit at a standard path (CubeCL compiles at run time)
# Usage: scripts/gpu-bundle.sh OUT_DIR
set -euo pipefail
out=${1:?usage: gpu-bundle.sh OUT_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/debs"
(cd "$repo" && cargo build --release --features cuda)
cp "$repo/target/release/prunebench" "$repo/baselines/pytorch_baseline.py" "$repo/scripts/gpu-check.sh" "$out/"
lists=$(mktemp -d)
mkdir -p "$lists/partial"
o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists"
# shellcheck disable=SC2086
apt-get $o update -qq
# shellcheck disable=SC2086
(cd "$out/debs" && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
rm -rf "$lists"
"$repo/scripts/cuda-toolkit.sh" "$out/cuda" > /dev/null
du -sh "$out"
