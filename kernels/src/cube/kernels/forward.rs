//! The LLaMA forward ops of ALGORITHMS.md §14 on the device:
//!
//! - the linear Y = X·Wᵀ is the shared GEMM with W read transposed (its rows are B's columns);
//! - RMSNorm is a cube per row: a strided sum of squares, one cube reduction, the scaled row;
//! - RoPE rotates pairs (x_i, x_{i+e/2}) in place, a thread per pair, with the host's tables;
//! - attention is causal GQA with an f32 online softmax (see [`attention_kernel`]);
//! - the SiLU-gate product and the residual add are vectorised elementwise kernels;
//! - the embedding gather copies table rows bit for bit from the uploaded ids;
//! - the LM head forms one chunk's logits with the GEMM into a temporary, then a cube per row
//!   folds them into the running (m, s, z) state as the reference does.
//!
//! Tensors split into row slabs are handled slab by slab: the GEMM over the token runs that X
//! and Y share, attention over groups of whole windows that lie in one slab of each operand
//! (a window straddling a slab boundary is copied into contiguous scratch first).

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, same_slabs, CubeTensor};
use super::super::CubeBackend;
use super::copy::{copy2d, Rect};
use super::fill::{vector_width, BLOCK};
use super::gemm::{gemm_split, Of, Product};
use super::reduce::{cube_sum, CUBE};
use crate::error::{KernelError, Result};
use crate::ops::{check, NO_TARGET};
use crate::plan;
use crate::plan::aligned_runs;

/// The largest head_dim the attention kernel takes: each unit holds up to 4 rows of ⌈e/16⌉
/// output columns in registers (64 f32 at 256).
pub const MAX_HEAD_DIM: usize = 256;

/// Keys per tile of the attention loop.
const ATT_BK: u32 = 32;
/// Depth of one step of the S = Q·Kᵀ tile.
const ATT_DC: u32 = 16;
/// Shared memory for the V rows of one step of O += P·V, in f32: 8 rows of a 256-wide head,
/// 32 of a 64-wide one. With the Q and K steps and P, the cube takes under 24 KiB.
const ATT_VC_FLOATS: u32 = 2048;
/// A finite stand-in for −∞: masked scores, and a row's max before its first key.
const ATT_LOWEST: f32 = -3.0e38;

/// The largest of `v` over the cube's 256 threads, returned to every thread (plane ops where
/// the device has them, a shared-memory tree otherwise), as [`cube_sum`].
#[cube]
fn cube_max(v: f32, #[comptime] plane: bool) -> f32 {
    let mut sh = SharedMemory::<f32>::new(CUBE as usize);
    // Every partial is at least v: starting from it changes no maximum.
    let mut out = v;
    if comptime![plane] {
        let p = plane_max(v);
        if UNIT_POS_PLANE == 0 {
            sh[(UNIT_POS / PLANE_DIM) as usize] = p;
        }
        sync_cube();
        let planes = CUBE_DIM / PLANE_DIM;
        for q in 0..planes {
            out = f32::max(out, sh[q as usize]);
        }
        sync_cube();
    } else {
        sh[UNIT_POS as usize] = v;
        sync_cube();
        #[unroll]
        for step in 0..8u32 {
            let half = comptime![128u32 >> step];
            if UNIT_POS < half {
                sh[UNIT_POS as usize] =
                    f32::max(sh[UNIT_POS as usize], sh[(UNIT_POS + half) as usize]);
            }
            sync_cube();
        }
        out = f32::max(out, sh[0]);
        sync_cube();
    }
    out
}

/// The columns [first, end) part `part` of `parts` writes of a row of `cols`
/// (`plan::row_part`): runs of a multiple of 4 columns, the last shorter.
#[cube]
pub(super) fn row_part(part: u32, parts: u32, cols: u32) -> (u32, u32) {
    let run = ((cols + parts - 1) / parts + 3) / 4 * 4;
    let first = u32::min(part * run, cols);
    (first, u32::min(first + run, cols))
}

/// y = x / sqrt(mean(x²) + eps) · γ, `parts` cubes per row of a slab (`plan::row_parts`):
/// each sums the whole row (in the same order, so the same factor) and writes its run of
/// columns (`plan::row_part`).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_kernel(
    x: &Array<f32>,
    gamma: &Array<f32>,
    y: &mut Array<f32>,
    rows: u32,
    cols: u32,
    parts: u32,
    eps: f32,
    #[comptime] plane: bool,
) {
    // The row is uniform per cube, so the early-out never splits a cube at its barriers.
    let wg = CUBE_POS as u32;
    if wg < rows * parts {
        let base = (wg / parts) * cols;
        let mut s = 0.0f32;
        let mut c = UNIT_POS;
        while c < cols {
            let v = x[(base + c) as usize];
            s += v * v;
            c += CUBE;
        }
        let total = cube_sum(s, plane);
        let inv = 1.0f32 / f32::sqrt(total / cols as f32 + eps);
        let (first, end) = row_part(wg % parts, parts, cols);
        let mut c = first + UNIT_POS;
        while c < end {
            let i = (base + c) as usize;
            y[i] = x[i] * (inv * gamma[c as usize]);
            c += CUBE;
        }
    }
}

