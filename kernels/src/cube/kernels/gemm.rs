//! The one tiled GEMM behind every GEMM-shaped part of the op set: C (op)= alpha·A·B with
//! 64 or 128 square-or-oblong output tiles (comptime), 16-deep K steps staged in shared memory
//! as quads of 4 rows or columns (8-16 KiB, padded so that vector stores and loads are
//! conflict-free), 256 threads each holding a 4x4 to 8x8 block of accumulators in registers,
//! fed by one vector load from shared memory per 16 or 32 FMAs, and a comptime epilogue:
//!
//! - `EPI_STORE`: C = alpha·acc (+ beta·C) — Hessian, Cholesky panels and trailing updates,
//!   triangular inverse, OBS lazy updates, and with beta = 1 the plain gradient sum of §11;
//! - `EPI_GRAD_L2` / `EPI_GRAD_L1`: C += (alpha·acc)² or |alpha·acc| — the fused gradient
//!   accumulation of §2(b), which never writes g;
//! - `EPI_DOT`: Σ acc_ij·D_ij per tile into a partials buffer — the traces of §9.
//!
//! Comptime flags choose each operand's layout (so loads are coalesced either way), whether C
//! is read, a lower-triangle restriction (SYRK: tiles above the diagonal are skipped) and a
//! lower-triangular B (K starts at the tile's first column). Operands are strided views into
//! one binding each, so a slab of a larger matrix is addressed by offset and leading dimension.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, arg_quads, CubeTensor};
use super::super::CubeBackend;
use super::fill::BLOCK;
use super::reduce::cube_sum;
use crate::plan::{depth_piece_strides, depth_split, gemm_pieces, Stored};

const BK: u32 = 16;

/// The output tile of a launch of `count` products of m x n: 128 rows or columns where the
/// problem has that many (twice the work per shared-memory load) and the launch still makes
/// `fill` cubes (two waves of the device's multiprocessors, where it reports them), 64 x 64
/// otherwise: four times the cubes, so that the GPU fills.
pub fn tile_shape(m: usize, n: usize, count: usize, fill: usize) -> (usize, usize) {
    let side = |x: usize| if x >= 128 { 128 } else { 64 };
    let (tm, tn) = (side(m), side(n));
    if m.div_ceil(tm) * n.div_ceil(tn) * count < fill {
        (64, 64)
    } else {
        (tm, tn)
    }
}

pub const EPI_STORE: u32 = 0;
pub const EPI_GRAD_L2: u32 = 1;
pub const EPI_GRAD_L1: u32 = 2;
pub const EPI_DOT: u32 = 3;

const A_TRANS: u32 = 1;
const B_TRANS: u32 = 2;
const READ_C: u32 = 4;
const LOWER: u32 = 8;
const B_LOWER: u32 = 16;
const A_LOWER: u32 = 32;
const C_TRANS: u32 = 64;
/// The operand is read by vector loads (`quad_loads`): a quad (4 consecutive tile rows of A,
/// columns of B) per load where quads are contiguous (A transposed, B by rows), 4 depths of a
/// row per load in the other layouts.
const A_QUADS: u32 = 128;
const B_QUADS: u32 = 256;

/// Which triangle of a staged operand reads as zero.
pub(crate) const TRI_NONE: u32 = 0;
const TRI_A_LOWER: u32 = 1;
const TRI_B_LOWER: u32 = 2;

/// Whether a stage reads the operand's element at tile row `r` and depth `gk`: inside the
/// ranges, and not in the other triangle of a triangular operand, which may hold anything (the
/// triangular inverse keeps its products there) and is read as the zero it stands for.
#[cube]
fn staged_inside(r: u32, gk: u32, rows: u32, k: u32, shift: i32, #[comptime] tri: u32) -> bool {
    let mut inside = r < rows && gk < k;
    if comptime![tri == TRI_A_LOWER] {
        inside = inside && gk as i32 <= r as i32 + shift;
    }
    if comptime![tri == TRI_B_LOWER] {
        inside = inside && gk as i32 + shift >= r as i32;
    }
    inside
}

/// One operand's K step into its staged tile at `base` of `s`: `quads` quads of 4 tile rows
/// (A's rows or B's columns) per depth step, steps `pitch` vectors apart, zero past `rows` or
/// `k`. Element
/// (row r, depth d) lies at off + r·ld + d when `by_rows`, else at off + d·ld + r; neighbouring
/// units take neighbouring depth steps of a quad in the first layout and neighbouring quads
/// of a step in the second, so a plane's loads are runs of consecutive addresses either way.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage<N: Size>(
    x: &Array<f32>,
    s: &mut SharedMemory<Vector<f32, N>>,
    #[comptime] base: u32,
    off: u32,
    ld: u32,
    origin: u32,
    rows: u32,
    kb: u32,
    k: u32,
    #[comptime] quads: u32,
    #[comptime] pitch: u32,
    #[comptime] by_rows: bool,
    shift: i32,
    #[comptime] tri: u32,
) {
    let t = UNIT_POS_Y * 16 + UNIT_POS_X;
    #[unroll]
    for l in 0..comptime![quads * BK / 256] {
        let idx = t + l * 256;
        let (q, kk) = quad_and_depth(idx, quads, by_rows);
        s[(base + kk * pitch + q) as usize] = scalar_vector::<N>(
            x, off, ld, origin, rows, kb, k, idx, quads, by_rows, shift, tri,
        );
    }
}

