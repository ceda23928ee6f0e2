//! The LLaMA forward ops (ALGORITHMS.md §14) on each GPU backend against the f64 reference,
//! written once and instantiated per backend by `forward_tests!`: odd shapes (one row, widths
//! that are no multiple of a workgroup or cube, windows whose length is no multiple of the
//! attention tile, one-token windows, stacked windows), GQA groups, head sizes from 16 to 256,
//! heavy-tailed data, the LM head over uneven chunks with targets in each and rows without one,
//! outputs poisoned with NaN, tensors split across bindings (attention windows across binding
//! boundaries), and the same refusals with the same text.

#![cfg(any(feature = "wgpu", feature = "cubecl"))]

#[macro_use]
mod common;

use common::backends::TestBackend;
use common::{assert_close, bits, down, max_rel, up};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::ops::{nll_from_state, tolerance, NO_TARGET};
use prunebench_kernels::plan::groups::DEFAULT_FILL;
use prunebench_kernels::plan::{attention_query_rows, depth_split, row_parts};
use prunebench_kernels::rng::{heavy_tailed, Rng};
use prunebench_kernels::{Backend, KernelError, Matrix};

/// Bindings capped at 64 rows of 300 columns: the wider operands of the split cases span
/// several bindings (CubeCL's slabs are whole 64-row blocks, so it can split no finer).
const SPLIT_BYTES: u64 = 64 * 300 * 4;

/// Bindings capped at 64 rows of 96 columns (128 of 48): Q of the GQA case comes in 64-row
/// bindings, so windows of 37 rows cross them, and K and V are split elsewhere.
const NARROW_SPLIT_BYTES: u64 = 64 * 96 * 4;

/// 8 KiB, the least wgpu takes: tensors come in windows of a few rows.
const WINDOW_BYTES: u64 = 8 << 10;

