//! The LLaMA forward ops of ALGORITHMS.md §14 on the CubeCL backend against the f64 reference:
//! odd shapes (one row, widths that are no multiple of a cube, windows that are no multiple of
//! the attention tile, one-token windows, stacked windows), GQA groups, head_dim 16, 32 and
//! 128, heavy-tailed data, the LM head over uneven chunks with targets in each and rows without
//! one, tensors split into slabs (attention windows across slab boundaries), outputs poisoned
//! with NaN, and the same refusals with the same text.
#![cfg(feature = "cubecl")]

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::cube::{cube_wgpu, CubeWgpuBackend};
use prunebench_kernels::ops::tolerance as tol;
use prunebench_kernels::rng::{heavy_tailed, Rng};
use prunebench_kernels::{nll_from_state, Backend, KernelError, Matrix, NO_TARGET};

// The comparisons of the structured-op tests; not every helper is used here.
#[allow(dead_code)]
mod structured_common;
use structured_common::{nmse, up};

fn backend() -> CubeWgpuBackend {
    cube_wgpu(None)
        .expect(
            "no Vulkan adapter for CubeCL: install mesa-vulkan-drivers (lavapipe) or a GPU driver",
        )
        .with_poisoned_outputs(true)
}

/// Bindings capped at 64 rows of 300 columns: the wider operands of the cases below span
/// several slabs.
const SPLIT_BYTES: u64 = 64 * 300 * 4;

/// Bindings capped at 64 rows of 96 columns (128 of 48): Q of the GQA case has 64-row slabs,
/// so windows of 37 rows cross them, and K and V are split elsewhere.
const NARROW_SPLIT_BYTES: u64 = 64 * 96 * 4;

fn split_backend(bytes: u64) -> CubeWgpuBackend {
    cube_wgpu(None)
        .expect("no Vulkan adapter for CubeCL")
        .with_binding_limit(bytes)
        .with_poisoned_outputs(true)
}

fn both() -> [CubeWgpuBackend; 2] {
    let split = split_backend(SPLIT_BYTES);
    // The wider operands really are split.
    for (rows, cols) in [(130, 200), (70, 300), (210, 128), (400, 64), (130, 257)] {
        assert!(
            split.slabs(rows, cols).unwrap().count() >= 2,
            "{rows}x{cols}"
        );
    }
    [backend(), split]
}

fn cpu() -> CpuBackend {
    CpuBackend::new()
}

fn down<B: Backend>(b: &B, t: &B::Tensor) -> Matrix {
    b.download(t).expect("download")
}

fn scaled(mut m: Matrix, s: f32) -> Matrix {
    for v in &mut m.data {
        *v *= s;
    }
    m
}

fn assert_close(what: &str, want: &Matrix, got: &Matrix, tol: f64) {
    let e = nmse(want, got);
    assert!(e <= tol, "{what}: nmse {e} (tolerance {tol})");
}

#[test]
fn linear_matches_the_reference() {
    for b in both() {
        // (tokens, cols, rows): one token, odd widths, X, W and Y each over several slabs on
        // the split backend.
        for (n, k, m) in [
            (1, 37, 5),
            (5, 1, 3),
            (37, 130, 70),
            (130, 96, 200),
            (200, 64, 37),
        ] {
            let x = heavy_tailed(n, k, 1);
            let w = heavy_tailed(m, k, 2);
            let c = cpu();
            let want = down(&c, &c.linear(&up(&c, &x), &up(&c, &w)).unwrap());
            let got = down(&b, &b.linear(&up(&b, &x), &up(&b, &w)).unwrap());
            assert_close(
                &format!("linear {n}x{k} by {m}x{k}"),
                &want,
                &got,
                tol::FORWARD_GEMM,
            );
        }
    }
}

