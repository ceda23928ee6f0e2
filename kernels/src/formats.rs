//! The compressed weight formats of ALGORITHMS.md §13, exactly as every backend stores them, and
//! their reference compression and decompression on the host.
//!
//! All values are f16, two to a `u32` word, the lower-indexed value in the low 16 bits (what
//! WGSL's `pack2x16float` produces), so one layout serves backends with and without f16
//! storage. Every row is padded to whole units of 32 columns (dense: 8 columns), so that a
//! kernel can load a unit with vector loads that never cross a row; padding is always zero.
//!
//! - dense: `values` [rows, dense_words_per_row(cols)].
//! - 2:4: `values` [rows, two_four_value_words_per_row(cols)], one word per group of 4 columns
//!   holding its two kept values in column order; `meta` [rows, two_four_code_words_per_row]
//!   holding 8 four-bit codes per word, group g in bits 4(g mod 8)..: PyTorch's
//!   `_semi_structured_conversions` codes (low 2 bits the first kept index, high 2 bits the
//!   second). A group with fewer than two kept entries stores kept zeros, coded as PyTorch does.
//! - bitmap: `meta` [rows, bitmap_words_per_row(cols)], bit set = kept, lowest column in the
//!   LSB; `values` the kept values of every row, row after row in column order, value k in half
//!   k mod 2 of word k/2, padded to whole vec4 words; `offsets` [rows + 1], the index of each
//!   row's first value (the last entry is the kept count).

use half::f16;
use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};
use crate::tensor::{Mask, Matrix};

/// A device weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightFormat {
    /// Dense f16: the baseline every sparse format is timed against.
    Dense,
    /// 2:4 semi-structured: two kept values of every four columns and a 4-bit code.
    TwoFour,
    /// Unstructured: a kept-bit per entry, the kept values compacted, row offsets.
    Bitmap,
}

impl WeightFormat {
    pub fn name(&self) -> &'static str {
        match self {
            WeightFormat::Dense => "dense",
            WeightFormat::TwoFour => "2:4",
            WeightFormat::Bitmap => "bitmap",
        }
    }
}

/// Columns a kernel treats as one unit: a mask word, a code word, 8 dense vec4 loads.
pub const UNIT_COLS: usize = 32;

pub fn dense_words_per_row(cols: usize) -> usize {
    cols.div_ceil(8) * 4
}
pub fn two_four_value_words_per_row(cols: usize) -> usize {
    cols.div_ceil(UNIT_COLS) * 8
}
pub fn two_four_code_words_per_row(cols: usize) -> usize {
    cols.div_ceil(UNIT_COLS)
}
pub fn bitmap_words_per_row(cols: usize) -> usize {
    cols.div_ceil(32)
}
/// Words holding `kept` bitmap values: whole vec4s, at least one (no empty device buffer).
pub fn bitmap_value_words(kept: usize) -> usize {
    kept.div_ceil(8).max(1) * 4
}

/// The largest f32 that rounds to a finite f16 (65504 + half an ulp, exclusive).
pub const F16_LIMIT: f32 = 65520.0;

/// A compressed weight on the host, in the device layout (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedWeight {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<u32>,
    /// 2:4 codes or bitmap kept-bits; empty for dense.
    pub meta: Vec<u32>,
    /// Bitmap row offsets; empty otherwise.
    pub offsets: Vec<u32>,
}

impl PackedWeight {
    /// Bytes of the stored weight, every buffer counted: the work model's weight traffic.
    pub fn bytes(&self) -> u64 {
        4 * (self.values.len() + self.meta.len() + self.offsets.len()) as u64
    }

