//! The pruning methods composed from the op set for whole LLaMA decoder layers, their
//! verification against the CPU reference, and the records they report.

pub mod bench;
pub mod error;
pub mod method;
mod methods;
pub mod model;
pub mod prune;
pub mod refit;
pub mod report;
pub mod results;
pub mod verify;

pub use error::{HarnessError, Result};
pub use method::{Method, Needs};
pub use methods::structured::config as structured;
pub use methods::structured::{
    AttnUnit, Budget, Compensate, ConfigDelta, Saliency, StructuredConfig, StructuredReport,
};
pub use prune::{prune_layer, Calibration, LayerRun, Progress, PruneConfig};
pub use refit::{RefitConfig, RefitItem};
