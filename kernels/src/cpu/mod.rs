//! The CPU reference: every op of the trait in f64, written to be read against
//! ALGORITHMS.md. The dense linear algebra (GEMM, Cholesky, triangular inverse) goes through
//! `faer` (see `linalg`) and rows run in parallel with rayon; nothing else is clever.

pub mod backward;
pub mod forward;
pub mod linalg;
pub mod obs;
pub mod refit;
pub mod select;
pub mod structured;

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::formats::{self, PackedWeight, WeightFormat};
use crate::ops::{
    check, AdamStep, Backend, BackendInfo, GradNorm, HinvExplicit, HinvFactor, LoraForm, LoraGrad,
    LoraInputs, MaskPattern, ObsOutcome, ObsSelection, ReconError, Score, TaylorInputs,
    FMA_PROBE_ADD, FMA_PROBE_MUL, GBLM_GRAD_SCALE,
};
use crate::tensor::{Mask, Matrix};
use linalg::{gemm, View};

/// A row-major f64 matrix: the reference keeps every intermediate in double precision.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl CpuTensor {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
    fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

pub struct CpuBackend {
    info: BackendInfo,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    pub fn new() -> Self {
        let threads = rayon::current_num_threads() as u64;
        Self {
            info: BackendInfo {
                backend: "cpu".into(),
                device: format!("CPU reference (f64, {threads} threads)"),
                vendor: String::new(),
                api: "host".into(),
                driver: String::new(),
                device_type: "cpu".into(),
                limits: vec![("threads".into(), threads)],
            },
        }
    }
}

/// Independent FMA chains per call: enough to fill a core's vector registers, few enough to
/// stay in them.
const FMA_LANES: usize = 64;