    /// Checks the buffer sizes against the format's layout, so a malformed upload is refused
    /// before a kernel could read out of bounds.
    pub fn check_layout(&self) -> Result<()> {
        let (r, c) = (self.rows, self.cols);
        let want = |what: &str, got: usize, need: usize| {
            if got == need {
                Ok(())
            } else {
                Err(KernelError::Shape(format!(
                    "{} weight {r}x{c}: {what} has {got} words, the layout needs {need}",
                    self.format.name()
                )))
            }
        };
        match self.format {
            WeightFormat::Dense => {
                want("values", self.values.len(), r * dense_words_per_row(c))?;
                want("meta", self.meta.len(), 0)?;
                want("offsets", self.offsets.len(), 0)
            }
            WeightFormat::TwoFour => {
                check_two_four_cols(c)?;
                want(
                    "values",
                    self.values.len(),
                    r * two_four_value_words_per_row(c),
                )?;
                want("codes", self.meta.len(), r * two_four_code_words_per_row(c))?;
                want("offsets", self.offsets.len(), 0)
            }
            WeightFormat::Bitmap => {
                want("bits", self.meta.len(), r * bitmap_words_per_row(c))?;
                want("offsets", self.offsets.len(), r + 1)?;
                let kept = *self.offsets.last().unwrap_or(&0) as usize;
                want("values", self.values.len(), bitmap_value_words(kept))
            }
        }
    }
}

pub fn check_two_four_cols(cols: usize) -> Result<()> {
    if !cols.is_multiple_of(4) {
        return Err(KernelError::InvalidArgument(format!(
            "the 2:4 format needs the column count to be a multiple of 4, got {cols}"
        )));
    }
    Ok(())
}

/// Shape checks every backend runs before compressing.
pub fn check_compress(w: (usize, usize), mask: (usize, usize), format: WeightFormat) -> Result<()> {
    if w != mask {
        return Err(KernelError::Shape(format!(
            "mask is {}x{} but the weight is {}x{}",
            mask.0, mask.1, w.0, w.1
        )));
    }
    if w.0 == 0 || w.1 == 0 {
        return Err(KernelError::Shape(format!(
            "cannot compress an empty {}x{} weight",
            w.0, w.1
        )));
    }
    if format == WeightFormat::TwoFour {
        check_two_four_cols(w.1)?;
    }
    Ok(())
}

/// Shape checks every backend runs before a product Y = X·Wᵀ.
pub fn check_matmul(x: (usize, usize), w: (usize, usize)) -> Result<()> {
    if x.0 == 0 {
        return Err(KernelError::Shape(
            "X has N = 0 tokens: a product needs at least one".into(),
        ));
    }
    if x.1 != w.1 {
        return Err(KernelError::Shape(format!(
            "X has {} columns but the weight has {} (Y = X·Wᵀ)",
            x.1, w.1
        )));
    }
    Ok(())
}

/// The error for a 2:4 group that keeps more than two entries (backends report the first).
pub fn not_two_four(row: usize, group: usize) -> KernelError {
    KernelError::InvalidArgument(format!(
        "the weight is not 2:4: row {row}, group {group} (columns {}..={}) keeps more than 2 of 4",
        4 * group,
        4 * group + 3
    ))
}

/// The error for a kept value that f16 cannot hold (backends report the first in row order).
pub fn outside_f16(row: usize, col: usize) -> KernelError {
    KernelError::InvalidArgument(format!(
        "the kept weight at row {row}, column {col} is not finite or outside the f16 range \
         (|w| < {F16_LIMIT})"
    ))
}

/// PyTorch's 2:4 code for a group's kept flags (`_sparse_semi_structured_from_dense_cutlass`):
/// the two indices it stores, low index first. With fewer than two kept it picks pruned slots
/// (whose values are stored as zeros); the Boolean form is PyTorch's own.
pub fn two_four_indices(kept: [bool; 4]) -> (u32, u32) {
    let [m0, m1, m2, _] = kept;
    let bit0 = !m0 && m1;
    let bit1 = !m0 && !m1;
    let bit2 = bit1 || !m2;
    let bit3 = bit0 || !m1 || m2;
    let i0 = bit0 as u32 | (bit1 as u32) << 1;
    let i1 = bit2 as u32 | (bit3 as u32) << 1;
    (i0, i1)
}

