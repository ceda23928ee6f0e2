//! The structured-pruning ops of ALGORITHMS.md §11 in f64, as the spec states them: every
//! solve with Hinv[S,S] goes through its lower Cholesky factor L (Hinv[S,S] = L Lᵀ), with
//! Y = L⁻¹·Hinv[S,:] and Q = W[:,S]·L⁻ᵀ, so that ε_S = ½‖Q‖², W ← W − Q·Y and
//! Hinv ← Hinv − Yᵀ·Y.

use rayon::prelude::*;

use super::linalg::{self, gemm, View};
use super::CpuTensor;
use crate::error::Result;
use crate::ops::{check, HinvFactor, SegmentAxis, TaylorInputs, TaylorKind};

/// Hinv = UᵀU from §6's factor.
pub fn hinv_from_factor(f: &HinvFactor<CpuTensor>) -> CpuTensor {
    let n = f.u.cols;
    let mut hinv = vec![0.0; n * n];
    gemm(
        n,
        n,
        n,
        1.0,
        &f.u.data,
        View::transposed(0, n),
        &f.u.data,
        View::rows(0, n),
        0.0,
        &mut hinv,
        View::rows(0, n),
    );
    linalg::mirror(&mut hinv, n, linalg::Triangle::Lower);
    CpuTensor {
        rows: n,
        cols: n,
        data: hinv,
    }
}

/// Hinv[S,S] for the column set `s`.
fn gather_square(hinv: &CpuTensor, s: &[usize]) -> Vec<f64> {
    let n = hinv.cols;
    s.iter()
        .flat_map(|&i| s.iter().map(move |&j| (i, j)))
        .map(|(i, j)| hinv.data[i * n + j])
        .collect()
}

/// W[:,S], rows x |S|.
fn gather_cols(w: &CpuTensor, s: &[usize]) -> Vec<f64> {
    (0..w.rows)
        .flat_map(|r| s.iter().map(move |&c| w.data[r * w.cols + c]))
        .collect()
}

/// L⁻¹ of the lower Cholesky factor of Hinv[S,S] (k x k, row-major).
fn inverse_factor(hinv: &CpuTensor, s: &[usize]) -> Result<Vec<f64>> {
    let k = s.len();
    let mut l = gather_square(hinv, s);
    linalg::cholesky_lower(&mut l, k)?;
    Ok(linalg::invert_lower(&l, k))
}

/// Q = W[:,S]·L⁻ᵀ (rows x k).
fn q_of(w: &CpuTensor, s: &[usize], linv: &[f64]) -> Vec<f64> {
    let k = s.len();
    let ws = gather_cols(w, s);
    let mut q = vec![0.0; w.rows * k];
    gemm(
        w.rows,
        k,
        k,
        1.0,
        &ws,
        View::rows(0, k),
        linv,
        View::transposed(0, k),
        0.0,
        &mut q,
        View::rows(0, k),
    );
    q
}

fn half_sum_squares(v: &[f64]) -> f64 {
    0.5 * v.iter().map(|x| x * x).sum::<f64>()
}

pub fn obs_saliency(
    w: &CpuTensor,
    hinv: &CpuTensor,
    width: usize,
    groups: &[usize],
) -> Result<CpuTensor> {
    check::obs_saliency(w.shape(), hinv.shape(), width, groups)?;
    let scores: Vec<f64> = groups
        .par_iter()
        .map(|&g| {
            let s: Vec<usize> = (g * width..(g + 1) * width).collect();
            let linv = inverse_factor(hinv, &s)?;
            Ok(half_sum_squares(&q_of(w, &s, &linv)))
        })
        .collect::<Result<_>>()?;
    Ok(CpuTensor {
        rows: 1,
        cols: scores.len(),
        data: scores,
    })
}

