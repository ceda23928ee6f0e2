//! The steps of the inverse-Hessian factor (§6) on the device, planned once for both GPU
//! backends: the blocked right-looking Cholesky A = L Lᵀ and the triangular inverse X = L⁻¹
//! by doubling, both in place in one n x n matrix whose rows are cut into slabs. The backends
//! map each step onto their kernels and bindings.
//!
//! Cholesky, per block k of nb columns (128, or 64 where slabs are cut at odd multiples of
//! 64: [`block_width`]) of an outer block of 256: the diagonal block is factored and inverted
//! by one workgroup (L_kk⁻¹ replaces L_kk: it is X's
//! diagonal block); the panel L21 = A21·L_kk⁻ᵀ is a GEMM in place; the rest of the outer
//! block's columns are updated at depth nb (inner SYRK), and the trailing matrix once per
//! outer block at depth 256 (outer SYRK), so it is read and written n/256 times, not n/64.
//!
//! Inverse, by doubling: with the diagonal blocks already inverted, each level joins pairs of
//! inverted blocks [r, r+h) and [r+h, r+h+w) into one of 2h rows through two products,
//!   T = L21·X11 (w x h), kept transposed in the pair's upper block (rows [r, r+h), columns
//!   [r+h, r+h+w): nothing else reads or writes there), and X21 = −X22·T,
//! the triangular operands read with their other triangle as zero. Every pair of a level
//! that lies in one slab is one product of a batch, so a level is two launches where the
//! matrix fits one binding: log2(n/nb) levels, where the row-by-row inverse took n/64 steps
//! of a 64-row product each.

use super::{offset_pieces, GemmPiece, Slabs};

/// The narrow diagonal block: a 64 x 64 f32 block is 16 KiB, what one workgroup may hold in
/// WebGPU's default limits, so the diagonal-block kernels factor and invert 64 columns at a
/// time in workgroup memory.
pub const NB: usize = 64;
/// The wide diagonal block both backends use where the slabs allow it: a 2 x 2 of 64-blocks
/// factored and inverted by one workgroup (the second 64-block's update and the off-diagonal
/// products go through global memory, which that workgroup alone touches), so the Cholesky's
/// chain of dependent launches is three per 128 columns.
pub const NB_WIDE: usize = 128;

/// The diagonal block width for a matrix cut into `slabs`: [`NB_WIDE`] where every slab
/// starts on a multiple of it (a diagonal block never straddles two bindings), else [`NB`].
pub fn block_width(slabs: &Slabs) -> usize {
    if slabs.bounds().iter().all(|&(r0, _)| r0 % NB_WIDE == 0) {
        NB_WIDE
    } else {
        NB
    }
}

/// The outer block: updates right of it are deferred and applied as one SYRK of this depth.
pub const OUTER: usize = 256;

/// The launches of a GEMM over blocks of one matrix cut into `slabs`: `m_rows`, `n_rows` and
/// `k_rows` give the first stored row of each operand whose stored rows run along that
/// dimension; every piece's rows lie in one slab of each. Later depth pieces of a block
/// accumulate onto the first.
pub fn block_pieces(
    (m, n, k): (usize, usize, usize),
    slabs: &Slabs,
    m_rows: &[usize],
    n_rows: &[usize],
    k_rows: &[usize],
) -> Vec<GemmPiece> {
    let cut = |len: usize, rows: &[usize]| {
        let cuts: Vec<(&Slabs, usize)> = rows.iter().map(|&r| (slabs, r)).collect();
        offset_pieces(len, &cuts)
    };
    let ks = cut(k.max(1), k_rows);
    let mut v = Vec::new();
    for &mr in &cut(m, m_rows) {
        for &nr in &cut(n, n_rows) {
            for (i, &kr) in ks.iter().enumerate() {
                v.push(GemmPiece {
                    m: mr,
                    n: nr,
                    k: if k == 0 { (0, 0) } else { kr },
                    first: i == 0,
                });
            }
        }
    }
    v
}

