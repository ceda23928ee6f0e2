//! The backward of causal GQA attention (§15), FlashAttention-2's, as attention_backward.wgsl
//! on the wgpu backend:
//!
//! - [`delta_kernel`]: D = rowsum(dO ⊙ O) per (row, head), a unit each;
//! - [`dkdv_kernel`]: a cube per (window and key block, KV head) owns those rows of dK and dV,
//!   summing over the group's query heads and the query blocks at or after its keys;
//! - [`dq_kernel`]: a cube per (window and query block, query head) owns those rows of dQ,
//!   summing over the key blocks up to the diagonal.
//!
//! Both tile kernels recompute P = exp(S − L) and dS = P ⊙ (dO·Vᵀ − D) tile by tile in
//! [`p_ds`] (no seq x seq matrix), and each gradient has one owner, so no atomics: every sum
//! runs in a fixed order. Operands split across slabs run a window at a time through
//! contiguous copies.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, CubeTensor};
use super::super::CubeBackend;
use super::copy::{gather_rows, scatter_rows};
use super::fill::BLOCK;
use super::forward::MAX_HEAD_DIM;
use super::gemm::sum_parts;
use crate::error::{KernelError, Result};
use crate::ops::check;
use crate::plan;

/// Depth of one step of the S and dO·Vᵀ tiles.
const DC: u32 = 16;
/// Floats of one shared array of staged full rows (dO and Q, or K).
const RC: u32 = 1024;

// Each tile kernel's shared memory is one array at these offsets (in floats) for blocks of
// `blk` query rows and keys (32 or 16, as `plan::attention_backward_block` picks; equal, so a
// key block's first query block starts with it): CubeCL 0.10 places separate shared arrays in
// an order that varies from run to run, and ptxas then allocated dq_kernel anywhere from 40
// to 48 registers, sometimes with a spill. Q, dO, K and V depth steps (rows of DC + 1) start
// at 0.
/// P then dS, rows of blk + 1.
fn pd_at(blk: u32) -> u32 {
    4 * blk * (DC + 1)
}
/// The rows' L then D.
fn rl_at(blk: u32) -> u32 {
    pd_at(blk) + 2 * blk * (blk + 1)
}
/// Staged full rows: dO and Q (dK/dV), or K (dQ).
fn rs_at(blk: u32) -> u32 {
    rl_at(blk) + 2 * blk
}

/// Full rows per staging step for heads of `e` and blocks of `blk`: a power of two (so it
/// divides the block) whose rows of ⌈e/16⌉·16 floats fit [`RC`].
fn stage_rows(e: usize, blk: u32) -> u32 {
    let ld = 16 * e.div_ceil(16) as u32;
    let mut r = blk;
    while r * ld > RC {
        r /= 2;
    }
    r
}

#[cube(launch_unchecked)]
fn delta_kernel(o: &Array<f32>, d_o: &Array<f32>, delta: &mut Array<f32>, e: u32) {
    if ABSOLUTE_POS < delta.len() {
        // Row i / heads, head i % heads: the head's values start at i·e in O and dO.
        let at = ABSOLUTE_POS as u32 * e;
        let mut acc = 0.0f32;
        for c in 0..e {
            acc += d_o[(at + c) as usize] * o[(at + c) as usize];
        }
        delta[ABSOLUTE_POS] = acc;
    }
}

