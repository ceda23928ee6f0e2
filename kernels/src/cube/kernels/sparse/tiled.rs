//! Y = X·Wᵀ from a compressed weight (§13) at many tokens (from
//! [`crate::plan::SPARSE_TILED_FROM`]): load as sparse, compute as dense, the design of
//! the tiled kernels of `sparse_matmul.wgsl`.
//!
//! - A cube of 128 units owns a tile of 32 weight rows by 64 tokens, so the weight is read
//!   N/64 times and X rows/32 times, where the blocked kernels of `matmul.rs` read them N/8
//!   and rows/16 times (at 256/L rows per cube).
//! - Per chunk of 32 columns (one bitmap word, one 2:4 code word), X[64 tokens, 32 columns]
//!   and W[32 rows, 32 columns] are staged k-major as quads of 4 tokens or 4 rows of one
//!   column: unit (k = lane, quad) fills its quad, so 32 neighbouring units read 32
//!   neighbouring columns of a row; W is decoded to f32 with zeros where pruned, a bitmap
//!   column's value index being the row's count so far plus the popcount of the row's bits
//!   below it (a ballot prefix without plane operations): neighbouring units read
//!   neighbouring kept values.
//! - Each unit accumulates a 4 x 4 register tile (rows 4·tr.., tokens 4·tt..) over the chunk:
//!   one vector of W and one of X from shared memory per 16 FMAs. A quad's slot is XOR-ed
//!   with k mod 8, so the vector stores of eight consecutive columns are conflict-free and a
//!   column's quads remain a permutation of its slots for the loads.
//!
//! The zeros of a decoded tile are multiplied too; the work model counts the dense tile's flops.
//! Where the tiles fall short of two waves (a 2048-row weight at 256 tokens is 256 tiles),
//! the columns are split into parts of whole chunks (`plan::column_parts`, a part per cube
//! in z) whose partial outputs a second pass sums, as the blocked kernels' are.

use cubecl::prelude::*;

use super::half::f16_to_f32;
use super::{half_at, kept_before, part_chunks, valid_bits};
use crate::plan;

/// Weight rows and tokens per cube (the host's grid uses the same constants), columns per
/// chunk, units per cube. The staging and decode below assume these values.
const TR: u32 = plan::SPARSE_TILE_ROWS as u32;
const TT: u32 = plan::SPARSE_TILE_TOKENS as u32;
const _: () = assert!(TR == 32 && TT == 64);
pub(super) const KC: u32 = 32;
pub(super) const UNITS: u32 = 128;

/// The slot of quad `q` of column `k` among the column's slots.
#[cube]
fn slot(k: u32, q: u32) -> u32 {
    q ^ (k % 8u32)
}

/// xt <- X[the tile's nt tokens from x_base, c0 .. c0 + KC), zero outside X: unit
/// (k = lane, quad wave + 4i) stores its 4 tokens of column k.
#[cube]
fn stage_x<N: Size>(
    x: &Array<f32>,
    xt: &mut SharedMemory<Vector<f32, N>>,
    x_base: u32,
    nt: u32,
    cols: u32,
    c0: u32,
) {
    let lane = UNIT_POS % 32u32;
    let wave = UNIT_POS / 32u32;
    let col = c0 + lane;
    #[unroll]
    for i in 0..4u32 {
        let q = wave + 4u32 * i;
        let mut v = Vector::<f32, N>::empty();
        #[unroll]
        for j in 0..4u32 {
            let tok = 4u32 * q + j;
            let mut a = 0.0f32;
            if tok < nt && col < cols {
                a = x[(x_base + tok * cols + col) as usize];
            }
            v[j as usize] = a;
        }
        xt[(lane * 16u32 + slot(lane, q)) as usize] = v;
    }
}

/// acc[4j + i] += Σ_k W[4·tr + i, k]·X[4·tt + j, k] over the chunk's decoded tiles.
#[cube]
fn accumulate<N: Size>(
    wt: &SharedMemory<Vector<f32, N>>,
    xt: &SharedMemory<Vector<f32, N>>,
    acc: &mut Array<f32>,
) {
    let tr = UNIT_POS % 8u32;
    let tt = UNIT_POS / 8u32;
    for k in 0..KC {
        let w = wt[(k * 8u32 + slot(k, tr)) as usize];
        let xv = xt[(k * 16u32 + slot(k, tt)) as usize];
        #[unroll]
        for j in 0..4u32 {
            #[unroll]
            for i in 0..4u32 {
                acc[(4u32 * j + i) as usize] += w[i as usize] * xv[j as usize];
            }
        }
    }
}

/// Writes the rows below `rows` and tokens below `nt` of the unit's register tile.
#[cube]
fn store(acc: &Array<f32>, y: &mut Array<f32>, y_base: u32, rows: u32, row0: u32, nt: u32) {
    let tr = UNIT_POS % 8u32;
    let tt = UNIT_POS / 8u32;
    #[unroll]
    for j in 0..4u32 {
        let tok = 4u32 * tt + j;
        #[unroll]
        for i in 0..4u32 {
            let row = row0 + 4u32 * tr + i;
            if tok < nt && row < rows {
                y[(y_base + tok * rows + row) as usize] = acc[(4u32 * j + i) as usize];
            }
        }
    }
}

/// The formats of [`tiled_product`].
const DENSE: u32 = 0;
const TWO_FOUR: u32 = 1;
const BITMAP: u32 = 2;

