//! Dense f64 linear algebra for the reference: GEMM through `matrixmultiply` (packed, threaded,
//! far faster than loops we would write), and a blocked Cholesky and triangular inverse built
//! on it. Matrices are row-major slices.

use rayon::prelude::*;

use crate::error::{KernelError, Result};

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
    assert!(view_fits(a.len(), av, m, k) && view_fits(b.len(), bv, k, n));
    assert!(view_fits(c.len(), cv, m, n));
    // SAFETY: the views were checked to lie inside their slices; `c` is borrowed mutably and
    // so cannot alias `a` or `b`.
    unsafe {
        matrixmultiply::dgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr().add(av.offset),
            av.rs as isize,
            av.cs as isize,
            b.as_ptr().add(bv.offset),
            bv.rs as isize,
            bv.cs as isize,
            beta,
            c.as_mut_ptr().add(cv.offset),
            cv.rs as isize,
            cv.cs as isize,
        );
    }
}

fn view_fits(len: usize, v: View, rows: usize, cols: usize) -> bool {
    rows == 0 || cols == 0 || v.offset + (rows - 1) * v.rs + (cols - 1) * v.cs < len
}

const CHOLESKY_BLOCK: usize = 64;

/// In-place lower Cholesky factor of the symmetric positive definite `n x n` matrix in `a`
/// (only its lower triangle is read). The strict upper triangle is zeroed on return.
/// Fails with the first column whose pivot is not positive.
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<()> {
    assert_eq!(a.len(), n * n);
    for k0 in (0..n).step_by(CHOLESKY_BLOCK) {
        let k1 = (k0 + CHOLESKY_BLOCK).min(n);
        // Diagonal block: earlier blocks' updates are already applied, so sums start at k0.
        for j in k0..k1 {
            let rj = j * n;
            let d = a[rj + j] - dot(&a[rj + k0..rj + j], &a[rj + k0..rj + j]);
            if !(d > 0.0 && d.is_finite()) {
                return Err(KernelError::NotPositiveDefinite { column: j });
            }
            let djj = d.sqrt();
            a[rj + j] = djj;
            for i in j + 1..k1 {
                let ri = i * n;
                let s = dot(&a[ri + k0..ri + j], &a[rj + k0..rj + j]);
                a[ri + j] = (a[ri + j] - s) / djj;
            }
        }
        if k1 == n {
            break;
        }
        // Panel below the block: L21 = A21 · L11⁻ᵀ, one independent forward solve per row.
        let (top, bottom) = a.split_at_mut(k1 * n);
        let top = &*top;
        bottom.par_chunks_mut(n).for_each(|row| {
            for j in k0..k1 {
                let rj = j * n;
                let s = dot(&row[k0..j], &top[rj + k0..rj + j]);
                row[j] = (row[j] - s) / top[rj + j];
            }
        });
        // Trailing update A22 ← A22 − L21·L21ᵀ. L21 and A22 share `bottom` but not elements,
        // so copy the thin panel out to keep the GEMM operands in separate slices.
        let m = n - k1;
        let kb = k1 - k0;
        let panel: Vec<f64> = bottom
            .chunks(n)
            .flat_map(|row| row[k0..k1].iter().copied())
            .collect();
        gemm(
            m,
            kb,
            m,
            -1.0,
            &panel,
            View::rows(0, kb),
            &panel,
            View::transposed(0, kb),
            1.0,
            bottom,
            View::rows(k1, n),
        );
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(())
}

/// (L Lᵀ)⁻¹ from a lower Cholesky factor L (torch.cholesky_inverse): invert L by one forward
/// solve per column, then multiply the inverse by its transpose.
pub fn cholesky_inverse(l: &[f64], n: usize) -> Vec<f64> {
    // Row j of `t` is column j of L⁻¹, so each solve writes one contiguous row.
    let mut t = vec![0.0; n * n];
    t.par_chunks_mut(n).enumerate().for_each(|(j, x)| {
        x[j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let ri = i * n;
            let s = dot(&l[ri + j..ri + i], &x[j..i]);
            x[i] = -s / l[ri + i];
        }
    });
    // (L Lᵀ)⁻¹ = L⁻ᵀ L⁻¹, and (L⁻ᵀ L⁻¹)[a][b] = Σ_i t[a][i]·t[b][i] = (t tᵀ)[a][b].
    let mut inv = vec![0.0; n * n];
    gemm(
        n,
        n,
        n,
        1.0,
        &t,
        View::rows(0, n),
        &t,
        View::transposed(0, n),
        0.0,
        &mut inv,
        View::rows(0, n),
    );
    inv
}

pub fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = a[r * cols + c];
        }
    }
    t
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four partial sums let the compiler vectorise without reassociation licence.
    let mut acc = [0.0f64; 4];
    let chunks = a.len() / 4;
    for i in 0..chunks {
        for l in 0..4 {
            acc[l] += a[4 * i + l] * b[4 * i + l];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for i in 4 * chunks..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let mut r = Rng::new(seed);
        let x: Vec<f64> = (0..n * (n + 3)).map(|_| r.normal()).collect();
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

    #[test]
    fn cholesky_reconstructs_across_block_edges() {
        for n in [1, 5, 64, 65, 131] {
            let h = spd(n, n as u64);
            let mut l = h.clone();
            cholesky_lower(&mut l, n).unwrap();
            for i in 0..n {
                for j in 0..n {
                    let v: f64 = (0..n).map(|p| l[i * n + p] * l[j * n + p]).sum();
                    assert!((v - h[i * n + j]).abs() < 1e-9 * h[i * n + i].abs().max(1.0));
                }
            }
        }
    }

    #[test]
    fn cholesky_inverse_is_inverse() {
        let n = 70;
        let h = spd(n, 9);
        let mut l = h.clone();
        cholesky_lower(&mut l, n).unwrap();
        let inv = cholesky_inverse(&l, n);
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..n).map(|p| h[i * n + p] * inv[p * n + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-8, "({i},{j}) {v}");
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
    }
}
