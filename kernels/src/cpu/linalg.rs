//! Dense f64 linear algebra for the reference, through `faer`. Matrices are row-major slices.
//!
//! Why faer: the reference verifies every GPU result, and at LLaMA sizes verification waits on
//! these few ops. With our own blocked Cholesky and column-by-column triangular inverse on
//! `matrixmultiply`, the factor took 1.7x and the error 1.9x numpy's time on OpenBLAS at
//! LLaMA-7B shapes (docs/PERFORMANCE.md); faer (pure Rust, so no system BLAS to find or link,
//! and well kept) has a packed, runtime-dispatched SIMD GEMM (AVX-512 where the CPU has it)
//! and recursive Cholesky and triangular inversion built on it, on rayon's pool as the rest of
//! the reference. What the reference means by each op (which triangle is read, which pivot fails,
//! how the factor is formed) stays here, written out; faer only does the arithmetic.
//!
//! faer is fastest on column-major data. A row-major buffer read column-major is the
//! transpose, and a row-major buffer *reversed* (`rev`) read column-major is J·Aᵀ·J, J the
//! reversal permutation: the functions below use these two identities so that faer always
//! sees column-major operands and the result lands row-major, at the price of a pass over
//! the data (n², against the n³ of the op).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{
    cholesky_in_place, cholesky_in_place_scratch, LltError, LltRegularization,
};
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::reborrow::ReborrowMut;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::error::{KernelError, Result};

/// All of rayon's threads, as everything else in the reference.
fn par() -> Par {
    Par::rayon(0)
}

/// A strided view for GEMM operands: element (i, j) is at `offset + i*rs + j*cs`.
#[derive(Clone, Copy)]
pub struct View {
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl View {
    pub fn rows(offset: usize, stride: usize) -> Self {
        Self {
            offset,
            rs: stride,
            cs: 1,
        }
    }
    pub fn transposed(offset: usize, stride: usize) -> Self {
        Self {
            offset,
            rs: 1,
            cs: stride,
        }
    }
}

fn view_fits(len: usize, v: View, rows: usize, cols: usize) -> bool {
    rows == 0 || cols == 0 || v.offset + (rows - 1) * v.rs + (cols - 1) * v.cs < len
}

fn mat_ref(s: &[f64], v: View, rows: usize, cols: usize) -> MatRef<'_, f64> {
    assert!(view_fits(s.len(), v, rows, cols));
    // SAFETY: the view was checked to lie inside `s`, which outlives the returned borrow.
    unsafe {
        MatRef::from_raw_parts(
            s.as_ptr().add(v.offset),
            rows,
            cols,
            v.rs as isize,
            v.cs as isize,
        )
    }
}

/// A mutable view whose elements do not overlap: GEMM views are rows (`cs == 1`, `rs >=
/// cols`) or their transpose.
fn mat_mut(s: &mut [f64], v: View, rows: usize, cols: usize) -> MatMut<'_, f64> {
    assert!(view_fits(s.len(), v, rows, cols));
    assert!(
        rows <= 1 || cols <= 1 || (v.cs == 1 && v.rs >= cols) || (v.rs == 1 && v.cs >= rows),
        "an output view must not overlap itself"
    );
    // SAFETY: inside `s` (checked), elements distinct (checked), and `s` is borrowed
    // mutably for the returned lifetime.
    unsafe {
        MatMut::from_raw_parts_mut(
            s.as_mut_ptr().add(v.offset),
            rows,
            cols,
            v.rs as isize,
            v.cs as isize,
        )
    }
}

/// C ← alpha·A·B + beta·C with A m x k, B k x n, C m x n, all from separate slices.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f64,
    a: &[f64],
    av: View,
    b: &[f64],
    bv: View,
    beta: f64,
    c: &mut [f64],
    cv: View,
) {
    if m == 0 || n == 0 {
        return;
    }
    let a = mat_ref(a, av, m, k);
    let b = mat_ref(b, bv, k, n);
    let mut c = mat_mut(c, cv, m, n);
    let accum = scale_for_accumulate(c.rb_mut(), beta);
    faer::linalg::matmul::matmul(c, accum, a, b, alpha, par());
}

