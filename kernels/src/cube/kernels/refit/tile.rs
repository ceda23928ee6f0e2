//! The re-fit GEMM: the tiling of [`super::super::gemm`] (64 or 128 square-or-oblong output
//! tiles, 16-deep K steps staged in shared memory as quads of 4 rows or columns, 256 threads
//! each with a 4x4 to 8x8 register block fed by one vector load per 16 or 32 FMAs) with the A
//! operand formed in its loads and the epilogues §12 needs. A is one of
//!
//! - `A_ROWS` / `A_TRANS`: a strided view, row-major or transposed;
//! - `A_DIFF`: the difference of two views with the same layout (W − Ŵ, never stored);
//! - `A_LORA_MASK` / `A_LORA_SCALE`: D = P ⊙ (B·A) for the LoRA factors B (rows x r) and
//!   A (r x cols), P the kept flags of the mask or W_p; each loaded element is its rank-r dot
//!   product, skipped where the mask prunes it. D is never stored.
//!
//! and the epilogue (comptime) one of
//!
//! - `E_LORA`: with X = acc (a share of D·H over this launch's K range), EH = ΔH + s·X
//!   (ΔH only in the first launch over K), E = Δ + s·D: Σ E ⊙ EH per tile into the partials
//!   and Ḡ = s·norm·P ⊙ EH stored or added into C. Both are linear in X past the constant
//!   term, so launches over the slabs of H add up to the whole;
//! - `E_ROW_DOT`: per row and tile, Σ_j acc·e1 and Σ_j acc·e2 into the partials (the
//!   numerators and denominators of the row scales);
//! - `E_COL_DOT`: per column and tile, Σ_i acc·e1 into the partials (the norm system's
//!   right-hand side);
//! - `E_HADAMARD`: C = alpha·acc ⊙ e1 (+ C), with the lower-triangle (SYRK) restriction for
//!   Σ ŴᵀŴ ⊙ H.
//!
//! The epilogue operands e1, e2 (and P) are read at C's offsets: they share C's layout.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::super::storage::arg;
use super::super::super::CubeBackend;
use super::super::gemm::{multiply_staged, stage, tile_shape, TRI_NONE};
use super::super::reduce::cube_sum;

const BK: u32 = 16;

pub const A_ROWS: u32 = 0;
pub const A_TRANS: u32 = 1;
pub const A_DIFF: u32 = 2;
pub const A_LORA_MASK: u32 = 3;
pub const A_LORA_SCALE: u32 = 4;

pub const E_LORA: u32 = 0;
pub const E_ROW_DOT: u32 = 1;
pub const E_COL_DOT: u32 = 2;
pub const E_HADAMARD: u32 = 3;

/// Whether the low bit of `word >> bit` is set (the mask's pruned flag).
#[cube]
fn pruned(word: u32, bit: u32) -> bool {
    ((word >> bit) & 1u32) == 1u32
}

/// Row `i` of the LoRA factor B (at `fb_off`, `rank` wide) dotted with column `j` of A.
#[cube]
fn lora_dot(fb: &Array<f32>, fa: &Array<f32>, bo: u32, j: u32, rank: u32, fa_ld: u32) -> f32 {
    let mut d = 0.0f32;
    for rr in 0..rank {
        d += fb[(bo + rr) as usize] * fa[(rr * fa_ld + j) as usize];
    }
    d
}

