//! Causal GQA attention's backward (ALGORITHMS.md §15) on each GPU backend against the f64
//! reference, written once and instantiated per backend: GQA groups (whole and split over
//! parts), one-token windows, windows no multiple of the 32- or 16-row blocks, both block
//! sizes, head sizes from 16 to 256, heavy-tailed data, outputs poisoned with NaN, results
//! bit-identical run to run (no atomics), and the binding limits: slabs of whole windows on
//! wgpu, refusals where an operand cannot be bound.

#![cfg(any(feature = "wgpu", feature = "cubecl"))]

#[macro_use]
mod common;

use common::backends::TestBackend;
use common::{assert_close, bits, down, up};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::ops::tolerance;
use prunebench_kernels::plan::{
    attention_backward_block, attention_group_parts, groups::DEFAULT_FILL,
};
use prunebench_kernels::rng::heavy_tailed;
use prunebench_kernels::{Backend, KernelError, Matrix};

/// (windows, seq, heads, kv_heads, head_dim, scale of Q and K)
type Case = (usize, usize, usize, usize, usize, f32);

/// Bindings capped at 64 rows of 96 columns: one 37-row window of Q (6 heads of 16) fits,
/// two do not.
const NARROW_SPLIT_BYTES: u64 = 64 * 96 * 4;

fn scaled(mut m: Matrix, s: f32) -> Matrix {
    for v in &mut m.data {
        *v *= s;
    }
    m
}

/// Q, K, V, dO and the reference's O and L of a case (f32, as uploaded).
fn inputs(&(windows, seq, heads, kv, e, scale): &Case) -> [Matrix; 6] {
    let cpu = CpuBackend::new();
    let n = windows * seq;
    let q = scaled(heavy_tailed(n, heads * e, 6), scale);
    let k = scaled(heavy_tailed(n, kv * e, 7), scale);
    let v = heavy_tailed(n, kv * e, 8);
    let d_o = heavy_tailed(n, heads * e, 9);
    let (o, lse) = cpu
        .attention_with_lse(&up(&cpu, &q), &up(&cpu, &k), &up(&cpu, &v), heads, kv, seq)
        .unwrap();
    let (o, lse) = (down(&cpu, &o), down(&cpu, &lse));
    [q, k, v, o, lse, d_o]
}

/// (dQ, dK, dV) of `b` on the case's inputs, downloaded.
fn grads<B: Backend>(b: &B, case: &Case, m: &[Matrix; 6]) -> Result<[Matrix; 3], KernelError> {
    let &(_, seq, heads, kv, _, _) = case;
    let t: Vec<B::Tensor> = m.iter().map(|x| up(b, x)).collect();
    let (dq, dk, dv) =
        b.attention_backward(&t[0], &t[1], &t[2], &t[3], &t[4], &t[5], heads, kv, seq)?;
    Ok([down(b, &dq), down(b, &dk), down(b, &dv)])
}

fn check<B: Backend>(b: &B, cases: &[Case]) {
    let cpu = CpuBackend::new();
    for case in cases {
        let m = inputs(case);
        let want = grads(&cpu, case, &m).unwrap();
        let got = grads(b, case, &m).unwrap();
        for ((name, w), g) in ["dQ", "dK", "dV"].iter().zip(&want).zip(&got) {
            assert_close(
                &format!("attention backward {name}, case {case:?}"),
                w,
                g,
                tolerance::BACKWARD_GEMM,
            );
        }
        // One owner per gradient and fixed summation orders: the same bits every run.
        let again = grads(b, case, &m).unwrap();
        for (g, a) in got.iter().zip(&again) {
            assert_eq!(
                bits(g),
                bits(a),
                "attention backward not deterministic: {case:?}"
            );
        }
    }
}

