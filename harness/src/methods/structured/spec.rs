//! Structured pruning's registry entry: H of every input and, for the Taylor saliencies, the
//! gradient statistics; a fraction of the layer, never an N:M pattern; the whole layer at once.

use crate::error::{HarnessError, Result};
use crate::prune::records::structured::{Saliency, StructuredConfig};
use crate::prune::{Needs, PruneConfig, Scope};

use crate::methods::spec::{LayerTolerance, LayerWork, MethodSpec};
use crate::methods::tolerance::LAYER_RECON_REL_SPARSEGPT;
use prunebench_kernels::suite::OpCase;

pub(crate) const SPEC: MethodSpec = MethodSpec {
    needs: |cfg| needs(&cfg.structured),
    check_config,
    scope: Scope::WholeLayer,
    tolerance: LayerTolerance {
        mask_disagreement: None,
        recon_rel: LAYER_RECON_REL_SPARSEGPT,
    },
    work,
    ..MethodSpec::DEFAULT
};

/// The layer's ops as its report records them (groups, rounds, compaction).
fn work(run: &LayerWork<'_>) -> Vec<OpCase> {
    let report = run.report.structured.as_ref();
    report.map_or_else(Vec::new, |s| {
        super::work_cases(&run.layer.model, run.cfg, s, run.samples, run.tokens)
    })
}

/// What the statistics pass gathers: H of every input (the consumers' for the saliency and
/// update, all of them for the evaluation), and for Taylor saliencies the gradient statistics.
pub(super) fn needs(cfg: &StructuredConfig) -> Needs {
    let taylor = match cfg.saliency {
        Saliency::Taylor(k) => Some(k),
        Saliency::Obs => None,
    };
    Needs {
        act: false,
        grads: taylor.is_some_and(|k| k.needs_fisher()),
        mean_grad: taylor.is_some_and(|k| k.needs_mean_grad()),
        hessian: true,
        ready_grads: false,
    }
}

/// The options themselves, and a fraction rather than an N:M pattern.
pub(super) fn check_config(cfg: &PruneConfig) -> Result<()> {
    cfg.structured.check()?;
    if matches!(cfg.structured.saliency, Saliency::Taylor(_))
        && cfg.grad_norm != prunebench_kernels::GradNorm::L2
    {
        return Err(HarnessError::Config(
            "the Taylor saliencies read the l2 gradient accumulator (the diagonal Fisher); \
             --grad-norm l1 does not apply to structured pruning"
                .into(),
        ));
    }
    if matches!(cfg.sparsity, prunebench_kernels::Sparsity::NM { .. }) {
        return Err(HarnessError::Config(format!(
            "structured pruning takes a fraction of the layer's parameters, not the N:M pattern {}",
            cfg.sparsity
        )));
    }
    Ok(())
}