/// Element (gi, gk) of the A operand as `amode` forms it.
#[cube]
#[allow(clippy::too_many_arguments)]
fn a_value(
    a: &Array<f32>,
    a2: &Array<f32>,
    mask: &Array<u32>,
    fb: &Array<f32>,
    fa: &Array<f32>,
    gi: u32,
    gk: u32,
    a_off: u32,
    a_ld: u32,
    k0: u32,
    wpr: u32,
    fb_off: u32,
    rank: u32,
    fa_ld: u32,
    #[comptime] amode: u32,
) -> f32 {
    let mut v = 0.0f32;
    if comptime![amode == A_ROWS] {
        v = a[(a_off + gi * a_ld + gk) as usize];
    }
    if comptime![amode == A_TRANS] {
        v = a[(a_off + gk * a_ld + gi) as usize];
    }
    if comptime![amode == A_DIFF] {
        let q = (a_off + gi * a_ld + gk) as usize;
        v = a[q] - a2[q];
    }
    if comptime![amode == A_LORA_MASK] {
        let kc = k0 + gk;
        if !pruned(mask[(gi * wpr + kc / 32) as usize], kc % 32) {
            v = lora_dot(fb, fa, fb_off + gi * rank, kc, rank, fa_ld);
        }
    }
    if comptime![amode == A_LORA_SCALE] {
        let p = a[(a_off + gi * a_ld + gk) as usize];
        if p != 0.0 {
            v = p * lora_dot(fb, fa, fb_off + gi * rank, k0 + gk, rank, fa_ld);
        }
    }
    v
}

