//! One module per pruning method. A method declares the statistics it needs
//! ([`crate::method::Needs`]) and implements [`GroupStep`]: what it does once per input group,
//! and how it prunes each of the group's linears on the device. `prune::prune_layer` runs the
//! statistics pass before it and the evaluation after it, so a method knows nothing of either.

pub(crate) mod gblm;
pub(crate) mod magnitude;
pub(crate) mod sparsegpt;
pub mod structured;
pub(crate) mod wanda;

use prunebench_kernels::{Backend, MaskPattern, Score};
use prunebench_models::config::LinearSpec;

use crate::error::{Context, Result};
use crate::method::Method;
use crate::prune::context::LayerCx;
use crate::prune::records::Purpose;
use crate::prune::stages::Stages;
use crate::prune::stats::GroupStats;

/// What a method leaves for one linear: the device mask of pruned entries and, for OBS, the
/// summed loss.
pub(crate) struct Pruned<M> {
    pub mask: M,
    pub obs_loss: Option<f64>,
}

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

/// The step of `method`, fresh for each group.
pub(crate) fn group_step<'s, B: Backend + 's>(method: Method) -> Box<dyn GroupStep<B> + 's> {
    match method {
        Method::Magnitude => Box::new(magnitude::Magnitude),
        Method::Wanda => Box::new(wanda::Wanda),
        Method::Gblm => Box::new(gblm::Gblm),
        Method::Sparsegpt => Box::new(sparsegpt::SparseGpt::<B>::default()),
        Method::Structured => unreachable!("structured pruning runs over the whole layer"),
    }
}

/// §4+§5 for the mask-based methods: score, select by the method's pattern, apply.
fn prune_by_score<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    l: &LinearSpec,
    w: &mut B::Tensor,
    score: Score<'_, B::Tensor>,
    stages: &mut Stages,
) -> Result<Pruned<B::Mask>> {
    let pattern: MaskPattern = cx.cfg.method.mask_pattern(cx.cfg.sparsity, cx.cfg.group);
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
