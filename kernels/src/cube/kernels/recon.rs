//! The reconstruction error of §9 as two traces, tr(D H Dᵀ) = Σ_ij (D·H)_ij · D_ij for
//! D = W − Ŵ and D = W: the tiled GEMM with a multiply-reduce epilogue (D·H is never
//! stored), one partial per output tile, summed on the device.

use cubecl::prelude::*;

use super::super::storage::CubeTensor;
use super::super::CubeBackend;
use super::gemm::{gemm, tile_shape, Gemm, View, EPI_DOT};
use super::reduce::sum;
use super::score::sub;
use crate::error::Result;
use crate::ops::{check, ReconError};

/// tr(D H Dᵀ) for D rows x n and H n x n, any slabs: each (D slab, H slab) pair contributes
/// the products over its share of K, and the epilogue is linear in the product, so partial
/// sums over K add up.
fn quadratic_trace<R: Runtime>(b: &CubeBackend<R>, d: &CubeTensor, h: &CubeTensor) -> Result<f64> {
    let n = d.cols;
    let mut launches = Vec::new();
    let mut total = 0;
    for ds in 0..d.handles.len() {
        for hs in 0..h.handles.len() {
            let rows = d.slabs.range(ds).1;
            let (h0, hn) = h.slabs.range(hs);
            if rows == 0 || hn == 0 {
                continue;
            }
            let (tm, tn) = tile_shape(rows, n, 1, b.fill_cubes);
            let tiles = rows.div_ceil(tm) * n.div_ceil(tn);
            launches.push((ds, hs, rows, h0, hn, total));
            total += tiles;
        }
    }
    if total == 0 {
        return Ok(0.0);
    }
    let partials = b.scratch(total)?;
    for (ds, hs, rows, h0, hn, base) in launches {
        let dl = d.slab_len(ds);
        gemm(
            b,
            &Gemm {
                epi: EPI_DOT,
                dot: Some((&partials, total, base)),
                ..Gemm::store(
                    rows,
                    n,
                    hn,
                    View::rows(&d.handles[ds], dl, h0, n),
                    View::rows(&h.handles[hs], h.slab_len(hs), 0, n),
                    View::rows(&d.handles[ds], dl, 0, n),
                )
            },
        );
    }
    sum(b, &partials, total)
}

pub fn recon_error<R: Runtime>(
    b: &CubeBackend<R>,
    w: &CubeTensor,
    pruned: &CubeTensor,
    h: &CubeTensor,
) -> Result<ReconError> {
    check::same("pruned vs original W", pruned.shape(), w.shape())?;
    check::same("Hessian vs W columns", h.shape(), (w.cols, w.cols))?;
    let delta = sub(b, w, pruned)?;
    Ok(ReconError {
        num: quadratic_trace(b, &delta, h)?,
        den: quadratic_trace(b, w, h)?,
    })
}