#[test]
fn rms_norm_matches_the_reference() {
    for b in both() {
        for (rows, cols, eps) in [(1, 1, 1e-6), (1, 37, 1e-5), (70, 300, 1e-6), (130, 96, 0.0)] {
            let x = heavy_tailed(rows, cols, 3);
            let g = heavy_tailed(1, cols, 4);
            let c = cpu();
            let want = down(&c, &c.rms_norm(&up(&c, &x), &up(&c, &g), eps).unwrap());
            let got = down(&b, &b.rms_norm(&up(&b, &x), &up(&b, &g), eps).unwrap());
            assert_close(
                &format!("RMSNorm {rows}x{cols} eps {eps}"),
                &want,
                &got,
                tol::FORWARD_ELEMENTWISE,
            );
        }
    }
}

/// HF's tables for head_dim e at positions 0..seq (base 10 000), in f64 then rounded.
fn rope_tables(seq: usize, e: usize) -> (Matrix, Matrix) {
    let half = e / 2;
    let angle = |p: usize, i: usize| p as f64 * 10_000f64.powf(-(2.0 * i as f64) / e as f64);
    (
        Matrix::from_fn(seq, half, |p, i| angle(p, i).cos() as f32),
        Matrix::from_fn(seq, half, |p, i| angle(p, i).sin() as f32),
    )
}

#[test]
fn rope_matches_the_reference() {
    for b in both() {
        // (windows, seq, heads, e): one token, stacked windows, rows split on the split backend.
        for (windows, seq, heads, e) in
            [(1, 1, 1, 2), (3, 37, 6, 16), (3, 70, 4, 32), (1, 5, 1, 128)]
        {
            let x = heavy_tailed(windows * seq, heads * e, 5);
            let (cos, sin) = rope_tables(seq, e);
            let c = cpu();
            let mut want = up(&c, &x);
            c.rope(&mut want, &up(&c, &cos), &up(&c, &sin)).unwrap();
            let mut got = up(&b, &x);
            b.rope(&mut got, &up(&b, &cos), &up(&b, &sin)).unwrap();
            assert_close(
                &format!("RoPE {windows} windows of {seq}, {heads} heads of {e}"),
                &down(&c, &want),
                &down(&b, &got),
                tol::FORWARD_ELEMENTWISE,
            );
        }
    }
}

fn check_attention(
    b: &CubeWgpuBackend,
    windows: usize,
    seq: usize,
    heads: usize,
    kv: usize,
    e: usize,
    scale: f32,
) {
    let n = windows * seq;
    let q = scaled(heavy_tailed(n, heads * e, 6), scale);
    let k = scaled(heavy_tailed(n, kv * e, 7), scale);
    let v = heavy_tailed(n, kv * e, 8);
    let c = cpu();
    let want = c
        .attention(&up(&c, &q), &up(&c, &k), &up(&c, &v), heads, kv, seq)
        .unwrap();
    let got = b
        .attention(&up(b, &q), &up(b, &k), &up(b, &v), heads, kv, seq)
        .unwrap();
    assert_close(
        &format!("attention {windows} windows of {seq}, {heads} heads / {kv} KV of {e}"),
        &down(&c, &want),
        &down(b, &got),
        tol::FORWARD_GEMM,
    );
}

#[test]
fn attention_matches_the_reference() {
    let b = backend();
    // (windows, seq, heads, kv_heads, e, scale): three KV groups of two heads over three
    // windows of 37 (no multiple of the 64-query tile, nor of the key tile); full MHA over a
    // window of 70 (two query tiles, the second partial); one-token windows; head_dim 128
    // with two query heads per KV head; the largest head_dim, 256 (8-key tiles). Heavy-tailed scores at full scale are nearly one-hot;
    // at 1/8 the softmax spreads over many keys.
    for (windows, seq, heads, kv, e, scale) in [
        (3, 37, 6, 3, 16, 1.0),
        (3, 37, 6, 3, 16, 0.125),
        (1, 70, 4, 4, 32, 0.125),
        (5, 1, 4, 2, 16, 1.0),
        (2, 20, 4, 2, 128, 0.125),
        (1, 9, 2, 1, 256, 0.0625),
    ] {
        check_attention(&b, windows, seq, heads, kv, e, scale);
    }
}

