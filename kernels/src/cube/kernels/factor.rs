//! The damped inverse-Hessian factor of §6, all on the device, by the direct route:
//! with J the reversal permutation, factor A = J(H + λI)J = L Lᵀ (blocked right-looking
//! Cholesky), then H + λI = R Rᵀ with R = J L J upper triangular, so
//! (H + λI)⁻¹ = R⁻ᵀ R⁻¹ and U = R⁻¹ = J L⁻¹ J is exactly the upper Cholesky factor the
//! reference reaches through cholesky → cholesky_inverse → cholesky (both are the unique upper
//! triangular factor with a positive diagonal). Two n³/3 steps instead of four.
//!
//! The steps, their order and their pieces over slabs are planned once for both GPU backends
//! (`plan::factor`): per 128-column block (64 where the slabs are cut at odd multiples of 64),
//! one cube factors the diagonal block and inverts it in place (a non-positive pivot is recorded in a flag, replaced by 1
//! so nothing turns NaN, and reported as `NotPositiveDefinite` at the end); the panel
//! L21 = A21·L_kk⁻ᵀ is the tiled GEMM in place; the SYRKs update the rest of the 256-column
//! outer block at the block's depth and the trailing matrix once per outer block at depth 256.
//! The inverse X = L⁻¹ is built by doubling: log2(n/128) levels of two batched GEMMs.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, f32_bytes, CubeTensor};
use super::super::CubeBackend;
use super::copy::first_nonfinite;
use super::fill::BLOCK;
use super::gemm::{gemm, Batched, Gemm, View};
use super::reduce::{sum, CUBE};
use crate::error::{KernelError, Result};
use crate::ops::{check, HinvFactor};
use crate::plan::factor::{block_width, cholesky_steps, inverse_levels, CholStep, PairRun, NB};
use crate::plan::GemmPiece;

/// d[j] = H_jj (1 where H_jj = 0) and dead[j] = (H_jj == 0) for the rows of one slab.
#[cube(launch_unchecked)]
fn diag_kernel(
    h: &Array<f32>,
    d: &mut Array<f32>,
    dead: &mut Array<u32>,
    row0: u32,
    rows: u32,
    n: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < rows {
        let v = h[(i * n + row0 + i) as usize];
        let mut fixed = v;
        let mut is_dead = 0u32;
        if v == 0.0 {
            fixed = 1.0;
            is_dead = 1u32;
        }
        d[(row0 + i) as usize] = fixed;
        dead[(row0 + i) as usize] = is_dead;
    }
}

/// Row- and column-reversing copy between two n x n matrices, for `cnt` destination rows
/// starting at global row `first` (whose sources lie in one source slab):
/// with `prep`, A = J(H + λI)J with dead diagonals set to 1 (d holds the fixed diagonal);
/// otherwise U = J X J keeping only the upper triangle (X lower ↔ U upper).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn reverse_kernel(
    src: &Array<f32>,
    dst: &mut Array<f32>,
    d: &Array<f32>,
    n: u32,
    first: u32,
    cnt: u32,
    dst_row0: u32,
    src_row0: u32,
    lambda: f32,
    #[comptime] prep: bool,
) {
    let idx = ABSOLUTE_POS as u32;
    if idx < cnt * n {
        let gr = first + idx / n;
        let j = idx % n;
        let sr = n - 1 - gr;
        let mut v = src[((sr - src_row0) * n + (n - 1 - j)) as usize];
        if comptime![prep] {
            if j == gr {
                v = d[sr as usize] + lambda;
            }
        } else if gr > j {
            v = 0.0;
        }
        dst[((gr - dst_row0) * n + j) as usize] = v;
    }
}

/// The lower triangle of the w x w block of `a` at rows `row0` (slab-local) and columns `col0`
/// into `sh`, zero above it, rows and columns past `w` the identity.
#[cube]
fn load_block(a: &Array<f32>, sh: &mut SharedMemory<f32>, row0: u32, col0: u32, w: u32, n: u32) {
    let t = UNIT_POS;
    #[unroll]
    for q in 0..16u32 {
        let idx = t + q * CUBE;
        let i = idx / 64;
        let j = idx % 64;
        let mut v = 0.0f32;
        if i < w && j < w {
            if j <= i {
                v = a[((row0 + i) * n + col0 + j) as usize];
            }
        } else if i == j {
            v = 1.0;
        }
        sh[idx as usize] = v;
    }
}

