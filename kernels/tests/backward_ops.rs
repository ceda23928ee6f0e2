//! The backward ops of ALGORITHMS.md §15 that are not the linear's on each GPU backend against
//! the f64 reference, written once and instantiated per backend by `backward_tests!`: odd
//! shapes, no rows, outputs poisoned with NaN, tensors split across bindings (RMSNorm's blocks
//! of rows across binding boundaries, the embedding's dh and dE in several parts), gates far
//! into both tails, and the same bits on every run and under every split.

#![cfg(any(feature = "wgpu", feature = "cubecl"))]

#[macro_use]
mod common;

use common::backends::TestBackend;
use common::{assert_close, bits, down, up};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::ops::tolerance::{BACKWARD_ELEMENTWISE, BACKWARD_GEMM};
use prunebench_kernels::plan::groups::DEFAULT_FILL;
use prunebench_kernels::plan::row_parts;
use prunebench_kernels::rng::{heavy_tailed, heavy_tailed_positive, Rng};
use prunebench_kernels::{Backend, Matrix};

/// Bindings capped at 64 rows of 300 columns, as the forward ops' tests.
const SPLIT_BYTES: u64 = 64 * 300 * 4;

/// 8 KiB, the least wgpu takes: tensors come in windows of a few rows.
const WINDOW_BYTES: u64 = 8 << 10;

fn split<B: TestBackend>() -> B {
    let b = B::split(SPLIT_BYTES);
    for (rows, cols) in [(130, 200), (70, 300), (400, 64), (210, 128)] {
        assert!(b.is_split(rows, cols), "{rows}x{cols}");
    }
    b
}

fn scaled(mut m: Matrix, s: f32) -> Matrix {
    for v in &mut m.data {
        *v *= s;
    }
    m
}

// ---- RMSNorm ----

/// (dx, dγ) on `b` for x [n, d], after checking both against the reference.
fn check_rms_norm<B: Backend>(b: &B, n: usize, d: usize) -> (Matrix, Matrix) {
    let cpu = CpuBackend::new();
    let (x, g, dy) = (
        heavy_tailed(n, d, 1),
        heavy_tailed_positive(1, d, 2),
        heavy_tailed(n, d, 3),
    );
    let eps = 1e-5;
    let (wx, wg) = cpu
        .rms_norm_backward(&up(&cpu, &x), &up(&cpu, &g), &up(&cpu, &dy), eps)
        .unwrap();
    let (gx, gg) = b
        .rms_norm_backward(&up(b, &x), &up(b, &g), &up(b, &dy), eps)
        .unwrap();
    let (gx, gg) = (down(b, &gx), down(b, &gg));
    let what = format!("RMSNorm backward {n}x{d}");
    assert_close(
        &format!("{what} dx"),
        &down(&cpu, &wx),
        &gx,
        BACKWARD_ELEMENTWISE,
    );
    assert_close(&format!("{what} dγ"), &down(&cpu, &wg), &gg, BACKWARD_GEMM);
    (gx, gg)
}

/// One row, no rows, odd widths, several blocks of 64 rows and a partial last one; split,
/// x and dy span several bindings.
const RMS: [(usize, usize); 6] = [
    (1, 37),
    (0, 37),
    (70, 300),
    (130, 200),
    (400, 64),
    (3, 4100),
];

fn rms_norm_backward<B: TestBackend>() {
    let b = B::fresh();
    for (n, d) in RMS {
        check_rms_norm(&b, n, d);
    }
}

/// Rows too few to fill a GPU get several workgroups each (`plan::row_parts`), every one
/// summing the whole row and writing its run of dx, the first also the row's r (which dγ's
/// pass reads): four parts of an odd-length vec4 row, two of a row no vec4 fits, two of 70.
fn rms_norm_backward_over_row_parts<B: TestBackend>() {
    let cases = [(3, 4100), (1, 2051), (70, 3000)];
    let parts: Vec<usize> = cases
        .iter()
        .map(|&(n, d)| row_parts(n, d, DEFAULT_FILL))
        .collect();
    assert_eq!(parts, [4, 2, 2]);
    let b = B::fresh();
    for (n, d) in cases {
        check_rms_norm(&b, n, d);
    }
}

