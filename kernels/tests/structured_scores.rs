//! The structured-pruning ops' scores (ALGORITHMS.md §11) on each GPU backend against the
//! f64 reference, written once and instantiated per backend by `score_tests!`: the mean
//! gradient sum, the explicit inverse Hessian, the OBS saliency and the Taylor saliencies, on
//! odd shapes (one row, column counts that are no multiple of a workgroup or cube),
//! heavy-tailed data, an inverse Hessian from a real Hessian of random tokens with dead
//! inputs, elementwise groups, KV-group-like groups, narrow groups (factored a workgroup each)
//! and wide ones (the blocked factorisation), tensors split across bindings and outputs
//! poisoned with NaN. The update, compaction and refusals are in `structured_update.rs`.

#![cfg(any(feature = "wgpu", feature = "cubecl"))]

#[macro_use]
mod common;

use common::backends::TestBackend;
use common::structured::{hessian_of, saliency, split, wide_split, Seeds, WINDOW_BYTES};
use common::{down, max_rel, nmse, up};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::ops::{
    tolerance, SegmentAxis, TaylorInputs, TaylorKind, GBLM_GRAD_SCALE, PERCDAMP,
};
use prunebench_kernels::rng::{heavy_tailed, heavy_tailed_positive};
use prunebench_kernels::{Backend, Matrix};

// ---- the mean-gradient sum ----

/// (rows, cols, tokens), two samples each.
fn check_grad_sum<B: Backend>(b: &B, shapes: &[(usize, usize, usize)]) {
    let cpu = CpuBackend::new();
    for &(rows, cols, tokens) in shapes {
        let acc = heavy_tailed(rows, cols, 1);
        let samples: Vec<(Matrix, Matrix)> = (0..2)
            .map(|s| {
                (
                    heavy_tailed(tokens, rows, 10 + s),
                    heavy_tailed(tokens, cols, 20 + s),
                )
            })
            .collect();
        let want = grad_sum(&cpu, &acc, &samples);
        let got = grad_sum(b, &acc, &samples);
        let e = nmse(&want, &got);
        assert!(
            e <= tolerance::REDUCTION,
            "gradient sum {rows}x{cols}, {tokens} tokens: nmse {e:e}"
        );
    }
}

fn grad_sum<B: Backend>(b: &B, acc: &Matrix, samples: &[(Matrix, Matrix)]) -> Matrix {
    let mut a = up(b, acc);
    for (dy, x) in samples {
        b.grad_sum(&mut a, &up(b, dy), &up(b, x)).unwrap();
    }
    down(b, &a)
}

/// One row, odd widths, and tokens split into several bindings on the split backend.
const GRAD_SUM_SPLIT: [(usize, usize, usize); 4] =
    [(1, 37, 5), (130, 37, 9), (37, 300, 150), (150, 130, 140)];

/// Windows of tokens at 8 KiB: 300 tokens of 130 columns, and the accumulator's rows.
const GRAD_SUM_WINDOWS: [(usize, usize, usize); 4] =
    [(1, 37, 5), (130, 37, 300), (13, 300, 64), (37, 130, 1)];

fn gradient_sum<B: TestBackend>() {
    let b = B::fresh();
    check_grad_sum(&b, &GRAD_SUM_SPLIT);
    check_grad_sum(&b, &GRAD_SUM_WINDOWS[1..]);
}

fn gradient_sum_split<B: TestBackend>() {
    check_grad_sum(&split::<B>(), &GRAD_SUM_SPLIT);
}

fn gradient_sum_in_token_windows<B: TestBackend>() {
    let b = B::split(WINDOW_BYTES);
    check_grad_sum(&b, &GRAD_SUM_WINDOWS);
    b.assert_split_seen();
}

// ---- the explicit inverse Hessian ----

/// (cols, tokens, seed, dead columns)
type HinvCase = (usize, usize, u64, Vec<usize>);