/// Factors the 64 x 64 block in `sh` (as [`load_block`] leaves it) and leaves Xᵀ there, X =
/// L⁻¹: sh[p·64 + c] = X(c, p), zero below the diagonal. Pivots that are not positive and
/// finite record their column of A, `col0 + j`, in `fail[slot]` (atomic min) and continue as 1.
#[cube]
fn factor_invert_block(
    sh: &mut SharedMemory<f32>,
    xd: &mut SharedMemory<f32>,
    fail: &mut Array<Atomic<u32>>,
    w: u32,
    col0: u32,
    slot: u32,
) {
    let t = UNIT_POS;
    for j in 0..64u32 {
        if t == 0 {
            let mut d = sh[(j * 65) as usize];
            if !(d > 0.0 && d <= 3.4e38) {
                if j < w {
                    fail[slot as usize].fetch_min(col0 + j);
                }
                d = 1.0;
            }
            sh[(j * 65) as usize] = f32::sqrt(d);
        }
        sync_cube();
        let ljj = sh[(j * 65) as usize];
        let i = j + 1 + t;
        if i < 64 {
            sh[(i * 64 + j) as usize] = sh[(i * 64 + j) as usize] / ljj;
        }
        sync_cube();
        #[unroll]
        for q in 0..16u32 {
            let idx = t + q * CUBE;
            let r = idx / 64;
            let l = idx % 64;
            if l > j && r >= l {
                sh[idx as usize] -= sh[(r * 64 + j) as usize] * sh[(l * 64 + j) as usize];
            }
        }
        sync_cube();
    }
    // Column t of X by forward substitution; X(k, t) for k > t lives in row t's upper part of
    // `sh` (never read as L), X(t, t) in xd.
    if t < 64 {
        let xt = 1.0 / sh[(t * 65) as usize];
        xd[t as usize] = xt;
        for i in t + 1..64 {
            let mut s = sh[(i * 64 + t) as usize] * xt;
            for k in t + 1..i {
                s += sh[(i * 64 + k) as usize] * sh[(t * 64 + k) as usize];
            }
            sh[(t * 64 + i) as usize] = -s / sh[(i * 65) as usize];
        }
    }
    sync_cube();
    #[unroll]
    for q in 0..16u32 {
        let idx = t + q * CUBE;
        let i = idx / 64;
        let j = idx % 64;
        if i > j {
            sh[idx as usize] = 0.0;
        } else if i == j {
            sh[idx as usize] = xd[i as usize];
        }
    }
    sync_cube();
}

/// X (as Xᵀ in `sh`) over the w x w block of `a` at rows `row0` (slab-local) and columns
/// `col0`, zero above its diagonal.
#[cube]
fn store_block(sh: &SharedMemory<f32>, a: &mut Array<f32>, row0: u32, col0: u32, w: u32, n: u32) {
    let t = UNIT_POS;
    #[unroll]
    for q in 0..16u32 {
        let idx = t + q * CUBE;
        let i = idx / 64;
        let j = idx % 64;
        let mut v = 0.0f32;
        if j <= i {
            v = sh[(j * 64 + i) as usize];
        }
        if i < w && j < w {
            a[((row0 + i) * n + col0 + j) as usize] = v;
        }
    }
}