pub fn two_four_code(kept: [bool; 4]) -> u32 {
    let (i0, i1) = two_four_indices(kept);
    i0 | i1 << 2
}

pub fn f16_bits(v: f32) -> u32 {
    f16::from_f32(v).to_bits() as u32
}

pub fn f16_value(bits: u32) -> f32 {
    f16::from_bits(bits as u16).to_f32()
}

/// Value `k` of a packed f16 array.
pub fn half_at(words: &[u32], k: usize) -> f32 {
    f16_value((words[k / 2] >> (16 * (k % 2))) & 0xFFFF)
}

fn put_half(words: &mut [u32], k: usize, bits: u32) {
    words[k / 2] |= bits << (16 * (k % 2));
}

/// Rounds every entry to the nearest f16 (ties to even): weights that are exactly f16, so a
/// compression round trip can be checked bit for bit.
pub fn round_to_f16(m: &Matrix) -> Matrix {
    Matrix {
        rows: m.rows,
        cols: m.cols,
        data: m.data.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
    }
}

/// The reference compression of W under `mask` (true = pruned): pruned entries are dropped by
/// the mask, never by their value, and kept values round to the nearest f16.
pub fn compress(w: &Matrix, mask: &Mask, format: WeightFormat) -> Result<PackedWeight> {
    check_compress(w.shape(), (mask.rows, mask.cols), format)?;
    let (rows, cols) = w.shape();
    for r in 0..rows {
        for c in 0..cols {
            let v = w.get(r, c);
            if !mask.get(r, c) && (v.is_nan() || v.abs() >= F16_LIMIT) {
                return Err(outside_f16(r, c));
            }
        }
    }
    let mut p = PackedWeight {
        format,
        rows,
        cols,
        values: Vec::new(),
        meta: Vec::new(),
        offsets: Vec::new(),
    };
    let kept_value = |r: usize, c: usize| {
        if mask.get(r, c) {
            0
        } else {
            f16_bits(w.get(r, c))
        }
    };
    match format {
        WeightFormat::Dense => {
            let wpr = dense_words_per_row(cols);
            p.values = vec![0; rows * wpr];
            for r in 0..rows {
                let row = &mut p.values[r * wpr..(r + 1) * wpr];
                for c in 0..cols {
                    put_half(row, c, kept_value(r, c));
                }
            }
        }
        WeightFormat::TwoFour => {
            let (vpr, cpr) = (
                two_four_value_words_per_row(cols),
                two_four_code_words_per_row(cols),
            );
            p.values = vec![0; rows * vpr];
            p.meta = vec![0; rows * cpr];
            for r in 0..rows {
                for g in 0..cols / 4 {
                    let kept = std::array::from_fn(|i| !mask.get(r, 4 * g + i));
                    if kept.iter().filter(|&&k| k).count() > 2 {
                        return Err(not_two_four(r, g));
                    }
                    let (i0, i1) = two_four_indices(kept);
                    p.values[r * vpr + g] = kept_value(r, 4 * g + i0 as usize)
                        | kept_value(r, 4 * g + i1 as usize) << 16;
                    p.meta[r * cpr + g / 8] |= two_four_code(kept) << (4 * (g % 8));
                }
            }
        }
        WeightFormat::Bitmap => {
            let bpr = bitmap_words_per_row(cols);
            let kept = rows * cols - mask.count();
            p.meta = vec![0; rows * bpr];
            p.values = vec![0; bitmap_value_words(kept)];
            p.offsets = Vec::with_capacity(rows + 1);
            let mut k = 0;
            for r in 0..rows {
                p.offsets.push(k as u32);
                for c in 0..cols {
                    if !mask.get(r, c) {
                        p.meta[r * bpr + c / 32] |= 1 << (c % 32);
                        put_half(&mut p.values, k, kept_value(r, c));
                        k += 1;
                    }
                }
            }
            p.offsets.push(k as u32);
        }
    }
    Ok(p)
}

