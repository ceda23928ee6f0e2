//! Whole-matrix selection (and SparseGPT's per-block selection over a column view): one
//! global histogram per digit pass with the decided digits in a small device state, then the
//! ties split over rows in row order and the per-row mask pass.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::super::storage::{arg, CubeMask, CubeTensor};
use super::super::super::CubeBackend;
use super::super::reduce::{cube_exclusive_scan, CUBE};
use super::keys::{cube_index, digit, find_bin, load_key, write_row_mask};
use super::BINS;
use crate::error::{KernelError, Result};

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
    #[comptime] apply: bool,
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
            apply,
            partial,
            false,
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
    let state = b.scratch_from(&[0, k as u32])?;
    let hist = b.scratch_from(&vec![0u32; BINS as usize])?;
    let eqcnt = b.scratch(rows)?;
    let need_row = b.scratch(rows)?;
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
                // 16 keys per unit, but two waves where the device reports its
                // multiprocessors (a 4096 x 128 OBS block would be 128 cubes: under one wave
                // of an H100), while every unit has 4 keys (each cube clears and merges a
                // 2048-bin histogram).
                let entries = srows * ncols;
                let cubes = entries
                    .div_ceil(CUBE as usize * 16)
                    .max(b.fill_cubes.min(entries.div_ceil(CUBE as usize * 4)))
                    .clamp(1, 1024);
                // SAFETY: a grid-stride over the view's srows x ncols entries of this slab.
                unsafe {
                    matrix_hist_kernel::launch_unchecked::<R>(
                        &b.client,
                        CubeCount::Static(cubes as u32, 1, 1),
                        CubeDim::new_1d(CUBE),
                        arg(xh, xl),
                        arg(ah, al),
                        arg(gh, gl),
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
        let (xh, xl, ah, al, gh, gl) = bind(s);
        // SAFETY: one cube per row of the slab, reading its row of the view.
        unsafe {
            row_eq_count_kernel::launch_unchecked::<R>(
                &b.client,
                b.row_grid(srows),
                CubeDim::new_1d(CUBE),
                arg(xh, xl),
                arg(ah, al),
                arg(gh, gl),
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
        let (xh, xl, ah, al, gh, gl) = bind(s);
        // SAFETY: one cube per row of the slab, writing the mask words its view covers (and,
        // with `apply`, zeroing its own pruned entries of x after reading their keys).
        unsafe {
            row_mask_kernel::launch_unchecked::<R>(
                &b.client,
                b.row_grid(srows),
                CubeDim::new_1d(CUBE),
                arg(xh, xl),
                arg(ah, al),
                arg(gh, gl),
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
                apply,
            );
        }
    }
    Ok(())
}
