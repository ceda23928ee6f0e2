//! Mask selection (§5) without sorting: radix select on order-preserving keys of the f32
//! scores (three digit passes of 11, 11 and 10 bits through a 2048-bin histogram), then one
//! pass that writes the packed mask: everything below the k-th key v is pruned, and of the
//! entries equal to v only the first ones in index order (the reference's tie rule), counted by
//! a cube-wide prefix sum over the mask words.
//!
//! - per row: one cube per row does the passes in shared memory;
//! - whole matrix: a global histogram per pass with the running digit in a small device
//!   state, then tie counts per chunk of rows and the same mask pass per chunk (global.rs);
//! - SparseGPT's block: a 16-bit histogram and the candidates of the threshold's bin, ended
//!   by the in-block kernel with the same mask pass (block.rs); where its buffer does not fit
//!   one binding, the whole-matrix selection over the block's columns;
//! - N:M: one pass, each thread owning lcm(32, m) columns (whole groups and whole mask words).
//!
//! Scores come from a comptime source: a score tensor, W with its statistics (the fused prune,
//! which also zeroes W in the mask pass), or SparseGPT's W²/d² over a column block.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{same_slabs, CubeMask, CubeTensor};
use super::super::CubeBackend;
use super::reduce::CUBE;
use super::score::{score_parts, SCORE_GBLM};
use crate::error::Result;
use crate::ops::{check, unstructured_k, MaskGroup, MaskPattern, Score};

mod block;
mod global;
mod keys;
mod nm;
mod row;

pub use block::{end_block_selection, select_block};
pub use global::select_global;
pub use keys::write_rows_mask;

/// Where the scores come from (the `SCORE_*` codes of `score.rs` are the fused sources).
pub const SRC_PLAIN: u32 = 3;
pub const SRC_OBS: u32 = 4;

const BINS: u32 = 2048;
/// Shared memory the per-row selection needs beside a cached row: the histogram, the scan and
/// some slack for the runtime's own use.
const SELECT_SHARED: usize = BINS as usize * 4 + CUBE as usize * 4 + 1024;

/// The score source of a tensor: its kind code, the activation statistic, the gradient.
pub(crate) struct Source<'a> {
    pub x: &'a CubeTensor,
    pub src: u32,
    pub aux: Option<&'a CubeTensor>,
    pub grad: Option<&'a CubeTensor>,
}

impl Source<'_> {
    /// Bindings for slab s: (x, len), (aux, len), (grad, len); absent statistics are bound to
    /// x (the kernel for that source never reads them).
    pub(crate) fn bind(&self, s: usize) -> [(&Handle, usize); 3] {
        let xl = self.x.slab_len(s);
        let xh = &self.x.handles[s];
        [
            (xh, xl),
            self.aux.map_or((xh, xl), |a| (&a.handles[0], a.cols)),
            self.grad
                .map_or((xh, xl), |g| (&g.handles[s], g.slab_len(s))),
        ]
    }
}

pub fn select_mask<R: Runtime>(
    b: &CubeBackend<R>,
    scores: &CubeTensor,
    pattern: MaskPattern,
) -> Result<CubeMask> {
    check::pattern(&pattern, scores.cols)?;
    let src = Source {
        x: scores,
        src: SRC_PLAIN,
        aux: None,
        grad: None,
    };
    match pattern {
        MaskPattern::Unstructured {
            sparsity,
            group: MaskGroup::PerRow,
        } => row::per_row(b, &src, unstructured_k(sparsity, scores.cols), false),
        MaskPattern::Unstructured {
            sparsity,
            group: MaskGroup::Matrix,
        } => {
            let mask = b.alloc_mask(scores.rows, scores.cols)?;
            let k = unstructured_k(sparsity, scores.rows * scores.cols);
            let view = (0, scores.cols);
            select_global(
                b, scores, None, None, view, k, SRC_PLAIN, &mask, false, false,
            )?;
            Ok(mask)
        }
        MaskPattern::NM { n, m } => nm::n_m(b, &src, n, m, false),
    }
}

pub fn prune_scored<R: Runtime>(
    b: &CubeBackend<R>,
    w: &CubeTensor,
    sc: Score<'_, CubeTensor>,
    pattern: MaskPattern,
) -> Result<CubeMask> {
    check::score(w.shape(), &sc, |t| t.shape())?;
    check::pattern(&pattern, w.cols)?;
    let (kind, act, grad) = score_parts(&sc);
    if let Some(g) = grad {
        same_slabs("gradient statistic vs W", &g.slabs, &w.slabs)?;
    }
    let src = Source {
        x: w,
        src: kind,
        aux: act,
        grad: if kind == SCORE_GBLM { grad } else { None },
    };
    match pattern {
        MaskPattern::Unstructured {
            sparsity,
            group: MaskGroup::PerRow,
        } => row::per_row(b, &src, unstructured_k(sparsity, w.cols), true),
        MaskPattern::NM { n, m } => nm::n_m(b, &src, n, m, true),
        MaskPattern::Unstructured {
            sparsity,
            group: MaskGroup::Matrix,
        } => {
            // Keys from W and its statistics in every pass, W zeroed in the mask pass: the
            // scores are never stored.
            let mask = b.alloc_mask(w.rows, w.cols)?;
            let k = unstructured_k(sparsity, w.rows * w.cols);
            let aux = src.aux.map(|a| (&a.handles[0], a.cols));
            let view = (0, w.cols);
            select_global(b, w, aux, src.grad, view, k, kind, &mask, false, true)?;
            Ok(mask)
        }
    }
}