/// The FMA probe on one block of chains, with hardware FMA where the CPU has it (the default
/// x86-64 target lacks it, and `mul_add` would then be a library call).
fn fma_chains(v: &mut [f32; FMA_LANES], iters: u32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the features the function is compiled for were just detected.
        unsafe { fma_chains_avx2(v, iters) };
        return;
    }
    for _ in 0..iters {
        for x in v.iter_mut() {
            *x = *x * FMA_PROBE_MUL + FMA_PROBE_ADD;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_chains_avx2(v: &mut [f32; FMA_LANES], iters: u32) {
    use std::arch::x86_64::*;
    // Eight 8-wide registers: eight independent FMA chains in flight per core.
    let m = _mm256_set1_ps(FMA_PROBE_MUL);
    let a = _mm256_set1_ps(FMA_PROBE_ADD);
    let p = v.as_mut_ptr();
    let mut r: [__m256; 8] = [_mm256_setzero_ps(); 8];
    for (k, reg) in r.iter_mut().enumerate() {
        *reg = _mm256_loadu_ps(p.add(8 * k));
    }
    for _ in 0..iters {
        for reg in r.iter_mut() {
            *reg = _mm256_fmadd_ps(*reg, m, a);
        }
    }
    for (k, reg) in r.iter().enumerate() {
        _mm256_storeu_ps(p.add(8 * k), *reg);
    }
}

/// Σ over rows of X of x², per column, in f64. The rows are cut into at most
/// [`SUM_PIECES`] pieces by the shape alone and the pieces' sums added in order, so the
/// result is the same bits on every run (rayon's adaptive fold/reduce is not).
fn column_sumsq(x: &CpuTensor) -> Vec<f64> {
    let cols = x.cols.max(1);
    let piece_rows = x.rows.div_ceil(SUM_PIECES).max(64);
    let pieces: Vec<Vec<f64>> = x
        .data
        .par_chunks(cols * piece_rows)
        .map(|rows| {
            let mut acc = vec![0.0; x.cols];
            for row in rows.chunks(cols) {
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v * v;
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0; x.cols];
    for p in pieces {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// The most pieces a reference reduction is cut into: enough to keep every core busy, few
/// enough that their partial results stay small.
const SUM_PIECES: usize = 64;

fn accumulate(acc: &mut [f64], g: &[f64], norm: GradNorm) {
    let c = GBLM_GRAD_SCALE as f64;
    acc.par_iter_mut().zip(g.par_iter()).for_each(|(a, g)| {
        let v = c * g;
        *a += match norm {
            GradNorm::L2 => v * v,
            GradNorm::L1 => v.abs(),
        };
    });
}

/// tr(D H Dᵀ) for D rows x n, H n x n, as ⟨H, DᵀD⟩ = Σ_ab H_ab·(DᵀD)_ab (the trace is
/// cyclic): the Gram matrix DᵀD is symmetric, so only one triangle of it is computed, rows·n²
/// flops against the 2·rows·n² of forming D·H. Holds for any H, symmetric or not.
fn quadratic_trace(d: &[f64], rows: usize, h: &[f64], n: usize) -> f64 {
    let mut g = vec![0.0; n * n];
    linalg::gram_update(&mut g, n, d, rows, 1.0, 0.0);
    // Row sums in parallel, added in order: the same bits on every run.
    let rows: Vec<f64> = g
        .par_chunks(n.max(1))
        .zip(h.par_chunks(n.max(1)))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>())
        .collect();
    rows.iter().sum()
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Mask = Mask;
    type Packed = PackedWeight;

    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn upload(&self, m: &Matrix) -> Result<CpuTensor> {
        Ok(CpuTensor {
            rows: m.rows,
            cols: m.cols,
            data: m.data.iter().map(|&v| v as f64).collect(),
        })
    }

    fn download(&self, t: &CpuTensor) -> Result<Matrix> {
        Matrix::new(t.rows, t.cols, t.data.iter().map(|&v| v as f32).collect())
    }

    fn upload_mask(&self, m: &Mask) -> Result<Mask> {
        Ok(m.clone())
    }

    fn download_mask(&self, m: &Mask) -> Result<Mask> {
        Ok(m.clone())
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<CpuTensor> {
        Ok(CpuTensor::zeros(rows, cols))
    }

    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        t.shape()
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// A third of the memory the system reports available: the harness sizes its working set
    /// in f32, the reference holds f64 (twice that), and the factor (two) and the
    /// reconstruction error (one) keep further cols² temporaries. Unknown off Linux.
    fn memory_budget(&self) -> Option<u64> {
        crate::host::available_memory().map(|b| b / 3)
    }

    fn act_stat_update(
        &self,
        act: &mut CpuTensor,
        seen: usize,
        x: &CpuTensor,
        batch: usize,
    ) -> Result<()> {
        check::act_stat(act.shape(), x.shape(), batch)?;
        let total = (seen + batch) as f64;
        let keep = seen as f64 / total;
        for (a, s) in act.data.iter_mut().zip(column_sumsq(x)) {
            *a = *a * keep + s / total;
        }
        Ok(())
    }

    fn grad_accumulate(&self, acc: &mut CpuTensor, g: &CpuTensor, norm: GradNorm) -> Result<()> {
        check::same("gradient accumulator vs g", acc.shape(), g.shape())?;
        accumulate(&mut acc.data, &g.data, norm);
        Ok(())
    }

    fn grad_accumulate_fused(
        &self,
        acc: &mut CpuTensor,
        dy: &CpuTensor,
        x: &CpuTensor,
        norm: GradNorm,
    ) -> Result<()> {
        check::fused_grad(acc.shape(), dy.shape(), x.shape())?;
        // The reference materialises g = dYᵀX; only GPU kernels fuse.
        let (t, rows, cols) = (x.rows, dy.cols, x.cols);
        let mut g = vec![0.0; rows * cols];
        gemm(
            rows,
            t,
            cols,
            1.0,
            &dy.data,
            View::transposed(0, rows),
            &x.data,
            View::rows(0, cols),
            0.0,
            &mut g,
            View::rows(0, cols),
        );
        accumulate(&mut acc.data, &g, norm);
        Ok(())
    }

    fn grad_finalize(&self, acc: &CpuTensor, norm: GradNorm) -> Result<CpuTensor> {
        let mut g = acc.clone();
        if norm == GradNorm::L2 {
            g.data.par_iter_mut().for_each(|v| *v = v.sqrt());
        }
        Ok(g)
    }

    fn hessian_update(
        &self,
        h: &mut CpuTensor,
        seen: usize,
        x: &CpuTensor,
        batch: usize,
    ) -> Result<()> {
        check::hessian(h.shape(), x.shape(), batch)?;
        let n = x.cols;
        let total = (seen + batch) as f64;
        // H·n/(n+b) + Zᵀ Z with Z = sqrt(2/(n+b))·X, i.e. alpha = 2/(n+b) on XᵀX; one
        // triangle is computed and mirrored, so H is exactly symmetric.
        linalg::gram_update(
            &mut h.data,
            n,
            &x.data,
            x.rows,
            2.0 / total,
            seen as f64 / total,
        );
        Ok(())
    }

    fn score(&self, w: &CpuTensor, score: Score<'_, CpuTensor>) -> Result<CpuTensor> {
        check::score(w.shape(), &score, |t| t.shape())?;
        let cols = w.cols;
        let mut s = w.clone();
        s.data
            .par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                for (c, v) in row.iter_mut().enumerate() {
                    let a = v.abs();
                    *v = match score {
                        Score::Magnitude => a,
                        Score::Wanda { act } => a * act.data[c].sqrt(),
                        Score::Gblm { act, grad } => {
                            a * act.data[c].sqrt() + a * grad.data[r * cols + c]
                        }
                    };
                }
            });
        Ok(s)
    }

    fn select_mask(&self, scores: &CpuTensor, pattern: MaskPattern) -> Result<Mask> {
        check::pattern(&pattern, scores.cols)?;
        Ok(select::select(
            &scores.data,
            scores.rows,
            scores.cols,
            pattern,
        ))
    }

    fn apply_mask(&self, w: &mut CpuTensor, mask: &Mask) -> Result<()> {
        check::same("mask vs W", (mask.rows, mask.cols), w.shape())?;
        let cols = w.cols;
        w.data
            .par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                for (c, v) in row.iter_mut().enumerate() {
                    if mask.get(r, c) {
                        *v = 0.0;
                    }
                }
            });
        Ok(())
    }

    fn hinv_factor(&self, h: &CpuTensor, percdamp: f64) -> Result<HinvFactor<CpuTensor>> {
        check::same("Hessian", h.shape(), (h.cols, h.cols))?;
        if !(percdamp >= 0.0 && percdamp.is_finite()) {
            return Err(KernelError::InvalidArgument(format!(
                "percdamp {percdamp} must be a finite non-negative number"
            )));
        }
        let n = h.cols;
        let mut a = h.data.clone();
        if let Some(i) = a.iter().position(|v| !v.is_finite()) {
            return Err(KernelError::NonFinite {
                what: "Hessian".into(),
                row: i / n,
                col: i % n,
            });
        }
        let dead: Vec<usize> = (0..n).filter(|&j| a[j * n + j] == 0.0).collect();
        for &j in &dead {
            a[j * n + j] = 1.0;
        }
        let mean_diag = (0..n).map(|j| a[j * n + j]).sum::<f64>() / n.max(1) as f64;
        let damp = percdamp * mean_diag;
        for j in 0..n {
            a[j * n + j] += damp;
        }
        // L = cholesky(H), Hinv = (L Lᵀ)⁻¹, U = cholesky(Hinv, upper), formed as U = J L⁻¹ J
        // from the lower Cholesky L of J(H + λI)J (J the reversal; see
        // `linalg::inverse_upper_cholesky`): the same U, without forming Hinv.
        let u = match linalg::inverse_upper_cholesky(&a, n) {
            Ok(u) => u,
            Err(reversed_column) => {
                // Name the column the direct elimination (the spec's first Cholesky) fails at,
                // as the reference always has; the reversed one meets its failure elsewhere.
                linalg::cholesky_lower(&mut a, n)?;
                return Err(KernelError::NotPositiveDefinite {
                    column: reversed_column,
                });
            }
        };
        // The spec's second Cholesky rejected an inverse that overflowed; U = J L⁻¹ J holds
        // the same overflow, so reject it the same way rather than return NaN weights.
        if let Some(i) = (0..n).find(|&i| !u[i * n..(i + 1) * n].iter().all(|v| v.is_finite())) {
            return Err(KernelError::NotPositiveDefinite { column: i });
        }
        Ok(HinvFactor {
            u: CpuTensor {
                rows: n,
                cols: n,
                data: u,
            },
            dead,
            damp,
        })
    }

    fn obs_prune(
        &self,
        w: &mut CpuTensor,
        factor: &HinvFactor<CpuTensor>,
        selection: ObsSelection<'_, Mask>,
        block: usize,
    ) -> Result<ObsOutcome<Mask>> {
        check::obs(w.shape(), factor.u.shape(), &selection, block)?;
        if let ObsSelection::Given(m) = selection {
            check::same("given mask vs W", (m.rows, m.cols), w.shape())?;
        }
        let (mask, loss) = obs::obs_prune(
            &mut w.data,
            w.rows,
            w.cols,
            &factor.u.data,
            &factor.dead,
            selection,
            block,
        );
        Ok(ObsOutcome { mask, loss })
    }

    fn copy(&self, dst: &mut CpuTensor, src: &CpuTensor) -> Result<()> {
        check::same("copy destination vs source", dst.shape(), src.shape())?;
        dst.data
            .par_chunks_mut(1 << 16)
            .zip(src.data.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        Ok(())
    }

    fn fma_probe(&self, t: &mut CpuTensor, iters: u32) -> Result<()> {
        t.data.par_chunks_mut(FMA_LANES).for_each(|chunk| {
            let mut v = [0.0f32; FMA_LANES];
            for (x, d) in v.iter_mut().zip(chunk.iter()) {
                *x = *d as f32;
            }
            fma_chains(&mut v, iters);
            for (d, x) in chunk.iter_mut().zip(v) {
                *d = x as f64;
            }
        });
        Ok(())
    }

    fn recon_error(&self, w: &CpuTensor, pruned: &CpuTensor, h: &CpuTensor) -> Result<ReconError> {
        check::same("pruned vs original W", pruned.shape(), w.shape())?;
        check::same("Hessian vs W columns", h.shape(), (w.cols, w.cols))?;
        let delta: Vec<f64> = w
            .data
            .iter()
            .zip(&pruned.data)
            .map(|(a, b)| a - b)
            .collect();
        Ok(ReconError {
            num: quadratic_trace(&delta, w.rows, &h.data, w.cols),
            den: quadratic_trace(&w.data, w.rows, &h.data, w.cols),
        })
    }

    fn refit_base(
        &self,
        wp: Option<&CpuTensor>,
        w: &CpuTensor,
        h: &CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor)> {
        refit::refit_base(wp, w, h)
    }

    fn lora_grad(&self, inp: LoraInputs<'_, CpuTensor, Mask>) -> Result<LoraGrad<CpuTensor>> {
        let (db, da, loss) = refit::lora_grad(&inp)?;
        Ok(LoraGrad { db, da, loss })
    }

    fn adamw_step(
        &self,
        param: &mut CpuTensor,
        grad: &CpuTensor,
        m: &mut CpuTensor,
        v: &mut CpuTensor,
        step: AdamStep,
    ) -> Result<()> {
        refit::adamw_step(param, grad, m, v, step)
    }

    fn lora_merge(
        &self,
        wp: &CpuTensor,
        mask: &Mask,
        b: &CpuTensor,
        a: &CpuTensor,
        form: LoraForm,
        s: f64,
    ) -> Result<CpuTensor> {
        refit::lora_merge(wp, mask, b, a, form, s)
    }

    fn row_scale(&self, w_hat: &mut CpuTensor, w: &CpuTensor, h: &CpuTensor) -> Result<CpuTensor> {
        refit::row_scale(w_hat, w, h)
    }

    fn norm_system(
        &self,
        pairs: &[(&CpuTensor, &CpuTensor)],
        h: &CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor)> {
        refit::norm_system(pairs, h)
    }

    fn spd_solve(&self, m: &CpuTensor, rhs: &CpuTensor, percdamp: f64) -> Result<CpuTensor> {
        refit::spd_solve(m, rhs, percdamp)
    }

    fn grad_sum(&self, acc: &mut CpuTensor, dy: &CpuTensor, x: &CpuTensor) -> Result<()> {
        check::fused_grad(acc.shape(), dy.shape(), x.shape())?;
        let (t, rows, cols) = (x.rows, dy.cols, x.cols);
        gemm(
            rows,
            t,
            cols,
            1.0,
            &dy.data,
            View::transposed(0, rows),
            &x.data,
            View::rows(0, cols),
            1.0,
            &mut acc.data,
            View::rows(0, cols),
        );
        Ok(())
    }

    fn hinv_explicit(&self, h: &CpuTensor, percdamp: f64) -> Result<HinvExplicit<CpuTensor>> {
        let f = self.hinv_factor(h, percdamp)?;
        Ok(HinvExplicit {
            hinv: structured::hinv_from_factor(&f),
            dead: f.dead,
            damp: f.damp,
        })
    }

    fn obs_saliency(
        &self,
        w: &CpuTensor,
        hinv: &CpuTensor,
        width: usize,
        groups: &[usize],
    ) -> Result<CpuTensor> {
        structured::obs_saliency(w, hinv, width, groups)
    }

    fn taylor_saliency(&self, inp: TaylorInputs<'_, CpuTensor>) -> Result<CpuTensor> {
        structured::taylor_saliency(inp)
    }

    fn structured_update(
        &self,
        w: &mut CpuTensor,
        hinv: &mut CpuTensor,
        removed: &[usize],
    ) -> Result<f64> {
        structured::structured_update(w, hinv, removed)
    }

    fn compact(
        &self,
        w: &CpuTensor,
        rows: Option<&[usize]>,
        cols: Option<&[usize]>,
    ) -> Result<CpuTensor> {
        structured::compact(w, rows, cols)
    }

    fn compress(&self, w: &CpuTensor, mask: &Mask, format: WeightFormat) -> Result<PackedWeight> {
        formats::compress(&self.download(w)?, mask, format)
    }

    fn decompress(&self, p: &PackedWeight) -> Result<CpuTensor> {
        self.upload(&formats::decompress(p)?)
    }

    fn upload_packed(&self, p: &PackedWeight) -> Result<PackedWeight> {
        p.check_layout()?;
        Ok(p.clone())
    }

    fn download_packed(&self, p: &PackedWeight) -> Result<PackedWeight> {
        Ok(p.clone())
    }

    /// The product in f64 from the decoded f16 values, row by row of W.
    fn sparse_matmul(&self, x: &CpuTensor, w: &PackedWeight) -> Result<CpuTensor> {
        formats::check_matmul(x.shape(), (w.rows, w.cols))?;
        let dense = self.decompress(w)?;
        let (n, rows, cols) = (x.rows, w.rows, w.cols);
        let mut yt = vec![0.0; rows * n];
        yt.par_chunks_mut(n).enumerate().for_each(|(r, out)| {
            let wr = &dense.data[r * cols..(r + 1) * cols];
            for (t, o) in out.iter_mut().enumerate() {
                let xt = &x.data[t * cols..(t + 1) * cols];
                *o = wr.iter().zip(xt).map(|(a, b)| a * b).sum();
            }
        });
        let mut y = CpuTensor::zeros(n, rows);
        for r in 0..rows {
            for t in 0..n {
                y.data[t * rows + r] = yt[r * n + t];
            }
        }
        Ok(y)
    }

    fn linear(&self, x: &CpuTensor, w: &CpuTensor) -> Result<CpuTensor> {
        forward::linear(x, w)
    }

    fn rms_norm(&self, x: &CpuTensor, gamma: &CpuTensor, eps: f64) -> Result<CpuTensor> {
        forward::rms_norm(x, gamma, eps)
    }

    fn rope(&self, x: &mut CpuTensor, cos: &CpuTensor, sin: &CpuTensor) -> Result<()> {
        forward::rope(x, cos, sin)
    }

    fn attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<CpuTensor> {
        forward::attention(q, k, v, heads, kv_heads, seq)
    }

    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor) -> Result<CpuTensor> {
        forward::silu_mul(gate, up)
    }

    fn residual_add(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        forward::residual_add(x, y)
    }

    fn embed(&self, table: &CpuTensor, ids: &[u32]) -> Result<CpuTensor> {
        forward::embed(table, ids)
    }

    fn lm_head_chunk(
        &self,
        state: &mut CpuTensor,
        h: &CpuTensor,
        w_chunk: &CpuTensor,
        offset: usize,
        targets: &[u32],
    ) -> Result<()> {
        forward::lm_head_chunk(state, h, w_chunk, offset, targets)
    }

    fn linear_backward(
        &self,
        x: &CpuTensor,
        w: &CpuTensor,
        dy: &CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor)> {
        backward::linear_backward(x, w, dy)
    }

    fn rms_norm_backward(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        dy: &CpuTensor,
        eps: f64,
    ) -> Result<(CpuTensor, CpuTensor)> {
        backward::rms_norm_backward(x, gamma, dy, eps)
    }

    fn rope_backward(&self, dx: &mut CpuTensor, cos: &CpuTensor, sin: &CpuTensor) -> Result<()> {
        backward::rope_backward(dx, cos, sin)
    }

    fn silu_mul_backward(
        &self,
        gate: &CpuTensor,
        up: &CpuTensor,
        da: &CpuTensor,
    ) -> Result<(CpuTensor, CpuTensor)> {
        backward::silu_mul_backward(gate, up, da)
    }

    fn attention_with_lse(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<(CpuTensor, CpuTensor)> {
        forward::attention_with_lse(q, k, v, heads, kv_heads, seq)
    }

    fn attention_backward(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        o: &CpuTensor,
        lse: &CpuTensor,
        d_o: &CpuTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<(CpuTensor, CpuTensor, CpuTensor)> {
        backward::attention_backward(q, k, v, o, lse, d_o, heads, kv_heads, seq)
    }

    fn embed_backward(&self, dh: &CpuTensor, ids: &[u32], vocab: usize) -> Result<CpuTensor> {
        backward::embed_backward(dh, ids, vocab)
    }

    fn lm_head_backward_chunk(
        &self,
        dh: &mut CpuTensor,
        h: &CpuTensor,
        w_chunk: &CpuTensor,
        offset: usize,
        targets: &[u32],
        lse: &CpuTensor,
        scale: f64,
    ) -> Result<CpuTensor> {
        backward::lm_head_backward_chunk(dh, h, w_chunk, offset, targets, lse, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn quadratic_trace_is_the_trace_of_d_h_dt() {
        let (rows, n) = (23, 40);
        let mut r = Rng::new(3);
        let d: Vec<f64> = (0..rows * n).map(|_| r.normal()).collect();
        // Not symmetric: the Gram form must not rely on it.
        let h: Vec<f64> = (0..n * n).map(|_| r.normal()).collect();
        let mut want = 0.0;
        for i in 0..rows {
            for a in 0..n {
                for b in 0..n {
                    want += d[i * n + a] * h[a * n + b] * d[i * n + b];
                }
            }
        }
        let got = quadratic_trace(&d, rows, &h, n);
        assert!(
            (got - want).abs() < 1e-10 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
}
