//! The `#[cube]` kernels of the CubeCL backend, by op family, each with the host code that
//! launches it over a tensor's slabs.

// Kernel bodies are CubeCL's language, not plain Rust: a comptime branch must stay a separate
// `if` from the runtime condition inside it (folding them would make the test a runtime one),
// and integer `div_ceil` is not among the operations CubeCL expands.
#![allow(clippy::collapsible_if, clippy::manual_div_ceil)]

pub mod attention_backward;
pub mod backward;
pub mod copy;
pub mod factor;
pub mod fill;
pub mod forward;
pub mod gemm;
pub mod grad;
pub mod obs;
pub mod probe;
pub mod recon;
pub mod reduce;
pub mod refit;
pub mod score;
pub mod select;
pub mod sparse;
pub mod stats;
pub mod structured;
