//! Mask selection (§5) without sorting: radix select on order-preserving keys of the f32
//! scores (three digit passes of 11, 11 and 10 bits through a 2048-bin histogram), then one
//! pass that writes the packed mask: everything below the k-th key v is pruned, and of the
//! entries equal to v only the first ones in index order (the reference's tie rule), counted by
//! a cube-wide prefix sum over the mask words.
//!
//! - per row: one cube per row does the passes in shared memory;
//! - whole matrix (and SparseGPT's per-block selection): a global histogram per pass with the
//!   running digit in a small device state, then per-row tie counts, a scan over rows, and the
//!   same per-row mask pass;
//! - N:M: one pass, each thread owning lcm(32, m) columns (whole groups and whole mask words).
//!
//! Scores come from a comptime source: a score tensor, W with its statistics (the fused prune,
//! which also zeroes W in the mask pass), or SparseGPT's W²/d² over a column block.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, CubeMask, CubeTensor};
use super::super::CubeBackend;
use super::elementwise::{
    apply_mask, score, score_parts, score_scalar, SCORE_GBLM, SCORE_MAGNITUDE, SCORE_WANDA,
};
use super::reduce::{cube_exclusive_scan, CUBE};
use crate::error::Result;
use crate::ops::{check, unstructured_k, MaskGroup, MaskPattern, Score};

/// Where the scores come from (the `SCORE_*` codes of elementwise are the fused sources).
pub const SRC_PLAIN: u32 = 3;
pub const SRC_OBS: u32 = 4;

const BINS: u32 = 2048;
/// Shared memory the per-row selection needs beside a cached row: the histogram, the scan and
/// some slack for the runtime's own use.
const SELECT_SHARED: usize = BINS as usize * 4 + CUBE as usize * 4 + 1024;

