//! The re-fit GEMM: the tiling of [`super::super::gemm`] (64 or 128 square-or-oblong output
//! tiles, 16-deep K steps in shared memory, 256 threads with a 4x4 to 8x8 register block) with
//! the A operand formed in its loads and the epilogues §12 needs. A is one of
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
use super::super::gemm::tile_shape;
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

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn refit_tile_kernel(
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
    n: u32,
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

    // Rows of the staged tiles padded by one value: the 16 units that store one row of A (or of
    // a transposed B) at consecutive k hit at most 2 per bank, not 16.
    let mut sa = SharedMemory::<f32>::new(comptime![(BK * (tm + 1)) as usize]);
    let mut sb = SharedMemory::<f32>::new(comptime![(BK * (tn + 1)) as usize]);
    let mut acc = Array::<f32>::new(comptime![(rm * rn) as usize]);
    #[unroll]
    for q in 0..rm * rn {
        acc[q as usize] = 0.0;
    }

    while kb < k {
        #[unroll]
        for l in 0..rm {
            let idx = t + l * 256;
            let mut ii = idx / BK;
            let mut kk = idx % BK;
            if comptime![amode == A_TRANS] {
                ii = idx % tm;
                kk = idx / tm;
            }
            let gi = i0 + ii;
            let gk = kb + kk;
            let mut v = 0.0f32;
            if gi < m && gk < k {
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
            }
            sa[(kk * (tm + 1) + ii) as usize] = v;
        }
        #[unroll]
        for l in 0..rn {
            let idx = t + l * 256;
            let jj = idx % tn;
            let kk = idx / tn;
            let gj = j0 + jj;
            let gk = kb + kk;
            let mut v = 0.0f32;
            if gj < n && gk < k {
                v = bm[(b_off + gk * b_ld + gj) as usize];
            }
            sb[(kk * (tn + 1) + jj) as usize] = v;
        }
        sync_cube();
        #[unroll]
        for kk in 0..BK {
            let mut ar = Array::<f32>::new(comptime![rm as usize]);
            let mut br = Array::<f32>::new(comptime![rn as usize]);
            #[unroll]
            for q in 0..rm {
                ar[q as usize] = sa[(kk * (tm + 1) + ty + 16 * q) as usize];
            }
            #[unroll]
            for q in 0..rn {
                br[q as usize] = sb[(kk * (tn + 1) + tx + 16 * q) as usize];
            }
            #[unroll]
            for ii in 0..rm {
                #[unroll]
                for jj in 0..rn {
                    acc[(ii * rn + jj) as usize] += ar[ii as usize] * br[jj as usize];
                }
            }
        }
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
                let i = i0 + ty + 16 * ii;
                let j = j0 + tx + 16 * jj;
                let mut valid = i < m && j < n;
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
        // Across the 16 threads of a row of the tile, through the A stage (16·tm words):
        // numerators, then denominators.
        #[unroll]
        for q in 0..rm {
            sa[((ty + 16 * q) * 16 + tx) as usize] = rnum[q as usize];
        }
        sync_cube();
        if t < tm {
            let mut v = 0.0f32;
            #[unroll]
            for x in 0..16u32 {
                v += sa[(t * 16 + x) as usize];
            }
            if i0 + t < m {
                part[(part_base + CUBE_POS_X * part_ld + 2 * (i0 + t)) as usize] = v;
            }
        }
        sync_cube();
        #[unroll]
        for q in 0..rm {
            sa[((ty + 16 * q) * 16 + tx) as usize] = rden[q as usize];
        }
        sync_cube();
        if t < tm {
            let mut v = 0.0f32;
            #[unroll]
            for x in 0..16u32 {
                v += sa[(t * 16 + x) as usize];
            }
            if i0 + t < m {
                part[(part_base + CUBE_POS_X * part_ld + 2 * (i0 + t) + 1) as usize] = v;
            }
        }
    }
    if comptime![epi == E_COL_DOT] {
        // Across the 16 threads of a column of the tile, through the B stage (16·tn words).
        #[unroll]
        for q in 0..rn {
            sb[(ty * tn + tx + 16 * q) as usize] = ccol[q as usize];
        }
        sync_cube();
        if t < tn {
            let mut v = 0.0f32;
            #[unroll]
            for y in 0..16u32 {
                v += sb[(y * tn + t) as usize];
            }
            if j0 + t < n {
                part[(part_base + CUBE_POS_Y * part_ld + j0 + t) as usize] = v;
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

/// Output tiles of an m x n launch.
pub fn tiles(m: usize, n: usize) -> (usize, usize) {
    let (tm, tn) = tile_shape(m, n, 1);
    (m.div_ceil(tm), n.div_ceil(tn))
}

pub fn launch<R: Runtime>(b: &CubeBackend<R>, g: &Tile<'_>) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    let (tm, tn) = tile_shape(g.m, g.n, 1);
    let (ty, tx) = tiles(g.m, g.n);
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