#[test]
fn attention_across_slabs_matches_the_reference() {
    let b = split_backend(NARROW_SPLIT_BYTES);
    // Three windows of 37: Q (96 columns) in 64-row slabs, K and V in one; the second window
    // crosses Q's slab boundary (copied through scratch), the third starts inside Q's second
    // slab and 74 rows into K's only one.
    assert_eq!(b.slabs(111, 96).unwrap().slab_rows, 64);
    assert_eq!(b.slabs(111, 48).unwrap().count(), 1);
    check_attention(&b, 3, 37, 6, 3, 16, 0.125);
    // Two windows of 100: every window crosses slabs of Q, the second also K's (128 rows).
    assert_eq!(b.slabs(200, 48).unwrap().slab_rows, 128);
    check_attention(&b, 2, 100, 6, 3, 16, 0.125);
}

#[test]
fn attention_refuses_head_dim_over_256() {
    let b = backend();
    let (q, k) = (heavy_tailed(2, 257, 1), heavy_tailed(2, 257, 2));
    let err = b
        .attention(&up(&b, &q), &up(&b, &k), &up(&b, &k), 1, 1, 2)
        .unwrap_err();
    assert!(
        matches!(&err, KernelError::Unsupported(m) if m.contains("head_dim 257")),
        "{err}"
    );
}

#[test]
fn silu_mul_and_add_assign_match_the_reference() {
    for b in both() {
        for (rows, cols) in [(1, 1), (1, 37), (37, 41), (130, 96), (70, 300)] {
            // Gates far into both tails: SiLU saturates to 0 and to z.
            let gate = scaled(heavy_tailed(rows, cols, 9), 4.0);
            let upm = heavy_tailed(rows, cols, 10);
            let c = cpu();
            let want = down(&c, &c.silu_mul(&up(&c, &gate), &up(&c, &upm)).unwrap());
            let got = down(&b, &b.silu_mul(&up(&b, &gate), &up(&b, &upm)).unwrap());
            assert_close(
                &format!("SiLU-gate product {rows}x{cols}"),
                &want,
                &got,
                tol::FORWARD_ELEMENTWISE,
            );

            let mut want = up(&c, &gate);
            c.add_assign(&mut want, &up(&c, &upm)).unwrap();
            let mut got = up(&b, &gate);
            b.add_assign(&mut got, &up(&b, &upm)).unwrap();
            assert_close(
                &format!("residual add {rows}x{cols}"),
                &down(&c, &want),
                &down(&b, &got),
                tol::FORWARD_ELEMENTWISE,
            );
        }
    }
}

#[test]
fn embed_gathers_the_rows_exactly() {
    for b in both() {
        // A table over two slabs on the split backend.
        for (vocab, d, n) in [(1, 1, 1), (50, 37, 9), (400, 64, 130)] {
            let table = heavy_tailed(vocab, d, 11);
            let mut rng = Rng::new(12);
            let mut ids: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
            ids[0] = (vocab - 1) as u32;
            let c = cpu();
            let want = down(&c, &c.embed(&up(&c, &table), &ids).unwrap());
            let got = down(&b, &b.embed(&up(&b, &table), &ids).unwrap());
            assert_eq!(want.shape(), got.shape());
            for (i, (w, g)) in want.data.iter().zip(&got.data).enumerate() {
                assert_eq!(
                    w.to_bits(),
                    g.to_bits(),
                    "{vocab}x{d}, {n} ids: element {i}"
                );
            }
        }
        let c = cpu();
        let t = heavy_tailed(4, 3, 1);
        let want = down(&c, &c.embed(&up(&c, &t), &[]).unwrap());
        let got = down(&b, &b.embed(&up(&b, &t), &[]).unwrap());
        assert_eq!(want.shape(), got.shape());
    }
}