/// Maps f32 bits to a u32 whose unsigned order is the IEEE total order (what `total_cmp`, the
/// reference's comparison, uses): negative values flip all bits, others set the sign bit.
#[cube]
fn key_of(bits: u32) -> u32 {
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
fn load_key(
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
fn row_key(
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
fn digit(pass: u32) -> (u32, u32) {
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
fn find_bin(
    hist: &SharedMemory<Atomic<u32>>,
    res: &mut SharedMemory<u32>,
    scan: &mut SharedMemory<u32>,
    krem: u32,
) {
    let t = UNIT_POS;
    let mut local = 0u32;
    #[unroll]
    for q in 0..8u32 {
        local += hist[(t * 8 + q) as usize].load();
    }
    let (excl, _total) = cube_exclusive_scan(local, scan);
    if excl < krem && krem <= excl + local {
        let mut before = excl;
        let mut found = false;
        #[unroll]
        for q in 0..8u32 {
            let h = hist[(t * 8 + q) as usize].load();
            if !found && before < krem && krem <= before + h {
                res[0] = t * 8 + q;
                res[1] = krem - before;
                found = true;
            }
            before += h;
        }
    }
    sync_cube();
}

/// The k-th smallest key v (k >= 1) of one row view and how many keys equal to v are among
/// the k smallest, computed by the whole cube.
#[cube]
#[allow(clippy::too_many_arguments)]
fn row_threshold(
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
/// may start or end inside a word and the bits outside it are kept.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_row_mask(
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
) {
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
            for bit in 0..32u32 {
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
}

/// Linear cube index over a 2D grid of cubes (row counts above the per-dimension limit).
#[cube]
fn cube_index() -> u32 {
    CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X
}

/// Per-row selection, one cube per row: the k lowest of every row (optionally fused with
/// scoring and zeroing).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn row_select_kernel(
    x: &mut Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    mask: &mut Array<u32>,
    rows: u32,
    cols: u32,
    wpr: u32,
    k: u32,
    #[comptime] src: u32,
    #[comptime] apply: bool,
    #[comptime] cache: u32,
) {
    let r = cube_index();
    let cached = comptime![cache > 0];
    let mut keys = SharedMemory::<u32>::new(comptime![cache.max(1) as usize]);
    let mut scan = SharedMemory::<u32>::new(CUBE as usize);
    if r < rows {
        if comptime![cached] {
            // One read of the row (and its statistics) from global memory for all passes.
            let mut c = UNIT_POS;
            while c < cols {
                keys[c as usize] = load_key(x, aux, grad, r * cols + c, c, 0u32, src);
                c += CUBE;
            }
            sync_cube();
        }
        let mut v = 0u32;
        let mut need = 0u32;
        if k > 0 {
            let (vv, nn) = row_threshold(
                x,
                aux,
                grad,
                &keys,
                &mut scan,
                r * cols,
                0u32,
                cols,
                k,
                src,
                cached,
            );
            v = vv;
            need = nn;
        }
        write_row_mask(
            x,
            aux,
            grad,
            mask,
            &keys,
            &mut scan,
            r * cols,
            r * wpr,
            0u32,
            cols,
            v,
            need,
            src,
            apply,
            false,
            cached,
        );
    }
}

/// One digit pass of the global selection: a shared histogram per cube over a grid-stride of
/// the view's entries whose keys match the digits decided so far, added into the global one.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matrix_hist_kernel(
    x: &Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    hist: &mut Array<Atomic<u32>>,
    state: &Array<u32>,
    rows: u32,
    ld: u32,
    col0: u32,
    ncols: u32,
    #[comptime] src: u32,
    #[comptime] pass: u32,
) {
    let t = UNIT_POS;
    let (shift, width) = comptime![digit(pass)];
    let sh = SharedMemory::<Atomic<u32>>::new(BINS as usize);
    #[unroll]
    for q in 0..8u32 {
        sh[(t + q * CUBE) as usize].store(0u32);
    }
    sync_cube();
    let prefix = state[0];
    let n = rows * ncols;
    let stride = CUBE_COUNT as u32 * CUBE;
    let mut i = ABSOLUTE_POS as u32;
    while i < n {
        let r = i / ncols;
        let c = col0 + i % ncols;
        let key = load_key(x, aux, grad, r * ld + c, c, col0, src);
        let mut hit = true;
        if comptime![pass > 0] {
            hit = key >> comptime![shift + width] == prefix;
        }
        if hit {
            sh[((key >> shift) & comptime![(1u32 << width) - 1]) as usize].fetch_add(1u32);
        }
        i += stride;
    }
    sync_cube();
    #[unroll]
    for q in 0..8u32 {
        let b = t + q * CUBE;
        let cnt = sh[b as usize].load();
        if cnt > 0 {
            hist[b as usize].fetch_add(cnt);
        }
    }
}

/// Reads a finished histogram: advances the decided digits and the remaining rank in `state`,
/// and clears the histogram for the next pass. One cube.
#[cube(launch_unchecked)]
fn matrix_scan_kernel(
    hist: &mut Array<Atomic<u32>>,
    state: &mut Array<u32>,
    #[comptime] pass: u32,
) {
    let t = UNIT_POS;
    let (_shift, width) = comptime![digit(pass)];
    let sh = SharedMemory::<Atomic<u32>>::new(BINS as usize);
    let mut res = SharedMemory::<u32>::new(2usize);
    let mut scan = SharedMemory::<u32>::new(CUBE as usize);
    #[unroll]
    for q in 0..8u32 {
        let b = t * 8 + q;
        sh[b as usize].store(hist[b as usize].load());
    }
    let krem = state[1];
    let prefix = state[0];
    sync_cube();
    find_bin(&sh, &mut res, &mut scan, krem);
    if t == 0 {
        let mut p = res[0];
        if comptime![pass > 0] {
            p = (prefix << width) | res[0];
        }
        state[0] = p;
        state[1] = res[1];
    }
    #[unroll]
    for q in 0..8u32 {
        hist[(t * 8 + q) as usize].store(0u32);
    }
}

/// How many keys of each row view equal the selected v (state[0]).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn row_eq_count_kernel(
    x: &Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    state: &Array<u32>,
    eqcnt: &mut Array<u32>,
    rows: u32,
    ld: u32,
    col0: u32,
    ncols: u32,
    row_base: u32,
    #[comptime] src: u32,
) {
    let r = cube_index();
    if r < rows {
        let v = state[0];
        let mut cnt = 0u32;
        let mut c = UNIT_POS;
        while c < ncols {
            if load_key(x, aux, grad, r * ld + col0 + c, col0 + c, col0, src) == v {
                cnt += 1;
            }
            c += CUBE;
        }
        let mut scan = SharedMemory::<u32>::new(CUBE as usize);
        let (_excl, total) = cube_exclusive_scan(cnt, &mut scan);
        if UNIT_POS == 0 {
            eqcnt[(row_base + r) as usize] = total;
        }
    }
}

/// Splits the global count of tied entries to prune (state[1]) over the rows in row order:
/// need_r = clamp(need − ties in earlier rows, 0, ties in row r). One cube.
#[cube(launch_unchecked)]
fn rows_need_kernel(eqcnt: &Array<u32>, state: &Array<u32>, need_row: &mut Array<u32>, rows: u32) {
    let need = state[1];
    let mut carry = 0u32;
    let mut scan = SharedMemory::<u32>::new(CUBE as usize);
    let rounds = (rows + CUBE - 1) / CUBE;
    for round in 0..rounds {
        let r = round * CUBE + UNIT_POS;
        let mut c = 0u32;
        if r < rows {
            c = eqcnt[r as usize];
        }
        let (excl, total) = cube_exclusive_scan(c, &mut scan);
        let before = carry + excl;
        let mut nr = 0u32;
        if need > before {
            nr = need - before;
            if nr > c {
                nr = c;
            }
        }
        if r < rows {
            need_row[r as usize] = nr;
        }
        carry += total;
    }
}

/// The mask pass of the global selection, one cube per row.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn row_mask_kernel(
    x: &mut Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    mask: &mut Array<u32>,
    state: &Array<u32>,
    need_row: &Array<u32>,
    rows: u32,
    ld: u32,
    wpr: u32,
    col0: u32,
    ncols: u32,
    row_base: u32,
    #[comptime] src: u32,
    #[comptime] partial: bool,
) {
    let r = cube_index();
    if r < rows {
        let v = state[0];
        let need = need_row[(row_base + r) as usize];
        let keys = SharedMemory::<u32>::new(1usize);
        let mut scan = SharedMemory::<u32>::new(CUBE as usize);
        write_row_mask(
            x,
            aux,
            grad,
            mask,
            &keys,
            &mut scan,
            r * ld + col0,
            r * wpr,
            col0,
            ncols,
            v,
            need,
            src,
            false,
            partial,
            false,
        );
    }
}

/// N:M in one pass: each thread owns `span` = lcm(32, m) columns of one row, i.e. whole groups
/// and whole mask words, so it can zero W (with `apply`) without racing its neighbours.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn nm_kernel(
    x: &mut Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    mask: &mut Array<u32>,
    rows: u32,
    cols: u32,
    wpr: u32,
    #[comptime] n: u32,
    #[comptime] m: u32,
    #[comptime] span: u32,
    #[comptime] src: u32,
    #[comptime] apply: bool,
) {
    let chunks = (cols + span - 1) / span;
    let i = ABSOLUTE_POS as u32;
    if i < rows * chunks {
        let r = i / chunks;
        let c0 = (i % chunks) * span;
        let mut out = Array::<u32>::new(comptime![(span / 32) as usize]);
        #[unroll]
        for q in 0..span / 32 {
            out[q as usize] = 0u32;
        }
        let mut keys = Array::<u32>::new(comptime![m as usize]);
        for g in 0..span / m {
            let gc = c0 + g * m;
            if gc < cols {
                for j in 0..m {
                    keys[j as usize] = load_key(x, aux, grad, r * cols + gc + j, gc + j, 0u32, src);
                }
                for j in 0..m {
                    let kj = keys[j as usize];
                    let mut rank: u32 = 0u32;
                    for q in 0..m {
                        let kq = keys[q as usize];
                        let before = kq < kj || (kq == kj && q < j);
                        if before {
                            rank += 1u32;
                        }
                    }
                    if rank < n {
                        let lc = g * m + j;
                        out[(lc / 32) as usize] |= 1u32 << (lc % 32);
                    }
                }
            }
        }
        #[unroll]
        for q in 0..span / 32 {
            let w = c0 / 32 + q;
            if w < wpr {
                let bits = out[q as usize];
                mask[(r * wpr + w) as usize] = bits;
                if comptime![apply] {
                    if bits != 0 {
                        for bit in 0..32u32 {
                            if (bits >> bit) & 1 == 1 {
                                x[(r * cols + w * 32 + bit) as usize] = 0.0;
                            }
                        }
                    }
                }
            }
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A 2D cube grid with one cube per row.
fn row_grid(rows: usize) -> CubeCount {
    let x = rows.clamp(1, 65_535);
    CubeCount::Static(x as u32, rows.div_ceil(x) as u32, 1)
}

/// The score source of a tensor: its kind code, the activation statistic, the gradient.
struct Source<'a> {
    x: &'a CubeTensor,
    src: u32,
    aux: Option<&'a CubeTensor>,
    grad: Option<&'a CubeTensor>,
}

impl Source<'_> {
    /// Bindings for slab s: (x, len), (aux, len), (grad, len); absent statistics are bound to
    /// x (the kernel for that source never reads them).
    fn bind(&self, s: usize) -> [(&Handle, usize); 3] {
        let xl = self.x.slab_len(s);
        let xh = &self.x.handles[s];
        [
            (xh, xl),
            self.aux.map_or((xh, xl), |a| (&a.handles[0], a.cols)),
            self.grad
                .map_or((xh, xl), |g| (&g.handles[s], g.slab_len(s))),
        ]
    }
}

fn per_row<R: Runtime>(
    b: &CubeBackend<R>,
    s: &Source<'_>,
    k: usize,
    apply: bool,
) -> Result<CubeMask> {
    let x = s.x;
    let mask = b.alloc_mask(x.rows, x.cols)?;
    // Rows whose keys fit in shared memory beside the histogram are read from global memory
    // once instead of four times (3 digit passes and the mask pass).
    let capacity = b.max_shared.saturating_sub(SELECT_SHARED) / 4 / CUBE as usize * CUBE as usize;
    let cache = if x.cols <= capacity {
        x.cols.next_multiple_of(CUBE as usize) as u32
    } else {
        0
    };
    for slab in 0..x.handles.len() {
        let rows = x.slabs.range(slab).1;
        if rows == 0 || x.cols == 0 {
            continue;
        }
        let [xb, ab, gb] = s.bind(slab);
        // SAFETY: one cube per row below `rows`; each reads its row of the slab (and the
        // statistics at its columns) and writes its row's mask words.
        unsafe {
            row_select_kernel::launch_unchecked::<R>(
                &b.client,
                row_grid(rows),
                CubeDim::new_1d(CUBE),
                arg(xb.0, xb.1),
                arg(ab.0, ab.1),
                arg(gb.0, gb.1),
                arg(&mask.handles[slab], mask.slab_len(slab)),
                rows as u32,
                x.cols as u32,
                mask.words_per_row() as u32,
                k as u32,
                s.src,
                apply,
                cache,
            );
        }
    }
    Ok(mask)
}

fn n_m<R: Runtime>(
    b: &CubeBackend<R>,
    s: &Source<'_>,
    n: usize,
    m: usize,
    apply: bool,
) -> Result<CubeMask> {
    let x = s.x;
    let mask = b.alloc_mask(x.rows, x.cols)?;
    let span = 32 / gcd(32, m) * m;
    for slab in 0..x.handles.len() {
        let rows = x.slabs.range(slab).1;
        if rows == 0 || x.cols == 0 {
            continue;
        }
        let [xb, ab, gb] = s.bind(slab);
        let threads = rows * x.cols.div_ceil(span);
        // SAFETY: one thread per (row, span of columns); it reads and writes only its span.
        unsafe {
            nm_kernel::launch_unchecked::<R>(
                &b.client,
                super::fill::grid(threads, CUBE),
                CubeDim::new_1d(CUBE),
                arg(xb.0, xb.1),
                arg(ab.0, ab.1),
                arg(gb.0, gb.1),
                arg(&mask.handles[slab], mask.slab_len(slab)),
                rows as u32,
                x.cols as u32,
                mask.words_per_row() as u32,
                n as u32,
                m as u32,
                span as u32,
                s.src,
                apply,
            );
        }
    }
    Ok(mask)
}

/// The k lowest keys of the view (rows of `x`, columns [col0, col0 + ncols)) as a whole, ties
/// by linear index within the view, written into `mask` (bits outside the view kept when
/// `partial`). `aux` is the activation statistic or, for `SRC_OBS`, the block's diag(U).
#[allow(clippy::too_many_arguments)]
pub fn select_global<R: Runtime>(
    b: &CubeBackend<R>,
    x: &CubeTensor,
    aux: Option<(&Handle, usize)>,
    col0: usize,
    ncols: usize,
    k: usize,
    src: u32,
    mask: &CubeMask,
    partial: bool,
) -> Result<()> {
    let rows = x.rows;
    if rows == 0 || ncols == 0 {
        return Ok(());
    }
    let ld = x.cols;
    let state = b.scratch_from(&[0, k as u32])?;
    let hist = b.scratch_from(&vec![0u32; BINS as usize])?;
    let eqcnt = b.scratch(rows)?;
    let need_row = b.scratch(rows)?;
    let bind = |s: usize| {
        let (xh, xl) = (&x.handles[s], x.slab_len(s));
        let (ah, al) = aux.unwrap_or((xh, xl));
        (xh, xl, ah, al)
    };
    if k > 0 {
        for pass in 0..3u32 {
            for s in 0..x.handles.len() {
                let srows = x.slabs.range(s).1;
                if srows == 0 {
                    continue;
                }
                let (xh, xl, ah, al) = bind(s);
                let cubes = (srows * ncols).div_ceil(CUBE as usize * 16).clamp(1, 1024);
                // SAFETY: a grid-stride over the view's srows x ncols entries of this slab.
                unsafe {
                    matrix_hist_kernel::launch_unchecked::<R>(
                        &b.client,
                        CubeCount::Static(cubes as u32, 1, 1),
                        CubeDim::new_1d(CUBE),
                        arg(xh, xl),
                        arg(ah, al),
                        arg(xh, xl),
                        arg(&hist, BINS as usize),
                        arg(&state, 2),
                        srows as u32,
                        ld as u32,
                        col0 as u32,
                        ncols as u32,
                        src,
                        pass,
                    );
                }
            }
            // SAFETY: one cube over the 2048 bins and the 2-word state.
            unsafe {
                matrix_scan_kernel::launch_unchecked::<R>(
                    &b.client,
                    CubeCount::Static(1, 1, 1),
                    CubeDim::new_1d(CUBE),
                    arg(&hist, BINS as usize),
                    arg(&state, 2),
                    pass,
                );
            }
        }
    }
    // With k = 0 the state stays (v = 0, need = 0): no key is below 0 and no tie is taken.
    for s in 0..x.handles.len() {
        let (r0, srows) = x.slabs.range(s);
        if srows == 0 {
            continue;
        }
        let (xh, xl, ah, al) = bind(s);
        // SAFETY: one cube per row of the slab, reading its row of the view.
        unsafe {
            row_eq_count_kernel::launch_unchecked::<R>(
                &b.client,
                row_grid(srows),
                CubeDim::new_1d(CUBE),
                arg(xh, xl),
                arg(ah, al),
                arg(xh, xl),
                arg(&state, 2),
                arg(&eqcnt, rows),
                srows as u32,
                ld as u32,
                col0 as u32,
                ncols as u32,
                r0 as u32,
                src,
            );
        }
    }
    // SAFETY: one cube over the rows' counts.
    unsafe {
        rows_need_kernel::launch_unchecked::<R>(
            &b.client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(CUBE),
            arg(&eqcnt, rows),
            arg(&state, 2),
            arg(&need_row, rows),
            rows as u32,
        );
    }
    for s in 0..x.handles.len() {
        let (r0, srows) = x.slabs.range(s);
        if srows == 0 {
            continue;
        }
        let (xh, xl, ah, al) = bind(s);
        // SAFETY: one cube per row of the slab, writing the mask words its view covers.
        unsafe {
            row_mask_kernel::launch_unchecked::<R>(
                &b.client,
                row_grid(srows),
                CubeDim::new_1d(CUBE),
                arg(xh, xl),
                arg(ah, al),
                arg(xh, xl),
                arg(&mask.handles[s], mask.slab_len(s)),
                arg(&state, 2),
                arg(&need_row, rows),
                srows as u32,
                ld as u32,
                mask.words_per_row() as u32,
                col0 as u32,
                ncols as u32,
                r0 as u32,
                src,
                partial,
            );
        }
    }
    Ok(())
}

pub fn select_mask<R: Runtime>(
    b: &CubeBackend<R>,
    scores: &CubeTensor,
    pattern: MaskPattern,
) -> Result<CubeMask> {
    check::pattern(&pattern, scores.cols)?;
    let src = Source {
        x: scores,
        src: SRC_PLAIN,
        aux: None,
        grad: None,
    };
    match pattern {
        MaskPattern::Unstructured {
            sparsity,
            group: MaskGroup::PerRow,
        } => per_row(b, &src, unstructured_k(sparsity, scores.cols), false),
        MaskPattern::Unstructured {
            sparsity,
            group: MaskGroup::Matrix,
        } => {
            let mask = b.alloc_mask(scores.rows, scores.cols)?;
            let k = unstructured_k(sparsity, scores.rows * scores.cols);
            select_global(b, scores, None, 0, scores.cols, k, SRC_PLAIN, &mask, false)?;
            Ok(mask)
        }
        MaskPattern::NM { n, m } => n_m(b, &src, n, m, false),
    }
}

pub fn prune_scored<R: Runtime>(
    b: &CubeBackend<R>,
    w: &CubeTensor,
    sc: Score<'_, CubeTensor>,
    pattern: MaskPattern,
) -> Result<CubeMask> {
    check::score(w.shape(), &sc, |t| t.shape())?;
    check::pattern(&pattern, w.cols)?;
    let (kind, act, grad) = score_parts(&sc);
    let src = Source {
        x: w,
        src: kind,
        aux: act,
        grad: if kind == SCORE_GBLM { grad } else { None },
    };
    match pattern {
        MaskPattern::Unstructured {
            sparsity,
            group: MaskGroup::PerRow,
        } => per_row(b, &src, unstructured_k(sparsity, w.cols), true),
        MaskPattern::NM { n, m } => n_m(b, &src, n, m, true),
        MaskPattern::Unstructured {
            group: MaskGroup::Matrix,
            ..
        } => {
            let s = score(b, w, sc)?;
            let mask = select_mask(b, &s, pattern)?;
            apply_mask(b, w, &mask)?;
            Ok(mask)
        }
    }
}