/// The same bits on a second run, and with the tensors split: dγ's blocks are the shape's.
fn rms_norm_backward_is_deterministic<B: TestBackend>() {
    let (b, s) = (B::fresh(), split::<B>());
    for (n, d) in [(130, 200), (400, 64)] {
        let (x1, g1) = check_rms_norm(&b, n, d);
        let (x2, g2) = check_rms_norm(&b, n, d);
        let (x3, g3) = check_rms_norm(&s, n, d);
        assert_eq!(bits(&x1), bits(&x2), "dx {n}x{d}, second run");
        assert_eq!(bits(&g1), bits(&g2), "dγ {n}x{d}, second run");
        assert_eq!(bits(&x1), bits(&x3), "dx {n}x{d}, split");
        assert_eq!(bits(&g1), bits(&g3), "dγ {n}x{d}, split");
    }
}

fn rms_norm_backward_split<B: TestBackend>() {
    let b = split::<B>();
    for (n, d) in RMS {
        check_rms_norm(&b, n, d);
    }
}

/// Windows of a few rows: blocks of 64 rows run across many of them.
fn rms_norm_backward_in_windows<B: TestBackend>() {
    let b = B::split(WINDOW_BYTES);
    let (gx, gg) = check_rms_norm(&b, 70, 300);
    let whole = check_rms_norm(&B::fresh(), 70, 300);
    assert_eq!((bits(&gx), bits(&gg)), (bits(&whole.0), bits(&whole.1)));
    check_rms_norm(&b, 130, 37);
    b.assert_split_seen();
}

// ---- RoPE ----

/// HF's tables for head_dim e, θ = 10000.
fn rope_tables(seq: usize, e: usize) -> (Matrix, Matrix) {
    let half = e / 2;
    let angle = |p: usize, i: usize| p as f64 * 10000f64.powf(-(2.0 * i as f64) / e as f64);
    (
        Matrix::from_fn(seq, half, |p, i| angle(p, i).cos() as f32),
        Matrix::from_fn(seq, half, |p, i| angle(p, i).sin() as f32),
    )
}

/// (windows, seq, heads, head_dim)
fn check_rope<B: Backend>(b: &B, cases: &[(usize, usize, usize, usize)]) {
    let cpu = CpuBackend::new();
    for &(windows, seq, heads, e) in cases {
        let dx = heavy_tailed(windows * seq, heads * e, 5);
        let (cos, sin) = rope_tables(seq, e);
        let (mut xc, mut xg) = (up(&cpu, &dx), up(b, &dx));
        cpu.rope_backward(&mut xc, &up(&cpu, &cos), &up(&cpu, &sin))
            .unwrap();
        b.rope_backward(&mut xg, &up(b, &cos), &up(b, &sin))
            .unwrap();
        assert_close(
            &format!("RoPE backward {windows} windows of {seq}, {heads} heads of {e}"),
            &down(&cpu, &xc),
            &down(b, &xg),
            BACKWARD_ELEMENTWISE,
        );
    }
}

const ROPE: [(usize, usize, usize, usize); 4] =
    [(1, 1, 1, 2), (3, 37, 6, 16), (3, 70, 4, 32), (1, 5, 1, 128)];

fn rope_backward<B: TestBackend>() {
    check_rope(&B::fresh(), &ROPE);
}

fn rope_backward_split<B: TestBackend>() {
    check_rope(&split::<B>(), &ROPE);
}

// ---- SiLU-gate ----

/// (rows, cols, scale of the gates): scaled by 30, the gates reach far into both tails.
fn check_silu<B: Backend>(b: &B, cases: &[(usize, usize, f32)]) {
    let cpu = CpuBackend::new();
    for &(r, c, scale) in cases {
        let g = scaled(heavy_tailed(r, c, 6), scale);
        let (u, da) = (heavy_tailed(r, c, 7), heavy_tailed(r, c, 8));
        let (wg, wu) = cpu
            .silu_mul_backward(&up(&cpu, &g), &up(&cpu, &u), &up(&cpu, &da))
            .unwrap();
        let (gg, gu) = b
            .silu_mul_backward(&up(b, &g), &up(b, &u), &up(b, &da))
            .unwrap();
        let (gg, gu) = (down(b, &gg), down(b, &gu));
        assert!(gg.data.iter().chain(&gu.data).all(|v| v.is_finite()));
        let what = format!("SiLU-gate backward {r}x{c}, gates x{scale}");
        assert_close(
            &format!("{what} dg"),
            &down(&cpu, &wg),
            &gg,
            BACKWARD_ELEMENTWISE,
        );
        assert_close(
            &format!("{what} du"),
            &down(&cpu, &wu),
            &gu,
            BACKWARD_ELEMENTWISE,
        );
    }
}

