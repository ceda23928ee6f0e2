//! Calibration statistics: the activation statistic of §1 (a tiled column reduction), the
//! Hessian of §3 (a SYRK on the tiled GEMM with the running-mean rescale in its epilogue, then
//! a mirror of the lower triangle).

use cubecl::prelude::*;

use super::super::storage::{arg, CubeTensor};
use super::super::CubeBackend;
use super::gemm::{gemm_split, Of, Product};
use crate::error::Result;
use crate::ops::check;

/// Σ x² per column over one chunk of rows: 32 columns x 8 row lanes per cube, coalesced along
/// the row, then the 8 lanes reduced in shared memory.
#[cube(launch_unchecked)]
fn colsumsq_kernel(
    x: &Array<f32>,
    partial: &mut Array<f32>,
    rows: u32,
    cols: u32,
    chunk: u32,
    part_row0: u32,
) {
    let c = CUBE_POS_X * 32 + UNIT_POS_X;
    let (r0, r1) = chunk_rows(rows, chunk);
    let mut s = 0.0f32;
    if c < cols {
        let mut r = r0 + UNIT_POS_Y;
        while r < r1 {
            let v = x[(r * cols + c) as usize];
            s += v * v;
            r += 8;
        }
    }
    store_lane_total(s, partial, (part_row0 + CUBE_POS_Y) * cols + c, c < cols);
}

/// Rows [r0, r1) of the chunk of `chunk` rows at CUBE_POS_Y, cut at `rows`.
#[cube]
pub fn chunk_rows(rows: u32, chunk: u32) -> (u32, u32) {
    rows_of_chunk(CUBE_POS_Y, rows, chunk)
}

/// Rows [r0, r1) of chunk `g` of `chunk` rows, cut at `rows` (empty past the last chunk).
#[cube]
pub fn rows_of_chunk(g: u32, rows: u32, chunk: u32) -> (u32, u32) {
    let r0 = g * chunk;
    let mut r1 = r0 + chunk;
    if r1 > rows {
        r1 = rows;
    }
    (r0, r1)
}

/// The shares `s` of the 8 row lanes (UNIT_POS_Y) of a 32 x 8 cube added in shared memory;
/// row lane 0 writes its column lane's total to partial[slot] where `valid`. Every unit of
/// the cube calls it (it holds a barrier).
#[cube]
pub fn store_lane_total(s: f32, partial: &mut Array<f32>, slot: u32, valid: bool) {
    let mut sh = SharedMemory::<f32>::new(256usize);
    sh[(UNIT_POS_Y * 32 + UNIT_POS_X) as usize] = s;
    sync_cube();
    if UNIT_POS_Y == 0 && valid {
        let mut total = 0.0f32;
        #[unroll]
        for q in 0..8u32 {
            total += sh[(q * 32 + UNIT_POS_X) as usize];
        }
        partial[slot as usize] = total;
    }
}

/// Row chunks of a per-column reduction of `width` columns (32 per cube) over the slabs of
/// `t`: at most 64 chunks of 256 rows or more, so the partials stay small, but chunks down to
/// 32 rows (4 per row lane) where fewer would leave the launch under `fill` cubes (two waves
/// of the device where it reports them: 256 tokens of 4096 columns were 128 cubes). (rows
/// per chunk, chunks per slab, chunks in all.)
pub(super) fn row_chunks(t: &CubeTensor, width: usize, fill: usize) -> (usize, Vec<usize>, usize) {
    let chunk = chunk_rows_for(t.rows, width, fill);
    let chunks: Vec<usize> = (0..t.handles.len())
        .map(|s| t.slabs.range(s).1.div_ceil(chunk))
        .collect();
    let parts = chunks.iter().sum();
    (chunk, chunks, parts)
}

/// Rows per chunk of [`row_chunks`].
fn chunk_rows_for(rows: usize, width: usize, fill: usize) -> usize {
    let want = fill.div_ceil(width.div_ceil(32).max(1)).max(1);
    256.max(rows.div_ceil(64)).min(rows.div_ceil(want).max(32))
}

/// a ← a·keep + (Σ partials)/total, one thread per column.
#[cube(launch_unchecked)]
fn act_update_kernel(
    partial: &Array<f32>,
    act: &mut Array<f32>,
    parts: u32,
    cols: u32,
    keep: f32,
    total: f32,
    #[comptime] read_act: bool,
) {
    let c = ABSOLUTE_POS as u32;
    if c < cols {
        let mut s = 0.0f32;
        for p in 0..parts {
            s += partial[(p * cols + c) as usize];
        }
        let mut a = s / total;
        if comptime![read_act] {
            a += act[c as usize] * keep;
        }
        act[c as usize] = a;
    }
}