/// One step of the blocked Cholesky.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CholStep {
    /// Factor the diagonal block [k0, k0 + w) and invert it in place: L_kk⁻¹ is left on its
    /// lower triangle and in the backend's small block for the panel. Above the diagonal the
    /// block may hold the kernel's scratch: no later step reads there (the panel's chunks
    /// stop at their last column, the inverse reads its triangular operands masked).
    Diag { k0: usize, w: usize },
    /// Columns [c_lo, c_hi) of the panel, A[k0+w.., k0+c_lo..k0+c_hi) =
    /// A[k0+w.., k0..k0+c_hi)·L_kk⁻ᵀ[.., c_lo..c_hi) in place (L_kk⁻¹ is lower, so column j
    /// of the product reads the panel's columns up to j only). A chunk is at most [`NB`]
    /// columns, one GEMM tile wide on both backends, so a workgroup reads exactly the tile
    /// it writes plus columns left of it; the chunks run right to left, so those columns are
    /// still A21's when they are read. Pieces: m over the rows below the block, n over
    /// [c_lo, c_hi), k over [0, c_hi).
    Panel {
        k0: usize,
        w: usize,
        pieces: Vec<GemmPiece>,
    },
    /// A[c0.., c0..c1) −= P·Pᵀ on the lower triangle, P = A[c0.., d0..d0 + depth). Pieces: m
    /// over rows from c0, n over columns c0..c1 (P's rows, read transposed), k over depth;
    /// pieces wholly above the diagonal are left out.
    Syrk {
        c0: usize,
        c1: usize,
        d0: usize,
        depth: usize,
        pieces: Vec<GemmPiece>,
    },
}

/// The Cholesky of an n x n matrix cut into `slabs` (whole blocks of `nb` rows, `nb` 64 or
/// 128: [`block_width`]), in order.
pub fn cholesky_steps(n: usize, slabs: &Slabs, nb: usize) -> Vec<CholStep> {
    let syrk = |c0: usize, c1: usize, d0: usize, depth: usize| {
        let pieces = block_pieces((n - c0, c1 - c0, depth), slabs, &[c0, c0], &[c0], &[])
            .into_iter()
            .filter(|p| p.n.0 < p.m.1)
            .collect();
        CholStep::Syrk {
            c0,
            c1,
            d0,
            depth,
            pieces,
        }
    };
    let mut v = Vec::new();
    for o0 in (0..n).step_by(OUTER) {
        let o1 = (o0 + OUTER).min(n);
        for k0 in (o0..o1).step_by(nb) {
            let k1 = (k0 + nb).min(n);
            let w = k1 - k0;
            v.push(CholStep::Diag { k0, w });
            if k1 == n {
                break;
            }
            for c_lo in (0..w).step_by(NB).rev() {
                let c_hi = (c_lo + NB).min(w);
                let pieces = block_pieces((n - k1, c_hi - c_lo, c_hi), slabs, &[k1, k1], &[], &[])
                    .into_iter()
                    .map(|p| GemmPiece {
                        n: (p.n.0 + c_lo, p.n.1 + c_lo),
                        ..p
                    })
                    .collect();
                v.push(CholStep::Panel { k0, w, pieces });
            }
            if k1 < o1 {
                v.push(syrk(k1, o1, k0, w));
            }
        }
        if o1 < n {
            v.push(syrk(o1, n, o0, o1 - o0));
        }
    }
    v
}

/// Pairs of one doubling level computed by one launch per product: `count` pairs from row
/// `r0`, 2·half rows apart, each of a first block of `half` rows and a second of `w`. The
/// pieces are the first pair's (one each where its rows lie in one slab, as they do for
/// every pair of a batch); pair z's operands are [`PairRun::stride`]·z elements further.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairRun {
    pub r0: usize,
    pub count: usize,
    pub half: usize,
    pub w: usize,
    /// T = L21·X11 (m = w over L21's rows from r0 + half, n = half over T's stored rows from
    /// r0 as it is kept transposed, k = half over X11's rows from r0).
    pub t_pieces: Vec<GemmPiece>,
    /// X21 = −X22·T (m = w over rows from r0 + half, n = half over T's stored rows from r0,
    /// k = w along rows of neither).
    pub x_pieces: Vec<GemmPiece>,
}

impl PairRun {
    /// Elements between one pair's blocks and the next's (2·half rows down and right).
    pub fn stride(&self, n: usize) -> usize {
        2 * self.half * (n + 1)
    }
}

