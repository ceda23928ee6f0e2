//! The damped inverse-Hessian factor of §6, all on the device, by the direct route:
//! with J the reversal permutation, factor A = J(H + λI)J = L Lᵀ (blocked right-looking
//! Cholesky), then H + λI = R Rᵀ with R = J L J upper triangular, so
//! (H + λI)⁻¹ = R⁻ᵀ R⁻¹ and U = R⁻¹ = J L⁻¹ J is exactly the upper Cholesky factor the
//! reference reaches through cholesky → cholesky_inverse → cholesky (both are the unique upper
//! triangular factor with a positive diagonal). Two n³/3 steps instead of four.
//!
//! Cholesky, per 64-column block: one cube factors the diagonal block in shared memory and
//! inverts it (a non-positive pivot is recorded in a flag, replaced by 1 so nothing turns NaN,
//! and reported as `NotPositiveDefinite` at the end); the panel is L21 = A21·L11⁻ᵀ on the tiled
//! GEMM; the trailing update A22 −= L21·L21ᵀ is the GEMM in lower-triangle (SYRK) mode.
//! Triangular inverse, per 64-row block i: X_i,<i = −L_ii⁻¹ · (L_i,<i · X_<i,<i), two GEMMs
//! (the first skips the zero upper triangle of X), with L_ii⁻¹ kept from the Cholesky.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, f32_bytes, CubeTensor};
use super::super::CubeBackend;
use super::copy::{copy2d, first_nonfinite, Rect};
use super::fill::BLOCK;
use super::gemm::{gemm, Gemm, View, EPI_STORE};
use super::reduce::{sum, CUBE};
use crate::error::{KernelError, Result};
use crate::ops::{check, HinvFactor};

/// The Cholesky and inverse block size (also the slab row alignment).
const NB: usize = 64;

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