/// A's K step staged as quads of 4 rows per depth step (as the GEMM's `stage`, with the
/// element formed per `amode`): neighbouring units take neighbouring depth steps of a quad
/// (row-major forms) or neighbouring quads of a step (`A_TRANS`), so loads are coalesced.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_a<N: Size>(
    a: &Array<f32>,
    a2: &Array<f32>,
    mask: &Array<u32>,
    fb: &Array<f32>,
    fa: &Array<f32>,
    st: &mut SharedMemory<Vector<f32, N>>,
    i0: u32,
    m: u32,
    kb: u32,
    k: u32,
    a_off: u32,
    a_ld: u32,
    k0: u32,
    wpr: u32,
    fb_off: u32,
    rank: u32,
    fa_ld: u32,
    #[comptime] quads: u32,
    #[comptime] pitch: u32,
    #[comptime] amode: u32,
) {
    let t = UNIT_POS_Y * 16 + UNIT_POS_X;
    #[unroll]
    for l in 0..comptime![quads * BK / 256] {
        let idx = t + l * 256;
        let mut q = idx / BK;
        let mut kk = idx % BK;
        if comptime![amode == A_TRANS] {
            q = idx % quads;
            kk = idx / quads;
        }
        let gk = kb + kk;
        let mut v = Vector::<f32, N>::empty();
        #[unroll]
        for e in 0..4u32 {
            let gi = i0 + 4 * q + e;
            let mut val = 0.0f32;
            if gi < m && gk < k {
                val = a_value(
                    a, a2, mask, fb, fa, gi, gk, a_off, a_ld, k0, wpr, fb_off, rank, fa_ld, amode,
                );
            }
            v[e as usize] = val;
        }
        st[(kk * pitch + q) as usize] = v;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn refit_tile_kernel<N: Size>(
    a: &Array<f32>,
    a2: &Array<f32>,
    mask: &Array<u32>,
    fb: &Array<f32>,
    fa: &Array<f32>,
    bm: &Array<f32>,
    e1: &Array<f32>,
    e2: &Array<f32>,
    c: &mut Array<f32>,
    part: &mut Array<f32>,
    m: u32,
    ncols: u32,
    k: u32,
    a_off: u32,
    a_ld: u32,
    k0: u32,
    wpr: u32,
    fb_off: u32,
    rank: u32,
    fa_ld: u32,
    b_off: u32,
    b_ld: u32,
    c_off: u32,
    c_ld: u32,
    alpha: f32,
    s: f32,
    gscale: f32,
    accum: u32,
    diag_shift: i32,
    part_base: u32,
    part_ld: u32,
    #[comptime] amode: u32,
    #[comptime] epi: u32,
    #[comptime] lower: bool,
    #[comptime] plane: bool,
    #[comptime] tm: u32,
    #[comptime] tn: u32,
) {
    let rm = comptime![tm / 16];
    let rn = comptime![tn / 16];
    let tx = UNIT_POS_X;
    let ty = UNIT_POS_Y;
    let t = ty * 16 + tx;
    let i0 = CUBE_POS_Y * tm;
    let j0 = CUBE_POS_X * tn;

    let mut active = true;
    if comptime![lower] {
        if (i0 + tm - 1) as i32 + diag_shift < j0 as i32 {
            active = false;
        }
    }
    let mut kb = 0u32;
    if !active {
        kb = k;
    }

    // Staged as the GEMM's: quads of 4 rows of A (columns of B) per depth step, each step
    // padded by one quad, B's from `sb`, in one shared array at fixed offsets; a unit's block
    // is rows 4·ty + 64·i by columns 4·tx + 64·j.
    let qa = comptime![tm / 4];
    let qb = comptime![tn / 4];
    let pa = comptime![qa + 1];
    let pb = comptime![qb + 1];
    let sb = comptime![BK * pa];
    let mut st = SharedMemory::<Vector<f32, N>>::new(comptime![(BK * (pa + pb)) as usize]);
    let mut acc = Array::<f32>::new(comptime![(rm * rn) as usize]);
    #[unroll]
    for q in 0..rm * rn {
        acc[q as usize] = 0.0;
    }

    while kb < k {
        stage_a::<N>(
            a, a2, mask, fb, fa, &mut st, i0, m, kb, k, a_off, a_ld, k0, wpr, fb_off, rank, fa_ld,
            qa, pa, amode,
        );
        stage::<N>(
            bm, &mut st, sb, b_off, b_ld, j0, ncols, kb, k, qb, pb, false, 0i32, TRI_NONE,
        );
        sync_cube();
        multiply_staged::<N>(&st, &mut acc, pa, pb, sb, rm, rn);
        sync_cube();
        kb += BK;
    }

    let mut loss = 0.0f32;
    let mut rnum = Array::<f32>::new(comptime![rm as usize]);
    let mut rden = Array::<f32>::new(comptime![rm as usize]);
    let mut ccol = Array::<f32>::new(comptime![rn as usize]);
    #[unroll]
    for q in 0..rm {
        rnum[q as usize] = 0.0;
        rden[q as usize] = 0.0;
    }
    #[unroll]
    for q in 0..rn {
        ccol[q as usize] = 0.0;
    }
    if active {
        #[unroll]
        for ii in 0..rm {
            #[unroll]
            for jj in 0..rn {
                let i = i0 + 64 * (ii / 4) + 4 * ty + ii % 4;
                let j = j0 + 64 * (jj / 4) + 4 * tx + jj % 4;
                let mut valid = i < m && j < ncols;
                if comptime![lower] {
                    valid = valid && i as i32 + diag_shift >= j as i32;
                }
                if valid {
                    let ci = (c_off + i * c_ld + j) as usize;
                    let v = acc[(ii * rn + jj) as usize];
                    if comptime![epi == E_LORA] {
                        // P(i, j) and D(i, j) = P·(B·A)(i, j).
                        let mut p = 1.0f32;
                        if comptime![amode == A_LORA_MASK] {
                            if pruned(mask[(i * wpr + j / 32) as usize], j % 32) {
                                p = 0.0;
                            }
                        } else {
                            p = a[ci];
                        }
                        let mut d = 0.0f32;
                        if p != 0.0 {
                            d = p * lora_dot(fb, fa, fb_off + i * rank, j, rank, fa_ld);
                        }
                        let mut eh = s * v;
                        if accum == 0 {
                            eh += e2[ci];
                        }
                        loss += (e1[ci] + s * d) * eh;
                        let g = gscale * p * eh;
                        if accum == 0 {
                            c[ci] = g;
                        } else {
                            c[ci] += g;
                        }
                    }
                    if comptime![epi == E_ROW_DOT] {
                        rnum[ii as usize] += v * e1[ci];
                        rden[ii as usize] += v * e2[ci];
                    }
                    if comptime![epi == E_COL_DOT] {
                        ccol[jj as usize] += v * e1[ci];
                    }
                    if comptime![epi == E_HADAMARD] {
                        let mut r = alpha * v * e1[ci];
                        if accum != 0 {
                            r += c[ci];
                        }
                        c[ci] = r;
                    }
                }
            }
        }
    }
    if comptime![epi == E_LORA] {
        let total = cube_sum(loss, plane);
        if t == 0 {
            part[(part_base + CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize] = total;
        }
    }
    if comptime![epi == E_ROW_DOT] {
        // Across the 16 units that share a ty (the same rows): numerators, then denominators,
        // interleaved per row in the partials.
        let base = part_base + CUBE_POS_X * part_ld;
        quad_sums::<N>(
            &mut st,
            &rnum,
            part,
            ty,
            tx,
            base,
            2u32,
            i0,
            m,
            comptime![rm / 4],
        );
        sync_cube();
        quad_sums::<N>(
            &mut st,
            &rden,
            part,
            ty,
            tx,
            base + 1,
            2u32,
            i0,
            m,
            comptime![rm / 4],
        );
    }
    if comptime![epi == E_COL_DOT] {
        // Across the 16 units that share a tx (the same columns).
        let base = part_base + CUBE_POS_Y * part_ld;
        quad_sums::<N>(
            &mut st,
            &ccol,
            part,
            tx,
            ty,
            base,
            1u32,
            j0,
            ncols,
            comptime![rn / 4],
        );
    }
}

/// Sums over the 16 units that hold the same rows (or columns) of the tile: a unit's `vals`
/// are its quads `own + 16·i` of 4 entries (i < `quads`), `other` its place among the 16.
/// They go through `st` as vectors; unit t < 16·quads adds quad t's 16 and writes entry
/// e = origin + 4t + f (below `limit`) to part[base + stride·e].
#[cube]
#[allow(clippy::too_many_arguments)]
fn quad_sums<N: Size>(
    st: &mut SharedMemory<Vector<f32, N>>,
    vals: &Array<f32>,
    part: &mut Array<f32>,
    own: u32,
    other: u32,
    base: u32,
    #[comptime] stride: u32,
    origin: u32,
    limit: u32,
    #[comptime] quads: u32,
) {
    let t = UNIT_POS_Y * 16 + UNIT_POS_X;
    #[unroll]
    for i in 0..quads {
        let mut v = Vector::<f32, N>::empty();
        #[unroll]
        for f in 0..4u32 {
            v[f as usize] = vals[(i * 4 + f) as usize];
        }
        st[((own + 16 * i) * 16 + other) as usize] = v;
    }
    sync_cube();
    if t < comptime![quads * 16] {
        let mut v = st[(t * 16) as usize];
        #[unroll]
        for x in 1..16u32 {
            let w = st[(t * 16 + x) as usize];
            #[unroll]
            for f in 0..4u32 {
                v[f as usize] += w[f as usize];
            }
        }
        #[unroll]
        for f in 0..4u32 {
            let e = origin + 4 * t + f;
            if e < limit {
                part[(base + stride * e) as usize] = v[f as usize];
            }
        }
    }
}

/// A binding and its length in f32 (or u32).
pub type Buf<'a> = (&'a Handle, usize);

/// The LoRA operands of `A_LORA_*`: the mask (words per row `wpr`, rows from the launch's
/// first), B contiguous with this launch's first row at `fb_off`, A with leading dimension
/// `fa_ld`, and `k0`, the global column of the launch's first K index.
pub struct Lora<'a> {
    pub mask: Buf<'a>,
    pub wpr: usize,
    pub fb: Buf<'a>,
    pub fb_off: usize,
    pub rank: usize,
    pub fa: Buf<'a>,
    pub fa_ld: usize,
    pub k0: usize,
}

/// One launch: C[m x n] from A[m x k] (formed per `amode`) times B[k x n] (row-major at
/// `b_off`, `b_ld`) through epilogue `epi`.
pub struct Tile<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub amode: u32,
    /// A (or its minuend, or W_p for the scale form) at `a_off`, `a_ld`.
    pub a: Buf<'a>,
    pub a_off: usize,
    pub a_ld: usize,
    /// The subtrahend of `A_DIFF`, laid out as `a`.
    pub a2: Option<Buf<'a>>,
    pub lora: Option<Lora<'a>>,
    pub b: Buf<'a>,
    pub b_off: usize,
    pub b_ld: usize,
    /// C at `c_off`, `c_ld`; e1 and e2 share its layout.
    pub c: Buf<'a>,
    pub c_off: usize,
    pub c_ld: usize,
    pub e1: Option<Buf<'a>>,
    pub e2: Option<Buf<'a>>,
    /// The partials buffer, this launch's base in it and the stride between tiles.
    pub part: Option<(Buf<'a>, usize, usize)>,
    pub alpha: f32,
    pub s: f32,
    pub gscale: f32,
    /// Add into C (and, for `E_LORA`, leave out the constant ΔH term).
    pub accum: bool,
    /// Only C(i, j) with i + shift >= j (SYRK).
    pub lower: Option<i64>,
    pub epi: u32,
}

/// Output tiles of an m x n launch on `b`.
pub fn tiles<R: Runtime>(b: &CubeBackend<R>, m: usize, n: usize) -> (usize, usize) {
    let (tm, tn) = tile_shape(m, n, 1, b.fill_cubes);
    (m.div_ceil(tm), n.div_ceil(tn))
}

pub fn launch<R: Runtime>(b: &CubeBackend<R>, g: &Tile<'_>) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    let (tm, tn) = tile_shape(g.m, g.n, 1, b.fill_cubes);
    let (ty, tx) = tiles(b, g.m, g.n);
    let lora = g.lora.as_ref();
    let mask = lora.map_or(g.a, |l| l.mask);
    let fb = lora.map_or(g.a, |l| l.fb);
    let fa = lora.map_or(g.a, |l| l.fa);
    let (part, part_base, part_ld) = g.part.unwrap_or((g.c, 0, 0));
    let buf = |x: Buf<'_>| arg::<R>(x.0, x.1);
    // SAFETY: loads are guarded by m, n and k against the views, which the callers build
    // inside their bindings (the LoRA factors and the mask cover the launch's rows and the
    // K range from k0); partial indices stay below the tiles the caller reserved.
    unsafe {
        refit_tile_kernel::launch_unchecked::<R>(
            &b.client,
            CubeCount::Static(tx as u32, ty as u32, 1),
            CubeDim::new_2d(16, 16),
            // The vector size of the staged tiles' quads.
            4,
            buf(g.a),
            buf(g.a2.unwrap_or(g.a)),
            buf(mask),
            buf(fb),
            buf(fa),
            buf(g.b),
            buf(g.e1.unwrap_or(g.c)),
            buf(g.e2.unwrap_or(g.c)),
            buf(g.c),
            buf(part),
            g.m as u32,
            g.n as u32,
            g.k as u32,
            g.a_off as u32,
            g.a_ld as u32,
            lora.map_or(0, |l| l.k0) as u32,
            lora.map_or(0, |l| l.wpr) as u32,
            lora.map_or(0, |l| l.fb_off) as u32,
            lora.map_or(0, |l| l.rank) as u32,
            lora.map_or(0, |l| l.fa_ld) as u32,
            g.b_off as u32,
            g.b_ld as u32,
            g.c_off as u32,
            g.c_ld as u32,
            g.alpha,
            g.s,
            g.gscale,
            g.accum as u32,
            g.lower.unwrap_or(0) as i32,
            part_base as u32,
            part_ld as u32,
            g.amode,
            g.epi,
            g.lower.is_some(),
            b.plane,
            tm as u32,
            tn as u32,
        );
    }
}