/// The reference decompression: the dense f32 weight with zeros where nothing is stored.
pub fn decompress(p: &PackedWeight) -> Result<Matrix> {
    p.check_layout()?;
    let (rows, cols) = (p.rows, p.cols);
    let mut m = Matrix::zeros(rows, cols);
    match p.format {
        WeightFormat::Dense => {
            let wpr = dense_words_per_row(cols);
            for r in 0..rows {
                for c in 0..cols {
                    m.data[r * cols + c] = half_at(&p.values[r * wpr..], c);
                }
            }
        }
        WeightFormat::TwoFour => {
            let (vpr, cpr) = (
                two_four_value_words_per_row(cols),
                two_four_code_words_per_row(cols),
            );
            for r in 0..rows {
                for g in 0..cols / 4 {
                    let code = (p.meta[r * cpr + g / 8] >> (4 * (g % 8))) & 0xF;
                    let word = &p.values[r * vpr + g..r * vpr + g + 1];
                    // The second index is the later one; a kept zero may share nothing.
                    m.data[r * cols + 4 * g + (code & 3) as usize] = half_at(word, 0);
                    m.data[r * cols + 4 * g + (code >> 2) as usize] = half_at(word, 1);
                }
            }
        }
        WeightFormat::Bitmap => {
            let bpr = bitmap_words_per_row(cols);
            for r in 0..rows {
                let mut k = p.offsets[r] as usize;
                for c in 0..cols {
                    if p.meta[r * bpr + c / 32] >> (c % 32) & 1 == 1 {
                        m.data[r * cols + c] = half_at(&p.values, k);
                        k += 1;
                    }
                }
                if k != p.offsets[r + 1] as usize {
                    return Err(KernelError::InvalidArgument(format!(
                        "bitmap row {r}: its bits count {} kept values, its offsets {}",
                        k - p.offsets[r] as usize,
                        p.offsets[r + 1] - p.offsets[r]
                    )));
                }
            }
        }
    }
    Ok(m)
}

/// W with the masked entries zeroed and the rest rounded to f16: what a round trip must give.
pub fn masked_f16(w: &Matrix, mask: &Mask) -> Matrix {
    Matrix::from_fn(w.rows, w.cols, |r, c| {
        if mask.get(r, c) {
            0.0
        } else {
            f16::from_f32(w.get(r, c)).to_f32()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's table for the six 2:4 patterns (kept flags -> code), from the comment in
    /// `torch/sparse/_semi_structured_conversions.py`, and its fallbacks for fewer kept.
    const PYTORCH_CODES: [([bool; 4], u32); 11] = [
        ([true, true, false, false], 0b0100),
        ([true, false, true, false], 0b1000),
        ([false, true, true, false], 0b1001),
        ([true, false, false, true], 0b1100),
        ([false, true, false, true], 0b1101),
        ([false, false, true, true], 0b1110),
        ([false, false, false, false], 0b1110),
        ([false, false, false, true], 0b1110),
        ([false, false, true, false], 0b1110),
        ([false, true, false, false], 0b1101),
        ([true, false, false, false], 0b1100),
    ];

    #[test]
    fn two_four_codes_are_pytorchs() {
        for (kept, code) in PYTORCH_CODES {
            assert_eq!(two_four_code(kept), code, "{kept:?}");
        }
    }

    #[test]
    fn layouts_pad_rows_to_whole_units() {
        assert_eq!(dense_words_per_row(37), 20);
        assert_eq!(two_four_value_words_per_row(36), 16);
        assert_eq!(two_four_code_words_per_row(36), 2);
        assert_eq!(bitmap_value_words(0), 4);
        assert_eq!(bitmap_value_words(9), 8);
    }
}