/// The backend with bindings capped at `SPLIT_BYTES`, the wider operands really split.
fn split<B: TestBackend>() -> B {
    let b = B::split(SPLIT_BYTES);
    for (rows, cols) in [(130, 200), (70, 300), (210, 128), (400, 64), (130, 257)] {
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

// ---- linear ----

/// (tokens, cols, rows): one token, odd widths, X, W and Y each over several bindings when
/// split.
const LINEAR: [(usize, usize, usize); 7] = [
    (1, 37, 5),
    (5, 1, 3),
    (37, 130, 70),
    (70, 37, 130),
    (130, 96, 200),
    (130, 300, 65),
    (200, 64, 37),
];

fn check_linear<B: Backend>(b: &B, shapes: &[(usize, usize, usize)]) {
    let cpu = CpuBackend::new();
    for &(n, cols, rows) in shapes {
        let x = heavy_tailed(n, cols, 1);
        let w = heavy_tailed(rows, cols, 2);
        let want = down(&cpu, &cpu.linear(&up(&cpu, &x), &up(&cpu, &w)).unwrap());
        let got = down(b, &b.linear(&up(b, &x), &up(b, &w)).unwrap());
        assert_close(
            &format!("linear {n}x{cols} · ({rows}x{cols})ᵀ"),
            &want,
            &got,
            tolerance::FORWARD_GEMM,
        );
    }
}

fn linear<B: TestBackend>() {
    check_linear(&B::fresh(), &LINEAR);
}

fn linear_split<B: TestBackend>() {
    check_linear(
        &split::<B>(),
        &[
            (1, 37, 5),
            (5, 1, 3),
            (37, 130, 70),
            (130, 96, 200),
            (200, 64, 37),
        ],
    );
}

/// Products with too few output tiles to fill a GPU run as equal depth pieces summed by a
/// second pass (`plan::depth_split`): three pieces of 344, eight of 256 beside a ragged
/// tile, and two for one token; the plan is asserted so the cases stay split.
fn linear_over_depth_pieces<B: TestBackend>() {
    let shapes = [(37, 1032, 70), (3, 2048, 130), (1, 512, 5)];
    let pieces: Vec<usize> = shapes
        .iter()
        .map(|&(n, cols, rows)| depth_split(n, rows, cols, DEFAULT_FILL))
        .collect();
    assert_eq!(pieces, [3, 8, 2]);
    check_linear(&B::fresh(), &shapes);
}

fn linear_in_windows<B: TestBackend>() {
    // X, W and Y all come in windows of rows.
    let b = B::split(WINDOW_BYTES);
    check_linear(&b, &[(70, 37, 130), (130, 300, 65)]);
    b.assert_split_seen();
}

// ---- RMSNorm ----

fn check_rms_norm<B: Backend>(b: &B, cases: &[(usize, usize, f64)]) {
    let cpu = CpuBackend::new();
    for &(n, d, eps) in cases {
        let x = heavy_tailed(n, d, 3);
        let g = heavy_tailed(1, d, 4);
        let want = down(
            &cpu,
            &cpu.rms_norm(&up(&cpu, &x), &up(&cpu, &g), eps).unwrap(),
        );
        let got = down(b, &b.rms_norm(&up(b, &x), &up(b, &g), eps).unwrap());
        assert_close(
            &format!("RMSNorm {n}x{d} eps {eps}"),
            &want,
            &got,
            tolerance::FORWARD_ELEMENTWISE,
        );
    }
}

fn rms_norm<B: TestBackend>() {
    check_rms_norm(
        &B::fresh(),
        &[
            (1, 1, 1e-6),
            (1, 37, 1e-5),
            (1, 37, 0.0),
            (5, 300, 1e-5),
            (5, 300, 0.0),
            (70, 300, 1e-6),
            (70, 1000, 1e-5),
            (70, 1000, 0.0),
            (3, 256, 1e-5),
            (3, 256, 0.0),
            (130, 96, 0.0),
        ],
    );
}

/// Rows too few to fill a GPU are normalised by several workgroups each
/// (`plan::row_parts`), every one summing the whole row and writing its run of columns:
/// four parts of an odd-length vec4 row, two of a row no vec4 fits, two of 70 rows.
fn rms_norm_over_row_parts<B: TestBackend>() {
    let cases = [(3, 4100, 1e-5), (1, 2051, 0.0), (70, 3000, 1e-6)];
    let parts: Vec<usize> = cases
        .iter()
        .map(|&(n, d, _)| row_parts(n, d, DEFAULT_FILL))
        .collect();
    assert_eq!(parts, [4, 2, 2]);
    check_rms_norm(&B::fresh(), &cases);
}

fn rms_norm_split<B: TestBackend>() {
    check_rms_norm(
        &split::<B>(),
        &[(1, 1, 1e-6), (1, 37, 1e-5), (70, 300, 1e-6), (130, 96, 0.0)],
    );
}

fn rms_norm_in_windows<B: TestBackend>() {
    let b = B::split(WINDOW_BYTES);
    check_rms_norm(
        &b,
        &[
            (70, 300, 1e-5),
            (70, 300, 0.0),
            (9, 1000, 1e-5),
            (9, 1000, 0.0),
        ],
    );
    b.assert_split_seen();
}

// ---- RoPE ----

/// HF's tables for head_dim e: angle p·θ^(−2i/e), θ = 10000, in f64 then rounded to f32.
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
        let x = heavy_tailed(windows * seq, heads * e, 5);
        let (cos, sin) = rope_tables(seq, e);
        let (mut xc, mut xg) = (up(&cpu, &x), up(b, &x));
        cpu.rope(&mut xc, &up(&cpu, &cos), &up(&cpu, &sin)).unwrap();
        b.rope(&mut xg, &up(b, &cos), &up(b, &sin)).unwrap();
        assert_close(
            &format!("RoPE {windows} windows of {seq}, {heads} heads of {e}"),
            &down(&cpu, &xc),
            &down(b, &xg),
            tolerance::FORWARD_ELEMENTWISE,
        );
    }
}

/// One token, stacked windows, rows split on the split backend.
const ROPE_SPLIT: [(usize, usize, usize, usize); 4] =
    [(1, 1, 1, 2), (3, 37, 6, 16), (3, 70, 4, 32), (1, 5, 1, 128)];

fn rope<B: TestBackend>() {
    let b = B::fresh();
    check_rope(&b, &[(3, 5, 3, 16), (3, 1, 4, 32), (2, 70, 2, 128)]);
    check_rope(&b, &ROPE_SPLIT);
}

fn rope_split<B: TestBackend>() {
    check_rope(&split::<B>(), &ROPE_SPLIT);
}

fn rope_in_windows<B: TestBackend>() {
    let b = B::split(WINDOW_BYTES);
    check_rope(&b, &[(3, 70, 2, 32)]);
    b.assert_split_seen();
}

// ---- attention ----

/// (windows, seq, heads, kv_heads, head_dim, scale of Q and K)
type AttnCase = (usize, usize, usize, usize, usize, f32);

