//! Per-row selection: one cube per row finds the row's threshold with the radix passes and
//! writes its mask words (and, fused, scores W on the fly and zeroes what it prunes).

use cubecl::prelude::*;

use super::super::super::storage::{arg, CubeMask};
use super::super::super::CubeBackend;
use super::super::reduce::CUBE;
use super::keys::{cube_index, load_key, row_threshold, write_row_mask};
use super::{Source, SELECT_SHARED};
use crate::error::Result;

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

pub fn per_row<R: Runtime>(
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
        // Coarse sizes, so that a few kernel variants serve every row length.
        x.cols.next_multiple_of(1024).min(capacity) as u32
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
                b.row_grid(rows),
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
