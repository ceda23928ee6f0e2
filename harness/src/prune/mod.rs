//! The layer toolkit every method's run is built from (ALGORITHMS.md §1-§9, §12), below the
//! methods (`crate::methods`) and knowing none of them:
//! - the statistics pass (`stats`): per input group, one pass over the calibration samples
//!   gathers what the method declares it needs (each shared input's statistics once);
//! - the re-fit (`refit`) over a group's pruned linears;
//! - the evaluation (`evaluate`): each linear's reconstruction error against the same H;
//! - the checks before any work (`check`, `memory`), the shared context (`context`, `stages`),
//!   the schema (`records`) and one assembly of the layer's record and outputs (`assemble`).

pub(crate) mod assemble;
pub(crate) mod check;
pub(crate) mod context;
pub(crate) mod evaluate;
pub(crate) mod memory;
pub(crate) mod records;
pub mod refit;
pub(crate) mod stages;
pub(crate) mod stats;

pub use memory::Scope;
pub use records::{
    Calibration, GroupReport, LayerReport, LayerRun, LinearReport, Progress, PruneConfig, Purpose,
    StageTime,
};
pub use stats::Needs;
