//! Typed errors of the op set: every backend reports bad shapes, numerical failure and device
//! limits through these, so the CLI can print one clear line for each.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(
        "Cholesky factorisation failed at column {column}: the damped Hessian is not positive definite"
    )]
    NotPositiveDefinite { column: usize },
    #[error("non-finite value (NaN or Inf) in {what} at row {row}, column {col}")]
    NonFinite {
        what: String,
        row: usize,
        col: usize,
    },
    #[error("the device does not support this: {0}")]
    Unsupported(String),
    #[error(
        "not enough device memory: {what} needs {:.2} GiB, the device allows {:.2} GiB",
        *needed as f64 / (1u64 << 30) as f64,
        *available as f64 / (1u64 << 30) as f64
    )]
    OutOfMemory {
        what: String,
        needed: u64,
        available: u64,
    },
    #[error("device error: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, KernelError>;
