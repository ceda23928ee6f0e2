//! Strided 2D copies between bindings (panels of the Cholesky, diagonal blocks of the
//! triangular inverse, the rows of U an OBS block needs), and the non-finite scan.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, CubeTensor};
use super::super::CubeBackend;
use super::fill::BLOCK;
use crate::error::Result;

/// dst[d_off + i·d_ld + j] = src[s_off + i·s_ld + j] for i < rows, j < cols.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn copy2d_kernel(
    src: &Array<f32>,
    dst: &mut Array<f32>,
    s_off: u32,
    s_ld: u32,
    d_off: u32,
    d_ld: u32,
    rows: u32,
    cols: u32,
) {
    let idx = ABSOLUTE_POS as u32;
    if idx < rows * cols {
        let i = idx / cols;
        let j = idx % cols;
        dst[(d_off + i * d_ld + j) as usize] = src[(s_off + i * s_ld + j) as usize];
    }
}

/// A rectangle inside a binding: `off` of its first element, `ld` between rows.
pub struct Rect<'a> {
    pub h: &'a Handle,
    pub len: usize,
    pub off: usize,
    pub ld: usize,
}

/// Copies a `rows x cols` rectangle.
pub fn copy2d<R: Runtime>(
    b: &CubeBackend<R>,
    src: Rect<'_>,
    dst: Rect<'_>,
    rows: usize,
    cols: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    // SAFETY: the callers' rectangles lie inside their bindings; one thread per element.
    unsafe {
        copy2d_kernel::launch_unchecked::<R>(
            &b.client,
            b.grid(rows * cols, BLOCK),
            CubeDim::new_1d(BLOCK),
            arg(src.h, src.len),
            arg(dst.h, dst.len),
            src.off as u32,
            src.ld as u32,
            dst.off as u32,
            dst.ld as u32,
            rows as u32,
            cols as u32,
        );
    }
}

/// Copies rows [r0, r1) of `t` (any slabs) into a contiguous `(r1 − r0) x cols` buffer.
pub fn gather_rows<R: Runtime>(
    b: &CubeBackend<R>,
    t: &CubeTensor,
    r0: usize,
    r1: usize,
    dst: &Handle,
) {
    let cols = t.cols;
    let len = (r1 - r0) * cols;
    for (s, lo, hi) in t.slabs.covering(r0, r1) {
        let local = lo - t.slabs.range(s).0;
        copy2d(
            b,
            Rect {
                h: &t.handles[s],
                len: t.slab_len(s),
                off: local * cols,
                ld: cols,
            },
            Rect {
                h: dst,
                len,
                off: (lo - r0) * cols,
                ld: cols,
            },
            hi - lo,
            cols,
        );
    }
}

/// Records in `first[slot]` the smallest index of the slab whose value is NaN or ±Inf.
#[cube(launch_unchecked)]
fn nonfinite_kernel(x: &Array<f32>, first: &mut Array<Atomic<u32>>, n: u32, slot: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let bits = u32::reinterpret(x[i as usize]);
        if bits & 0x7F80_0000u32 == 0x7F80_0000u32 {
            first[slot as usize].fetch_min(i);
        }
    }
}

/// Rows [r0, r1) of `t` (any slabs) from the contiguous `src`: [`gather_rows`]'s inverse.
pub fn scatter_rows<R: Runtime>(
    b: &CubeBackend<R>,
    src: &Handle,
    t: &CubeTensor,
    r0: usize,
    r1: usize,
) {
    let cols = t.cols;
    let len = (r1 - r0) * cols;
    for (s, lo, hi) in t.slabs.covering(r0, r1) {
        let local = lo - t.slabs.range(s).0;
        copy2d(
            b,
            Rect {
                h: src,
                len,
                off: (lo - r0) * cols,
                ld: cols,
            },
            Rect {
                h: &t.handles[s],
                len: t.slab_len(s),
                off: local * cols,
                ld: cols,
            },
            hi - lo,
            cols,
        );
    }
}

/// The (row, col) of the first non-finite entry of `t`, if any.
pub fn first_nonfinite<R: Runtime>(
    b: &CubeBackend<R>,
    t: &CubeTensor,
) -> Result<Option<(usize, usize)>> {
    // One slot per slab: indices stay inside a slab, below 2^32 whatever the tensor's size.
    let slots = t.handles.len();
    let first = b.scratch_from(&vec![u32::MAX; slots])?;
    for s in 0..slots {
        let rn = t.slabs.range(s).1;
        let n = rn * t.cols;
        if n == 0 {
            continue;
        }
        // SAFETY: one thread per element of the slab.
        unsafe {
            nonfinite_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(n, BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(&t.handles[s], n),
                arg(&first, slots),
                n as u32,
                s as u32,
            );
        }
    }
    let cols = t.cols.max(1);
    Ok(b.read_u32(&first, slots)?
        .iter()
        .enumerate()
        .find(|(_, &i)| i != u32::MAX)
        .map(|(s, &i)| (t.slabs.range(s).0 + i as usize / cols, i as usize % cols)))
}
