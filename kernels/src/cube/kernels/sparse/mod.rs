//! The compressed weight formats of §13 on the device: compression with its validation,
//! decompression, and the product Y = X·Wᵀ from each format. Buffers have exactly the host
//! layout of [`crate::formats`] (f16 values two to a u32, rows padded to whole units), so the
//! device and the reference exchange them word for word.

use cubecl::prelude::*;

pub mod compress;
pub mod half;
pub mod matmul;
mod tiled;

/// Linear cube index over a 2D grid of cubes (one cube per row, rows past the device's x limit).
#[cube]
pub fn row_cube() -> u32 {
    CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X
}

/// The bits of 32-column unit `u` that lie inside the row (bits past the last column of a
/// stored bitmap are ignored, as the reference does).
#[cube]
pub fn valid_bits(u: u32, cols: u32) -> u32 {
    let left = cols - u * 32u32;
    let mut v = 0xFFFF_FFFFu32;
    if left < 32u32 {
        v = (1u32 << left) - 1u32;
    }
    v
}

/// The value at half index `k` of a packed f16 array, as f16 bits.
#[cube]
pub fn half_at(vals: &Array<u32>, k: u32) -> u32 {
    (vals[(k >> 1u32) as usize] >> ((k & 1u32) * 16u32)) & 0xFFFFu32
}

/// The chunks [first, last) of `ch` columns that this cube's part (`CUBE_POS_Z`) of a
/// column split stages: `per_part` of them (`plan::column_parts`), all where not split.
#[cube]
pub fn part_chunks(cols: u32, ch: u32, per_part: u32) -> (u32, u32) {
    let chunks = (cols + ch - 1u32) / ch;
    let first = CUBE_POS_Z * per_part;
    let mut last = first + per_part;
    if last > chunks {
        last = chunks;
    }
    (first, last)
}

/// How many values a bitmap row keeps in its first `words` bit words from `word0`: where a
/// later part of a column split starts its value index (whole words: the padding is in the
/// last).
#[cube]
pub fn kept_before(meta: &Array<u32>, word0: u32, words: u32) -> u32 {
    let mut k = 0u32;
    for u in 0..words {
        k += u32::count_ones(meta[(word0 + u) as usize]);
    }
    k
}