/// RoPE in place, one thread per rotated pair: slab row r is global row row0 + r, at position
/// (row0 + r) mod seq; pair j of a row is (head j / half, index j mod half). `transposed`
/// negates the sine (exactly): the inverse rotation, which is RoPE's backward.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rope_kernel(
    x: &mut Array<f32>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    pairs: u32,
    cols: u32,
    half: u32,
    seq: u32,
    row0: u32,
    #[comptime] transposed: bool,
) {
    let i = ABSOLUTE_POS as u32;
    if i < pairs {
        let per_row = cols / 2;
        let r = i / per_row;
        let j = i % per_row;
        let c = j % half;
        let a_at = (r * cols + (j / half) * 2 * half + c) as usize;
        let b_at = a_at + half as usize;
        let t = ((row0 + r) % seq * half + c) as usize;
        let cs = cos[t];
        let mut sn = sin[t];
        if comptime![transposed] {
            sn = -sn;
        }
        let a = x[a_at];
        let b = x[b_at];
        x[a_at] = a * cs - b * sn;
        x[b_at] = b * cs + a * sn;
    }
}

/// Causal GQA over whole windows of `seq` rows, as FlashAttention-2's forward: a cube of 256
/// units per (query tile of 16·`rpu` rows of one window, query head; `rpu`, the rows of each
/// unit's register tiles, is 4, 2 or 1 as [`plan::attention_query_rows`] picks). Per tile of
/// [`ATT_BK`] keys of the head's KV group (up to the tile's last query; later keys are never
/// loaded): S = Q·Kᵀ as an rpu x 2 register tile per unit over depth steps of [`ATT_DC`] staged
/// in shared memory; the scores through shared memory to one unit per row, which updates the
/// row's running max m and sum l and leaves P = exp(S − m) and the rescale factor; then every
/// unit rescales its register tile of O (rpu rows x ⌈e/16⌉ columns: tx, tx + 16, …) and adds
/// P·V over steps of V rows staged in shared memory. Every local array is indexed by unrolled
/// comptime loops only, so it stays in registers; O is divided by l once at the end.
///
/// head_dim and rpu are comptime (one kernel per distinct pair), so those loops unroll. Rows
/// are counted from the launch's first window; q_row0, k_row0, o_row0 and l_row0 are that
/// window's first row inside the bindings of Q, of K and V, of the output and of L. With
/// `with_lse` (comptime, so the plain forward carries no trace of it) each row's and head's
/// log-sum-exp is written to L [rows, heads] (heads = the launch's cube count in y).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn attention_kernel(
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    out: &mut Array<f32>,
    lse: &mut Array<f32>,
    q_row0: u32,
    k_row0: u32,
    o_row0: u32,
    l_row0: u32,
    seq: u32,
    tiles: u32,
    qc: u32,
    kc: u32,
    group: u32,
    scale: f32,
    #[comptime] e: u32,
    #[comptime] with_lse: bool,
    #[comptime] rpu: u32,
) {
    let oc = comptime![e.div_ceil(16)];
    let bq = comptime![16 * rpu];
    let ld_v = comptime![16 * e.div_ceil(16)];
    let vr = comptime![ATT_VC_FLOATS / (16 * e.div_ceil(16))];
    let tile = CUBE_POS_X;
    let h = CUBE_POS_Y;
    let g = h / group;
    let ws = (tile / tiles) * seq;
    // Window-relative query rows [q0, q_end) and keys [0, q_end).
    let q0 = (tile % tiles) * bq;
    let mut q_end = q0 + bq;
    if q_end > seq {
        q_end = seq;
    }
    let t = UNIT_POS;
    let ty = t / 16;
    let tx = t % 16;

    // One shared array at fixed offsets (floats): CubeCL 0.10 places separate shared arrays
    // in an order that varies from run to run, and ptxas's allocation with it (as the
    // backward's kernels found). Q's and K's depth steps
    // (rows of ATT_DC + 1), P (rows of ATT_BK + 1), V's rows, and each row's m, l and rescale.
    let qs_at = comptime![0u32];
    let ks_at = comptime![qs_at + bq * (ATT_DC + 1)];
    let ps_at = comptime![ks_at + ATT_BK * (ATT_DC + 1)];
    let vs_at = comptime![ps_at + bq * (ATT_BK + 1)];
    let rm_at = comptime![vs_at + ATT_VC_FLOATS];
    let rl_at = comptime![rm_at + bq];
    let rc_at = comptime![rm_at + 2 * bq];
    let mut sm = SharedMemory::<f32>::new(comptime![(rm_at + 3 * bq) as usize]);
    let mut o = Array::<f32>::new(comptime![(rpu * e.div_ceil(16)) as usize]);
    let mut sc = Array::<f32>::new(comptime![(2 * rpu) as usize]);
    #[unroll]
    for i in 0..comptime![rpu * e.div_ceil(16)] {
        o[i as usize] = 0.0;
    }
    if t < bq {
        sm[(rm_at + t) as usize] = f32::new(ATT_LOWEST);
        sm[(rl_at + t) as usize] = 0.0;
    }

    let q_col = h * e;
    let kv_col = g * e;
    let mut k0 = 0u32;
    while k0 < q_end {
        let mut nk = q_end - k0;
        if nk > ATT_BK {
            nk = ATT_BK;
        }
        #[unroll]
        for i in 0..comptime![2 * rpu] {
            sc[i as usize] = 0.0;
        }
        let mut d0 = 0u32;
        while d0 < e {
            sync_cube();
            #[unroll]
            for step in 0..comptime![bq * ATT_DC / 256] {
                let i = step * 256 + t;
                let r = i / ATT_DC;
                let d = d0 + i % ATT_DC;
                let mut val = 0.0f32;
                if q0 + r < q_end && d < e {
                    val = q[((q_row0 + ws + q0 + r) * qc + q_col + d) as usize];
                }
                sm[(qs_at + (r * (ATT_DC + 1) + i % ATT_DC)) as usize] = val;
            }
            #[unroll]
            for step in 0..comptime![ATT_BK * ATT_DC / 256] {
                let i = step * 256 + t;
                let r = i / ATT_DC;
                let d = d0 + i % ATT_DC;
                let mut val = 0.0f32;
                if r < nk && d < e {
                    val = k[((k_row0 + ws + k0 + r) * kc + kv_col + d) as usize];
                }
                sm[(ks_at + (r * (ATT_DC + 1) + i % ATT_DC)) as usize] = val;
            }
            sync_cube();
            #[unroll]
            for d in 0..ATT_DC {
                #[unroll]
                for i in 0..rpu {
                    let a = sm[(qs_at + ((ty * rpu + i) * (ATT_DC + 1) + d)) as usize];
                    #[unroll]
                    for j in 0..2u32 {
                        let kv = sm[(ks_at + ((tx * 2 + j) * (ATT_DC + 1) + d)) as usize];
                        sc[(i * 2 + j) as usize] += a * kv;
                    }
                }
            }
            d0 += ATT_DC;
        }
        // Masked scores (past the tile, after the query, or a padding row) are ATT_LOWEST.
        #[unroll]
        for i in 0..rpu {
            #[unroll]
            for j in 0..2u32 {
                let r = ty * rpu + i;
                let c = tx * 2 + j;
                let mut val = f32::new(ATT_LOWEST);
                if c < nk && k0 + c <= q0 + r && q0 + r < q_end {
                    val = sc[(i * 2 + j) as usize] * scale;
                }
                sm[(ps_at + (r * (ATT_BK + 1) + c)) as usize] = val;
            }
        }
        sync_cube();
        if t < bq {
            let base = t * (ATT_BK + 1);
            let mut mx = f32::new(ATT_LOWEST);
            for c in 0..ATT_BK {
                mx = f32::max(mx, sm[(ps_at + (base + c)) as usize]);
            }
            let m_old = sm[(rm_at + t) as usize];
            let m_new = f32::max(m_old, mx);
            let mut sum = 0.0f32;
            for c in 0..ATT_BK {
                let s = sm[(ps_at + (base + c)) as usize];
                let mut p = 0.0f32;
                if s > ATT_LOWEST {
                    p = f32::exp(s - m_new);
                }
                sm[(ps_at + (base + c)) as usize] = p;
                sum += p;
            }
            let mut corr = 1.0f32;
            if m_old > ATT_LOWEST {
                corr = f32::exp(m_old - m_new);
            }
            sm[(rl_at + t) as usize] = sm[(rl_at + t) as usize] * corr + sum;
            sm[(rm_at + t) as usize] = m_new;
            sm[(rc_at + t) as usize] = corr;
        }
        sync_cube();
        #[unroll]
        for i in 0..rpu {
            let corr = sm[(rc_at + (ty * rpu + i)) as usize];
            #[unroll]
            for j in 0..oc {
                o[(i * oc + j) as usize] *= corr;
            }
        }
        let mut v0 = 0u32;
        while v0 < nk {
            let mut nv = nk - v0;
            if nv > vr {
                nv = vr;
            }
            sync_cube();
            let mut i = t;
            while i < vr * e {
                let r = i / e;
                let mut val = 0.0f32;
                if r < nv {
                    val = v[((k_row0 + ws + k0 + v0 + r) * kc + kv_col + i % e) as usize];
                }
                sm[(vs_at + (r * ld_v + i % e)) as usize] = val;
                i += 256;
            }
            sync_cube();
            for kk in 0..nv {
                #[unroll]
                for i in 0..rpu {
                    let p = sm[(ps_at + ((ty * rpu + i) * (ATT_BK + 1) + v0 + kk)) as usize];
                    #[unroll]
                    for j in 0..oc {
                        o[(i * oc + j) as usize] +=
                            p * sm[(vs_at + (kk * ld_v + tx + 16 * j)) as usize];
                    }
                }
            }
            v0 += vr;
        }
        k0 += ATT_BK;
    }
    sync_cube();
    #[unroll]
    for i in 0..rpu {
        let r = ty * rpu + i;
        if q0 + r < q_end {
            let inv = 1.0 / sm[(rl_at + r) as usize];
            let o_at = (o_row0 + ws + q0 + r) * qc + q_col;
            #[unroll]
            for j in 0..oc {
                let col = tx + 16 * j;
                if col < e {
                    out[(o_at + col) as usize] = o[(i * oc + j) as usize] * inv;
                }
            }
        }
    }
    // The row's log-sum-exp of its scaled scores: m is their max, l the sum of exp(s − m).
    if comptime![with_lse] {
        if t < bq && q0 + t < q_end {
            let at = (l_row0 + ws + q0 + t) * CUBE_COUNT_Y + h;
            lse[at as usize] = sm[(rm_at + t) as usize] + f32::ln(sm[(rl_at + t) as usize]);
        }
    }
}

