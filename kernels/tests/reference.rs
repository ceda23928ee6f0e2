//! Properties of the CPU reference (ALGORITHMS.md §1-§7) on hand-checked cases and random
//! heavy-tailed data, and proof that the verification machinery catches a wrong backend.

use prunebench_kernels::cpu::{CpuBackend, CpuTensor};
use prunebench_kernels::ops::{unstructured_k, PERCDAMP};
use prunebench_kernels::rng::{heavy_tailed, heavy_tailed_positive};
use prunebench_kernels::suite::{small_cases, verify_case, Outcome};
use prunebench_kernels::{
    Backend, GradNorm, HinvExplicit, MaskGroup, MaskPattern, Matrix, ObsSelection, PackedWeight,
    Score, TaylorInputs, TaylorKind, WeightFormat,
};

fn cpu() -> CpuBackend {
    CpuBackend::new()
}

fn t(rows: usize, cols: usize, v: &[f64]) -> CpuTensor {
    CpuTensor {
        rows,
        cols,
        data: v.to_vec(),
    }
}

#[test]
fn act_stat_is_a_running_mean_of_squared_column_norms() {
    let b = cpu();
    let mut a = b.zeros(1, 2).unwrap();
    // Sample 1: tokens [1,2],[3,4] -> squared norms [10, 20].
    b.act_stat_update(&mut a, 0, &t(2, 2, &[1., 2., 3., 4.]), 1)
        .unwrap();
    assert_eq!(a.data, vec![10.0, 20.0]);
    // Two more samples in one batch with squared norms [1, 4] and [4, 0] -> mean of three.
    b.act_stat_update(&mut a, 1, &t(2, 2, &[1., 2., 2., 0.]), 2)
        .unwrap();
    let want = [(10.0 + 1.0 + 4.0) / 3.0, (20.0 + 4.0) / 3.0];
    for (got, want) in a.data.iter().zip(want) {
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
}

#[test]
fn hessian_is_two_over_n_sum_of_xtx() {
    let b = cpu();
    let mut h = b.zeros(2, 2).unwrap();
    b.hessian_update(&mut h, 0, &t(1, 2, &[1., 2.]), 1).unwrap();
    assert_eq!(h.data, vec![2., 4., 4., 8.]);
    b.hessian_update(&mut h, 1, &t(1, 2, &[3., 0.]), 1).unwrap();
    // (2/2)·([1,2]ᵀ[1,2] + [3,0]ᵀ[3,0])
    assert_eq!(h.data, vec![10., 2., 2., 4.]);
}

#[test]
fn scores_follow_the_formulas() {
    let b = cpu();
    let w = t(1, 2, &[-2., 3.]);
    let act = t(1, 2, &[4., 9.]);
    let grad = t(1, 2, &[0.5, 1.]);
    assert_eq!(b.score(&w, Score::Magnitude).unwrap().data, vec![2., 3.]);
    assert_eq!(
        b.score(&w, Score::Wanda { act: &act }).unwrap().data,
        vec![4., 9.]
    );
    let g = b
        .score(
            &w,
            Score::Gblm {
                act: &act,
                grad: &grad,
            },
        )
        .unwrap();
    assert_eq!(g.data, vec![4. + 1., 9. + 3.]);
}

#[test]
fn gradient_accumulation_l1_l2_and_fused_equals_unfused() {
    let b = cpu();
    let mut acc = b.zeros(1, 1).unwrap();
    b.grad_accumulate(&mut acc, &t(1, 1, &[-0.02]), GradNorm::L2)
        .unwrap();
    assert!((acc.data[0] - 4.0).abs() < 1e-12); // (100·0.02)²
    let mut l1 = b.zeros(1, 1).unwrap();
    b.grad_accumulate(&mut l1, &t(1, 1, &[-0.02]), GradNorm::L1)
        .unwrap();
    assert!((l1.data[0] - 2.0).abs() < 1e-12);

    let (tokens, rows, cols) = (23, 9, 31);
    let dy = b.upload(&heavy_tailed(tokens, rows, 1)).unwrap();
    let x = b.upload(&heavy_tailed(tokens, cols, 2)).unwrap();
    for norm in [GradNorm::L1, GradNorm::L2] {
        let mut fused = b.upload(&heavy_tailed_positive(rows, cols, 3)).unwrap();
        let mut unfused = fused.clone();
        b.grad_accumulate_fused(&mut fused, &dy, &x, norm).unwrap();
        // g = dYᵀ X by hand.
        let mut g = b.zeros(rows, cols).unwrap();
        for r in 0..rows {
            for c in 0..cols {
                g.data[r * cols + c] = (0..tokens)
                    .map(|k| dy.data[k * rows + r] * x.data[k * cols + c])
                    .sum();
            }
        }
        b.grad_accumulate(&mut unfused, &g, norm).unwrap();
        for (a, u) in fused.data.iter().zip(&unfused.data) {
            assert!((a - u).abs() <= 1e-10 * u.abs(), "{a} vs {u}");
        }
    }
}

#[test]
fn masks_prune_exactly_k_per_row_and_n_per_group() {
    let b = cpu();
    let (rows, cols) = (17, 96);
    // Rounded scores: plenty of exact ties.
    let mut s = heavy_tailed_positive(rows, cols, 5);
    for v in &mut s.data {
        *v = v.round();
    }
    let scores = b.upload(&s).unwrap();
    for p in [0.0, 0.3, 0.5, 0.9] {
        let pattern = MaskPattern::Unstructured {
            sparsity: p,
            group: MaskGroup::PerRow,
        };
        let m = b.select_mask(&scores, pattern).unwrap();
        for r in 0..rows {
            assert_eq!(m.count_row(r), unstructured_k(p, cols));
            // Everything pruned scores <= everything kept, and among equal scores the pruned
            // ones come first by column: no tied entry right of a kept one is pruned.
            let row = s.row(r);
            let max_pruned = (0..cols)
                .filter(|&c| m.get(r, c))
                .map(|c| row[c])
                .fold(f32::MIN, f32::max);
            for c in 0..cols {
                if !m.get(r, c) {
                    assert!(row[c] >= max_pruned);
                    if row[c] == max_pruned {
                        assert!((c + 1..cols).all(|c2| row[c2] != max_pruned || !m.get(r, c2)));
                    }
                }
            }
        }
        let whole = b
            .select_mask(
                &scores,
                MaskPattern::Unstructured {
                    sparsity: p,
                    group: MaskGroup::Matrix,
                },
            )
            .unwrap();
        assert_eq!(whole.count(), unstructured_k(p, rows * cols));
    }
    for (n, m) in [(2, 4), (4, 8), (1, 3)] {
        let mask = b.select_mask(&scores, MaskPattern::NM { n, m }).unwrap();
        for r in 0..rows {
            for g in (0..cols).step_by(m) {
                assert_eq!((g..g + m).filter(|&c| mask.get(r, c)).count(), n);
            }
        }
    }
}

#[test]
fn apply_mask_zeroes_exactly_the_mask() {
    let b = cpu();
    let w0 = heavy_tailed(5, 40, 8);
    let mut w = b.upload(&w0).unwrap();
    let scores = b.score(&w, Score::Magnitude).unwrap();
    let mask = b
        .select_mask(&scores, MaskPattern::NM { n: 2, m: 4 })
        .unwrap();
    b.apply_mask(&mut w, &mask).unwrap();
    for r in 0..5 {
        for c in 0..40 {
            let v = w.data[r * 40 + c];
            assert_eq!(
                v,
                if mask.get(r, c) {
                    0.0
                } else {
                    w0.get(r, c) as f64
                }
            );
        }
    }
}

/// H from correlated heavy-tailed calibration rows, as the OBS tests need.
fn hessian(cols: usize, tokens: usize, seed: u64) -> CpuTensor {
    let b = cpu();
    let mut x = heavy_tailed(tokens, cols, seed);
    for r in 0..tokens {
        for c in 1..cols {
            let prev = x.data[r * cols + c - 1];
            x.data[r * cols + c] += 0.7 * prev;
        }
    }
    let mut h = b.zeros(cols, cols).unwrap();
    b.hessian_update(&mut h, 0, &b.upload(&x).unwrap(), 1)
        .unwrap();
    h
}

#[test]
fn hinv_factor_inverts_the_damped_hessian_and_handles_dead_columns() {
    let b = cpu();
    let n = 150;
    let mut h = hessian(n, 400, 4);
    // A dead input channel: zero row and column.
    for i in 0..n {
        h.data[i * n + 7] = 0.0;
        h.data[7 * n + i] = 0.0;
    }
    let f = b.hinv_factor(&h, PERCDAMP).unwrap();
    assert_eq!(f.dead, vec![7]);
    let mut damped = h.clone();
    damped.data[7 * n + 7] = 1.0;
    let mean = (0..n).map(|i| damped.data[i * n + i]).sum::<f64>() / n as f64;
    assert!((f.damp - PERCDAMP * mean).abs() <= 1e-12 * mean);
    for i in 0..n {
        damped.data[i * n + i] += f.damp;
    }
    let u = &f.u.data;
    // U is upper triangular with a positive diagonal, and Uᵀ U (H + λI) = I.
    for i in 0..n {
        assert!(u[i * n + i] > 0.0);
        assert!((0..i).all(|j| u[i * n + j] == 0.0));
    }
    let mut utu = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            utu[i * n + j] = (0..=i.min(j)).map(|k| u[k * n + i] * u[k * n + j]).sum();
        }
    }
    let mut worst: f64 = 0.0;
    for i in 0..n {
        for j in 0..n {
            let v: f64 = (0..n)
                .map(|k| utu[i * n + k] * damped.data[k * n + j])
                .sum();
            worst = worst.max((v - if i == j { 1.0 } else { 0.0 }).abs());
        }
    }
    assert!(worst < 1e-8, "|Uᵀ U (H+λI) - I| = {worst}");
}

