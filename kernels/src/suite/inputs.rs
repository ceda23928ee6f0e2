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
}

pub(super) fn scaled(mut m: Matrix, k: f32) -> Matrix {
    for v in &mut m.data {
        *v *= k;
    }
    m
}

/// Calibration-like rows: a low-rank mix of heavy-tailed latents plus heavy-tailed noise, so
/// H has the correlated structure and spread diagonal that make the factor hard.
pub(super) fn correlated(tokens: usize, cols: usize, seed: u64) -> Matrix {
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
    let cpu = CpuBackend::new();
    let mut h = cpu.zeros(x.cols, x.cols)?;
    cpu.hessian_update(&mut h, 0, &cpu.upload(x)?, samples)?;
    cpu.download(&h)
}

/// Each entry pruned with probability 1/2.
pub(super) fn random_mask(rows: usize, cols: usize, seed: u64) -> Mask {
    let mut rng = Rng::new(seed);
    let mut m = Mask::empty(rows, cols);
    for r in 0..rows {
        for c in 0..cols {
            m.set(r, c, rng.uniform() < 0.5);
        }
    }
    m
}