#[cube(launch_unchecked)]
fn silu_mul_kernel<N: Size>(
    gate: &Array<Vector<f32, N>>,
    up: &Array<Vector<f32, N>>,
    out: &mut Array<Vector<f32, N>>,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let g = gate[i];
        out[i] = g / (Vector::new(1.0) + Vector::exp(Vector::new(0.0) - g)) * up[i];
    }
}

#[cube(launch_unchecked)]
fn add_kernel<N: Size>(x: &mut Array<Vector<f32, N>>, y: &Array<Vector<f32, N>>) {
    let i = ABSOLUTE_POS;
    if i < x.len() {
        x[i] += y[i];
    }
}

/// out(r, c) = table(ids[id0 + r] − t_row0, c) for the output rows whose id lies in this table
/// slab (rows t_row0 .. t_row0 + t_rows); words, so the gathered values are exact.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn embed_kernel(
    table: &Array<u32>,
    ids: &Array<u32>,
    out: &mut Array<u32>,
    n: u32,
    d: u32,
    id0: u32,
    t_row0: u32,
    t_rows: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let id = ids[(id0 + i / d) as usize];
        if id >= t_row0 && id - t_row0 < t_rows {
            out[i as usize] = table[((id - t_row0) * d + i % d) as usize];
        }
    }
}