/// Applies beta to C ahead of faer's C ← A·B (Replace) or C ← C + A·B (Add). beta = 0
/// replaces, so whatever C held (NaN included) is not read, as BLAS does.
fn scale_for_accumulate(mut c: MatMut<'_, f64>, beta: f64) -> Accum {
    if beta == 0.0 {
        return Accum::Replace;
    }
    if beta != 1.0 {
        for j in 0..c.ncols() {
            for i in 0..c.nrows() {
                c[(i, j)] *= beta;
            }
        }
    }
    Accum::Add
}

/// H ← beta·H + alpha·XᵀX for the row-major `t x n` X and symmetric `n x n` H: one triangle is
/// computed (half the flops of a GEMM) and mirrored, so H is exactly symmetric.
pub fn gram_update(h: &mut [f64], n: usize, x: &[f64], t: usize, alpha: f64, beta: f64) {
    assert_eq!(h.len(), n * n);
    assert_eq!(x.len(), t * n);
    if n == 0 {
        return;
    }
    {
        // Column-major views: X row-major is Xᵀ column-major, and H symmetric is H either way.
        // The column-major lower triangle computed here is the row-major upper one.
        let xt = MatRef::from_column_major_slice(x, n, t);
        let mut hm = MatMut::from_column_major_slice_mut(h, n, n);
        let accum = scale_for_accumulate(hm.rb_mut(), beta);
        triangular::matmul(
            hm,
            BlockStructure::TriangularLower,
            accum,
            xt,
            BlockStructure::Rectangular,
            xt.transpose(),
            BlockStructure::Rectangular,
            alpha,
            par(),
        );
    }
    mirror(h, n, Triangle::Upper);
}

/// Tile edge for the n² passes: two 64 x 64 f64 tiles sit in L1.
const TILE: usize = 64;

/// A triangle of a row-major square matrix.
#[derive(Clone, Copy, PartialEq)]
pub enum Triangle {
    Lower,
    Upper,
}

/// Copies the strict `from` triangle of the row-major `n x n` `a` onto the other one.
pub fn mirror(a: &mut [f64], n: usize, from: Triangle) {
    for i0 in (0..n).step_by(TILE) {
        for j0 in (0..=i0).step_by(TILE) {
            for i in i0..(i0 + TILE).min(n) {
                for j in j0..(j0 + TILE).min(i) {
                    // (i, j) is in the strict lower triangle, (j, i) its mirror.
                    match from {
                        Triangle::Lower => a[j * n + i] = a[i * n + j],
                        Triangle::Upper => a[i * n + j] = a[j * n + i],
                    }
                }
            }
        }
    }
}

/// `dst = srcᵀ` for square `n x n` buffers, tile by tile so both sides stay in cache.
fn transpose_square(src: &[f64], dst: &mut [f64], n: usize) {
    dst.par_chunks_mut(TILE * n)
        .enumerate()
        .for_each(|(bi, rows)| {
            let i0 = bi * TILE;
            for j0 in (0..n).step_by(TILE) {
                for (di, row) in rows.chunks_mut(n).enumerate() {
                    let i = i0 + di;
                    for j in j0..(j0 + TILE).min(n) {
                        row[j] = src[j * n + i];
                    }
                }
            }
        });
}

/// Lower Cholesky in place of the column-major `n x n` buffer (only its lower triangle is
/// read; the strict upper is left as it was). Fails with the first column whose pivot is not
/// a positive finite number, as the reference always has: faer checks `!(d > 0)` and a
/// non-finite square root.
fn cholesky_col_major(a: &mut [f64], n: usize) -> std::result::Result<(), usize> {
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(
        n,
        par(),
        Default::default(),
    ));
    cholesky_in_place(
        MatMut::from_column_major_slice_mut(a, n, n),
        LltRegularization::default(),
        par(),
        MemStack::new(&mut mem),
        Default::default(),
    )
    .map(|_| ())
    .map_err(|LltError::NonPositivePivot { index }| index)
}

/// In-place lower Cholesky factor of the symmetric positive definite `n x n` matrix in `a`
/// (only its lower triangle is read). The strict upper triangle is zeroed on return.
/// Fails with the first column whose pivot is not positive.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<()> {
    assert_eq!(a.len(), n * n);
    // Row-major lower = column-major upper: mirror it so the column-major lower triangle
    // faer reads holds the same matrix, factor, and turn the column-major L back row-major.
    mirror(a, n, Triangle::Lower);
    cholesky_col_major(a, n).map_err(|column| KernelError::NotPositiveDefinite { column })?;
    let mut l = vec![0.0; n * n];
    transpose_square(a, &mut l, n);
    a.copy_from_slice(&l);
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(())
}