/// Factors the 64 x 64 diagonal block at (k0, k0) in shared memory (rows past `w` padded with
/// the identity), writes L11 back and L11⁻¹ to `dinv` block `kb`. Pivots that are not positive
/// and finite record their column in `fail[slot]` (atomic min) and continue as 1.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn chol_block_kernel(
    a: &mut Array<f32>,
    dinv: &mut Array<f32>,
    fail: &mut Array<Atomic<u32>>,
    local_row0: u32,
    k0: u32,
    w: u32,
    n: u32,
    kb: u32,
    slot: u32,
) {
    let t = UNIT_POS;
    let mut sh = SharedMemory::<f32>::new(4096usize);
    let mut xd = SharedMemory::<f32>::new(64usize);
    #[unroll]
    for q in 0..16u32 {
        let idx = t + q * CUBE;
        let i = idx / 64;
        let j = idx % 64;
        let mut v = 0.0f32;
        if i < w && j < w {
            if j <= i {
                v = a[((local_row0 + i) * n + k0 + j) as usize];
            }
        } else if i == j {
            v = 1.0;
        }
        sh[idx as usize] = v;
    }
    sync_cube();
    for j in 0..64u32 {
        if t == 0 {
            let mut d = sh[(j * 65) as usize];
            if !(d > 0.0 && d <= 3.4e38) {
                if j < w {
                    fail[slot as usize].fetch_min(k0 + j);
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
    #[unroll]
    for q in 0..16u32 {
        let idx = t + q * CUBE;
        let i = idx / 64;
        let j = idx % 64;
        if i < w && j <= i {
            a[((local_row0 + i) * n + k0 + j) as usize] = sh[idx as usize];
        }
    }
    // Column t of L11⁻¹ by forward substitution; x[k][t] for k > t lives in row t's upper
    // part of `sh` (never read as L), x[t][t] in xd.
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
        let mut v = 0.0f32;
        if i > j {
            v = sh[(j * 64 + i) as usize];
        } else if i == j {
            v = xd[i as usize];
        }
        dinv[(kb * 4096 + idx) as usize] = v;
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
        2 * f32_bytes(n, n) + f32_bytes(n, 4 * NB),
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
    let dinv = cholesky_in_place(b, &a, &fail, 1, 0)?;
    let failed = b.read_u32(&fail, 1)?[0];
    if failed != u32::MAX {
        // The elimination ran on the reversed matrix: name the column of H itself.
        return Err(KernelError::NotPositiveDefinite {
            column: n - 1 - failed as usize,
        });
    }
    // X = L⁻¹; its strict upper triangle stays zero.
    let x = invert_lower(b, &a, &dinv)?;

    // U = J X J into A's storage.
    reverse(b, &x, &a, None);
    if let Some((_, col)) = first_nonfinite(b, &a)? {
        // Finite pivots can still give an inverse that overflows f32.
        return Err(KernelError::NotPositiveDefinite { column: col });
    }
    Ok(HinvFactor { u: a, dead, damp })
}

/// The Cholesky block kernel holds a 64x64 block and its diagonal inverse in shared memory.
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
/// slabs), in place; the strict upper triangle is neither read nor written. The first column
/// whose pivot is not positive and finite is recorded in `fail[slot]` (atomic min, so the
/// caller initialises it to `u32::MAX`) and the elimination goes on with a pivot of 1, so that
/// nothing turns NaN and the caller can read the flag once, after all its work. Returns the
/// inverses of the 64 x 64 diagonal blocks of L, which [`invert_lower`] reuses.
pub fn cholesky_in_place<R: Runtime>(
    b: &CubeBackend<R>,
    a: &CubeTensor,
    fail: &Handle,
    fail_len: usize,
    slot: usize,
) -> Result<Handle> {
    check_shared(b)?;
    let n = a.cols;
    let nblocks = n.div_ceil(NB);
    let dinv = b.scratch(nblocks * NB * NB)?;
    let panel = b.scratch(n * NB)?;
    for kb in 0..nblocks {
        let k0 = kb * NB;
        let k1 = (k0 + NB).min(n);
        let w = k1 - k0;
        let (s, local) = a.slabs.locate(k0);
        // SAFETY: one cube reads and writes the w x w block at (k0, k0), inside slab s since
        // slabs are multiples of 64 rows, and writes dinv block kb.
        unsafe {
            chol_block_kernel::launch_unchecked::<R>(
                &b.client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(CUBE),
                arg(&a.handles[s], a.slab_len(s)),
                arg(&dinv, nblocks * NB * NB),
                arg(fail, fail_len),
                local as u32,
                k0 as u32,
                w as u32,
                n as u32,
                kb as u32,
                slot as u32,
            );
        }
        if k1 == n {
            break;
        }
        let below = a.slabs.covering(k1, n);
        // Panel P = A21 · L11⁻ᵀ (rows k1.., NB wide, contiguous), then copied into A21.
        for &(s, lo, hi) in &below {
            let local = lo - a.slabs.range(s).0;
            gemm(
                b,
                &Gemm {
                    m: hi - lo,
                    n: w,
                    k: w,
                    a: View::rows(&a.handles[s], a.slab_len(s), local * n + k0, n),
                    b: View::transposed(&dinv, nblocks * NB * NB, kb * NB * NB, NB),
                    c: View::rows(&panel, n * NB, (lo - k1) * NB, NB),
                    alpha: 1.0,
                    beta: None,
                    lower: None,
                    b_lower: None,
                    epi: EPI_STORE,
                    dot: None,
                },
            );
        }
        for &(s, lo, hi) in &below {
            let local = lo - a.slabs.range(s).0;
            copy2d(
                b,
                Rect {
                    h: &panel,
                    len: n * NB,
                    off: (lo - k1) * NB,
                    ld: NB,
                },
                Rect {
                    h: &a.handles[s],
                    len: a.slab_len(s),
                    off: local * n + k0,
                    ld: n,
                },
                hi - lo,
                w,
            );
        }
        // Trailing update A22 −= P·Pᵀ on the lower triangle.
        for &(s, lo, hi) in &below {
            let local = lo - a.slabs.range(s).0;
            gemm(
                b,
                &Gemm {
                    m: hi - lo,
                    n: hi - k1,
                    k: w,
                    a: View::rows(&panel, n * NB, (lo - k1) * NB, NB),
                    b: View::transposed(&panel, n * NB, 0, NB),
                    c: View::rows(&a.handles[s], a.slab_len(s), local * n + k1, n),
                    alpha: -1.0,
                    beta: Some(1.0),
                    lower: Some((lo - k1) as i64),
                    b_lower: None,
                    epi: EPI_STORE,
                    dot: None,
                },
            );
        }
    }
    Ok(dinv)
}

/// X = L⁻¹ for the lower triangular L in `a` after [`cholesky_in_place`] (its strict upper
/// triangle is not read), from the diagonal-block inverses `dinv` it returned. X is a new
/// n x n tensor, lower triangular with exact zeros above the diagonal.
pub fn invert_lower<R: Runtime>(
    b: &CubeBackend<R>,
    a: &CubeTensor,
    dinv: &Handle,
) -> Result<CubeTensor> {
    let n = a.cols;
    let nblocks = n.div_ceil(NB);
    // X = L⁻¹, block row by block row; its strict upper triangle stays zero.
    let x = b.filled_tensor(n, n, 0.0)?;
    let tmp = b.scratch(NB * n)?;
    for kb in 0..nblocks {
        let r0 = kb * NB;
        let w = (r0 + NB).min(n) - r0;
        let (xs, xlocal) = x.slabs.locate(r0);
        copy2d(
            b,
            Rect {
                h: dinv,
                len: nblocks * NB * NB,
                off: kb * NB * NB,
                ld: NB,
            },
            Rect {
                h: &x.handles[xs],
                len: x.slab_len(xs),
                off: xlocal * n + r0,
                ld: n,
            },
            w,
            w,
        );
        if kb == 0 {
            continue;
        }
        let (as_, alocal) = a.slabs.locate(r0);
        // T = L[r0.., :r0] · X[:r0, :r0], K split by the slabs of X; X is lower triangular.
        for (i, (s, lo, hi)) in x.slabs.covering(0, r0).into_iter().enumerate() {
            let slocal = lo - x.slabs.range(s).0;
            gemm(
                b,
                &Gemm {
                    m: w,
                    n: r0,
                    k: hi - lo,
                    a: View::rows(&a.handles[as_], a.slab_len(as_), alocal * n + lo, n),
                    b: View::rows(&x.handles[s], x.slab_len(s), slocal * n, n),
                    c: View::rows(&tmp, NB * n, 0, n),
                    alpha: 1.0,
                    beta: if i == 0 { None } else { Some(1.0) },
                    lower: None,
                    b_lower: Some(lo as i64),
                    epi: EPI_STORE,
                    dot: None,
                },
            );
        }
        // X[r0.., :r0] = −L_ii⁻¹ · T.
        gemm(
            b,
            &Gemm {
                m: w,
                n: r0,
                k: w,
                a: View::rows(dinv, nblocks * NB * NB, kb * NB * NB, NB),
                b: View::rows(&tmp, NB * n, 0, n),
                c: View::rows(&x.handles[xs], x.slab_len(xs), xlocal * n, n),
                alpha: -1.0,
                beta: None,
                lower: None,
                b_lower: None,
                epi: EPI_STORE,
                dot: None,
            },
        );
    }
    Ok(x)
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
