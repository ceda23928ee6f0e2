//! Y = X·Wᵀ from a compressed weight (§13), one kernel per format of one design:
//!
//! - a cube of 256 threads takes 256/L rows of W and a block of TB tokens (TB = 1, 2, 4 or 8,
//!   comptime, from N: decode at N = 1 does no work for absent tokens);
//! - the block's X is staged in shared memory in column chunks (4096 values, 4096/TB columns;
//!   half that where a cube has only 16 KiB), zero past the last column and the last token,
//!   so padding needs no tests;
//! - L lanes share a row, each taking whole 32-column units of the chunk (one bitmap or code
//!   word, 4 vec4 of dense values, 2 vec4 of 2:4 values); dense and 2:4 lanes interleave
//!   units so that neighbouring lanes load neighbouring words; bitmap lanes take every unit
//!   together, lane j its columns j, j + L, ..., a kept column's value index being the row's
//!   count so far plus the popcount of the unit's bits below it (a ballot prefix without plane
//!   operations): neighbouring lanes read neighbouring values and no lane runs longer than
//!   another;
//! - weights are decoded to f32 in registers, products accumulate in f32 per token, and the
//!   L lanes of a row are summed through shared memory; tokens past N are not written;
//! - where the cubes fall short of two waves (LLaMA-7B's 4096 rows at 8 tokens make 256),
//!   the columns are split into parts of whole chunks (`plan::column_parts`, a cube per
//!   part in z), each part writing its partial outputs to a scratch buffer that a second
//!   pass sums into Y in part order; a bitmap part starts its value index after the row's
//!   kept values in the earlier parts' units.
//!
//! X and Y may each be split into slabs of tokens: a launch covers the tokens one X slab and
//! one Y slab share.

use cubecl::prelude::*;

use super::super::super::storage::{arg, CubePacked, CubeTensor};
use super::super::super::CubeBackend;
use super::super::gemm::sum_parts;
use super::super::reduce::CUBE;
use super::half::f16_to_f32;
use super::tiled;
use super::{half_at, kept_before, part_chunks, valid_bits};
use crate::error::Result;
use crate::formats::{self, WeightFormat};
use crate::plan;

/// X values staged per chunk, for every token block: 16 KiB of shared memory, or half of it
/// on devices with WebGPU's minimum of 16 KiB per cube.
const STAGE: u32 = 4096;
const SMALL_STAGE: u32 = 2048;

/// The largest token block.
const MAX_TB: usize = 8;

#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_x(
    x: &Array<f32>,
    xs: &mut SharedMemory<f32>,
    x_base: u32,
    nt: u32,
    cols: u32,
    c0: u32,
    #[comptime] tb: u32,
    #[comptime] stage: u32,
) {
    let ch = comptime![stage / tb];
    #[unroll]
    for l in 0..comptime![stage / CUBE] {
        let i = l * CUBE + UNIT_POS;
        let t = i / ch;
        let c = c0 + i % ch;
        let mut v = 0.0f32;
        if t < nt && c < cols {
            v = x[(x_base + t * cols + c) as usize];
        }
        xs[i as usize] = v;
    }
}

