//! Structured pruning (EfficientLLM, ALGORITHMS.md §11): whole FFN channels and attention
//! groups scored, removed round by round with the structured OBS update of their consumer,
//! and the layer compacted. A group spans a block's producers and its consumer, so the method
//! runs over the whole layer (`layer`) rather than per input group; its options and record are
//! part of the layer schema (`crate::prune::records`).

mod block;
mod geometry;
mod layer;
mod select;
mod spec;
mod summary;
mod work;

pub(crate) use layer::prune_layer;
pub(crate) use spec::SPEC;
pub(crate) use work::work_cases;
