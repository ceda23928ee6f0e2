//! The statistics of §1-§3: the running activation norms, the Hessian, and the gradient
//! accumulators (from a given gradient, or fused with the product dYᵀX that forms it). Their
//! names, small cases, work model, inputs, run and comparison; the model's cases are listed
//! with the other per-layer ops in `model_cases`.

use super::{not_in_family, Family};
use crate::error::Result;
use crate::ops::{tolerance as tol, Backend, GradNorm};
use crate::rng::{heavy_tailed, heavy_tailed_positive};
use crate::suite::case::{ModelShapes, Op, OpCase};
use crate::suite::compare::{elementwise_checks, value_check, Check};
use crate::suite::inputs::{correlated, hessian_of, scaled, CaseInputs};
use crate::suite::run::CaseOutput;

const FAMILY: Family = Family::Stats;

// ---- The cases ----

/// Odd shapes: widths that are not multiples of any workgroup (37, 129, 130, 300), several
/// samples per update, a single row of gradients.
pub fn small_cases() -> Vec<OpCase> {
    use GradNorm::{L1, L2};
    vec![
        OpCase::new(Op::ActStat, 1, 37).tokens(7, 3),
        OpCase::new(Op::ActStat, 1, 300).tokens(33, 2),
        OpCase::new(Op::Hessian, 1, 37).tokens(7, 3),
        OpCase::new(Op::Hessian, 1, 130).tokens(65, 1),
        // Widths that are multiples of 4 (not of a tile): the GEMMs' vector loads.
        OpCase::new(Op::Hessian, 1, 132).tokens(37, 2),
        OpCase::new(Op::GradAccumulate(L2), 1, 37),
        OpCase::new(Op::GradAccumulate(L1), 13, 300),
        OpCase::new(Op::GradFused(L2), 13, 37).tokens(7, 1),
        OpCase::new(Op::GradFused(L1), 1, 130).tokens(65, 1),
        OpCase::new(Op::GradFused(L2), 67, 129).tokens(33, 1),
        OpCase::new(Op::GradFused(L2), 20, 68).tokens(37, 1),
    ]
}

/// At a model's shapes: the statistics of every distinct input width, the gradient
/// accumulators of every linear shape.
pub(in crate::suite) fn model_cases(m: &ModelShapes) -> Vec<OpCase> {
    let mut v = Vec::new();
    for c in m.input_cols() {
        v.push(OpCase::new(Op::ActStat, 1, c).tokens(m.tokens, 1));
        v.push(OpCase::new(Op::Hessian, 1, c).tokens(m.tokens, 1));
    }
    for &(r, c) in &m.linears {
        v.push(OpCase::new(Op::GradAccumulate(GradNorm::L2), r, c));
        v.push(OpCase::new(Op::GradFused(GradNorm::L2), r, c).tokens(m.tokens, 1));
    }
    v
}

// ---- Names and work model ----

fn norm_name(n: GradNorm) -> &'static str {
    match n {
        GradNorm::L2 => "L2",
        GradNorm::L1 => "L1",
    }
}

/// The op's name without shape, e.g. `GRAD_FUSED_L2`.
pub(in crate::suite) fn op_name(op: Op) -> String {
    match op {
        Op::ActStat => "ACT_STAT".into(),
        Op::Hessian => "HESSIAN".into(),
        Op::GradAccumulate(n) => format!("GRAD_ACC_{}", norm_name(n)),
        Op::GradFused(n) => format!("GRAD_FUSED_{}", norm_name(n)),
        op => not_in_family(op, FAMILY),
    }
}

/// The key parameters of the canonical name.
pub(in crate::suite) fn params(case: &OpCase) -> String {
    let (r, c, t, b) = (case.rows, case.cols, case.tokens, case.batch);
    match case.op {
        Op::ActStat | Op::Hessian => format!("cols={c},tokens={t},batch={b}"),
        Op::GradFused(_) => format!("rows={r},cols={c},tokens={t}"),
        Op::GradAccumulate(_) => format!("rows={r},cols={c}"),
        op => not_in_family(op, FAMILY),
    }
}

/// Bytes moved at the least (f32 tensors): each input read once, each output written once.
pub(in crate::suite) fn bytes(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    let x = (case.tokens * case.batch) as u64 * c;
    let f = 4u64;
    match case.op {
        Op::ActStat => f * (x + 2 * c),
        Op::Hessian => f * (x + 2 * c * c),
        Op::GradAccumulate(_) => f * 3 * r * c,
        Op::GradFused(_) => f * (case.tokens as u64 * (r + c) + 2 * r * c),
        op => not_in_family(op, FAMILY),
    }
}

/// Floating-point operations the kernels do (the convention in KERNELS.md).
pub(in crate::suite) fn flops(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    let tokens = (case.tokens * case.batch) as u64;
    match case.op {
        Op::ActStat => 2 * tokens * c,
        // A SYRK: each of the c·(c+1)/2 entries of one triangle costs 2 flops per token; the
        // other triangle is a mirror (KERNELS.md, the work model's convention).
        Op::Hessian => tokens * c * (c + 1),
        Op::GradAccumulate(_) => 3 * r * c,
        Op::GradFused(_) => 2 * r * c * case.tokens as u64 + 3 * r * c,
        op => not_in_family(op, FAMILY),
    }
}

