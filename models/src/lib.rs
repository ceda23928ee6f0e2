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
pub mod output;
pub mod synthetic;

pub use config::{InputGroup, LinearSpec, ModelConfig};
pub use dtype::DType;
pub use error::{ModelError, Result};
pub use synthetic::CalibrationSource;

use prunebench_kernels::Matrix;

/// One decoder layer's weights (those selected), converted to f32, with the dtype each came in.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub model: ModelConfig,
    pub layer: usize,
    /// The dtype of each linear, in the order of `linears`: a checkpoint may mix them, and each
    /// is written back in its own.
    pub dtypes: Vec<DType>,
    pub linears: Vec<(LinearSpec, Matrix)>,
}

impl LayerWeights {
    /// The dtype linear `name` came in (f32 for one this layer does not hold).
    pub fn dtype_of(&self, name: &str) -> DType {
        self.linears
            .iter()
            .zip(&self.dtypes)
            .find(|((l, _), _)| l.name == name)
            .map_or(DType::F32, |(_, &d)| d)
    }
}
