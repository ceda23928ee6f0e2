//! GBLM-Pruner (ALGORITHMS.md §2, §4): Wanda's score plus the gradient statistic G of each
//! linear, finalised here from the pass's accumulator (√A for l2) unless it came ready.

use prunebench_kernels::{Backend, Score, ScoreKind};
use prunebench_models::config::LinearSpec;

use crate::error::{Context, Result};
use crate::prune::context::LayerCx;
use crate::prune::evaluate::Pruned;
use crate::prune::records::Purpose;
use crate::prune::stages::Stages;
use crate::prune::stats::{GradStat, GroupStats};
use crate::prune::Needs;

use super::spec::MethodSpec;
use super::step::{prune_by_score, GroupStep};

pub(crate) const SPEC: MethodSpec = MethodSpec {
    needs: |_| Needs {
        act: true,
        grads: true,
        ..Needs::DEFAULT
    },
    score: Some(ScoreKind::Gblm),
    ..MethodSpec::DEFAULT
};

pub(crate) struct Gblm;

impl<B: Backend> GroupStep<B> for Gblm {
    fn prune_linear(
        &mut self,
        b: &B,
        cx: &LayerCx<'_>,
        stats: &GroupStats<B>,
        (i, l): (usize, &LinearSpec),
        w: &mut B::Tensor,
        stages: &mut Stages,
    ) -> Result<Pruned<B::Mask>> {
        let act = stats.act.as_ref().expect("the pass gathers act for gblm");
        let finalised;
        let grad = match stats.grads[i]
            .as_ref()
            .expect("the pass gathers G for gblm")
        {
            GradStat::Ready(g) => g,
            GradStat::Accumulated(acc) => {
                let mut out = None;
                stages
                    .time(b, "grad_finalize", Purpose::Prune, &mut || {
                        out = Some(b.grad_finalize(acc, cx.cfg.grad_norm)?);
                        Ok(())
                    })
                    .context(|| cx.at(l.name))?;
                finalised = out.expect("finalised");
                &finalised
            }
        };
        prune_by_score(
            b,
            cx,
            l,
            w,
            Score::Gblm { act, grad },
            SPEC.default_group,
            stages,
        )
    }
}
