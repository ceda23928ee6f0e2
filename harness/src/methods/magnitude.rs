//! Magnitude pruning (ALGORITHMS.md §4): |W|, no calibration statistic.

use prunebench_kernels::{Backend, Score};
use prunebench_models::config::LinearSpec;

use crate::error::Result;
use crate::method::Needs;
use crate::prune::context::LayerCx;
use crate::prune::stages::Stages;
use crate::prune::stats::GroupStats;

use super::{prune_by_score, GroupStep, Pruned};

pub(crate) const NEEDS: Needs = Needs {
    act: false,
    grads: false,
    hessian: false,
    mean_grad: false,
    ready_grads: true,
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
        prune_by_score(b, cx, l, w, Score::Magnitude, stages)
    }
}