/// The quad and depth step of the `idx`-th vector of an operand's staged K step: neighbouring
/// units take neighbouring depths of a quad (`by_rows`) or neighbouring quads of a depth.
#[cube]
fn quad_and_depth(idx: u32, #[comptime] quads: u32, #[comptime] by_rows: bool) -> (u32, u32) {
    let mut q = idx % quads;
    let mut kk = idx / quads;
    if comptime![by_rows] {
        q = idx / BK;
        kk = idx % BK;
    }
    (q, kk)
}

/// [`stage`]'s `idx`-th vector: four scalar loads, zero outside the operand.
#[cube]
#[allow(clippy::too_many_arguments)]
fn scalar_vector<N: Size>(
    x: &Array<f32>,
    off: u32,
    ld: u32,
    origin: u32,
    rows: u32,
    kb: u32,
    k: u32,
    idx: u32,
    #[comptime] quads: u32,
    #[comptime] by_rows: bool,
    shift: i32,
    #[comptime] tri: u32,
) -> Vector<f32, N> {
    let (q, kk) = quad_and_depth(idx, quads, by_rows);
    let gk = kb + kk;
    let mut v = Vector::<f32, N>::empty();
    #[unroll]
    for e in 0..4u32 {
        let r = origin + 4 * q + e;
        let mut val = 0.0f32;
        if staged_inside(r, gk, rows, k, shift, tri) {
            if comptime![by_rows] {
                val = x[(off + r * ld + gk) as usize];
            } else {
                val = x[(off + gk * ld + r) as usize];
            }
        }
        v[e as usize] = val;
    }
    v
}

/// [`stage_quads`]'s `idx`-th vector: one aligned vector load, masked lane by lane.
#[cube]
#[allow(clippy::too_many_arguments)]
fn quad_vector<N: Size>(
    x4: &Array<Vector<f32, Const<4>>>,
    off: u32,
    ld: u32,
    origin: u32,
    rows: u32,
    kb: u32,
    k: u32,
    idx: u32,
    #[comptime] quads: u32,
    shift: i32,
    #[comptime] tri: u32,
) -> Vector<f32, N> {
    let (q, kk) = quad_and_depth(idx, quads, false);
    let gk = kb + kk;
    let r0 = origin + 4 * q;
    let mut g = Vector::<f32, Const<4>>::new(0.0f32);
    if r0 < rows && gk < k {
        g = x4[((off + gk * ld + r0) / 4) as usize];
    }
    let mut v = Vector::<f32, N>::empty();
    #[unroll]
    for e in 0..4u32 {
        v[e as usize] = inside_or_zero(g[e as usize], r0 + e, gk, rows, k, shift, tri);
    }
    v
}

/// [`stage`] for an operand whose element (row r, depth d) lies at off + d·ld + r with off and
/// ld multiples of 4: a quad's 4 rows are one aligned vector of `x4` (the same binding read as
/// vectors), loaded once and masked lane by lane as [`stage`] masks its loads.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_quads<N: Size>(
    x4: &Array<Vector<f32, Const<4>>>,
    s: &mut SharedMemory<Vector<f32, N>>,
    #[comptime] base: u32,
    off: u32,
    ld: u32,
    origin: u32,
    rows: u32,
    kb: u32,
    k: u32,
    #[comptime] quads: u32,
    #[comptime] pitch: u32,
    shift: i32,
    #[comptime] tri: u32,
) {
    let t = UNIT_POS_Y * 16 + UNIT_POS_X;
    #[unroll]
    for l in 0..comptime![quads * BK / 256] {
        let idx = t + l * 256;
        let (q, kk) = quad_and_depth(idx, quads, false);
        s[(base + kk * pitch + q) as usize] =
            quad_vector::<N>(x4, off, ld, origin, rows, kb, k, idx, quads, shift, tri);
    }
}

