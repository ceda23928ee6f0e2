//! Deterministic inputs for each case: heavy-tailed, never zero (so an unwritten output is
//! caught), with deliberate ties in the mask cases and a dead column in the Hessian cases.
//! Statistics the op consumes (H, U) come from the reference, then travel as f32 like any
//! input, so each backend is tested on exactly the same numbers.

use super::case::OpCase;
use super::families::by_family;
use crate::cpu::CpuBackend;
use crate::error::Result;
use crate::formats::PackedWeight;
use crate::ops::Backend;
use crate::rng::{heavy_tailed, Rng};
use crate::tensor::{Mask, Matrix};

/// The host inputs of one case, by role.
#[derive(Clone, Debug, Default)]
pub struct CaseInputs {
    pub tensors: Vec<(&'static str, Matrix)>,
    pub mask: Option<Mask>,
    /// Samples already folded into a running statistic (act, H) before this update.
    pub seen: usize,
    pub dead: Vec<usize>,
    pub damp: f64,
    /// The reference's compression of `w` under `mask`, for the product cases (so a backend's
    /// product is tested on exactly the reference's encoding).
    pub packed: Option<PackedWeight>,
    /// Index lists by role (removed columns, kept rows, kept columns); a role absent here
    /// means every index.
    pub indices: Vec<(&'static str, Vec<usize>)>,
    /// Token ids by role (an embedding's ids, the LM head's targets with `NO_TARGET` rows).
    pub token_ids: Vec<(&'static str, Vec<u32>)>,
}

impl CaseInputs {
    pub fn get(&self, name: &str) -> &Matrix {
        &self
            .tensors
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("case input '{name}' was never generated"))
            .1
    }

    pub fn index(&self, name: &str) -> Option<&[usize]> {
        self.indices
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn token_ids(&self, name: &str) -> &[u32] {
        self.token_ids
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
            .unwrap_or_else(|| panic!("case token ids '{name}' were never generated"))
    }

    pub fn generate(case: &OpCase) -> Result<Self> {
        by_family!(case.op.family(), f => f::inputs(case))
    }

    /// The case's inputs at their shapes, with the values that the reference would compute
    /// (Hessians, factors, inverses, SparseGPT's weights, the re-fit residuals) replaced by
    /// stand-ins that cost nothing: for runs that never read the values, such as the
    /// compile-only runtime, where at model sizes the reference's statistics would take
    /// minutes per case. Random draws are zeros (drawing them is most of the rest).
    pub fn generate_shapes_only(case: &OpCase) -> Result<Self> {
        crate::rng::skipping_draws(|| Self::generate(case))
    }
}

/// Whether the inputs being generated on this thread need their shapes only (see
/// [`CaseInputs::generate_shapes_only`]).
pub(super) fn shapes_only() -> bool {
    crate::rng::draws_skipped()
}

/// A stand-in for a statistic the reference computes: the identity of size n (positive
/// definite, so any consumer's own checks pass).
pub(super) fn identity(n: usize) -> Matrix {
    let mut m = Matrix::zeros(n, n);
    for i in 0..n {
        m.data[i * n + i] = 1.0;
    }
    m
}

pub(super) fn scaled(mut m: Matrix, k: f32) -> Matrix {
    // Shape-only draws are zeros, which scale to themselves: the pass would only touch
    // their untouched pages.
    if shapes_only() {
        return m;
    }
    for v in &mut m.data {
        *v *= k;
    }
    m
}

/// Calibration-like rows: a low-rank mix of heavy-tailed latents plus heavy-tailed noise, so
/// H has the correlated structure and spread diagonal that make the factor hard.
pub(super) fn correlated(tokens: usize, cols: usize, seed: u64) -> Matrix {
    if shapes_only() {
        return heavy_tailed(tokens, cols, seed);
    }
    let rank = 8.min(cols);
    let z = heavy_tailed(tokens, rank, seed);
    let mix = heavy_tailed(rank, cols, seed + 100);
    let mut x = heavy_tailed(tokens, cols, seed + 200);
    for t in 0..tokens {
        for k in 0..rank {
            let zk = z.get(t, k);
            for j in 0..cols {
                x.data[t * cols + j] += zk * mix.get(k, j);
            }
        }
    }
    x
}

/// H (§3) of `case.tokens` calibration-like rows with column c/2 dead (zero in every row), as
/// the factor and inverse cases take it.
pub(super) fn hessian_with_dead_column(case: &OpCase) -> Result<Matrix> {
    let (c, s) = (case.cols, case.seed);
    let mut x = correlated(case.tokens, c, s);
    let dead = c / 2;
    for t in 0..x.rows {
        x.data[t * c + dead] = 0.0;
    }
    hessian_of(&x, 1)
}

/// H of §3 from one batch of `samples` samples stacked in `x`, by the reference, as f32.
pub(super) fn hessian_of(x: &Matrix, samples: usize) -> Result<Matrix> {
    if shapes_only() {
        return Ok(identity(x.cols));
    }
    let cpu = CpuBackend::new();
    let mut h = cpu.zeros(x.cols, x.cols)?;
    cpu.hessian_update(&mut h, 0, &cpu.upload(x)?, samples)?;
    cpu.download(&h)
}

/// Each entry pruned with probability 1/2.
pub(super) fn random_mask(rows: usize, cols: usize, seed: u64) -> Mask {
    let mut m = Mask::empty(rows, cols);
    if shapes_only() {
        return m;
    }
    let mut rng = Rng::new(seed);
    for r in 0..rows {
        for c in 0..cols {
            m.set(r, c, rng.uniform() < 0.5);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::small_cases;

    /// Shape-only inputs stand in for the real ones: every tensor, mask, index list and id
    /// list of every small case at the same shape, and the flag is off again afterwards.
    #[test]
    fn shape_only_inputs_have_the_real_shapes() {
        for case in small_cases() {
            let real = CaseInputs::generate(&case).unwrap();
            let quick = CaseInputs::generate_shapes_only(&case).unwrap();
            assert!(!shapes_only());
            let shapes = |i: &CaseInputs| {
                let t: Vec<_> = i.tensors.iter().map(|(n, m)| (*n, m.shape())).collect();
                let m = i.mask.as_ref().map(|m| (m.rows, m.cols));
                let p = i.packed.as_ref().map(|p| (p.format, p.rows, p.cols));
                let idx: Vec<_> = i.indices.iter().map(|(n, v)| (*n, v.len())).collect();
                let ids: Vec<_> = i.token_ids.iter().map(|(n, v)| (*n, v.len())).collect();
                (t, m, p, idx, ids)
            };
            assert_eq!(shapes(&real), shapes(&quick), "{}", case.name());
        }
    }
}
