//! Whole-matrix selection (and SparseGPT's per-block selection over a column view where the
//! two-launch block selection's buffer does not fit one binding): one
//! global histogram per digit pass, each cube of the next pass deciding the digit from it for
//! itself (the decided digits left in a small device state for the passes after), then the
//! keys equal to the threshold counted per chunk of rows and the mask pass per chunk, which
//! sums the counts of the chunks before its own so that ties go to the lower linear index.
//! Five launches, each a grid of cubes (plan::select cuts the chunks).

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::super::storage::{arg, CubeMask, CubeTensor};
use super::super::super::CubeBackend;
use super::super::reduce::{cube_exclusive_scan, CUBE};
use super::super::stats::rows_of_chunk;
use super::keys::{cube_index, digit, find_bin_of, load_key, write_rows_mask};
use super::BINS;
use crate::error::{KernelError, Result};
use crate::plan;

/// Words of the selection state: slot s = [2s, 2s + 2) holds the digits decided by s passes
/// (right-aligned) and the rank left to find below them; slot 3 the threshold v and how many
/// keys equal to v are pruned. Slot 0 is the start (no digits, rank k) and is never read.
const STATE_WORDS: usize = 8;

/// The digits decided by passes 0..pass (pass 1..=3) and the rank left: the previous pass's
/// histogram (`pass - 1`), each unit's 8 bins in registers, scanned below the digits and rank
/// it started from (slot pass - 1, or none and k). With `lead`, unit 0 leaves them in slot
/// `pass` for the next launch.
#[cube]
fn decided(
    hist: &Array<Atomic<u32>>,
    state: &mut Array<u32>,
    k: u32,
    lead: bool,
    #[comptime] pass: u32,
) -> (u32, u32) {
    let t = UNIT_POS;
    let (_shift, width) = comptime![digit(pass - 1)];
    let mut res = SharedMemory::<u32>::new(2usize);
    let mut scan = SharedMemory::<u32>::new(CUBE as usize);
    let mut prefix = 0u32;
    let mut krem = k;
    if comptime![pass >= 2] {
        prefix = state[comptime![2 * (pass - 1)] as usize];
        krem = state[comptime![2 * (pass - 1) + 1] as usize];
    }
    let mut h = Array::<u32>::new(8usize);
    #[unroll]
    for q in 0..8u32 {
        h[q as usize] = hist[(comptime![(pass - 1) * BINS] + t * 8 + q) as usize].load();
    }
    find_bin_of(&h, &mut res, &mut scan, krem);
    let decided = (prefix << width) | res[0];
    let left = res[1];
    if lead && t == 0 {
        state[comptime![2 * pass] as usize] = decided;
        state[comptime![2 * pass + 1] as usize] = left;
    }
    sync_cube();
    (decided, left)
}

/// One digit pass of the global selection: a shared histogram per cube over a grid-stride of
/// the view's entries whose keys match the digits decided so far, added into the pass's
/// global one.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn matrix_hist_kernel(
    x: &Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    hist: &mut Array<Atomic<u32>>,
    state: &mut Array<u32>,
    rows: u32,
    ld: u32,
    col0: u32,
    ncols: u32,
    k: u32,
    lead: u32,
    #[comptime] src: u32,
    #[comptime] pass: u32,
) {
    let t = UNIT_POS;
    let (shift, width) = comptime![digit(pass)];
    let sh = SharedMemory::<Atomic<u32>>::new(BINS as usize);
    let mut prefix = 0u32;
    if comptime![pass > 0] {
        let (p, _left) = decided(hist, state, k, lead == 1 && CUBE_POS == 0, pass);
        prefix = p;
    }
    #[unroll]
    for q in 0..8u32 {
        sh[(t + q * CUBE) as usize].store(0u32);
    }
    sync_cube();
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
            hist[(comptime![pass * BINS] + b) as usize].fetch_add(cnt);
        }
    }
}