/// The doubling levels of the inverse of an n x n lower triangular matrix cut into `slabs`
/// whose nb x nb diagonal blocks are already inverted: level by level, its runs of pairs.
pub fn inverse_levels(n: usize, slabs: &Slabs, nb: usize) -> Vec<Vec<PairRun>> {
    let mut levels = Vec::new();
    let mut half = nb;
    while half < n {
        let mut runs: Vec<PairRun> = Vec::new();
        for r in (0..n).step_by(2 * half) {
            if r + half >= n {
                break;
            }
            let w = half.min(n - r - half);
            let one_slab = slabs.locate(r).0 == slabs.locate(r + half + w - 1).0;
            if let Some(last) = runs.last_mut() {
                let joins = one_slab
                    && w == half
                    && last.w == half
                    && last.r0 + last.count * 2 * half == r
                    && last.t_pieces.len() == 1
                    && last.x_pieces.len() == 1
                    && slabs.locate(last.r0).0 == slabs.locate(r).0;
                if joins {
                    last.count += 1;
                    continue;
                }
            }
            runs.push(PairRun {
                r0: r,
                count: 1,
                half,
                w,
                t_pieces: block_pieces((w, half, half), slabs, &[r + half], &[r], &[r]),
                x_pieces: block_pieces((w, half, w), slabs, &[r + half, r + half], &[r], &[]),
            });
        }
        levels.push(runs);
        half *= 2;
    }
    levels
}

/// One GEMM-shaped launch of the plan: its step, workgroups (cubes) and the flops it does.
#[derive(Clone, Copy, Debug)]
pub struct PlannedLaunch {
    pub step: &'static str,
    pub groups: usize,
    pub flops: f64,
}

/// Every launch of the factor's plan for an n x n matrix, given the output tile a launch of
/// `count` GEMMs of m x n uses (`tile`): the diagonal blocks (one workgroup, factor and inverse, 2w³/3 flops),
/// the panels, the SYRKs (their lower-triangle tiles and entries only) and the doubling's
/// products (the triangle their masks skip not counted). The elementwise passes (scan,
/// copies) are left out: they are full-grid and move bytes, not flops.
pub fn planned_launches(
    n: usize,
    slabs: &Slabs,
    nb: usize,
    tile: impl Fn(usize, usize, usize) -> (usize, usize),
) -> Vec<PlannedLaunch> {
    let tiles = |m: usize, c: usize, count: usize| {
        let (tm, tn) = tile(m, c, count);
        (m.div_ceil(tm), c.div_ceil(tn), tm, tn)
    };
    let mut v = Vec::new();
    for step in cholesky_steps(n, slabs, nb) {
        match step {
            CholStep::Diag { w, .. } => v.push(PlannedLaunch {
                step: "diagonal block",
                groups: 1,
                flops: 2.0 * (w as f64).powi(3) / 3.0,
            }),
            CholStep::Panel { pieces, .. } => {
                for p in pieces {
                    let (m, c, k) = (p.m.1 - p.m.0, p.n.1 - p.n.0, p.k.1 - p.k.0);
                    let (gm, gn, _, _) = tiles(m, c, 1);
                    v.push(PlannedLaunch {
                        step: "panel",
                        groups: gm * gn,
                        flops: 2.0 * (m * c * k) as f64,
                    });
                }
            }
            CholStep::Syrk { depth, pieces, .. } => {
                for p in pieces {
                    let (m, c, k) = (p.m.1 - p.m.0, p.n.1 - p.n.0, p.k.1 - p.k.0);
                    let (gm, gn, tm, tn) = tiles(m, c, 1);
                    // Tiles with a row at or below the diagonal (row i reaches column i);
                    // entries (i, j) with j <= i, in the matrix's coordinates.
                    let groups = (0..gm)
                        .map(|r| {
                            (0..gn)
                                .filter(|&q| p.n.0 + q * tn < p.m.0 + (r + 1) * tm)
                                .count()
                        })
                        .sum();
                    let entries: usize = (p.m.0..p.m.1)
                        .map(|i| (i + 1).clamp(p.n.0, p.n.1) - p.n.0)
                        .sum();
                    v.push(PlannedLaunch {
                        step: if depth > nb {
                            "outer SYRK"
                        } else {
                            "inner SYRK"
                        },
                        groups,
                        flops: 2.0 * (entries * k) as f64,
                    });
                }
            }
        }
    }
    for runs in inverse_levels(n, slabs, nb) {
        for run in runs {
            let (h, w) = (run.half as f64, run.w as f64);
            let pieces = (run.t_pieces.len() + run.x_pieces.len()) as f64;
            for (p, step) in run
                .t_pieces
                .iter()
                .map(|p| (p, "inverse T"))
                .chain(run.x_pieces.iter().map(|p| (p, "inverse X21")))
            {
                let (gm, gn, _, _) = tiles(p.m.1 - p.m.0, p.n.1 - p.n.0, run.count);
                // A pair's two products do w·h·(h+1) and h·w·(w+1) flops; pieces share them
                // evenly (only pairs cut by a slab have more than one).
                v.push(PlannedLaunch {
                    step,
                    groups: gm * gn * run.count,
                    flops: run.count as f64 * (w * h * (h + 1.0) + h * w * (w + 1.0)) / pieces,
                });
            }
        }
    }
    v
}

