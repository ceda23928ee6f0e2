//! What a per-group method implements ([`GroupStep`]): its work once per input group and on
//! each of the group's linears, with the statistics pass before it and the evaluation after it
//! run by `per_group`, so a method knows nothing of either.

use prunebench_kernels::{Backend, MaskGroup, MaskPattern, Score};
use prunebench_models::config::LinearSpec;

use crate::error::{Context, Result};
use crate::prune::context::LayerCx;
use crate::prune::evaluate::Pruned;
use crate::prune::records::Purpose;
use crate::prune::stages::Stages;
use crate::prune::stats::GroupStats;

/// A method's work on one input group, whose statistics the pass has gathered.
pub(crate) trait GroupStep<B: Backend> {
    /// Work shared by the group's linears, before any of them (SparseGPT's factor).
    fn prepare(&mut self, _b: &B, _cx: &LayerCx<'_>, _stats: &mut GroupStats<B>) -> Result<()> {
        Ok(())
    }

    /// Prunes member `i` of the group, `w` in place; its stage times go to `stages`.
    fn prune_linear(
        &mut self,
        b: &B,
        cx: &LayerCx<'_>,
        stats: &GroupStats<B>,
        member: (usize, &LinearSpec),
        w: &mut B::Tensor,
        stages: &mut Stages,
    ) -> Result<Pruned<B::Mask>>;

    /// Columns the group's statistics showed dead (SparseGPT: zero Hessian diagonal).
    fn dead_columns(&self) -> usize {
        0
    }
}

/// §4+§5 for the mask-based methods: score, select by the configured pattern (the comparison
/// group `--group` gives, else the method's `default_group`), apply.
pub(crate) fn prune_by_score<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    l: &LinearSpec,
    w: &mut B::Tensor,
    score: Score<'_, B::Tensor>,
    default_group: MaskGroup,
    stages: &mut Stages,
) -> Result<Pruned<B::Mask>> {
    let pattern = MaskPattern::new(cx.cfg.sparsity, cx.cfg.group.unwrap_or(default_group));
    let mut mask = None;
    stages
        .time(b, "prune_scored", Purpose::Prune, &mut || {
            mask = Some(b.prune_scored(w, score, pattern)?);
            Ok(())
        })
        .context(|| cx.at(l.name))?;
    Ok(Pruned {
        mask: mask.expect("mask produced"),
        obs_loss: None,
    })
}