/// Factors the w x w diagonal block at (k0, k0), w <= 128, and writes L_kk⁻¹ over its lower
/// triangle. Up to 64 columns it is one block in shared memory. Up to 128 it is a
/// 2 x 2 of 64-blocks [[A11, ·], [A21, A22]], w2 = w − 64 rows in the second:
///   X11 = L11⁻¹ in shared memory, written to A11;
///   L21 = A21·X11ᵀ, kept transposed in the block's free upper-right corner U12;
///   X22 = L22⁻¹ with L22 L22ᵀ = A22 − L21 L21ᵀ, in shared memory, written to A22;
///   T = L21·X11 over A21 (read no more), then X21 = −X22·T into U12, moved to A21.
/// U12 keeps that scratch: no later step reads above a diagonal block's diagonal (the panel's
/// chunks stop at their last column, the inverse masks its triangles). The off-diagonal products go through global memory, which this
/// cube alone touches (`sync_storage` orders it), so a cube holds 16 KiB whatever the width.
/// Pivots that are not positive and finite record their column in `fail[slot]`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn chol_block_kernel(
    a: &mut Array<f32>,
    fail: &mut Array<Atomic<u32>>,
    local_row0: u32,
    k0: u32,
    w: u32,
    n: u32,
    slot: u32,
) {
    let t = UNIT_POS;
    let mut sh = SharedMemory::<f32>::new(4096usize);
    let mut xd = SharedMemory::<f32>::new(64usize);
    let mut w1 = w;
    if w1 > 64 {
        w1 = 64u32;
    }
    load_block(a, &mut sh, local_row0, k0, w1, n);
    sync_cube();
    factor_invert_block(&mut sh, &mut xd, fail, w1, k0, slot);
    store_block(&sh, a, local_row0, k0, w1, n);
    if w > 64 {
        let w2 = w - 64;
        let k1 = k0 + 64;
        let r1 = local_row0 + 64;
        // U12(c, r) = L21(r, c) = Σ_{p<=c} A21(r, p)·X11(c, p); sh holds X11ᵀ, so lanes
        // (consecutive c) read consecutive words, and A21(r, p) is one broadcast load.
        for q in 0..16u32 {
            let idx = t + q * CUBE;
            let r = idx / 64;
            let c = idx % 64;
            if r < w2 {
                let mut s = 0.0f32;
                for p in 0..c + 1 {
                    s += a[((r1 + r) * n + k0 + p) as usize] * sh[(p * 64 + c) as usize];
                }
                a[((local_row0 + c) * n + k1 + r) as usize] = s;
            }
        }
        sync_storage();
        sync_cube();
        // A22 − L21 L21ᵀ: entry (i, j) subtracts Σ_p U12(p, i)·U12(p, j).
        load_block(a, &mut sh, r1, k1, w2, n);
        for q in 0..16u32 {
            let idx = t + q * CUBE;
            let i = idx / 64;
            let j = idx % 64;
            if i < w2 && j <= i {
                let mut s = 0.0f32;
                for p in 0..64u32 {
                    let row = (local_row0 + p) * n + k1;
                    s += a[(row + i) as usize] * a[(row + j) as usize];
                }
                sh[idx as usize] -= s;
            }
        }
        sync_cube();
        factor_invert_block(&mut sh, &mut xd, fail, w2, k1, slot);
        store_block(&sh, a, r1, k1, w2, n);
        // T(r, c) = Σ_{p>=c} U12(p, r)·X11(p, c) over A21; X11 is read back from A11.
        for q in 0..16u32 {
            let idx = t + q * CUBE;
            let r = idx / 64;
            let c = idx % 64;
            if r < w2 {
                let mut s = 0.0f32;
                for p in c..64u32 {
                    let row = (local_row0 + p) * n;
                    s += a[(row + k1 + r) as usize] * a[(row + k0 + c) as usize];
                }
                a[((r1 + r) * n + k0 + c) as usize] = s;
            }
        }
        sync_storage();
        sync_cube();
        // X21(r, c) = −Σ_{q<=r} X22(r, q)·T(q, c), X22(r, q) = sh[q·64 + r] broadcast, T's
        // rows read along c, into U12 (read no more) transposed; then moved to A21, so no
        // thread holds its outputs across a barrier.
        for q in 0..16u32 {
            let idx = t + q * CUBE;
            let r = idx / 64;
            let c = idx % 64;
            if r < w2 {
                let mut s = 0.0f32;
                for p in 0..r + 1 {
                    s += sh[(p * 64 + r) as usize] * a[((r1 + p) * n + k0 + c) as usize];
                }
                a[((local_row0 + c) * n + k1 + r) as usize] = -s;
            }
        }
        sync_storage();
        sync_cube();
        for q in 0..16u32 {
            let idx = t + q * CUBE;
            let r = idx / 64;
            let c = idx % 64;
            if r < w2 {
                let u12 = ((local_row0 + c) * n + k1 + r) as usize;
                a[((r1 + r) * n + k0 + c) as usize] = a[u12];
            }
        }
    }
}

