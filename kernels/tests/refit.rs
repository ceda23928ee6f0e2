//! Properties of the re-fit reference (ALGORITHMS.md §12) in f64: the loss from H is the mean
//! squared output error on the samples, the gradients are the loss's derivatives, the
//! initialisations are what PERP's are, and the closed forms are stationary points that never
//! raise the loss.

use prunebench_kernels::cpu::{CpuBackend, CpuTensor};
use prunebench_kernels::ops::{AdamStep, LoraForm, LoraInputs};
use prunebench_kernels::rng::{heavy_tailed, Rng};
use prunebench_kernels::{Backend, Mask, Matrix};

const TOKENS: usize = 9;
const SAMPLES: usize = 3;

struct Setup {
    w: CpuTensor,
    wp: CpuTensor,
    mask: Mask,
    h: CpuTensor,
    /// The samples' tokens stacked, SAMPLES·TOKENS x cols.
    x: Matrix,
}

fn tensor(m: &Matrix) -> CpuTensor {
    CpuBackend::new().upload(m).unwrap()
}

fn setup(rows: usize, cols: usize, seed: u64) -> Setup {
    let b = CpuBackend::new();
    let w = heavy_tailed(rows, cols, seed);
    let x = heavy_tailed(SAMPLES * TOKENS, cols, seed + 1);
    let mut rng = Rng::new(seed + 2);
    let mut mask = Mask::empty(rows, cols);
    let mut wp = w.clone();
    for r in 0..rows {
        for c in 0..cols {
            if rng.uniform() < 0.5 {
                mask.set(r, c, true);
                wp.data[r * cols + c] = 0.0;
            }
        }
    }
    let mut h = b.zeros(cols, cols).unwrap();
    b.hessian_update(&mut h, 0, &tensor(&x), SAMPLES).unwrap();
    Setup {
        w: tensor(&w),
        wp: tensor(&wp),
        mask,
        h,
        x,
    }
}

/// Mean over samples, tokens and rows of the squared output error of Ŵ against W.
fn sample_loss(s: &Setup, w_hat: &CpuTensor) -> f64 {
    let (rows, cols) = (s.w.rows, s.w.cols);
    let mut sum = 0.0;
    for t in 0..s.x.rows {
        for r in 0..rows {
            let e: f64 = (0..cols)
                .map(|c| (w_hat.data[r * cols + c] - s.w.data[r * cols + c]) * s.x.get(t, c) as f64)
                .sum();
            sum += e * e;
        }
    }
    sum / (s.x.rows * rows) as f64
}

fn factors(rows: usize, cols: usize, rank: usize, seed: u64) -> (CpuTensor, CpuTensor) {
    let mut b = heavy_tailed(rows, rank, seed);
    let mut a = heavy_tailed(rank, cols, seed + 1);
    for v in b.data.iter_mut().chain(a.data.iter_mut()) {
        *v *= 0.1;
    }
    (tensor(&b), tensor(&a))
}

fn grad(
    s: &Setup,
    form: LoraForm,
    b: &CpuTensor,
    a: &CpuTensor,
) -> prunebench_kernels::ops::LoraGrad<CpuTensor> {
    let cpu = CpuBackend::new();
    let base = match form {
        LoraForm::Mask => Some(&s.wp),
        LoraForm::Scale => None,
    };
    let (delta, delta_h) = cpu.refit_base(base, &s.w, &s.h).unwrap();
    let sc = form.scale();
    cpu.lora_grad(LoraInputs {
        form,
        wp: &s.wp,
        mask: &s.mask,
        delta: &delta,
        delta_h: &delta_h,
        h: &s.h,
        b,
        a,
        s: sc,
        norm: 1.0 / (TOKENS * s.w.rows) as f64,
    })
    .unwrap()
}

fn merged(s: &Setup, form: LoraForm, b: &CpuTensor, a: &CpuTensor) -> CpuTensor {
    let sc = form.scale();
    CpuBackend::new()
        .lora_merge(&s.wp, &s.mask, b, a, form, sc)
        .unwrap()
}

#[test]
fn the_loss_from_h_is_the_mean_squared_error_on_the_samples() {
    let s = setup(7, 11, 1);
    let (b, a) = factors(7, 11, 3, 2);
    for form in [LoraForm::Mask, LoraForm::Scale] {
        let from_h = grad(&s, form, &b, &a).loss;
        let from_samples = sample_loss(&s, &merged(&s, form, &b, &a));
        assert!(
            (from_h - from_samples).abs() <= 1e-10 * from_samples,
            "{form:?}: {from_h} vs {from_samples}"
        );
    }
}

#[test]
fn gradients_equal_central_differences() {
    let s = setup(6, 9, 3);
    let (b, a) = factors(6, 9, 2, 4);
    for form in [LoraForm::Mask, LoraForm::Scale] {
        let g = grad(&s, form, &b, &a);
        let loss = |b: &CpuTensor, a: &CpuTensor| grad(&s, form, b, a).loss;
        // The loss is quadratic in B for fixed A and in A for fixed B, so a central difference
        // is exact up to rounding, and a wide step keeps the cancellation small.
        let eps = 1e-3;
        for (which, param, want) in [("B", &b, &g.db), ("A", &a, &g.da)] {
            for i in 0..param.data.len() {
                let mut plus = param.clone();
                let mut minus = param.clone();
                plus.data[i] += eps;
                minus.data[i] -= eps;
                let fd = if which == "B" {
                    (loss(&plus, &a) - loss(&minus, &a)) / (2.0 * eps)
                } else {
                    (loss(&b, &plus) - loss(&b, &minus)) / (2.0 * eps)
                };
                let got = want.data[i];
                assert!(
                    (fd - got).abs() <= 1e-6 * (fd.abs() + got.abs()) + 1e-12,
                    "{form:?} d{which}[{i}]: {got} vs finite difference {fd}"
                );
            }
        }
    }
}