/// Folds one chunk's logits into the LM-head state, one cube per row: m' = max(m, max l),
/// s' = s·exp(m − m') + Σ exp(l − m'), z = l[target − offset] when the target is in the chunk.
/// `restart` starts from (−∞, 0, 0) (`neg_inf` carries the infinity in).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn lm_fold_kernel(
    logits: &Array<f32>,
    state: &mut Array<f32>,
    targets: &Array<u32>,
    rows: u32,
    v: u32,
    l_row0: u32,
    s_row0: u32,
    t0: u32,
    offset: u32,
    restart: u32,
    neg_inf: f32,
    #[comptime] plane: bool,
) {
    let r = CUBE_POS as u32;
    if r < rows {
        let lb = (l_row0 + r) * v;
        let sb = ((s_row0 + r) * 3) as usize;
        let mut m0 = neg_inf;
        let mut s0 = 0.0f32;
        if restart == 0 {
            m0 = state[sb];
            s0 = state[sb + 1];
        }
        let mut mx = m0;
        let mut c = UNIT_POS;
        while c < v {
            mx = f32::max(mx, logits[(lb + c) as usize]);
            c += CUBE;
        }
        // The barriers inside the reductions also order every unit's reads of the state
        // before unit 0 writes it.
        let m = cube_max(mx, plane);
        let mut s = 0.0f32;
        let mut c = UNIT_POS;
        while c < v {
            s += f32::exp(logits[(lb + c) as usize] - m);
            c += CUBE;
        }
        let total = cube_sum(s, plane);
        if UNIT_POS == 0 {
            state[sb] = m;
            state[sb + 1] = s0 * f32::exp(m0 - m) + total;
            let tg = targets[(t0 + r) as usize];
            if tg != NO_TARGET && tg >= offset && tg - offset < v {
                state[sb + 2] = logits[(lb + tg - offset) as usize];
            } else if restart != 0 {
                state[sb + 2] = 0.0;
            }
        }
    }
}

