//! The CPU reference of the §15 backward ops against central finite differences of the f64
//! forward: for an incoming gradient dY, each op's gradients must be those of the scalar
//! L = Σ dY ⊙ f(inputs), entry by entry, on odd shapes with heavy-tailed data (one token, a
//! row of tiny values where RMSNorm's ε dominates, repeated token ids).

use prunebench_kernels::cpu::{CpuBackend, CpuTensor};
use prunebench_kernels::rng::{heavy_tailed, heavy_tailed_positive};
use prunebench_kernels::suite::rope_tables;
use prunebench_kernels::{Backend, KernelError, Matrix, NO_TARGET};

fn cpu() -> CpuBackend {
    CpuBackend::new()
}

fn tensor(m: &Matrix) -> CpuTensor {
    CpuTensor {
        rows: m.rows,
        cols: m.cols,
        data: m.data.iter().map(|&v| v as f64).collect(),
    }
}

fn random(rows: usize, cols: usize, seed: u64) -> CpuTensor {
    tensor(&heavy_tailed(rows, cols, seed))
}

fn dot(a: &CpuTensor, b: &CpuTensor) -> f64 {
    assert_eq!((a.rows, a.cols), (b.rows, b.cols));
    a.data.iter().zip(&b.data).map(|(x, y)| x * y).sum()
}

/// Every entry of `grad` against the central difference of `loss` at `at` in that entry,
/// with a step relative to the entry. The truncation error is O(h²) of the third derivative
/// and the rounding error O(ε·|L|/h): with h ≈ 1e-5 both stay near 1e-9 of the gradient's
/// scale, so 1e-6 of the largest gradient entry separates a right formula from a wrong one
/// (a missing term moves entries by O(1) of that scale).
fn check_gradient(what: &str, at: &CpuTensor, grad: &CpuTensor, loss: impl Fn(&CpuTensor) -> f64) {
    assert_eq!((at.rows, at.cols), (grad.rows, grad.cols), "{what}: shape");
    let scale = grad
        .data
        .iter()
        .fold(0.0f64, |m, g| m.max(g.abs()))
        .max(1e-300);
    let mut x = at.clone();
    for i in 0..x.data.len() {
        let v = at.data[i];
        let h = 1e-5 * v.abs().max(1.0);
        x.data[i] = v + h;
        let up = loss(&x);
        x.data[i] = v - h;
        let down = loss(&x);
        x.data[i] = v;
        let fd = (up - down) / (2.0 * h);
        assert!(
            (fd - grad.data[i]).abs() <= 1e-6 * scale,
            "{what}[{i}]: analytic {} vs finite difference {fd} (scale {scale})",
            grad.data[i]
        );
    }
}

#[test]
fn linear_backward_is_the_gradient_of_the_linear() {
    let b = cpu();
    for (n, rows, cols) in [(1, 4, 5), (3, 7, 13), (6, 1, 9)] {
        let (x, w) = (random(n, cols, 1), random(rows, cols, 2));
        let dy = random(n, rows, 3);
        let (dx, dw) = b.linear_backward(&x, &w, &dy).unwrap();
        check_gradient("dX", &x, &dx, |x| dot(&dy, &b.linear(x, &w).unwrap()));
        check_gradient("dW", &w, &dw, |w| dot(&dy, &b.linear(&x, w).unwrap()));
    }
}

#[test]
fn rms_norm_backward_is_the_gradient_of_rms_norm() {
    let b = cpu();
    for (n, d, eps) in [(1, 7, 1e-5), (4, 13, 1e-5), (3, 5, 0.5)] {
        let mut x = random(n, d, 4);
        // The last row tiny: ε is most of its mean square, so a term that drops ε shows.
        for v in &mut x.data[(n - 1) * d..] {
            *v *= 1e-3;
        }
        let gamma = tensor(&heavy_tailed_positive(1, d, 5));
        let dy = random(n, d, 6);
        let (dx, dgamma) = b.rms_norm_backward(&x, &gamma, &dy, eps).unwrap();
        let f = |x: &CpuTensor, g: &CpuTensor| dot(&dy, &b.rms_norm(x, g, eps).unwrap());
        check_gradient("dx", &x, &dx, |x| f(x, &gamma));
        check_gradient("dγ", &gamma, &dgamma, |g| f(&x, g));
    }
}

#[test]
fn rope_backward_is_the_gradient_of_rope() {
    let b = cpu();
    // Two windows of three positions, three heads of four; one window of one position.
    for (windows, seq, heads, e) in [(2, 3, 3, 4), (1, 1, 2, 8)] {
        let (cos, sin) = rope_tables(10_000.0, e, seq);
        let (cos, sin) = (tensor(&cos), tensor(&sin));
        let x = random(windows * seq, heads * e, 7);
        let dy = random(windows * seq, heads * e, 8);
        let mut dx = dy.clone();
        b.rope_backward(&mut dx, &cos, &sin).unwrap();
        check_gradient("dx", &x, &dx, |x| {
            let mut y = x.clone();
            b.rope(&mut y, &cos, &sin).unwrap();
            dot(&dy, &y)
        });
    }
}

#[test]
fn silu_mul_backward_is_the_gradient_of_the_gate() {
    let b = cpu();
    for (n, c) in [(1, 5), (3, 11)] {
        let (g, u, da) = (random(n, c, 9), random(n, c, 10), random(n, c, 11));
        let (dg, du) = b.silu_mul_backward(&g, &u, &da).unwrap();
        check_gradient("dg", &g, &dg, |g| dot(&da, &b.silu_mul(g, &u).unwrap()));
        check_gradient("du", &u, &du, |u| dot(&da, &b.silu_mul(&g, u).unwrap()));
    }
}

