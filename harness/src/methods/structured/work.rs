//! The op work of a structured layer run, for the bench's bytes and flops: the op cases the run
//! called, replayed from what its report says it removed.

use prunebench_kernels::suite::{Op, OpCase};
use prunebench_models::config::ModelConfig;

use crate::prune::PruneConfig;

use super::geometry::{Geometry, Kind};
use super::select;
use crate::prune::records::structured::{AttnUnit, Compensate, Saliency};
use crate::prune::records::structured_report::StructuredReport;

pub(crate) fn work_cases(
    model: &ModelConfig,
    cfg: &PruneConfig,
    report: &StructuredReport,
    samples: usize,
    tokens: usize,
) -> Vec<OpCase> {
    let s = &cfg.structured;
    let g = Geometry::new(model, s.attn_unit);
    let mut cases = Vec::new();
    for l in model.linears() {
        let c = |op| OpCase::new(op, l.rows, l.cols).tokens(tokens, 1);
        if matches!(l.name, "q_proj" | "o_proj" | "gate_proj" | "down_proj") {
            cases.extend(std::iter::repeat_n(c(Op::Hessian), samples));
        }
        if let Saliency::Taylor(k) = s.saliency {
            if k.needs_fisher() {
                cases.extend(std::iter::repeat_n(
                    c(Op::GradFused(cfg.grad_norm)),
                    samples,
                ));
            }
            if k.needs_mean_grad() {
                cases.extend(std::iter::repeat_n(c(Op::GradSum), samples));
            }
        }
    }
    for (kind, removed) in [
        (Kind::Attn, report.attn_removed),
        (Kind::Ffn, report.ffn_removed),
    ] {
        let consumer = match kind {
            Kind::Attn => (model.hidden, model.num_heads * model.head_dim),
            Kind::Ffn => (model.hidden, model.intermediate),
        };
        let width = g.width(kind);
        let cc = |op| OpCase::new(op, consumer.0, consumer.1).tokens(tokens, 1);
        if s.saliency == Saliency::Obs || s.compensate == Compensate::Obs {
            cases.push(cc(Op::HinvExplicit));
        }
        let unit = match (kind, s.attn_unit) {
            (Kind::Attn, AttnUnit::QueryHead) => g.kv_heads,
            _ => 1,
        };
        // The first round ranks by the initial scores of every group; later rounds re-score
        // the remaining ones (modelled at the full width: the op's cost is per group).
        let (mut left, mut t) = (removed, 0);
        let mut scorings = 1;
        let mut updates = Vec::new();
        while left > 0 && t < s.rounds {
            let take = select::round_take(left, s.rounds, t, unit).min(left);
            if t > 0 {
                scorings += 1;
            }
            updates.push(take);
            left -= take;
            t += 1;
        }
        for _ in 0..scorings {
            match s.saliency {
                Saliency::Obs => cases.push(cc(Op::ObsSaliency { width })),
                Saliency::Taylor(k) => {
                    for (name, axis, w) in g.taylor_parts(kind) {
                        let l = model.linear(name).expect("a LLaMA linear");
                        cases.push(OpCase::new(
                            Op::TaylorSaliency {
                                kind: k,
                                axis,
                                width: w,
                            },
                            l.rows,
                            l.cols,
                        ));
                    }
                }
            }
        }
        if s.compensate == Compensate::Obs {
            for take in updates {
                cases.push(cc(Op::StructuredUpdate {
                    width,
                    removed: take,
                }));
            }
        }
    }
    cases
}