fn check_hinv_explicit<B: Backend>(b: &B, cases: &[HinvCase]) {
    let cpu = CpuBackend::new();
    for (cols, tokens, seed, dead) in cases {
        let cols = *cols;
        let h = hessian_of(*tokens, cols, *seed, dead);
        let want = cpu.hinv_explicit(&up(&cpu, &h), PERCDAMP).unwrap();
        let got = b.hinv_explicit(&up(b, &h), PERCDAMP).unwrap();
        assert_eq!(got.dead, want.dead, "{cols} columns");
        assert_eq!(&got.dead, dead, "{cols} columns");
        assert!(
            ((got.damp - want.damp) / want.damp).abs() < 1e-5,
            "{cols} columns: damping {} vs {}",
            got.damp,
            want.damp
        );
        let (w, g) = (down(&cpu, &want.hinv), down(b, &got.hinv));
        let e = nmse(&w, &g);
        assert!(e <= tolerance::HINV_EXPLICIT, "Hinv {cols}: nmse {e:e}");
        for i in 0..cols {
            for j in 0..i {
                assert_eq!(
                    g.get(i, j),
                    g.get(j, i),
                    "Hinv {cols} not symmetric at {i},{j}"
                );
            }
        }
    }
}

/// A dead input channel in the middle of each width.
fn hinv_split_cases(widths: &[usize]) -> Vec<HinvCase> {
    widths
        .iter()
        .map(|&cols| (cols, 2 * cols + 16, cols as u64, vec![cols / 2]))
        .collect()
}

/// One column to 200; 300 (64-row blocks of H as wide as the split cap) on its own.
const HINV_SPLIT_WIDTHS: [usize; 4] = [1, 37, 130, 200];

/// Dead inputs first, inside and last.
fn hinv_wide_cases() -> Vec<HinvCase> {
    vec![
        (37, 46, 3, vec![]),
        (130, 139, 3, vec![0, 77]),
        (300, 309, 3, vec![299]),
    ]
}

fn explicit_inverse_hessian<B: TestBackend>() {
    let b = B::fresh();
    check_hinv_explicit(&b, &hinv_split_cases(&HINV_SPLIT_WIDTHS));
    check_hinv_explicit(&b, &hinv_split_cases(&[300]));
    check_hinv_explicit(&b, &hinv_wide_cases());
}

fn explicit_inverse_hessian_split<B: TestBackend>() {
    check_hinv_explicit(&split::<B>(), &hinv_split_cases(&HINV_SPLIT_WIDTHS));
}

fn explicit_inverse_hessian_of_300_columns_split<B: TestBackend>() {
    check_hinv_explicit(&split::<B>(), &hinv_split_cases(&[300]));
}

fn explicit_inverse_hessian_wide_split<B: TestBackend>() {
    let b = wide_split::<B>();
    check_hinv_explicit(&b, &hinv_wide_cases());
    b.assert_split_seen();
}

// ---- the OBS saliency ----

/// (rows, cols, group width, groups)
type SaliencyCase = (usize, usize, usize, Vec<usize>);

fn check_saliency<B: Backend>(b: &B, seeds: Seeds, cases: &[SaliencyCase]) {
    let cpu = CpuBackend::new();
    for (rows, cols, width, groups) in cases {
        let w = seeds.w(*rows, *cols);
        let hinv = seeds.hinv(*cols);
        let want = saliency(&cpu, &w, &hinv, *width, groups);
        let got = saliency(b, &w, &hinv, *width, groups);
        let e = max_rel(&want, &got);
        assert!(
            e <= tolerance::SALIENCY_REL,
            "saliency {rows}x{cols} width {width} groups {groups:?}: relative error {e:e}\n\
             want {:?}\n got {:?}",
            want.data,
            got.data
        );
    }
}

const SALIENCY_SEEDS: Seeds = Seeds {
    w: 5,
    hinv: 6,
    extra_tokens: 17,
};

fn saliency_cases() -> Vec<SaliencyCase> {
    vec![
        // One FFN channel per group (the elementwise ½‖W[:,c]‖²/Hinv[c,c]).
        (1, 37, 1, (0..37).collect()),
        (130, 300, 1, vec![299, 0, 17, 150, 151]),
        // Three KV-group-like groups of 24 columns, listed out of order.
        (13, 72, 24, vec![2, 0, 1]),
        (1, 72, 24, vec![1]),
        // Groups two apart, batched as one product with a stride of two groups, then one.
        (40, 192, 24, vec![0, 2, 4, 7]),
        // Widths past one workgroup's block: the blocked factorisation.
        (37, 130, 65, vec![1, 0]),
        (40, 192, 96, vec![0, 1]),
        // Wide groups two apart: one batch of three products, then one.
        (20, 390, 65, vec![0, 2, 4, 5]),
        (300, 130, 130, vec![0]),
    ]
}

const SALIENCY_SPLIT_SEEDS: Seeds = Seeds {
    w: 3,
    hinv: 4,
    extra_tokens: 16,
};

