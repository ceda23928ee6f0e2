//! Wanda (ALGORITHMS.md §4): |W| scaled by the input's activation norm, √a per column.

use prunebench_kernels::{Backend, Score, ScoreKind};
use prunebench_models::config::LinearSpec;

use crate::error::Result;
use crate::prune::context::LayerCx;
use crate::prune::evaluate::Pruned;
use crate::prune::stages::Stages;
use crate::prune::stats::GroupStats;
use crate::prune::Needs;

use super::spec::MethodSpec;
use super::step::{prune_by_score, GroupStep};

pub(crate) const SPEC: MethodSpec = MethodSpec {
    needs: |_| Needs {
        act: true,
        ..Needs::DEFAULT
    },
    score: Some(ScoreKind::Wanda),
    ..MethodSpec::DEFAULT
};

pub(crate) struct Wanda;

impl<B: Backend> GroupStep<B> for Wanda {
    fn prune_linear(
        &mut self,
        b: &B,
        cx: &LayerCx<'_>,
        stats: &GroupStats<B>,
        (_, l): (usize, &LinearSpec),
        w: &mut B::Tensor,
        stages: &mut Stages,
    ) -> Result<Pruned<B::Mask>> {
        let act = stats.act.as_ref().expect("the pass gathers act for wanda");
        prune_by_score(
            b,
            cx,
            l,
            w,
            Score::Wanda { act },
            SPEC.default_group,
            stages,
        )
    }
}