/// Leaves P and dS of query rows [q0, q0 + blk) (live below q_end) of head h against keys
/// [k0, k0 + nk) of the KV head at kv_col at [`pd_at`] of `sm` (P, then dS, rows of blk + 1),
/// zero where masked. Offset 0 stages Q, dO, K and V depth steps (rows padded by one against
/// bank conflicts), [`rl_at`] holds the rows' L then D. Each unit holds an rt x rt tile of S
/// and dO·Vᵀ (rt = blk / 16: 2 x 2 at 32, one value at 16).
#[cube]
#[allow(clippy::too_many_arguments)]
fn p_ds(
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    d_o: &Array<f32>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    sm: &mut SharedMemory<f32>,
    w0: u32,
    q0: u32,
    q_end: u32,
    k0: u32,
    nk: u32,
    h: u32,
    kv_col: u32,
    heads: u32,
    kc: u32,
    scale: f32,
    #[comptime] e: u32,
    #[comptime] blk: u32,
) {
    let rt = comptime![blk / 16];
    let pd = comptime![pd_at(blk)];
    let rl = comptime![rl_at(blk)];
    let qc = heads * e;
    let t = UNIT_POS;
    let ty = t / 16;
    let tx = t % 16;
    let tile = comptime![blk * (DC + 1)];
    sync_cube();
    if t < blk {
        let mut l = 0.0f32;
        let mut d = 0.0f32;
        if q0 + t < q_end {
            let at = ((w0 + q0 + t) * heads + h) as usize;
            l = lse[at];
            d = delta[at];
        }
        sm[(rl + t) as usize] = l;
        sm[(rl + blk + t) as usize] = d;
    }
    let mut s = Array::<f32>::new(comptime![(rt * rt) as usize]);
    let mut dp = Array::<f32>::new(comptime![(rt * rt) as usize]);
    #[unroll]
    for i in 0..comptime![rt * rt] {
        s[i as usize] = 0.0;
        dp[i as usize] = 0.0;
    }
    let mut d0 = 0u32;
    while d0 < e {
        sync_cube();
        #[unroll]
        for step in 0..comptime![blk * DC / 256] {
            let i = step * 256 + t;
            let r = i / DC;
            let d = d0 + i % DC;
            let at = r * (DC + 1) + i % DC;
            let mut a = 0.0f32;
            let mut g = 0.0f32;
            if q0 + r < q_end && d < e {
                let src = ((w0 + q0 + r) * qc + h * e + d) as usize;
                a = q[src];
                g = d_o[src];
            }
            sm[at as usize] = a;
            sm[(tile + at) as usize] = g;
            let mut b = 0.0f32;
            let mut c = 0.0f32;
            if r < nk && d < e {
                let src = ((w0 + k0 + r) * kc + kv_col + d) as usize;
                b = k[src];
                c = v[src];
            }
            sm[(2 * tile + at) as usize] = b;
            sm[(3 * tile + at) as usize] = c;
        }
        sync_cube();
        #[unroll]
        for d in 0..DC {
            #[unroll]
            for i in 0..rt {
                let a = sm[((ty * rt + i) * (DC + 1) + d) as usize];
                let g = sm[(tile + (ty * rt + i) * (DC + 1) + d) as usize];
                #[unroll]
                for j in 0..rt {
                    let c = (tx * rt + j) * (DC + 1) + d;
                    s[(i * rt + j) as usize] += a * sm[(2 * tile + c) as usize];
                    dp[(i * rt + j) as usize] += g * sm[(3 * tile + c) as usize];
                }
            }
        }
        d0 += DC;
    }
    let plane = comptime![blk * (blk + 1)];
    #[unroll]
    for i in 0..rt {
        #[unroll]
        for j in 0..rt {
            let r = ty * rt + i;
            let c = tx * rt + j;
            let mut p = 0.0f32;
            if c < nk && k0 + c <= q0 + r && q0 + r < q_end {
                p = f32::exp(s[(i * rt + j) as usize] * scale - sm[(rl + r) as usize]);
            }
            let at = r * (blk + 1) + c;
            sm[(pd + at) as usize] = p;
            sm[(pd + plane + at) as usize] =
                p * (dp[(i * rt + j) as usize] - sm[(rl + blk + r) as usize]);
        }
    }
    sync_cube();
}