#[test]
fn hinv_factor_reports_an_indefinite_hessian() {
    let b = cpu();
    let h = t(2, 2, &[1.0, 3.0, 3.0, 1.0]);
    let err = b.hinv_factor(&h, 0.0).unwrap_err();
    assert!(err.to_string().contains("not positive definite"), "{err}");
}

fn obs_setup(
    rows: usize,
    cols: usize,
) -> (
    CpuBackend,
    Matrix,
    prunebench_kernels::HinvFactor<CpuTensor>,
) {
    let b = cpu();
    let w = heavy_tailed(rows, cols, 11);
    let f = b
        .hinv_factor(&hessian(cols, 3 * cols, 12), PERCDAMP)
        .unwrap();
    (b, w, f)
}

#[test]
fn sparsegpt_at_sparsity_zero_returns_w() {
    let (b, w0, f) = obs_setup(6, 200);
    let mut w = b.upload(&w0).unwrap();
    let out = b
        .obs_prune(&mut w, &f, ObsSelection::Unstructured(0.0), 128)
        .unwrap();
    assert_eq!(out.mask.count(), 0);
    assert_eq!(out.loss, 0.0);
    for (a, b) in w.data.iter().zip(&w0.data) {
        assert!((a - *b as f64).abs() <= 1e-12 * b.abs() as f64);
    }
}