#[test]
fn initialisations_reproduce_the_pruned_weight() {
    let s = setup(5, 8, 5);
    let rank = 16;
    // ScaleLoRA: A = B = 1/√r everywhere, so B·A = 1 exactly for r a power of 4.
    let ones = |r, c| tensor(&Matrix::from_fn(r, c, |_, _| 0.25));
    let w = merged(&s, LoraForm::Scale, &ones(5, rank), &ones(rank, 8));
    assert_eq!(w.data, s.wp.data);
    // MaskLoRA: B = 0, so the loss is the pruned weight's.
    let zeros = tensor(&Matrix::zeros(5, rank));
    let (_, a) = factors(5, 8, rank, 6);
    let l0 = grad(&s, LoraForm::Mask, &zeros, &a).loss;
    assert!((l0 - sample_loss(&s, &s.wp)).abs() <= 1e-10 * l0);
    assert_eq!(merged(&s, LoraForm::Mask, &zeros, &a).data, s.wp.data);
}

#[test]
fn the_merge_keeps_the_mask() {
    let s = setup(5, 8, 7);
    let (b, a) = factors(5, 8, 3, 8);
    for form in [LoraForm::Mask, LoraForm::Scale] {
        let w = merged(&s, form, &b, &a);
        for r in 0..5 {
            for c in 0..8 {
                assert_eq!(
                    w.data[r * 8 + c] == 0.0,
                    s.mask.get(r, c),
                    "{form:?} ({r},{c})"
                );
            }
        }
    }
}

#[test]
fn row_scales_are_stationary_and_never_raise_the_loss() {
    let s = setup(6, 10, 9);
    let cpu = CpuBackend::new();
    let mut w_hat = s.wp.clone();
    cpu.row_scale(&mut w_hat, &s.w, &s.h).unwrap();
    assert!(sample_loss(&s, &w_hat) <= sample_loss(&s, &s.wp));
    // d/ds_i of the loss at the solution: (ŵ_i − w_i) H ŵ_iᵀ = 0.
    let cols = 10;
    for i in 0..6 {
        let row = |t: &CpuTensor, c: usize| t.data[i * cols + c];
        let mut g = 0.0;
        let mut scale = 0.0;
        for a in 0..cols {
            for b in 0..cols {
                let h = s.h.data[a * cols + b];
                g += (row(&w_hat, a) - row(&s.w, a)) * h * row(&w_hat, b);
                scale += (row(&w_hat, a) * h * row(&w_hat, b)).abs();
            }
        }
        assert!(g.abs() <= 1e-10 * scale.max(1e-300), "row {i}: {g}");
    }
}

#[test]
fn the_norm_solve_is_the_damped_normal_equations_and_never_raises_the_loss() {
    let (rows, cols) = (6, 10);
    let s1 = setup(rows, cols, 11);
    let s2 = setup(rows, cols, 12);
    let cpu = CpuBackend::new();
    // Both linears read the same input: use the first one's H for both.
    let h = &s1.h;
    let pairs = [(&s1.wp, &s1.w), (&s2.wp, &s2.w)];
    let (m, rhs) = cpu.norm_system(&pairs, h).unwrap();
    let percdamp = 0.01;
    let delta = cpu.spd_solve(&m, &rhs, percdamp).unwrap();
    let c: Vec<f64> = delta.data.iter().map(|d| 1.0 + d).collect();
    // The objective Σ_l ½ tr((Ŵ_l diag(c) − W_l) H (…)ᵀ) and its damped gradient, directly.
    let objective = |c: &[f64]| -> f64 {
        let mut total = 0.0;
        for (wp, w) in pairs {
            for i in 0..rows {
                let e: Vec<f64> = (0..cols)
                    .map(|j| wp.data[i * cols + j] * c[j] - w.data[i * cols + j])
                    .collect();
                for a in 0..cols {
                    for b in 0..cols {
                        total += 0.5 * e[a] * h.data[a * cols + b] * e[b];
                    }
                }
            }
        }
        total
    };
    let mean_diag = (0..cols).map(|j| m.data[j * cols + j]).sum::<f64>() / cols as f64;
    let lambda = percdamp * mean_diag;
    for j in 0..cols {
        let eps = 1e-6;
        let mut plus = c.clone();
        let mut minus = c.clone();
        plus[j] += eps;
        minus[j] -= eps;
        let g = (objective(&plus) - objective(&minus)) / (2.0 * eps) + lambda * (c[j] - 1.0);
        assert!(
            g.abs() <= 1e-6 * mean_diag,
            "column {j}: damped gradient {g}"
        );
    }
    assert!(objective(&c) <= objective(&vec![1.0; cols]));
}

#[test]
fn adamw_is_pytorchs_first_step() {
    let cpu = CpuBackend::new();
    let t = |v: &[f64]| CpuTensor {
        rows: 1,
        cols: v.len(),
        data: v.to_vec(),
    };
    let (mut p, g) = (t(&[1.0, -2.0]), t(&[0.5, -0.25]));
    let (mut m, mut v) = (t(&[0.0, 0.0]), t(&[0.0, 0.0]));
    cpu.adamw_step(&mut p, &g, &mut m, &mut v, AdamStep::new(0.1, 1))
        .unwrap();
    // Step 1: m̂ = g, v̂ = g², so each parameter moves by lr·sign(g) (up to ε).
    assert!((p.data[0] - 0.9).abs() < 1e-7 && (p.data[1] + 1.9).abs() < 1e-7);
    assert!((m.data[0] - 0.05).abs() < 1e-15 && (v.data[1] - 0.001 * 0.0625).abs() < 1e-15);
}