/// Whether the op's cost is dominated by arithmetic rather than memory traffic: the two
/// products (XᵀX, dYᵀX) are; the elementwise updates are not.
pub(in crate::suite) fn compute_bound(case: &OpCase) -> bool {
    match case.op {
        Op::Hessian | Op::GradFused(_) => true,
        Op::ActStat | Op::GradAccumulate(_) => false,
        op => not_in_family(op, FAMILY),
    }
}

// ---- Inputs ----

/// The case's deterministic inputs: a running statistic that already holds earlier samples
/// (`seen`), so that the update's weighting of old against new is tested.
pub(in crate::suite) fn inputs(case: &OpCase) -> Result<CaseInputs> {
    let (r, c, s) = (case.rows, case.cols, case.seed);
    let xrows = case.tokens * case.batch;
    let mut inp = CaseInputs::default();
    match case.op {
        Op::ActStat => {
            inp.seen = 3;
            inp.tensors = vec![
                ("act", heavy_tailed_positive(1, c, s)),
                ("x", heavy_tailed(xrows, c, s + 1)),
            ];
        }
        Op::Hessian => {
            inp.seen = 2;
            inp.tensors = vec![
                ("h", hessian_of(&correlated(case.tokens * 2, c, s), 2)?),
                ("x", heavy_tailed(xrows, c, s + 1)),
            ];
        }
        Op::GradAccumulate(_) => {
            inp.tensors = vec![
                ("acc", heavy_tailed_positive(r, c, s)),
                ("g", scaled(heavy_tailed(r, c, s + 1), 1e-3)),
            ];
        }
        Op::GradFused(_) => {
            inp.tensors = vec![
                ("acc", heavy_tailed_positive(r, c, s)),
                ("dy", scaled(heavy_tailed(case.tokens, r, s + 1), 1e-3)),
                ("x", heavy_tailed(case.tokens, c, s + 2)),
            ];
        }
        op => not_in_family(op, FAMILY),
    }
    Ok(inp)
}

// ---- Running on a backend ----

/// A statistics case's device tensors, by op; every op updates its statistic in place.
pub enum Prepared<B: Backend> {
    ActStat {
        act: B::Tensor,
        x: B::Tensor,
        seen: usize,
        batch: usize,
    },
    Hessian {
        h: B::Tensor,
        x: B::Tensor,
        seen: usize,
        batch: usize,
    },
    GradAccumulate {
        acc: B::Tensor,
        g: B::Tensor,
        norm: GradNorm,
    },
    GradFused {
        acc: B::Tensor,
        dy: B::Tensor,
        x: B::Tensor,
        norm: GradNorm,
    },
}

pub(in crate::suite) fn prepare<B: Backend>(
    b: &B,
    case: &OpCase,
    inp: &CaseInputs,
) -> Result<Prepared<B>> {
    let up = |name: &str| b.upload(inp.get(name));
    Ok(match case.op {
        Op::ActStat => Prepared::ActStat {
            act: up("act")?,
            x: up("x")?,
            seen: inp.seen,
            batch: case.batch,
        },
        Op::Hessian => Prepared::Hessian {
            h: up("h")?,
            x: up("x")?,
            seen: inp.seen,
            batch: case.batch,
        },
        Op::GradAccumulate(norm) => Prepared::GradAccumulate {
            acc: up("acc")?,
            g: up("g")?,
            norm,
        },
        Op::GradFused(norm) => Prepared::GradFused {
            acc: up("acc")?,
            dy: up("dy")?,
            x: up("x")?,
            norm,
        },
        op => not_in_family(op, FAMILY),
    })
}

/// Runs the update once, in place.
pub(in crate::suite) fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::ActStat {
            act,
            x,
            seen,
            batch,
        } => b.act_stat_update(act, *seen, x, *batch),
        Prepared::Hessian { h, x, seen, batch } => b.hessian_update(h, *seen, x, *batch),
        Prepared::GradAccumulate { acc, g, norm } => b.grad_accumulate(acc, g, *norm),
        Prepared::GradFused { acc, dy, x, norm } => b.grad_accumulate_fused(acc, dy, x, *norm),
    }
}

pub(in crate::suite) fn collect<B: Backend>(b: &B, p: &Prepared<B>) -> Result<CaseOutput> {
    let mut o = CaseOutput::default();
    match p {
        Prepared::ActStat { act, .. } => o.values.push(("act", b.download(act)?)),
        Prepared::Hessian { h, .. } => o.values.push(("h", b.download(h)?)),
        Prepared::GradAccumulate { acc, .. } | Prepared::GradFused { acc, .. } => {
            o.values.push(("acc", b.download(acc)?))
        }
    }
    Ok(o)
}

// ---- Comparison ----

/// The checks of one case: reference output `want`, backend output `got`.
pub(in crate::suite) fn compare(
    case: &OpCase,
    _inputs: &CaseInputs,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    match case.op {
        Op::ActStat => vec![value_check("act", want, got, tol::REDUCTION)],
        Op::Hessian => vec![value_check("h", want, got, tol::REDUCTION)],
        Op::GradAccumulate(_) => elementwise_checks("acc", want, got),
        Op::GradFused(_) => vec![value_check("acc", want, got, tol::REDUCTION)],
        op => not_in_family(op, FAMILY),
    }
}
