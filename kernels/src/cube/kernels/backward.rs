//! The backward ops of ALGORITHMS.md §15 on the device (the linear's is `compose`'s, over the
//! GEMM), slab by slab and with no atomics, so every run gives the same bits:
//!
//! - RMSNorm's dx is a cube per row, as the forward: both row sums in one strided loop, two
//!   cube reductions, then dx, and the row's r into a scratch; dγ is a two-pass column sum,
//!   the partial sums of blocks of [`gamma_block_rows`] rows per slab, then each column's
//!   partials in order;
//! - RoPE's transposed rotation is the forward's kernel with the sine negated;
//! - the SiLU-gate's dg and du are one vectorised elementwise kernel;
//! - the embedding's dE is a thread per entry summing its id's rows of dh in token order, as
//!   the host's counting sort of the ids lists them.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, same_slabs, CubeTensor, ROW_ALIGN};
use super::super::CubeBackend;
use super::fill::{fill_u32, vector_width, BLOCK};
use super::forward::{rotate, row_part};
use super::reduce::{cube_sum, CUBE};
use crate::error::Result;
use crate::ops::check;
use crate::plan::{self, id_lists};

/// The most rows per block of dγ's first pass.
const RB: usize = 64;
const _: () = assert!(ROW_ALIGN.is_multiple_of(RB));

/// Rows per block of dγ's first pass over n rows of d columns: 64, or where that leaves the
/// pass (a thread per block and column) under `fill` cubes (two waves of the device where it
/// reports them) the largest of 32, 16 and 8 that makes them, else 8: 256 tokens of 4096
/// columns were 64 cubes. A divisor of 64, so slab heights are multiples of it, no block spans
/// two slabs and the blocks (hence dγ's bits) are fixed by the shape and device alone.
fn gamma_block_rows(n: usize, d: usize, fill: usize) -> usize {
    let threads = fill * BLOCK as usize;
    [RB, 32, 16]
        .into_iter()
        .find(|&rb| n.div_ceil(rb) * d >= threads)
        .unwrap_or(8)
}

/// With r = (mean(x²) + eps)^(−1/2) and g = γ ⊙ dy per row: dx = r·g − (r³/cols)·x·Σ g·x, and
/// r into `inv`; `parts` cubes per row of a slab (`plan::row_parts`), each summing the whole
/// row (in the same order, so the same r) and writing its run of dx (`plan::row_part`); the
/// first writes r.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_backward_kernel(
    x: &Array<f32>,
    gamma: &Array<f32>,
    dy: &Array<f32>,
    dx: &mut Array<f32>,
    inv: &mut Array<f32>,
    rows: u32,
    cols: u32,
    parts: u32,
    eps: f32,
    #[comptime] plane: bool,
) {
    // The row is uniform per cube, so the early-out never splits a cube at its barriers.
    let wg = CUBE_POS as u32;
    if wg < rows * parts {
        let r = wg / parts;
        let base = r * cols;
        let mut sq = 0.0f32;
        let mut gx = 0.0f32;
        let mut c = UNIT_POS;
        while c < cols {
            let i = (base + c) as usize;
            let v = x[i];
            sq += v * v;
            gx += gamma[c as usize] * dy[i] * v;
            c += CUBE;
        }
        let sq_total = cube_sum(sq, plane);
        let gx_total = cube_sum(gx, plane);
        let ri = 1.0f32 / f32::sqrt(sq_total / cols as f32 + eps);
        let k = ri * ri * ri / cols as f32 * gx_total;
        let part = wg % parts;
        let (first, end) = row_part(part, parts, cols);
        let mut c = first + UNIT_POS;
        while c < end {
            let i = (base + c) as usize;
            dx[i] = ri * gamma[c as usize] * dy[i] - k * x[i];
            c += CUBE;
        }
        if UNIT_POS == 0 && part == 0 {
            inv[r as usize] = ri;
        }
    }
}

/// dγ's first pass over one slab of `rows` rows: part(b, j) = Σ dy·x·r over the rows of block
/// b in order, a thread per (block, column) of the `n` = blocks·cols.
#[cube(launch_unchecked)]
fn rms_gamma_partials_kernel(
    x: &Array<f32>,
    dy: &Array<f32>,
    inv: &Array<f32>,
    part: &mut Array<f32>,
    rows: u32,
    cols: u32,
    n: u32,
    rb: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let j = i % cols;
        let mut t = (i / cols) * rb;
        let mut stop = t + rb;
        if stop > rows {
            stop = rows;
        }
        let mut acc = 0.0f32;
        while t < stop {
            let at = (t * cols + j) as usize;
            acc += dy[at] * x[at] * inv[t as usize];
            t += 1;
        }
        part[i as usize] = acc;
    }
}

/// dγ's second pass over one slab's partials: out[j] (+)= Σ part(b, j) over its `blocks` in
/// order, from 0 where `fresh` (the first slab).
#[cube(launch_unchecked)]
fn column_sum_kernel(part: &Array<f32>, out: &mut Array<f32>, blocks: u32, cols: u32, fresh: u32) {
    let j = ABSOLUTE_POS as u32;
    if j < cols {
        let mut acc = 0.0f32;
        if fresh == 0 {
            acc = out[j as usize];
        }
        for b in 0..blocks {
            acc += part[(b * cols + j) as usize];
        }
        out[j as usize] = acc;
    }
}