/// Per chunk of `chunk_rows` rows of the view: how many keys equal the threshold v (decided
/// here from the last histogram; the lead cube leaves v and the ties to prune in slot 3).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn chunk_ties_kernel(
    x: &Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    hist: &Array<Atomic<u32>>,
    state: &mut Array<u32>,
    ties: &mut Array<u32>,
    rows: u32,
    ld: u32,
    col0: u32,
    ncols: u32,
    chunk_rows: u32,
    chunk0: u32,
    k: u32,
    lead: u32,
    #[comptime] src: u32,
) {
    let g = cube_index();
    let (v, _left) = decided(hist, state, k, lead == 1 && g == 0, 3u32);
    let (r0, r1) = rows_of_chunk(g, rows, chunk_rows);
    if r0 < rows {
        let n = (r1 - r0) * ncols;
        let mut cnt = 0u32;
        let mut e = UNIT_POS;
        while e < n {
            let r = r0 + e / ncols;
            let c = col0 + e % ncols;
            if load_key(x, aux, grad, r * ld + c, c, col0, src) == v {
                cnt += 1;
            }
            e += CUBE;
        }
        let mut scan = SharedMemory::<u32>::new(CUBE as usize);
        let (_excl, total) = cube_exclusive_scan(cnt, &mut scan);
        if UNIT_POS == 0 {
            ties[(chunk0 + g) as usize] = total;
        }
    }
}

/// The mask pass of the global selection, one cube per chunk of rows: the ties of the chunks
/// before it summed, then row by row the keys below v and the ties while the group's quota
/// lasts.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn chunk_mask_kernel(
    x: &mut Array<f32>,
    aux: &Array<f32>,
    grad: &Array<f32>,
    mask: &mut Array<u32>,
    state: &Array<u32>,
    ties: &Array<u32>,
    rows: u32,
    ld: u32,
    wpr: u32,
    col0: u32,
    ncols: u32,
    chunk_rows: u32,
    chunk0: u32,
    #[comptime] src: u32,
    #[comptime] partial: bool,
    #[comptime] apply: bool,
) {
    let g = cube_index();
    let (r0, r1) = rows_of_chunk(g, rows, chunk_rows);
    if r0 < rows {
        let v = state[6];
        let need = state[7];
        let mut s = 0u32;
        let mut i = UNIT_POS;
        while i < chunk0 + g {
            s += ties[i as usize];
            i += CUBE;
        }
        let mut scan = SharedMemory::<u32>::new(CUBE as usize);
        let (_excl, earlier) = cube_exclusive_scan(s, &mut scan);
        write_rows_mask(
            x,
            aux,
            grad,
            mask,
            &mut scan,
            (r0, r1),
            ld,
            wpr,
            col0,
            ncols,
            v,
            need,
            earlier,
            src,
            apply,
            partial,
        );
    }
}

