//! The re-fit ops of ALGORITHMS.md §12 in f64, written out as the spec states them; the GEMMs
//! go through `linalg`.

use rayon::prelude::*;

use super::linalg::{self, gemm, View};
use super::CpuTensor;
use crate::error::Result;
use crate::ops::{check, AdamStep, LoraForm, LoraInputs};
use crate::tensor::Mask;

/// A·B for row-major A (m x k) and B (k x n).
fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    gemm(
        m,
        k,
        n,
        1.0,
        a,
        View::rows(0, k),
        b,
        View::rows(0, n),
        0.0,
        &mut c,
        View::rows(0, n),
    );
    c
}

pub fn refit_base(
    wp: Option<&CpuTensor>,
    w: &CpuTensor,
    h: &CpuTensor,
) -> Result<(CpuTensor, CpuTensor)> {
    let (rows, cols) = (w.rows, w.cols);
    check::refit_base(wp.map(|p| p.shape()), w.shape(), h.shape())?;
    let delta: Vec<f64> = match wp {
        Some(p) => p.data.iter().zip(&w.data).map(|(a, b)| a - b).collect(),
        None => w.data.iter().map(|v| -v).collect(),
    };
    let dh = matmul(&delta, &h.data, rows, cols, cols);
    Ok((
        CpuTensor {
            rows,
            cols,
            data: delta,
        },
        CpuTensor {
            rows,
            cols,
            data: dh,
        },
    ))
}

/// P of the form: the kept flags (mask form) or W_p (scale form), row-major.
fn p_of(form: LoraForm, wp: &CpuTensor, mask: &Mask) -> Vec<f64> {
    let cols = wp.cols;
    match form {
        LoraForm::Mask => (0..wp.data.len())
            .map(|i| {
                if mask.get(i / cols, i % cols) {
                    0.0
                } else {
                    1.0
                }
            })
            .collect(),
        LoraForm::Scale => wp.data.clone(),
    }
}

pub fn check_lora(inp: &LoraInputs<'_, CpuTensor, Mask>) -> Result<(usize, usize, usize)> {
    check::lora(
        inp.wp.shape(),
        (inp.mask.rows, inp.mask.cols),
        inp.delta.shape(),
        inp.delta_h.shape(),
        inp.h.shape(),
        inp.b.shape(),
        inp.a.shape(),
    )
}

pub fn lora_grad(inp: &LoraInputs<'_, CpuTensor, Mask>) -> Result<(CpuTensor, CpuTensor, f64)> {
    let (rows, cols, r) = check_lora(inp)?;
    let ba = matmul(&inp.b.data, &inp.a.data, rows, r, cols);
    let p = p_of(inp.form, inp.wp, inp.mask);
    let d: Vec<f64> = p.iter().zip(&ba).map(|(p, x)| p * x).collect();
    let dh = matmul(&d, &inp.h.data, rows, cols, cols);
    let s = inp.s;
    let mut loss = 0.0;
    let mut g = vec![0.0; rows * cols];
    for i in 0..rows * cols {
        let eh = inp.delta_h.data[i] + s * dh[i];
        let e = inp.delta.data[i] + s * d[i];
        loss += e * eh;
        g[i] = s * inp.norm * p[i] * eh;
    }
    let mut db = vec![0.0; rows * r];
    gemm(
        rows,
        cols,
        r,
        1.0,
        &g,
        View::rows(0, cols),
        &inp.a.data,
        View::transposed(0, cols),
        0.0,
        &mut db,
        View::rows(0, r),
    );
    let mut da = vec![0.0; r * cols];
    gemm(
        r,
        rows,
        cols,
        1.0,
        &inp.b.data,
        View::transposed(0, r),
        &g,
        View::rows(0, cols),
        0.0,
        &mut da,
        View::rows(0, cols),
    );
    Ok((
        CpuTensor {
            rows,
            cols: r,
            data: db,
        },
        CpuTensor {
            rows: r,
            cols,
            data: da,
        },
        0.5 * inp.norm * loss,
    ))
}

pub fn adamw_step(
    param: &mut CpuTensor,
    grad: &CpuTensor,
    m: &mut CpuTensor,
    v: &mut CpuTensor,
    st: AdamStep,
) -> Result<()> {
    check::adamw(param.shape(), grad.shape(), m.shape(), v.shape())?;
    let bc1 = 1.0 - st.beta1.powi(st.t as i32);
    let bc2 = 1.0 - st.beta2.powi(st.t as i32);
    for i in 0..param.data.len() {
        let g = grad.data[i];
        m.data[i] = st.beta1 * m.data[i] + (1.0 - st.beta1) * g;
        v.data[i] = st.beta2 * v.data[i] + (1.0 - st.beta2) * g * g;
        let denom = (v.data[i] / bc2).sqrt() + st.eps;
        param.data[i] -= st.lr * (m.data[i] / bc1) / denom;
    }
    Ok(())
}