/// dK and dV of keys [k0, k0 + blk) of KV head CUBE_POS_Y in one window (CUBE_POS_X: window
/// and key block), over part CUBE_POS_Z of the group's query heads (`per_part` of them, its
/// sums at z·`part_len` of dk and dv: one part and 0 where the group is not split): per
/// query head of the part in order, per query block from the key block's own to the
/// window's end, P and dS from [`p_ds`], then dV += Pᵀ·dO and dK += dSᵀ·Q over steps of `rr`
/// full rows of dO and Q staged in shared memory. Each unit accumulates keys ty·rt + i
/// (i < rt = blk / 16) at columns tx + 16·j in registers; dK is scaled by 1/√e once at the
/// end. Rows are counted from the launch's first window (`row0` in every binding).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dkdv_kernel(
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    d_o: &Array<f32>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    dk: &mut Array<f32>,
    dv: &mut Array<f32>,
    row0: u32,
    seq: u32,
    blocks: u32,
    heads: u32,
    group: u32,
    per_part: u32,
    part_len: u32,
    scale: f32,
    #[comptime] e: u32,
    #[comptime] rr: u32,
    #[comptime] blk: u32,
) {
    let rt = comptime![blk / 16];
    let pd = comptime![pd_at(blk)];
    let rs = comptime![rs_at(blk)];
    let oc = comptime![e.div_ceil(16)];
    let ld = comptime![16 * e.div_ceil(16)];
    let plane = comptime![blk * (blk + 1)];
    let qc = heads * e;
    let kc = heads / group * e;
    let g = CUBE_POS_Y;
    let w0 = row0 + (CUBE_POS_X / blocks) * seq;
    let k0 = (CUBE_POS_X % blocks) * blk;
    let mut nk = seq - k0;
    if nk > blk {
        nk = blk;
    }
    let kv_col = g * e;
    let t = UNIT_POS;
    let ty = t / 16;
    let tx = t % 16;
    let mut sm = SharedMemory::<f32>::new(comptime![(rs + 2 * RC) as usize]);
    let mut adk = Array::<f32>::new(comptime![(rt * e.div_ceil(16)) as usize]);
    let mut adv = Array::<f32>::new(comptime![(rt * e.div_ceil(16)) as usize]);
    #[unroll]
    for i in 0..comptime![rt * e.div_ceil(16)] {
        adk[i as usize] = 0.0;
        adv[i as usize] = 0.0;
    }
    // Part CUBE_POS_Z's query heads of the group, its sums into partial z of dK and dV.
    let h_first = CUBE_POS_Z * per_part;
    let mut h_end = h_first + per_part;
    if h_end > group {
        h_end = group;
    }
    for hh in h_first..h_end {
        let h = g * group + hh;
        let mut q0 = k0;
        while q0 < seq {
            p_ds(
                q, k, v, d_o, lse, delta, &mut sm, w0, q0, seq, k0, nk, h, kv_col, heads, kc,
                scale, e, blk,
            );
            let mut nq = seq - q0;
            if nq > blk {
                nq = blk;
            }
            let mut r0 = 0u32;
            while r0 < nq {
                sync_cube();
                let mut i = t;
                while i < rr * ld {
                    let r = i / ld;
                    let c = i % ld;
                    let mut a = 0.0f32;
                    let mut b = 0.0f32;
                    if r0 + r < nq && c < e {
                        let at = ((w0 + q0 + r0 + r) * qc + h * e + c) as usize;
                        a = d_o[at];
                        b = q[at];
                    }
                    sm[(rs + i) as usize] = a;
                    sm[(rs + RC + i) as usize] = b;
                    i += 256;
                }
                sync_cube();
                for x in 0..rr {
                    #[unroll]
                    for i in 0..rt {
                        let at = (r0 + x) * (blk + 1) + ty * rt + i;
                        let p = sm[(pd + at) as usize];
                        let ds = sm[(pd + plane + at) as usize];
                        #[unroll]
                        for j in 0..oc {
                            let c = x * ld + tx + 16 * j;
                            adv[(i * oc + j) as usize] += p * sm[(rs + c) as usize];
                            adk[(i * oc + j) as usize] += ds * sm[(rs + RC + c) as usize];
                        }
                    }
                }
                r0 += rr;
            }
            q0 += blk;
        }
    }
    #[unroll]
    for i in 0..rt {
        let r = ty * rt + i;
        if r < nk {
            let at = CUBE_POS_Z * part_len + (w0 + k0 + r) * kc + kv_col;
            #[unroll]
            for j in 0..oc {
                let col = tx + 16 * j;
                if col < e {
                    dk[(at + col) as usize] = adk[(i * oc + j) as usize] * scale;
                    dv[(at + col) as usize] = adv[(i * oc + j) as usize];
                }
            }
        }
    }
}

