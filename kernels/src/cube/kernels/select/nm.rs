//! N:M selection in one pass: each thread owns lcm(32, m) columns of a row, i.e. whole groups
//! and whole mask words, ranks each group's keys in registers and writes its words (and, fused,
//! zeroes its columns of W).

use cubecl::prelude::*;

use super::super::super::storage::{arg, CubeMask};
use super::super::super::CubeBackend;
use super::super::reduce::CUBE;
use super::keys::load_key;
use super::Source;
use crate::error::Result;

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

pub fn n_m<R: Runtime>(
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
                b.grid(threads, CUBE),
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
