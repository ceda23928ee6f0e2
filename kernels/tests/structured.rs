//! Properties of the structured-pruning reference (ALGORITHMS.md §11) in f64: the update is
//! the closed-form least squares on the kept columns, successive updates add up their losses,
//! the saliency is the update's loss, the Taylor scores and the gradient sum are the sums they
//! are defined as, the explicit inverse inverts, compaction gathers, and bad inputs are
//! refused before anything is written.

use prunebench_kernels::cpu::{CpuBackend, CpuTensor};
use prunebench_kernels::ops::PERCDAMP;
use prunebench_kernels::rng::{heavy_tailed, heavy_tailed_positive, Rng};
use prunebench_kernels::{Backend, KernelError, SegmentAxis, TaylorInputs, TaylorKind};

fn cpu() -> CpuBackend {
    CpuBackend::new()
}

fn tensor(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> CpuTensor {
    CpuTensor {
        rows,
        cols,
        data: (0..rows * cols).map(|i| f(i / cols, i % cols)).collect(),
    }
}

fn dims(t: &CpuTensor) -> (usize, usize) {
    (t.rows, t.cols)
}

fn from_matrix(m: &prunebench_kernels::Matrix) -> CpuTensor {
    cpu().upload(m).unwrap()
}

/// Calibration-like tokens: normal entries with column scales from 0.5 to 5 and a shared
/// low-rank part, so H is correlated and its diagonal spread, but the damped system stays
/// well enough conditioned for 1e-9 in f64. Column `dead` (if any) is never active.
fn tokens(t: usize, cols: usize, dead: Option<usize>, seed: u64) -> CpuTensor {
    let mut rng = Rng::new(seed);
    let scale: Vec<f64> = (0..cols).map(|_| 0.5 + 4.5 * rng.uniform()).collect();
    let mix: Vec<f64> = (0..3 * cols).map(|_| rng.normal()).collect();
    let mut x = tensor(t, cols, |_, _| 0.0);
    for r in 0..t {
        let z: Vec<f64> = (0..3).map(|_| rng.normal()).collect();
        for c in 0..cols {
            let low: f64 = (0..3).map(|k| z[k] * mix[k * cols + c]).sum();
            x.data[r * cols + c] = scale[c] * (rng.normal() + 0.5 * low);
        }
        if let Some(d) = dead {
            x.data[r * cols + d] = 0.0;
        }
    }
    x
}

fn hessian(x: &CpuTensor) -> CpuTensor {
    let b = cpu();
    let mut h = b.zeros(x.cols, x.cols).unwrap();
    b.hessian_update(&mut h, 0, x, 1).unwrap();
    h
}

/// H + λI with §6's handling, written out here: a zero diagonal becomes 1 first, and
/// λ = PERCDAMP of the mean diagonal after that.
fn damped(h: &CpuTensor) -> (CpuTensor, Vec<usize>, f64) {
    let n = h.cols;
    let mut hd = h.clone();
    let dead: Vec<usize> = (0..n).filter(|&j| h.data[j * n + j] == 0.0).collect();
    for &j in &dead {
        hd.data[j * n + j] = 1.0;
    }
    let lambda = PERCDAMP * (0..n).map(|j| hd.data[j * n + j]).sum::<f64>() / n as f64;
    for j in 0..n {
        hd.data[j * n + j] += lambda;
    }
    (hd, dead, lambda)
}

fn matmul(a: &CpuTensor, b: &CpuTensor) -> CpuTensor {
    assert_eq!(a.cols, b.rows);
    tensor(a.rows, b.cols, |i, j| {
        (0..a.cols)
            .map(|k| a.data[i * a.cols + k] * b.data[k * b.cols + j])
            .sum()
    })
}

/// A·B⁻¹ for square B, by Gauss-Jordan elimination with partial pivoting: independent of the
/// Cholesky route the reference takes.
fn right_divide(a: &CpuTensor, b: &CpuTensor) -> CpuTensor {
    let n = b.rows;
    assert_eq!((b.cols, a.cols), (n, n));
    // Solve Bᵀ·Xᵀ = Aᵀ, with [Bᵀ | Aᵀ] reduced.
    let m = a.rows;
    let w = n + m;
    let mut aug: Vec<f64> = (0..n)
        .flat_map(|i| {
            (0..w).map(move |j| {
                if j < n {
                    b.data[j * n + i]
                } else {
                    a.data[(j - n) * n + i]
                }
            })
        })
        .collect();
    for col in 0..n {
        let p = (col..n)
            .max_by(|&x, &y| aug[x * w + col].abs().total_cmp(&aug[y * w + col].abs()))
            .unwrap();
        for j in 0..w {
            aug.swap(col * w + j, p * w + j);
        }
        let d = aug[col * w + col];
        for j in 0..w {
            aug[col * w + j] /= d;
        }
        for r in (0..n).filter(|&r| r != col) {
            let f = aug[r * w + col];
            if f != 0.0 {
                for j in 0..w {
                    aug[r * w + j] -= f * aug[col * w + j];
                }
            }
        }
    }
    tensor(m, n, |i, j| aug[j * w + n + i])
}

fn gather(t: &CpuTensor, rows: &[usize], cols: &[usize]) -> CpuTensor {
    tensor(rows.len(), cols.len(), |i, j| {
        t.data[rows[i] * t.cols + cols[j]]
    })
}

/// ‖got − want‖ / ‖want‖ (Frobenius).
fn rel_err(got: &CpuTensor, want: &CpuTensor) -> f64 {
    assert_eq!(dims(got), dims(want));
    let num: f64 = got
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| (a - b).powi(2))
        .sum();
    let den: f64 = want.data.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

fn rel(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs()
}

/// ½·tr(ΔW Hd ΔWᵀ).
fn quadratic_loss(dw: &CpuTensor, hd: &CpuTensor) -> f64 {
    let dwh = matmul(dw, hd);
    0.5 * dwh
        .data
        .iter()
        .zip(&dw.data)
        .map(|(a, b)| a * b)
        .sum::<f64>()
}

struct Layer {
    w: CpuTensor,
    h: CpuTensor,
    hinv: CpuTensor,
}

fn layer(rows: usize, cols: usize, dead: Option<usize>, seed: u64) -> Layer {
    let h = hessian(&tokens(3 * cols, cols, dead, seed));
    let hinv = cpu().hinv_explicit(&h, PERCDAMP).unwrap().hinv;
    Layer {
        w: from_matrix(&heavy_tailed(rows, cols, seed + 1)),
        h,
        hinv,
    }
}

fn complement(n: usize, removed: &[usize]) -> Vec<usize> {
    (0..n).filter(|c| !removed.contains(c)).collect()
}

#[test]
fn explicit_inverse_inverts_the_damped_hessian() {
    let l = layer(1, 37, Some(11), 1);
    let out = cpu().hinv_explicit(&l.h, PERCDAMP).unwrap();
    let (hd, dead, lambda) = damped(&l.h);
    assert_eq!(out.dead, dead);
    assert_eq!(dead, vec![11]);
    assert!(rel(out.damp, lambda) < 1e-12, "{} vs {lambda}", out.damp);
    let prod = matmul(&out.hinv, &hd);
    let worst = (0..37 * 37)
        .map(|i| (prod.data[i] - if i / 37 == i % 37 { 1.0 } else { 0.0 }).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-9, "Hinv·(H + λI) is off the identity by {worst}");
    // Symmetric as the inverse of a symmetric matrix is.
    for i in 0..37 {
        for j in 0..i {
            assert_eq!(out.hinv.data[i * 37 + j], out.hinv.data[j * 37 + i]);
        }
    }
}

#[test]
fn one_update_is_the_least_squares_fit_on_the_kept_columns() {
    // A dead column among the kept ones: its damped diagonal is 1 + λ, as §6 makes it.
    let (rows, cols) = (7, 30);
    let l = layer(rows, cols, Some(4), 2);
    let removed = [2, 3, 9, 17, 18, 19, 25];
    let kept = complement(cols, &removed);
    let (mut w, mut hinv) = (l.w.clone(), l.hinv.clone());
    let loss = cpu()
        .structured_update(&mut w, &mut hinv, &removed)
        .unwrap();

    let (hd, _, _) = damped(&l.h);
    let all: Vec<usize> = (0..cols).collect();
    let want = right_divide(
        &matmul(&l.w, &gather(&hd, &all, &kept)),
        &gather(&hd, &kept, &kept),
    );
    let all_rows: Vec<usize> = (0..rows).collect();
    let got = gather(&w, &all_rows, &kept);
    let e = rel_err(&got, &want);
    assert!(e < 1e-9, "W'[:,R] is off the least squares by {e}");
    for r in 0..rows {
        for &c in &removed {
            assert_eq!(w.data[r * cols + c], 0.0, "W[{r},{c}] not removed");
        }
    }
    // The returned loss is what the fit costs.
    let dw = tensor(rows, cols, |r, c| {
        l.w.data[r * cols + c] - w.data[r * cols + c]
    });
    assert!(rel(loss, quadratic_loss(&dw, &hd)) < 1e-9);
    // The downdated Hinv is the inverse of Hd on the kept columns, zero elsewhere.
    let inv_kept = right_divide(
        &tensor(kept.len(), kept.len(), |i, j| (i == j) as u8 as f64),
        &gather(&hd, &kept, &kept),
    );
    assert!(rel_err(&gather(&hinv, &kept, &kept), &inv_kept) < 1e-9);
    for &i in &removed {
        for j in 0..cols {
            assert_eq!(hinv.data[i * cols + j], 0.0);
            assert_eq!(hinv.data[j * cols + i], 0.0);
        }
    }
}

#[test]
fn successive_updates_add_up_to_the_measured_loss() {
    let (rows, cols) = (9, 40);
    let l = layer(rows, cols, None, 3);
    let (mut w, mut hinv) = (l.w.clone(), l.hinv.clone());
    let rounds: [&[usize]; 4] = [&[5, 6, 7, 8], &[0, 21], &[30, 31, 32, 33, 34], &[12]];
    let mut summed = 0.0;
    let b = cpu();
    for s in rounds {
        summed += b.structured_update(&mut w, &mut hinv, s).unwrap();
    }
    let (hd, _, _) = damped(&l.h);
    let dw = tensor(rows, cols, |r, c| {
        l.w.data[r * cols + c] - w.data[r * cols + c]
    });
    let measured = quadratic_loss(&dw, &hd);
    assert!(
        rel(summed, measured) < 1e-9,
        "summed ε {summed} vs ½·tr(ΔW Hd ΔWᵀ) {measured}"
    );
    // And the result is the one-shot least squares on what is left.
    let removed: Vec<usize> = {
        let mut v: Vec<usize> = rounds.concat();
        v.sort_unstable();
        v
    };
    let kept = complement(cols, &removed);
    let all: Vec<usize> = (0..cols).collect();
    let all_rows: Vec<usize> = (0..rows).collect();
    let want = right_divide(
        &matmul(&l.w, &gather(&hd, &all, &kept)),
        &gather(&hd, &kept, &kept),
    );
    assert!(rel_err(&gather(&w, &all_rows, &kept), &want) < 1e-9);
}

#[test]
fn saliency_is_the_loss_of_removing_the_group() {
    let (rows, cols, width) = (6, 35, 5);
    let l = layer(rows, cols, None, 4);
    let b = cpu();
    let groups = [0, 2, 3, 6];
    let scores = b.obs_saliency(&l.w, &l.hinv, width, &groups).unwrap();
    assert_eq!(dims(&scores), (1, groups.len()));
    for (k, &g) in groups.iter().enumerate() {
        let s: Vec<usize> = (g * width..(g + 1) * width).collect();
        let (mut w, mut hinv) = (l.w.clone(), l.hinv.clone());
        let loss = b.structured_update(&mut w, &mut hinv, &s).unwrap();
        assert!(
            rel(scores.data[k], loss) < 1e-12,
            "group {g}: saliency {} vs update loss {loss}",
            scores.data[k]
        );
    }
    // Groups of different saliency are told apart (the check above is not vacuous).
    assert!(rel(scores.data[0], scores.data[1]) > 1e-3);

    // Single channels: ½‖W[:,c]‖² / Hinv[c,c].
    let all: Vec<usize> = (0..cols).collect();
    let one = b.obs_saliency(&l.w, &l.hinv, 1, &all).unwrap();
    for c in 0..cols {
        let col_sq: f64 = (0..rows).map(|r| l.w.data[r * cols + c].powi(2)).sum();
        let want = 0.5 * col_sq / l.hinv.data[c * cols + c];
        assert!(rel(one.data[c], want) < 1e-12, "channel {c}");
    }
}

/// The kind's term, written from the definitions of §11.
fn term(kind: TaylorKind, w: f64, gbar: f64, f: f64) -> f64 {
    match kind {
        TaylorKind::Taylor1 => (w * gbar).abs(),
        TaylorKind::Taylor2 => (w * f * w).abs(),
        TaylorKind::TaylorMix => (w * gbar - 0.5 * w * f * w).abs(),
    }
}

#[test]
fn taylor_scores_are_sums_over_each_segment() {
    let (rows, cols) = (12, 18);
    let w = from_matrix(&heavy_tailed(rows, cols, 5));
    let g = from_matrix(&heavy_tailed(rows, cols, 6));
    let a = from_matrix(&heavy_tailed_positive(rows, cols, 7));
    let (n, c) = (5.0, 100.0);
    let (gs, fs) = (1.0 / n, 1.0 / (c * c * n));
    let b = cpu();
    for kind in TaylorKind::ALL {
        for (axis, width) in [
            (SegmentAxis::Rows, 1),
            (SegmentAxis::Rows, 4),
            (SegmentAxis::Cols, 3),
            (SegmentAxis::Cols, 18),
        ] {
            let got = b
                .taylor_saliency(TaylorInputs {
                    w: &w,
                    grad_sum: kind.needs_mean_grad().then_some(&g),
                    grad_sq: kind.needs_fisher().then_some(&a),
                    grad_scale: gs,
                    fisher_scale: fs,
                    kind,
                    axis,
                    width,
                })
                .unwrap();
            let along = if axis == SegmentAxis::Rows {
                rows
            } else {
                cols
            };
            assert_eq!(dims(&got), (1, along / width));
            for k in 0..along / width {
                let mut want = 0.0;
                for r in 0..rows {
                    for cc in 0..cols {
                        let i = if axis == SegmentAxis::Rows { r } else { cc };
                        if i / width == k {
                            let j = r * cols + cc;
                            want += term(kind, w.data[j], gs * g.data[j], fs * a.data[j]);
                        }
                    }
                }
                assert!(
                    rel(got.data[k], want) < 1e-12,
                    "{} {axis:?} width {width} segment {k}: {} vs {want}",
                    kind.name(),
                    got.data[k]
                );
            }
        }
    }
}

#[test]
fn taylor_mix_reads_both_statistics() {
    // The mix differs from either term alone, so a backend reading one statistic fails.
    let w = tensor(1, 2, |_, c| [2.0, -1.0][c]);
    let g = tensor(1, 2, |_, c| [3.0, 4.0][c]);
    let a = tensor(1, 2, |_, c| [8.0, 2.0][c]);
    let inp = |kind| TaylorInputs {
        w: &w,
        grad_sum: Some(&g),
        grad_sq: Some(&a),
        grad_scale: 0.5,
        fisher_scale: 0.25,
        kind,
        axis: SegmentAxis::Rows,
        width: 1,
    };
    let b = cpu();
    // Ḡ = [1.5, 2], F = [2, 0.5]: W·Ḡ = [3, −2], W·F·W = [8, 0.5].
    assert_eq!(
        b.taylor_saliency(inp(TaylorKind::Taylor1)).unwrap().data,
        vec![5.0]
    );
    assert_eq!(
        b.taylor_saliency(inp(TaylorKind::Taylor2)).unwrap().data,
        vec![8.5]
    );
    // |3 − 4| + |−2 − 0.25|.
    assert_eq!(
        b.taylor_saliency(inp(TaylorKind::TaylorMix)).unwrap().data,
        vec![3.25]
    );
}

#[test]
fn compaction_keeps_exactly_the_listed_rows_and_columns() {
    let w = tensor(6, 7, |r, c| (100 * r + c) as f64);
    let b = cpu();
    let both = b
        .compact(&w, Some(&[0, 2, 5]), Some(&[1, 3, 4, 6]))
        .unwrap();
    assert_eq!(dims(&both), (3, 4));
    let want: Vec<f64> = [0, 2, 5]
        .iter()
        .flat_map(|r| [1, 3, 4, 6].map(|c| (100 * r + c) as f64))
        .collect();
    assert_eq!(both.data, want);
    let rows = b.compact(&w, Some(&[4]), None).unwrap();
    assert_eq!(
        rows.data,
        (0..7).map(|c| (400 + c) as f64).collect::<Vec<_>>()
    );
    let cols = b.compact(&w, None, Some(&[6])).unwrap();
    assert_eq!(
        cols.data,
        (0..6).map(|r| (100 * r + 6) as f64).collect::<Vec<_>>()
    );
    assert_eq!(b.compact(&w, None, None).unwrap(), w);
}

#[test]
fn gradient_sum_adds_every_samples_product() {
    let (rows, cols, t) = (5, 9, 4);
    let b = cpu();
    let start = from_matrix(&heavy_tailed(rows, cols, 8));
    let mut acc = start.clone();
    let mut want = start.clone();
    for s in 0..3 {
        let dy = from_matrix(&heavy_tailed(t, rows, 20 + s));
        let x = from_matrix(&heavy_tailed(t, cols, 40 + s));
        b.grad_sum(&mut acc, &dy, &x).unwrap();
        for r in 0..rows {
            for c in 0..cols {
                want.data[r * cols + c] += (0..t)
                    .map(|k| dy.data[k * rows + r] * x.data[k * cols + c])
                    .sum::<f64>();
            }
        }
    }
    assert!(rel_err(&acc, &want) < 1e-13, "{}", rel_err(&acc, &want));
    assert!(rel_err(&start, &want) > 0.1, "the samples changed nothing");
}

fn invalid<T: std::fmt::Debug>(r: prunebench_kernels::error::Result<T>, needle: &str) {
    match r {
        Err(KernelError::InvalidArgument(msg)) => {
            assert!(msg.contains(needle), "'{msg}' does not say '{needle}'")
        }
        other => panic!("expected an invalid-argument error about '{needle}', got {other:?}"),
    }
}

fn bad_shape<T: std::fmt::Debug>(r: prunebench_kernels::error::Result<T>, needle: &str) {
    match r {
        Err(KernelError::Shape(msg)) => {
            assert!(msg.contains(needle), "'{msg}' does not say '{needle}'")
        }
        other => panic!("expected a shape error about '{needle}', got {other:?}"),
    }
}

#[test]
fn bad_structured_inputs_are_refused() {
    let b = cpu();
    let l = layer(4, 12, None, 9);
    // Saliency: widths that do not divide the columns, a group past the end.
    invalid(b.obs_saliency(&l.w, &l.hinv, 5, &[0]), "groups of width 5");
    invalid(b.obs_saliency(&l.w, &l.hinv, 0, &[0]), "groups of width 0");
    invalid(b.obs_saliency(&l.w, &l.hinv, 4, &[1, 3]), "group 3 is past");
    let small = cpu().zeros(11, 11).unwrap();
    bad_shape(
        b.obs_saliency(&l.w, &small, 4, &[0]),
        "inverse Hessian vs W columns",
    );

    // Update: unsorted, duplicate, past the end, empty; nothing is written on refusal.
    for (removed, needle) in [
        (&[3usize, 1][..], "sorted and distinct"),
        (&[2, 2], "sorted and distinct"),
        (&[4, 12], "past the 12"),
        (&[], "no columns to remove"),
    ] {
        let (mut w, mut hinv) = (l.w.clone(), l.hinv.clone());
        invalid(b.structured_update(&mut w, &mut hinv, removed), needle);
        assert_eq!((&w, &hinv), (&l.w, &l.hinv), "written before refusing");
    }

    // Compaction keeping nothing, or with bad lists.
    invalid(b.compact(&l.w, Some(&[]), None), "keeps nothing");
    invalid(b.compact(&l.w, None, Some(&[])), "keeps nothing");
    invalid(b.compact(&l.w, Some(&[1, 0]), None), "sorted and distinct");
    invalid(b.compact(&l.w, None, Some(&[12])), "past the 12");

    // Taylor without the statistic its kind reads, or with segments that do not fit.
    let g = l.w.clone();
    let inp = |kind, grad_sum, grad_sq, width| TaylorInputs {
        w: &l.w,
        grad_sum,
        grad_sq,
        grad_scale: 1.0,
        fisher_scale: 1.0,
        kind,
        axis: SegmentAxis::Rows,
        width,
    };
    use TaylorKind::{Taylor1, Taylor2, TaylorMix};
    invalid(
        b.taylor_saliency(inp(Taylor1, None, Some(&g), 1)),
        "needs the gradient sum",
    );
    invalid(
        b.taylor_saliency(inp(Taylor2, Some(&g), None, 1)),
        "needs the squared-gradient accumulator",
    );
    invalid(
        b.taylor_saliency(inp(TaylorMix, Some(&g), None, 1)),
        "needs the squared-gradient accumulator",
    );
    invalid(
        b.taylor_saliency(inp(TaylorMix, None, Some(&g), 1)),
        "needs the gradient sum",
    );
    invalid(
        b.taylor_saliency(inp(Taylor1, Some(&g), None, 3)),
        "4 rows do not split into groups of width 3",
    );
    let wrong = b.zeros(4, 11).unwrap();
    bad_shape(
        b.taylor_saliency(inp(Taylor1, Some(&wrong), None, 1)),
        "gradient sum: 4x11 vs 4x12",
    );

    // Gradient sum and explicit inverse with mismatched shapes.
    let mut acc = b.zeros(4, 12).unwrap();
    let x = b.zeros(2, 12).unwrap();
    bad_shape(
        b.grad_sum(&mut acc, &b.zeros(3, 4).unwrap(), &x),
        "dY has 3 tokens but X has 2",
    );
    bad_shape(
        b.grad_sum(&mut acc, &b.zeros(2, 5).unwrap(), &x),
        "gradient accumulator vs dYᵀX",
    );
    bad_shape(
        b.hinv_explicit(&b.zeros(3, 4).unwrap(), PERCDAMP),
        "Hessian",
    );
}
