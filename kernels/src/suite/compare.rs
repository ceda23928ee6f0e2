//! Comparing a backend's output with the reference's: values by normalised squared error,
//! masks as sets (per-group counts exact; a differing entry is acceptable only where its score
//! ties the group's threshold), SparseGPT by agreement and loss. NaN anywhere fails, since
//! every comparison is written `error <= tolerance`.

use serde::{Deserialize, Serialize};

use super::case::OpCase;
use super::families::by_family;
use super::inputs::CaseInputs;
use super::run::CaseOutput;
use crate::ops::{tolerance as tol, MaskGroup, MaskPattern};
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
pub(super) fn nmse_where(want: &Matrix, got: &Matrix, keep: impl Fn(usize) -> bool) -> f64 {
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

pub(super) fn mask_disagreement(want: &Mask, got: &Mask) -> f64 {
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

/// The checks of one case: reference output `want`, backend output `got`.
pub fn compare(
    case: &OpCase,
    inputs: &CaseInputs,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    by_family!(case.op.family(), f => f::compare(case, inputs, want, got))
}

pub(super) fn dead_check(want: &CaseOutput, got: &CaseOutput) -> Check {
    Check::new(
        "dead columns",
        "mismatches",
        if want.dead == got.dead { 0.0 } else { 1.0 },
        0.0,
    )
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