/// Dense or 2:4 row `row`'s weight at column `col` (zero where pruned or past the weight).
#[cube]
#[allow(clippy::too_many_arguments)]
fn tile_weight(
    vals: &Array<u32>,
    codes: &Array<u32>,
    rows: u32,
    cols: u32,
    row: u32,
    col: u32,
    chunk: u32,
    #[comptime] format: u32,
) -> f32 {
    let mut a = 0.0f32;
    if row < rows && col < cols {
        if comptime![format == DENSE] {
            // Row r's values start at word r·(row words), two to a word, rows padded to 8
            // columns.
            let words = (cols + 7u32) / 8u32 * 4u32;
            a = f16_to_f32(half_at(vals, 2u32 * row * words + col));
        } else {
            // 2:4: the group's word (its two kept values, 8 words per 32-column unit) and its
            // 4-bit code; the second index wins if both name the same column, as in the
            // reference.
            let units = (cols + 31u32) / 32u32;
            let word = vals[(row * units * 8u32 + col / 4u32) as usize];
            let code =
                (codes[(row * units + chunk) as usize] >> (4u32 * ((col / 4u32) % 8u32))) & 0xFu32;
            let e = col % 4u32;
            if e == (code & 3u32) {
                a = f16_to_f32(word & 0xFFFFu32);
            }
            if e == (code >> 2u32) {
                a = f16_to_f32(word >> 16u32);
            }
        }
    }
    a
}

/// The tiled product in `format`: per chunk, X and the weight decoded into the shared tiles,
/// then the unit's register tile accumulated; the rows and tokens that exist written at the
/// end. `meta` is the 2:4 codes or the bitmap's bits, `offsets` the bitmap's row offsets
/// (either is any array where the format has none: it is never read).
#[cube]
#[allow(clippy::too_many_arguments)]
fn tiled_product<N: Size>(
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
    #[comptime] format: u32,
) {
    let mut wt = SharedMemory::<Vector<f32, N>>::new(comptime![(KC * TR / 4) as usize]);
    let mut xt = SharedMemory::<Vector<f32, N>>::new(comptime![(KC * TT / 4) as usize]);
    let mut acc = Array::<f32>::new(16usize);
    #[unroll]
    for q in 0..16u32 {
        acc[q as usize] = 0.0;
    }
    let row0 = CUBE_POS_X * TR;
    let tok0 = CUBE_POS_Y * TT;
    let mut nt = ntok - tok0;
    if nt > TT {
        nt = TT;
    }
    let lane = UNIT_POS % 32u32;
    let wave = UNIT_POS / 32u32;
    let below = (1u32 << lane) - 1u32;
    // Bitmap: next[4i + j] is the first value not yet decoded of row 4·(wave + 4i) + j, the
    // same in all 32 lanes.
    let units = (cols + 31u32) / 32u32;
    let (first, last) = part_chunks(cols, KC, per_part);
    let mut next = Array::<u32>::new(8usize);
    if comptime![format == BITMAP] {
        #[unroll]
        for n in 0..8u32 {
            let row = row0 + 4u32 * (wave + 4u32 * (n / 4u32)) + n % 4u32;
            let mut k = 0u32;
            if row < rows {
                // A later part starts after the units (one per chunk) before its first.
                k = offsets[row as usize] + kept_before(meta, row * units, first);
            }
            next[n as usize] = k;
        }
    }
    for chunk in first..last {
        let c0 = chunk * KC;
        stage_x(x, &mut xt, x_off + tok0 * cols, nt, cols, c0);
        #[unroll]
        for i in 0..2u32 {
            let q = wave + 4u32 * i;
            let mut v = Vector::<f32, N>::empty();
            #[unroll]
            for j in 0..4u32 {
                let row = row0 + 4u32 * q + j;
                let mut a = 0.0f32;
                if comptime![format == BITMAP] {
                    let n = (4u32 * i + j) as usize;
                    let mut bits = 0u32;
                    if row < rows {
                        bits = meta[(row * units + chunk) as usize] & valid_bits(chunk, cols);
                    }
                    if (bits >> lane) & 1u32 == 1u32 {
                        a = f16_to_f32(half_at(vals, next[n] + u32::count_ones(bits & below)));
                    }
                    next[n] += u32::count_ones(bits);
                } else {
                    a = tile_weight(vals, meta, rows, cols, row, c0 + lane, chunk, format);
                }
                v[j as usize] = a;
            }
            wt[(lane * 8u32 + slot(lane, q)) as usize] = v;
        }
        sync_cube();
        accumulate(&wt, &xt, &mut acc);
        sync_cube();
    }
    store(
        &acc,
        y,
        y_off + CUBE_POS_Z * part_len + tok0 * rows,
        rows,
        row0,
        nt,
    );
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn tiled_dense_kernel<N: Size>(
    x: &Array<f32>,
    vals: &Array<u32>,
    y: &mut Array<f32>,
    rows: u32,
    cols: u32,
    ntok: u32,
    x_off: u32,
    y_off: u32,
    per_part: u32,
    part_len: u32,
) {
    tiled_product::<N>(
        x, vals, vals, vals, y, rows, cols, ntok, x_off, y_off, per_part, part_len, DENSE,
    );
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn tiled_two_four_kernel<N: Size>(
    x: &Array<f32>,
    vals: &Array<u32>,
    codes: &Array<u32>,
    y: &mut Array<f32>,
    rows: u32,
    cols: u32,
    ntok: u32,
    x_off: u32,
    y_off: u32,
    per_part: u32,
    part_len: u32,
) {
    tiled_product::<N>(
        x, vals, codes, codes, y, rows, cols, ntok, x_off, y_off, per_part, part_len, TWO_FOUR,
    );
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn tiled_bitmap_kernel<N: Size>(
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
) {
    tiled_product::<N>(
        x, vals, meta, offsets, y, rows, cols, ntok, x_off, y_off, per_part, part_len, BITMAP,
    );
}
