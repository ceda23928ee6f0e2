//! Host-side data every backend exchanges: a row-major f32 matrix and a bit-packed mask.
//!
//! Masks are packed 32 columns to a `u32` word and each row starts on a fresh word, so a
//! per-row kernel owns whole words (no atomics) and a mask costs 1/32 of an f32 weight's
//! traffic. A set bit means *pruned*.

use crate::error::{KernelError, Result};

/// A row-major `rows x cols` matrix of f32; a vector is a `1 x n` matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(KernelError::Shape(format!(
                "{rows}x{cols} matrix needs {} values, got {}",
                rows * cols,
                data.len()
            )));
        }
        Ok(Self { rows, cols, data })
    }

    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f32) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for c in 0..cols {
                data.push(f(r, c));
            }
        }
        Self { rows, cols, data }
    }

    pub fn get(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.cols + c]
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Fails on the first NaN or Inf, naming where it is; `what` says which tensor.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(KernelError::NonFinite {
                what: what.to_string(),
                row: i / self.cols.max(1),
                col: i % self.cols.max(1),
            }),
        }
    }

    /// Stacks matrices with the same number of columns on top of each other.
    pub fn vstack(parts: &[Matrix]) -> Result<Matrix> {
        let cols = parts.first().map_or(0, |m| m.cols);
        let mut data = Vec::with_capacity(parts.iter().map(|m| m.data.len()).sum());
        for m in parts {
            if m.cols != cols {
                return Err(KernelError::Shape(format!(
                    "cannot stack a {}x{} matrix under {cols} columns",
                    m.rows, m.cols
                )));
            }
            data.extend_from_slice(&m.data);
        }
        Matrix::new(data.len() / cols.max(1), cols, data)
    }
}

/// A bit-packed `rows x cols` mask, `true` = pruned, each row padded to whole `u32` words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mask {
    pub rows: usize,
    pub cols: usize,
    pub bits: Vec<u32>,
}

impl Mask {
    pub fn words_per_row(cols: usize) -> usize {
        cols.div_ceil(32)
    }

    pub fn empty(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            bits: vec![0; rows * Self::words_per_row(cols)],
        }
    }

    pub fn from_bits(rows: usize, cols: usize, bits: Vec<u32>) -> Result<Self> {
        let wpr = Self::words_per_row(cols);
        if bits.len() != rows * wpr {
            return Err(KernelError::Shape(format!(
                "a {rows}x{cols} mask needs {} words, got {}",
                rows * wpr,
                bits.len()
            )));
        }
        // Padding bits past `cols` must be clear, or counts would be wrong.
        if !cols.is_multiple_of(32) {
            let pad = !0u32 << (cols % 32);
            for r in 0..rows {
                if bits[r * wpr + wpr - 1] & pad != 0 {
                    return Err(KernelError::InvalidArgument(format!(
                        "mask row {r} has bits set past column {cols}"
                    )));
                }
            }
        }
        Ok(Self { rows, cols, bits })
    }

    pub fn get(&self, r: usize, c: usize) -> bool {
        let w = self.bits[r * Self::words_per_row(self.cols) + c / 32];
        (w >> (c % 32)) & 1 == 1
    }

    pub fn set(&mut self, r: usize, c: usize, pruned: bool) {
        let i = r * Self::words_per_row(self.cols) + c / 32;
        if pruned {
            self.bits[i] |= 1 << (c % 32);
        } else {
            self.bits[i] &= !(1 << (c % 32));
        }
    }

    pub fn row_words(&self, r: usize) -> &[u32] {
        let wpr = Self::words_per_row(self.cols);
        &self.bits[r * wpr..(r + 1) * wpr]
    }

    pub fn count_row(&self, r: usize) -> usize {
        self.row_words(r)
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum()
    }

    pub fn count(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Fraction of entries pruned.
    pub fn density_pruned(&self) -> f64 {
        self.count() as f64 / (self.rows * self.cols).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits_round_trip_with_padding() {
        let mut m = Mask::empty(3, 37);
        m.set(0, 0, true);
        m.set(1, 36, true);
        m.set(2, 31, true);
        m.set(2, 32, true);
        assert_eq!(m.bits.len(), 6);
        assert!(m.get(1, 36) && !m.get(1, 35));
        assert_eq!(m.count(), 4);
        assert_eq!(m.count_row(2), 2);
        m.set(2, 31, false);
        assert_eq!(m.count_row(2), 1);
        assert!(Mask::from_bits(3, 37, m.bits.clone()).is_ok());
        let mut bad = m.bits.clone();
        bad[1] |= 1 << 10; // column 42 of row 0 does not exist
        assert!(Mask::from_bits(3, 37, bad).is_err());
    }

    #[test]
    fn matrix_shape_and_finiteness_are_checked() {
        assert!(Matrix::new(2, 3, vec![0.0; 5]).is_err());
        let mut m = Matrix::zeros(2, 3);
        m.data[4] = f32::NAN;
        match m.check_finite("w") {
            Err(KernelError::NonFinite { row, col, .. }) => assert_eq!((row, col), (1, 1)),
            other => panic!("expected NonFinite, got {other:?}"),
        }
    }
}