/// X's diagonal nb x nb blocks, lower triangles, from A's (where the Cholesky left L_kk⁻¹),
/// for the `rows` rows of one slab starting at global row `row0` (a multiple of nb).
#[cube(launch_unchecked)]
fn diag_blocks_kernel(a: &Array<f32>, x: &mut Array<f32>, row0: u32, rows: u32, n: u32, nb: u32) {
    let idx = ABSOLUTE_POS as u32;
    if idx < rows * nb {
        let i = idx / nb;
        let j = (row0 + i) / nb * nb + idx % nb;
        if j <= row0 + i {
            let at = (i * n + j) as usize;
            x[at] = a[at];
        }
    }
}

pub fn hinv_factor<R: Runtime>(
    b: &CubeBackend<R>,
    h: &CubeTensor,
    percdamp: f64,
) -> Result<HinvFactor<CubeTensor>> {
    check::same("Hessian", h.shape(), (h.cols, h.cols))?;
    if !(percdamp >= 0.0 && percdamp.is_finite()) {
        return Err(KernelError::InvalidArgument(format!(
            "percdamp {percdamp} must be a finite non-negative number"
        )));
    }
    let n = h.cols;
    if n == 0 {
        return Ok(HinvFactor {
            u: b.alloc_tensor(0, 0)?,
            dead: Vec::new(),
            damp: 0.0,
        });
    }
    check_shared(b)?;
    // Working set beyond H: the factor (returned as U) and the inverse, plus thin panels.
    b.check_memory(
        &format!("the inverse-Hessian factor of a {n}x{n} Hessian"),
        2 * f32_bytes(n, n),
    )?;
    if let Some((row, col)) = first_nonfinite(b, h)? {
        return Err(KernelError::NonFinite {
            what: "Hessian".into(),
            row,
            col,
        });
    }

    // Dead columns and the damping: the diagonal, its sum on the device, the flags read back.
    let d = b.scratch(n)?;
    let dead_flags = b.scratch(n)?;
    for s in 0..h.handles.len() {
        let (r0, rn) = h.slabs.range(s);
        // SAFETY: one thread per row of the slab, reading its diagonal element.
        unsafe {
            diag_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(rn, BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(&h.handles[s], h.slab_len(s)),
                arg(&d, n),
                arg(&dead_flags, n),
                r0 as u32,
                rn as u32,
                n as u32,
            );
        }
    }
    let diag_sum = sum(b, &d, n)?;
    let dead: Vec<usize> = b
        .read_u32(&dead_flags, n)?
        .iter()
        .enumerate()
        .filter_map(|(j, &f)| (f != 0).then_some(j))
        .collect();
    let damp = percdamp * diag_sum / n as f64;

    // A = J (H + λI) J, lower triangle used.
    let a = b.alloc_tensor(n, n)?;
    reverse(b, h, &a, Some((&d, damp as f32)));

    // Blocked Cholesky of A in place.
    let fail = b.scratch_from(&[u32::MAX])?;
    cholesky_in_place(b, &a, &fail, 1, 0)?;
    let failed = b.read_u32(&fail, 1)?[0];
    if failed != u32::MAX {
        // The elimination ran on the reversed matrix: name the column of H itself.
        return Err(KernelError::NotPositiveDefinite {
            column: n - 1 - failed as usize,
        });
    }
    // X = L⁻¹; its strict upper triangle stays zero.
    let x = invert_lower(b, &a)?;

    // U = J X J into A's storage.
    reverse(b, &x, &a, None);
    if let Some((_, col)) = first_nonfinite(b, &a)? {
        // Finite pivots can still give an inverse that overflows f32.
        return Err(KernelError::NotPositiveDefinite { column: col });
    }
    Ok(HinvFactor { u: a, dead, damp })
}

/// The Cholesky block kernel holds a 64x64 block and its diagonal inverse in shared memory
/// (the 128-wide blocks too: their second 64-block's update goes through global memory).
fn check_shared<R: Runtime>(b: &CubeBackend<R>) -> Result<()> {
    let shared = 4 * (NB * NB + NB);
    if shared > b.max_shared {
        return Err(KernelError::Unsupported(format!(
            "the Cholesky block kernel needs {shared} bytes of shared memory, the device has {}",
            b.max_shared
        )));
    }
    Ok(())
}

