//! LLaMA layers as prunebench sees them: the family's shapes, seeded synthetic layers and
//! calibration data shaped like LLaMA activations, Hugging Face safetensors checkpoints read
//! one layer at a time and written back, and the calibration file format.

pub mod calibration;
pub mod checkpoint;
pub mod config;
mod dtype;
pub mod error;
pub mod input;
mod mapped;
pub mod synthetic;

pub use config::{InputGroup, LinearSpec, ModelConfig};
pub use dtype::DType;
pub use error::{ModelError, Result};
pub use synthetic::CalibrationSource;

use prunebench_kernels::Matrix;

/// One decoder layer's weights (those selected), converted to f32, with the dtype they came in.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub model: ModelConfig,
    pub layer: usize,
    pub dtype: DType,
    pub linears: Vec<(LinearSpec, Matrix)>,
}
