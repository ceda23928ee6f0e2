#!/usr/bin/env python3
"""numpy (f64, whatever BLAS/LAPACK numpy links) on the dense linear algebra of prunebench's CPU
reference, on the same shapes, so `cargo bench -p prunebench-kernels --bench reference_speed`
can print both side by side.

Usage:
    python3 baselines/numpy_linalg_speed.py --cols 4096 --rows 4096 --samples 16 --tokens 256

Prints one line per op, tab-separated: `op<TAB>shape<TAB>seconds` (the best of --reps runs),
and lines starting with `#` for what BLAS numpy runs and with how many threads. The ops are
the reference's, written the way numpy users (and the SparseGPT code, in torch) write them:

    gemm         C = A·B, cols x cols x cols
    cholesky     L = cholesky(A), cols x cols
    tri_inverse  L⁻¹ through LAPACK dtrtri (only when scipy is installed: numpy has no
                 triangular inverse, and a general inverse would be the wrong comparison)
    hessian      H ← H·seen/total + (2/total)·XᵀX per sample (ALGORITHMS.md §3)
    hinv_factor  cholesky, inverse (cholesky_inverse: L⁻¹ then L⁻ᵀL⁻¹), cholesky (§6)
    recon_error  Σ (ΔW·H) ∘ ΔW and Σ (W·H) ∘ W, i.e. tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) (§9)

OpenBLAS reads OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from the environment; a wrong value for
the machine slows it, so check the `#` lines (threadpoolctl, when installed) before quoting.
"""

import argparse
import sys
import time

import numpy as np

PERCDAMP = 0.01


def best(reps, fn):
    times = []
    out = None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def hessian(xs):
    n = xs[0].shape[1]
    h = np.zeros((n, n))
    seen = 0
    for x in xs:
        total = seen + 1
        h *= seen / total
        h += (2.0 / total) * (x.T @ x)
        seen = total
    return h


def hinv_factor(h):
    a = h.copy()
    d = np.diag(a).copy()
    d[d == 0.0] = 1.0  # dead columns
    d += PERCDAMP * d.mean()
    np.fill_diagonal(a, d)
    l = np.linalg.cholesky(a)
    linv = np.linalg.inv(l)
    hinv = linv.T @ linv
    return np.linalg.cholesky(hinv).T


def recon_error(w, pruned, h):
    delta = w - pruned
    num = np.vdot(delta @ h, delta)
    den = np.vdot(w @ h, w)
    return num / den


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return ["# threadpoolctl not installed: BLAS and threads unknown"]
    lines = []
    for p in threadpool_info():
        lines.append(
            "# %s %s %s, %s threads, %s"
            % (
                p.get("user_api"),
                p.get("internal_api"),
                p.get("version"),
                p.get("num_threads"),
                p.get("architecture", "-"),
            )
        )
    return lines or ["# threadpoolctl found no BLAS"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    n, rows, reps = args.cols, args.rows, max(args.reps, 1)

    print("# numpy %s" % np.__version__)
    for line in blas_info():
        print(line)
    sys.stdout.flush()

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    t, _ = best(reps, lambda: a @ b)
    print("gemm\t%dx%dx%d\t%.6f" % (n, n, n, t), flush=True)

    spd = a @ a.T + n * np.eye(n)
    t, l = best(reps, lambda: np.linalg.cholesky(spd))
    print("cholesky\t%d\t%.6f" % (n, t), flush=True)
    try:
        from scipy.linalg.lapack import dtrtri

        t, _ = best(reps, lambda: dtrtri(l, lower=1))
        print("tri_inverse\t%d\t%.6f" % (n, t), flush=True)
    except ImportError:
        print("# scipy not installed: no triangular inverse to time", flush=True)
    del a, b, spd, l

    xs = [rng.standard_normal((args.tokens, n)) for _ in range(args.samples)]
    t, h = best(reps, lambda: hessian(xs))
    print("hessian\t%dx%d, %d cols\t%.6f" % (args.samples, args.tokens, n, t), flush=True)
    del xs

    t, _ = best(reps, lambda: hinv_factor(h))
    print("hinv_factor\t%d\t%.6f" % (n, t), flush=True)

    w = rng.standard_normal((rows, n))
    pruned = np.where(np.abs(w) < 0.6745, 0.0, w)  # about half the entries
    t, _ = best(reps, lambda: recon_error(w, pruned, h))
    print("recon_error\t%dx%d\t%.6f" % (rows, n, t), flush=True)


if __name__ == "__main__":
    main()
