//! Comparing a backend's output with the reference's: values by normalised squared error,
//! masks as sets (per-group counts exact; a differing entry is acceptable only where its score
//! ties the group's threshold), SparseGPT by agreement and loss. NaN anywhere fails, since
//! every comparison is written `error <= tolerance`.

use serde::{Deserialize, Serialize};

use super::case::{ObsKind, Op, OpCase};
use super::families::{forward, refit, stats, structured, Family};
use super::inputs::{compress_input, CaseInputs};
use super::run::CaseOutput;
use crate::cpu::CpuBackend;
use crate::formats;
use crate::ops::{tolerance as tol, Backend, MaskGroup, MaskPattern, Score, ScoreKind};
use crate::tensor::{Mask, Matrix};

/// One figure of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// What was compared, e.g. `w` or `mask`.
    pub what: String,
    /// `nmse`, `max_relative`, `mismatches`, `disagreement` or `relative`.
    pub metric: String,
    pub error: f64,
    pub tolerance: f64,
    pub pass: bool,
}

impl Check {
    pub(super) fn new(what: &str, metric: &str, error: f64, tolerance: f64) -> Self {
        Self {
            what: what.into(),
            metric: metric.into(),
            error,
            tolerance,
            pass: error <= tolerance,
        }
    }
}

/// sum((got-want)^2) / sum(want^2), over the entries `keep` selects.
fn nmse_where(want: &Matrix, got: &Matrix, keep: impl Fn(usize) -> bool) -> f64 {
    if want.shape() != got.shape() {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, (&a, &b)) in want.data.iter().zip(&got.data).enumerate() {
        if keep(i) {
            num += (b as f64 - a as f64).powi(2);
            den += (a as f64).powi(2);
        }
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

pub fn nmse(want: &Matrix, got: &Matrix) -> f64 {
    nmse_where(want, got, |_| true)
}

/// The largest per-entry relative error; entries near zero are measured against a millionth of
/// the tensor's RMS so that they cannot dominate by division.
pub fn max_relative(want: &Matrix, got: &Matrix) -> f64 {
    if want.shape() != got.shape() {
        return f64::INFINITY;
    }
    let n = want.data.len().max(1) as f64;
    let rms = (want.data.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n).sqrt();
    let floor = 1e-6 * rms + f64::MIN_POSITIVE;
    want.data
        .iter()
        .zip(&got.data)
        .map(|(&a, &b)| (b as f64 - a as f64).abs() / (a as f64).abs().max(floor))
        .fold(0.0, |m, e| {
            if e.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(e)
            }
        })
}

pub(super) fn elementwise_checks(
    what: &'static str,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    let e = match (want.value(what), got.value(what)) {
        (Some(a), Some(b)) => max_relative(a, b),
        _ => f64::INFINITY,
    };
    vec![
        value_check(what, want, got, tol::ELEMENTWISE),
        Check::new(what, "max_relative", e, tol::ELEMENTWISE_MAX_REL),
    ]
}

pub(super) fn relative(want: f64, got: f64) -> f64 {
    if want == got {
        0.0
    } else {
        (got - want).abs() / want.abs().max(f64::MIN_POSITIVE)
    }
}

pub(super) fn value_check(
    what: &'static str,
    want: &CaseOutput,
    got: &CaseOutput,
    tolerance: f64,
) -> Check {
    let e = match (want.value(what), got.value(what)) {
        (Some(a), Some(b)) => nmse(a, b),
        _ => f64::INFINITY,
    };
    Check::new(what, "nmse", e, tolerance)
}

