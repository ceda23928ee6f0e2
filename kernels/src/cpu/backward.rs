//! The backward ops of ALGORITHMS.md §15 in f64, as the spec states them: each takes the
//! forward's inputs and the gradient of its output. Checked against central finite
//! differences of the forward in `kernels/tests/backward_reference.rs`.

use rayon::prelude::*;

use super::linalg::{gemm, View};
use super::CpuTensor;
use crate::error::Result;
use crate::ops::{check, NO_TARGET};

/// (dX = dY·W, dW = dYᵀ·X) for Y = X·Wᵀ.
pub fn linear_backward(
    x: &CpuTensor,
    w: &CpuTensor,
    dy: &CpuTensor,
) -> Result<(CpuTensor, CpuTensor)> {
    check::linear_backward(x.shape(), w.shape(), dy.shape())?;
    let (n, cols, rows) = (x.rows, x.cols, w.rows);
    let mut dx = CpuTensor::zeros(n, cols);
    gemm(
        n,
        rows,
        cols,
        1.0,
        &dy.data,
        View::rows(0, rows),
        &w.data,
        View::rows(0, cols),
        0.0,
        &mut dx.data,
        View::rows(0, cols),
    );
    let mut dw = CpuTensor::zeros(rows, cols);
    gemm(
        rows,
        n,
        cols,
        1.0,
        &dy.data,
        View::transposed(0, rows),
        &x.data,
        View::rows(0, cols),
        0.0,
        &mut dw.data,
        View::rows(0, cols),
    );
    Ok((dx, dw))
}

/// (dx, dγ): per row r = (mean(x²) + eps)^(−1/2), g = γ ⊙ dy,
/// dx = r·g − (r³/d)·x·Σ_j g_j·x_j; dγ = Σ_rows dy ⊙ x·r, the rows added in order.
pub fn rms_norm_backward(
    x: &CpuTensor,
    gamma: &CpuTensor,
    dy: &CpuTensor,
    eps: f64,
) -> Result<(CpuTensor, CpuTensor)> {
    check::rms_norm_backward(x.shape(), gamma.shape(), dy.shape(), eps)?;
    let d = x.cols;
    let inv: Vec<f64> = x
        .data
        .par_chunks(d.max(1))
        .map(|row| 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt())
        .collect();
    let mut dx = CpuTensor::zeros(x.rows, d);
    dx.data
        .par_chunks_mut(d.max(1))
        .enumerate()
        .for_each(|(t, out)| {
            let (xr, dyr, r) = (&x.data[t * d..][..d], &dy.data[t * d..][..d], inv[t]);
            let dot: f64 = (0..d).map(|j| gamma.data[j] * dyr[j] * xr[j]).sum();
            let k = r * r * r / d as f64 * dot;
            for j in 0..d {
                out[j] = r * gamma.data[j] * dyr[j] - k * xr[j];
            }
        });
    let mut dgamma = CpuTensor::zeros(1, d);
    for (t, &r) in inv.iter().enumerate() {
        let (xr, dyr) = (&x.data[t * d..][..d], &dy.data[t * d..][..d]);
        for j in 0..d {
            dgamma.data[j] += dyr[j] * xr[j] * r;
        }
    }
    Ok((dx, dgamma))
}

/// The transposed rotation of [`super::forward::rope`], in place.
pub fn rope_backward(dx: &mut CpuTensor, cos: &CpuTensor, sin: &CpuTensor) -> Result<()> {
    let (seq, e) = check::rope(dx.shape(), cos.shape(), sin.shape())?;
    let half = e / 2;
    let cols = dx.cols;
    dx.data
        .par_chunks_mut(cols)
        .enumerate()
        .for_each(|(t, row)| {
            let p = t % seq;
            let (c, s) = (&cos.data[p * half..][..half], &sin.data[p * half..][..half]);
            for head in row.chunks_mut(e) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * c[i] + b * s[i];
                    head[i + half] = b * c[i] - a * s[i];
                }
            }
        });
    Ok(())
}

/// (dg, du) for a = silu(g) ⊙ u.
pub fn silu_mul_backward(
    gate: &CpuTensor,
    up: &CpuTensor,
    da: &CpuTensor,
) -> Result<(CpuTensor, CpuTensor)> {
    check::silu_mul_backward(gate.shape(), up.shape(), da.shape())?;
    let mut dg = gate.clone();
    let mut du = gate.clone();
    dg.data
        .par_iter_mut()
        .zip(du.data.par_iter_mut())
        .zip(up.data.par_iter().zip(&da.data))
        .for_each(|((g, u_out), (u, a))| {
            let z = *g;
            let sig = 1.0 / (1.0 + (-z).exp());
            *u_out = a * z * sig;
            *g = a * u * sig * (1.0 + z * (1.0 - sig));
        });
    Ok((dg, du))
}