/// For a = silu(g) ⊙ u: du = da·g·σ(g), dg = da·u·σ(g)·(1 + g·(1 − σ(g))). σ and 1 − σ both
/// come from exp(−|g|) ≤ 1, so neither overflows nor cancels for gates of either sign.
#[cube(launch_unchecked)]
fn silu_mul_backward_kernel<N: Size>(
    gate: &Array<Vector<f32, N>>,
    up: &Array<Vector<f32, N>>,
    da: &Array<Vector<f32, N>>,
    dg: &mut Array<Vector<f32, N>>,
    du: &mut Array<Vector<f32, N>>,
) {
    let i = ABSOLUTE_POS;
    if i < dg.len() {
        let g = gate[i];
        let a = da[i];
        let one = Vector::new(1.0);
        let ex = Vector::exp(Vector::new(0.0) - g.abs());
        let big = one / (one + ex);
        let small = ex * big;
        let neg = g.less_than(Vector::new(0.0));
        let sig = select_many(neg, small, big);
        let rest = select_many(neg, big, small);
        du[i] = a * g * sig;
        dg[i] = a * up[i] * sig * (one + g * rest);
    }
}

/// dE(v, j) for the `n` entries of one slab of dE (v = v0 + local row): the sum in token order
/// of dh(t, j) over the tokens t of v's list (`lists`: offsets, positions from `tok0`) that
/// lie in the slab of dh bound (rows h0 .. h0 + hn); from 0 where `fresh`, so ids never seen
/// get 0 and later slabs of dh add on in order.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn embed_backward_kernel(
    dh: &Array<f32>,
    lists: &Array<u32>,
    de: &mut Array<f32>,
    n: u32,
    d: u32,
    v0: u32,
    tok0: u32,
    h0: u32,
    hn: u32,
    fresh: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let v = v0 + i / d;
        let j = i % d;
        let mut acc = 0.0f32;
        if fresh == 0 {
            acc = de[i as usize];
        }
        let mut k = lists[v as usize];
        let end = lists[(v + 1) as usize];
        while k < end {
            let t = lists[(tok0 + k) as usize];
            if t >= h0 && t - h0 < hn {
                acc += dh[((t - h0) * d + j) as usize];
            }
            k += 1;
        }
        de[i as usize] = acc;
    }
}

/// dx a cube per row (which also leaves the row's r), then dγ in two passes: per slab the
/// partial sums of its blocks of [`gamma_block_rows`] rows, then each column's partials, slab
/// after slab.
pub fn rms_norm_backward<R: Runtime>(
    b: &CubeBackend<R>,
    x: &CubeTensor,
    gamma: &CubeTensor,
    dy: &CubeTensor,
    eps: f64,
) -> Result<(CubeTensor, CubeTensor)> {
    check::rms_norm_backward(x.shape(), gamma.shape(), dy.shape(), eps)?;
    same_slabs("RMSNorm backward: dy vs x", &dy.slabs, &x.slabs)?;
    let (n, d) = x.shape();
    let dx = b.alloc_tensor(n, d)?;
    same_slabs("RMSNorm backward: dx vs x", &dx.slabs, &x.slabs)?;
    let dgamma = b.alloc_tensor(1, d)?;
    if d == 0 {
        return Ok((dx, dgamma));
    }
    let rb = gamma_block_rows(n, d, b.fill_cubes);
    let mut partials = Vec::new();
    for s in 0..x.handles.len() {
        let rn = x.slabs.range(s).1;
        if rn == 0 {
            continue;
        }
        let blocks = rn.div_ceil(rb);
        let (inv, part) = (b.scratch(rn)?, b.scratch(blocks * d)?);
        let len = x.slab_len(s);
        let parts = plan::row_parts(rn, d, b.fill_or_default());
        // SAFETY: `parts` cubes per row of the slab, each thread striding over the row and
        // then over its part's columns; γ holds cols values, inv one per row.
        unsafe {
            rms_norm_backward_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(rn * parts, 1),
                CubeDim::new_1d(CUBE),
                arg(&x.handles[s], len),
                arg(&gamma.handles[0], d),
                arg(&dy.handles[s], len),
                arg(&dx.handles[s], len),
                arg(&inv, rn),
                rn as u32,
                d as u32,
                parts as u32,
                eps as f32,
                b.plane,
            );
        }
        // SAFETY: one thread per (block, column); a block's rows stop at the slab's last.
        unsafe {
            rms_gamma_partials_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(blocks * d, BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(&x.handles[s], len),
                arg(&dy.handles[s], len),
                arg(&inv, rn),
                arg(&part, blocks * d),
                rn as u32,
                d as u32,
                (blocks * d) as u32,
                rb as u32,
            );
        }
        partials.push((part, blocks));
    }
    column_sums(b, &partials, &dgamma.handles[0], d);
    Ok((dx, dgamma))
}

