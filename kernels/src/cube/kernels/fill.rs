//! Filling buffers with a 32-bit pattern (zeros, NaN poison, all-ones masks) and the launch
//! geometry shared by the elementwise kernels.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, CubeTensor};
use super::super::CubeBackend;
use crate::plan;

/// Threads per cube of the elementwise kernels.
pub const BLOCK: u32 = 256;

impl<R: Runtime> CubeBackend<R> {
    /// A cube count covering `units` threads of `per_cube` per cube (at least one cube), laid
    /// over x then y within the device's per-dimension limits (the shared plan's grid);
    /// kernels index with `ABSOLUTE_POS`, which spans every dimension.
    pub(crate) fn grid(&self, units: usize, per_cube: u32) -> CubeCount {
        let cubes = units.div_ceil(per_cube.max(1) as usize) as u64;
        let [x, y, z] = plan::grid(cubes, self.max_cube_count.0);
        CubeCount::Static(x, y, z)
    }

    /// One cube per row of `rows` (none for no row), laid out as [`Self::grid`]; kernels
    /// rebuild the row from `CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X`.
    pub(crate) fn row_grid(&self, rows: usize) -> CubeCount {
        if rows == 0 {
            return CubeCount::Static(1, 0, 1);
        }
        self.grid(rows, 1)
    }

    /// The non-empty slabs of `t` as (slab, scalar length, cube count covering it in vectors
    /// of `v`): what every vectorised elementwise launch loops over.
    pub(crate) fn vector_slabs<'t>(
        &'t self,
        t: &'t CubeTensor,
        v: usize,
    ) -> impl Iterator<Item = (usize, usize, CubeCount)> + 't {
        (0..t.handles.len())
            .map(move |s| (s, t.slab_len(s)))
            .filter(|&(_, n)| n > 0)
            .map(move |(s, n)| (s, n, self.grid(n / v, BLOCK)))
    }
}

/// The widest vector (4, 2 or 1 f32) that divides `n`, for the memory-bound kernels.
pub fn vector_width(n: usize) -> usize {
    if n.is_multiple_of(4) {
        4
    } else if n.is_multiple_of(2) {
        2
    } else {
        1
    }
}

#[cube(launch_unchecked)]
fn fill_kernel<N: Size>(out: &mut Array<Vector<u32, N>>, value: u32) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = Vector::new(value);
    }
}

/// Sets the first `n` words of `h` to `value`.
pub fn fill_u32<R: Runtime>(b: &CubeBackend<R>, h: &Handle, n: usize, value: u32) {
    let v = vector_width(n);
    // SAFETY: one thread per vector of the n words, guarded by the array length.
    unsafe {
        fill_kernel::launch_unchecked::<R>(
            &b.client,
            b.grid(n / v, BLOCK),
            CubeDim::new_1d(BLOCK),
            v,
            arg(h, n),
            value,
        );
    }
}

#[cube(launch_unchecked)]
fn copy_u32_kernel(src: &Array<u32>, dst: &mut Array<u32>) {
    let i = ABSOLUTE_POS;
    if i < dst.len() {
        dst[i] = src[i];
    }
}

/// Copies `n` words bit for bit (masks must not pass through f32 registers).
pub fn copy_u32<R: Runtime>(b: &CubeBackend<R>, src: &Handle, dst: &Handle, n: usize) {
    // SAFETY: one thread per word of two buffers holding at least n words.
    unsafe {
        copy_u32_kernel::launch_unchecked::<R>(
            &b.client,
            b.grid(n, BLOCK),
            CubeDim::new_1d(BLOCK),
            arg(src, n),
            arg(dst, n),
        );
    }
}