fn assert_close(a: &CpuTensor, b: &CpuTensor, rel: f64) {
    let num: f64 = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let den: f64 = b.data.iter().map(|y| y * y).sum();
    assert!(
        num / den < rel * rel,
        "relative difference {}",
        (num / den).sqrt()
    );
}

#[test]
fn sparsegpt_blocked_equals_unblocked() {
    let (b, w0, f) = obs_setup(9, 200);
    let cols = 200;
    // N:M: the selection is per row on the current weights, so blocking must not change it.
    let mut blocked = b.upload(&w0).unwrap();
    let mut whole = blocked.clone();
    let sel = ObsSelection::NM { n: 2, m: 4 };
    let a = b.obs_prune(&mut blocked, &f, sel, 128).unwrap();
    let c = b.obs_prune(&mut whole, &f, sel, cols).unwrap();
    assert_eq!(a.mask, c.mask);
    assert_close(&blocked, &whole, 1e-10);
    assert!((a.loss - c.loss).abs() <= 1e-9 * c.loss);
    // Unstructured with the same given mask: identical updates whatever the block size.
    let given = a.mask.clone();
    let mut blocked = b.upload(&w0).unwrap();
    let mut whole = blocked.clone();
    let a = b
        .obs_prune(&mut blocked, &f, ObsSelection::Given(&given), 64)
        .unwrap();
    let c = b
        .obs_prune(&mut whole, &f, ObsSelection::Given(&given), cols)
        .unwrap();
    assert_eq!(a.mask, given);
    assert_eq!(c.mask, given);
    assert!((a.loss - c.loss).abs() <= 1e-9 * c.loss);
    assert_close(&blocked, &whole, 1e-10);
    // And the weights really are zero where pruned.
    for r in 0..9 {
        for col in 0..cols {
            if given.get(r, col) {
                assert_eq!(blocked.data[r * cols + col], 0.0);
            }
        }
    }
}

