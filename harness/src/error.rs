//! Errors of the harness: what went wrong, with the layer, group or linear it happened in.

use thiserror::Error;

use prunebench_kernels::KernelError;
use prunebench_models::ModelError;

#[derive(Debug, Error)]
pub enum HarnessError {
    // The source is part of the message, so it is not also reported as a cause.
    #[error("{context}: {error}")]
    Kernel { context: String, error: KernelError },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, HarnessError>;

/// Attaches where a kernel error happened.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, KernelError> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|error| HarnessError::Kernel {
            context: what(),
            error,
        })
    }
}