/// Heavy-tailed Q, K and V (Student-t with outlier channels 10-100x): at full scale some
/// rows' softmax is nearly one-hot and others' spread; scaled down, it spreads over many keys.
fn check_attention<B: Backend>(b: &B, cases: &[AttnCase]) {
    let cpu = CpuBackend::new();
    for &(windows, seq, heads, kv, e, scale) in cases {
        let n = windows * seq;
        let q = scaled(heavy_tailed(n, heads * e, 6), scale);
        let k = scaled(heavy_tailed(n, kv * e, 7), scale);
        let v = heavy_tailed(n, kv * e, 8);
        let want = cpu
            .attention(&up(&cpu, &q), &up(&cpu, &k), &up(&cpu, &v), heads, kv, seq)
            .unwrap();
        let got = b
            .attention(&up(b, &q), &up(b, &k), &up(b, &v), heads, kv, seq)
            .unwrap();
        assert_close(
            &format!(
                "attention {windows} windows of {seq}, {heads} heads / {kv} KV of {e}, \
                 scale {scale}"
            ),
            &down(&cpu, &want),
            &down(b, &got),
            tolerance::FORWARD_GEMM,
        );
    }
}

fn attention<B: TestBackend>() {
    check_attention(
        &B::fresh(),
        &[
            // Three KV groups of two heads, windows longer than a query tile (16 rows where
            // tiles are this few) and than a key tile (32), neither a multiple of it; and
            // three windows of 37 (no multiple of either tile).
            (3, 70, 6, 3, 16, 1.0),
            (3, 37, 6, 3, 16, 1.0),
            (3, 37, 6, 3, 16, 0.125),
            // Full MHA over a window of 70 (the last query tile partial) and of 130.
            (1, 70, 4, 4, 32, 0.125),
            (1, 130, 4, 4, 32, 1.0),
            // Windows of one row: each query sees only itself.
            (3, 1, 4, 4, 32, 1.0),
            (5, 1, 4, 2, 16, 1.0),
            // LLaMA's head size (16 keys per tile), one and two query heads per KV head.
            (2, 37, 2, 1, 128, 1.0),
            (2, 20, 4, 2, 128, 0.125),
            // Wider heads: 12 keys per tile at 160, the largest head_dim (256, 8-key tiles).
            (1, 20, 2, 2, 160, 1.0),
            (1, 9, 2, 1, 256, 0.0625),
            // LLaMA-7B's heads over 256 tokens: the one-query-per-invocation WGSL kernel that
            // FlashAttention-2's replaced passed every case above yet gave a normalised
            // squared error of 0.21 here on lavapipe.
            (1, 256, 32, 32, 128, 1.0),
        ],
    );
}

/// Query tiles of every size `plan::attention_query_rows` picks (64, 32 or 16 rows: each
/// invocation's register tile 4, 2 or 1 rows high), chosen by how many tiles fill the device;
/// the plan is asserted at the default fill so each case keeps its size. Windows are no
/// multiple of their tile, with GQA groups of four, three and two.
fn attention_over_query_tile_sizes<B: TestBackend>() {
    let cases: [AttnCase; 3] = [
        (4, 70, 32, 8, 16, 0.125),
        (2, 70, 48, 16, 16, 1.0),
        (2, 37, 6, 3, 16, 1.0),
    ];
    let rows: Vec<usize> = cases
        .iter()
        .map(|&(w, seq, heads, _, e, _)| attention_query_rows(w, seq, heads, e, DEFAULT_FILL))
        .collect();
    assert_eq!(rows, [64, 32, 16]);
    let b = B::fresh();
    check_attention(&b, &cases);
    check_attention_lse(&b, &cases);
}

/// `attention_with_lse`: the output as `attention`'s (bit for bit: the same kernel) and L,
/// each row's and head's log-sum-exp, against the reference's.
fn check_attention_lse<B: Backend>(b: &B, cases: &[AttnCase]) {
    let cpu = CpuBackend::new();
    for &(windows, seq, heads, kv, e, scale) in cases {
        let n = windows * seq;
        let q = scaled(heavy_tailed(n, heads * e, 6), scale);
        let k = scaled(heavy_tailed(n, kv * e, 7), scale);
        let v = heavy_tailed(n, kv * e, 8);
        let (_, want) = cpu
            .attention_with_lse(&up(&cpu, &q), &up(&cpu, &k), &up(&cpu, &v), heads, kv, seq)
            .unwrap();
        let (qd, kd, vd) = (up(b, &q), up(b, &k), up(b, &v));
        let (o, got) = b.attention_with_lse(&qd, &kd, &vd, heads, kv, seq).unwrap();
        let plain = b.attention(&qd, &kd, &vd, heads, kv, seq).unwrap();
        let what = format!("{windows} windows of {seq}, {heads} heads / {kv} KV of {e}");
        assert_eq!(
            bits(&down(b, &o)),
            bits(&down(b, &plain)),
            "attention_with_lse's output vs attention's: {what}"
        );
        let got = down(b, &got);
        assert_eq!((got.rows, got.cols), (n, heads), "L's shape: {what}");
        assert_close(
            &format!("attention log-sum-exp: {what}, scale {scale}"),
            &down(&cpu, &want),
            &got,
            tolerance::FORWARD_GEMM,
        );
    }
}