/// dQ of queries [q0, q0 + blk) of head CUBE_POS_Y in one window (CUBE_POS_X: window and
/// query block): per key block up to the block's last query, P and dS from [`p_ds`], then
/// dQ += dS·K over steps of `rr` full rows of K staged in shared memory; scaled by 1/√e once
/// at the end.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn dq_kernel(
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    d_o: &Array<f32>,
    lse: &Array<f32>,
    delta: &Array<f32>,
    dq: &mut Array<f32>,
    row0: u32,
    seq: u32,
    blocks: u32,
    heads: u32,
    group: u32,
    scale: f32,
    #[comptime] e: u32,
    #[comptime] rr: u32,
    #[comptime] blk: u32,
) {
    let rt = comptime![blk / 16];
    let pd = comptime![pd_at(blk)];
    let rs = comptime![rs_at(blk)];
    let oc = comptime![e.div_ceil(16)];
    let ld = comptime![16 * e.div_ceil(16)];
    let plane = comptime![blk * (blk + 1)];
    let qc = heads * e;
    let kc = heads / group * e;
    let h = CUBE_POS_Y;
    let w0 = row0 + (CUBE_POS_X / blocks) * seq;
    let q0 = (CUBE_POS_X % blocks) * blk;
    let mut q_end = q0 + blk;
    if q_end > seq {
        q_end = seq;
    }
    let kv_col = (h / group) * e;
    let t = UNIT_POS;
    let ty = t / 16;
    let tx = t % 16;
    let mut sm = SharedMemory::<f32>::new(comptime![(rs + RC) as usize]);
    let mut acc = Array::<f32>::new(comptime![(rt * e.div_ceil(16)) as usize]);
    #[unroll]
    for i in 0..comptime![rt * e.div_ceil(16)] {
        acc[i as usize] = 0.0;
    }
    let mut k0 = 0u32;
    while k0 < q_end {
        let mut nk = q_end - k0;
        if nk > blk {
            nk = blk;
        }
        p_ds(
            q, k, v, d_o, lse, delta, &mut sm, w0, q0, q_end, k0, nk, h, kv_col, heads, kc, scale,
            e, blk,
        );
        let mut c0 = 0u32;
        while c0 < nk {
            sync_cube();
            let mut i = t;
            while i < rr * ld {
                let r = i / ld;
                let c = i % ld;
                let mut a = 0.0f32;
                if c0 + r < nk && c < e {
                    a = k[((w0 + k0 + c0 + r) * kc + kv_col + c) as usize];
                }
                sm[(rs + i) as usize] = a;
                i += 256;
            }
            sync_cube();
            for x in 0..rr {
                #[unroll]
                for i in 0..rt {
                    let ds = sm[(pd + plane + (ty * rt + i) * (blk + 1) + c0 + x) as usize];
                    #[unroll]
                    for j in 0..oc {
                        acc[(i * oc + j) as usize] += ds * sm[(rs + x * ld + tx + 16 * j) as usize];
                    }
                }
            }
            c0 += rr;
        }
        k0 += blk;
    }
    #[unroll]
    for i in 0..rt {
        let r = ty * rt + i;
        if q0 + r < q_end {
            let at = (w0 + q0 + r) * qc + h * e;
            #[unroll]
            for j in 0..oc {
                let col = tx + 16 * j;
                if col < e {
                    dq[(at + col) as usize] = acc[(i * oc + j) as usize] * scale;
                }
            }
        }
    }
}

/// The one handle of a tensor, with its length, where it lies in one slab.
fn whole(t: &CubeTensor) -> Option<(&Handle, usize)> {
    (t.slabs.count() == 1).then(|| (&t.handles[0], t.slab_len(0)))
}

