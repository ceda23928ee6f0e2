//! The masks of §4-§5: the three scores, mask selection (per row, over the matrix, N:M),
//! applying a mask, and the fused prune (score, select and apply in one call). Their names,
//! small cases, work model, inputs, run and comparison; the model's cases are listed with the
//! other per-layer ops in `model_cases`.

use super::{not_in_family, Family};
use crate::cpu::CpuBackend;
use crate::error::Result;
use crate::ops::{Backend, MaskGroup, MaskPattern, Score, ScoreKind};
use crate::rng::{heavy_tailed, heavy_tailed_positive};
use crate::suite::case::{ModelShapes, Op, OpCase};
use crate::suite::compare::{
    elementwise_checks, mask_disagreement, nmse_where, tie_aware_mask_mismatches, value_check,
    Check,
};
use crate::suite::inputs::{random_mask, scaled, CaseInputs};
use crate::suite::run::{never_ran, CaseOutput};
use crate::tensor::Matrix;

const FAMILY: Family = Family::Masks;

// ---- The cases ----

fn row(p: f64) -> MaskPattern {
    MaskPattern::Unstructured {
        sparsity: p,
        group: MaskGroup::PerRow,
    }
}

fn matrix(p: f64) -> MaskPattern {
    MaskPattern::Unstructured {
        sparsity: p,
        group: MaskGroup::Matrix,
    }
}

const NM24: MaskPattern = MaskPattern::NM { n: 2, m: 4 };
const NM48: MaskPattern = MaskPattern::NM { n: 4, m: 8 };

/// Odd shapes: a single row, widths that are not multiples of any workgroup or mask word
/// (37, 296, 300), N:M with m = 4 and 8, rows of tied scores where the tie rule decides, a
/// whole-matrix selection over chunks of several rows.
pub fn small_cases() -> Vec<OpCase> {
    use ScoreKind::{Gblm, Magnitude, Wanda};
    // Widths of whole vec4s (300) and not (37): the WGSL kernels take four columns per thread
    // on the first.
    let mut v = vec![
        OpCase::new(Op::ApplyMask, 13, 300),
        OpCase::new(Op::ApplyMask, 5, 37),
    ];
    for k in [Magnitude, Wanda, Gblm] {
        v.push(OpCase::new(Op::Score(k), 1, 37));
        v.push(OpCase::new(Op::Score(k), 13, 300));
    }
    for p in [row(0.5), row(0.7), matrix(0.3), NM24] {
        v.push(OpCase::new(Op::Mask(p), 13, 300));
    }
    v.push(OpCase::new(Op::Mask(row(0.5)), 1, 37));
    v.push(OpCase::new(Op::Mask(matrix(0.5)), 1, 37));
    // Above 256 rows the whole-matrix selection's chunks hold several rows (6 here: every
    // third row is tied, so ties carry from chunk to chunk and from row to row in a chunk).
    v.push(OpCase::new(Op::Mask(matrix(0.22)), 1600, 37));
    v.push(OpCase::new(Op::Mask(NM48), 13, 296));
    v.push(OpCase::new(Op::Mask(MaskPattern::NM { n: 1, m: 4 }), 1, 40));
    for (k, p) in [
        (Wanda, row(0.5)),
        (Gblm, NM24),
        (Magnitude, matrix(0.5)),
        (Wanda, NM48),
    ] {
        v.push(OpCase::new(Op::Prune(k, p), 13, 296));
    }
    v.push(OpCase::new(Op::Prune(Wanda, row(0.5)), 1, 37));
    v
}

/// At a model's shapes: every mask op on each linear shape, at 50% per row and over the
/// matrix and at 2:4, as the methods prune.
pub(in crate::suite) fn model_cases(m: &ModelShapes) -> Vec<OpCase> {
    use ScoreKind::{Gblm, Magnitude, Wanda};
    let mut v = Vec::new();
    for &(rows, cols) in &m.linears {
        for k in [Magnitude, Wanda, Gblm] {
            v.push(OpCase::new(Op::Score(k), rows, cols));
        }
        for p in [row(0.5), matrix(0.5), NM24] {
            v.push(OpCase::new(Op::Mask(p), rows, cols));
        }
        v.push(OpCase::new(Op::ApplyMask, rows, cols));
        v.push(OpCase::new(Op::Prune(Magnitude, matrix(0.5)), rows, cols));
        for k in [Wanda, Gblm] {
            v.push(OpCase::new(Op::Prune(k, row(0.5)), rows, cols));
            v.push(OpCase::new(Op::Prune(k, NM24), rows, cols));
        }
    }
    v
}

// ---- Names and work model ----