fn attention_lse<B: TestBackend>() {
    check_attention_lse(
        &B::fresh(),
        &[
            // Three KV groups of two heads over windows longer than a query tile and not a
            // multiple of it, at full scale (near one-hot rows) and scaled down.
            (3, 70, 6, 3, 16, 1.0),
            (3, 37, 6, 3, 16, 0.125),
            // Windows of one token: L is the query's own scaled score.
            (3, 1, 4, 4, 32, 1.0),
            (5, 1, 6, 3, 16, 1.0),
            // LLaMA's head size, and the largest.
            (2, 20, 4, 2, 128, 0.125),
            (1, 9, 2, 1, 256, 0.0625),
        ],
    );
}

fn attention_lse_across_bindings<B: TestBackend>() {
    // As `attention_across_bindings`: windows cross Q's (and L's) bindings.
    let b = B::split(NARROW_SPLIT_BYTES);
    check_attention_lse(&b, &[(3, 37, 6, 3, 16, 0.125), (2, 100, 6, 3, 16, 0.125)]);
    b.assert_split_seen();
}

fn attention_across_bindings<B: TestBackend>() {
    let b = B::split(NARROW_SPLIT_BYTES);
    // Three windows of 37: Q (96 columns) split, K and V (48) whole; windows cross Q's
    // binding boundaries (on CubeCL, copied through scratch).
    assert!(b.is_split(111, 96));
    assert!(!b.is_split(111, 48));
    check_attention(&b, &[(3, 37, 6, 3, 16, 0.125)]);
    // Two windows of 100: every window crosses bindings of Q, the second also K's.
    assert!(b.is_split(200, 48));
    check_attention(&b, &[(2, 100, 6, 3, 16, 0.125)]);
    b.assert_split_seen();
}

fn attention_with_windows_past_a_binding<B: TestBackend>() {
    // 64 KiB: a 200-row window of Q (4 heads of 32: 100 KB) comes in bindings of whole
    // query tiles, and K and V (2 KV heads) in two.
    let b = B::split(64 << 10);
    assert!(b.is_split(400, 128) && b.is_split(400, 64));
    check_attention(&b, &[(2, 200, 4, 2, 32, 1.0)]);
    b.assert_split_seen();
}

fn attention_in_windows<B: TestBackend>() {
    // A window of 8 rows of Q is 3 KiB, so the 5 windows come two at a time; a window of 70
    // rows of Q (8 heads of 16: 35 KB) comes in slabs of 15 query rows, against the
    // window's K and V (one KV head: 4.4 KB) bound whole.
    let b = B::split(WINDOW_BYTES);
    check_attention(&b, &[(5, 8, 6, 3, 16, 1.0), (2, 70, 8, 1, 16, 1.0)]);
    b.assert_split_seen();
}

