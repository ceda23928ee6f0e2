//! SparseGPT's block selection in two launches (plan::select::block): a histogram of the keys'
//! top 16 bits in global memory (65536 bins would not fit a cube's shared memory) with the top
//! 8 bits merged from a shared one, then the candidates: every cube decides the 16-bit digit D
//! holding the k-th lowest key from 2 x 256 bins and appends its keys of D (their low 16 bits
//! and linear index in the block). The in-block kernel ends the selection
//! ([`end_block_selection`]): the threshold from the candidates, radix-selected in shared
//! memory, and the ties before its rows. Integer atomics only: counts do not depend on their
//! order, and nothing read from the candidates depends on theirs.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::super::storage::{arg, CubeTensor};
use super::super::super::CubeBackend;
use super::super::reduce::{cube_exclusive_scan, CUBE};
use super::keys::{find_bin_of, load_key};
use super::SRC_OBS;
use crate::plan;
use crate::plan::select::block;

const FINE: u32 = block::FINE as u32;
const COUNT: u32 = block::COUNT as u32;
const DIGIT: u32 = block::DIGIT as u32;
const RANK: u32 = block::RANK as u32;
const CAND: u32 = block::CAND as u32;

/// The key of entry `i` of the block (row-major over its `ncols` columns from `col0`).
#[cube]
fn block_key(x: &Array<f32>, aux: &Array<f32>, i: u32, ld: u32, col0: u32, ncols: u32) -> u32 {
    let c = col0 + i % ncols;
    load_key(x, aux, aux, (i / ncols) * ld + c, c, col0, SRC_OBS)
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn block_hist_kernel(
    x: &Array<f32>,
    aux: &Array<f32>,
    sel: &mut Array<Atomic<u32>>,
    rows: u32,
    ld: u32,
    col0: u32,
    ncols: u32,
    base: u32,
) {
    let t = UNIT_POS;
    let sh = SharedMemory::<Atomic<u32>>::new(CUBE as usize);
    sh[t as usize].store(0u32);
    sync_cube();
    let n = rows * ncols;
    let stride = CUBE_COUNT as u32 * CUBE;
    let mut i = ABSOLUTE_POS as u32;
    while i < n {
        let key = block_key(x, aux, i, ld, col0, ncols);
        sh[(key >> 24) as usize].fetch_add(1u32);
        sel[(base + FINE + (key >> 16)) as usize].fetch_add(1u32);
        i += stride;
    }
    sync_cube();
    let h = sh[t as usize].load();
    if h > 0 {
        sel[(base + t) as usize].fetch_add(h);
    }
}

/// The bin of the 256 at `at` holding the `kk`-th lowest key and the rank left in it, on
/// every unit: 8 bins on each of the first 32 units, through `find_bin_of`.
#[cube]
fn pick256(sel: &Array<Atomic<u32>>, at: u32, kk: u32) -> (u32, u32) {
    let t = UNIT_POS;
    let mut h = Array::<u32>::new(8usize);
    #[unroll]
    for q in 0..8u32 {
        let mut v = 0u32;
        if t < 32 {
            v = sel[(at + t * 8 + q) as usize].load();
        }
        h[q as usize] = v;
    }
    pick_bins(&h, kk)
}

/// `find_bin_of` over 256 bins given 8 per unit on the first 32 units (none on the rest),
/// its result read by every unit.
#[cube]
fn pick_bins(h: &Array<u32>, kk: u32) -> (u32, u32) {
    let mut res = SharedMemory::<u32>::new(2usize);
    let mut scan = SharedMemory::<u32>::new(CUBE as usize);
    find_bin_of(h, &mut res, &mut scan, kk);
    let out = (res[0], res[1]);
    sync_cube();
    out
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn block_candidates_kernel(
    x: &Array<f32>,
    aux: &Array<f32>,
    sel: &mut Array<Atomic<u32>>,
    rows: u32,
    ld: u32,
    col0: u32,
    ncols: u32,
    base: u32,
    k: u32,
    row0: u32,
    lead: u32,
) {
    let (hi, kk) = pick256(sel, base, k);
    let (lo, left) = pick256(sel, base + FINE + hi * 256, kk);
    let d = (hi << 8) | lo;
    if lead == 1 && CUBE_POS == 0 && UNIT_POS == 0 {
        sel[(base + DIGIT) as usize].store(d);
        sel[(base + RANK) as usize].store(left);
    }
    let n = rows * ncols;
    let stride = CUBE_COUNT as u32 * CUBE;
    let mut i = ABSOLUTE_POS as u32;
    while i < n {
        let key = block_key(x, aux, i, ld, col0, ncols);
        if key >> 16 == d {
            let slot = sel[(base + COUNT) as usize].fetch_add(1u32);
            sel[(base + CAND + 2 * slot) as usize].store(key & 0xFFFF);
            sel[(base + CAND + 2 * slot + 1) as usize].store(row0 * ncols + i);
        }
        i += stride;
    }
}

/// The end of the block's selection in the in-block kernel, by the whole cube: the threshold
/// T (from the candidates' bits 15..8, then 7..0), how many keys equal to T the block prunes,
/// and how many of them lie before linear index `first` (this cube's first row).
#[cube]
pub fn end_block_selection(sel: &Array<Atomic<u32>>, base: u32, first: u32) -> (u32, u32, u32) {
    let t = UNIT_POS;
    let n = sel[(base + COUNT) as usize].load();
    let d = sel[(base + DIGIT) as usize].load();
    let kk = sel[(base + RANK) as usize].load();
    let (a, kk2) = candidate_pick(sel, base, n, 256u32, kk);
    let (b, quota) = candidate_pick(sel, base, n, a, kk2);
    let low = (a << 8) | b;
    let mut cnt = 0u32;
    let mut i = t;
    while i < n {
        let lo = sel[(base + CAND + 2 * i) as usize].load();
        let idx = sel[(base + CAND + 2 * i + 1) as usize].load();
        if lo == low && idx < first {
            cnt += 1;
        }
        i += CUBE;
    }
    let mut scan = SharedMemory::<u32>::new(CUBE as usize);
    let (_excl, before) = cube_exclusive_scan(cnt, &mut scan);
    ((d << 16) | low, quota, before)
}

/// Over the candidates, the bin of their bits 15..8 (`hi` = 256), or of bits 7..0 among those
/// whose bits 15..8 are `hi`, holding the `kk`-th lowest, and the rank left in it.
#[cube]
fn candidate_pick(sel: &Array<Atomic<u32>>, base: u32, n: u32, hi: u32, kk: u32) -> (u32, u32) {
    let t = UNIT_POS;
    let sh = SharedMemory::<Atomic<u32>>::new(CUBE as usize);
    sh[t as usize].store(0u32);
    sync_cube();
    let mut i = t;
    while i < n {
        let lo = sel[(base + CAND + 2 * i) as usize].load();
        if hi == 256 {
            sh[(lo >> 8) as usize].fetch_add(1u32);
        } else if lo >> 8 == hi {
            sh[(lo & 255) as usize].fetch_add(1u32);
        }
        i += CUBE;
    }
    sync_cube();
    let mut h = Array::<u32>::new(8usize);
    #[unroll]
    for q in 0..8u32 {
        let mut v = 0u32;
        if t < 32 {
            v = sh[(t * 8 + q) as usize].load();
        }
        h[q as usize] = v;
    }
    pick_bins(&h, kk)
}

/// Launches the two passes over every slab of `x` (columns [col0, col0 + ncols), diag(U1) of
/// the block in `dg`) into the half of `sel` at `base`, cleared before; k >= 1.
#[allow(clippy::too_many_arguments)]
pub fn select_block<R: Runtime>(
    b: &CubeBackend<R>,
    x: &CubeTensor,
    dg: (&Handle, usize),
    (col0, ncols): (usize, usize),
    k: usize,
    sel: (&Handle, usize),
    base: usize,
) {
    for pass in 0..2 {
        for s in 0..x.handles.len() {
            let (r0, srows) = x.slabs.range(s);
            if srows == 0 {
                continue;
            }
            // Two waves of the device's multiprocessors, 4 to 16 keys per unit.
            let entries = srows * ncols;
            let cubes = plan::select::hist_groups(entries, b.fill_cubes) as u32;
            let (xa, aa, sa) = (
                arg::<R>(&x.handles[s], x.slab_len(s)),
                arg::<R>(dg.0, dg.1),
                arg::<R>(sel.0, sel.1),
            );
            let count = CubeCount::Static(cubes, 1, 1);
            let dim = CubeDim::new_1d(CUBE);
            let geo = (srows as u32, x.cols as u32, col0 as u32, ncols as u32);
            // SAFETY: a grid-stride over the slab's srows x ncols entries of the block; the
            // selection buffer holds the half at `base` (plan::select::block).
            unsafe {
                if pass == 0 {
                    block_hist_kernel::launch_unchecked::<R>(
                        &b.client,
                        count,
                        dim,
                        xa,
                        aa,
                        sa,
                        geo.0,
                        geo.1,
                        geo.2,
                        geo.3,
                        base as u32,
                    );
                } else {
                    block_candidates_kernel::launch_unchecked::<R>(
                        &b.client,
                        count,
                        dim,
                        xa,
                        aa,
                        sa,
                        geo.0,
                        geo.1,
                        geo.2,
                        geo.3,
                        base as u32,
                        k as u32,
                        r0 as u32,
                        (s == 0) as u32,
                    );
                }
            }
        }
    }
}