/// The op's name without shape, e.g. `PRUNE_WANDA`.
pub(in crate::suite) fn op_name(op: Op) -> String {
    match op {
        Op::Score(k) => format!("SCORE_{}", k.name().to_uppercase()),
        Op::Mask(_) => "MASK".into(),
        Op::ApplyMask => "APPLY_MASK".into(),
        Op::Prune(k, _) => format!("PRUNE_{}", k.name().to_uppercase()),
        op => not_in_family(op, FAMILY),
    }
}

/// The key parameters of the canonical name.
pub(in crate::suite) fn params(case: &OpCase) -> String {
    let (r, c) = (case.rows, case.cols);
    match case.op {
        Op::Mask(p) | Op::Prune(_, p) => format!("pattern={},rows={r},cols={c}", p.label()),
        Op::Score(_) | Op::ApplyMask => format!("rows={r},cols={c}"),
        op => not_in_family(op, FAMILY),
    }
}

/// Bytes moved at the least (f32 tensors, 1-bit masks): each input read once, each output
/// written once.
pub(in crate::suite) fn bytes(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    let mask = r * c.div_ceil(32) * 4;
    let f = 4u64;
    match case.op {
        Op::Score(ScoreKind::Magnitude) => f * 2 * r * c,
        Op::Score(ScoreKind::Wanda) => f * (2 * r * c + c),
        Op::Score(ScoreKind::Gblm) => f * (3 * r * c + c),
        Op::Mask(_) => f * r * c + mask,
        Op::ApplyMask => f * 2 * r * c + mask,
        Op::Prune(k, _) => {
            let stats = match k {
                ScoreKind::Magnitude => 0,
                ScoreKind::Wanda => c,
                ScoreKind::Gblm => c + r * c,
            };
            f * (2 * r * c + stats) + mask
        }
        op => not_in_family(op, FAMILY),
    }
}

/// Floating-point operations of the scores; selection compares and applying copies.
pub(in crate::suite) fn flops(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    match case.op {
        Op::Score(ScoreKind::Magnitude) | Op::Mask(_) | Op::ApplyMask => 0,
        Op::Prune(ScoreKind::Magnitude, _) => 0,
        Op::Score(ScoreKind::Wanda) | Op::Prune(ScoreKind::Wanda, _) => r * c,
        Op::Score(ScoreKind::Gblm) | Op::Prune(ScoreKind::Gblm, _) => 3 * r * c,
        op => not_in_family(op, FAMILY),
    }
}

/// Every mask op streams its tensors a constant number of times: memory-bound.
pub(in crate::suite) fn compute_bound(case: &OpCase) -> bool {
    match case.op {
        Op::Score(_) | Op::Mask(_) | Op::ApplyMask | Op::Prune(..) => false,
        op => not_in_family(op, FAMILY),
    }
}

// ---- Inputs ----

/// Weights at a linear's scale with positive statistics; selection's scores with ties.
pub(in crate::suite) fn inputs(case: &OpCase) -> Result<CaseInputs> {
    let (r, c, s) = (case.rows, case.cols, case.seed);
    let mut inp = CaseInputs::default();
    match case.op {
        Op::Score(_) | Op::Prune(..) => {
            inp.tensors = vec![
                ("w", scaled(heavy_tailed(r, c, s), 0.02)),
                ("act", heavy_tailed_positive(1, c, s + 1)),
                ("grad", scaled(heavy_tailed_positive(r, c, s + 2), 1e-2)),
            ];
        }
        Op::Mask(_) => inp.tensors = vec![("scores", tied_scores(r, c, s))],
        Op::ApplyMask => {
            inp.mask = Some(random_mask(r, c, s + 1));
            inp.tensors = vec![("w", heavy_tailed(r, c, s))];
        }
        op => not_in_family(op, FAMILY),
    }
    Ok(inp)
}

/// Positive scores where every third row is rounded to a few levels, so that many entries tie
/// exactly and the tie rule decides.
fn tied_scores(rows: usize, cols: usize, seed: u64) -> Matrix {
    let mut m = heavy_tailed_positive(rows, cols, seed);
    if crate::suite::inputs::shapes_only() {
        return m;
    }
    for r in (0..rows).step_by(3) {
        for v in &mut m.data[r * cols..(r + 1) * cols] {
            *v = (*v * 2.0).round().max(1.0) / 2.0;
        }
    }
    m
}

// ---- Running on a backend ----

/// A mask case's device tensors, by op.
pub enum Prepared<B: Backend> {
    Score {
        w: B::Tensor,
        act: B::Tensor,
        grad: B::Tensor,
        kind: ScoreKind,
        out: Option<B::Tensor>,
    },
    Mask {
        scores: B::Tensor,
        pattern: MaskPattern,
        out: Option<B::Mask>,
    },
    ApplyMask {
        w: B::Tensor,
        mask: B::Mask,
    },
    Prune {
        w: B::Tensor,
        act: B::Tensor,
        grad: B::Tensor,
        kind: ScoreKind,
        pattern: MaskPattern,
        out: Option<B::Mask>,
    },
}