/// (dQ, dK, dV) of causal GQA attention from the forward's q, k, v, output o and
/// log-sum-exp L [N, heads], and dO: D, then the dK/dV and dQ kernels ([`launch_tiles`]),
/// over the whole tensors where each lies in one binding, else a window of `seq` rows at a
/// time through contiguous copies (a window is independent of the others).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<R: Runtime>(
    b: &CubeBackend<R>,
    q: &CubeTensor,
    k: &CubeTensor,
    v: &CubeTensor,
    o: &CubeTensor,
    lse: &CubeTensor,
    d_o: &CubeTensor,
    heads: usize,
    kv_heads: usize,
    seq: usize,
) -> Result<(CubeTensor, CubeTensor, CubeTensor)> {
    let sh = |t: &CubeTensor| t.shape();
    let e = check::attention_backward(
        sh(q),
        sh(k),
        sh(v),
        sh(o),
        sh(lse),
        sh(d_o),
        heads,
        kv_heads,
        seq,
    )?;
    if e > MAX_HEAD_DIM {
        return Err(KernelError::Unsupported(format!(
            "attention backward: head_dim {e} exceeds the {MAX_HEAD_DIM} the CubeCL kernels \
             hold per row"
        )));
    }
    let max_y = b.max_cube_count.1;
    if heads > max_y as usize {
        return Err(KernelError::Unsupported(format!(
            "attention backward: {heads} heads exceed a launch's {max_y} cubes per dimension"
        )));
    }
    let n = q.rows;
    let (dq, dk, dv) = (
        b.alloc_tensor(n, q.cols)?,
        b.alloc_tensor(n, k.cols)?,
        b.alloc_tensor(n, k.cols)?,
    );
    if n == 0 {
        return Ok((dq, dk, dv));
    }
    let geo = Geometry {
        seq,
        heads,
        kv_heads,
        e,
    };
    let ins = [q, k, v, d_o, lse, o];
    let outs = [&dq, &dk, &dv];
    match (ins.map(whole), outs.map(whole)) {
        (
            [Some(q_), Some(k_), Some(v_), Some(g_), Some(l_), Some(o_)],
            [Some(a), Some(c), Some(d)],
        ) => run_whole(b, &geo, n, [q_, k_, v_, g_, l_], o_, [a, c, d])?,
        _ => by_windows(b, &geo, ins, outs)?,
    }
    Ok((dq, dk, dv))
}

/// The shapes a backward's launches need.
struct Geometry {
    seq: usize,
    heads: usize,
    kv_heads: usize,
    e: usize,
}

/// D and both tile kernels over `n` rows whose operands each lie in one handle.
fn run_whole<R: Runtime>(
    b: &CubeBackend<R>,
    geo: &Geometry,
    n: usize,
    [q_, k_, v_, g_, l_]: [(&Handle, usize); 5],
    o_: (&Handle, usize),
    outs: [(&Handle, usize); 3],
) -> Result<()> {
    let (heads, e) = (geo.heads, geo.e);
    let delta = b.scratch(n * heads)?;
    // SAFETY: one unit per (row, head) below delta's length, reading that row's head of O and
    // dO (both N x heads·e, so row·heads·e + head·e = unit·e).
    unsafe {
        delta_kernel::launch_unchecked::<R>(
            &b.client,
            b.grid(n * heads, BLOCK),
            CubeDim::new_1d(BLOCK),
            arg(o_.0, o_.1),
            arg(g_.0, g_.1),
            arg(&delta, n * heads),
            e as u32,
        );
    }
    launch_tiles(b, geo, [q_, k_, v_, g_, l_], (&delta, n * heads), outs)
}

/// A window of `seq` rows at a time: its rows of every operand gathered into contiguous
/// scratch (one window must fit one binding), the kernels run on them, and dQ, dK and dV
/// copied back into their slabs.
fn by_windows<R: Runtime>(
    b: &CubeBackend<R>,
    geo: &Geometry,
    ins: [&CubeTensor; 6],
    outs: [&CubeTensor; 3],
) -> Result<()> {
    let seq = geo.seq;
    let stage = |t: &CubeTensor| -> Result<(Handle, usize)> {
        let len = seq * t.cols;
        Ok((b.scratch(len)?, len))
    };
    let ins_w: Vec<(Handle, usize)> = ins.iter().map(|t| stage(t)).collect::<Result<_>>()?;
    let outs_w: Vec<(Handle, usize)> = outs.iter().map(|t| stage(t)).collect::<Result<_>>()?;
    for r0 in (0..ins[0].rows).step_by(seq) {
        for (t, (h, _)) in ins.iter().zip(&ins_w) {
            gather_rows(b, t, r0, r0 + seq, h);
        }
        let w = |i: usize| (&ins_w[i].0, ins_w[i].1);
        let o = |i: usize| (&outs_w[i].0, outs_w[i].1);
        run_whole(
            b,
            geo,
            seq,
            [w(0), w(1), w(2), w(3), w(4)],
            w(5),
            [o(0), o(1), o(2)],
        )?;
        for (t, (h, _)) in outs.iter().zip(&outs_w) {
            scatter_rows(b, h, t, r0, r0 + seq);
        }
    }
    Ok(())
}

