#!/usr/bin/env bash
# NVRTC, the CUDA headers and ptxas from pinned PyPI wheels, installed into one folder that
# serves as CUDA_PATH. No driver and no GPU are needed: `prunebench compile` generates every
# CubeCL kernel's CUDA source and compiles it with this NVRTC, and a GPU machine without a
# toolkit at a standard path (/usr/local/cuda, /opt/cuda) runs CubeCL's CUDA backend with it.
#
# Usage: cuda-toolkit.sh DIR
#   DIR  the install folder (created; reused when it already holds these exact versions)
# Prints, on stdout, the two lines to evaluate before running prunebench:
#   export CUDA_PATH=DIR/site/nvidia/cu13
#   export LD_LIBRARY_PATH=DIR/site/nvidia/cu13/lib:...
# e.g. eval "$(scripts/cuda-toolkit.sh ~/.cache/prunebench/cuda)". `prunebench compile
# --cuda-path DIR/site/nvidia/cu13` also works without LD_LIBRARY_PATH.
#
# CUDA 13.5's NVRTC emits PTX ISA 9.5: a GPU running what it compiles needs a driver of the
# CUDA 13.x branch (580 or newer); compile-only use needs none. For older drivers the CUDA 12.9
# wheels (nvidia-cuda-nvrtc-cu12 and the rest, PTX 8.8, driver 575+) install into separate
# trees that would have to be merged by hand, so they are not offered here.
# About 130 MB of wheels, 340 MB installed.
set -euo pipefail
dir=${1:?usage: cuda-toolkit.sh DIR}

# Pinned: the PTX version, and so the driver a GPU needs, follows the NVRTC version.
# crt supplies include/crt/ (mma.h fails without it); cccl the headers under include/cccl;
# nvcc ptxas and the NVVM it needs; runtime cuda_runtime.h and friends.
wheels=(
    nvidia-cuda-nvrtc==13.5.37
    nvidia-cuda-runtime==13.5.37
    nvidia-cuda-crt==13.5.37
    nvidia-cuda-nvcc==13.5.37
    nvidia-cuda-cccl==13.3.5.0.6
)
stamp_text=$(printf '%s\n' "${wheels[@]}")

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
site="$dir/site"
cuda="$site/nvidia/cu13"
stamp="$dir/installed.txt"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_text" ] && [ -d "$cuda/include" ]; then
    echo "cuda-toolkit: reusing $cuda" >&2
else
    python=${PYTHON:-python3}
    if ! "$python" -m pip --version > /dev/null 2>&1; then
        echo "error: cuda-toolkit.sh needs pip ($python -m pip); set PYTHON to a Python with pip" >&2
        exit 2
    fi
    rm -rf "$site" "$stamp"
    echo "cuda-toolkit: installing ${wheels[*]} into $site" >&2
    # --no-deps: exactly the pinned wheels, nothing resolved at install time.
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$site" "${wheels[@]}" >&2
    printf '%s\n' "$stamp_text" > "$stamp"
fi

for need in include/cuda_runtime.h include/crt/mma.h include/cuda_fp16.h; do
    if [ ! -f "$cuda/$need" ]; then
        echo "error: $cuda/$need is missing after the install" >&2
        exit 1
    fi
done
if ! ls "$cuda"/lib/libnvrtc.so.* > /dev/null 2>&1; then
    echo "error: no libnvrtc.so.* under $cuda/lib after the install" >&2
    exit 1
fi
# The runtime wheel ships only versioned names; some loaders look for the plain one.
for lib in "$cuda"/lib/libnvrtc.so.[0-9]*; do
    plain="$cuda/lib/libnvrtc.so"
    [ -e "$plain" ] || ln -s "$(basename "$lib")" "$plain"
    break
done

echo "export CUDA_PATH=$cuda"
echo "export LD_LIBRARY_PATH=$cuda/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