/// [`stage`] for an operand whose element (row r, depth d) lies at off + r·ld + d (A by rows,
/// B transposed) with off and ld multiples of 4 and every K step starting at a multiple of 4:
/// a unit loads a 4 x 4 block, its quad's 4 rows at 4 consecutive depths (one aligned vector
/// of `x4` per row), transposes it in registers and stores the 4 depths' quads. Neighbouring
/// units take neighbouring depths of one row, so a plane's loads are runs of 64 bytes; a
/// tile of 64 (128) rows is 64 (128) blocks, so a quarter (half) of the units load, each
/// four vectors where [`stage`] has every unit make four scalar loads.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_depth_quads<N: Size>(
    x4: &Array<Vector<f32, Const<4>>>,
    s: &mut SharedMemory<Vector<f32, N>>,
    #[comptime] base: u32,
    off: u32,
    ld: u32,
    origin: u32,
    rows: u32,
    kb: u32,
    k: u32,
    #[comptime] quads: u32,
    #[comptime] pitch: u32,
    shift: i32,
    #[comptime] tri: u32,
) {
    let t = UNIT_POS_Y * 16 + UNIT_POS_X;
    if t < comptime![quads * BK / 4] {
        let q = t / comptime![BK / 4];
        let d0 = (t % comptime![BK / 4]) * 4;
        let gk = kb + d0;
        let r0 = origin + 4 * q;
        let g0 = depth_vector(x4, off, ld, r0, rows, gk, k);
        let g1 = depth_vector(x4, off, ld, r0 + 1, rows, gk, k);
        let g2 = depth_vector(x4, off, ld, r0 + 2, rows, gk, k);
        let g3 = depth_vector(x4, off, ld, r0 + 3, rows, gk, k);
        #[unroll]
        for i in 0..4u32 {
            let mut v = Vector::<f32, N>::empty();
            v[0] = inside_or_zero(g0[i as usize], r0, gk + i, rows, k, shift, tri);
            v[1] = inside_or_zero(g1[i as usize], r0 + 1, gk + i, rows, k, shift, tri);
            v[2] = inside_or_zero(g2[i as usize], r0 + 2, gk + i, rows, k, shift, tri);
            v[3] = inside_or_zero(g3[i as usize], r0 + 3, gk + i, rows, k, shift, tri);
            s[(base + (d0 + i) * pitch + q) as usize] = v;
        }
    }
}

/// Row r's 4 depths from gk (a multiple of 4, as the row's start is): one aligned vector, or
/// zeros where the row or its first depth is outside the operand (the binding's length is a
/// multiple of 4, so a vector whose first depth is inside lies inside it).
#[cube]
fn depth_vector(
    x4: &Array<Vector<f32, Const<4>>>,
    off: u32,
    ld: u32,
    r: u32,
    rows: u32,
    gk: u32,
    k: u32,
) -> Vector<f32, Const<4>> {
    let mut g = Vector::<f32, Const<4>>::new(0.0f32);
    if r < rows && gk < k {
        g = x4[((off + r * ld + gk) / 4) as usize];
    }
    g
}

/// `v` where the stage reads element (r, gk) ([`staged_inside`]), else the zero it stands for.
#[cube]
fn inside_or_zero(
    v: f32,
    r: u32,
    gk: u32,
    rows: u32,
    k: u32,
    shift: i32,
    #[comptime] tri: u32,
) -> f32 {
    let mut out = 0.0f32;
    if staged_inside(r, gk, rows, k, shift, tri) {
        out = v;
    }
    out
}

/// One operand's K step by the loads its layout and alignment allow: with `vector`,
/// [`stage_depth_quads`] (by rows) or [`stage_quads`] from `x4`; otherwise [`stage`]'s scalar
/// loads from `x` (the same binding).
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_operand<N: Size>(
    x: &Array<f32>,
    x4: &Array<Vector<f32, Const<4>>>,
    s: &mut SharedMemory<Vector<f32, N>>,
    #[comptime] base: u32,
    off: u32,
    ld: u32,
    origin: u32,
    rows: u32,
    kb: u32,
    k: u32,
    #[comptime] quads: u32,
    #[comptime] pitch: u32,
    #[comptime] by_rows: bool,
    #[comptime] vector: bool,
    shift: i32,
    #[comptime] tri: u32,
) {
    if comptime![vector && by_rows] {
        stage_depth_quads::<N>(
            x4, s, base, off, ld, origin, rows, kb, k, quads, pitch, shift, tri,
        );
    } else if comptime![vector] {
        stage_quads::<N>(
            x4, s, base, off, ld, origin, rows, kb, k, quads, pitch, shift, tri,
        );
    } else {
        stage::<N>(
            x, s, base, off, ld, origin, rows, kb, k, quads, pitch, by_rows, shift, tri,
        );
    }
}

/// The `idx`-th vector of an operand's K step by scalar or column-quad loads, as
/// [`stage_operand`] would stage it (never depth quads).
#[cube]
#[allow(clippy::too_many_arguments)]
fn operand_vector<N: Size>(
    x: &Array<f32>,
    x4: &Array<Vector<f32, Const<4>>>,
    off: u32,
    ld: u32,
    origin: u32,
    rows: u32,
    kb: u32,
    k: u32,
    idx: u32,
    #[comptime] quads: u32,
    #[comptime] by_rows: bool,
    #[comptime] vector: bool,
    shift: i32,
    #[comptime] tri: u32,
) -> Vector<f32, N> {
    if comptime![vector] {
        quad_vector::<N>(x4, off, ld, origin, rows, kb, k, idx, quads, shift, tri)
    } else {
        scalar_vector::<N>(
            x, off, ld, origin, rows, kb, k, idx, quads, by_rows, shift, tri,
        )
    }
}