/// dγ's second pass: `out` (d values) = the sum, in order, of every block's partials, slab
/// after slab; zeros where there are none (no rows).
fn column_sums<R: Runtime>(
    b: &CubeBackend<R>,
    partials: &[(Handle, usize)],
    out: &Handle,
    d: usize,
) {
    if partials.is_empty() {
        fill_u32(b, out, d, 0);
    }
    for (s, (part, blocks)) in partials.iter().enumerate() {
        // SAFETY: one thread per column, reading its column of the blocks x d partials.
        unsafe {
            column_sum_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(d, BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(part, blocks * d),
                arg(out, d),
                *blocks as u32,
                d as u32,
                (s == 0) as u32,
            );
        }
    }
}

pub fn rope_backward<R: Runtime>(
    b: &CubeBackend<R>,
    dx: &CubeTensor,
    cos: &CubeTensor,
    sin: &CubeTensor,
) -> Result<()> {
    rotate(b, dx, cos, sin, true)
}

pub fn silu_mul_backward<R: Runtime>(
    b: &CubeBackend<R>,
    gate: &CubeTensor,
    up: &CubeTensor,
    da: &CubeTensor,
) -> Result<(CubeTensor, CubeTensor)> {
    check::silu_mul_backward(gate.shape(), up.shape(), da.shape())?;
    same_slabs("SiLU-gate backward: up vs gate", &up.slabs, &gate.slabs)?;
    same_slabs("SiLU-gate backward: da vs gate", &da.slabs, &gate.slabs)?;
    let dg = b.alloc_tensor(gate.rows, gate.cols)?;
    let du = b.alloc_tensor(gate.rows, gate.cols)?;
    same_slabs("SiLU-gate backward: dg vs gate", &dg.slabs, &gate.slabs)?;
    let v = vector_width(gate.cols);
    for (s, n, cubes) in b.vector_slabs(gate, v) {
        // SAFETY: one thread per vector of five slabs of equal length.
        unsafe {
            silu_mul_backward_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                v,
                arg(&gate.handles[s], n),
                arg(&up.handles[s], n),
                arg(&da.handles[s], n),
                arg(&dg.handles[s], n),
                arg(&du.handles[s], n),
            );
        }
    }
    Ok((dg, du))
}

/// dE a slab at a time, a thread per entry summing its id's rows of dh as the host's counting
/// sort lists them. dh is read slab by slab, in order: the first writes every entry (0 for
/// ids never seen), later ones add theirs where a token of the dE slab lies in them.
pub fn embed_backward<R: Runtime>(
    b: &CubeBackend<R>,
    dh: &CubeTensor,
    ids: &[u32],
    vocab: usize,
) -> Result<CubeTensor> {
    check::embed_backward(dh.shape(), ids, vocab)?;
    let d = dh.cols;
    let de = b.alloc_tensor(vocab, d)?;
    if vocab == 0 || d == 0 {
        return Ok(de);
    }
    let lists = id_lists(ids, vocab);
    let dev = b.scratch_from(&lists)?;
    let positions = &lists[vocab + 1..];
    for es in 0..de.handles.len() {
        let (v0, vn) = de.slabs.range(es);
        let mine = &positions[lists[v0] as usize..lists[v0 + vn] as usize];
        for hs in 0..dh.handles.len() {
            let (h0, hn) = dh.slabs.range(hs);
            if hs > 0 && !mine.iter().any(|&t| (h0..h0 + hn).contains(&(t as usize))) {
                continue;
            }
            // SAFETY: one thread per entry of the dE slab; its id's list lies inside `lists`
            // (built from ids below the vocabulary), and only tokens of this dh slab are read.
            unsafe {
                embed_backward_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.grid(vn * d, BLOCK),
                    CubeDim::new_1d(BLOCK),
                    arg(&dh.handles[hs], dh.slab_len(hs)),
                    arg(&dev, lists.len()),
                    arg(&de.handles[es], de.slab_len(es)),
                    (vn * d) as u32,
                    d as u32,
                    v0 as u32,
                    (vocab + 1) as u32,
                    h0 as u32,
                    hn as u32,
                    (hs == 0) as u32,
                );
            }
        }
    }
    Ok(de)
}

#[cfg(test)]
mod tests {
    use super::gamma_block_rows;

    #[test]
    fn gamma_partials_make_two_waves_where_rows_allow() {
        let cubes =
            |n: usize, d: usize| (n.div_ceil(gamma_block_rows(n, d, 264)) * d).div_ceil(256);
        // 256 tokens of 4096 columns: 64 cubes in blocks of 64 rows, 512 in blocks of 8.
        assert_eq!(gamma_block_rows(256, 4096, 264), 8);
        assert_eq!(cubes(256, 4096), 512);
        // Enough rows: blocks of 64 as before; a device that reports nothing keeps them.
        assert_eq!(gamma_block_rows(4096, 4096, 264), 64);
        assert_eq!(gamma_block_rows(256, 4096, 0), 64);
        assert_eq!(gamma_block_rows(1024, 4096, 264), 32);
    }
}