#[test]
fn sparsegpt_reduces_reconstruction_error_against_plain_masking() {
    let (b, w0, f) = obs_setup(16, 160);
    let h = hessian(160, 3 * 160, 12);
    let orig = b.upload(&w0).unwrap();
    let mut plain = orig.clone();
    let s = b.score(&plain, Score::Magnitude).unwrap();
    let mask = b
        .select_mask(
            &s,
            MaskPattern::Unstructured {
                sparsity: 0.5,
                group: MaskGroup::PerRow,
            },
        )
        .unwrap();
    b.apply_mask(&mut plain, &mask).unwrap();
    let mut obs = orig.clone();
    let out = b
        .obs_prune(&mut obs, &f, ObsSelection::Given(&mask), 128)
        .unwrap();
    let e_plain = b.recon_error(&orig, &plain, &h).unwrap().relative();
    let e_obs = b.recon_error(&orig, &obs, &h).unwrap().relative();
    assert!(out.loss > 0.0);
    assert!(e_obs < 0.5 * e_plain, "OBS {e_obs} vs plain {e_plain}");
}

#[test]
fn every_small_case_passes_on_the_reference_itself() {
    let b = cpu();
    for case in small_cases() {
        let r = verify_case(&b, &b, &case);
        assert_eq!(r.outcome, Outcome::Pass, "{} {:?}", r.case, r.checks);
    }
}

/// The reference with deliberate faults, to prove `verify_case` fails wrong backends:
/// scores off by one part in a thousand in one entry, and N:M masks with ties broken the
/// wrong way round (highest index first).
struct Faulty(CpuBackend);