/// One K step of the staged tiles into a unit's rm x rn accumulators (rows 4·ty + 64·i,
/// columns 4·tx + 64·j): A's quads from `pa` vectors per depth step, B's from `sb` at `pb`
/// per step, one vector load from shared memory per 16 FMAs (4x4) or 32 (8x8).
#[cube]
pub(crate) fn multiply_staged<N: Size>(
    st: &SharedMemory<Vector<f32, N>>,
    acc: &mut Array<f32>,
    #[comptime] pa: u32,
    #[comptime] pb: u32,
    #[comptime] sb: u32,
    #[comptime] rm: u32,
    #[comptime] rn: u32,
) {
    let tx = UNIT_POS_X;
    let ty = UNIT_POS_Y;
    #[unroll]
    for kk in 0..BK {
        #[unroll]
        for ia in 0..comptime![rm / 4] {
            let av = st[(kk * pa + ty + 16 * ia) as usize];
            #[unroll]
            for jb in 0..comptime![rn / 4] {
                let bv = st[(sb + kk * pb + tx + 16 * jb) as usize];
                #[unroll]
                for e in 0..4u32 {
                    #[unroll]
                    for f in 0..4u32 {
                        let at = (ia * 4 + e) * rn + jb * 4 + f;
                        acc[at as usize] += av[e as usize] * bv[f as usize];
                    }
                }
            }
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gemm_kernel<N: Size>(
    a: &Array<f32>,
    b: &Array<f32>,
    a4: &Array<Vector<f32, Const<4>>>,
    b4: &Array<Vector<f32, Const<4>>>,
    c: &mut Array<f32>,
    dot: &mut Array<f32>,
    m: u32,
    ncols: u32,
    k: u32,
    a_off: u32,
    a_ld: u32,
    b_off: u32,
    b_ld: u32,
    c_off: u32,
    c_ld: u32,
    alpha: f32,
    beta: f32,
    diag_shift: i32,
    tri_shift: i32,
    a_shift: i32,
    za: u32,
    zb: u32,
    zc: u32,
    dot_base: u32,
    #[comptime] flags: u32,
    #[comptime] epi: u32,
    #[comptime] plane: bool,
    #[comptime] tm: u32,
    #[comptime] tn: u32,
) {
    // 16 x 16 units; each holds an rm x rn block of the tm x tn output tile: rows
    // 4·ty + 64·i' + (0..4) and columns 4·tx + 64·j' + (0..4), so that per depth step it reads
    // its rows and columns from shared memory as rm/4 + rn/4 vectors of 4 (one per 16 FMAs at
    // 4 x 4, one per 32 at 8 x 8), and neighbouring units store neighbouring columns.
    let rm = comptime![tm / 16];
    let rn = comptime![tn / 16];
    let qa = comptime![tm / 4];
    let qb = comptime![tn / 4];
    // Depth steps of the staged tiles are padded by one quad: the vector stores of 8
    // consecutive steps to one quad, and the vector loads of 8 consecutive quads of one step,
    // fall in 8 different 16-byte bank groups. (An XOR swizzle does the same, but its
    // addresses are not affine in the step: ptxas kept 8 of them per operand in registers.)
    let pa = comptime![qa + 1];
    let pb = comptime![qb + 1];
    // Whether the operand's element (row of the tile, depth) lies at off + row·ld + depth: A
    // stored by rows, B transposed (its rows are C's columns).
    let a_by_rows = comptime![flags & A_TRANS == 0];
    let b_by_rows = comptime![flags & B_TRANS != 0];
    let tx = UNIT_POS_X;
    let ty = UNIT_POS_Y;
    let t = ty * 16 + tx;
    let i0 = CUBE_POS_Y * tm;
    let j0 = CUBE_POS_X * tn;
    // The product of a batch this cube computes.
    let a_off = a_off + CUBE_POS_Z * za;
    let b_off = b_off + CUBE_POS_Z * zb;
    let c_off = c_off + CUBE_POS_Z * zc;

    // A SYRK tile wholly above the diagonal has nothing to compute (uniform per cube).
    let mut active = true;
    if comptime![flags & LOWER != 0] {
        if (i0 + tm - 1) as i32 + diag_shift < j0 as i32 {
            active = false;
        }
    }
    let mut kb = 0u32;
    if comptime![flags & B_LOWER != 0] {
        // B(k, j) = 0 for k + tri_shift < j: this tile's columns start at j0.
        let first = j0 as i32 - tri_shift;
        if first > 0 {
            kb = first as u32;
        }
    }
    let mut kend = k;
    if comptime![flags & A_LOWER != 0] {
        // A(i, k) = 0 for k > i + a_shift: this tile's rows end at i0 + tm.
        let last = i0 as i32 + tm as i32 + a_shift;
        if last < 0 {
            kend = 0;
        } else if last < k as i32 {
            kend = last as u32;
        }
    }
    if !active {
        kb = kend;
    }

    // The staged tiles, depth-major: per depth step, quads of 4 rows of A (4 columns of B);
    // B's from `sb`. One shared array at fixed offsets: CubeCL 0.10 places separate arrays in
    // an order that varies from run to run, and ptxas's registers then varied by up to 18.
    let sb = comptime![BK * pa];
    let mut st = SharedMemory::<Vector<f32, N>>::new(comptime![(BK * (pa + pb)) as usize]);
    let mut acc = Array::<f32>::new(comptime![(rm * rn) as usize]);
    #[unroll]
    for q in 0..rm * rn {
        acc[q as usize] = 0.0;
    }

    let a_tri = comptime![if flags & A_LOWER != 0 {
        TRI_A_LOWER
    } else {
        TRI_NONE
    }];
    let b_tri = comptime![if flags & B_LOWER != 0 {
        TRI_B_LOWER
    } else {
        TRI_NONE
    }];
    let a_vec = comptime![flags & A_QUADS != 0];
    let b_vec = comptime![flags & B_QUADS != 0];
    // Double buffering through registers on 64 x 64 tiles: the next K step's global loads are
    // issued before this step's FMAs and stored to the tiles after them, so their latency
    // hides behind the multiply. A unit holds one vector of each operand for it (8 registers;
    // 64-wide sides stage by scalars or column quads, one vector per unit). 128-wide tiles
    // would hold 16 more beside 100-127 and drop from two cubes per SM to one.
    let prefetch =
        comptime![tm == 64 && tn == 64 && !(a_vec && a_by_rows) && !(b_vec && b_by_rows)];
    // With prefetching a step's vectors arrive in registers during the step before (the
    // first before the loop) and are stored at the top of the loop.
    let mut ra = Vector::<f32, N>::empty();
    let mut rb = Vector::<f32, N>::empty();
    if comptime![prefetch] {
        if kb < kend {
            ra = operand_vector::<N>(
                a, a4, a_off, a_ld, i0, m, kb, k, t, qa, a_by_rows, a_vec, a_shift, a_tri,
            );
            rb = operand_vector::<N>(
                b, b4, b_off, b_ld, j0, ncols, kb, k, t, qb, b_by_rows, b_vec, tri_shift, b_tri,
            );
        }
    }
    while kb < kend {
        if comptime![prefetch] {
            let (q, kk) = quad_and_depth(t, qa, a_by_rows);
            st[(kk * pa + q) as usize] = ra;
            let (q, kk) = quad_and_depth(t, qb, b_by_rows);
            st[(sb + kk * pb + q) as usize] = rb;
        } else {
            stage_operand::<N>(
                a, a4, &mut st, 0u32, a_off, a_ld, i0, m, kb, k, qa, pa, a_by_rows, a_vec, a_shift,
                a_tri,
            );
            stage_operand::<N>(
                b, b4, &mut st, sb, b_off, b_ld, j0, ncols, kb, k, qb, pb, b_by_rows, b_vec,
                tri_shift, b_tri,
            );
        }
        sync_cube();
        let next = kb + BK;
        if comptime![prefetch] {
            if next < kend {
                ra = operand_vector::<N>(
                    a, a4, a_off, a_ld, i0, m, next, k, t, qa, a_by_rows, a_vec, a_shift, a_tri,
                );
                rb = operand_vector::<N>(
                    b, b4, b_off, b_ld, j0, ncols, next, k, t, qb, b_by_rows, b_vec, tri_shift,
                    b_tri,
                );
            }
        }
        multiply_staged::<N>(&st, &mut acc, pa, pb, sb, rm, rn);
        sync_cube();
        kb = next;
    }

    let mut part = 0.0f32;
    if active {
        #[unroll]
        for ii in 0..rm {
            #[unroll]
            for jj in 0..rn {
                let i = i0 + 64 * (ii / 4) + 4 * ty + ii % 4;
                let j = j0 + 64 * (jj / 4) + 4 * tx + jj % 4;
                let mut valid = i < m && j < ncols;
                if comptime![flags & LOWER != 0] {
                    valid = valid && i as i32 + diag_shift >= j as i32;
                }
                if valid {
                    let mut ci = (c_off + i * c_ld + j) as usize;
                    if comptime![flags & C_TRANS != 0] {
                        ci = (c_off + j * c_ld + i) as usize;
                    }
                    let v = acc[(ii * rn + jj) as usize];
                    if comptime![epi == EPI_STORE] {
                        let mut r = alpha * v;
                        if comptime![flags & READ_C != 0] {
                            r += beta * c[ci];
                        }
                        c[ci] = r;
                    }
                    if comptime![epi == EPI_GRAD_L2] {
                        let g = alpha * v;
                        c[ci] += g * g;
                    }
                    if comptime![epi == EPI_GRAD_L1] {
                        c[ci] += f32::abs(alpha * v);
                    }
                    if comptime![epi == EPI_DOT] {
                        part += v * c[ci];
                    }
                }
            }
        }
    }
    if comptime![epi == EPI_DOT] {
        let total = cube_sum(part, plane);
        if t == 0 {
            dot[(dot_base + CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize] = total;
        }
    }
}

/// A strided view of one GEMM operand inside a binding of `len` f32: element (r, c) of the
/// operand is at `off + r·ld + c`, or at `off + c·ld + r` when `trans`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub h: &'a Handle,
    pub len: usize,
    pub off: usize,
    pub ld: usize,
    pub trans: bool,
}

impl<'a> View<'a> {
    pub fn rows(h: &'a Handle, len: usize, off: usize, ld: usize) -> Self {
        Self {
            h,
            len,
            off,
            ld,
            trans: false,
        }
    }
    pub fn transposed(h: &'a Handle, len: usize, off: usize, ld: usize) -> Self {
        Self {
            h,
            len,
            off,
            ld,
            trans: true,
        }
    }
}

/// A batch of equally shaped products at fixed strides (elements of each operand's binding:
/// A, B, C).
#[derive(Clone, Copy, Debug)]
pub struct Batched {
    pub count: usize,
    pub stride: [usize; 3],
}

impl Batched {
    pub const ONE: Self = Self {
        count: 1,
        stride: [0; 3],
    };
}

/// One GEMM launch: C[m x n] (op)= alpha·A[m x k]·B[k x n].
#[derive(Clone, Copy)]
pub struct Gemm<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: View<'a>,
    pub b: View<'a>,
    /// C; for `EPI_DOT` the matrix D the product is multiplied with (read only).
    pub c: View<'a>,
    pub alpha: f32,
    /// `Some(beta)`: C = alpha·acc + beta·C; `None`: C is not read.
    pub beta: Option<f32>,
    /// Only C(i, j) with i + shift >= j is computed and written (SYRK).
    pub lower: Option<i64>,
    /// B(k, j) is zero for k + shift < j (B lower triangular): K starts at each tile's column.
    pub b_lower: Option<i64>,
    /// A(i, k) is zero for k > i + shift (A lower triangular): K ends at each tile's last row.
    pub a_lower: Option<i64>,
    /// C(i, j) is stored at `off + j·ld + i` (`EPI_STORE` only).
    pub c_trans: bool,
    /// This many products in one launch, the z-th with each view's offset moved by z times
    /// its stride.
    pub batch: Batched,
    pub epi: u32,
    /// For `EPI_DOT`: the partials buffer and where this launch's tiles (see [`tile_shape`])
    /// start in it.
    pub dot: Option<(&'a Handle, usize, usize)>,
}

impl<'a> Gemm<'a> {
    /// C = A·B stored, C not read, with no triangle, batch or other epilogue: what a launch
    /// differs from with struct update syntax.
    pub fn store(m: usize, n: usize, k: usize, a: View<'a>, b: View<'a>, c: View<'a>) -> Self {
        Self {
            m,
            n,
            k,
            a,
            b,
            c,
            alpha: 1.0,
            beta: None,
            lower: None,
            b_lower: None,
            a_lower: None,
            c_trans: false,
            batch: Batched::ONE,
            epi: EPI_STORE,
            dot: None,
        }
    }
}

/// Whether A and B may be staged by vector loads, with the view's offset, leading dimension,
/// batch stride and binding length multiples of 4 (tile origins, quads and K steps are), so
/// every vector is aligned: in the layouts whose quads are contiguous (A transposed, B by
/// rows: the Hessian's XᵀX and the gradient's dYᵀX) a quad per load ([`stage_quads`]); in
/// the others (A by rows, B transposed: LINEAR's X·Wᵀ, the factor's SYRKs) 4 depths of a row
/// per load ([`stage_depth_quads`]), where K steps start at multiples of 4 (a lower-triangular
/// B starts them at its shift) and the operand's side of the tile (`tm` for A, `tn` for B) is
/// 128. At 64 its 4 x 4 blocks cost 11 to 19 registers (occupancy 62-75% to 50% on sm_90a)
/// for 8 load instructions per unit in 300; at 128 they take no more than scalar loads.
pub fn quad_loads(g: &Gemm<'_>, (tm, tn): (usize, usize)) -> (bool, bool) {
    let aligned = |v: &View<'_>, stride: usize| {
        v.off.is_multiple_of(4)
            && v.ld.is_multiple_of(4)
            && v.len.is_multiple_of(4)
            && (g.batch.count == 1 || stride.is_multiple_of(4))
    };
    let b_steps_aligned = g.b_lower.is_none_or(|s| s.rem_euclid(4) == 0);
    (
        aligned(&g.a, g.batch.stride[0]) && (g.a.trans || tm == 128),
        aligned(&g.b, g.batch.stride[1]) && (!g.b.trans || (b_steps_aligned && tn == 128)),
    )
}

pub fn gemm<R: Runtime>(b: &CubeBackend<R>, g: &Gemm<'_>) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    let mut flags = 0;
    if g.a.trans {
        flags |= A_TRANS;
    }
    if g.b.trans {
        flags |= B_TRANS;
    }
    if g.beta.is_some() {
        flags |= READ_C;
    }
    if g.lower.is_some() {
        flags |= LOWER;
    }
    if g.b_lower.is_some() {
        flags |= B_LOWER;
    }
    if g.a_lower.is_some() {
        flags |= A_LOWER;
    }
    if g.c_trans {
        assert_eq!(g.epi, EPI_STORE, "a transposed C is only stored");
        flags |= C_TRANS;
    }
    let (tm, tn) = tile_shape(g.m, g.n, g.batch.count, b.fill_cubes);
    let (a_quads, b_quads) = quad_loads(g, (tm, tn));
    if a_quads {
        flags |= A_QUADS;
    }
    if b_quads {
        flags |= B_QUADS;
    }
    let (dot_h, dot_len, dot_base) = g.dot.unwrap_or((g.c.h, g.c.len, 0));
    let count = CubeCount::Static(
        g.n.div_ceil(tn) as u32,
        g.m.div_ceil(tm) as u32,
        g.batch.count as u32,
    );
    // SAFETY: every load and store is guarded by m, n and k against the views, which the
    // callers build inside their bindings; the dot partial index is below tiles().
    unsafe {
        gemm_kernel::launch_unchecked::<R>(
            &b.client,
            count,
            CubeDim::new_2d(16, 16),
            // The vector size of the staged tiles' quads.
            4,
            arg(g.a.h, g.a.len),
            arg(g.b.h, g.b.len),
            arg_quads(g.a.h, g.a.len),
            arg_quads(g.b.h, g.b.len),
            arg(g.c.h, g.c.len),
            arg(dot_h, dot_len),
            g.m as u32,
            g.n as u32,
            g.k as u32,
            g.a.off as u32,
            g.a.ld as u32,
            g.b.off as u32,
            g.b.ld as u32,
            g.c.off as u32,
            g.c.ld as u32,
            g.alpha,
            g.beta.unwrap_or(0.0),
            g.lower.unwrap_or(0) as i32,
            g.b_lower.unwrap_or(0) as i32,
            g.a_lower.unwrap_or(0) as i32,
            g.batch.stride[0] as u32,
            g.batch.stride[1] as u32,
            g.batch.stride[2] as u32,
            dot_base as u32,
            flags,
            g.epi,
            b.plane,
            tm as u32,
            tn as u32,
        );
    }
}

/// A whole tensor as an operand of [`gemm_split`], or its transpose.
#[derive(Clone, Copy)]
pub struct Of<'a> {
    pub t: &'a CubeTensor,
    pub trans: bool,
}

impl<'a> Of<'a> {
    pub fn rows(t: &'a CubeTensor) -> Self {
        Self { t, trans: false }
    }
    pub fn transposed(t: &'a CubeTensor) -> Self {
        Self { t, trans: true }
    }

    fn stored(&self) -> Stored<'a> {
        Stored {
            slabs: &self.t.slabs,
            trans: self.trans,
        }
    }

    /// The view whose (0, 0) is the operand's (r0, c0): stored row r0 (c0 when transposed)
    /// lies in one slab, as the plan's pieces guarantee.
    fn view(&self, r0: usize, c0: usize) -> View<'a> {
        let (row, col) = if self.trans { (c0, r0) } else { (r0, c0) };
        let (s, local) = self.t.slabs.locate(row);
        let (h, len, ld) = (&self.t.handles[s], self.t.slab_len(s), self.t.cols);
        let off = local * ld + col;
        if self.trans {
            View::transposed(h, len, off, ld)
        } else {
            View::rows(h, len, off, ld)
        }
    }
}

