//! The LLaMA forward ops of ALGORITHMS.md §14 in f64, as the spec states them: attention forms
//! each query's scores over its window's earlier keys, subtracts the max and normalises, with
//! no tiling (the reference is for reading, not speed); the LM head keeps every chunk's logits
//! only while folding them into the running (max, sum, target) state.

use rayon::prelude::*;

use super::linalg::{gemm, View};
use super::CpuTensor;
use crate::error::Result;
use crate::ops::{check, NO_TARGET};

/// Y = X·Wᵀ.
pub fn linear(x: &CpuTensor, w: &CpuTensor) -> Result<CpuTensor> {
    check::linear(x.shape(), w.shape())?;
    let (n, k, m) = (x.rows, x.cols, w.rows);
    let mut y = CpuTensor::zeros(n, m);
    gemm(
        n,
        k,
        m,
        1.0,
        &x.data,
        View::rows(0, k),
        &w.data,
        View::transposed(0, k),
        0.0,
        &mut y.data,
        View::rows(0, m),
    );
    Ok(y)
}

pub fn rms_norm(x: &CpuTensor, gamma: &CpuTensor, eps: f64) -> Result<CpuTensor> {
    check::rms_norm(x.shape(), gamma.shape(), eps)?;
    let d = x.cols;
    let mut y = x.clone();
    y.data.par_chunks_mut(d.max(1)).for_each(|row| {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, g) in row.iter_mut().zip(&gamma.data) {
            *v *= inv * g;
        }
    });
    Ok(y)
}

pub fn rope(x: &mut CpuTensor, cos: &CpuTensor, sin: &CpuTensor) -> Result<()> {
    let (seq, e) = check::rope(x.shape(), cos.shape(), sin.shape())?;
    let half = e / 2;
    let cols = x.cols;
    x.data
        .par_chunks_mut(cols)
        .enumerate()
        .for_each(|(t, row)| {
            let p = t % seq;
            let (c, s) = (&cos.data[p * half..][..half], &sin.data[p * half..][..half]);
            for head in row.chunks_mut(e) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * c[i] - b * s[i];
                    head[i + half] = b * c[i] + a * s[i];
                }
            }
        });
    Ok(())
}

pub fn attention(
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    heads: usize,
    kv_heads: usize,
    seq: usize,
) -> Result<CpuTensor> {
    Ok(attention_with_lse(q, k, v, heads, kv_heads, seq)?.0)
}

/// The output and each row's and head's log-sum-exp of its scaled scores.
pub fn attention_with_lse(
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    heads: usize,
    kv_heads: usize,
    seq: usize,
) -> Result<(CpuTensor, CpuTensor)> {
    let e = check::attention(q.shape(), k.shape(), v.shape(), heads, kv_heads, seq)?;
    let r = heads / kv_heads;
    let scale = 1.0 / (e as f64).sqrt();
    let (qc, kc) = (q.cols, k.cols);
    let mut out = CpuTensor::zeros(q.rows, qc);
    let mut lse = CpuTensor::zeros(q.rows, heads);
    out.data
        .par_chunks_mut(qc)
        .zip(lse.data.par_chunks_mut(heads))
        .enumerate()
        .for_each(|(t, (orow, lrow))| {
            let start = t - t % seq;
            let mut scores = vec![0.0; t - start + 1];
            for h in 0..heads {
                let g = h / r;
                let qh = &q.data[t * qc + h * e..][..e];
                for (j, sc) in scores.iter_mut().enumerate() {
                    let kj = &k.data[(start + j) * kc + g * e..][..e];
                    *sc = qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale;
                }
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut z = 0.0;
                for sc in scores.iter_mut() {
                    *sc = (*sc - m).exp();
                    z += *sc;
                }
                lrow[h] = m + z.ln();
                let oh = &mut orow[h * e..][..e];
                for (j, &p) in scores.iter().enumerate() {
                    let vj = &v.data[(start + j) * kc + g * e..][..e];
                    for (o, &vv) in oh.iter_mut().zip(vj) {
                        *o += p / z * vv;
                    }
                }
            }
        });
    Ok((out, lse))
}

pub fn silu_mul(gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
    check::same("SiLU-gate product: up vs gate", up.shape(), gate.shape())?;
    let mut y = gate.clone();
    y.data
        .par_iter_mut()
        .zip(&up.data)
        .for_each(|(g, u)| *g = *g / (1.0 + (-*g).exp()) * u);
    Ok(y)
}

pub fn residual_add(x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
    check::same("residual add", x.shape(), y.shape())?;
    x.data
        .par_iter_mut()
        .zip(&y.data)
        .for_each(|(a, b)| *a += b);
    Ok(())
}

pub fn embed(table: &CpuTensor, ids: &[u32]) -> Result<CpuTensor> {
    check::ids(ids, table.rows)?;
    let d = table.cols;
    let mut y = CpuTensor::zeros(ids.len(), d);
    for (row, &id) in y.data.chunks_mut(d.max(1)).zip(ids) {
        row.copy_from_slice(&table.data[id as usize * d..][..d]);
    }
    Ok(y)
}

pub fn lm_head_chunk(
    state: &mut CpuTensor,
    h: &CpuTensor,
    w_chunk: &CpuTensor,
    offset: usize,
    targets: &[u32],
) -> Result<()> {
    check::lm_head(
        state.shape(),
        h.shape(),
        w_chunk.shape(),
        offset,
        targets.len(),
    )?;
    let logits = linear(h, w_chunk)?;
    let v = w_chunk.rows;
    state
        .data
        .par_chunks_mut(3)
        .zip(logits.data.par_chunks(v.max(1)))
        .zip(targets)
        .for_each(|((st, l), &target)| {
            if offset == 0 {
                st.copy_from_slice(&[f64::NEG_INFINITY, 0.0, 0.0]);
            }
            let m = l.iter().cloned().fold(st[0], f64::max);
            let s = st[1] * (st[0] - m).exp() + l.iter().map(|x| (x - m).exp()).sum::<f64>();
            st[0] = m;
            st[1] = s;
            if target != NO_TARGET && (offset..offset + v).contains(&(target as usize)) {
                st[2] = l[target as usize - offset];
            }
        });
    Ok(())
}