pub(in crate::suite) fn prepare<B: Backend>(
    b: &B,
    case: &OpCase,
    inp: &CaseInputs,
) -> Result<Prepared<B>> {
    let up = |name: &str| b.upload(inp.get(name));
    Ok(match case.op {
        Op::Score(kind) => Prepared::Score {
            w: up("w")?,
            act: up("act")?,
            grad: up("grad")?,
            kind,
            out: None,
        },
        Op::Mask(pattern) => Prepared::Mask {
            scores: up("scores")?,
            pattern,
            out: None,
        },
        Op::ApplyMask => Prepared::ApplyMask {
            w: up("w")?,
            mask: b.upload_mask(inp.mask.as_ref().expect("apply case has a mask"))?,
        },
        Op::Prune(kind, pattern) => Prepared::Prune {
            w: up("w")?,
            act: up("act")?,
            grad: up("grad")?,
            kind,
            pattern,
            out: None,
        },
        op => not_in_family(op, FAMILY),
    })
}

fn score_of<'a, T>(kind: ScoreKind, act: &'a T, grad: &'a T) -> Score<'a, T> {
    match kind {
        ScoreKind::Magnitude => Score::Magnitude,
        ScoreKind::Wanda => Score::Wanda { act },
        ScoreKind::Gblm => Score::Gblm { act, grad },
    }
}

/// Runs the op once; applying and pruning change `w` in place.
pub(in crate::suite) fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::Score {
            w,
            act,
            grad,
            kind,
            out,
        } => *out = Some(b.score(w, score_of(*kind, act, grad))?),
        Prepared::Mask {
            scores,
            pattern,
            out,
        } => *out = Some(b.select_mask(scores, *pattern)?),
        Prepared::ApplyMask { w, mask } => b.apply_mask(w, mask)?,
        Prepared::Prune {
            w,
            act,
            grad,
            kind,
            pattern,
            out,
        } => *out = Some(b.prune_scored(w, score_of(*kind, act, grad), *pattern)?),
    }
    Ok(())
}

pub(in crate::suite) fn collect<B: Backend>(b: &B, p: &Prepared<B>) -> Result<CaseOutput> {
    let mut o = CaseOutput::default();
    match p {
        Prepared::Score { out, .. } => {
            o.values
                .push(("scores", b.download(out.as_ref().ok_or_else(never_ran)?)?));
        }
        Prepared::Mask { out, .. } => {
            o.mask = Some(b.download_mask(out.as_ref().ok_or_else(never_ran)?)?);
        }
        Prepared::ApplyMask { w, .. } => o.values.push(("w", b.download(w)?)),
        Prepared::Prune { w, out, .. } => {
            o.values.push(("w", b.download(w)?));
            o.mask = Some(b.download_mask(out.as_ref().ok_or_else(never_ran)?)?);
        }
    }
    Ok(o)
}

// ---- Comparison ----

/// A score differs from the reference's f64 value by a few f32 roundings; entries within this
/// relative distance of a group threshold may legitimately be chosen either way.
const SCORE_TIE_REL: f64 = 1e-5;

fn missing_mask() -> Check {
    Check::new("mask", "mismatches", f64::INFINITY, 0.0)
}

/// The checks of one case: reference output `want`, backend output `got`.
pub(in crate::suite) fn compare(
    case: &OpCase,
    inputs: &CaseInputs,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
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
        Op::Prune(kind, pattern) => prune_checks(inputs, kind, pattern, want, got),
        op => not_in_family(op, FAMILY),
    }
}

/// The fused prune scores in f32 on the device, so its mask may differ from the reference's
/// at ties only; where the masks agree the weights must match exactly, and every pruned entry
/// must be zero.
fn prune_checks(
    inputs: &CaseInputs,
    kind: ScoreKind,
    pattern: MaskPattern,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    let (Some(wm), Some(gm), Some(ww), Some(gw)) =
        (&want.mask, &got.mask, want.value("w"), got.value("w"))
    else {
        return vec![missing_mask()];
    };
    let scores = reference_scores(inputs, kind);
    let (_, unexplained) = tie_aware_mask_mismatches(wm, gm, &scores, pattern, SCORE_TIE_REL);
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

/// The reference's scores for a prune case, to judge ties.
fn reference_scores(inputs: &CaseInputs, kind: ScoreKind) -> Matrix {
    let cpu = CpuBackend::new();
    let up = |n: &str| cpu.upload(inputs.get(n)).expect("host upload");
    let (w, act, grad) = (up("w"), up("act"), up("grad"));
    let s = cpu
        .score(&w, score_of(kind, &act, &grad))
        .expect("reference score");
    cpu.download(&s).expect("host download")
}