/// Runs the LM head over `chunks` (row counts of the vocabulary) on a backend, from a state
/// holding garbage (offset 0 must restart it), and returns the final state.
fn lm_head<B: Backend>(b: &B, h: &Matrix, w: &Matrix, chunks: &[usize], targets: &[u32]) -> Matrix {
    let garbage = heavy_tailed(h.rows, 3, 13);
    let mut state = up(b, &garbage);
    let ht = up(b, h);
    let mut offset = 0;
    for &len in chunks {
        let part = Matrix::new(
            len,
            w.cols,
            w.data[offset * w.cols..(offset + len) * w.cols].to_vec(),
        )
        .unwrap();
        b.lm_head_chunk(&mut state, &ht, &up(b, &part), offset, targets)
            .unwrap();
        offset += len;
    }
    down(b, &state)
}

#[test]
fn lm_head_matches_the_reference() {
    for b in both() {
        // (tokens, d, chunks): one token; uneven chunks, one wider than a cube; the split
        // backend splits the logits temporary of the 257-row chunk.
        for (n, d, chunks) in [
            (1, 37, vec![37, 40, 23]),
            (37, 64, vec![100, 300, 7]),
            (130, 96, vec![64, 257, 50]),
        ] {
            let vocab: usize = chunks.iter().sum();
            let h = heavy_tailed(n, d, 14);
            // Scaled so that the losses run from a few nats to a few hundred.
            let w = scaled(heavy_tailed(vocab, d, 15), 0.05);
            let mut rng = Rng::new(16);
            // Targets in every chunk, at both ends of the vocabulary, and some rows without.
            let targets: Vec<u32> = (0..n)
                .map(|t| match t % 5 {
                    0 if t > 0 => NO_TARGET,
                    1 => 0,
                    2 => (vocab - 1) as u32,
                    _ => rng.below(vocab) as u32,
                })
                .collect();
            let c = cpu();
            let want = lm_head(&c, &h, &w, &chunks, &targets);
            let got = lm_head(&b, &h, &w, &chunks, &targets);
            let (wn, gn) = (nll_from_state(&want), nll_from_state(&got));
            for t in 0..n {
                let e = (gn[t] - wn[t]).abs() / wn[t].abs().max(1.0);
                assert!(
                    e <= tol::NLL_REL,
                    "{n} tokens, d {d}, chunks {chunks:?}: row {t} (target {}) nll {} vs {}",
                    targets[t],
                    gn[t],
                    wn[t]
                );
                if targets[t] == NO_TARGET {
                    assert_eq!(got.get(t, 2), 0.0, "row {t}: z without a target");
                }
            }
        }
    }
}

fn same_error<T: std::fmt::Debug, U: std::fmt::Debug>(
    what: &str,
    want: Result<T, KernelError>,
    got: Result<U, KernelError>,
) {
    let want = want.expect_err(what).to_string();
    let got = got.expect_err(what).to_string();
    assert_eq!(got, want, "{what}");
}

