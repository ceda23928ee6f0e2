//! The wgpu backend's LLaMA forward ops (ALGORITHMS.md §14) against the f64 reference: odd
//! shapes (one row, widths that are no multiple of a workgroup, windows whose length is no
//! multiple of the attention tile, windows of one row, several windows, three KV groups, head
//! sizes from 16 to 160), heavy-tailed data, poisoned outputs, tensors split across bindings,
//! the LM head over chunks with targets in each and rows without one, and the shape errors.

#![cfg(feature = "wgpu")]

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::ops::{nll_from_state, tolerance, NO_TARGET};
use prunebench_kernels::rng::{heavy_tailed, Rng};
use prunebench_kernels::wgpu::WgpuBackend;
use prunebench_kernels::{Backend, KernelError, Matrix};

mod structured_common;
use structured_common::{max_rel, nmse, up};

fn backend() -> WgpuBackend {
    let b = WgpuBackend::new(None)
        .expect("no Vulkan adapter found: install mesa-vulkan-drivers (lavapipe) or a GPU driver");
    // Fresh outputs start as NaN, so an entry a kernel forgets to write fails the comparison.
    b.with_poisoned_outputs(true)
}

/// The same backend with storage bindings capped at `bytes`, so the test shapes come in
/// several windows.
fn split_backend(bytes: u64) -> WgpuBackend {
    backend().with_binding_limit(bytes)
}

fn down<B: Backend>(b: &B, t: &B::Tensor) -> Matrix {
    b.download(t).expect("download")
}

fn assert_close(what: &str, want: &Matrix, got: &Matrix, tol: f64) {
    let e = nmse(want, got);
    assert!(e <= tol, "{what}: nmse {e:e} > {tol:e}");
}

// ---- linear ----

