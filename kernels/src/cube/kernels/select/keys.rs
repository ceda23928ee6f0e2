//! The radix-select machinery shared by every selection kernel: order-preserving keys of the
//! scores, the three digit passes over a row in shared memory, and the mask pass that applies
//! the tie rule.

use cubecl::prelude::*;

use super::super::reduce::{cube_exclusive_scan, CUBE};
use super::super::score::{score_scalar, SCORE_GBLM, SCORE_MAGNITUDE, SCORE_WANDA};
use super::{BINS, SRC_OBS};

/// Maps f32 bits to a u32 whose unsigned order is the IEEE total order (what `total_cmp`, the
/// reference's comparison, uses): negative values flip all bits, others set the sign bit.
#[cube]
pub fn key_of(bits: u32) -> u32 {
    let mut k = bits | 0x8000_0000u32;
    if bits >> 31 == 1 {
        k = !bits;
    }
    k
}

/// The key of the score at linear index `idx` of the slab, column `c` of the matrix.
/// `aux` holds the activation statistic by column, or for `SRC_OBS` the block's diag(U) by
/// column relative to `col0`.
#[cube]
pub fn load_key(
    x: &Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    idx: u32,
    c: u32,
    col0: u32,
    #[comptime] src: u32,
) -> u32 {
    let w = x[idx as usize];
    let mut s = w;
    if comptime![src == SRC_OBS] {
        let d = aux[(c - col0) as usize];
        s = (w * w) / (d * d);
    }
    if comptime![src == SCORE_MAGNITUDE] {
        s = score_scalar(w, 0.0, 0.0, SCORE_MAGNITUDE);
    }
    if comptime![src == SCORE_WANDA] {
        s = score_scalar(w, aux[c as usize], 0.0, SCORE_WANDA);
    }
    if comptime![src == SCORE_GBLM] {
        s = score_scalar(w, aux[c as usize], grad[idx as usize], SCORE_GBLM);
    }
    key_of(u32::reinterpret(s))
}

/// The key of local column `c` of a row view: from the row's shared-memory copy when the row
/// was cached (`cached`), else recomputed from global memory.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn row_key(
    x: &Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    keys: &SharedMemory<u32>,
    base: u32,
    c: u32,
    col0: u32,
    #[comptime] src: u32,
    #[comptime] cached: bool,
) -> u32 {
    if comptime![cached] {
        keys[c as usize]
    } else {
        load_key(x, aux, grad, base + c, col0 + c, col0, src)
    }
}

/// The bit position and width of radix pass `pass` (0, 1, 2): bits 31..21, 20..10, 9..0.
pub fn digit(pass: u32) -> (u32, u32) {
    match pass {
        0 => (21, 11),
        1 => (10, 11),
        _ => (0, 10),
    }
}

/// Given per-bin counts in `hist` (2048 bins, 8 per thread), the bin holding the `krem`-th
/// smallest key and the rank of that key inside the bin, written to `res` by the one thread
/// that finds it (every thread must call this).
#[cube]
pub fn find_bin(
    hist: &SharedMemory<Atomic<u32>>,
    res: &mut SharedMemory<u32>,
    scan: &mut SharedMemory<u32>,
    krem: u32,
) {
    let t = UNIT_POS;
    let mut h = Array::<u32>::new(8usize);
    #[unroll]
    for q in 0..8u32 {
        h[q as usize] = hist[(t * 8 + q) as usize].load();
    }
    find_bin_of(&h, res, scan, krem);
}

/// [`find_bin`] over the counts of unit t's bins t·8 .. t·8 + 8, given in `h`.
#[cube]
pub fn find_bin_of(
    h: &Array<u32>,
    res: &mut SharedMemory<u32>,
    scan: &mut SharedMemory<u32>,
    krem: u32,
) {
    let t = UNIT_POS;
    let mut local = 0u32;
    #[unroll]
    for q in 0..8u32 {
        local += h[q as usize];
    }
    let (excl, _total) = cube_exclusive_scan(local, scan);
    if excl < krem && krem <= excl + local {
        let mut before = excl;
        let mut found = false;
        #[unroll]
        for q in 0..8u32 {
            let c = h[q as usize];
            if !found && before < krem && krem <= before + c {
                res[0] = t * 8 + q;
                res[1] = krem - before;
                found = true;
            }
            before += c;
        }
    }
    sync_cube();
}

/// The k-th smallest key v (k >= 1) of one row view and how many keys equal to v are among
/// the k smallest, computed by the whole cube.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn row_threshold(
    x: &Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    keys: &SharedMemory<u32>,
    scan: &mut SharedMemory<u32>,
    base: u32,
    col0: u32,
    ncols: u32,
    k: u32,
    #[comptime] src: u32,
    #[comptime] cached: bool,
) -> (u32, u32) {
    let t = UNIT_POS;
    let hist = SharedMemory::<Atomic<u32>>::new(BINS as usize);
    let mut res = SharedMemory::<u32>::new(2usize);
    let mut prefix = 0u32;
    let mut krem = k;
    #[unroll]
    for pass in 0..3u32 {
        let (shift, width) = comptime![digit(pass)];
        #[unroll]
        for q in 0..8u32 {
            hist[(t + q * CUBE) as usize].store(0u32);
        }
        sync_cube();
        let mut c = t;
        while c < ncols {
            let key = row_key(x, aux, grad, keys, base, c, col0, src, cached);
            let mut hit = true;
            if comptime![pass > 0] {
                hit = key >> comptime![shift + width] == prefix;
            }
            if hit {
                hist[((key >> shift) & comptime![(1u32 << width) - 1]) as usize].fetch_add(1u32);
            }
            c += CUBE;
        }
        sync_cube();
        find_bin(&hist, &mut res, scan, krem);
        prefix = (prefix << width) | res[0];
        krem = res[1];
        sync_cube();
    }
    (prefix, krem)
}

