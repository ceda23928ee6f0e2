//! The `#[cube]` kernels of the CubeCL backend, by op family, each with the host code that
//! launches it over a tensor's slabs.

pub mod copy;
pub mod elementwise;
pub mod factor;
pub mod fill;
pub mod gemm;
pub mod obs;
pub mod recon;
pub mod reduce;
pub mod select;
pub mod stats;
