//! The ceiling probes: a vectorised device-to-device copy (bandwidth) and independent FMA
//! chains (arithmetic rate), both over every slab of a tensor.

use cubecl::prelude::*;

use super::super::storage::{arg, same_slabs, CubeTensor};
use super::super::CubeBackend;
use super::fill::{vector_width, BLOCK};
use crate::error::Result;
use crate::ops::{check, FMA_PROBE_ADD, FMA_PROBE_MUL};

#[cube(launch_unchecked)]
fn copy_kernel<N: Size>(src: &Array<Vector<f32, N>>, dst: &mut Array<Vector<f32, N>>) {
    let i = ABSOLUTE_POS;
    if i < dst.len() {
        dst[i] = src[i];
    }
}

/// Each thread runs the N lanes of one vector as N independent chains of `iters` FMAs.
#[cube(launch_unchecked)]
fn fma_kernel<N: Size>(t: &mut Array<Vector<f32, N>>, iters: u32, m: f32, a: f32) {
    let i = ABSOLUTE_POS;
    if i < t.len() {
        let mut v = t[i];
        let mv = Vector::new(m);
        let av = Vector::new(a);
        for _ in 0..iters {
            v = fma(v, mv, av);
        }
        t[i] = v;
    }
}

pub fn copy<R: Runtime>(b: &CubeBackend<R>, dst: &CubeTensor, src: &CubeTensor) -> Result<()> {
    check::same("copy destination vs source", dst.shape(), src.shape())?;
    same_slabs("copy destination vs source", &dst.slabs, &src.slabs)?;
    let v = vector_width(src.cols);
    for (s, n, cubes) in b.vector_slabs(src, v) {
        // SAFETY: one thread per vector of two slabs of equal length.
        unsafe {
            copy_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                v,
                arg(&src.handles[s], n),
                arg(&dst.handles[s], n),
            );
        }
    }
    Ok(())
}

pub fn fma_probe<R: Runtime>(b: &CubeBackend<R>, t: &CubeTensor, iters: u32) -> Result<()> {
    let v = vector_width(t.cols);
    for (s, n, cubes) in b.vector_slabs(t, v) {
        // SAFETY: one thread per vector of the slab, guarded by its length.
        unsafe {
            fma_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                v,
                arg(&t.handles[s], n),
                iters,
                FMA_PROBE_MUL,
                FMA_PROBE_ADD,
            );
        }
    }
    Ok(())
}