#[test]
fn shape_errors_match_the_reference() {
    let (c, b) = (cpu(), backend());
    let m = |r, k, s| heavy_tailed(r, k, s);
    let pair = |x: &Matrix| (up(&c, x), up(&b, x));

    let (cx, bx) = pair(&m(4, 6, 1));
    let (cw, bw) = pair(&m(3, 5, 2));
    same_error("linear columns", c.linear(&cx, &cw), b.linear(&bx, &bw));

    let (cg, bg) = pair(&m(1, 5, 3));
    same_error(
        "RMSNorm width",
        c.rms_norm(&cx, &cg, 1e-6),
        b.rms_norm(&bx, &bg, 1e-6),
    );
    let (cg6, bg6) = pair(&m(1, 6, 3));
    for eps in [-1.0, f64::NAN] {
        same_error(
            &format!("RMSNorm eps {eps}"),
            c.rms_norm(&cx, &cg6, eps),
            b.rms_norm(&bx, &bg6, eps),
        );
    }

    // RoPE: tables that disagree, a head_dim that does not divide the row, partial windows.
    let (ccos, bcos) = pair(&m(2, 3, 4));
    let (csin, bsin) = pair(&m(2, 2, 5));
    same_error(
        "RoPE tables",
        c.rope(&mut cx.clone(), &ccos, &csin),
        b.rope(&mut bx.clone(), &bcos, &bsin),
    );
    let (ct2, bt2) = pair(&m(2, 2, 6));
    same_error(
        "RoPE head_dim",
        c.rope(&mut cx.clone(), &ct2, &ct2),
        b.rope(&mut bx.clone(), &bt2, &bt2),
    );
    let (ct3, bt3) = pair(&m(3, 3, 6));
    same_error(
        "RoPE windows",
        c.rope(&mut cx.clone(), &ct3, &ct3),
        b.rope(&mut bx.clone(), &bt3, &bt3),
    );

    // Attention: heads, K width, V vs K, rows, partial windows.
    let (cq, bq) = pair(&m(6, 8, 7));
    let (ck, bk) = pair(&m(6, 4, 8));
    let (ck5, bk5) = pair(&m(5, 4, 8));
    let (ck6, bk6) = pair(&m(6, 6, 8));
    for (what, heads, kv, seq) in [
        ("heads not a multiple", 2, 3, 3),
        ("no KV heads", 2, 0, 3),
        ("Q columns", 3, 3, 3),
        ("K width", 4, 1, 3),
        ("partial windows", 2, 1, 4),
        ("zero seq", 2, 1, 0),
    ] {
        same_error(
            what,
            c.attention(&cq, &ck, &ck, heads, kv, seq),
            b.attention(&bq, &bk, &bk, heads, kv, seq),
        );
    }
    same_error(
        "attention V vs K",
        c.attention(&cq, &ck, &ck6, 2, 1, 3),
        b.attention(&bq, &bk, &bk6, 2, 1, 3),
    );
    same_error(
        "attention rows",
        c.attention(&cq, &ck5, &ck5, 2, 1, 3),
        b.attention(&bq, &bk5, &bk5, 2, 1, 3),
    );

    let (cy, by) = pair(&m(4, 5, 9));
    same_error("SiLU shapes", c.silu_mul(&cx, &cy), b.silu_mul(&bx, &by));
    same_error(
        "add shapes",
        c.add_assign(&mut cx.clone(), &cy),
        b.add_assign(&mut bx.clone(), &by),
    );
    same_error("embed id", c.embed(&cx, &[0, 4]), b.embed(&bx, &[0, 4]));

    // LM head: W columns, state shape, target count.
    let (cs, bs) = pair(&m(4, 3, 10));
    let (cs2, bs2) = pair(&m(4, 2, 10));
    let (cw6, bw6) = pair(&m(7, 6, 11));
    same_error(
        "LM head W",
        c.lm_head_chunk(&mut cs.clone(), &cx, &cw, 0, &[0; 4]),
        b.lm_head_chunk(&mut bs.clone(), &bx, &bw, 0, &[0; 4]),
    );
    same_error(
        "LM head state",
        c.lm_head_chunk(&mut cs2.clone(), &cx, &cw6, 0, &[0; 4]),
        b.lm_head_chunk(&mut bs2.clone(), &bx, &bw6, 0, &[0; 4]),
    );
    same_error(
        "LM head targets",
        c.lm_head_chunk(&mut cs.clone(), &cx, &cw6, 0, &[0; 3]),
        b.lm_head_chunk(&mut bs.clone(), &bx, &bw6, 0, &[0; 3]),
    );
}
