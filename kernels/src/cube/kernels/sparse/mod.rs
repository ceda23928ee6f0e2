//! The compressed weight formats of §13 on the device: compression with its validation,
//! decompression, and the product Y = X·Wᵀ from each format. Buffers have exactly the host
//! layout of [`crate::formats`] (f16 values two to a u32, rows padded to whole units), so the
//! device and the reference exchange them word for word.

pub mod half;