fn attention_backward<B: TestBackend>() {
    check(
        &B::fresh(),
        &[
            // Three KV groups (two and three query heads each) over windows longer than a
            // tile and no multiple of it, at full scale (near one-hot rows) and scaled down.
            (3, 70, 6, 3, 16, 1.0),
            (2, 37, 9, 3, 32, 0.125),
            // Windows of one token: P = 1, so dQ and dK vanish and dV = dO summed per group.
            (5, 1, 6, 3, 16, 1.0),
            // LLaMA's head size, a head size no power of two, and the largest.
            (2, 40, 4, 2, 128, 1.0),
            (1, 20, 2, 2, 160, 0.125),
            (1, 9, 2, 1, 256, 0.0625),
        ],
    );
}

/// Blocks of both sizes `plan::attention_backward_block` picks (32 query rows and keys where
/// the dK/dV launch fills with them, else 16: each invocation's tiles 2 x 2 or one value),
/// over windows no multiple of either; the plan is asserted at the default fill so each case
/// keeps its size.
fn attention_backward_over_block_sizes<B: TestBackend>() {
    let cases: [Case; 2] = [(4, 70, 48, 24, 16, 0.125), (2, 37, 6, 3, 16, 1.0)];
    let blocks: Vec<usize> = cases
        .iter()
        .map(|&(w, seq, _, kv, ..)| attention_backward_block(w, seq, kv, DEFAULT_FILL))
        .collect();
    assert_eq!(blocks, [32, 16]);
    check(&B::fresh(), &cases);
}

/// GQA groups split over parts of the dK/dV launch where it would not fill
/// (`plan::attention_group_parts`): 30 KV heads of 3 query heads in parts of 2 and 1, and one
/// KV head of 8 in 8 parts of one; each part's sums in a partial, added in part order. The
/// plans are asserted so the cases stay split.
fn attention_backward_over_group_parts<B: TestBackend>() {
    let cases: [Case; 2] = [(1, 70, 90, 30, 16, 0.125), (2, 37, 8, 1, 32, 1.0)];
    let parts: Vec<(usize, usize)> = cases
        .iter()
        .map(|&(w, seq, heads, kv, ..)| {
            let blk = attention_backward_block(w, seq, kv, DEFAULT_FILL);
            attention_group_parts(w * seq.div_ceil(blk) * kv, heads / kv, DEFAULT_FILL)
        })
        .collect();
    assert_eq!(parts, [(2, 2), (8, 1)]);
    check(&B::fresh(), &cases);
}

fn attention_backward_in_slabs<B: TestBackend>() {
    // Three windows of 37 whose Q (96 columns) fit a binding one at a time: on wgpu a slab
    // each; CubeCL's 64-row slabs cut windows, which then run one at a time through copies.
    let b = B::split(NARROW_SPLIT_BYTES);
    assert!(b.is_split(111, 96));
    check(&b, &[(3, 37, 6, 3, 16, 0.125)]);
    b.assert_split_seen();
}

#[cfg(feature = "wgpu")]
fn attention_backward_refuses_a_window_past_a_binding<B: TestBackend>() {
    // A window of 64 rows of Q of 64 columns (16 KiB) does not fit an 8 KiB binding.
    let b = B::split(8 << 10);
    let z = |r, c| b.zeros(r, c).unwrap();
    let (q, l) = (z(64, 64), z(64, 4));
    match b.attention_backward(&q, &q, &q, &q, &l, &q, 4, 4, 64) {
        Err(KernelError::Unsupported(m)) => assert!(m.contains("window of 64 rows of Q"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[cfg(feature = "wgpu")]
mod wgpu {
    instantiate!(
        prunebench_kernels::wgpu::WgpuBackend,
        [],
        attention_backward,
        attention_backward_over_block_sizes,
        attention_backward_over_group_parts,
        attention_backward_in_slabs,
        attention_backward_refuses_a_window_past_a_binding,
    );
}

#[cfg(feature = "cubecl")]
mod cubecl_wgpu {
    instantiate!(
        prunebench_kernels::cube::CubeWgpuBackend,
        [],
        attention_backward,
        attention_backward_over_block_sizes,
        attention_backward_over_group_parts,
        attention_backward_in_slabs,
    );
}