/// How much of a plan's work runs in launches of fewer workgroups than `sms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct WaveShare {
    pub launches: usize,
    pub launches_under_one_wave: usize,
    pub flops: f64,
    /// Of `flops`, what those launches do.
    pub flops_under_one_wave: f64,
}

impl WaveShare {
    pub fn of(launches: &[PlannedLaunch], sms: usize) -> Self {
        let under = launches.iter().filter(|l| l.groups < sms);
        Self {
            launches: launches.len(),
            launches_under_one_wave: under.clone().count(),
            flops: launches.iter().map(|l| l.flops).sum(),
            flops_under_one_wave: under.map(|l| l.flops).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan run on the host in f64: Cholesky then inverse, every step over the pieces as
    /// the backends launch them (each pair of a run at its stride).
    fn run_plan(h: &[f64], n: usize, slabs: &Slabs, nb: usize) -> Vec<f64> {
        let mut a = h.to_vec();
        let at = |i: usize, j: usize| i * n + j;
        let mut small = vec![0.0; nb * nb];
        for step in cholesky_steps(n, slabs, nb) {
            match step {
                CholStep::Diag { k0, w } => {
                    // Factor, then invert in place; zero above the diagonal.
                    for j in 0..w {
                        let d = a[at(k0 + j, k0 + j)].sqrt();
                        a[at(k0 + j, k0 + j)] = d;
                        for i in j + 1..w {
                            a[at(k0 + i, k0 + j)] /= d;
                        }
                        for l in j + 1..w {
                            for i in l..w {
                                a[at(k0 + i, k0 + l)] -=
                                    a[at(k0 + i, k0 + j)] * a[at(k0 + l, k0 + j)];
                            }
                        }
                    }
                    let l: Vec<f64> = (0..w * w)
                        .map(|e| {
                            let (i, j) = (e / w, e % w);
                            if j <= i {
                                a[at(k0 + i, k0 + j)]
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    small.iter_mut().for_each(|v| *v = 0.0);
                    for j in 0..w {
                        for i in j..w {
                            let mut s = if i == j { 1.0 } else { 0.0 };
                            for p in j..i {
                                s -= l[i * w + p] * small[p * nb + j];
                            }
                            small[i * nb + j] = s / l[i * w + i];
                        }
                    }
                    for i in 0..w {
                        for j in 0..w {
                            a[at(k0 + i, k0 + j)] = small[i * nb + j];
                        }
                    }
                }
                CholStep::Panel { k0, w, pieces } => {
                    let r1 = k0 + w;
                    for p in pieces {
                        for i in p.m.0..p.m.1 {
                            let row: Vec<f64> = (0..w).map(|q| a[at(r1 + i, k0 + q)]).collect();
                            for j in p.n.0..p.n.1 {
                                let s: f64 =
                                    (p.k.0..p.k.1).map(|q| row[q] * small[j * nb + q]).sum();
                                a[at(r1 + i, k0 + j)] = s;
                            }
                        }
                    }
                }
                CholStep::Syrk { c0, d0, pieces, .. } => {
                    for p in pieces {
                        for i in p.m.0..p.m.1 {
                            for j in p.n.0..p.n.1.min(i + 1) {
                                let s: f64 = (p.k.0..p.k.1)
                                    .map(|q| a[at(c0 + i, d0 + q)] * a[at(c0 + j, d0 + q)])
                                    .sum();
                                a[at(c0 + i, c0 + j)] -= s;
                            }
                        }
                    }
                }
            }
        }
        for runs in inverse_levels(n, slabs, nb) {
            for run in runs {
                let h = run.half;
                for z in 0..run.count {
                    let r = run.r0 + 2 * h * z;
                    let s = r + h;
                    // T stored transposed: T(i, j) at (r + j, s + i).
                    for p in &run.t_pieces {
                        for i in p.m.0..p.m.1 {
                            for j in p.n.0..p.n.1 {
                                let v: f64 = (p.k.0..p.k.1)
                                    .filter(|&q| q >= j)
                                    .map(|q| a[at(s + i, r + q)] * a[at(r + q, r + j)])
                                    .sum();
                                let c = &mut a[at(r + j, s + i)];
                                *c = if p.first { v } else { *c + v };
                            }
                        }
                    }
                    for p in &run.x_pieces {
                        for i in p.m.0..p.m.1 {
                            for j in p.n.0..p.n.1 {
                                let v: f64 = (p.k.0..p.k.1)
                                    .filter(|&q| q <= i)
                                    .map(|q| a[at(s + i, s + q)] * a[at(r + j, s + q)])
                                    .sum();
                                let c = &mut a[at(s + i, r + j)];
                                *c = if p.first { -v } else { *c - v };
                            }
                        }
                    }
                }
            }
        }
        a
    }

    fn spd(n: usize) -> Vec<f64> {
        let mut x = 0.37f64;
        let g: Vec<f64> = (0..n * n)
            .map(|_| {
                x = (x * 3.7 + 0.11).fract();
                x - 0.5
            })
            .collect();
        let mut h = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..n).map(|q| g[i * n + q] * g[j * n + q]).sum::<f64>()
                    + if i == j { n as f64 } else { 0.0 };
            }
        }
        h
    }

    #[test]
    fn the_plan_inverts_the_cholesky_factor() {
        // Odd sizes, partial last blocks and pairs, slabs that cut pairs (64-, 128- and
        // 192-row slabs) and one slab, for both block widths.
        let shapes = [
            (1, 64, NB),
            (70, 64, NB),
            (200, 64, NB),
            (331, 192, NB),
            (300, 1000, NB),
            (1, 128, NB_WIDE),
            (200, 128, NB_WIDE),
            (331, 256, NB_WIDE),
            (300, 1000, NB_WIDE),
        ];
        for (n, slab_rows, nb) in shapes {
            let slabs = Slabs {
                rows: n,
                slab_rows: slab_rows.min(n.max(1)),
            };
            let h = spd(n);
            let x = run_plan(&h, n, &slabs, nb);
            // X·L = I on the lower triangle, with L the reference Cholesky factor.
            let mut l = h.clone();
            for j in 0..n {
                l[j * n + j] = l[j * n + j].sqrt();
                for i in j + 1..n {
                    l[i * n + j] /= l[j * n + j];
                }
                for q in j + 1..n {
                    for i in q..n {
                        l[i * n + q] -= l[i * n + j] * l[q * n + j];
                    }
                }
            }
            for i in 0..n {
                for j in 0..=i {
                    let v: f64 = (j..=i).map(|q| x[i * n + q] * l[q * n + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (v - want).abs() < 1e-9,
                        "n={n} slab={slab_rows} nb={nb} ({i},{j}): {v}"
                    );
                }
            }
        }
    }

    #[test]
    fn planned_flops_are_the_factors() {
        // Cholesky n³/3 and inverse n³/3, up to lower-order terms, however the slabs cut, for
        // both block widths; the panels multiply by the triangular L_kk⁻ᵀ as full blocks (the
        // products with its zero triangle are taken out here).
        for (n, slab_rows, nb) in [
            (4096, 4096, NB),
            (4096, 1024, NB),
            (1000, 192, NB),
            (4096, 4096, NB_WIDE),
            (1000, 256, NB_WIDE),
        ] {
            let slabs = Slabs { rows: n, slab_rows };
            let launches = planned_launches(n, &slabs, nb, |_, _, _| (64, 64));
            let total: f64 = launches.iter().map(|l| l.flops).sum();
            let zeros: f64 = cholesky_steps(n, &slabs, nb)
                .iter()
                .filter_map(|s| match s {
                    CholStep::Panel { pieces, .. } => Some(pieces),
                    _ => None,
                })
                .flatten()
                .map(|p| {
                    let above: usize = (p.n.0..p.n.1)
                        .map(|j| p.k.1.saturating_sub(p.k.0.max(j + 1)))
                        .sum();
                    2.0 * ((p.m.1 - p.m.0) * above) as f64
                })
                .sum();
            let total = total - zeros;
            let want = 2.0 * (n as f64).powi(3) / 3.0;
            assert!(
                (total / want - 1.0).abs() < 0.01,
                "n={n} nb={nb}: {total} vs {want}"
            );
        }
        // At LLaMA-7B's 4096 columns on 132 SMs with 64 x 64 tiles, what cannot fill a wave
        // (the diagonal blocks, panels, inner SYRKs and the lowest doubling levels) is a
        // minority of the work.
        let n = 4096;
        let one = Slabs {
            rows: n,
            slab_rows: n,
        };
        let share = WaveShare::of(&planned_launches(n, &one, NB, |_, _, _| (64, 64)), 132);
        assert!(share.flops_under_one_wave < 0.1 * share.flops, "{share:?}");
    }

    #[test]
    fn pairs_of_a_level_in_one_slab_are_one_launch() {
        let n = 4096;
        let one = Slabs {
            rows: n,
            slab_rows: n,
        };
        let levels = inverse_levels(n, &one, NB);
        assert_eq!(levels.len(), 6);
        for runs in &levels {
            assert_eq!(runs.len(), 1);
            assert_eq!(runs[0].count * 2 * runs[0].half, n);
        }
        // Slabs of 1024 rows: levels below 1024 batch per slab; the top level's pair crosses
        // slabs and is cut into pieces.
        let cut = Slabs {
            rows: n,
            slab_rows: 1024,
        };
        let levels = inverse_levels(n, &cut, NB);
        assert_eq!(levels[0].len(), 4);
        let top = &levels[5][0];
        assert_eq!(top.count, 1);
        assert!(top.t_pieces.len() > 1 && top.x_pieces.len() > 1);
        // The Cholesky at 4096: 64 diagonal blocks, 63 panels, 48 inner and 15 outer SYRKs.
        let steps = cholesky_steps(n, &one, NB);
        let count = |f: fn(&CholStep) -> bool| steps.iter().filter(|s| f(s)).count();
        assert_eq!(count(|s| matches!(s, CholStep::Diag { .. })), 64);
        assert_eq!(count(|s| matches!(s, CholStep::Panel { .. })), 63);
        assert_eq!(
            count(|s| matches!(s, CholStep::Syrk { depth, .. } if *depth == NB)),
            48
        );
        assert_eq!(
            count(|s| matches!(s, CholStep::Syrk { depth, .. } if *depth == OUTER)),
            15
        );
        // With 128-wide blocks: 32 diagonal blocks, 31 panels in two 64-column chunks, 16
        // inner and 15 outer SYRKs, 125 dependent launches where 64-wide blocks take 190 (4
        // per 128 columns, not 3 per 64), and the inverse has one level fewer.
        let steps = cholesky_steps(n, &one, NB_WIDE);
        let count = |f: fn(&CholStep) -> bool| steps.iter().filter(|s| f(s)).count();
        assert_eq!(count(|s| matches!(s, CholStep::Diag { .. })), 32);
        assert_eq!(count(|s| matches!(s, CholStep::Panel { .. })), 62);
        assert_eq!(
            count(|s| matches!(s, CholStep::Syrk { depth, .. } if *depth == NB_WIDE)),
            16
        );
        assert_eq!(steps.len(), 125);
        assert_eq!(inverse_levels(n, &one, NB_WIDE).len(), 5);
    }

    #[test]
    fn wide_blocks_where_no_slab_would_cut_one() {
        let slabs = |rows, slab_rows| Slabs { rows, slab_rows };
        assert_eq!(block_width(&slabs(4096, 4096)), NB_WIDE);
        assert_eq!(block_width(&slabs(300, 256)), NB_WIDE);
        assert_eq!(block_width(&slabs(300, 192)), NB);
        assert_eq!(block_width(&slabs(300, 64)), NB);
        // One slab of any height holds every block.
        assert_eq!(block_width(&slabs(200, 200)), NB_WIDE);
    }
}
