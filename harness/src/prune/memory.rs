//! The device memory a layer run holds at its peak, and the refusal of a layer that does not
//! fit, before any work.

use prunebench_kernels::Backend;
use prunebench_models::config::{InputGroup, LinearSpec};
use prunebench_models::LayerWeights;

use crate::error::{HarnessError, Result};

use super::context::{ordered_groups, LayerCx};
use super::records::{Calibration, PruneConfig};
use super::stats::Needs;

/// How a method holds the layer: one input group's statistics and linears at a time, or every
/// group's until the whole layer is planned (structured pruning, whose groups span a block's
/// producers and its consumer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    PerGroup,
    WholeLayer,
}

/// What a method's run holds on the device, from its registry entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Footprint {
    pub needs: Needs,
    pub scope: Scope,
}

/// Device bytes the layer needs at its peak.
pub(crate) fn working_set(
    layer: &LayerWeights,
    cfg: &PruneConfig,
    footprint: Footprint,
    tokens: usize,
) -> u64 {
    let f = 4u64;
    let Footprint { needs, scope } = footprint;
    let whole_layer = scope == Scope::WholeLayer;
    let per_group = ordered_groups(&layer.linears).into_iter().map(|g| {
        let ls: Vec<&LinearSpec> = layer
            .linears
            .iter()
            .map(|(l, _)| l)
            .filter(|l| l.input == g)
            .collect();
        let cols = ls.first().map_or(0, |l| l.cols) as u64;
        let factor = if needs.hessian { 2 } else { 1 };
        let group = f * (factor * cols * cols + cols + tokens as u64 * cols);
        let grads: u64 = if needs.grads || needs.mean_grad {
            ls.iter().map(|l| f * (l.rows * l.cols) as u64).sum()
        } else {
            0
        };
        // Original and pruned W of every member (all are pruned before the evaluation),
        // plus a score matrix for one at a time; a re-fit adds Δ, ΔH and Ḡ per linear.
        let resident: u64 = ls.iter().map(|l| f * 2 * (l.rows * l.cols) as u64).sum();
        let refit = if cfg.refit.items.is_empty() { 0 } else { 3 };
        let per_linear = ls
            .iter()
            .map(|l| f * ((1 + refit) * l.rows * l.cols + tokens * l.rows) as u64)
            .max()
            .unwrap_or(0);
        // A whole-layer run also holds each block consumer's explicit Hinv.
        let hinv = if whole_layer && matches!(g, InputGroup::AttnOut | InputGroup::MlpAct) {
            f * cols * cols
        } else {
            0
        };
        group + grads + resident + per_linear + hinv
    });
    if whole_layer {
        per_group.sum()
    } else {
        per_group.max().unwrap_or(0)
    }
}

/// Refuses a layer whose working set exceeds the backend's memory, before any work.
pub(crate) fn check_memory<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    layer: &LayerWeights,
    calib: &Calibration<'_>,
    footprint: Footprint,
) -> Result<()> {
    let Some(budget) = b.memory_budget() else {
        return Ok(());
    };
    let src = calib.source;
    let need = working_set(layer, cx.cfg, footprint, src.tokens());
    if need <= budget {
        return Ok(());
    }
    Err(HarnessError::Kernel {
        context: cx.at("memory check"),
        error: prunebench_kernels::KernelError::OutOfMemory {
            what: format!(
                "pruning {} with {} ({} samples x {} tokens)",
                layer.model.name,
                cx.cfg.method,
                src.samples(),
                src.tokens()
            ),
            needed: need,
            available: budget,
        },
    })
}