/// The kind's term for one weight entry (Ḡ and F already scaled).
pub fn taylor_term(kind: TaylorKind, w: f64, gbar: f64, fisher: f64) -> f64 {
    match kind {
        TaylorKind::Taylor1 => (w * gbar).abs(),
        TaylorKind::Taylor2 => (w * fisher * w).abs(),
        TaylorKind::TaylorMix => (w * gbar - 0.5 * w * fisher * w).abs(),
    }
}

pub fn taylor_saliency(inp: TaylorInputs<'_, CpuTensor>) -> Result<CpuTensor> {
    let n = check::taylor(&inp, |t: &CpuTensor| t.shape())?;
    let (rows, cols) = inp.w.shape();
    let term = |i: usize| {
        let gbar = inp.grad_sum.map_or(0.0, |g| inp.grad_scale * g.data[i]);
        let fisher = inp.grad_sq.map_or(0.0, |f| inp.fisher_scale * f.data[i]);
        taylor_term(inp.kind, inp.w.data[i], gbar, fisher)
    };
    let width = inp.width;
    let scores: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|k| match inp.axis {
            SegmentAxis::Rows => (k * width * cols..(k + 1) * width * cols).map(term).sum(),
            SegmentAxis::Cols => (0..rows)
                .flat_map(|r| (k * width..(k + 1) * width).map(move |c| r * cols + c))
                .map(term)
                .sum(),
        })
        .collect();
    Ok(CpuTensor {
        rows: 1,
        cols: n,
        data: scores,
    })
}

pub fn structured_update(
    w: &mut CpuTensor,
    hinv: &mut CpuTensor,
    removed: &[usize],
) -> Result<f64> {
    check::structured_update(w.shape(), hinv.shape(), removed)?;
    let (rows, n, k) = (w.rows, w.cols, removed.len());
    let linv = inverse_factor(hinv, removed)?;
    let q = q_of(w, removed, &linv);
    let loss = half_sum_squares(&q);
    // Y = L⁻¹·Hinv[S,:] (k x n).
    let hs: Vec<f64> = removed
        .iter()
        .flat_map(|&i| hinv.data[i * n..(i + 1) * n].iter().copied())
        .collect();
    let mut y = vec![0.0; k * n];
    gemm(
        k,
        k,
        n,
        1.0,
        &linv,
        View::rows(0, k),
        &hs,
        View::rows(0, n),
        0.0,
        &mut y,
        View::rows(0, n),
    );
    gemm(
        rows,
        k,
        n,
        -1.0,
        &q,
        View::rows(0, k),
        &y,
        View::rows(0, n),
        1.0,
        &mut w.data,
        View::rows(0, n),
    );
    gemm(
        n,
        k,
        n,
        -1.0,
        &y,
        View::transposed(0, n),
        &y,
        View::rows(0, n),
        1.0,
        &mut hinv.data,
        View::rows(0, n),
    );
    // What the algebra makes zero is zero, not a rounding residue.
    for r in 0..rows {
        for &c in removed {
            w.data[r * n + c] = 0.0;
        }
    }
    for &i in removed {
        hinv.data[i * n..(i + 1) * n].fill(0.0);
        for r in 0..n {
            hinv.data[r * n + i] = 0.0;
        }
    }
    Ok(loss)
}

pub fn compact(w: &CpuTensor, rows: Option<&[usize]>, cols: Option<&[usize]>) -> Result<CpuTensor> {
    let (nr, nc) = check::compact(w.shape(), rows, cols)?;
    let all_rows: Vec<usize>;
    let rows = match rows {
        Some(r) => r,
        None => {
            all_rows = (0..w.rows).collect();
            &all_rows
        }
    };
    let data: Vec<f64> = rows
        .iter()
        .flat_map(|&r| {
            let row = &w.data[r * w.cols..(r + 1) * w.cols];
            match cols {
                Some(c) => c.iter().map(|&j| row[j]).collect::<Vec<_>>(),
                None => row.to_vec(),
            }
        })
        .collect();
    Ok(CpuTensor {
        rows: nr,
        cols: nc,
        data,
    })
}