/// The k lowest keys of the view (rows of `x`, columns [col0, col0 + ncols)) as a whole, ties
/// by linear index within the view, written into `mask` (bits outside the view kept when
/// `partial`). `aux` is the activation statistic or, for `SRC_OBS`, the block's diag(U);
/// `grad` GBLM's gradient statistic (cut into x's slabs). With `apply` the mask pass also
/// zeroes the pruned entries of x: the fused prune, whose scores are never stored.
#[allow(clippy::too_many_arguments)]
pub fn select_global<R: Runtime>(
    b: &CubeBackend<R>,
    x: &CubeTensor,
    aux: Option<(&Handle, usize)>,
    grad: Option<&CubeTensor>,
    (col0, ncols): (usize, usize),
    k: usize,
    src: u32,
    mask: &CubeMask,
    partial: bool,
    apply: bool,
) -> Result<()> {
    let rows = x.rows;
    if rows == 0 || ncols == 0 {
        return Ok(());
    }
    if (rows * ncols) as u64 > u32::MAX as u64 {
        return Err(KernelError::Unsupported(format!(
            "selecting over {rows}x{ncols} entries at once: counts are 32-bit on the device"
        )));
    }
    let ld = x.cols;
    let state = b.scratch_from(&[0; STATE_WORDS])?;
    let hist = b.scratch_from(&vec![0u32; 3 * BINS as usize])?;
    let per = plan::select::chunk_rows(rows, ncols);
    let windows = plan::select::window_chunks(&x.slabs.bounds(), per);
    let chunks: usize = windows.iter().map(|w| w.count).sum();
    let ties = b.scratch(chunks)?;
    let bind = |s: usize| {
        let (xh, xl) = (&x.handles[s], x.slab_len(s));
        let (ah, al) = aux.unwrap_or((xh, xl));
        let (gh, gl) = grad.map_or((xh, xl), |g| (&g.handles[s], g.slab_len(s)));
        (xh, xl, ah, al, gh, gl)
    };
    if k > 0 {
        for pass in 0..3u32 {
            for s in 0..x.handles.len() {
                let srows = x.slabs.range(s).1;
                if srows == 0 {
                    continue;
                }
                let (xh, xl, ah, al, gh, gl) = bind(s);
                // Two waves of the device's multiprocessors, 4 to 16 keys per unit.
                let entries = srows * ncols;
                let cubes = plan::select::hist_groups(entries, b.fill_cubes);
                // SAFETY: a grid-stride over the view's srows x ncols entries of this slab.
                unsafe {
                    matrix_hist_kernel::launch_unchecked::<R>(
                        &b.client,
                        CubeCount::Static(cubes as u32, 1, 1),
                        CubeDim::new_1d(CUBE),
                        arg(xh, xl),
                        arg(ah, al),
                        arg(gh, gl),
                        arg(&hist, 3 * BINS as usize),
                        arg(&state, STATE_WORDS),
                        srows as u32,
                        ld as u32,
                        col0 as u32,
                        ncols as u32,
                        k as u32,
                        (s == 0) as u32,
                        src,
                        pass,
                    );
                }
            }
        }
        for (s, w) in windows.iter().enumerate() {
            if w.count == 0 {
                continue;
            }
            let (xh, xl, ah, al, gh, gl) = bind(s);
            // SAFETY: one cube per chunk of the slab's rows, reading its rows of the view.
            unsafe {
                chunk_ties_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.row_grid(w.count),
                    CubeDim::new_1d(CUBE),
                    arg(xh, xl),
                    arg(ah, al),
                    arg(gh, gl),
                    arg(&hist, 3 * BINS as usize),
                    arg(&state, STATE_WORDS),
                    arg(&ties, chunks),
                    (w.r1 - w.r0) as u32,
                    ld as u32,
                    col0 as u32,
                    ncols as u32,
                    per as u32,
                    w.first as u32,
                    k as u32,
                    (s == 0) as u32,
                    src,
                );
            }
        }
    }
    // With k = 0 the state stays zero (v = 0, need = 0): no key is below 0 and no tie is
    // taken, whatever the (unwritten) tie counts.
    for (s, w) in windows.iter().enumerate() {
        if w.count == 0 {
            continue;
        }
        let (xh, xl, ah, al, gh, gl) = bind(s);
        // SAFETY: one cube per chunk of the slab's rows, writing the mask words its rows of
        // the view cover (and, with `apply`, zeroing its own pruned entries of x after reading
        // their keys).
        unsafe {
            chunk_mask_kernel::launch_unchecked::<R>(
                &b.client,
                b.row_grid(w.count),
                CubeDim::new_1d(CUBE),
                arg(xh, xl),
                arg(ah, al),
                arg(gh, gl),
                arg(&mask.handles[s], mask.slab_len(s)),
                arg(&state, STATE_WORDS),
                arg(&ties, chunks),
                (w.r1 - w.r0) as u32,
                ld as u32,
                mask.words_per_row() as u32,
                col0 as u32,
                ncols as u32,
                per as u32,
                w.first as u32,
                src,
                partial,
                apply,
            );
        }
    }
    Ok(())
}