/// dE [vocab, d]: each token's row of dh added to its id's row, tokens in order.
pub fn embed_backward(dh: &CpuTensor, ids: &[u32], vocab: usize) -> Result<CpuTensor> {
    check::embed_backward(dh.shape(), ids, vocab)?;
    let d = dh.cols;
    let mut de = CpuTensor::zeros(vocab, d);
    for (t, &id) in ids.iter().enumerate() {
        let row = &mut de.data[id as usize * d..][..d];
        for (o, v) in row.iter_mut().zip(&dh.data[t * d..][..d]) {
            *o += v;
        }
    }
    Ok(de)
}

/// The chunk's dlogits (see `Backend::lm_head_backward_chunk`), dh += dlogits·W and the
/// chunk's dW = dlogitsᵀ·h.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_backward_chunk(
    dh: &mut CpuTensor,
    h: &CpuTensor,
    w_chunk: &CpuTensor,
    offset: usize,
    targets: &[u32],
    lse: &CpuTensor,
    scale: f64,
) -> Result<CpuTensor> {
    check::lm_head_backward(
        dh.shape(),
        h.shape(),
        w_chunk.shape(),
        offset,
        targets.len(),
        lse.shape(),
    )?;
    let mut dlogits = super::forward::linear(h, w_chunk)?;
    let v = w_chunk.rows;
    dlogits
        .data
        .par_chunks_mut(v.max(1))
        .enumerate()
        .for_each(|(t, row)| {
            let target = targets[t];
            for (j, l) in row.iter_mut().enumerate() {
                *l = if target == NO_TARGET {
                    0.0
                } else {
                    let hit = if offset + j == target as usize {
                        1.0
                    } else {
                        0.0
                    };
                    scale * ((*l - lse.data[t]).exp() - hit)
                };
            }
        });
    let (n, d) = h.shape();
    gemm(
        n,
        v,
        d,
        1.0,
        &dlogits.data,
        View::rows(0, v),
        &w_chunk.data,
        View::rows(0, d),
        1.0,
        &mut dh.data,
        View::rows(0, d),
    );
    let mut dw = CpuTensor::zeros(v, d);
    gemm(
        v,
        n,
        d,
        1.0,
        &dlogits.data,
        View::transposed(0, v),
        &h.data,
        View::rows(0, d),
        0.0,
        &mut dw.data,
        View::rows(0, d),
    );
    Ok(dw)
}

/// (dQ, dK, dV) of causal GQA attention as the spec states FlashAttention-2's backward, with
/// P recomputed from L and D = rowsum(dO ⊙ O); windows in parallel, everything within a
/// window in order, so dK and dV (summed over a group's query heads) are the same bits on
/// every run.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    o: &CpuTensor,
    lse: &CpuTensor,
    d_o: &CpuTensor,
    heads: usize,
    kv_heads: usize,
    seq: usize,
) -> Result<(CpuTensor, CpuTensor, CpuTensor)> {
    let e = check::attention_backward(
        q.shape(),
        k.shape(),
        v.shape(),
        o.shape(),
        lse.shape(),
        d_o.shape(),
        heads,
        kv_heads,
        seq,
    )?;
    let (n, qc, kc) = (q.rows, q.cols, k.cols);
    let (r, scale) = (heads / kv_heads, 1.0 / (e as f64).sqrt());
    let (mut dq, mut dk, mut dv) = (
        CpuTensor::zeros(n, qc),
        CpuTensor::zeros(n, kc),
        CpuTensor::zeros(n, kc),
    );
    dq.data
        .par_chunks_mut(seq * qc)
        .zip(dk.data.par_chunks_mut(seq * kc))
        .zip(dv.data.par_chunks_mut(seq * kc))
        .enumerate()
        .for_each(|(wi, ((dqw, dkw), dvw))| {
            let row0 = wi * seq;
            let at = |m, t, col| head(m, row0 + t, col, e);
            for h in 0..heads {
                let g = h / r;
                for t in 0..seq {
                    let (qt, dot) = (at(q, t, h * e), at(d_o, t, h * e));
                    let big_d: f64 = dot.iter().zip(at(o, t, h * e)).map(|(a, b)| a * b).sum();
                    let l = lse.data[(row0 + t) * heads + h];
                    for j in 0..=t {
                        let (kj, vj) = (at(k, j, g * e), at(v, j, g * e));
                        let s = qt.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale;
                        let p = (s - l).exp();
                        let dp: f64 = dot.iter().zip(vj).map(|(a, b)| a * b).sum();
                        let ds = p * (dp - big_d);
                        for c in 0..e {
                            dqw[t * qc + h * e + c] += ds * kj[c] * scale;
                            dkw[j * kc + g * e + c] += ds * qt[c] * scale;
                            dvw[j * kc + g * e + c] += p * dot[c];
                        }
                    }
                }
            }
        });
    Ok((dq, dk, dv))
}

/// The `e` values of row `row` from column `col`: one head's slice.
fn head(m: &CpuTensor, row: usize, col: usize, e: usize) -> &[f64] {
    &m.data[row * m.cols + col..][..e]
}