/// Writes the mask words of one row view: keys below `v` pruned, and the first `need` keys
/// equal to `v` in column order. With `apply`, zeroes the pruned entries of `x` (the fused
/// prune; each thread zeroes only the columns of the words it owns). With `partial`, the view
/// may start or end inside a word and the bits outside it are kept. Returns how many keys of
/// the row equal `v`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn write_row_mask(
    x: &mut Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    mask: &mut Array<u32>,
    keys: &SharedMemory<u32>,
    scan: &mut SharedMemory<u32>,
    base: u32,
    mask_base: u32,
    col0: u32,
    ncols: u32,
    v: u32,
    need: u32,
    #[comptime] src: u32,
    #[comptime] apply: bool,
    #[comptime] partial: bool,
    #[comptime] cached: bool,
) -> u32 {
    let t = UNIT_POS;
    let end = col0 + ncols;
    let w_first = col0 / 32;
    let nwords = (end + 31) / 32 - w_first;
    let rounds = (nwords + CUBE - 1) / CUBE;
    let mut carry = 0u32;
    for round in 0..rounds {
        let wi = round * CUBE + t;
        let word = w_first + wi;
        let mut less = 0u32;
        let mut eq = 0u32;
        if wi < nwords {
            // Unit t starts at bit t mod 32: a row cached in shared memory is then read by
            // the 32 units of a plane from 32 different banks at every step (from bit 0, all
            // would read one bank: words of 32 keys are 32 floats apart).
            for b in 0..32u32 {
                let bit = (b + t) % 32;
                let c = word * 32 + bit;
                if c >= col0 && c < end {
                    let key = row_key(x, aux, grad, keys, base, c - col0, col0, src, cached);
                    if key < v {
                        less |= 1u32 << bit;
                    } else if key == v {
                        eq |= 1u32 << bit;
                    }
                }
            }
        }
        let cnt = u32::count_ones(eq);
        let (excl, total) = cube_exclusive_scan(cnt, scan);
        let before = carry + excl;
        let mut take = 0u32;
        if need > before {
            let mut j = need - before;
            if j > cnt {
                j = cnt;
            }
            let mut e = eq;
            while j > 0 {
                let low = e & (!e + 1);
                take |= low;
                e ^= low;
                j -= 1;
            }
        }
        let bits = less | take;
        if wi < nwords {
            let mi = (mask_base + word) as usize;
            if comptime![partial] {
                let mut lo = word * 32;
                if lo < col0 {
                    lo = col0;
                }
                let mut hi = word * 32 + 32;
                if hi > end {
                    hi = end;
                }
                let span = hi - lo;
                let mut inside = 0xFFFF_FFFFu32;
                if span < 32 {
                    inside = ((1u32 << span) - 1) << (lo - word * 32);
                }
                mask[mi] = (mask[mi] & !inside) | bits;
            } else {
                mask[mi] = bits;
            }
            if comptime![apply] {
                if bits != 0 {
                    for bit in 0..32u32 {
                        if (bits >> bit) & 1 == 1 {
                            x[(base + word * 32 + bit - col0) as usize] = 0.0;
                        }
                    }
                }
            }
        }
        carry += total;
    }
    carry
}

/// The mask words of rows [r0, r1) of a view ([`write_row_mask`] row by row, keys from
/// global memory): keys below `v` pruned, and keys equal to `v` while fewer than `need` lie
/// before them in linear order, `before` of them lying before row r0.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn write_rows_mask(
    x: &mut Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    mask: &mut Array<u32>,
    scan: &mut SharedMemory<u32>,
    rows: (u32, u32),
    ld: u32,
    wpr: u32,
    col0: u32,
    ncols: u32,
    v: u32,
    need: u32,
    before: u32,
    #[comptime] src: u32,
    #[comptime] apply: bool,
    #[comptime] partial: bool,
) {
    let (r0, r1) = rows;
    let keys = SharedMemory::<u32>::new(1usize);
    let mut before = before;
    for r in r0..r1 {
        let mut quota = 0u32;
        if need > before {
            quota = need - before;
        }
        before += write_row_mask(
            x,
            aux,
            grad,
            mask,
            &keys,
            scan,
            r * ld + col0,
            r * wpr,
            col0,
            ncols,
            v,
            quota,
            src,
            apply,
            partial,
            false,
        );
    }
}

/// Linear cube index over a 2D grid of cubes (row counts above the per-dimension limit).
#[cube]
pub fn cube_index() -> u32 {
    CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X
}