/// L⁻¹ of the row-major lower triangular `n x n` `l` (its strict upper triangle is not read),
/// row-major, zeros above the diagonal.
pub fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    assert_eq!(l.len(), n * n);
    // rev(l) read column-major is J Lᵀ J, lower triangular; its inverse J L⁻ᵀ J, reversed
    // back, is L⁻ᵀ column-major: L⁻¹ row-major.
    let src: Vec<f64> = l.iter().rev().copied().collect();
    let mut inv = vec![0.0; n * n];
    invert_lower_triangular(
        MatMut::from_column_major_slice_mut(&mut inv, n, n),
        MatRef::from_column_major_slice(&src, n, n),
        par(),
    );
    inv.reverse();
    inv
}

/// The upper Cholesky factor U of A⁻¹ (A⁻¹ = Uᵀ U) for the symmetric positive definite
/// row-major `a` (only its lower triangle is read), row-major with zeros below the diagonal:
/// ALGORITHMS.md §6's `cholesky`, `cholesky_inverse`, `cholesky(upper)` in one Cholesky and
/// one triangular inverse, as the GPU kernels do it. With J the reversal permutation, let
/// J A J = L Lᵀ (lower Cholesky). Then A = (J L J)(J L J)ᵀ, A⁻¹ = (J L⁻¹ J)ᵀ (J L⁻¹ J), and
/// U = J L⁻¹ J is upper triangular with a positive diagonal: the (unique) factor the spec
/// asks for, at half the flops of the three steps and without forming A⁻¹.
///
/// Fails with `Err(k)`, k the column of `a` at which the reversed elimination met a pivot
/// that is not positive (it runs from the last column down).
pub fn inverse_upper_cholesky(a: &[f64], n: usize) -> std::result::Result<Vec<f64>, usize> {
    assert_eq!(a.len(), n * n);
    // rev(a) read column-major is J Aᵀ J, whose lower triangle is J A J's (A symmetric)
    // built from A's lower triangle only.
    let mut l: Vec<f64> = a.iter().rev().copied().collect();
    cholesky_col_major(&mut l, n).map_err(|k| n - 1 - k)?;
    let mut linv = vec![0.0; n * n];
    invert_lower_triangular(
        MatMut::from_column_major_slice_mut(&mut linv, n, n),
        MatRef::from_column_major_slice(&l, n, n),
        par(),
    );
    // rev(L⁻¹ column-major) is J L⁻¹ J = U column-major; its transpose is U row-major.
    linv.reverse();
    transpose_square(&linv, &mut l, n);
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn normal(len: usize, seed: u64) -> Vec<f64> {
        let mut r = Rng::new(seed);
        (0..len).map(|_| r.normal()).collect()
    }

    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let x = normal(n * (n + 3), seed);
        let mut h = vec![0.0; n * n];
        gemm(
            n,
            n + 3,
            n,
            1.0,
            &x,
            View::rows(0, n + 3),
            &x,
            View::transposed(0, n + 3),
            0.0,
            &mut h,
            View::rows(0, n),
        );
        h
    }

    /// Garbage above the diagonal: the functions that read one triangle must not look there.
    fn spoil_upper(a: &mut [f64], n: usize) {
        for i in 0..n {
            for j in i + 1..n {
                a[i * n + j] = f64::NAN;
            }
        }
    }

    fn naive(m: usize, k: usize, n: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn gemm_matches_the_definition_with_alpha_beta_and_views() {
        let (m, k, n) = (37, 70, 51);
        let a = normal(m * k, 1);
        let b = normal(k * n, 2);
        let c0 = normal(m * n, 3);
        let ab = naive(m, k, n, &a, &b);
        let mut c = c0.clone();
        gemm(
            m,
            k,
            n,
            -0.5,
            &a,
            View::rows(0, k),
            &b,
            View::rows(0, n),
            2.0,
            &mut c,
            View::rows(0, n),
        );
        for i in 0..m * n {
            assert!((c[i] - (2.0 * c0[i] - 0.5 * ab[i])).abs() < 1e-12 * k as f64);
        }
        // Bᵀ read through a transposed view into the columns [3, 3+m) of a wider C; beta = 0
        // must not read C (NaN there).
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut wide = vec![f64::NAN; n * (m + 5)];
        gemm(
            n,
            k,
            m,
            1.0,
            &bt,
            View::rows(0, k),
            &a,
            View::transposed(0, k),
            0.0,
            &mut wide,
            View::rows(3, m + 5),
        );
        for i in 0..n {
            for j in 0..m {
                let want = ab[j * n + i];
                assert!((wide[i * (m + 5) + 3 + j] - want).abs() < 1e-12 * k as f64);
            }
        }
    }

    #[test]
    fn gram_update_is_symmetric_and_scaled() {
        let (t, n) = (9, 130);
        let x = normal(t * n, 4);
        let h0 = spd(n, 5);
        let mut h = h0.clone();
        gram_update(&mut h, n, &x, t, 0.25, 0.5);
        for i in 0..n {
            for j in 0..n {
                let xtx: f64 = (0..t).map(|r| x[r * n + i] * x[r * n + j]).sum();
                let want = 0.5 * h0[i * n + j] + 0.25 * xtx;
                assert!((h[i * n + j] - want).abs() < 1e-9, "({i},{j})");
                assert_eq!(h[i * n + j], h[j * n + i]);
            }
        }
    }

    #[test]
    fn cholesky_reconstructs_across_block_edges() {
        for n in [1, 5, 64, 65, 131, 300] {
            let h = spd(n, n as u64);
            let mut l = h.clone();
            spoil_upper(&mut l, n);
            cholesky_lower(&mut l, n).unwrap();
            for i in 0..n {
                assert!((i + 1..n).all(|j| l[i * n + j] == 0.0));
                for j in 0..n {
                    let v: f64 = (0..n).map(|p| l[i * n + p] * l[j * n + p]).sum();
                    assert!((v - h[i * n + j]).abs() < 1e-9 * h[i * n + i].abs().max(1.0));
                }
            }
        }
    }

    #[test]
    fn invert_lower_is_inverse() {
        let n = 170;
        let mut l = spd(n, 9);
        cholesky_lower(&mut l, n).unwrap();
        let mut spoiled = l.clone();
        spoil_upper(&mut spoiled, n);
        let inv = invert_lower(&spoiled, n);
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|p| l[i * n + p] * inv[p * n + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9, "({i},{j}) {v}");
                if j > i {
                    assert_eq!(inv[i * n + j], 0.0);
                }
            }
        }
    }

    #[test]
    fn inverse_upper_cholesky_factors_the_inverse() {
        for n in [1, 2, 70, 200] {
            let h = spd(n, 20 + n as u64);
            let mut a = h.clone();
            spoil_upper(&mut a, n);
            let u = inverse_upper_cholesky(&a, n).unwrap();
            // U upper with a positive diagonal and Uᵀ U H = I.
            for i in 0..n {
                assert!(u[i * n + i] > 0.0);
                assert!((0..i).all(|j| u[i * n + j] == 0.0));
            }
            for i in 0..n {
                for j in 0..n {
                    let v: f64 = (0..n)
                        .map(|k| {
                            let utu: f64 =
                                (0..=i.min(k)).map(|p| u[p * n + i] * u[p * n + k]).sum();
                            utu * h[k * n + j]
                        })
                        .sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((v - want).abs() < 1e-8, "n {n} ({i},{j}) {v}");
                }
            }
        }
    }

    #[test]
    fn cholesky_rejects_indefinite() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(matches!(
            cholesky_lower(&mut a, 2),
            Err(KernelError::NotPositiveDefinite { column: 1 })
        ));
        // Pivots fail deep inside a large matrix too, at the column where they fail.
        let n = 300;
        let mut h = spd(n, 7);
        for j in 0..n {
            h[250 * n + j] = 0.0;
            h[j * n + 250] = 0.0;
        }
        assert!(matches!(
            cholesky_lower(&mut h.clone(), n),
            Err(KernelError::NotPositiveDefinite { column: 250 })
        ));
        // The reversed elimination reaches column 250 from the other end, and names it.
        assert_eq!(inverse_upper_cholesky(&h, n), Err(250));
    }
}
