//! Magnitude pruning (ALGORITHMS.md §4): |W|, no calibration statistic.

use prunebench_kernels::{Backend, MaskGroup, Score, ScoreKind};
use prunebench_models::config::LinearSpec;

use crate::error::Result;
use crate::prune::context::LayerCx;
use crate::prune::evaluate::Pruned;
use crate::prune::stages::Stages;
use crate::prune::stats::GroupStats;

use super::spec::MethodSpec;
use super::step::{prune_by_score, GroupStep};

pub(crate) const SPEC: MethodSpec = MethodSpec {
    score: Some(ScoreKind::Magnitude),
    default_group: MaskGroup::Matrix,
    ..MethodSpec::DEFAULT
};

pub(crate) struct Magnitude;

impl<B: Backend> GroupStep<B> for Magnitude {
    fn prune_linear(
        &mut self,
        b: &B,
        cx: &LayerCx<'_>,
        _stats: &GroupStats<B>,
        (_, l): (usize, &LinearSpec),
        w: &mut B::Tensor,
        stages: &mut Stages,
    ) -> Result<Pruned<B::Mask>> {
        prune_by_score(b, cx, l, w, Score::Magnitude, SPEC.default_group, stages)
    }
}
