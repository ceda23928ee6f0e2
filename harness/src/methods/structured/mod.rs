//! Structured pruning (EfficientLLM, ALGORITHMS.md §11): whole FFN channels and attention
//! groups scored, removed round by round with the structured OBS update of their consumer,
//! and the layer compacted. Not a per-linear [`super::GroupStep`]: a group spans a block's
//! producers and its consumer, so the method runs over the whole layer (`layer`).

pub mod config;
mod geometry;
mod layer;
mod report;
mod select;
mod work;

pub use config::{AttnUnit, Budget, Compensate, Saliency, StructuredConfig};
pub(crate) use layer::prune_layer;
pub use report::{ConfigDelta, StructuredReport};
pub(crate) use work::work_cases;

use crate::method::Needs;

/// What the statistics pass gathers: H of every input (the consumers' for the saliency and
/// update, all of them for the evaluation), and for Taylor saliencies the gradient statistics.
pub(crate) fn needs(cfg: &StructuredConfig) -> Needs {
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