/// What a split product computes beyond its operands, in the whole product's coordinates:
/// C = alpha·A·B (+ beta·C), a lower-triangle restriction of C (i + shift >= j) and a
/// lower-triangular B (B(k, j) = 0 for k + shift < j).
#[derive(Clone, Copy)]
pub struct Product {
    pub alpha: f32,
    pub beta: Option<f32>,
    pub lower: Option<i64>,
    pub b_lower: Option<i64>,
}

impl Default for Product {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            beta: None,
            lower: None,
            b_lower: None,
        }
    }
}

/// C (op)= alpha·A·B over whole tensors cut into slabs: one launch per piece of the shared
/// plan ([`gemm_pieces`]), later depth pieces accumulating onto the first, the triangle
/// restrictions carried into each piece's coordinates and the pieces they leave empty skipped;
/// a product in one piece through [`gemm_filling`].
pub fn gemm_split<R: Runtime>(
    b: &CubeBackend<R>,
    p: Product,
    a: Of<'_>,
    bm: Of<'_>,
    c: &CubeTensor,
) {
    let k = if a.trans { a.t.rows } else { a.t.cols };
    let pieces = gemm_pieces(c.rows, c.cols, k, a.stored(), bm.stored(), &c.slabs);
    // One piece is the whole product: in one launch, or split over its depth where its tiles
    // fall short of the fill (`gemm_filling` keeps triangle-restricted products whole).
    let launch = if pieces.len() == 1 {
        gemm_filling
    } else {
        gemm
    };
    for pc in pieces {
        let ((m0, m1), (n0, mut n1), (k0, k1)) = (pc.m, pc.n, pc.k);
        if let Some(shift) = p.lower {
            // Row i reaches column i + shift: nothing right of the block's last row's reach.
            n1 = n1.min((m1 as i64 + shift).max(0) as usize);
        }
        if m1 <= m0 || n1 <= n0 {
            continue;
        }
        let local = |shift: i64, origin: usize| shift + origin as i64 - n0 as i64;
        launch(
            b,
            &Gemm {
                alpha: p.alpha,
                beta: if pc.first { p.beta } else { Some(1.0) },
                lower: p.lower.map(|s| local(s, m0)),
                b_lower: p.b_lower.map(|s| local(s, k0)),
                ..Gemm::store(
                    m1 - m0,
                    n1 - n0,
                    k1 - k0,
                    a.view(m0, k0),
                    bm.view(k0, n0),
                    Of::rows(c).view(m0, n0),
                )
            },
        );
    }
}