impl Backend for Faulty {
    type Tensor = CpuTensor;
    type Mask = prunebench_kernels::Mask;
    type Packed = PackedWeight;
    fn info(&self) -> &prunebench_kernels::BackendInfo {
        self.0.info()
    }
    fn upload(&self, m: &Matrix) -> prunebench_kernels::error::Result<CpuTensor> {
        self.0.upload(m)
    }
    fn download(&self, t: &CpuTensor) -> prunebench_kernels::error::Result<Matrix> {
        self.0.download(t)
    }
    fn upload_mask(&self, m: &Self::Mask) -> prunebench_kernels::error::Result<Self::Mask> {
        Ok(m.clone())
    }
    fn download_mask(&self, m: &Self::Mask) -> prunebench_kernels::error::Result<Self::Mask> {
        Ok(m.clone())
    }
    fn zeros(&self, r: usize, c: usize) -> prunebench_kernels::error::Result<CpuTensor> {
        self.0.zeros(r, c)
    }
    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        self.0.shape(t)
    }
    fn synchronize(&self) -> prunebench_kernels::error::Result<()> {
        Ok(())
    }
    fn act_stat_update(
        &self,
        a: &mut CpuTensor,
        n: usize,
        x: &CpuTensor,
        b: usize,
    ) -> prunebench_kernels::error::Result<()> {
        self.0.act_stat_update(a, n, x, b)
    }
    fn grad_accumulate(
        &self,
        a: &mut CpuTensor,
        g: &CpuTensor,
        n: GradNorm,
    ) -> prunebench_kernels::error::Result<()> {
        self.0.grad_accumulate(a, g, n)
    }
    fn grad_accumulate_fused(
        &self,
        a: &mut CpuTensor,
        dy: &CpuTensor,
        x: &CpuTensor,
        n: GradNorm,
    ) -> prunebench_kernels::error::Result<()> {
        self.0.grad_accumulate_fused(a, dy, x, n)
    }
    fn grad_finalize(
        &self,
        a: &CpuTensor,
        n: GradNorm,
    ) -> prunebench_kernels::error::Result<CpuTensor> {
        self.0.grad_finalize(a, n)
    }
    fn hessian_update(
        &self,
        h: &mut CpuTensor,
        n: usize,
        x: &CpuTensor,
        b: usize,
    ) -> prunebench_kernels::error::Result<()> {
        self.0.hessian_update(h, n, x, b)
    }
    fn score(
        &self,
        w: &CpuTensor,
        s: Score<'_, CpuTensor>,
    ) -> prunebench_kernels::error::Result<CpuTensor> {
        let mut out = self.0.score(w, s)?;
        out.data[0] *= 1.001;
        Ok(out)
    }
    fn select_mask(
        &self,
        s: &CpuTensor,
        p: MaskPattern,
    ) -> prunebench_kernels::error::Result<Self::Mask> {
        match p {
            MaskPattern::NM { .. } => {
                // Reverse each row so that ties go to the higher index, then map back.
                let mut rev = s.clone();
                for row in rev.data.chunks_mut(s.cols) {
                    row.reverse();
                }
                let m = self.0.select_mask(&rev, p)?;
                let mut out = prunebench_kernels::Mask::empty(s.rows, s.cols);
                for r in 0..s.rows {
                    for c in 0..s.cols {
                        out.set(r, s.cols - 1 - c, m.get(r, c));
                    }
                }
                Ok(out)
            }
            _ => self.0.select_mask(s, p),
        }
    }
    fn apply_mask(
        &self,
        w: &mut CpuTensor,
        m: &Self::Mask,
    ) -> prunebench_kernels::error::Result<()> {
        self.0.apply_mask(w, m)
    }
    fn hinv_factor(
        &self,
        h: &CpuTensor,
        d: f64,
    ) -> prunebench_kernels::error::Result<prunebench_kernels::HinvFactor<CpuTensor>> {
        self.0.hinv_factor(h, d)
    }
    fn obs_prune(
        &self,
        w: &mut CpuTensor,
        f: &prunebench_kernels::HinvFactor<CpuTensor>,
        s: ObsSelection<'_, Self::Mask>,
        b: usize,
    ) -> prunebench_kernels::error::Result<prunebench_kernels::ObsOutcome<Self::Mask>> {
        self.0.obs_prune(w, f, s, b)
    }
    fn recon_error(
        &self,
        w: &CpuTensor,
        p: &CpuTensor,
        h: &CpuTensor,
    ) -> prunebench_kernels::error::Result<prunebench_kernels::ReconError> {
        self.0.recon_error(w, p, h)
    }
    /// Two neighbouring bitmap values swapped: an off-by-one in a kernel's value index.
    fn compress(
        &self,
        w: &CpuTensor,
        m: &Self::Mask,
        f: WeightFormat,
    ) -> prunebench_kernels::error::Result<PackedWeight> {
        let mut p = self.0.compress(w, m, f)?;
        if f == WeightFormat::Bitmap {
            p.values[0] = p.values[0].rotate_left(16);
        }
        Ok(p)
    }
    fn decompress(&self, p: &PackedWeight) -> prunebench_kernels::error::Result<CpuTensor> {
        self.0.decompress(p)
    }
    fn upload_packed(&self, p: &PackedWeight) -> prunebench_kernels::error::Result<PackedWeight> {
        self.0.upload_packed(p)
    }
    fn download_packed(&self, p: &PackedWeight) -> prunebench_kernels::error::Result<PackedWeight> {
        self.0.download_packed(p)
    }
    /// The first two stored values of row 0 dropped from the product.
    fn sparse_matmul(
        &self,
        x: &CpuTensor,
        w: &PackedWeight,
    ) -> prunebench_kernels::error::Result<CpuTensor> {
        let mut p = w.clone();
        p.values[0] = 0;
        self.0.sparse_matmul(x, &p)
    }
    /// The last token of the sample left out (a loop bound off by one).
    fn grad_sum(
        &self,
        acc: &mut CpuTensor,
        dy: &CpuTensor,
        x: &CpuTensor,
    ) -> prunebench_kernels::error::Result<()> {
        let drop_last = |t: &CpuTensor| CpuTensor {
            rows: t.rows - 1,
            cols: t.cols,
            data: t.data[..(t.rows - 1) * t.cols].to_vec(),
        };
        self.0.grad_sum(acc, &drop_last(dy), &drop_last(x))
    }
    /// The damping forgotten.
    fn hinv_explicit(
        &self,
        h: &CpuTensor,
        _percdamp: f64,
    ) -> prunebench_kernels::error::Result<HinvExplicit<CpuTensor>> {
        self.0.hinv_explicit(h, 0.0)
    }
    /// W's last row left out of every group's sum.
    fn obs_saliency(
        &self,
        w: &CpuTensor,
        hinv: &CpuTensor,
        width: usize,
        groups: &[usize],
    ) -> prunebench_kernels::error::Result<CpuTensor> {
        let rows: Vec<usize> = (0..w.rows.max(2) - 1).collect();
        let short = self.0.compact(w, Some(&rows), None)?;
        self.0.obs_saliency(&short, hinv, width, groups)
    }
    /// taylor_mix without its Fisher term; the other kinds right.
    fn taylor_saliency(
        &self,
        inp: TaylorInputs<'_, CpuTensor>,
    ) -> prunebench_kernels::error::Result<CpuTensor> {
        match inp.kind {
            TaylorKind::TaylorMix => self.0.taylor_saliency(TaylorInputs {
                kind: TaylorKind::Taylor1,
                ..inp
            }),
            _ => self.0.taylor_saliency(inp),
        }
    }
    /// A rounding residue left in one removed entry of W.
    fn structured_update(
        &self,
        w: &mut CpuTensor,
        hinv: &mut CpuTensor,
        removed: &[usize],
    ) -> prunebench_kernels::error::Result<f64> {
        let loss = self.0.structured_update(w, hinv, removed)?;
        w.data[removed[0]] = 1e-30;
        Ok(loss)
    }
    /// Kept rows gathered in reverse order; column-only compaction right.
    fn compact(
        &self,
        w: &CpuTensor,
        rows: Option<&[usize]>,
        cols: Option<&[usize]>,
    ) -> prunebench_kernels::error::Result<CpuTensor> {
        let mut out = self.0.compact(w, rows, cols)?;
        if rows.is_some() {
            let reversed: Vec<f64> = out.data.chunks(out.cols).rev().flatten().copied().collect();
            out.data = reversed;
        }
        Ok(out)
    }
}

