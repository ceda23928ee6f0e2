//! The op set of ALGORITHMS.md (§1-§7, §11-§14), as one trait ([`ops::Backend`]), with a CPU
//! reference that accumulates in f64 ([`cpu::CpuBackend`]) against which every GPU backend is
//! verified, and the GPU backends themselves behind cargo features.

#[cfg(any(feature = "wgpu", feature = "cubecl"))]
pub mod compose;
pub mod error;
pub mod formats;
pub mod host;
pub mod ops;
pub mod plan;
pub mod rng;
pub mod tensor;

#[cfg(any(feature = "wgpu", feature = "cubecl"))]
mod adapter;
pub mod cpu;
pub mod suite;
#[cfg(feature = "wgpu")]
pub mod wgpu;

#[cfg(feature = "cubecl")]
pub mod cube;

pub use error::KernelError;
pub use formats::{PackedWeight, WeightFormat};
pub use ops::nll_from_state;
pub use ops::{
    Backend, BackendInfo, GradNorm, HinvExplicit, HinvFactor, MaskGroup, MaskPattern, ObsOutcome,
    ObsSelection, ReconError, Score, ScoreKind, SegmentAxis, Sparsity, TaylorInputs, TaylorKind,
    TimeSource, NO_TARGET,
};
pub use tensor::{Mask, Matrix};