pub fn lora_merge(
    wp: &CpuTensor,
    mask: &Mask,
    b: &CpuTensor,
    a: &CpuTensor,
    form: LoraForm,
    s: f64,
) -> Result<CpuTensor> {
    let (rows, cols, r) =
        check::lora_merge(wp.shape(), (mask.rows, mask.cols), b.shape(), a.shape())?;
    let ba = matmul(&b.data, &a.data, rows, r, cols);
    let data = (0..rows * cols)
        .map(|i| {
            if mask.get(i / cols, i % cols) {
                0.0
            } else {
                match form {
                    LoraForm::Mask => wp.data[i] + s * ba[i],
                    LoraForm::Scale => wp.data[i] * ba[i],
                }
            }
        })
        .collect();
    Ok(CpuTensor { rows, cols, data })
}

pub fn row_scale(w_hat: &mut CpuTensor, w: &CpuTensor, h: &CpuTensor) -> Result<CpuTensor> {
    let (rows, cols) = w_hat.shape();
    check::row_scale(w_hat.shape(), w.shape(), h.shape())?;
    let wh = matmul(&w_hat.data, &h.data, rows, cols, cols);
    let scales: Vec<f64> = (0..rows)
        .into_par_iter()
        .map(|i| {
            let row = i * cols..(i + 1) * cols;
            let num: f64 = wh[row.clone()]
                .iter()
                .zip(&w.data[row.clone()])
                .map(|(a, b)| a * b)
                .sum();
            let den: f64 = wh[row.clone()]
                .iter()
                .zip(&w_hat.data[row])
                .map(|(a, b)| a * b)
                .sum();
            if den == 0.0 {
                1.0
            } else {
                num / den
            }
        })
        .collect();
    for (i, s) in scales.iter().enumerate() {
        for v in &mut w_hat.data[i * cols..(i + 1) * cols] {
            *v *= s;
        }
    }
    Ok(CpuTensor {
        rows: 1,
        cols: rows,
        data: scales,
    })
}

pub fn norm_system(
    pairs: &[(&CpuTensor, &CpuTensor)],
    h: &CpuTensor,
) -> Result<(CpuTensor, CpuTensor)> {
    let cols = h.cols;
    check::norm_hessian(h.shape())?;
    let mut m = vec![0.0; cols * cols];
    let mut rhs = vec![0.0; cols];
    for (w_hat, w) in pairs {
        let rows = w_hat.rows;
        check::norm_pair(cols, w_hat.shape(), w.shape())?;
        linalg::gram_update(&mut m, cols, &w_hat.data, rows, 1.0, 1.0);
        let diff: Vec<f64> = w.data.iter().zip(&w_hat.data).map(|(a, b)| a - b).collect();
        let dh = matmul(&diff, &h.data, rows, cols, cols);
        for i in 0..rows {
            for j in 0..cols {
                rhs[j] += w_hat.data[i * cols + j] * dh[i * cols + j];
            }
        }
    }
    for (x, hv) in m.iter_mut().zip(&h.data) {
        *x *= hv;
    }
    Ok((
        CpuTensor {
            rows: cols,
            cols,
            data: m,
        },
        CpuTensor {
            rows: 1,
            cols,
            data: rhs,
        },
    ))
}

pub fn spd_solve(m: &CpuTensor, rhs: &CpuTensor, percdamp: f64) -> Result<CpuTensor> {
    let n = check::spd_solve(m.shape(), rhs.shape())?;
    let mean = (0..n).map(|i| m.data[i * n + i]).sum::<f64>() / n.max(1) as f64;
    if mean == 0.0 {
        return Ok(CpuTensor::zeros(1, n));
    }
    let mut a = m.data.clone();
    for i in 0..n {
        a[i * n + i] += percdamp * mean;
    }
    linalg::cholesky_lower(&mut a, n)?;
    // L y = rhs, then Lᵀ x = y.
    let mut y = rhs.data.clone();
    for i in 0..n {
        let s: f64 = (0..i).map(|k| a[i * n + k] * y[k]).sum();
        y[i] = (y[i] - s) / a[i * n + i];
    }
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| a[k * n + i] * y[k]).sum();
        y[i] = (y[i] - s) / a[i * n + i];
    }
    Ok(CpuTensor {
        rows: 1,
        cols: n,
        data: y,
    })
}