fn check_linear(b: &WgpuBackend, shapes: &[(usize, usize, usize)]) {
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

#[test]
fn linear_matches_the_reference() {
    check_linear(&backend(), &[(1, 37, 5), (70, 37, 130), (130, 300, 65)]);
}

#[test]
fn linear_in_windows_matches_the_reference() {
    // 8 KiB: X, W and Y all come in windows of rows.
    let b = split_backend(8 << 10);
    check_linear(&b, &[(70, 37, 130), (130, 300, 65)]);
    assert!(b.split_ops() > 0);
}

// ---- RMSNorm ----

fn check_rms_norm(b: &WgpuBackend, shapes: &[(usize, usize)]) {
    let cpu = CpuBackend::new();
    for &(n, d) in shapes {
        let x = heavy_tailed(n, d, 3);
        let g = heavy_tailed(1, d, 4);
        for eps in [1e-5, 0.0] {
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
}

#[test]
fn rms_norm_matches_the_reference() {
    check_rms_norm(&backend(), &[(1, 37), (5, 300), (70, 1000), (3, 256)]);
}

#[test]
fn rms_norm_in_windows_matches_the_reference() {
    let b = split_backend(8 << 10);
    check_rms_norm(&b, &[(70, 300), (9, 1000)]);
    assert!(b.split_ops() > 0);
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

fn check_rope(b: &WgpuBackend, cases: &[(usize, usize, usize, usize)]) {
    let cpu = CpuBackend::new();
    for &(windows, seq, heads, e) in cases {
        let x = heavy_tailed(windows * seq, heads * e, 5);
        let (cos, sin) = rope_tables(seq, e);
        let (mut xc, mut xg) = (up(&cpu, &x), up(b, &x));
        cpu.rope(&mut xc, &up(&cpu, &cos), &up(&cpu, &sin)).unwrap();
        b.rope(&mut xg, &up(b, &cos), &up(b, &sin)).unwrap();
        let (want, got) = (down(&cpu, &xc), down(b, &xg));
        assert_close(
            &format!("RoPE {windows} windows of {seq}, {heads} heads of {e}"),
            &want,
            &got,
            tolerance::FORWARD_ELEMENTWISE,
        );
    }
}

#[test]
fn rope_matches_the_reference() {
    check_rope(
        &backend(),
        &[(3, 5, 3, 16), (3, 1, 4, 32), (2, 70, 2, 128), (1, 1, 1, 2)],
    );
}

#[test]
fn rope_in_windows_matches_the_reference() {
    let b = split_backend(8 << 10);
    check_rope(&b, &[(3, 70, 2, 32)]);
    assert!(b.split_ops() > 0);
}

// ---- attention ----

/// (windows, seq, heads, kv_heads, head_dim)
type AttnCase = (usize, usize, usize, usize, usize);

/// Heavy-tailed Q, K and V for a case (Student-t with outlier channels 10-100x, so some rows'
/// softmax is nearly one-hot and others' is spread).
fn attn_inputs(&(windows, seq, heads, kv, e): &AttnCase) -> (Matrix, Matrix, Matrix) {
    let n = windows * seq;
    (
        heavy_tailed(n, heads * e, 6),
        heavy_tailed(n, kv * e, 7),
        heavy_tailed(n, kv * e, 8),
    )
}

fn check_attention(b: &WgpuBackend, cases: &[AttnCase]) {
    let cpu = CpuBackend::new();
    for case in cases {
        let &(windows, seq, heads, kv, e) = case;
        let (q, k, v) = attn_inputs(case);
        let want = cpu
            .attention(&up(&cpu, &q), &up(&cpu, &k), &up(&cpu, &v), heads, kv, seq)
            .unwrap();
        let got = b
            .attention(&up(b, &q), &up(b, &k), &up(b, &v), heads, kv, seq)
            .unwrap();
        assert_close(
            &format!("attention {windows} windows of {seq}, {heads} heads / {kv} KV of {e}"),
            &down(&cpu, &want),
            &down(b, &got),
            tolerance::FORWARD_GEMM,
        );
    }
}

#[test]
fn attention_matches_the_reference() {
    check_attention(
        &backend(),
        &[
            // Three KV groups of two heads, windows longer than a query tile (64) and than a
            // key tile (64 keys at e = 16), neither a multiple of it.
            (3, 70, 6, 3, 16),
            // Windows of one row: each query sees only itself.
            (3, 1, 4, 4, 32),
            (1, 130, 4, 4, 32),
            // LLaMA's head size: 16 keys per tile.
            (2, 37, 2, 1, 128),
            // The widest variant: 12 keys per tile.
            (1, 20, 2, 2, 160),
        ],
    );
}

#[test]
fn attention_in_windows_matches_the_reference() {
    // 8 KiB: a window of 8 rows of Q is 3 KiB, so the 5 windows come two at a time.
    let b = split_backend(8 << 10);
    check_attention(&b, &[(5, 8, 6, 3, 16)]);
    assert!(b.split_ops() > 0);
}

#[test]
fn attention_with_windows_past_a_binding_matches_the_reference() {
    // 8 KiB: a window of 70 rows of Q (8 heads of 16: 35 KB) comes in slabs of 15 query rows,
    // against the window's K and V (one KV head: 4.4 KB) bound whole; and with 64 KiB, slabs
    // of whole 64-row query tiles of a 200-row window.
    let b = split_backend(8 << 10);
    check_attention(&b, &[(2, 70, 8, 1, 16)]);
    assert!(b.split_ops() > 0);
    let b = split_backend(64 << 10);
    check_attention(&b, &[(2, 200, 4, 2, 32)]);
    assert!(b.split_ops() > 0);
}

#[test]
fn attention_refuses_what_it_cannot_bind_or_hold() {
    let b = split_backend(8 << 10);
    let z = |r, c| b.zeros(r, c).unwrap();
    // A window of 64 rows of K of 64 columns (16 KiB) does not fit an 8 KiB binding.
    let e = b.attention(&z(64, 64), &z(64, 64), &z(64, 64), 4, 4, 64);
    match e {
        Err(KernelError::Unsupported(m)) => assert!(m.contains("window of 64 rows of K"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // head_dim 264 is past what a query's accumulator holds.
    let b = backend();
    let z = |r, c| b.zeros(r, c).unwrap();
    let e = b.attention(&z(2, 264), &z(2, 264), &z(2, 264), 1, 1, 2);
    match e {
        Err(KernelError::Unsupported(m)) => assert!(m.contains("head_dim 264"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---- elementwise ----

fn check_elementwise(b: &WgpuBackend, shapes: &[(usize, usize)]) {
    let cpu = CpuBackend::new();
    for &(r, c) in shapes {
        let g = heavy_tailed(r, c, 9);
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
        cpu.add_assign(&mut xc, &up(&cpu, &u)).unwrap();
        b.add_assign(&mut xg, &up(b, &u)).unwrap();
        // One f32 addition is the f64 sum rounded once: exact.
        let e = max_rel(&down(&cpu, &xc), &down(b, &xg));
        assert_eq!(e, 0.0, "residual add {r}x{c}: max relative error {e:e}");
    }
}

#[test]
fn elementwise_ops_match_the_reference() {
    check_elementwise(&backend(), &[(1, 37), (33, 301), (1, 1)]);
}

#[test]
fn elementwise_ops_in_chunks_match_the_reference() {
    let b = split_backend(8 << 10);
    check_elementwise(&b, &[(33, 301)]);
    assert!(b.split_ops() > 0);
}

#[test]
fn silu_survives_large_gates() {
    let b = &backend();
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

fn check_embed(b: &WgpuBackend, vocab: usize, d: usize, n: usize) {
    let cpu = CpuBackend::new();
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
    assert_eq!(want.data, got.data, "embedding {vocab}x{d}, {n} ids");
}

#[test]
fn embed_matches_the_reference() {
    let b = backend();
    check_embed(&b, 50, 37, 1);
    check_embed(&b, 300, 37, 70);
    check_embed(&b, 7, 300, 9);
}

#[test]
fn embed_in_windows_matches_the_reference() {
    // 8 KiB: the 300 x 37 table (44 KB) and the output come in windows of rows.
    let b = split_backend(8 << 10);
    check_embed(&b, 300, 37, 70);
    assert!(b.split_ops() > 0);
}

// ---- the chunked LM head ----

/// The state after every chunk of the head, from a state of garbage (offset 0 must ignore it).
fn lm_head<B: Backend>(b: &B, h: &Matrix, w: &Matrix, chunks: &[usize], targets: &[u32]) -> Matrix {
    let garbage = Matrix::from_fn(h.rows, 3, |r, c| [f32::NAN, -7.0, 1e30][(r + c) % 3]);
    let mut state = up(b, &garbage);
    let ht = up(b, h);
    let mut offset = 0;
    for &c in chunks {
        let part = Matrix::new(
            c,
            w.cols,
            w.data[offset * w.cols..(offset + c) * w.cols].to_vec(),
        )
        .unwrap();
        b.lm_head_chunk(&mut state, &ht, &up(b, &part), offset, targets)
            .unwrap();
        offset += c;
    }
    down(b, &state)
}

fn check_lm_head(b: &WgpuBackend, n: usize, d: usize, chunks: &[usize]) {
    let cpu = CpuBackend::new();
    let vocab: usize = chunks.iter().sum();
    let h = heavy_tailed(n, d, 13);
    let w = heavy_tailed(vocab, d, 14);
    let mut rng = Rng::new(15);
    // Targets in every chunk, the first and last vocabulary rows, and some rows without one.
    let mut targets: Vec<u32> = (0..n)
        .map(|t| match t % 5 {
            4 => NO_TARGET,
            _ => rng.below(vocab) as u32,
        })
        .collect();
    // Row i gets a target in chunk i (a single row: in the last chunk).
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
    let want = lm_head(&cpu, &h, &w, chunks, &targets);
    let got = lm_head(b, &h, &w, chunks, &targets);
    let (nw, ng) = (nll_from_state(&want), nll_from_state(&got));
    for t in 0..n {
        let rel = (ng[t] - nw[t]).abs() / nw[t].abs().max(1.0);
        assert!(
            rel <= tolerance::NLL_REL,
            "LM head {n}x{d}, chunks {chunks:?}, row {t} (target {}): nll {} vs {} (rel {rel:e})",
            targets[t],
            ng[t],
            nw[t]
        );
        if targets[t] == NO_TARGET {
            assert_eq!(got.get(t, 2), 0.0, "row {t} without a target has z set");
        }
    }
}

#[test]
fn lm_head_over_chunks_matches_the_reference() {
    let b = backend();
    check_lm_head(&b, 9, 37, &[100, 64, 37]);
    check_lm_head(&b, 1, 300, &[300, 1, 257]);
}

#[test]
fn lm_head_in_windows_matches_the_reference() {
    // 8 KiB: 40 rows of 100 logits (16 KB) and the 100 x 37 chunk come in windows of rows.
    let b = split_backend(8 << 10);
    check_lm_head(&b, 40, 37, &[100, 70, 90]);
    assert!(b.split_ops() > 0);
}

// ---- shape errors ----

/// The message of an error the op must return.
fn err<T>(r: Result<T, KernelError>) -> String {
    match r {
        Ok(_) => panic!("a bad input was accepted"),
        Err(e) => e.to_string(),
    }
}

/// Every op given one wrong input, as the error message it returns.
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
    out.push(err(b.add_assign(&mut z(3, 4), &z(3, 5))));
    out.push(err(b.embed(&z(5, 4), &[0, 5])));
    let (h, w) = (z(4, 6), z(10, 6));
    let t = [0, 1, 2, NO_TARGET];
    out.push(err(b.lm_head_chunk(&mut z(4, 3), &h, &z(10, 5), 0, &t)));
    out.push(err(b.lm_head_chunk(&mut z(4, 2), &h, &w, 0, &t)));
    out.push(err(b.lm_head_chunk(&mut z(3, 3), &h, &w, 0, &t)));
    out.push(err(b.lm_head_chunk(&mut z(4, 3), &h, &w, 0, &t[..3])));
    out
}

#[test]
fn shape_errors_are_the_references() {
    let want = shape_errors(&CpuBackend::new());
    let got = shape_errors(&backend());
    assert_eq!(got, want);
    // Each is a refusal of the input, not a device failure.
    assert!(want
        .iter()
        .all(|m| m.starts_with("shape mismatch") || m.starts_with("invalid argument")));
}