/// Counts the entries where two masks differ, and among them those a tie cannot explain: an
/// entry is a tie if its reference score is within `rel` of its group's threshold (the largest
/// pruned score). A group whose pruned count differs makes every entry of it unexplained.
/// Returns (differing, unexplained).
pub fn tie_aware_mask_mismatches(
    want: &Mask,
    got: &Mask,
    scores: &Matrix,
    pattern: MaskPattern,
    rel: f64,
) -> (usize, usize) {
    let (rows, cols) = (want.rows, want.cols);
    if (got.rows, got.cols) != (rows, cols) || scores.shape() != (rows, cols) {
        return (rows * cols, rows * cols);
    }
    // Groups as (row range, column range) lists.
    let groups: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> = match pattern {
        MaskPattern::Unstructured {
            group: MaskGroup::Matrix,
            ..
        } => vec![(0..rows, 0..cols)],
        MaskPattern::Unstructured {
            group: MaskGroup::PerRow,
            ..
        } => (0..rows).map(|r| (r..r + 1, 0..cols)).collect(),
        MaskPattern::NM { m, .. } => (0..rows)
            .flat_map(|r| (0..cols / m).map(move |g| (r..r + 1, g * m..(g + 1) * m)))
            .collect(),
    };
    let (mut differing, mut unexplained) = (0, 0);
    for (rr, cr) in groups {
        let cells = || rr.clone().flat_map(|r| cr.clone().map(move |c| (r, c)));
        let count = |m: &Mask| cells().filter(|&(r, c)| m.get(r, c)).count();
        let diff: Vec<(usize, usize)> = cells()
            .filter(|&(r, c)| want.get(r, c) != got.get(r, c))
            .collect();
        differing += diff.len();
        if count(want) != count(got) {
            unexplained += diff.len().max(1);
            continue;
        }
        let threshold = cells()
            .filter(|&(r, c)| want.get(r, c))
            .map(|(r, c)| scores.get(r, c) as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        unexplained += diff
            .iter()
            .filter(|&&(r, c)| {
                let s = scores.get(r, c) as f64;
                let is_tie = (s - threshold).abs() <= rel * threshold.abs();
                !is_tie
            })
            .count();
    }
    (differing, unexplained)
}

fn mask_disagreement(want: &Mask, got: &Mask) -> f64 {
    if (want.rows, want.cols) != (got.rows, got.cols) {
        return 1.0;
    }
    let differ: usize = want
        .bits
        .iter()
        .zip(&got.bits)
        .map(|(a, b)| (a ^ b).count_ones() as usize)
        .sum();
    differ as f64 / (want.rows * want.cols).max(1) as f64
}

/// A score differs from the reference's f64 value by a few f32 roundings; entries within this
/// relative distance of a group threshold may legitimately be chosen either way.
const SCORE_TIE_REL: f64 = 1e-5;

/// The checks of one case: reference output `want`, backend output `got`.
pub fn compare(
    case: &OpCase,
    inputs: &CaseInputs,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    match case.op.family() {
        Family::Stats => stats::compare(case, want, got),
        Family::Refit => refit::compare(case, inputs, want, got),
        Family::Structured => structured::compare(case, inputs, want, got),
        Family::Forward => forward::compare(case, want, got),
        _ => compare_by_op(case, inputs, want, got),
    }
}

fn compare_by_op(
    case: &OpCase,
    inputs: &CaseInputs,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    let missing_mask = || Check::new("mask", "mismatches", f64::INFINITY, 0.0);
    match case.op {
        Op::Score(_) => elementwise_checks("scores", want, got),
        // Selection on identical f32 scores has one right answer.
        Op::Mask(_) => match (&want.mask, &got.mask) {
            (Some(a), Some(b)) => vec![Check::new(
                "mask",
                "mismatches",
                (mask_disagreement(a, b) * (a.rows * a.cols) as f64).round(),
                0.0,
            )],
            _ => vec![missing_mask()],
        },
        // Copying or zeroing is exact.
        Op::ApplyMask => vec![value_check("w", want, got, 0.0)],
        Op::Prune(kind, pattern) => {
            match (&want.mask, &got.mask, want.value("w"), got.value("w")) {
                (Some(wm), Some(gm), Some(ww), Some(gw)) => {
                    let scores = reference_scores(inputs, kind);
                    let (_, unexplained) =
                        tie_aware_mask_mismatches(wm, gm, &scores, pattern, SCORE_TIE_REL);
                    let cols = ww.cols.max(1);
                    let agree = |i: usize| wm.get(i / cols, i % cols) == gm.get(i / cols, i % cols);
                    let unzeroed = (0..gw.data.len())
                        .filter(|&i| gm.get(i / cols, i % cols) && gw.data[i] != 0.0)
                        .count();
                    vec![
                        Check::new("mask", "mismatches", unexplained as f64, 0.0),
                        Check::new("w", "nmse", nmse_where(ww, gw, agree), 0.0),
                        Check::new("w zero where pruned", "mismatches", unzeroed as f64, 0.0),
                    ]
                }
                _ => vec![missing_mask()],
            }
        }
        Op::HinvFactor => vec![
            value_check("u", want, got, tol::HINV_FACTOR),
            dead_check(want, got),
        ],
        Op::Obs(kind) => {
            let mut v = vec![value_check("w", want, got, tol::OBS_WEIGHTS)];
            v.push(Check::new(
                "loss",
                "relative",
                match (want.loss, got.loss) {
                    (Some(a), Some(b)) => relative(a, b),
                    _ => f64::INFINITY,
                },
                tol::OBS_LOSS_REL,
            ));
            let allowed = match kind {
                ObsKind::Given(_) => 0.0,
                _ => 1.0 - tol::OBS_MASK_AGREEMENT,
            };
            v.push(match (&want.mask, &got.mask) {
                (Some(a), Some(b)) => {
                    Check::new("mask", "disagreement", mask_disagreement(a, b), allowed)
                }
                _ => missing_mask(),
            });
            v
        }
        Op::ReconError => match (want.recon, got.recon) {
            (Some(a), Some(b)) => vec![
                Check::new(
                    "tr(dW H dWt)",
                    "relative",
                    relative(a.num, b.num),
                    tol::RECON_REL,
                ),
                Check::new(
                    "tr(W H Wt)",
                    "relative",
                    relative(a.den, b.den),
                    tol::RECON_REL,
                ),
            ],
            _ => vec![Check::new(
                "recon",
                "relative",
                f64::INFINITY,
                tol::RECON_REL,
            )],
        },
        Op::Compress(..) => compress_checks(inputs, want, got),
        Op::Matmul { .. } => matmul_checks(inputs, want, got),
        op => unreachable!("{op:?} is compared by its family"),
    }
}

pub(super) fn dead_check(want: &CaseOutput, got: &CaseOutput) -> Check {
    Check::new(
        "dead columns",
        "mismatches",
        if want.dead == got.dead { 0.0 } else { 1.0 },
        0.0,
    )
}

/// Compression is exact: the device buffers equal the reference's word for word, and the
/// backend's own decompression gives the masked f16 weight bit for bit.
fn compress_checks(inputs: &CaseInputs, want: &CaseOutput, got: &CaseOutput) -> Vec<Check> {
    let words = match (&want.packed, &got.packed) {
        (Some(a), Some(b)) if a.format == b.format && (a.rows, a.cols) == (b.rows, b.cols) => {
            let differ = |x: &[u32], y: &[u32]| {
                if x.len() != y.len() {
                    f64::INFINITY
                } else {
                    x.iter().zip(y).filter(|(p, q)| p != q).count() as f64
                }
            };
            differ(&a.values, &b.values) + differ(&a.meta, &b.meta) + differ(&a.offsets, &b.offsets)
        }
        _ => f64::INFINITY,
    };
    let (w, mask) = compress_input(inputs);
    let truth = formats::masked_f16(w, mask);
    let bits = match got.value("w") {
        Some(d) if d.shape() == truth.shape() => d
            .data
            .iter()
            .zip(&truth.data)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count() as f64,
        _ => f64::INFINITY,
    };
    vec![
        Check::new("packed words", "mismatches", words, 0.0),
        Check::new("decompressed w", "mismatches", bits, 0.0),
    ]
}

/// The product against the f64 reference: per output, the error over Σ|w·x| (the scale of
/// the f32 accumulation's rounding), and as a whole.
fn matmul_checks(inputs: &CaseInputs, want: &CaseOutput, got: &CaseOutput) -> Vec<Check> {
    let scale = inputs
        .packed
        .as_ref()
        .and_then(|p| formats::decompress(p).ok())
        .map(|w| abs_product(inputs.get("x"), &w));
    let bound = match (want.value("y"), got.value("y"), &scale) {
        (Some(a), Some(b), Some(sc)) if a.shape() == b.shape() && a.shape() == sc.shape() => a
            .data
            .iter()
            .zip(&b.data)
            .zip(&sc.data)
            .map(|((&a, &b), &s)| (b as f64 - a as f64).abs() / (s as f64).max(f64::MIN_POSITIVE))
            .fold(0.0, |m: f64, e| {
                if e.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(e)
                }
            }),
        _ => f64::INFINITY,
    };
    vec![
        Check::new(
            "y",
            "max_error_over_sum_abs",
            bound,
            tol::SPARSE_MATMUL_BOUND,
        ),
        value_check("y", want, got, tol::SPARSE_MATMUL_NMSE),
    ]
}