/// Y = X·Wᵀ into `y` (X.rows x W.rows, any slabs): a GEMM per token run that one X slab and
/// one Y slab share and per slab of W (a block of Y's columns).
fn linear_into<R: Runtime>(b: &CubeBackend<R>, x: &CubeTensor, w: &CubeTensor, y: &CubeTensor) {
    gemm_split(b, Product::default(), Of::rows(x), Of::transposed(w), y);
}

pub fn linear<R: Runtime>(
    b: &CubeBackend<R>,
    x: &CubeTensor,
    w: &CubeTensor,
) -> Result<CubeTensor> {
    check::linear(x.shape(), w.shape())?;
    let y = b.alloc_tensor(x.rows, w.rows)?;
    linear_into(b, x, w, &y);
    Ok(y)
}

pub fn rms_norm<R: Runtime>(
    b: &CubeBackend<R>,
    x: &CubeTensor,
    gamma: &CubeTensor,
    eps: f64,
) -> Result<CubeTensor> {
    check::rms_norm(x.shape(), gamma.shape(), eps)?;
    let y = b.alloc_tensor(x.rows, x.cols)?;
    same_slabs("RMSNorm output vs X", &y.slabs, &x.slabs)?;
    let fill = b.fill_or_default();
    for s in 0..x.handles.len() {
        let rn = x.slabs.range(s).1;
        if rn == 0 || x.cols == 0 {
            continue;
        }
        let parts = plan::row_parts(rn, x.cols, fill);
        // SAFETY: `parts` cubes per row of the slab, each thread striding over the row and
        // then over its part's columns; γ holds cols values.
        unsafe {
            rms_norm_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(rn * parts, 1),
                CubeDim::new_1d(CUBE),
                arg(&x.handles[s], x.slab_len(s)),
                arg(&gamma.handles[0], gamma.cols),
                arg(&y.handles[s], y.slab_len(s)),
                rn as u32,
                x.cols as u32,
                parts as u32,
                eps as f32,
                b.plane,
            );
        }
    }
    Ok(y)
}

pub fn rope<R: Runtime>(
    b: &CubeBackend<R>,
    x: &CubeTensor,
    cos: &CubeTensor,
    sin: &CubeTensor,
) -> Result<()> {
    rotate(b, x, cos, sin, false)
}

/// RoPE's rotation in place, or with `transposed` its inverse (the backward pass).
pub(super) fn rotate<R: Runtime>(
    b: &CubeBackend<R>,
    x: &CubeTensor,
    cos: &CubeTensor,
    sin: &CubeTensor,
    transposed: bool,
) -> Result<()> {
    let (seq, e) = check::rope(x.shape(), cos.shape(), sin.shape())?;
    if cos.handles.len() > 1 || sin.handles.len() > 1 {
        return Err(KernelError::Unsupported(format!(
            "RoPE: the {seq}x{} tables exceed one binding",
            e / 2
        )));
    }
    let half = e / 2;
    for s in 0..x.handles.len() {
        let (r0, rn) = x.slabs.range(s);
        let pairs = rn * x.cols / 2;
        if pairs == 0 {
            continue;
        }
        // SAFETY: one thread per pair of the slab; both halves lie in its row, and the table
        // entry (position < seq, index < half) inside the seq x half tables.
        unsafe {
            rope_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(pairs, BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(&x.handles[s], x.slab_len(s)),
                arg(&cos.handles[0], seq * half),
                arg(&sin.handles[0], seq * half),
                pairs as u32,
                x.cols as u32,
                half as u32,
                seq as u32,
                r0 as u32,
                transposed,
            );
        }
    }
    Ok(())
}