fn attention_refuses_a_window_past_a_binding<B: TestBackend>() {
    let b = B::split(WINDOW_BYTES);
    let z = |r, c| b.zeros(r, c).unwrap();
    // A window of 64 rows of K of 64 columns (16 KiB) does not fit an 8 KiB binding.
    match b.attention(&z(64, 64), &z(64, 64), &z(64, 64), 4, 4, 64) {
        Err(KernelError::Unsupported(m)) => assert!(m.contains("window of 64 rows of K"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

fn attention_refuses_head_dims_it_cannot_hold<B: TestBackend>() {
    let b = B::fresh();
    // Past what a query's accumulator holds: just past the largest (256), and further.
    for e in [257, 264] {
        let (q, k) = (heavy_tailed(2, e, 1), heavy_tailed(2, e, 2));
        match b.attention(&up(&b, &q), &up(&b, &k), &up(&b, &k), 1, 1, 2) {
            Err(KernelError::Unsupported(m)) => {
                assert!(m.contains(&format!("head_dim {e}")), "{m}")
            }
            other => panic!(
                "head_dim {e}: expected a refusal, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

// ---- elementwise ----

/// (rows, cols, scale of the gates): scaled by 4, the gates reach far into both tails, where
/// SiLU saturates to 0 and to z.
fn check_elementwise<B: Backend>(b: &B, cases: &[(usize, usize, f32)]) {
    let cpu = CpuBackend::new();
    for &(r, c, scale) in cases {
        let g = scaled(heavy_tailed(r, c, 9), scale);
        let u = heavy_tailed(r, c, 10);
        let want = down(&cpu, &cpu.silu_mul(&up(&cpu, &g), &up(&cpu, &u)).unwrap());
        let got = down(b, &b.silu_mul(&up(b, &g), &up(b, &u)).unwrap());
        assert_close(
            &format!("SiLU-gate product {r}x{c}"),
            &want,
            &got,
            tolerance::FORWARD_ELEMENTWISE,
        );
        let (mut xc, mut xg) = (up(&cpu, &g), up(b, &g));
        cpu.residual_add(&mut xc, &up(&cpu, &u)).unwrap();
        b.residual_add(&mut xg, &up(b, &u)).unwrap();
        // One f32 addition is the f64 sum rounded once: exact.
        let e = max_rel(&down(&cpu, &xc), &down(b, &xg));
        assert_eq!(e, 0.0, "residual add {r}x{c}: max relative error {e:e}");
    }
}

const ELEMENTWISE_SPLIT: [(usize, usize, f32); 5] = [
    (1, 1, 4.0),
    (1, 37, 4.0),
    (37, 41, 4.0),
    (130, 96, 4.0),
    (70, 300, 4.0),
];

fn elementwise_ops<B: TestBackend>() {
    let b = B::fresh();
    check_elementwise(&b, &[(1, 37, 1.0), (33, 301, 1.0), (1, 1, 1.0)]);
    check_elementwise(&b, &ELEMENTWISE_SPLIT);
}

fn elementwise_ops_split<B: TestBackend>() {
    check_elementwise(&split::<B>(), &ELEMENTWISE_SPLIT);
}

fn elementwise_ops_in_windows<B: TestBackend>() {
    let b = B::split(WINDOW_BYTES);
    check_elementwise(&b, &[(33, 301, 1.0)]);
    b.assert_split_seen();
}

fn silu_survives_large_gates<B: TestBackend>() {
    let b = &B::fresh();
    let cpu = CpuBackend::new();
    let g = Matrix::new(1, 6, vec![-200.0, -90.0, -1e-3, 0.0, 90.0, 200.0]).unwrap();
    let u = Matrix::new(1, 6, vec![1.0; 6]).unwrap();
    let want = down(&cpu, &cpu.silu_mul(&up(&cpu, &g), &up(&cpu, &u)).unwrap());
    let got = down(b, &b.silu_mul(&up(b, &g), &up(b, &u)).unwrap());
    assert!(got.data.iter().all(|v| v.is_finite()), "{:?}", got.data);
    assert_close(
        "SiLU of large gates",
        &want,
        &got,
        tolerance::FORWARD_ELEMENTWISE,
    );
}

// ---- embedding gather ----

/// (vocab, d, ids): the last and first rows of the table and a repeated id among the ids;
/// the rows are gathered bit for bit. No ids give no rows.
fn check_embed<B: Backend>(b: &B, cases: &[(usize, usize, usize)]) {
    let cpu = CpuBackend::new();
    for &(vocab, d, n) in cases {
        let table = heavy_tailed(vocab, d, 11);
        let mut rng = Rng::new(12);
        let mut ids: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
        ids[0] = (vocab - 1) as u32;
        if n > 2 {
            ids[1] = 0;
            ids[2] = ids[0];
        }
        let want = down(&cpu, &cpu.embed(&up(&cpu, &table), &ids).unwrap());
        let got = down(b, &b.embed(&up(b, &table), &ids).unwrap());
        assert_eq!(want.shape(), got.shape());
        assert_eq!(bits(&want), bits(&got), "embedding {vocab}x{d}, {n} ids");
    }
    let t = heavy_tailed(4, 3, 1);
    let want = down(&cpu, &cpu.embed(&up(&cpu, &t), &[]).unwrap());
    let got = down(b, &b.embed(&up(b, &t), &[]).unwrap());
    assert_eq!(want.shape(), got.shape());
}

/// A table over two bindings on the split backend.
const EMBED_SPLIT: [(usize, usize, usize); 3] = [(1, 1, 1), (50, 37, 9), (400, 64, 130)];

fn embed<B: TestBackend>() {
    let b = B::fresh();
    check_embed(&b, &[(50, 37, 1), (300, 37, 70), (7, 300, 9)]);
    check_embed(&b, &EMBED_SPLIT);
}

fn embed_split<B: TestBackend>() {
    check_embed(&split::<B>(), &EMBED_SPLIT);
}

fn embed_in_windows<B: TestBackend>() {
    // The 300 x 37 table (44 KB) and the output come in windows of rows.
    let b = B::split(WINDOW_BYTES);
    check_embed(&b, &[(300, 37, 70)]);
    b.assert_split_seen();
}

// ---- the chunked LM head ----

/// The head's input: H, the vocabulary's W in `chunks` of rows, a target per row, and the
/// garbage the state holds before the first chunk (offset 0 must ignore it).
struct LmCase {
    h: Matrix,
    w: Matrix,
    chunks: Vec<usize>,
    targets: Vec<u32>,
    garbage: Matrix,
}

/// Targets in every chunk (row i in chunk i; a single row: in the last chunk), the first
/// and last vocabulary rows, and some rows without one; garbage of NaN, −7 and 1e30.
fn lm_pinned(n: usize, d: usize, chunks: &[usize]) -> LmCase {
    let vocab: usize = chunks.iter().sum();
    let mut rng = Rng::new(15);
    let mut targets: Vec<u32> = (0..n)
        .map(|t| match t % 5 {
            4 => NO_TARGET,
            _ => rng.below(vocab) as u32,
        })
        .collect();
    let mut off = 0;
    for (i, &c) in chunks.iter().enumerate() {
        targets[i % n] = (off + c / 2) as u32;
        off += c;
    }
    if n > chunks.len() {
        targets[n - 1] = NO_TARGET;
    }
    if n > 5 {
        targets[3] = 0;
        targets[5] = (vocab - 1) as u32;
    }
    LmCase {
        h: heavy_tailed(n, d, 13),
        w: heavy_tailed(vocab, d, 14),
        chunks: chunks.to_vec(),
        targets,
        garbage: Matrix::from_fn(n, 3, |r, c| [f32::NAN, -7.0, 1e30][(r + c) % 3]),
    }
}

/// W scaled so that the losses run from a few nats to a few hundred; targets in every chunk,
/// at both ends of the vocabulary, and some rows without; heavy-tailed garbage.
fn lm_scaled(n: usize, d: usize, chunks: &[usize]) -> LmCase {
    let vocab: usize = chunks.iter().sum();
    let mut rng = Rng::new(16);
    let targets = (0..n)
        .map(|t| match t % 5 {
            0 if t > 0 => NO_TARGET,
            1 => 0,
            2 => (vocab - 1) as u32,
            _ => rng.below(vocab) as u32,
        })
        .collect();
    LmCase {
        h: heavy_tailed(n, d, 14),
        w: scaled(heavy_tailed(vocab, d, 15), 0.05),
        chunks: chunks.to_vec(),
        targets,
        garbage: heavy_tailed(n, 3, 13),
    }
}

/// The state after every chunk of the head.
fn lm_head<B: Backend>(b: &B, case: &LmCase) -> Matrix {
    let w = &case.w;
    let mut state = up(b, &case.garbage);
    let ht = up(b, &case.h);
    let mut offset = 0;
    for &c in &case.chunks {
        let part = Matrix::new(
            c,
            w.cols,
            w.data[offset * w.cols..(offset + c) * w.cols].to_vec(),
        )
        .unwrap();
        b.lm_head_chunk(&mut state, &ht, &up(b, &part), offset, &case.targets)
            .unwrap();
        offset += c;
    }
    down(b, &state)
}

fn check_lm_head<B: Backend>(b: &B, cases: &[LmCase]) {
    let cpu = CpuBackend::new();
    for case in cases {
        let (n, d, chunks) = (case.h.rows, case.h.cols, &case.chunks);
        let want = lm_head(&cpu, case);
        let got = lm_head(b, case);
        let (nw, ng) = (nll_from_state(&want), nll_from_state(&got));
        for t in 0..n {
            let rel = (ng[t] - nw[t]).abs() / nw[t].abs().max(1.0);
            assert!(
                rel <= tolerance::NLL_REL,
                "LM head {n}x{d}, chunks {chunks:?}, row {t} (target {}): nll {} vs {} \
                 (rel {rel:e})",
                case.targets[t],
                ng[t],
                nw[t]
            );
            if case.targets[t] == NO_TARGET {
                assert_eq!(got.get(t, 2), 0.0, "row {t} without a target has z set");
            }
        }
    }
}

/// One token; uneven chunks, one wider than a cube; the split backend splits the logits
/// temporary of the 257-row chunk.
fn lm_split_cases() -> Vec<LmCase> {
    vec![
        lm_scaled(1, 37, &[37, 40, 23]),
        lm_scaled(37, 64, &[100, 300, 7]),
        lm_scaled(130, 96, &[64, 257, 50]),
    ]
}

fn lm_head_over_chunks<B: TestBackend>() {
    let b = B::fresh();
    check_lm_head(
        &b,
        &[
            lm_pinned(9, 37, &[100, 64, 37]),
            lm_pinned(1, 300, &[300, 1, 257]),
        ],
    );
    check_lm_head(&b, &lm_split_cases());
}

fn lm_head_split<B: TestBackend>() {
    check_lm_head(&split::<B>(), &lm_split_cases());
}

fn lm_head_in_windows<B: TestBackend>() {
    // 40 rows of 100 logits (16 KB) and the 100 x 37 chunk come in windows of rows.
    let b = B::split(WINDOW_BYTES);
    check_lm_head(&b, &[lm_pinned(40, 37, &[100, 70, 90])]);
    b.assert_split_seen();
}

// ---- shape errors ----

/// The message of an error the op must return.
fn err<T>(r: Result<T, KernelError>) -> String {
    match r {
        Ok(_) => panic!("a bad input was accepted"),
        Err(e) => e.to_string(),
    }
}

/// Every op given one wrong input (zeros), as the error message it returns.
fn shape_errors<B: Backend>(b: &B) -> Vec<String> {
    let z = |r, c| b.zeros(r, c).unwrap();
    let mut out = vec![
        err(b.linear(&z(3, 4), &z(5, 6))),
        err(b.rms_norm(&z(3, 4), &z(1, 5), 1e-5)),
        err(b.rms_norm(&z(3, 4), &z(4, 1), 1e-5)),
        err(b.rms_norm(&z(3, 4), &z(1, 4), -1.0)),
        err(b.rms_norm(&z(3, 4), &z(1, 4), f64::NAN)),
    ];
    let mut x = z(6, 8);
    out.push(err(b.rope(&mut x, &z(3, 2), &z(3, 3))));
    out.push(err(b.rope(&mut x, &z(3, 3), &z(3, 3))));
    out.push(err(b.rope(&mut x, &z(4, 2), &z(4, 2))));
    out.push(err(b.rope(&mut x, &z(0, 2), &z(0, 2))));
    let (q, k) = (z(6, 8), z(6, 4));
    out.push(err(b.attention(&q, &k, &z(6, 8), 2, 1, 3)));
    out.push(err(b.attention(&q, &k, &k, 2, 3, 3)));
    out.push(err(b.attention(&q, &k, &k, 0, 1, 3)));
    out.push(err(b.attention(&q, &k, &k, 3, 1, 3)));
    out.push(err(b.attention(&q, &z(6, 8), &z(6, 8), 2, 1, 3)));
    out.push(err(b.attention(&q, &z(5, 4), &z(5, 4), 2, 1, 3)));
    out.push(err(b.attention(&q, &k, &k, 2, 1, 4)));
    out.push(err(b.attention(&q, &k, &k, 2, 1, 0)));
    out.push(err(b.silu_mul(&z(3, 4), &z(4, 3))));
    out.push(err(b.residual_add(&mut z(3, 4), &z(3, 5))));
    out.push(err(b.embed(&z(5, 4), &[0, 5])));
    let (h, w) = (z(4, 6), z(10, 6));
    let t = [0, 1, 2, NO_TARGET];
    out.push(err(b.lm_head_chunk(&mut z(4, 3), &h, &z(10, 5), 0, &t)));
    out.push(err(b.lm_head_chunk(&mut z(4, 2), &h, &w, 0, &t)));
    out.push(err(b.lm_head_chunk(&mut z(3, 3), &h, &w, 0, &t)));
    out.push(err(b.lm_head_chunk(&mut z(4, 3), &h, &w, 0, &t[..3])));
    out
}

/// What was refused, with the message: every op given one wrong input (heavy-tailed).
fn refusals<B: Backend>(b: &B) -> Vec<(String, String)> {
    fn refused<T>(what: &str, r: Result<T, KernelError>) -> (String, String) {
        match r {
            Ok(_) => panic!("{what}: a bad input was accepted"),
            Err(e) => (what.to_string(), e.to_string()),
        }
    }
    let t = |r, k, s| up(b, &heavy_tailed(r, k, s));
    let (x, w) = (t(4, 6, 1), t(3, 5, 2));
    let mut out = vec![
        refused("linear columns", b.linear(&x, &w)),
        refused("RMSNorm width", b.rms_norm(&x, &t(1, 5, 3), 1e-6)),
    ];
    for eps in [-1.0, f64::NAN] {
        let r = b.rms_norm(&x, &t(1, 6, 3), eps);
        out.push(refused(&format!("RMSNorm eps {eps}"), r));
    }
    // RoPE: tables that disagree, a head_dim that does not divide the row, partial windows.
    let r = b.rope(&mut t(4, 6, 1), &t(2, 3, 4), &t(2, 2, 5));
    out.push(refused("RoPE tables", r));
    let r = b.rope(&mut t(4, 6, 1), &t(2, 2, 6), &t(2, 2, 6));
    out.push(refused("RoPE head_dim", r));
    let r = b.rope(&mut t(4, 6, 1), &t(3, 3, 6), &t(3, 3, 6));
    out.push(refused("RoPE windows", r));
    // Attention: heads, K width, V vs K, rows, partial windows.
    let (q, k) = (t(6, 8, 7), t(6, 4, 8));
    for (what, heads, kv, seq) in [
        ("heads not a multiple", 2, 3, 3),
        ("no KV heads", 2, 0, 3),
        ("Q columns", 3, 3, 3),
        ("K width", 4, 1, 3),
        ("partial windows", 2, 1, 4),
        ("zero seq", 2, 1, 0),
    ] {
        out.push(refused(what, b.attention(&q, &k, &k, heads, kv, seq)));
    }
    let r = b.attention(&q, &k, &t(6, 6, 8), 2, 1, 3);
    out.push(refused("attention V vs K", r));
    let k5 = t(5, 4, 8);
    out.push(refused(
        "attention rows",
        b.attention(&q, &k5, &k5, 2, 1, 3),
    ));
    let y = t(4, 5, 9);
    out.push(refused("SiLU shapes", b.silu_mul(&x, &y)));
    out.push(refused("add shapes", b.residual_add(&mut t(4, 6, 1), &y)));
    out.push(refused("embed id", b.embed(&x, &[0, 4])));
    // LM head: W columns, state shape, target count.
    let w6 = t(7, 6, 11);
    let r = b.lm_head_chunk(&mut t(4, 3, 10), &x, &w, 0, &[0; 4]);
    out.push(refused("LM head W", r));
    let r = b.lm_head_chunk(&mut t(4, 2, 10), &x, &w6, 0, &[0; 4]);
    out.push(refused("LM head state", r));
    let r = b.lm_head_chunk(&mut t(4, 3, 10), &x, &w6, 0, &[0; 3]);
    out.push(refused("LM head targets", r));
    out
}

fn shape_errors_are_the_references<B: TestBackend>() {
    let (cpu, b) = (CpuBackend::new(), B::fresh());
    let want = shape_errors(&cpu);
    assert_eq!(shape_errors(&b), want);
    let want_named = refusals(&cpu);
    for ((what, want), (_, got)) in want_named.iter().zip(refusals(&b)) {
        assert_eq!(&got, want, "{what}");
    }
    // Each is a refusal of the input, not a device failure.
    let all = want.iter().chain(want_named.iter().map(|(_, m)| m));
    for m in all {
        assert!(
            m.starts_with("shape mismatch") || m.starts_with("invalid argument"),
            "{m}"
        );
    }
}

/// The tests of every body for backend `$B`; `$windows`: the attributes of those whose
/// tensors come in 8 KiB windows.
macro_rules! forward_tests {
    ($B:ty, $windows:tt) => {
        instantiate!(
            $B,
            [],
            linear,
            linear_split,
            linear_over_depth_pieces,
            rms_norm,
            rms_norm_split,
            rms_norm_over_row_parts,
            rope,
            rope_split,
            attention,
            attention_over_query_tile_sizes,
            attention_across_bindings,
            attention_with_windows_past_a_binding,
            attention_refuses_head_dims_it_cannot_hold,
            attention_lse,
            attention_lse_across_bindings,
            elementwise_ops,
            elementwise_ops_split,
            silu_survives_large_gates,
            embed,
            embed_split,
            lm_head_over_chunks,
            lm_head_split,
            shape_errors_are_the_references,
        );
        instantiate!(
            $B,
            $windows,
            linear_in_windows,
            rms_norm_in_windows,
            rope_in_windows,
            attention_in_windows,
            attention_refuses_a_window_past_a_binding,
            elementwise_ops_in_windows,
            embed_in_windows,
            lm_head_in_windows,
        );
    };
}

#[cfg(feature = "wgpu")]
mod wgpu {
    forward_tests!(prunebench_kernels::wgpu::WgpuBackend, []);
}

#[cfg(feature = "cubecl")]
mod cubecl_wgpu {
    forward_tests!(
        prunebench_kernels::cube::CubeWgpuBackend,
        [
            // CubeCL's slabs are whole 64-row blocks (`cube::ROW_ALIGN`), and 8 KiB holds
            // fewer than 64 rows of these widths: it refuses the tensors themselves, cleanly.
            #[should_panic(expected = "do not fit one storage binding")]
        ]
    );
}
