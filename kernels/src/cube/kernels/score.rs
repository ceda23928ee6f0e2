//! The scores of §4 and applying a mask (§5), with the small elementwise helpers other ops
//! share (a difference, zeroed columns): memory-bound, vectorised over 4, 2 or 1 f32 (the
//! widest that divides the row), one thread per vector.

use cubecl::prelude::*;

use super::super::storage::{arg, same_slabs, CubeMask, CubeTensor};
use super::super::CubeBackend;
use super::fill::{vector_width, BLOCK};
use crate::error::Result;
use crate::ops::{check, Score};

/// Score kinds as comptime codes: each kind compiles its own kernel.
pub const SCORE_MAGNITUDE: u32 = 0;
pub const SCORE_WANDA: u32 = 1;
pub const SCORE_GBLM: u32 = 2;

/// Splits a `Score` into its comptime kind and the statistics' tensors.
pub fn score_parts<'a>(
    score: &Score<'a, CubeTensor>,
) -> (u32, Option<&'a CubeTensor>, Option<&'a CubeTensor>) {
    match *score {
        Score::Magnitude => (SCORE_MAGNITUDE, None, None),
        Score::Wanda { act } => (SCORE_WANDA, Some(act), None),
        Score::Gblm { act, grad } => (SCORE_GBLM, Some(act), Some(grad)),
    }
}

/// §4 on one f32: |w|·sqrt(a) (+ |w|·g). The fused prune kernels use this same expression, so
/// fused and unfused scores are the same f32 values.
#[cube]
pub fn score_scalar(w: f32, act: f32, grad: f32, #[comptime] kind: u32) -> f32 {
    let a = f32::abs(w);
    let mut s = a;
    if comptime![kind == SCORE_WANDA] {
        s = a * f32::sqrt(act);
    }
    if comptime![kind == SCORE_GBLM] {
        s = a * f32::sqrt(act) + a * grad;
    }
    s
}

#[cube(launch_unchecked)]
fn score_kernel<N: Size>(
    w: &Array<Vector<f32, N>>,
    act: &Array<Vector<f32, N>>,
    grad: &Array<Vector<f32, N>>,
    out: &mut Array<Vector<f32, N>>,
    cols_v: u32,
    #[comptime] kind: u32,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let a = Vector::abs(w[i]);
        if comptime![kind == SCORE_MAGNITUDE] {
            out[i] = a;
        } else {
            let s = Vector::sqrt(act[(i as u32 % cols_v) as usize]);
            if comptime![kind == SCORE_WANDA] {
                out[i] = a * s;
            } else {
                out[i] = a * s + a * grad[i];
            }
        }
    }
}

/// Zeroes the lanes whose mask bit is set. N divides 32 and the row length, so the N lanes of
/// one vector share a mask word.
#[cube(launch_unchecked)]
fn apply_mask_kernel<N: Size>(
    w: &mut Array<Vector<f32, N>>,
    mask: &Array<u32>,
    cols: u32,
    wpr: u32,
) {
    let i = ABSOLUTE_POS;
    if i < w.len() {
        let e = i as u32 * N::value() as u32;
        let r = e / cols;
        let c = e % cols;
        let word = mask[(r * wpr + c / 32) as usize];
        let bits = word >> (c % 32);
        if bits & ((1u32 << N::value() as u32) - 1) != 0 {
            let mut v = w[i];
            #[unroll]
            for l in 0..N::value() {
                if (bits >> l as u32) & 1 == 1 {
                    v[l] = 0.0;
                }
            }
            w[i] = v;
        }
    }
}

#[cube(launch_unchecked)]
fn sub_kernel<N: Size>(
    a: &Array<Vector<f32, N>>,
    b: &Array<Vector<f32, N>>,
    out: &mut Array<Vector<f32, N>>,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = a[i] - b[i];
    }
}