pub fn act_stat_update<R: Runtime>(
    b: &CubeBackend<R>,
    act: &CubeTensor,
    seen: usize,
    x: &CubeTensor,
    batch: usize,
) -> Result<()> {
    check::act_stat(act.shape(), x.shape(), batch)?;
    let cols = x.cols;
    if cols == 0 {
        return Ok(());
    }
    let (chunk, chunks, parts) = row_chunks(x, cols, b.fill_cubes);
    let partial = b.scratch(parts.max(1) * cols)?;
    let mut row0 = 0;
    for (s, h) in x.handles.iter().enumerate() {
        let rows = x.slabs.range(s).1;
        if rows == 0 {
            continue;
        }
        // SAFETY: each cube reads rows of its chunk below `rows` and columns below `cols` of
        // this slab, and writes one partial row inside the `parts x cols` buffer.
        unsafe {
            colsumsq_kernel::launch_unchecked::<R>(
                &b.client,
                CubeCount::Static(cols.div_ceil(32) as u32, chunks[s] as u32, 1),
                CubeDim::new_2d(32, 8),
                arg(h, x.slab_len(s)),
                arg(&partial, parts * cols),
                rows as u32,
                cols as u32,
                chunk as u32,
                row0 as u32,
            );
        }
        row0 += chunks[s];
    }
    let total = (seen + batch) as f64;
    // SAFETY: one thread per column of the 1 x cols statistic.
    unsafe {
        act_update_kernel::launch_unchecked::<R>(
            &b.client,
            CubeCount::Static(cols.div_ceil(256) as u32, 1, 1),
            CubeDim::new_1d(256),
            arg(&partial, parts * cols),
            arg(&act.handles[0], cols),
            parts as u32,
            cols as u32,
            (seen as f64 / total) as f32,
            total as f32,
            seen > 0,
        );
    }
    Ok(())
}

/// Copies the lower triangle of a symmetric matrix onto its upper triangle for the block of
/// rows `dst` (one slab) and columns given by the rows of `src` (another or the same slab):
/// H[r][c] = H[c][r] for c > r, through a padded 32x32 shared tile so reads and writes are both
/// coalesced. Both bindings are mutable because they may be the same buffer.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn mirror_kernel(
    dst: &mut Array<f32>,
    src: &mut Array<f32>,
    n: u32,
    dst_row0: u32,
    dst_rows: u32,
    src_row0: u32,
    src_rows: u32,
) {
    let tx = UNIT_POS_X;
    let ty = UNIT_POS_Y;
    let tr0 = CUBE_POS_Y * 32;
    let tc0 = CUBE_POS_X * 32;
    let mut sh = SharedMemory::<f32>::new(32usize * 33);
    #[unroll]
    for q in 0..4u32 {
        let sr = tc0 + ty + 8 * q;
        let dc = tr0 + tx;
        if sr < src_rows && dc < dst_rows {
            sh[((ty + 8 * q) * 33 + tx) as usize] = src[(sr * n + dst_row0 + dc) as usize];
        }
    }
    sync_cube();
    #[unroll]
    for q in 0..4u32 {
        let dr = tr0 + ty + 8 * q;
        let sc = tc0 + tx;
        let row = dst_row0 + dr;
        let col = src_row0 + sc;
        if dr < dst_rows && sc < src_rows && col > row {
            dst[(dr * n + col) as usize] = sh[(tx * 33 + ty + 8 * q) as usize];
        }
    }
}

/// Mirrors the lower triangle of `h` (n x n, any slabs) onto the upper one.
pub fn mirror_lower<R: Runtime>(b: &CubeBackend<R>, h: &CubeTensor) {
    let n = h.cols;
    for a in 0..h.handles.len() {
        let (a0, an) = h.slabs.range(a);
        for s in a..h.handles.len() {
            let (s0, sn) = h.slabs.range(s);
            if an == 0 || sn == 0 {
                continue;
            }
            // SAFETY: reads rows below src_rows of `src` and writes rows below dst_rows of
            // `dst`, at columns below n.
            unsafe {
                mirror_kernel::launch_unchecked::<R>(
                    &b.client,
                    CubeCount::Static(sn.div_ceil(32) as u32, an.div_ceil(32) as u32, 1),
                    CubeDim::new_2d(32, 8),
                    arg(&h.handles[a], h.slab_len(a)),
                    arg(&h.handles[s], h.slab_len(s)),
                    n as u32,
                    a0 as u32,
                    an as u32,
                    s0 as u32,
                    sn as u32,
                );
            }
        }
    }
}

pub fn hessian_update<R: Runtime>(
    b: &CubeBackend<R>,
    h: &CubeTensor,
    seen: usize,
    x: &CubeTensor,
    batch: usize,
) -> Result<()> {
    check::hessian(h.shape(), x.shape(), batch)?;
    let total = (seen + batch) as f64;
    let keep = (seen as f64 / total) as f32;
    // The lower triangle of XᵀX (a SYRK), rescaling the running mean once with the first
    // tokens; no sample so far means H is not read at all (as BLAS treats beta = 0).
    let p = Product {
        alpha: (2.0 / total) as f32,
        beta: (seen > 0).then_some(keep),
        lower: Some(0),
        b_lower: None,
    };
    gemm_split(b, p, Of::transposed(x), Of::rows(x), h);
    mirror_lower(b, h);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::chunk_rows_for;

    #[test]
    fn column_reductions_make_two_waves_where_rows_allow() {
        let cubes = |rows: usize, width: usize, fill| {
            width.div_ceil(32) * rows.div_ceil(chunk_rows_for(rows, width, fill))
        };
        // 256 tokens of 4096 columns: 128 cubes in one chunk; 3 chunks make 384.
        assert_eq!(cubes(256, 4096, 264), 384);
        // Wide enough alone, or many rows: at most 64 chunks of 256 rows or more, as before.
        assert_eq!(cubes(256, 11008, 264), 344);
        assert_eq!(chunk_rows_for(32768, 4096, 264), 512);
        // Chunks stay 32 rows or more; a device that reports nothing keeps one chunk here.
        assert_eq!(chunk_rows_for(40, 64, 264), 32);
        assert_eq!(chunk_rows_for(256, 4096, 0), 256);
    }
}
