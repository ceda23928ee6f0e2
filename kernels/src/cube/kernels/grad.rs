//! The gradient statistics of §2: the accumulation A ← A + (c·g)² or |c·g| from a given
//! gradient (§2(a)), fused with the product g = dYᵀX that forms it (§2(b)), and the
//! finalisation (a square root for l2). The accumulation is memory-bound and vectorised over
//! 4, 2 or 1 f32; the fused path is the tiled GEMM with the square in its epilogue.

use cubecl::prelude::*;

use super::super::storage::{arg, same_slabs, CubeTensor};
use super::super::CubeBackend;
use super::fill::{vector_width, BLOCK};
use super::gemm::{gemm, Gemm, View, EPI_GRAD_L1, EPI_GRAD_L2};
use crate::error::Result;
use crate::ops::{check, GradNorm, GBLM_GRAD_SCALE};
use crate::plan::aligned_runs;

#[cube(launch_unchecked)]
fn grad_acc_kernel<N: Size>(
    acc: &mut Array<Vector<f32, N>>,
    g: &Array<Vector<f32, N>>,
    scale: f32,
    #[comptime] l1: bool,
) {
    let i = ABSOLUTE_POS;
    if i < acc.len() {
        let v = g[i] * Vector::new(scale);
        if comptime![l1] {
            acc[i] += Vector::abs(v);
        } else {
            acc[i] += v * v;
        }
    }
}

#[cube(launch_unchecked)]
fn grad_finalize_kernel<N: Size>(
    acc: &Array<Vector<f32, N>>,
    out: &mut Array<Vector<f32, N>>,
    #[comptime] l2: bool,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        if comptime![l2] {
            out[i] = Vector::sqrt(acc[i]);
        } else {
            out[i] = acc[i];
        }
    }
}

/// A ← A + (c·g)² or |c·g| over matching slabs (also the epilogue of the split fused path).
pub fn grad_accumulate<R: Runtime>(
    b: &CubeBackend<R>,
    acc: &CubeTensor,
    g: &CubeTensor,
    norm: GradNorm,
) -> Result<()> {
    check::same("gradient accumulator vs g", acc.shape(), g.shape())?;
    same_slabs("gradient accumulator vs g", &acc.slabs, &g.slabs)?;
    let v = vector_width(acc.cols);
    for (s, n, cubes) in b.vector_slabs(acc, v) {
        // SAFETY: one thread per vector of two slabs of equal length.
        unsafe {
            grad_acc_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                v,
                arg(&acc.handles[s], n),
                arg(&g.handles[s], n),
                GBLM_GRAD_SCALE,
                norm == GradNorm::L1,
            );
        }
    }
    Ok(())
}

/// The same update with g given as a raw slab-sized buffer (the split fused path).
pub fn grad_accumulate_slab<R: Runtime>(
    b: &CubeBackend<R>,
    acc: &CubeTensor,
    s: usize,
    g: &cubecl::server::Handle,
    norm: GradNorm,
) {
    let n = acc.slab_len(s);
    let v = vector_width(acc.cols);
    // SAFETY: `g` holds at least the slab's n values.
    unsafe {
        grad_acc_kernel::launch_unchecked::<R>(
            &b.client,
            b.grid(n / v, BLOCK),
            CubeDim::new_1d(BLOCK),
            v,
            arg(&acc.handles[s], n),
            arg(g, n),
            GBLM_GRAD_SCALE,
            norm == GradNorm::L1,
        );
    }
}

pub fn grad_finalize<R: Runtime>(
    b: &CubeBackend<R>,
    acc: &CubeTensor,
    norm: GradNorm,
) -> Result<CubeTensor> {
    let out = b.alloc_tensor(acc.rows, acc.cols)?;
    let v = vector_width(acc.cols);
    for (s, n, cubes) in b.vector_slabs(acc, v) {
        // SAFETY: one thread per vector of two slabs of equal length.
        unsafe {
            grad_finalize_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                v,
                arg(&acc.handles[s], n),
                arg(&out.handles[s], n),
                norm == GradNorm::L2,
            );
        }
    }
    Ok(out)
}

pub fn grad_accumulate_fused<R: Runtime>(
    b: &CubeBackend<R>,
    acc: &CubeTensor,
    dy: &CubeTensor,
    x: &CubeTensor,
    norm: GradNorm,
) -> Result<()> {
    check::fused_grad(acc.shape(), dy.shape(), x.shape())?;
    let (rows, cols, tokens) = (dy.cols, x.cols, x.rows);
    if tokens == 0 {
        return Ok(());
    }
    let segs = aligned_runs(&dy.slabs, &x.slabs, tokens);
    let epi = match norm {
        GradNorm::L2 => EPI_GRAD_L2,
        GradNorm::L1 => EPI_GRAD_L1,
    };
    for s in 0..acc.handles.len() {
        let (r0, rn) = acc.slabs.range(s);
        if rn == 0 {
            continue;
        }
        let c = View::rows(&acc.handles[s], acc.slab_len(s), 0, cols);
        if let [(_, len, sa, la, sb, lb)] = segs[..] {
            // The fused path: g = dYᵀX tile by tile, squared (or abs) into A, never stored.
            gemm(
                b,
                &Gemm {
                    alpha: GBLM_GRAD_SCALE,
                    epi,
                    ..Gemm::store(
                        rn,
                        cols,
                        len,
                        View::transposed(&dy.handles[sa], dy.slab_len(sa), la * rows + r0, rows),
                        View::rows(&x.handles[sb], x.slab_len(sb), lb * cols, cols),
                        c,
                    )
                },
            );
        } else {
            // dY or X spans several bindings: the square needs the whole sum over tokens, so g
            // is accumulated for this slab of rows in a scratch buffer first, then squared in.
            let g = b.scratch(acc.slab_len(s))?;
            for (i, &(_, len, sa, la, sb, lb)) in segs.iter().enumerate() {
                gemm(
                    b,
                    &Gemm {
                        beta: if i == 0 { None } else { Some(1.0) },
                        ..Gemm::store(
                            rn,
                            cols,
                            len,
                            View::transposed(
                                &dy.handles[sa],
                                dy.slab_len(sa),
                                la * rows + r0,
                                rows,
                            ),
                            View::rows(&x.handles[sb], x.slab_len(sb), lb * cols, cols),
                            View::rows(&g, acc.slab_len(s), 0, cols),
                        )
                    },
                );
            }
            grad_accumulate_slab(b, acc, s, &g, norm);
        }
    }
    Ok(())
}
