//! Wanda (ALGORITHMS.md §4): |W| scaled by the input's activation norm, √a per column.

use prunebench_kernels::{Backend, Score};
use prunebench_models::config::LinearSpec;

use crate::error::Result;
use crate::method::Needs;
use crate::prune::context::LayerCx;
use crate::prune::stages::Stages;
use crate::prune::stats::GroupStats;

use super::{prune_by_score, GroupStep, Pruned};

pub(crate) const NEEDS: Needs = Needs {
    act: true,
    grads: false,
    hessian: false,
    mean_grad: false,
    ready_grads: true,
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
        prune_by_score(b, cx, l, w, Score::Wanda { act }, stages)
    }
}
