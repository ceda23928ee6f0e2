//! The weight dtypes a checkpoint may hold, and conversion between their bytes and f32.

use half::{bf16, f16};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        match d {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    pub fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            DType::F32 => safetensors::Dtype::F32,
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Little-endian bytes to f32 (bytes need not be aligned).
    pub fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    /// Each value as this dtype stores it: rounded to nearest even, as `encode` writes it
    /// and `decode` reads it back (f32 is unchanged).
    pub fn round_trip(self, values: &mut [f32]) {
        match self {
            DType::F32 => {}
            DType::F16 => values
                .iter_mut()
                .for_each(|v| *v = f16::from_f32(*v).to_f32()),
            DType::BF16 => values
                .iter_mut()
                .for_each(|v| *v = bf16::from_f32(*v).to_f32()),
        }
    }

    /// The index of the first finite value that would not be finite once stored: beyond the
    /// dtype's range (f16 ends at 65504), rounding makes it Inf. NaN and Inf given are not
    /// counted (they are stored as they are; test inputs are made with them).
    pub fn first_out_of_range(self, values: &[f32]) -> Option<usize> {
        let overflows = |v: f32| {
            v.is_finite()
                && match self {
                    DType::F32 => false,
                    DType::F16 => f16::from_f32(v).is_infinite(),
                    DType::BF16 => bf16::from_f32(v).is_infinite(),
                }
        };
        values.iter().position(|&v| overflows(v))
    }

    /// Like `encode`, but fails with the index `first_out_of_range` finds.
    pub fn encode_in_range(self, values: &[f32]) -> Result<Vec<u8>, usize> {
        match self.first_out_of_range(values) {
            Some(i) => Err(i),
            None => Ok(self.encode(values)),
        }
    }

    /// The name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }

    /// f32 to little-endian bytes of this dtype (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => values
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            DType::BF16 => values
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }
}