/// The blocked right-looking Cholesky A = L Lᵀ of the lower triangle of `a` (n x n, any
/// slabs), in place, the steps of [`cholesky_steps`]: below its diagonal blocks (`block_width`) `a`
/// holds L, and on their lower triangles their inverses L_kk⁻¹ (scratch above), which
/// [`invert_lower`] starts from. The strict upper triangle elsewhere is neither read nor
/// written. The first column whose pivot is not positive and finite is recorded in
/// `fail[slot]` (atomic min, so the caller initialises it to `u32::MAX`) and the elimination
/// goes on with a pivot of 1, so that nothing turns NaN and the caller can read the flag once,
/// after all its work.
pub fn cholesky_in_place<R: Runtime>(
    b: &CubeBackend<R>,
    a: &CubeTensor,
    fail: &Handle,
    fail_len: usize,
    slot: usize,
) -> Result<()> {
    check_shared(b)?;
    let n = a.cols;
    let view = |row: usize, col: usize| block_view(a, row, col);
    for step in cholesky_steps(n, &a.slabs, block_width(&a.slabs)) {
        match step {
            CholStep::Diag { k0, w } => {
                let (s, local) = a.slabs.locate(k0);
                // SAFETY: one cube reads and writes the w x w block at (k0, k0), inside slab s
                // since slabs are multiples of the block width (`block_width`).
                unsafe {
                    chol_block_kernel::launch_unchecked::<R>(
                        &b.client,
                        CubeCount::Static(1, 1, 1),
                        CubeDim::new_1d(CUBE),
                        arg(&a.handles[s], a.slab_len(s)),
                        arg(fail, fail_len),
                        local as u32,
                        k0 as u32,
                        w as u32,
                        n as u32,
                        slot as u32,
                    );
                }
            }
            CholStep::Panel { k0, w, pieces } => {
                // A chunk of A21 = A21·L_kk⁻ᵀ in place: each cube reads the rows it writes,
                // the chunk's columns and those left of it (not written by this launch), all
                // before its epilogue.
                let r1 = k0 + w;
                for pc in pieces {
                    let mut dinv = view(k0 + pc.n.0, k0 + pc.k.0);
                    dinv.trans = true;
                    let a21 = view(r1 + pc.m.0, k0 + pc.k.0);
                    let c = view(r1 + pc.m.0, k0 + pc.n.0);
                    gemm(b, &piece(&pc, a21, dinv, c, 1.0));
                }
            }
            CholStep::Syrk { c0, d0, pieces, .. } => {
                for pc in pieces {
                    let mut bt = view(c0 + pc.n.0, d0 + pc.k.0);
                    bt.trans = true;
                    let mut g = piece(
                        &pc,
                        view(c0 + pc.m.0, d0 + pc.k.0),
                        bt,
                        view(c0 + pc.m.0, c0 + pc.n.0),
                        -1.0,
                    );
                    g.beta = Some(1.0);
                    g.lower = Some(pc.m.0 as i64 - pc.n.0 as i64);
                    gemm(b, &g);
                }
            }
        }
    }
    Ok(())
}

/// Element (row, col) of an n x n tensor as the corner of a row-major view.
fn block_view(t: &CubeTensor, row: usize, col: usize) -> View<'_> {
    let (s, local) = t.slabs.locate(row);
    View::rows(&t.handles[s], t.slab_len(s), local * t.cols + col, t.cols)
}

/// The launch of one planned piece: C = alpha·A·B (C not read) over its ranges, the views
/// already at the piece's corner.
fn piece<'a>(pc: &GemmPiece, a: View<'a>, bm: View<'a>, c: View<'a>, alpha: f32) -> Gemm<'a> {
    Gemm {
        alpha,
        ..Gemm::store(pc.m.1 - pc.m.0, pc.n.1 - pc.n.0, pc.k.1 - pc.k.0, a, bm, c)
    }
}