/// One attention launch's operands: bindings and the first row of its first window in each.
struct AttnArgs<'a> {
    q: (&'a Handle, usize, usize),
    k: (&'a Handle, usize, usize),
    v: (&'a Handle, usize),
    o: (&'a Handle, usize, usize),
    /// L and its first row, or (for the plain forward) a one-value placeholder never written.
    l: (&'a Handle, usize, usize),
    with_lse: bool,
    windows: usize,
}

/// The attention geometry fixed by the shapes.
struct AttnShape {
    heads: usize,
    group: usize,
    seq: usize,
    e: usize,
    qc: usize,
    kc: usize,
    /// Query rows per tile (cube): 64, 32 or 16.
    q_rows: usize,
}

fn attention_launch<R: Runtime>(b: &CubeBackend<R>, sh: &AttnShape, a: &AttnArgs<'_>) {
    let tiles = sh.seq.div_ceil(sh.q_rows);
    // Cube counts stay within the device's x limit: windows in groups.
    let per = plan::items_per_launch(tiles, b.max_cube_count.0);
    let mut w0 = 0;
    while w0 < a.windows {
        let n = per.min(a.windows - w0);
        let rows = w0 * sh.seq;
        // SAFETY: each cube reads query rows and key rows of its own window (all inside the
        // launch's windows, which lie in the given bindings from their first rows) at columns
        // below qc and kc, and writes the output rows (and L entries) of its queries and head.
        unsafe {
            attention_kernel::launch_unchecked::<R>(
                &b.client,
                CubeCount::Static((n * tiles) as u32, sh.heads as u32, 1),
                CubeDim::new_1d(256),
                arg(a.q.0, a.q.1),
                arg(a.k.0, a.k.1),
                arg(a.v.0, a.v.1),
                arg(a.o.0, a.o.1),
                arg(a.l.0, a.l.1),
                (a.q.2 + rows) as u32,
                (a.k.2 + rows) as u32,
                (a.o.2 + rows) as u32,
                (a.l.2 + rows) as u32,
                sh.seq as u32,
                tiles as u32,
                sh.qc as u32,
                sh.kc as u32,
                sh.group as u32,
                (1.0 / (sh.e as f64).sqrt()) as f32,
                sh.e as u32,
                a.with_lse,
                (sh.q_rows / 16) as u32,
            );
        }
        w0 += n;
    }
}

/// Rows [r0, r0 + n) of `t` (across its slabs) into a contiguous buffer, or back.
fn copy_rows<R: Runtime>(
    b: &CubeBackend<R>,
    t: &CubeTensor,
    r0: usize,
    n: usize,
    buf: &Handle,
    to_buf: bool,
) {
    let cols = t.cols;
    for (s, g0, g1) in t.slabs.covering(r0, r0 + n) {
        let slab = Rect {
            h: &t.handles[s],
            len: t.slab_len(s),
            off: (g0 - t.slabs.range(s).0) * cols,
            ld: cols,
        };
        let flat = Rect {
            h: buf,
            len: n * cols,
            off: (g0 - r0) * cols,
            ld: cols,
        };
        if to_buf {
            copy2d(b, slab, flat, g1 - g0, cols);
        } else {
            copy2d(b, flat, slab, g1 - g0, cols);
        }
    }
}

pub fn attention<R: Runtime>(
    b: &CubeBackend<R>,
    q: &CubeTensor,
    k: &CubeTensor,
    v: &CubeTensor,
    heads: usize,
    kv_heads: usize,
    seq: usize,
) -> Result<CubeTensor> {
    Ok(attention_lse(b, q, k, v, heads, kv_heads, seq, false)?.0)
}

/// The attention output and, when `with_lse`, L [N, heads]: each row's and head's
/// log-sum-exp of its scaled scores, from the same kernel's running max and sum.
#[allow(clippy::too_many_arguments)]
pub fn attention_lse<R: Runtime>(
    b: &CubeBackend<R>,
    q: &CubeTensor,
    k: &CubeTensor,
    v: &CubeTensor,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    with_lse: bool,
) -> Result<(CubeTensor, Option<CubeTensor>)> {
    let e = check::attention(q.shape(), k.shape(), v.shape(), heads, kv_heads, seq)?;
    if e > MAX_HEAD_DIM {
        return Err(KernelError::Unsupported(format!(
            "attention: head_dim {e} exceeds the {MAX_HEAD_DIM} the CubeCL kernel holds per \
             query"
        )));
    }
    same_slabs("attention V vs K", &v.slabs, &k.slabs)?;
    let max_y = b.max_cube_count.1;
    if heads > max_y as usize {
        return Err(KernelError::Unsupported(format!(
            "attention: {heads} heads exceed a launch's {max_y} cubes per dimension"
        )));
    }
    let out = b.alloc_tensor(q.rows, q.cols)?;
    let lse = with_lse
        .then(|| b.alloc_tensor(q.rows, heads))
        .transpose()?;
    // The plain forward binds a placeholder where L would go (the kernel never writes it).
    let none = if with_lse { None } else { Some(b.scratch(1)?) };
    let windows = q.rows / seq;
    let sh = AttnShape {
        heads,
        group: heads / kv_heads,
        seq,
        e,
        qc: q.cols,
        kc: k.cols,
        // Every launch (whole windows, or one window through copies) takes the same size.
        q_rows: plan::attention_query_rows(windows, seq, heads, e, b.fill_or_default()),
    };
    let mut w = 0;
    while w < windows {
        let r0 = w * seq;
        let (qs, ql) = q.slabs.locate(r0);
        let (ks, kl) = k.slabs.locate(r0);
        let (os, ol) = out.slabs.locate(r0);
        let (l, ll) = match (&lse, &none) {
            (Some(t), _) => {
                let (ls, ll) = t.slabs.locate(r0);
                ((&t.handles[ls], t.slab_len(ls), ll), t.slabs.slab_rows - ll)
            }
            (None, Some(h)) => ((h, 1, 0), usize::MAX),
            (None, None) => unreachable!("a placeholder is made without L"),
        };
        // Whole windows from here inside the same slab of every operand.
        let room = (q.slabs.slab_rows - ql)
            .min(k.slabs.slab_rows - kl)
            .min(out.slabs.slab_rows - ol)
            .min(ll);
        let fit = (room / seq).min(windows - w);
        if fit > 0 {
            attention_launch(
                b,
                &sh,
                &AttnArgs {
                    q: (&q.handles[qs], q.slab_len(qs), ql),
                    k: (&k.handles[ks], k.slab_len(ks), kl),
                    v: (&v.handles[ks], v.slab_len(ks)),
                    o: (&out.handles[os], out.slab_len(os), ol),
                    l,
                    with_lse,
                    windows: fit,
                },
            );
            w += fit;
            continue;
        }
        attention_straddling(b, &sh, (q, k, v), (&out, lse.as_ref()), r0, &none)?;
        w += 1;
    }
    Ok((out, lse))
}

/// One window across a slab boundary of some operand: through contiguous copies of its rows.
fn attention_straddling<R: Runtime>(
    b: &CubeBackend<R>,
    sh: &AttnShape,
    (q, k, v): (&CubeTensor, &CubeTensor, &CubeTensor),
    (out, lse): (&CubeTensor, Option<&CubeTensor>),
    r0: usize,
    none: &Option<Handle>,
) -> Result<()> {
    let seq = sh.seq;
    let (qb, kb, vb, ob) = (
        b.scratch(seq * q.cols)?,
        b.scratch(seq * k.cols)?,
        b.scratch(seq * k.cols)?,
        b.scratch(seq * q.cols)?,
    );
    let lb = lse.map(|_| b.scratch(seq * sh.heads)).transpose()?;
    copy_rows(b, q, r0, seq, &qb, true);
    copy_rows(b, k, r0, seq, &kb, true);
    copy_rows(b, v, r0, seq, &vb, true);
    let l = match (&lb, none) {
        (Some(h), _) => (h, seq * sh.heads, 0),
        (None, Some(h)) => (h, 1, 0),
        (None, None) => unreachable!("a placeholder is made without L"),
    };
    attention_launch(
        b,
        sh,
        &AttnArgs {
            q: (&qb, seq * q.cols, 0),
            k: (&kb, seq * k.cols, 0),
            v: (&vb, seq * k.cols),
            o: (&ob, seq * q.cols, 0),
            l,
            with_lse: lb.is_some(),
            windows: 1,
        },
    );
    copy_rows(b, out, r0, seq, &ob, false);
    if let (Some(t), Some(h)) = (lse, &lb) {
        copy_rows(b, t, r0, seq, h, false);
    }
    Ok(())
}

pub fn silu_mul<R: Runtime>(
    b: &CubeBackend<R>,
    gate: &CubeTensor,
    up: &CubeTensor,
) -> Result<CubeTensor> {
    check::same("SiLU-gate product: up vs gate", up.shape(), gate.shape())?;
    same_slabs("SiLU-gate product: up vs gate", &up.slabs, &gate.slabs)?;
    let out = b.alloc_tensor(gate.rows, gate.cols)?;
    same_slabs("SiLU-gate product: output vs gate", &out.slabs, &gate.slabs)?;
    let v = vector_width(gate.cols);
    for (s, n, cubes) in b.vector_slabs(gate, v) {
        // SAFETY: one thread per vector of three slabs of equal length.
        unsafe {
            silu_mul_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                v,
                arg(&gate.handles[s], n),
                arg(&up.handles[s], n),
                arg(&out.handles[s], n),
            );
        }
    }
    Ok(out)
}

pub fn residual_add<R: Runtime>(b: &CubeBackend<R>, x: &CubeTensor, y: &CubeTensor) -> Result<()> {
    check::same("residual add", x.shape(), y.shape())?;
    same_slabs("residual add", &x.slabs, &y.slabs)?;
    let v = vector_width(x.cols);
    for (s, n, cubes) in b.vector_slabs(x, v) {
        // SAFETY: one thread per vector of two slabs of equal length.
        unsafe {
            add_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                v,
                arg(&x.handles[s], n),
                arg(&y.handles[s], n),
            );
        }
    }
    Ok(())
}

pub fn embed<R: Runtime>(
    b: &CubeBackend<R>,
    table: &CubeTensor,
    ids: &[u32],
) -> Result<CubeTensor> {
    check::ids(ids, table.rows)?;
    let d = table.cols;
    let out = b.alloc_tensor(ids.len(), d)?;
    if ids.is_empty() || d == 0 {
        return Ok(out);
    }
    let dev = b.scratch_from(ids)?;
    for os in 0..out.handles.len() {
        let (o0, on) = out.slabs.range(os);
        if on == 0 {
            continue;
        }
        for ts in 0..table.handles.len() {
            let (t0, tn) = table.slabs.range(ts);
            // SAFETY: one thread per element of the output slab; its id (validated below the
            // vocabulary) is read only where it lies in this table slab.
            unsafe {
                embed_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.grid(on * d, BLOCK),
                    CubeDim::new_1d(BLOCK),
                    arg(&table.handles[ts], table.slab_len(ts)),
                    arg(&dev, ids.len()),
                    arg(&out.handles[os], out.slab_len(os)),
                    (on * d) as u32,
                    d as u32,
                    o0 as u32,
                    t0 as u32,
                    tn as u32,
                );
            }
        }
    }
    Ok(out)
}

pub fn lm_head_chunk<R: Runtime>(
    b: &CubeBackend<R>,
    state: &CubeTensor,
    h: &CubeTensor,
    w_chunk: &CubeTensor,
    offset: usize,
    targets: &[u32],
) -> Result<()> {
    check::lm_head(
        state.shape(),
        h.shape(),
        w_chunk.shape(),
        offset,
        targets.len(),
    )?;
    let (n, v) = (h.rows, w_chunk.rows);
    if n == 0 {
        return Ok(());
    }
    let logits = b.alloc_tensor(n, v)?;
    linear_into(b, h, w_chunk, &logits);
    let dev = b.scratch_from(targets)?;
    for (t, len, ls, ll, ss, sl) in aligned_runs(&logits.slabs, &state.slabs, n) {
        // SAFETY: one cube per row of the run; the logits row (v values) and the state row (3)
        // lie in their slabs, the target index below n.
        unsafe {
            lm_fold_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(len, 1),
                CubeDim::new_1d(CUBE),
                arg(&logits.handles[ls], logits.slab_len(ls)),
                arg(&state.handles[ss], state.slab_len(ss)),
                arg(&dev, n),
                len as u32,
                v as u32,
                ll as u32,
                sl as u32,
                t as u32,
                offset as u32,
                (offset == 0) as u32,
                f32::NEG_INFINITY,
                b.plane,
            );
        }
    }
    Ok(())
}

