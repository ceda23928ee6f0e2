//! The pruning methods composed from the op set for whole LLaMA decoder layers, their
//! verification against the CPU reference, and the records they report.

pub mod bench;
pub mod error;
pub mod method;
mod methods;
pub mod model;
pub mod prune;
pub mod report;
pub mod results;
pub mod verify;

pub use error::{HarnessError, Result};
pub use method::Method;
pub use methods::{prune_layer, working_set_bytes};
pub use prune::records::structured;
pub use prune::records::structured::{AttnUnit, Budget, Compensate, Saliency, StructuredConfig};
pub use prune::records::structured_report::{ConfigDelta, StructuredReport};
pub use prune::refit;
pub use prune::{Calibration, LayerRun, Needs, Progress, PruneConfig, Scope};
pub use refit::{RefitConfig, RefitItem};