const SILU: [(usize, usize, f32); 6] = [
    (1, 1, 1.0),
    (0, 37, 1.0),
    (1, 37, 30.0),
    (37, 41, 1.0),
    (130, 200, 30.0),
    (70, 300, 1.0),
];

fn silu_mul_backward<B: TestBackend>() {
    check_silu(&B::fresh(), &SILU);
}

fn silu_mul_backward_split<B: TestBackend>() {
    check_silu(&split::<B>(), &SILU);
}

// ---- embedding ----

/// (vocab, d, tokens): ids with repeats, the first and last rows among them, most of a large
/// vocabulary never seen; no tokens give a table of zeros.
fn check_embed<B: Backend>(b: &B, cases: &[(usize, usize, usize)]) {
    let cpu = CpuBackend::new();
    for &(vocab, d, n) in cases {
        let dh = heavy_tailed(n, d, 9);
        let mut rng = Rng::new(10);
        let mut ids: Vec<u32> = (0..n).map(|_| rng.below(vocab.min(40)) as u32).collect();
        if n > 2 {
            ids[0] = (vocab - 1) as u32;
            ids[n - 1] = ids[0];
            ids[1] = 0;
        }
        let want = cpu.embed_backward(&up(&cpu, &dh), &ids, vocab).unwrap();
        let got = b.embed_backward(&up(b, &dh), &ids, vocab).unwrap();
        let (want, got) = (down(&cpu, &want), down(b, &got));
        assert_eq!(want.shape(), got.shape());
        let what = format!("embedding backward {vocab}x{d}, {n} tokens");
        assert_close(&what, &want, &got, BACKWARD_ELEMENTWISE);
        let again = down(b, &b.embed_backward(&up(b, &dh), &ids, vocab).unwrap());
        assert_eq!(bits(&got), bits(&again), "{what}: second run");
    }
}

/// Split, dE (210 x 128, 130 x 257) and dh (400 x 128, 130 x 257) span several bindings.
const EMBED: [(usize, usize, usize); 6] = [
    (1, 1, 1),
    (5, 37, 0),
    (50, 37, 13),
    (1000, 300, 1),
    (210, 128, 400),
    (130, 257, 130),
];

fn embed_backward<B: TestBackend>() {
    check_embed(&B::fresh(), &EMBED);
}

fn embed_backward_split<B: TestBackend>() {
    check_embed(&split::<B>(), &EMBED);
}

fn backward_ops_in_windows<B: TestBackend>() {
    let b = B::split(WINDOW_BYTES);
    check_rope(&b, &[(3, 70, 2, 32)]);
    check_silu(&b, &[(33, 301, 30.0)]);
    check_embed(&b, &[(300, 37, 70), (50, 37, 130)]);
    b.assert_split_seen();
}

/// The tests of every body for backend `$B`; `$windows`: the attributes of those whose
/// tensors come in 8 KiB windows.
macro_rules! backward_tests {
    ($B:ty, $windows:tt) => {
        instantiate!(
            $B,
            [],
            rms_norm_backward,
            rms_norm_backward_is_deterministic,
            rms_norm_backward_over_row_parts,
            rms_norm_backward_split,
            rope_backward,
            rope_backward_split,
            silu_mul_backward,
            silu_mul_backward_split,
            embed_backward,
            embed_backward_split,
        );
        instantiate!(
            $B,
            $windows,
            rms_norm_backward_in_windows,
            backward_ops_in_windows,
        );
    };
}

#[cfg(feature = "wgpu")]
mod wgpu {
    backward_tests!(prunebench_kernels::wgpu::WgpuBackend, []);
}

#[cfg(feature = "cubecl")]
mod cubecl_wgpu {
    backward_tests!(
        prunebench_kernels::cube::CubeWgpuBackend,
        [
            // CubeCL's slabs are whole 64-row blocks (`cube::ROW_ALIGN`), and 8 KiB holds
            // fewer than 64 rows of these widths: it refuses the tensors themselves, cleanly.
            #[should_panic(expected = "do not fit one storage binding")]
        ]
    );
}
