//! SparseGPT's blocked OBS prune (ALGORITHMS.md §7) as the reference runs it: rows are
//! independent inside a block, so each row runs the sequential column loop on its own (rayon),
//! and the lazy update of the columns right of the block is one GEMM.

use rayon::prelude::*;

use super::linalg::{gemm, View};
use super::select::lowest_k;
use crate::ops::{unstructured_k, ObsSelection};
use crate::tensor::Mask;

/// Prunes the row-major `rows x cols` `w` in place against the upper factor `u` (cols x cols);
/// returns the pruned set and the summed loss Σ (w−q)²/d²/2.
pub fn obs_prune(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    u: &[f64],
    dead: &[usize],
    selection: ObsSelection<'_, Mask>,
    block: usize,
) -> (Mask, f64) {
    for r in 0..rows {
        for &j in dead {
            w[r * cols + j] = 0.0;
        }
    }
    let mut mask = Mask::empty(rows, cols);
    let mut loss = 0.0;
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        let cnt = i2 - i1;
        let diag = |c: usize| u[(i1 + c) * cols + i1 + c];

        // Decisions fixed before the column loop (given or adaptive unstructured), rows x cnt.
        let mut pruned = vec![false; rows * cnt];
        match selection {
            ObsSelection::Given(m) => {
                for r in 0..rows {
                    for c in 0..cnt {
                        pruned[r * cnt + c] = m.get(r, i1 + c);
                    }
                }
            }
            ObsSelection::Unstructured(p) => {
                // Block-local score W1²/diag(U1)², linear index r·cnt + c breaks ties.
                let mut s = vec![0.0; rows * cnt];
                for r in 0..rows {
                    for c in 0..cnt {
                        s[r * cnt + c] = w[r * cols + i1 + c].powi(2) / diag(c).powi(2);
                    }
                }
                for i in lowest_k(&s, unstructured_k(p, rows * cnt)) {
                    pruned[i as usize] = true;
                }
            }
            ObsSelection::NM { .. } => {}
        }

        let mut err = vec![0.0; rows * cnt];
        let mut row_loss = vec![0.0; rows];
        w.par_chunks_mut(cols)
            .zip(err.par_chunks_mut(cnt))
            .zip(pruned.par_chunks_mut(cnt))
            .zip(row_loss.par_iter_mut())
            .for_each(|(((row, err), pruned), loss)| {
                let w1 = &mut row[i1..i2];
                for i in 0..cnt {
                    if let ObsSelection::NM { n, m } = selection {
                        if i % m == 0 {
                            let s: Vec<f64> = (i..i + m)
                                .map(|c| w1[c].powi(2) / diag(c).powi(2))
                                .collect();
                            for c in lowest_k(&s, n) {
                                pruned[i + c as usize] = true;
                            }
                        }
                    }
                    let wi = w1[i];
                    let q = if pruned[i] { 0.0 } else { wi };
                    let d = diag(i);
                    let e = (wi - q) / d;
                    let urow = &u[(i1 + i) * cols + i1..(i1 + i) * cols + i2];
                    for c in i..cnt {
                        w1[c] -= e * urow[c];
                    }
                    w1[i] = q;
                    err[i] = e;
                    *loss += (wi - q).powi(2) / (d * d) / 2.0;
                }
            });
        loss += row_loss.iter().sum::<f64>();
        for r in 0..rows {
            for c in 0..cnt {
                if pruned[r * cnt + c] {
                    mask.set(r, i1 + c, true);
                }
            }
        }
        // Lazy batch update: W[:, i2:] ← W[:, i2:] − Err1 · U[i1:i2, i2:].
        if i2 < cols {
            let u_block = &u[i1 * cols..i2 * cols];
            gemm(
                rows,
                cnt,
                cols - i2,
                -1.0,
                &err,
                View::rows(0, cnt),
                u_block,
                View::rows(i2, cols),
                1.0,
                w,
                View::rows(i2, cols),
            );
        }
    }
    (mask, loss)
}
