//! SparseGPT (ALGORITHMS.md §6-§7): once per input group the damped inverse-Hessian factor,
//! then per linear the blocked OBS prune with its updates of the remaining weights.

use prunebench_kernels::suite::{ObsKind, Op, OpCase};
use prunebench_kernels::{Backend, HinvFactor, ObsSelection, Sparsity};
use prunebench_models::config::LinearSpec;

use crate::error::{Context, HarnessError, Result};
use crate::prune::context::LayerCx;
use crate::prune::evaluate::Pruned;
use crate::prune::records::{PruneConfig, Purpose};
use crate::prune::stages::Stages;
use crate::prune::stats::GroupStats;
use crate::prune::Needs;

use super::spec::{LayerTolerance, LayerWork, MethodSpec};
use super::step::GroupStep;
use super::tolerance::{LAYER_MASK_DISAGREEMENT_SPARSEGPT, LAYER_RECON_REL_SPARSEGPT};

pub(crate) const SPEC: MethodSpec = MethodSpec {
    needs: |_| Needs {
        hessian: true,
        ..Needs::DEFAULT
    },
    check_config,
    tolerance: LayerTolerance {
        mask_disagreement: Some(LAYER_MASK_DISAGREEMENT_SPARSEGPT),
        recon_rel: LAYER_RECON_REL_SPARSEGPT,
    },
    work,
    ..MethodSpec::DEFAULT
};

/// Per input group, H from every sample and its factor; per linear, the blocked OBS prune.
fn work(run: &LayerWork<'_>) -> Vec<OpCase> {
    let selection = match run.cfg.sparsity {
        Sparsity::Unstructured(p) => ObsKind::Unstructured(p),
        Sparsity::NM { n, m } => ObsKind::NM { n, m },
    };
    let mut cases = Vec::new();
    for (first, l) in run.linears() {
        if first {
            cases.extend(std::iter::repeat_n(l.case(Op::Hessian), run.samples));
            cases.push(l.case(Op::HinvFactor));
        }
        cases.push(l.case(Op::Obs(selection)));
    }
    cases
}

/// An N:M pattern is chosen within each OBS block, so the block must hold whole groups of M.
pub(crate) fn check_config(cfg: &PruneConfig) -> Result<()> {
    if let Sparsity::NM { m, .. } = cfg.sparsity {
        if !cfg.block.is_multiple_of(m) {
            return Err(HarnessError::Config(format!(
                "OBS block size {} is not a multiple of M = {m}",
                cfg.block
            )));
        }
    }
    Ok(())
}

pub(crate) struct SparseGpt<B: Backend> {
    factor: Option<HinvFactor<B::Tensor>>,
}

impl<B: Backend> Default for SparseGpt<B> {
    fn default() -> Self {
        Self { factor: None }
    }
}

impl<B: Backend> GroupStep<B> for SparseGpt<B> {
    fn prepare(&mut self, b: &B, cx: &LayerCx<'_>, stats: &mut GroupStats<B>) -> Result<()> {
        let h = &stats.hessian;
        let mut f = None;
        stats
            .stages
            .time(b, "hinv_factor", Purpose::Prune, &mut || {
                f = Some(b.hinv_factor(h, cx.cfg.percdamp)?);
                Ok(())
            })
            .context(|| cx.at(&format!("{} inverse-Hessian factor", stats.group.name())))?;
        self.factor = f;
        Ok(())
    }

    fn prune_linear(
        &mut self,
        b: &B,
        cx: &LayerCx<'_>,
        _stats: &GroupStats<B>,
        (_, l): (usize, &LinearSpec),
        w: &mut B::Tensor,
        stages: &mut Stages,
    ) -> Result<Pruned<B::Mask>> {
        let f = self.factor.as_ref().expect("prepare computes the factor");
        let sel = match cx.cfg.sparsity {
            Sparsity::Unstructured(p) => ObsSelection::Unstructured(p),
            Sparsity::NM { n, m } => ObsSelection::NM { n, m },
        };
        let mut out = None;
        stages
            .time(b, "obs_prune", Purpose::Prune, &mut || {
                out = Some(b.obs_prune(w, f, sel, cx.cfg.block)?);
                Ok(())
            })
            .context(|| cx.at(l.name))?;
        let o = out.expect("obs outcome");
        Ok(Pruned {
            mask: o.mask,
            obs_loss: Some(o.loss),
        })
    }

    fn dead_columns(&self) -> usize {
        self.factor.as_ref().map_or(0, |f| f.dead.len())
    }
}