/// C = Σ_z parts[z·elems ..] (+ beta·C) over the `elems` = m·n values of C (`n` wide, at
/// `c_off` with leading dimension `ldc`): the second pass of a product split over its depth,
/// summed in piece order so the result does not depend on the order the pieces ran in.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn sum_depth_parts_kernel(
    parts: &Array<f32>,
    c: &mut Array<f32>,
    elems: u32,
    n: u32,
    c_off: u32,
    ldc: u32,
    count: u32,
    beta: f32,
    #[comptime] read_c: bool,
) {
    let e = ABSOLUTE_POS as u32;
    if e < elems {
        let mut v = 0.0f32;
        for z in 0..count {
            v += parts[(z * elems + e) as usize];
        }
        let ci = (c_off + (e / n) * ldc + e % n) as usize;
        if comptime![read_c] {
            v += beta * c[ci];
        }
        c[ci] = v;
    }
}

/// [`gemm`] for a plain product (C = alpha·A·B (+ beta·C), no triangle, batch, transposed C
/// or other epilogue), as [`depth_split`]'s equal depth pieces where its 64 x 64 tiles fall
/// short of the fill and the partials' scratch is granted: one launch batched over the
/// pieces, piece z reading depths z·kp.. of A and B (their views moved along the depth) and
/// storing alpha·A·B into its own partial, then [`sum_depth_parts_kernel`] adding the
/// partials into C in piece order (+ beta·C). Anything else launches as it is.
pub fn gemm_filling<R: Runtime>(b: &CubeBackend<R>, g: &Gemm<'_>) {
    let plain = g.batch.count == 1
        && g.lower.is_none()
        && g.b_lower.is_none()
        && g.a_lower.is_none()
        && !g.c_trans
        && g.epi == EPI_STORE;
    let (m, n) = (g.m, g.n);
    let splits = if plain {
        depth_split(m, n, g.k, b.fill_or_default())
    } else {
        1
    };
    let parts = match (splits > 1).then(|| b.scratch(splits * m * n)) {
        Some(Ok(parts)) => parts,
        _ => return gemm(b, g),
    };
    let kp = g.k / splits;
    gemm(
        b,
        &Gemm {
            k: kp,
            beta: None,
            c: View::rows(&parts, splits * m * n, 0, n),
            batch: Batched {
                count: splits,
                stride: depth_piece_strides(kp, (g.a.trans, g.a.ld), (g.b.trans, g.b.ld), m * n),
            },
            ..*g
        },
    );
    sum_parts(
        b,
        (&parts, splits),
        (g.c.h, g.c.len, g.c.off, g.c.ld),
        (m, n),
        g.beta,
    );
}

/// Launches [`sum_depth_parts_kernel`]: C (m x n at `off` with leading dimension `ld` in a
/// binding of `len`) = the sum of the `count` partials of m·n values in `parts`, in order
/// (+ beta·C where `beta` is given).
pub(crate) fn sum_parts<R: Runtime>(
    b: &CubeBackend<R>,
    (parts, count): (&Handle, usize),
    (h, len, off, ld): (&Handle, usize, usize, usize),
    (m, n): (usize, usize),
    beta: Option<f32>,
) {
    let elems = m * n;
    if elems == 0 {
        return;
    }
    // SAFETY: one unit per element of C below `elems`; the partials hold count·elems values
    // and C's m rows of ld from off lie inside its binding of len.
    unsafe {
        sum_depth_parts_kernel::launch_unchecked::<R>(
            &b.client,
            b.grid(elems, BLOCK),
            CubeDim::new_1d(BLOCK),
            arg(parts, count * elems),
            arg(h, len),
            elems as u32,
            n as u32,
            off as u32,
            ld as u32,
            count as u32,
            beta.unwrap_or(0.0),
            beta.is_some(),
        );
    }
}