/// Σ_k |x_tk·w_rk| for every output (t, r), in f64.
fn abs_product(x: &Matrix, w: &Matrix) -> Matrix {
    Matrix::from_fn(x.rows, w.rows, |t, r| {
        x.row(t)
            .iter()
            .zip(w.row(r))
            .map(|(&a, &b)| (a as f64 * b as f64).abs())
            .sum::<f64>() as f32
    })
}

/// The reference's scores for a prune case, to judge ties.
fn reference_scores(inputs: &CaseInputs, kind: ScoreKind) -> Matrix {
    let cpu = CpuBackend::new();
    let up = |n: &str| cpu.upload(inputs.get(n)).expect("host upload");
    let (w, act, grad) = (up("w"), up("act"), up("grad"));
    let score = match kind {
        ScoreKind::Magnitude => Score::Magnitude,
        ScoreKind::Wanda => Score::Wanda { act: &act },
        ScoreKind::Gblm => Score::Gblm {
            act: &act,
            grad: &grad,
        },
    };
    let s = cpu.score(&w, score).expect("reference score");
    cpu.download(&s).expect("host download")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tie_aware_comparison_accepts_ties_only() {
        let pattern = MaskPattern::Unstructured {
            sparsity: 0.5,
            group: MaskGroup::PerRow,
        };
        let scores = Matrix::new(1, 4, vec![1.0, 2.0, 2.0, 3.0]).unwrap();
        let mut want = Mask::empty(1, 4);
        want.set(0, 0, true);
        want.set(0, 1, true);
        let mut tie = Mask::empty(1, 4);
        tie.set(0, 0, true);
        tie.set(0, 2, true);
        assert_eq!(
            tie_aware_mask_mismatches(&want, &tie, &scores, pattern, 1e-6),
            (2, 0)
        );
        let mut wrong = Mask::empty(1, 4);
        wrong.set(0, 0, true);
        wrong.set(0, 3, true);
        // Entry 1 sits on the threshold; entry 3 (score 3) cannot be a tie.
        assert_eq!(
            tie_aware_mask_mismatches(&want, &wrong, &scores, pattern, 1e-6).1,
            1
        );
        let mut short = Mask::empty(1, 4);
        short.set(0, 0, true);
        assert!(tie_aware_mask_mismatches(&want, &short, &scores, pattern, 1e-6).1 > 0);
    }

    #[test]
    fn nan_fails_every_value_check() {
        let a = Matrix::new(1, 2, vec![1.0, 2.0]).unwrap();
        let b = Matrix::new(1, 2, vec![1.0, f32::NAN]).unwrap();
        assert!(!Check::new("x", "nmse", nmse(&a, &b), 1.0).pass);
    }
}