/// §15: the LM head's dlogits in place of a run of `rows` rows of a chunk's logits (row i at
/// local row l_row0 + i, global row t0 + i; v entries each, vocabulary offset `offset`):
/// scale·(exp(l − lse) − [offset + j = target]), zero for rows without a target.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn lm_loss_grad_kernel(
    logits: &mut Array<f32>,
    lse: &Array<f32>,
    targets: &Array<u32>,
    rows: u32,
    v: u32,
    l_row0: u32,
    s_row0: u32,
    t0: u32,
    offset: u32,
    scale: f32,
) {
    let idx = ABSOLUTE_POS as u32;
    if idx < rows * v {
        let i = idx / v;
        let j = idx % v;
        let target = targets[(t0 + i) as usize];
        let at = ((l_row0 + i) * v + j) as usize;
        if target == u32::MAX {
            logits[at] = 0.0;
        } else {
            let mut hit = 0.0f32;
            if offset + j == target {
                hit = 1.0;
            }
            logits[at] = scale * (f32::exp(logits[at] - lse[(s_row0 + i) as usize]) - hit);
        }
    }
}

/// The LM head's dlogits in place of a chunk's logits [N, v] (see
/// `compose::Steps::loss_gradient`): one thread per logit, over runs of rows that lie in one
/// slab of the logits and of lse.
pub fn loss_gradient<R: Runtime>(
    b: &CubeBackend<R>,
    logits: &CubeTensor,
    lse: &CubeTensor,
    targets: &[u32],
    offset: usize,
    scale: f64,
) -> Result<()> {
    let (n, v) = logits.shape();
    if n == 0 || v == 0 {
        return Ok(());
    }
    let dev = b.scratch_from(targets)?;
    for (t, len, ls, ll, ss, sl) in aligned_runs(&logits.slabs, &lse.slabs, n) {
        // SAFETY: one thread per logit of the run's rows, which lie in slab ls of the logits
        // and slab ss of lse; the targets' index is below n.
        unsafe {
            lm_loss_grad_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(len * v, BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(&logits.handles[ls], logits.slab_len(ls)),
                arg(&lse.handles[ss], lse.slab_len(ss)),
                arg(&dev, n),
                len as u32,
                v as u32,
                ll as u32,
                sl as u32,
                t as u32,
                offset as u32,
                scale as f32,
            );
        }
    }
    Ok(())
}