fn saliency_split_cases() -> Vec<SaliencyCase> {
    let mut v = Vec::new();
    for rows in [1, 150] {
        // Elementwise groups: every column, and a few in any order.
        for cols in [37, 130, 300] {
            v.push((rows, cols, 1, (0..cols).collect()));
            v.push((rows, cols, 1, vec![cols - 1, 0, cols / 2, 3]));
        }
        // Three KV-group-like groups of 24, all or some, in any order.
        v.push((rows, 72, 24, vec![0, 1, 2]));
        v.push((rows, 72, 24, vec![2, 0]));
        // Groups wider than one 64-column Cholesky block, and one the whole width.
        v.push((rows, 300, 100, vec![0, 1, 2]));
        v.push((rows, 130, 130, vec![0]));
    }
    v
}

/// Groups of 150 columns: a group's 150 x 150 block of Hinv is past the split cap.
fn saliency_wide_group_cases() -> Vec<SaliencyCase> {
    vec![(1, 300, 150, vec![1, 0]), (150, 300, 150, vec![1, 0])]
}

fn obs_saliency<B: TestBackend>() {
    let b = B::fresh();
    check_saliency(&b, SALIENCY_SEEDS, &saliency_cases());
    check_saliency(&b, SALIENCY_SPLIT_SEEDS, &saliency_split_cases());
    check_saliency(&b, SALIENCY_SPLIT_SEEDS, &saliency_wide_group_cases());
    // No groups: an empty row.
    let s = b.obs_saliency(
        &up(&b, &heavy_tailed(3, 8, 1)),
        &up(&b, &SALIENCY_SPLIT_SEEDS.hinv(8)),
        4,
        &[],
    );
    assert!(s.is_ok_and(|t| b.shape(&t) == (1, 0)));
}

fn obs_saliency_split<B: TestBackend>() {
    check_saliency(&split::<B>(), SALIENCY_SPLIT_SEEDS, &saliency_split_cases());
}

fn obs_saliency_of_wide_groups_split<B: TestBackend>() {
    check_saliency(
        &split::<B>(),
        SALIENCY_SPLIT_SEEDS,
        &saliency_wide_group_cases(),
    );
}

fn obs_saliency_wide_split<B: TestBackend>() {
    let b = wide_split::<B>();
    check_saliency(&b, SALIENCY_SEEDS, &saliency_cases());
    b.assert_split_seen();
}

fn obs_saliency_in_windows<B: TestBackend>() {
    // The narrow groups' Hinv rows in windows of whole groups.
    let b = B::split(WINDOW_BYTES);
    check_saliency(
        &b,
        SALIENCY_SEEDS,
        &[
            (13, 72, 24, vec![2, 0, 1]),
            (130, 300, 1, vec![299, 0, 17, 150]),
        ],
    );
    b.assert_split_seen();
}

// ---- the Taylor saliency ----

/// (rows, cols, axis, segment width)
type TaylorCase = (usize, usize, SegmentAxis, usize);

/// Every kind of Taylor score of W and its gradient statistics (seeds of W, the gradient
/// sum and the squared-gradient sum), averaged over `samples`.
fn check_taylor<B: Backend>(b: &B, seeds: [u64; 3], samples: f64, cases: &[TaylorCase]) {
    let cpu = CpuBackend::new();
    let grad_scale = 1.0 / samples;
    let fisher_scale = 1.0 / (GBLM_GRAD_SCALE as f64 * GBLM_GRAD_SCALE as f64 * samples);
    for &(rows, cols, axis, width) in cases {
        let w = heavy_tailed(rows, cols, seeds[0]);
        let gs = heavy_tailed(rows, cols, seeds[1]);
        let gq = heavy_tailed_positive(rows, cols, seeds[2]);
        for kind in TaylorKind::ALL {
            let want = taylor(
                &cpu,
                [&w, &gs, &gq],
                kind,
                axis,
                width,
                grad_scale,
                fisher_scale,
            );
            let got = taylor(
                b,
                [&w, &gs, &gq],
                kind,
                axis,
                width,
                grad_scale,
                fisher_scale,
            );
            let e = max_rel(&want, &got);
            assert!(
                e <= tolerance::SALIENCY_REL,
                "{} {rows}x{cols} {axis:?} width {width}: relative error {e:e}",
                kind.name()
            );
        }
    }
}

