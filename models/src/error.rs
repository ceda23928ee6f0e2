//! Errors of models, checkpoints and calibration files, each naming the file or tensor at fault.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("unknown model '{name}': known models are {known}")]
    UnknownModel { name: String, known: String },
    #[error("unknown linear '{name}': expected all, or a list of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")]
    UnknownLinear { name: String },
    #[error("layer {layer} is out of range: {model} has {layers} layers (0-{last})", last = layers.saturating_sub(1))]
    LayerOutOfRange {
        layer: usize,
        model: String,
        layers: usize,
    },
    // The source is part of the message, so it is not also reported as a cause.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Something other than the expected kind of file stands at an input path: a directory,
    /// a FIFO, a device, a symbolic-link loop or a dangling link.
    #[error("{path} is {found}, expected {expected}")]
    NotAFile {
        path: PathBuf,
        found: &'static str,
        expected: String,
    },
    #[error("{path}: not a valid safetensors file (truncated or corrupt?): {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    BadConfig { path: PathBuf, detail: String },
    #[error("tensor {name} is missing (looked in {path})")]
    MissingTensor { name: String, path: PathBuf },
    #[error("tensor {name} in {path} has shape {actual:?}, expected {expected:?}")]
    WrongShape {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("tensor {name} in {path} has dtype {dtype}; supported are F32, F16 and BF16")]
    UnsupportedDtype {
        name: String,
        path: PathBuf,
        dtype: String,
    },
    #[error(
        "tensor {name} in {path} has a non-finite value (NaN or Inf) at row {row}, column {col}"
    )]
    NonFinite {
        name: String,
        path: PathBuf,
        row: usize,
        col: usize,
    },
    #[error(
        "tensor {name} in {path} has a non-finite value (NaN or Inf) at sample {sample}, token {token}, column {col}"
    )]
    NonFiniteInput {
        name: String,
        path: PathBuf,
        sample: usize,
        token: usize,
        col: usize,
    },
    /// A ready statistic whose values no accumulation could have produced.
    #[error("tensor {name} in {path} is not a valid {statistic}: {detail}")]
    InvalidStatistic {
        name: String,
        path: PathBuf,
        statistic: &'static str,
        detail: String,
    },
    #[error(
        "{path}: cannot write: tensor {name} has {value} at row {row}, column {col}, beyond the range of {dtype} (it would be stored as Inf); nothing was written"
    )]
    OutOfRange {
        name: String,
        path: PathBuf,
        dtype: &'static str,
        value: f32,
        row: usize,
        col: usize,
    },
    #[error(
        "tensor {name} in {path} has shape {shape:?}: only a 1-D or 2-D tensor is read as a matrix"
    )]
    NotAMatrix {
        name: String,
        path: PathBuf,
        shape: Vec<usize>,
    },
    #[error("{path}: cannot write: {detail}")]
    Write { path: PathBuf, detail: String },
    #[error("no tokenizer.json in {dir}: give token ids with --token-ids FILE instead")]
    NoTokenizer { dir: PathBuf },
    /// A tokenizer or token-id file that cannot be used.
    #[error("{path}: {detail}")]
    BadTokens { path: PathBuf, detail: String },
    /// Token ids that do not make the windows asked for, or a window length the model
    /// cannot take.
    #[error("{0}")]
    Text(String),
    #[error("{0}")]
    Calibration(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    }
}