/// The dK/dV and dQ kernels over groups of whole windows (the cube count's x limit), each
/// group's rows from `row0` in every binding: `ins` are Q, K, V, dO and L, `outs` dQ, dK, dV.
/// Where the dK/dV launch falls short of the fill, each KV head's group of query heads is
/// split over parts ([`plan::attention_group_parts`]) summing into partials of dK and dV,
/// which [`sum_parts`] adds into them in part order.
fn launch_tiles<R: Runtime>(
    b: &CubeBackend<R>,
    geo: &Geometry,
    [q_, k_, v_, g_, l_]: [(&Handle, usize); 5],
    delta: (&Handle, usize),
    [dq_, dk_, dv_]: [(&Handle, usize); 3],
) -> Result<()> {
    let Geometry {
        seq,
        heads,
        kv_heads,
        e,
    } = *geo;
    let n = delta.1 / heads;
    let (windows, group) = (n / seq, heads / kv_heads);
    let blk = plan::attention_backward_block(windows, seq, kv_heads, b.fill_or_default()) as u32;
    let blocks = seq.div_ceil(blk as usize);
    let per = plan::items_per_launch(blocks, b.max_cube_count.0);
    let (rr, scale) = (stage_rows(e, blk), (1.0 / (e as f64).sqrt()) as f32);
    let fill = b.fill_or_default();
    let (parts, per_part) = plan::attention_group_parts(windows * blocks * kv_heads, group, fill);
    let partials = if parts > 1 {
        Some((b.scratch(parts * dk_.1)?, b.scratch(parts * dv_.1)?))
    } else {
        None
    };
    // Where dK/dV run in parts, partial z of each at z·len.
    let (dk_out, dv_out, part_len) = match &partials {
        Some((pk, pv)) => ((pk, parts * dk_.1), (pv, parts * dv_.1), dk_.1),
        None => (dk_, dv_, 0),
    };
    let mut w = 0;
    while w < windows {
        let cnt = per.min(windows - w);
        let x = (cnt * blocks) as u32;
        // SAFETY: each cube reads rows of its own window (inside the launch's windows, all
        // in the bindings given whole) at columns below heads·e and kv_heads·e, and writes
        // the dK and dV rows of its keys and KV head (in its part's partial, each part_len
        // long), or the dQ rows of its queries and head.
        unsafe {
            dkdv_kernel::launch_unchecked::<R>(
                &b.client,
                CubeCount::Static(x, kv_heads as u32, parts as u32),
                CubeDim::new_1d(256),
                arg(q_.0, q_.1),
                arg(k_.0, k_.1),
                arg(v_.0, v_.1),
                arg(g_.0, g_.1),
                arg(l_.0, l_.1),
                arg(delta.0, delta.1),
                arg(dk_out.0, dk_out.1),
                arg(dv_out.0, dv_out.1),
                (w * seq) as u32,
                seq as u32,
                blocks as u32,
                heads as u32,
                group as u32,
                per_part as u32,
                part_len as u32,
                scale,
                e as u32,
                rr,
                blk,
            );
            dq_kernel::launch_unchecked::<R>(
                &b.client,
                CubeCount::Static(x, heads as u32, 1),
                CubeDim::new_1d(256),
                arg(q_.0, q_.1),
                arg(k_.0, k_.1),
                arg(v_.0, v_.1),
                arg(g_.0, g_.1),
                arg(l_.0, l_.1),
                arg(delta.0, delta.1),
                arg(dq_.0, dq_.1),
                (w * seq) as u32,
                seq as u32,
                blocks as u32,
                heads as u32,
                group as u32,
                scale,
                e as u32,
                rr,
                blk,
            );
        }
        w += cnt;
    }
    if let Some((pk, pv)) = &partials {
        let kc = kv_heads * e;
        sum_parts(
            b,
            (pk, parts),
            (dk_.0, dk_.1, 0, kc),
            (dk_.1 / kc, kc),
            None,
        );
        sum_parts(
            b,
            (pv, parts),
            (dv_.0, dv_.1, 0, kc),
            (dv_.1 / kc, kc),
            None,
        );
    }
    Ok(())
}
