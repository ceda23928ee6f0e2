//! The CPU reference of the §14 forward ops on tiny cases worked by hand, and proof that the
//! suite's forward cases fail a backend that gets them wrong or lacks them.

use prunebench_kernels::cpu::{CpuBackend, CpuTensor};
use prunebench_kernels::error::Result;
use prunebench_kernels::formats::round_to_f16;
use prunebench_kernels::rng::heavy_tailed;
use prunebench_kernels::suite::{rope_tables, small_forward_cases, verify_case, OpCase, Outcome};
use prunebench_kernels::{
    nll_from_state, Backend, BackendInfo, GradNorm, HinvFactor, KernelError, Mask, MaskPattern,
    Matrix, ObsOutcome, ObsSelection, ReconError, Score, NO_TARGET,
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

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn rms_norm_of_a_known_row() {
    // x = [3, −4]: mean square 12.5, plus ε = 3.5 is 16, so every entry is divided by 4.
    let y = cpu()
        .rms_norm(&t(1, 2, &[3., -4.]), &t(1, 2, &[2., 0.5]), 3.5)
        .unwrap();
    assert_eq!(y.data, vec![1.5, -0.5]);
    // Rows are normalised each on its own; γ = 1 and ε = 0 leave a unit root mean square.
    let y = cpu()
        .rms_norm(&t(2, 2, &[1., 1., 0., 5.]), &t(1, 2, &[1., 1.]), 0.0)
        .unwrap();
    close(&y.data, &[1., 1., 0., 2f64.sqrt()], 1e-15, "rms");
}

#[test]
fn rope_rotates_each_pair_by_its_angle() {
    let b = cpu();
    // e = 2, one frequency (θ^0 = 1): position p turns (x0, x1) by p radians, as the complex
    // product (x0 + i·x1)·e^{ip}. Two windows of two positions: row 2 starts at 0 again.
    let (cos, sin) = rope_tables(10_000.0, 2, 2);
    assert_eq!((cos.rows, cos.cols), (2, 1));
    let mut x = t(4, 2, &[1., 0., 1., 0., 0.5, 2., 0.5, 2.]);
    b.rope(&mut x, &b.upload(&cos).unwrap(), &b.upload(&sin).unwrap())
        .unwrap();
    // The tables hold the f64 values as f32.
    let (c1, s1) = ((1f64).cos() as f32 as f64, (1f64).sin() as f32 as f64);
    let want = [
        1.,
        0.,
        c1,
        s1,
        0.5,
        2.,
        0.5 * c1 - 2. * s1,
        2. * c1 + 0.5 * s1,
    ];
    close(&x.data, &want, 1e-15, "e=2");

    // Two heads of e = 8 at θ = 500000 over 5 positions, against the complex product with the
    // angles p·θ^(−2i/e) computed here in f64 (the tables hold them as f32).
    let (e, seq, theta) = (8usize, 5usize, 500_000.0f64);
    let (cos, sin) = rope_tables(theta, e, seq);
    let host = heavy_tailed(seq, 2 * e, 3);
    let mut x = b.upload(&host).unwrap();
    b.rope(&mut x, &b.upload(&cos).unwrap(), &b.upload(&sin).unwrap())
        .unwrap();
    let half = e / 2;
    for p in 0..seq {
        for head in 0..2 {
            for i in 0..half {
                let angle = p as f64 * theta.powf(-2.0 * i as f64 / e as f64);
                let (re, im) = (
                    host.get(p, head * e + i) as f64,
                    host.get(p, head * e + i + half) as f64,
                );
                let (wr, wi) = (
                    re * angle.cos() - im * angle.sin(),
                    re * angle.sin() + im * angle.cos(),
                );
                let got = (
                    x.data[p * 2 * e + head * e + i],
                    x.data[p * 2 * e + head * e + i + half],
                );
                let scale = re.abs().max(im.abs());
                assert!(
                    (got.0 - wr).abs() <= 1e-6 * scale && (got.1 - wi).abs() <= 1e-6 * scale,
                    "p {p} head {head} i {i}: {got:?} vs ({wr}, {wi})"
                );
            }
        }
    }
}

#[test]
fn attention_over_one_position_returns_v_of_the_kv_head() {
    // Four query heads over two KV heads of e = 3, three windows of one row: each row sees only
    // itself, so head h returns row t of KV head ⌊h/2⌋ of V.
    let (heads, kv, e, n) = (4, 2, 3, 3);
    let b = cpu();
    let q = b.upload(&heavy_tailed(n, heads * e, 1)).unwrap();
    let k = b.upload(&heavy_tailed(n, kv * e, 2)).unwrap();
    let v = b.upload(&heavy_tailed(n, kv * e, 3)).unwrap();
    let o = b.attention(&q, &k, &v, heads, kv, 1).unwrap();
    for row in 0..n {
        for h in 0..heads {
            let g = h / (heads / kv);
            close(
                &o.data[row * heads * e + h * e..][..e],
                &v.data[row * kv * e + g * e..][..e],
                1e-15,
                "seq 1",
            );
        }
    }
}

#[test]
fn attention_with_uniform_scores_is_the_running_mean_of_v() {
    // Every key row the same: q·k is one value per query, the softmax uniform over the rows
    // seen so far, so row t is the mean of V over its window's rows ≤ t. Two windows of 4.
    let (heads, kv, e, seq, n) = (2, 1, 4, 4, 8);
    let b = cpu();
    let q = b.upload(&heavy_tailed(n, heads * e, 1)).unwrap();
    let krow = [0.3, -1.2, 2.0, 0.7];
    let k = t(n, e, &krow.repeat(n));
    let vh = heavy_tailed(n, e, 2);
    let v = b.upload(&vh).unwrap();
    let o = b.attention(&q, &k, &v, heads, kv, seq).unwrap();
    for row in 0..n {
        let start = row - row % seq;
        let mean: Vec<f64> = (0..e)
            .map(|c| {
                (start..=row).map(|j| vh.get(j, c) as f64).sum::<f64>() / (row - start + 1) as f64
            })
            .collect();
        for h in 0..heads {
            close(
                &o.data[row * heads * e + h * e..][..e],
                &mean,
                1e-12,
                "mean",
            );
        }
    }
}

#[test]
fn chunked_lm_head_state_is_the_one_chunk_state_and_the_log_softmax() {
    let b = cpu();
    let (n, d, vocab) = (4, 5, 7);
    let hh = heavy_tailed(n, d, 1);
    let wh = heavy_tailed(vocab, d, 2);
    let h = b.upload(&hh).unwrap();
    let targets = [6, NO_TARGET, 0, 3];
    let run = |chunk: usize| {
        // Whatever the state held: the first chunk starts it afresh.
        let mut state = b.upload(&heavy_tailed(n, 3, 9)).unwrap();
        for r0 in (0..vocab).step_by(chunk) {
            let r1 = (r0 + chunk).min(vocab);
            let part = Matrix::new(r1 - r0, d, wh.data[r0 * d..r1 * d].to_vec()).unwrap();
            b.lm_head_chunk(&mut state, &h, &b.upload(&part).unwrap(), r0, &targets)
                .unwrap();
        }
        state
    };
    let whole = run(vocab);
    // Chunks of 3, 3 and 1: the running max and rescaled sum reach the same state.
    close(&run(3).data, &whole.data, 1e-12, "chunked state");
    close(&run(1).data, &whole.data, 1e-12, "one row per chunk");
    // The direct log-softmax in f64.
    let nll = nll_from_state(&b.download(&whole).unwrap());
    for (row, &target) in targets.iter().enumerate() {
        let logits: Vec<f64> = (0..vocab)
            .map(|j| {
                (0..d)
                    .map(|c| hh.get(row, c) as f64 * wh.get(j, c) as f64)
                    .sum()
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
        let want = if target == NO_TARGET {
            lse // z stays 0: the log-sum-exp alone
        } else {
            lse - logits[target as usize]
        };
        // The state went through f32.
        assert!(
            (nll[row] - want).abs() <= 1e-5 * want.abs().max(1.0),
            "row {row}: {} vs {want}",
            nll[row]
        );
        if target == NO_TARGET {
            assert_eq!(whole.data[row * 3 + 2], 0.0);
        }
    }
}

#[test]
fn silu_at_zero_and_far_out() {
    let y = cpu()
        .silu_mul(
            &t(1, 5, &[0., 50., -50., 1., -1000.]),
            &t(1, 5, &[7., 2., 3., 1., 1.]),
        )
        .unwrap();
    assert_eq!(y.data[0], 0.0);
    // silu(z) → z for large z and → 0 (from below) for very negative z, never NaN.
    assert_eq!(y.data[1], 100.0);
    assert!(y.data[2] < 0.0 && y.data[2] > -1e-19, "{}", y.data[2]);
    close(
        &y.data[3..4],
        &[1.0 / (1.0 + (-1f64).exp())],
        1e-15,
        "silu(1)",
    );
    assert_eq!(y.data[4], 0.0);
}

#[test]
fn embed_and_residual_add() {
    let b = cpu();
    let table = t(3, 2, &[1., 2., 3., 4., 5., 6.]);
    assert_eq!(
        b.embed(&table, &[2, 0, 2]).unwrap().data,
        vec![5., 6., 1., 2., 5., 6.]
    );
    assert!(b.embed(&table, &[3]).is_err());
    let mut x = t(1, 2, &[1., 2.]);
    b.residual_add(&mut x, &t(1, 2, &[0.5, -2.])).unwrap();
    assert_eq!(x.data, vec![1.5, 0.]);
}

/// The reference with a fault in each forward op, or (`forward: false`) without them, as a
/// GPU backend that has not implemented them: the forward cases must fail either way.
struct Faulty {
    cpu: CpuBackend,
    forward: bool,
}

impl Faulty {
    fn has_forward(&self) -> Result<()> {
        if self.forward {
            Ok(())
        } else {
            Err(KernelError::Unsupported("no forward ops".into()))
        }
    }
}

impl Backend for Faulty {
    type Tensor = CpuTensor;
    type Mask = Mask;
    type Packed = <CpuBackend as Backend>::Packed;
    fn info(&self) -> &BackendInfo {
        self.cpu.info()
    }
    fn upload(&self, m: &Matrix) -> Result<CpuTensor> {
        self.cpu.upload(m)
    }
    fn download(&self, t: &CpuTensor) -> Result<Matrix> {
        self.cpu.download(t)
    }
    fn upload_mask(&self, m: &Mask) -> Result<Mask> {
        self.cpu.upload_mask(m)
    }
    fn download_mask(&self, m: &Mask) -> Result<Mask> {
        self.cpu.download_mask(m)
    }
    fn zeros(&self, r: usize, c: usize) -> Result<CpuTensor> {
        self.cpu.zeros(r, c)
    }
    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        self.cpu.shape(t)
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn act_stat_update(&self, a: &mut CpuTensor, n: usize, x: &CpuTensor, b: usize) -> Result<()> {
        self.cpu.act_stat_update(a, n, x, b)
    }
    fn grad_accumulate(&self, a: &mut CpuTensor, g: &CpuTensor, n: GradNorm) -> Result<()> {
        self.cpu.grad_accumulate(a, g, n)
    }
    fn grad_accumulate_fused(
        &self,
        a: &mut CpuTensor,
        dy: &CpuTensor,
        x: &CpuTensor,
        n: GradNorm,
    ) -> Result<()> {
        self.cpu.grad_accumulate_fused(a, dy, x, n)
    }
    fn grad_finalize(&self, a: &CpuTensor, n: GradNorm) -> Result<CpuTensor> {
        self.cpu.grad_finalize(a, n)
    }
    fn hessian_update(&self, h: &mut CpuTensor, n: usize, x: &CpuTensor, b: usize) -> Result<()> {
        self.cpu.hessian_update(h, n, x, b)
    }
    fn score(&self, w: &CpuTensor, s: Score<'_, CpuTensor>) -> Result<CpuTensor> {
        self.cpu.score(w, s)
    }
    fn select_mask(&self, s: &CpuTensor, p: MaskPattern) -> Result<Mask> {
        self.cpu.select_mask(s, p)
    }
    fn apply_mask(&self, w: &mut CpuTensor, m: &Mask) -> Result<()> {
        self.cpu.apply_mask(w, m)
    }
    fn hinv_factor(&self, h: &CpuTensor, percdamp: f64) -> Result<HinvFactor<CpuTensor>> {
        self.cpu.hinv_factor(h, percdamp)
    }
    fn obs_prune(
        &self,
        w: &mut CpuTensor,
        f: &HinvFactor<CpuTensor>,
        s: ObsSelection<'_, Mask>,
        block: usize,
    ) -> Result<ObsOutcome<Mask>> {
        self.cpu.obs_prune(w, f, s, block)
    }
    fn recon_error(&self, w: &CpuTensor, p: &CpuTensor, h: &CpuTensor) -> Result<ReconError> {
        self.cpu.recon_error(w, p, h)
    }

    /// Computes in f16: about 5e-4 relative per input, far past a GEMM's f32 tolerance.
    fn linear(&self, x: &CpuTensor, w: &CpuTensor) -> Result<CpuTensor> {
        self.has_forward()?;
        let half = |t: &CpuTensor| self.upload(&round_to_f16(&self.download(t)?));
        self.cpu.linear(&half(x)?, &half(w)?)
    }
    /// Leaves ε out.
    fn rms_norm(&self, x: &CpuTensor, gamma: &CpuTensor, _eps: f64) -> Result<CpuTensor> {
        self.has_forward()?;
        self.cpu.rms_norm(x, gamma, 0.0)
    }
    /// Turns the other way.
    fn rope(&self, x: &mut CpuTensor, cos: &CpuTensor, sin: &CpuTensor) -> Result<()> {
        self.has_forward()?;
        let mut neg = sin.clone();
        neg.data.iter_mut().for_each(|s| *s = -*s);
        self.cpu.rope(x, cos, &neg)
    }
    /// Attends across the windows' boundaries, as if all rows were one window.
    fn attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        heads: usize,
        kv_heads: usize,
        _seq: usize,
    ) -> Result<CpuTensor> {
        self.has_forward()?;
        self.cpu.attention(q, k, v, heads, kv_heads, q.rows)
    }
    /// The sigmoid of the gate times up, without the gate's own factor.
    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
        self.has_forward()?;
        let mut y = gate.clone();
        for (g, u) in y.data.iter_mut().zip(&up.data) {
            *g = u / (1.0 + (-*g).exp());
        }
        Ok(y)
    }
    /// Misses the last entry.
    fn residual_add(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        self.has_forward()?;
        let last = x.data[x.data.len() - 1];
        self.cpu.residual_add(x, y)?;
        *x.data.last_mut().unwrap() = last;
        Ok(())
    }
    /// Clamps ids one short of the table's end.
    fn embed(&self, table: &CpuTensor, ids: &[u32]) -> Result<CpuTensor> {
        self.has_forward()?;
        let top = table.rows.saturating_sub(2) as u32;
        let ids: Vec<u32> = ids.iter().map(|&i| i.min(top)).collect();
        self.cpu.embed(table, &ids)
    }
    /// Skips the vocabulary's last chunk where there are several.
    fn lm_head_chunk(
        &self,
        state: &mut CpuTensor,
        h: &CpuTensor,
        w: &CpuTensor,
        offset: usize,
        targets: &[u32],
    ) -> Result<()> {
        self.has_forward()?;
        // Every small case's vocabulary ends on a short chunk, or has one chunk.
        if offset > 0 && w.rows < offset {
            return Ok(());
        }
        self.cpu.lm_head_chunk(state, h, w, offset, targets)
    }
}

fn outcomes(b: &Faulty) -> Vec<(OpCase, Outcome)> {
    let reference = cpu();
    small_forward_cases()
        .into_iter()
        .map(|c| {
            let r = verify_case(b, &reference, &c);
            (c, r.outcome)
        })
        .collect()
}

#[test]
fn forward_cases_fail_a_wrong_backend() {
    use prunebench_kernels::suite::Op;
    let faulty = Faulty {
        cpu: cpu(),
        forward: true,
    };
    for (case, outcome) in outcomes(&faulty) {
        let n = case.tokens;
        // Where each fault cannot show: ε only counts in every third row from the third on,
        // a turn by 0 (seq = 1) either way is none, a single window has no boundary, a
        // single chunk no last chunk to skip.
        let can_pass = match case.op {
            Op::RmsNorm => n < 3,
            Op::Rope { seq, .. } => seq == 1,
            Op::Attention { seq, .. } => n == seq,
            Op::LmHead { chunk } => chunk >= case.rows,
            _ => false,
        };
        let want = if can_pass {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        assert_eq!(outcome, want, "{}", case.name());
    }
}

#[test]
fn forward_cases_fail_a_backend_without_the_ops() {
    let missing = Faulty {
        cpu: cpu(),
        forward: false,
    };
    let all = outcomes(&missing);
    assert!(!all.is_empty());
    for (case, outcome) in &all {
        assert_eq!(
            outcome,
            &Outcome::Unsupported("no forward ops".into()),
            "{}",
            case.name()
        );
    }
    // `verify_cases` (the conformance tests) counts an unsupported case as not passed.
    let failures = prunebench_kernels::suite::verify_cases(
        &missing,
        &all.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
    );
    assert_eq!(failures.len(), all.len());
}