#[test]
fn embed_backward_is_the_gradient_of_the_gather() {
    let b = cpu();
    let table = random(6, 4, 12);
    // Repeated ids, and id 3 never used: its row of dE is zero.
    let ids = [5u32, 0, 2, 5, 5, 0, 4, 1];
    let dh = random(ids.len(), 4, 13);
    let de = b.embed_backward(&dh, &ids, 6).unwrap();
    check_gradient("dE", &table, &de, |t| dot(&dh, &b.embed(t, &ids).unwrap()));
    assert!(de.data[3 * 4..4 * 4].iter().all(|&v| v == 0.0));
}

#[test]
fn backward_shapes_are_checked_before_any_work() {
    let b = cpu();
    let x = random(3, 5, 1);
    let shape_error = |r: Result<_, KernelError>| matches!(r, Err(KernelError::Shape(_)));
    assert!(shape_error(
        b.linear_backward(&x, &random(4, 5, 2), &random(3, 3, 3))
            .map(drop)
    ));
    let gamma = tensor(&heavy_tailed_positive(1, 5, 4));
    assert!(shape_error(
        b.rms_norm_backward(&x, &gamma, &random(2, 5, 5), 1e-5)
            .map(drop)
    ));
    assert!(shape_error(
        b.silu_mul_backward(&x, &x, &random(3, 4, 6)).map(drop)
    ));
    assert!(matches!(
        b.embed_backward(&random(2, 4, 7), &[0, 9], 6),
        Err(KernelError::InvalidArgument(_))
    ));
    assert!(shape_error(
        b.embed_backward(&random(3, 4, 7), &[0, 1], 6).map(drop)
    ));
}

/// Σ over rows with a target of scale·(lse_t − logit_t[target]) in f64: the loss whose gradient
/// the LM head's backward gives.
fn lm_loss(h: &CpuTensor, w: &CpuTensor, targets: &[u32], scale: f64) -> f64 {
    let logits = cpu().linear(h, w).unwrap();
    let v = w.rows;
    (0..h.rows)
        .filter(|&t| targets[t] != NO_TARGET)
        .map(|t| {
            let row = &logits.data[t * v..][..v];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
            scale * (lse - row[targets[t] as usize])
        })
        .sum()
}

#[test]
fn lm_head_backward_is_the_gradient_of_the_loss() {
    let b = cpu();
    // Five rows (one without a target), a vocabulary of 11 in chunks of 4 (the last short).
    let (n, d, vocab, chunk) = (5, 6, 11, 4);
    let h = random(n, d, 14);
    let w = random(vocab, d, 15);
    let targets = [10u32, 3, NO_TARGET, 4, 0];
    let scale = 1.0 / (n - 1) as f64;
    let logits = b.linear(&h, &w).unwrap();
    let lse = CpuTensor {
        rows: n,
        cols: 1,
        data: (0..n)
            .map(|t| {
                let row = &logits.data[t * vocab..][..vocab];
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                m + row.iter().map(|l| (l - m).exp()).sum::<f64>().ln()
            })
            .collect(),
    };
    let mut dh = CpuTensor::zeros(n, d);
    let mut dw = CpuTensor::zeros(0, d);
    for offset in (0..vocab).step_by(chunk) {
        let rows = chunk.min(vocab - offset);
        let part = CpuTensor {
            rows,
            cols: d,
            data: w.data[offset * d..(offset + rows) * d].to_vec(),
        };
        let g = b
            .lm_head_backward_chunk(&mut dh, &h, &part, offset, &targets, &lse, scale)
            .unwrap();
        dw.rows += g.rows;
        dw.data.extend(g.data);
    }
    check_gradient("dh", &h, &dh, |h| lm_loss(h, &w, &targets, scale));
    check_gradient("dW", &w, &dw, |w| lm_loss(&h, w, &targets, scale));
}

#[test]
fn attention_backward_is_the_gradient_of_causal_gqa_attention() {
    let b = cpu();
    // Three KV groups of three query heads each over two windows of four positions; one
    // window of one token (P = 1: only dV gets a gradient from it); plain multi-head.
    for (heads, kv_heads, e, seq, windows) in [(9, 3, 4, 4, 2), (2, 1, 4, 1, 1), (2, 2, 6, 5, 1)] {
        let n = windows * seq;
        let q = random(n, heads * e, 16);
        let k = random(n, kv_heads * e, 17);
        let v = random(n, kv_heads * e, 18);
        let d_o = random(n, heads * e, 19);
        let (o, lse) = b
            .attention_with_lse(&q, &k, &v, heads, kv_heads, seq)
            .unwrap();
        let (dq, dk, dv) = b
            .attention_backward(&q, &k, &v, &o, &lse, &d_o, heads, kv_heads, seq)
            .unwrap();
        let f = |q: &CpuTensor, k: &CpuTensor, v: &CpuTensor| {
            dot(&d_o, &b.attention(q, k, v, heads, kv_heads, seq).unwrap())
        };
        check_gradient("dQ", &q, &dq, |q| f(q, &k, &v));
        check_gradient("dK", &k, &dk, |k| f(&q, k, &v));
        check_gradient("dV", &v, &dv, |v| f(&q, &k, v));
    }
}
