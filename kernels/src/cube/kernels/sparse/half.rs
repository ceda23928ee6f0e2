//! f16 <-> f32 in integer arithmetic, so the formats need no f16 storage or shader-f16 on the
//! device (CubeCL's wgpu runtime on lavapipe has neither), and the results are the same on
//! every runtime whatever it does with denormals.

use cubecl::prelude::*;

use super::super::super::storage::arg;
use super::super::super::CubeBackend;
use super::super::fill::BLOCK;
use crate::error::Result;

/// The f16 bits of the f32 with bits `x`, rounded to nearest even: the `half` crate's
/// `f16::from_f32` bit for bit (overflow to infinity, NaN kept quiet with its top payload).
#[cube]
pub fn f16_from_f32_bits(x: u32) -> u32 {
    let sign = (x >> 16u32) & 0x8000u32;
    let e = (x >> 23u32) & 0xFFu32;
    let m = x & 0x7F_FFFFu32;
    let mut out = sign;
    if e == 0xFFu32 {
        let mut quiet = 0u32;
        if m != 0u32 {
            quiet = 0x200u32;
        }
        out = sign | 0x7C00u32 | quiet | (m >> 13u32);
    } else if e >= 143u32 {
        // 2^16 and above: past the largest finite f16 even before rounding.
        out = sign | 0x7C00u32;
    } else if e >= 113u32 {
        // A normal f16. Round half to even on the 13 dropped bits; a carry out of the
        // mantissa correctly moves into the exponent (and up to infinity).
        let mut h = sign | ((e - 112u32) << 10u32) | (m >> 13u32);
        if (m & 0x1000u32) != 0u32 && (m & 0x2FFFu32) != 0u32 {
            h += 1u32;
        }
        out = h;
    } else if e >= 102u32 {
        // A subnormal f16 (or the smallest normal after rounding): shift in the implicit bit.
        let mm = m | 0x80_0000u32;
        let shift = 126u32 - e;
        let round = 1u32 << (shift - 1u32);
        let mut h = mm >> shift;
        if (mm & round) != 0u32 && (mm & (3u32 * round - 1u32)) != 0u32 {
            h += 1u32;
        }
        out = sign | h;
    }
    out
}

/// The f32 of the f16 bits `h` (low 16 bits): exact for every pattern, subnormals included,
/// without forming an f32 denormal (a device that flushes them would lose f16 subnormals).
/// NaNs stay NaN; their payload is not kept quiet.
#[cube]
pub fn f16_to_f32(h: u32) -> f32 {
    let e = h & 0x7C00u32;
    let mag = (h & 0x7FFFu32) << 13u32;
    // Rebias the exponent by 127 − 15; infinity and NaN by 255 − 31; a subnormal m·2⁻²⁴ as
    // 2⁻¹⁴·(1 + m/1024), whose implicit one is then taken away (exactly).
    let mut bias = 0x3800_0000u32;
    if e == 0x7C00u32 {
        bias = 0x7000_0000u32;
    }
    if e == 0u32 {
        bias = 0x3880_0000u32;
    }
    let mut v = f32::reinterpret(mag + bias);
    if e == 0u32 {
        // 2⁻¹⁴ (bits 0x3880_0000) as a literal: CubeCL's CUDA code generator writes a bit
        // cast of a constant as `reinterpret_cast<float const&>(uint32(..))`, which NVRTC
        // rejects (not an lvalue). The literal rounds to 2⁻¹⁴ exactly in f32.
        v -= 6.103_515_6e-5_f32;
    }
    f32::reinterpret(u32::reinterpret(v) | ((h & 0x8000u32) << 16u32))
}

/// The f32 bits of f16 bits `h`: [`f16_to_f32`] stored without passing through a float store.
#[cube]
pub fn f16_to_f32_bits(h: u32) -> u32 {
    u32::reinterpret(f16_to_f32(h))
}

#[cube(launch_unchecked)]
fn convert_kernel(input: &Array<u32>, out: &mut Array<u32>, n: u32, #[comptime] to_f16: bool) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        if comptime![to_f16] {
            out[i as usize] = f16_from_f32_bits(input[i as usize]);
        } else {
            out[i as usize] = f16_to_f32_bits(input[i as usize]);
        }
    }
}

impl<R: Runtime> CubeBackend<R> {
    fn convert(&self, input: &[u32], to_f16: bool) -> Result<Vec<u32>> {
        let n = input.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let src = self.scratch_from(input)?;
        let out = self.scratch(n)?;
        // SAFETY: one thread per word of two buffers of n words.
        unsafe {
            convert_kernel::launch_unchecked::<R>(
                &self.client,
                self.grid(n, BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(&src, n),
                arg(&out, n),
                n as u32,
                to_f16,
            );
        }
        self.read_u32(&out, n)
    }

    /// The device's f32 -> f16 conversion of the compressed formats (f16 bits per value), for
    /// checking it against the host's.
    pub fn f16_from_f32_on_device(&self, values: &[f32]) -> Result<Vec<u16>> {
        let bits: Vec<u32> = values.iter().map(|v| v.to_bits()).collect();
        Ok(self
            .convert(&bits, true)?
            .into_iter()
            .map(|h| h as u16)
            .collect())
    }

    /// The device's f16 -> f32 conversion of the compressed formats.
    pub fn f16_to_f32_on_device(&self, bits: &[u16]) -> Result<Vec<f32>> {
        let words: Vec<u32> = bits.iter().map(|&h| h as u32).collect();
        Ok(self
            .convert(&words, false)?
            .into_iter()
            .map(f32::from_bits)
            .collect())
    }
}