/// Sums the L lanes of each row through shared memory (reusing the staging buffer) and
/// writes the row's outputs for the block's tokens below `nt`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_rows(
    acc: &Array<f32>,
    xs: &mut SharedMemory<f32>,
    y: &mut Array<f32>,
    y_base: u32,
    rows: u32,
    r: u32,
    nt: u32,
    #[comptime] tb: u32,
    #[comptime] lanes: u32,
) {
    sync_cube();
    #[unroll]
    for t in 0..tb {
        xs[(t * CUBE + UNIT_POS) as usize] = acc[t as usize];
    }
    sync_cube();
    let lane = UNIT_POS % lanes;
    let first = UNIT_POS - lane;
    let mut t = lane;
    while t < tb {
        let mut s = 0.0f32;
        #[unroll]
        for j in 0..lanes {
            s += xs[(t * CUBE + first + j) as usize];
        }
        if r < rows && t < nt {
            y[(y_base + t * rows + r) as usize] = s;
        }
        t += lanes;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul_dense_kernel<N: Size>(
    x: &Array<f32>,
    vals: &Array<Vector<u32, N>>,
    y: &mut Array<f32>,
    rows: u32,
    cols: u32,
    ntok: u32,
    x_off: u32,
    y_off: u32,
    per_part: u32,
    part_len: u32,
    #[comptime] tb: u32,
    #[comptime] lanes: u32,
    #[comptime] stage: u32,
) {
    let ch = comptime![stage / tb];
    let per_lane = comptime![stage / tb / 32 / lanes];
    let mut xs = SharedMemory::<f32>::new(stage as usize);
    let mut acc = Array::<f32>::new(comptime![tb as usize]);
    #[unroll]
    for t in 0..tb {
        acc[t as usize] = 0.0;
    }
    let lane = UNIT_POS % lanes;
    let r = CUBE_POS_X * comptime![CUBE / lanes] + UNIT_POS / lanes;
    let tb0 = CUBE_POS_Y * tb;
    let mut nt = ntok - tb0;
    if nt > tb {
        nt = tb;
    }
    // Vec4 words per row: 8 columns each.
    let gpr = (cols + 7u32) / 8u32;
    let (first, last) = part_chunks(cols, ch, per_part);
    for chunk in first..last {
        let c0 = chunk * ch;
        sync_cube();
        stage_x(x, &mut xs, x_off + tb0 * cols, nt, cols, c0, tb, stage);
        sync_cube();
        if r < rows {
            for jj in 0..per_lane {
                let j = lane + jj * lanes;
                #[unroll]
                for q in 0..4u32 {
                    let g = c0 / 8u32 + j * 4u32 + q;
                    if g < gpr {
                        let v = vals[(r * gpr + g) as usize];
                        #[unroll]
                        for e in 0..4u32 {
                            let word = v[e as usize];
                            let lo = f16_to_f32(word & 0xFFFFu32);
                            let hi = f16_to_f32(word >> 16u32);
                            let cl = j * 32u32 + q * 8u32 + e * 2u32;
                            #[unroll]
                            for t in 0..tb {
                                let xi = t * ch + cl;
                                acc[t as usize] += lo * xs[xi as usize];
                                acc[t as usize] += hi * xs[(xi + 1u32) as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    let y_at = y_off + CUBE_POS_Z * part_len + tb0 * rows;
    store_rows(&acc, &mut xs, y, y_at, rows, r, nt, tb, lanes);
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul_two_four_kernel<N: Size>(
    x: &Array<f32>,
    vals: &Array<Vector<u32, N>>,
    codes: &Array<u32>,
    y: &mut Array<f32>,
    rows: u32,
    cols: u32,
    ntok: u32,
    x_off: u32,
    y_off: u32,
    per_part: u32,
    part_len: u32,
    #[comptime] tb: u32,
    #[comptime] lanes: u32,
    #[comptime] stage: u32,
) {
    let ch = comptime![stage / tb];
    let per_lane = comptime![stage / tb / 32 / lanes];
    let mut xs = SharedMemory::<f32>::new(stage as usize);
    let mut acc = Array::<f32>::new(comptime![tb as usize]);
    #[unroll]
    for t in 0..tb {
        acc[t as usize] = 0.0;
    }
    let lane = UNIT_POS % lanes;
    let r = CUBE_POS_X * comptime![CUBE / lanes] + UNIT_POS / lanes;
    let tb0 = CUBE_POS_Y * tb;
    let mut nt = ntok - tb0;
    if nt > tb {
        nt = tb;
    }
    let units = (cols + 31u32) / 32u32;
    let (first, last) = part_chunks(cols, ch, per_part);
    for chunk in first..last {
        let c0 = chunk * ch;
        sync_cube();
        stage_x(x, &mut xs, x_off + tb0 * cols, nt, cols, c0, tb, stage);
        sync_cube();
        if r < rows {
            for jj in 0..per_lane {
                let j = lane + jj * lanes;
                let u = c0 / 32u32 + j;
                if u < units {
                    let cw = codes[(r * units + u) as usize];
                    // The unit's two vectors of values one after the other: holding both
                    // beside eight accumulators spilled on sm_80.
                    #[unroll]
                    for half in 0..2u32 {
                        let v = vals[(r * units * 2u32 + u * 2u32 + half) as usize];
                        #[unroll]
                        for e in 0..4u32 {
                            let g = half * 4u32 + e;
                            let word = v[e as usize];
                            let code = (cw >> (g * 4u32)) & 0xFu32;
                            let lo = f16_to_f32(word & 0xFFFFu32);
                            let hi = f16_to_f32(word >> 16u32);
                            let cl = j * 32u32 + g * 4u32;
                            let c_lo = cl + (code & 3u32);
                            let c_hi = cl + (code >> 2u32);
                            #[unroll]
                            for t in 0..tb {
                                acc[t as usize] += lo * xs[(t * ch + c_lo) as usize];
                                acc[t as usize] += hi * xs[(t * ch + c_hi) as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    let y_at = y_off + CUBE_POS_Z * part_len + tb0 * rows;
    store_rows(&acc, &mut xs, y, y_at, rows, r, nt, tb, lanes);
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matmul_bitmap_kernel(
    x: &Array<f32>,
    vals: &Array<u32>,
    meta: &Array<u32>,
    offsets: &Array<u32>,
    y: &mut Array<f32>,
    rows: u32,
    cols: u32,
    ntok: u32,
    x_off: u32,
    y_off: u32,
    per_part: u32,
    part_len: u32,
    #[comptime] tb: u32,
    #[comptime] lanes: u32,
    #[comptime] stage: u32,
) {
    let ch = comptime![stage / tb];
    let mut xs = SharedMemory::<f32>::new(stage as usize);
    let mut acc = Array::<f32>::new(comptime![tb as usize]);
    #[unroll]
    for t in 0..tb {
        acc[t as usize] = 0.0;
    }
    let lane = UNIT_POS % lanes;
    let r = CUBE_POS_X * comptime![CUBE / lanes] + UNIT_POS / lanes;
    let tb0 = CUBE_POS_Y * tb;
    let mut nt = ntok - tb0;
    if nt > tb {
        nt = tb;
    }
    let units = (cols + 31u32) / 32u32;
    // The index of the row's first value in the current unit: the same in every lane.
    let (first, last) = part_chunks(cols, ch, per_part);
    let mut base = 0u32;
    if r < rows {
        // A later part starts after the units before its first chunk, counted by every
        // lane of the row alike.
        let skipped = first * comptime![stage / tb / 32];
        base = offsets[r as usize] + kept_before(meta, r * units, skipped);
    }
    for chunk in first..last {
        let c0 = chunk * ch;
        sync_cube();
        stage_x(x, &mut xs, x_off + tb0 * cols, nt, cols, c0, tb, stage);
        sync_cube();
        if r < rows {
            // The chunk's units that the row has (a short row has fewer than a chunk holds).
            let mut in_chunk = units - c0 / 32u32;
            if in_chunk > comptime![stage / tb / 32] {
                in_chunk = comptime![stage / tb / 32];
            }
            for i in 0..in_chunk {
                let u = c0 / 32u32 + i;
                let bits = meta[(r * units + u) as usize] & valid_bits(u, cols);
                // Lane j takes columns j, j + L, ... of the unit: consecutive lanes read
                // consecutive kept values, every lane takes 32/L steps.
                #[unroll]
                for s in 0..comptime![32 / lanes] {
                    let b = s * lanes + lane;
                    if (bits >> b) & 1u32 == 1u32 {
                        let k = base + u32::count_ones(bits & ((1u32 << b) - 1u32));
                        let wv = f16_to_f32(half_at(vals, k));
                        #[unroll]
                        for t in 0..tb {
                            acc[t as usize] += wv * xs[(t * ch + i * 32u32 + b) as usize];
                        }
                    }
                }
                base += u32::count_ones(bits);
            }
        }
    }
    let y_at = y_off + CUBE_POS_Z * part_len + tb0 * rows;
    store_rows(&acc, &mut xs, y, y_at, rows, r, nt, tb, lanes);
}

/// Lanes per row: up to 32, no more than a chunk has units or than a row has units.
fn lanes_for(units: usize, tb: usize, stage: u32) -> u32 {
    let max = (stage as usize / 32 / tb).min(32);
    let mut l = 1;
    while l * 2 <= max && l * 2 <= units {
        l *= 2;
    }
    l as u32
}

/// The token block for `n` tokens: the smallest of 1, 2, 4, 8 holding them, at most 8.
fn token_block(n: usize) -> usize {
    n.next_power_of_two().min(MAX_TB)
}

/// One launch of the tiled kernels (`tiled.rs`): `n` tokens from one X slab into one Y slab.
fn launch_tiled<R: Runtime>(b: &CubeBackend<R>, w: &CubePacked, part: &Part<'_>) {
    let (rows, cols) = w.shape();
    let row_tiles = rows.div_ceil(plan::SPARSE_TILE_ROWS);
    let token_tiles = part.n.div_ceil(plan::SPARSE_TILE_TOKENS);
    let split = column_split(
        b,
        row_tiles * token_tiles,
        (cols, tiled::KC as usize),
        part,
        rows,
    );
    let count = CubeCount::Static(row_tiles as u32, token_tiles as u32, split.parts as u32);
    let dim = CubeDim::new_1d(tiled::UNITS);
    let x = arg(part.x.0, part.x.1);
    let (y, y_off) = split.output(part, rows);
    let x_off = (part.x_row * cols) as u32;
    let (rows, cols, n) = (rows as u32, cols as u32, part.n as u32);
    let (per_part, part_len) = (split.per_part as u32, split.part_len as u32);
    let vals = arg(&w.values.handle, w.values.len);
    // SAFETY: as `launch`: X and Y are read and written inside the part's tokens and the
    // slabs' columns, the weight inside rows < rows of buffers checked against the layout.
    unsafe {
        match w.format {
            // The vector size is the shared tiles' (quads of 4 rows or tokens).
            WeightFormat::Dense => tiled::tiled_dense_kernel::launch_unchecked::<R>(
                &b.client, count, dim, 4, x, vals, y, rows, cols, n, x_off, y_off, per_part,
                part_len,
            ),
            WeightFormat::TwoFour => tiled::tiled_two_four_kernel::launch_unchecked::<R>(
                &b.client,
                count,
                dim,
                4,
                x,
                vals,
                arg(&w.meta.handle, w.meta.len),
                y,
                rows,
                cols,
                n,
                x_off,
                y_off,
                per_part,
                part_len,
            ),
            WeightFormat::Bitmap => tiled::tiled_bitmap_kernel::launch_unchecked::<R>(
                &b.client,
                count,
                dim,
                4,
                x,
                vals,
                arg(&w.meta.handle, w.meta.len),
                arg(&w.offsets.handle, w.offsets.len),
                y,
                rows,
                cols,
                n,
                x_off,
                y_off,
                per_part,
                part_len,
            ),
        }
    }
    split.finish(b, part, rows as usize);
}

/// One launch: `n` tokens from one X slab into one Y slab.
#[derive(Clone, Copy)]
struct Part<'a> {
    x: (&'a cubecl::server::Handle, usize),
    y: (&'a cubecl::server::Handle, usize),
    /// The first token's row inside the X slab and inside the Y slab.
    x_row: usize,
    y_row: usize,
    n: usize,
}

/// How one launch's columns are split ([`plan::column_parts`]): `parts` of `per_part`
/// chunks, a cube per part in z, and where there are several, the scratch holding their
/// partial outputs (`part_len` = the launch's tokens x rows each), summed into Y after.
struct ColumnSplit {
    parts: usize,
    per_part: usize,
    part_len: usize,
    scratch: Option<cubecl::server::Handle>,
}

/// The split of a launch of `groups` cubes over `cols` columns staged in chunks of `ch`:
/// one part covering every chunk where the cubes fill the device already or no scratch can
/// be had.
fn column_split<R: Runtime>(
    b: &CubeBackend<R>,
    groups: usize,
    (cols, ch): (usize, usize),
    part: &Part<'_>,
    rows: usize,
) -> ColumnSplit {
    let part_len = part.n * rows;
    let (parts, per_part) = plan::column_parts(groups, cols, ch, b.fill_or_default());
    if parts > 1 {
        if let Ok(h) = b.scratch(parts * part_len) {
            return ColumnSplit {
                parts,
                per_part,
                part_len,
                scratch: Some(h),
            };
        }
    }
    ColumnSplit {
        parts: 1,
        per_part: cols.div_ceil(ch).max(1),
        part_len,
        scratch: None,
    }
}

impl ColumnSplit {
    /// Where the launch writes: the scratch from its start, or Y's slab at the launch's
    /// first token.
    fn output<R: Runtime>(&self, part: &Part<'_>, rows: usize) -> (ArrayArg<R>, u32) {
        match &self.scratch {
            Some(h) => (arg(h, self.parts * self.part_len), 0),
            None => (arg(part.y.0, part.y.1), (part.y_row * rows) as u32),
        }
    }

    /// The parts' partial outputs summed into Y in part order, where the launch was split.
    fn finish<R: Runtime>(&self, b: &CubeBackend<R>, part: &Part<'_>, rows: usize) {
        if let Some(h) = &self.scratch {
            let out = (part.y.0, part.y.1, part.y_row * rows, rows);
            sum_parts(b, (h, self.parts), out, (part.n, rows), None);
        }
    }
}

fn launch<R: Runtime>(b: &CubeBackend<R>, w: &CubePacked, part: &Part<'_>, tb: usize) {
    let (rows, cols) = w.shape();
    let units = formats::bitmap_words_per_row(cols);
    // The staged X, with room to spare for the runtime.
    let mut stage = if b.max_shared >= 4 * (STAGE + CUBE) as usize + 1024 {
        STAGE
    } else {
        SMALL_STAGE
    };
    let blocks = |stage| rows.div_ceil(CUBE as usize / lanes_for(units, tb, stage) as usize);
    // A launch that wants more column parts than it has chunks stages half as much at a time,
    // so that its columns can be split further (a single token over 4096 or 8192 columns).
    let groups = blocks(stage) * part.n.div_ceil(tb);
    let chunks = cols.div_ceil(stage as usize / tb);
    if plan::column_parts_wanted(groups, cols, b.fill_or_default()) > chunks {
        stage = SMALL_STAGE;
    }
    let lanes = lanes_for(units, tb, stage);
    let row_blocks = blocks(stage);
    let token_blocks = part.n.div_ceil(tb);
    let ch = stage as usize / tb;
    let split = column_split(b, row_blocks * token_blocks, (cols, ch), part, rows);
    let count = CubeCount::Static(row_blocks as u32, token_blocks as u32, split.parts as u32);
    let dim = CubeDim::new_1d(CUBE);
    let x = arg(part.x.0, part.x.1);
    let (y, y_off) = split.output(part, rows);
    let x_off = (part.x_row * cols) as u32;
    let (tb, n) = (tb as u32, part.n as u32);
    let (per_part, part_len) = (split.per_part as u32, split.part_len as u32);
    let vals = arg(&w.values.handle, w.values.len);
    // SAFETY: X reads are guarded by the launch's token count and the column count inside
    // the X slab; Y writes by the rows and token count inside the Y slab (or inside the
    // scratch's parts·n·rows); weight reads stay in rows < rows of buffers checked against
    // the layout (bitmap offsets against the bits).
    unsafe {
        match w.format {
            WeightFormat::Dense => matmul_dense_kernel::launch_unchecked::<R>(
                &b.client,
                count,
                dim,
                4,
                x,
                vals,
                y,
                rows as u32,
                cols as u32,
                n,
                x_off,
                y_off,
                per_part,
                part_len,
                tb,
                lanes,
                stage,
            ),
            WeightFormat::TwoFour => matmul_two_four_kernel::launch_unchecked::<R>(
                &b.client,
                count,
                dim,
                4,
                x,
                vals,
                arg(&w.meta.handle, w.meta.len),
                y,
                rows as u32,
                cols as u32,
                n,
                x_off,
                y_off,
                per_part,
                part_len,
                tb,
                lanes,
                stage,
            ),
            WeightFormat::Bitmap => matmul_bitmap_kernel::launch_unchecked::<R>(
                &b.client,
                count,
                dim,
                x,
                vals,
                arg(&w.meta.handle, w.meta.len),
                arg(&w.offsets.handle, w.offsets.len),
                y,
                rows as u32,
                cols as u32,
                n,
                x_off,
                y_off,
                per_part,
                part_len,
                tb,
                lanes,
                stage,
            ),
        }
    }
    split.finish(b, part, rows);
}

pub fn sparse_matmul<R: Runtime>(
    b: &CubeBackend<R>,
    x: &CubeTensor,
    w: &CubePacked,
) -> Result<CubeTensor> {
    formats::check_matmul(x.shape(), w.shape())?;
    let (n, rows) = (x.rows, w.rows);
    let y = b.alloc_tensor(n, rows)?;
    for xs in 0..x.handles.len() {
        let (xr0, xn) = x.slabs.range(xs);
        for (ys, lo, hi) in y.slabs.covering(xr0, xr0 + xn) {
            let part = Part {
                x: (&x.handles[xs], x.slab_len(xs)),
                y: (&y.handles[ys], y.slab_len(ys)),
                x_row: lo - xr0,
                y_row: lo - y.slabs.range(ys).0,
                n: hi - lo,
            };
            if plan::sparse_tiled(n) {
                launch_tiled(b, w, &part);
                continue;
            }
            // Whole blocks of 8 tokens, then the rest in the smallest block that holds it.
            let full = part.n / MAX_TB * MAX_TB;
            if full > 0 {
                launch(b, w, &Part { n: full, ..part }, MAX_TB);
            }
            let rest = part.n - full;
            if rest > 0 {
                launch(
                    b,
                    w,
                    &Part {
                        x_row: part.x_row + full,
                        y_row: part.y_row + full,
                        n: rest,
                        ..part
                    },
                    token_block(rest),
                );
            }
        }
    }
    Ok(y)
}