/// Only the statistics the kind reads are passed.
fn taylor<B: Backend>(
    b: &B,
    [w, gs, gq]: [&Matrix; 3],
    kind: TaylorKind,
    axis: SegmentAxis,
    width: usize,
    grad_scale: f64,
    fisher_scale: f64,
) -> Matrix {
    let (w, gs, gq) = (up(b, w), up(b, gs), up(b, gq));
    let s = b
        .taylor_saliency(TaylorInputs {
            w: &w,
            grad_sum: kind.needs_mean_grad().then_some(&gs),
            grad_sq: kind.needs_fisher().then_some(&gq),
            grad_scale,
            fisher_scale,
            kind,
            axis,
            width,
        })
        .unwrap();
    down(b, &s)
}

fn taylor_cases() -> Vec<TaylorCase> {
    use SegmentAxis::{Cols, Rows};
    vec![
        (1, 37, Rows, 1),
        (1, 37, Cols, 1),
        (1, 37, Cols, 37),
        (72, 37, Rows, 24),
        (37, 72, Cols, 24),
        (130, 300, Rows, 10),
        (130, 300, Cols, 20),
        (300, 130, Rows, 300),
        // More entries per segment than one workgroup's chunk.
        (4100, 3, Cols, 3),
    ]
}

fn taylor_split_cases() -> Vec<TaylorCase> {
    use SegmentAxis::{Cols, Rows};
    vec![
        (1, 37, Rows, 1),
        (1, 37, Cols, 1),
        (150, 72, Cols, 24),
        (150, 72, Rows, 5),
        (130, 300, Cols, 100),
        (130, 300, Rows, 13),
        (150, 37, Rows, 150),
    ]
}

fn taylor_saliency<B: TestBackend>() {
    let b = B::fresh();
    check_taylor(&b, [7, 8, 9], 8.0, &taylor_cases());
    check_taylor(&b, [5, 6, 7], 7.0, &taylor_split_cases());
}

fn taylor_saliency_split<B: TestBackend>() {
    check_taylor(&split::<B>(), [5, 6, 7], 7.0, &taylor_split_cases());
}

fn taylor_saliency_in_windows<B: TestBackend>() {
    let b = B::split(WINDOW_BYTES);
    check_taylor(&b, [7, 8, 9], 8.0, &taylor_cases());
    b.assert_split_seen();
}

/// The tests of every body for backend `$B`, with the attributes in `windows` on those whose
/// tensors come in 8 KiB windows, and those in `blocks_past_the_cap` on those whose blocks
/// (a group's k x k block of Hinv, 64 rows of H) are past `SPLIT_BYTES`.
macro_rules! score_tests {
    ($B:ty, windows: $windows:tt, blocks_past_the_cap: $blocks:tt) => {
        instantiate!(
            $B,
            [],
            gradient_sum,
            gradient_sum_split,
            explicit_inverse_hessian,
            explicit_inverse_hessian_split,
            explicit_inverse_hessian_wide_split,
            obs_saliency,
            obs_saliency_split,
            obs_saliency_wide_split,
            taylor_saliency,
            taylor_saliency_split,
        );
        instantiate!(
            $B,
            $windows,
            gradient_sum_in_token_windows,
            obs_saliency_in_windows,
            taylor_saliency_in_windows,
        );
        instantiate!(
            $B,
            $blocks,
            explicit_inverse_hessian_of_300_columns_split,
            obs_saliency_of_wide_groups_split,
        );
    };
}

#[cfg(feature = "wgpu")]
mod wgpu {
    score_tests!(
        prunebench_kernels::wgpu::WgpuBackend,
        windows: [],
        blocks_past_the_cap: [
            // FINDING, kept marked: wgpu binds a group's k x k block of Hinv and the factor's
            // 64-row blocks of H whole (a block also needs a few bytes of room for its
            // alignment), so at 64 rows of 300 columns it refuses these with `Unsupported`
            // where CubeCL splits them.
            #[should_panic(expected = "Unsupported")]
        ]
    );
}

#[cfg(feature = "cubecl")]
mod cubecl_wgpu {
    score_tests!(
        prunebench_kernels::cube::CubeWgpuBackend,
        windows: [
            // CubeCL's slabs are whole 64-row blocks (`cube::ROW_ALIGN`), and 8 KiB holds
            // fewer than 64 rows of these widths: it refuses the tensors themselves, cleanly.
            #[should_panic(expected = "do not fit one storage binding")]
        ],
        blocks_past_the_cap: []
    );
}