/// X = L⁻¹ for `a` as [`cholesky_in_place`] leaves it, by the doubling of [`inverse_levels`]:
/// X is a new n x n tensor, lower triangular with exact zeros above the diagonal; each pair's
/// T = L21·X11 is kept, transposed, in `a`'s upper triangle, which nothing else reads.
pub fn invert_lower<R: Runtime>(b: &CubeBackend<R>, a: &CubeTensor) -> Result<CubeTensor> {
    let n = a.cols;
    let nb = block_width(&a.slabs);
    let x = b.filled_tensor(n, n, 0.0)?;
    for s in 0..x.handles.len() {
        let (r0, rn) = x.slabs.range(s);
        if rn == 0 {
            continue;
        }
        // SAFETY: one thread per element of the slab's rows' diagonal blocks; a and x are
        // cut alike (one shape, one backend).
        unsafe {
            diag_blocks_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(rn * nb, BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(&a.handles[s], a.slab_len(s)),
                arg(&x.handles[s], x.slab_len(s)),
                r0 as u32,
                rn as u32,
                n as u32,
                nb as u32,
            );
        }
    }
    for runs in inverse_levels(n, &a.slabs, nb) {
        for run in &runs {
            pair_products(b, a, &x, run);
        }
    }
    Ok(x)
}

/// T = L21·X11 (into `a`'s upper block of the pair, transposed), then X21 = −X22·T, for the
/// run's pairs in one launch each.
fn pair_products<R: Runtime>(b: &CubeBackend<R>, a: &CubeTensor, x: &CubeTensor, run: &PairRun) {
    let n = a.cols;
    let (r, s) = (run.r0, run.r0 + run.half);
    let view = block_view;
    let stride = run.stride(n);
    let batch = Batched {
        count: run.count,
        stride: [stride; 3],
    };
    for pc in &run.t_pieces {
        let mut g = piece(
            pc,
            view(a, s + pc.m.0, r + pc.k.0),
            view(x, r + pc.k.0, r + pc.n.0),
            view(a, r + pc.n.0, s + pc.m.0),
            1.0,
        );
        g.b_lower = Some(pc.k.0 as i64 - pc.n.0 as i64);
        g.c_trans = true;
        g.beta = (!pc.first).then_some(1.0);
        g.batch = batch;
        gemm(b, &g);
    }
    for pc in &run.x_pieces {
        let mut bt = view(a, r + pc.n.0, s + pc.k.0);
        bt.trans = true;
        let mut g = piece(
            pc,
            view(x, s + pc.m.0, s + pc.k.0),
            bt,
            view(x, s + pc.m.0, r + pc.n.0),
            -1.0,
        );
        g.a_lower = Some(pc.m.0 as i64 - pc.k.0 as i64);
        g.beta = (!pc.first).then_some(1.0);
        g.batch = batch;
        gemm(b, &g);
    }
}

/// dst = J src J for n x n matrices with any slabs: with `prep = Some((d, λ))` the damped,
/// dead-fixed diagonal is written; with `None` only the upper triangle (zeros below).
fn reverse<R: Runtime>(
    b: &CubeBackend<R>,
    src: &CubeTensor,
    dst: &CubeTensor,
    prep: Option<(&cubecl::server::Handle, f32)>,
) {
    let n = src.cols;
    for ds in 0..dst.handles.len() {
        let (d0, dn) = dst.slabs.range(ds);
        if dn == 0 {
            continue;
        }
        // Destination rows [d0, d0+dn) read source rows [n−d0−dn, n−d0).
        for (ss, lo, hi) in src.slabs.covering(n - d0 - dn, n - d0) {
            let first = n - hi;
            let cnt = hi - lo;
            let (dh, lambda) = prep.unwrap_or((&src.handles[ss], 0.0));
            // SAFETY: destination rows [first, first+cnt) lie in slab ds and their reversed
            // sources [lo, hi) in slab ss; one thread per element.
            unsafe {
                reverse_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.grid(cnt * n, BLOCK),
                    CubeDim::new_1d(BLOCK),
                    arg(&src.handles[ss], src.slab_len(ss)),
                    arg(&dst.handles[ds], dst.slab_len(ds)),
                    arg(dh, if prep.is_some() { n } else { src.slab_len(ss) }),
                    n as u32,
                    first as u32,
                    cnt as u32,
                    d0 as u32,
                    src.slabs.range(ss).0 as u32,
                    lambda,
                    prep.is_some(),
                );
            }
        }
    }
}
