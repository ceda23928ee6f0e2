//! LLaMA layers as prunebench sees them: the family's shapes, seeded synthetic layers and
//! calibration data shaped like LLaMA activations, Hugging Face safetensors checkpoints read
//! one layer at a time and written back, and the calibration file format; for whole models,
//! the rest of a LLaMA config (RoPE included), token ids and their windows, and a pruned
//! checkpoint folder written back.

pub mod calibration;
pub mod checkpoint;
pub mod config;
mod dtype;
pub mod error;
pub mod gradients;
pub mod hf_out;
pub mod input;
pub mod llama;
mod mapped;
pub mod output;
pub mod synthetic;
pub mod synthetic_model;
pub mod text;

pub use config::{InputGroup, LinearSpec, ModelConfig};
pub use dtype::DType;
pub use error::{ModelError, Result};
pub use llama::{LlamaConfig, RopeScaling};
pub use synthetic::CalibrationSource;

/// Statistics read ready-made instead of accumulated (ALGORITHMS.md §1-§3): a calibration
/// file's `stat.*` tensors, or a model's gradients file; `None` where the source has none.
pub trait ReadyStats {
    fn ready_act_stat(&self, group: InputGroup) -> Result<Option<Matrix>>;
    fn ready_hessian(&self, group: InputGroup) -> Result<Option<Matrix>>;
    fn ready_grad(&self, linear: &LinearSpec) -> Result<Option<Matrix>>;

    /// §11's Taylor inputs of one linear, summed over the calibration samples; only the
    /// suite's own gradient pass has them (a statistic file holds the finished G alone).
    fn ready_grad_sums(&self, _linear: &LinearSpec) -> Result<Option<GradSums>> {
        Ok(None)
    }

    /// Whether [`ReadyStats::ready_grad_sums`] gives every linear's sums.
    fn has_grad_sums(&self) -> bool {
        false
    }
}

/// One linear's gradients summed over N samples (ALGORITHMS.md §11): the plain sum Σ_s g_s,
/// whose mean is Ḡ, and §2's l2 accumulator Σ_s (c·g_s)², whose mean over c² is the diagonal
/// Fisher F. Both unfinished, so that the saliency scales them by the sample count.
#[derive(Clone, Debug)]
pub struct GradSums {
    pub sum: Matrix,
    pub sq: Matrix,
}

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
    /// The RMSNorm weights in front of the groups that have one (q/k/v, gate/up), where the
    /// source holds them: the `norm` re-fit rescales them.
    pub norms: Vec<NormWeight>,
}

/// One RMSNorm weight γ of a layer.
#[derive(Clone, Debug, PartialEq)]
pub struct NormWeight {
    /// The input group whose columns γ scales.
    pub group: InputGroup,
    pub data: Vec<f32>,
    pub dtype: DType,
}

impl NormWeight {
    /// `input_layernorm` (before attention) or `post_attention_layernorm` (before the MLP).
    pub fn hf_name(group: InputGroup) -> Option<&'static str> {
        match group {
            InputGroup::AttnIn => Some("input_layernorm"),
            InputGroup::MlpIn => Some("post_attention_layernorm"),
            InputGroup::AttnOut | InputGroup::MlpAct => None,
        }
    }

    pub fn hf_tensor_name(group: InputGroup, layer: usize) -> Option<String> {
        Self::hf_name(group).map(|n| format!("model.layers.{layer}.{n}.weight"))
    }
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

    /// The norm weight in front of `group`, if the layer has it.
    pub fn norm(&self, group: InputGroup) -> Option<&NormWeight> {
        self.norms.iter().find(|n| n.group == group)
    }
}