#[test]
fn verification_fails_a_faulty_backend() {
    let faulty = Faulty(cpu());
    let reference = cpu();
    let verdict = |name: &str| {
        let case = small_cases()
            .into_iter()
            .find(|c| c.name() == name)
            .unwrap();
        verify_case(&faulty, &reference, &case)
    };
    // One score off by 1e-3 relative: squared error ~1e-6 of one entry, far above 1e-11.
    assert_eq!(
        verdict("SCORE_WANDA(rows=13,cols=300)").outcome,
        Outcome::Fail
    );
    // Ties broken the wrong way on rows full of exact ties.
    assert_eq!(
        verdict("MASK(pattern=2:4,rows=13,cols=300)").outcome,
        Outcome::Fail
    );
    // A swapped pair of compressed values, and a product missing two terms of one row.
    assert_eq!(
        verdict("COMPRESS(format=bitmap,mask=wanda0.5,rows=13,cols=300)").outcome,
        Outcome::Fail
    );
    assert_eq!(
        verdict("MATMUL(format=bitmap,mask=holes0.6,n=3,rows=13,cols=300)").outcome,
        Outcome::Fail
    );
    // Unaffected ops still pass.
    assert_eq!(
        verdict("MASK(pattern=row0.5,rows=13,cols=300)").outcome,
        Outcome::Pass
    );
}

#[test]
fn verification_fails_faulty_structured_ops() {
    let faulty = Faulty(cpu());
    let reference = cpu();
    let verdict = |name: &str| {
        let case = small_cases()
            .into_iter()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no small case {name}"));
        verify_case(&faulty, &reference, &case).outcome
    };
    for name in [
        // One token of seven missing from dYᵀX.
        "GRAD_SUM(rows=13,cols=37,tokens=7)",
        // Hinv without the 1% damping: about 1% off.
        "HINV_EXPLICIT(cols=130)",
        // A thirteenth of each group's loss missing.
        "OBS_SALIENCY(width=24,rows=13,cols=72)",
        // The mix's ½·W·F·W term dropped: the case's statistics make it count.
        "TAYLOR_SALIENCY(kind=taylor_mix,axis=rows,width=24,rows=72,cols=130)",
        "TAYLOR_SALIENCY(kind=taylor_mix,axis=cols,width=37,rows=13,cols=37)",
        // 1e-30 left where W must be exactly 0: no norm would see it.
        "STRUCTURED_UPDATE(width=24,removed=1,rows=13,cols=72)",
        // Rows in the wrong order.
        "COMPACT(kept_rows=5,kept_cols=all,width=1,rows=13,cols=37)",
    ] {
        assert_eq!(verdict(name), Outcome::Fail, "{name}");
    }
    // Unaffected kinds and axes still pass.
    for name in [
        "TAYLOR_SALIENCY(kind=taylor1,axis=cols,width=24,rows=13,cols=72)",
        "TAYLOR_SALIENCY(kind=taylor2,axis=cols,width=1,rows=1,cols=300)",
        "COMPACT(kept_rows=all,kept_cols=20,width=1,rows=13,cols=37)",
    ] {
        assert_eq!(verdict(name), Outcome::Pass, "{name}");
    }
}