/// W[:, dead[j]] = 0 for the dead columns of §6, one thread per (row, dead column).
#[cube(launch_unchecked)]
fn zero_columns_kernel(w: &mut Array<f32>, dead: &Array<u32>, n_dead: u32, cols: u32, rows: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < rows * n_dead {
        let r = i / n_dead;
        let c = dead[(i % n_dead) as usize];
        w[(r * cols + c) as usize] = 0.0;
    }
}

pub fn score<R: Runtime>(
    b: &CubeBackend<R>,
    w: &CubeTensor,
    score: Score<'_, CubeTensor>,
) -> Result<CubeTensor> {
    check::score(w.shape(), &score, |t| t.shape())?;
    let (kind, act, grad) = score_parts(&score);
    if let Some(g) = grad {
        same_slabs("gradient statistic vs W", &g.slabs, &w.slabs)?;
    }
    let out = b.alloc_tensor(w.rows, w.cols)?;
    let v = vector_width(w.cols);
    for (s, n, cubes) in b.vector_slabs(w, v) {
        // Unused statistics are bound to W: the kernel of that kind never reads them.
        let act_h = act.map_or(&w.handles[s], |a| &a.handles[0]);
        let act_n = act.map_or(n, |a| a.cols);
        let grad_h = grad.map_or(&w.handles[s], |g| &g.handles[s]);
        // SAFETY: one thread per vector of the slab, guarded by the output length; the
        // statistics are read at the column of that vector, which exists in `act`.
        unsafe {
            score_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                v,
                arg(&w.handles[s], n),
                arg(act_h, act_n),
                arg(grad_h, n),
                arg(&out.handles[s], n),
                (w.cols / v) as u32,
                kind,
            );
        }
    }
    Ok(out)
}

pub fn apply_mask<R: Runtime>(b: &CubeBackend<R>, w: &CubeTensor, mask: &CubeMask) -> Result<()> {
    check::same("mask vs W", (mask.rows, mask.cols), w.shape())?;
    same_slabs("mask vs W", &mask.slabs, &w.slabs)?;
    let v = vector_width(w.cols);
    for (s, n, cubes) in b.vector_slabs(w, v) {
        // SAFETY: one thread per vector; its row and word lie inside the matching mask slab.
        unsafe {
            apply_mask_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                v,
                arg(&w.handles[s], n),
                arg(&mask.handles[s], mask.slab_len(s)),
                w.cols as u32,
                mask.words_per_row() as u32,
            );
        }
    }
    Ok(())
}

/// a − b into a new tensor of the same shape.
pub fn sub<R: Runtime>(b: &CubeBackend<R>, x: &CubeTensor, y: &CubeTensor) -> Result<CubeTensor> {
    check::same("difference operands", x.shape(), y.shape())?;
    same_slabs("difference operands", &x.slabs, &y.slabs)?;
    let out = b.alloc_tensor(x.rows, x.cols)?;
    let v = vector_width(x.cols);
    for (s, n, cubes) in b.vector_slabs(x, v) {
        // SAFETY: one thread per vector of three slabs of equal length.
        unsafe {
            sub_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                v,
                arg(&x.handles[s], n),
                arg(&y.handles[s], n),
                arg(&out.handles[s], n),
            );
        }
    }
    Ok(out)
}

/// Zeroes the columns `dead` of every row of `w`.
pub fn zero_columns<R: Runtime>(b: &CubeBackend<R>, w: &CubeTensor, dead: &[usize]) -> Result<()> {
    if dead.is_empty() {
        return Ok(());
    }
    let list: Vec<u32> = dead.iter().map(|&d| d as u32).collect();
    let dead_h = b.scratch_from(&list)?;
    for s in 0..w.handles.len() {
        let rows = w.slabs.range(s).1;
        if rows == 0 {
            continue;
        }
        // SAFETY: the dead columns were validated to be < cols; one thread per (row, column).
        unsafe {
            zero_columns_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(rows * list.len(), BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(&w.handles[s], w.slab_len(s)),
                arg(&dead_h, list.len()),
                list.len() as u32,
                w.cols as u32,
                rows as u32,
            );
        }
    }
    Ok(())
}
