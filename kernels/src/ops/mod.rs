//! The op set of ALGORITHMS.md as one trait (`Backend`): every op the suite runs, from the
//! statistics of §2 to the whole-model forward of §14. Its parameters are in `params`, the
//! tolerance each GPU result is held to against the CPU reference in `tolerance`, and the
//! shape checks every backend shares in `check`.
//!
//! Tensors live on the backend's device between ops (`Backend::Tensor`), so a method can chain
//! statistics, scores, masks and updates without host round trips; `upload`/`download` are the
//! only crossings. All device tensors are f32 (the CPU reference holds f64).

pub mod check;
mod params;
pub mod tolerance;

pub use params::*;

use std::time::Instant;

use crate::error::{KernelError, Result};
use crate::formats::{PackedWeight, WeightFormat};
use crate::tensor::{Mask, Matrix};

/// What a backend without an op answers: the op is refused by name, never faked.
fn unsupported<T>(info: &BackendInfo, what: &str) -> Result<T> {
    Err(KernelError::Unsupported(format!(
        "{}: {what}",
        info.backend
    )))
}

/// The op set. Shapes: a weight W is rows x cols (out x in), a calibration batch X is
/// (b·T) x cols, output gradients dY are T x rows, statistics `a` are 1 x cols, H is cols x cols.
pub trait Backend {
    /// A matrix resident on the backend's device.
    type Tensor;
    /// A bit-packed mask resident on the device (layout of [`Mask`]).
    type Mask;
    /// A compressed weight resident on the device (layout of [`PackedWeight`]).
    type Packed;

    fn info(&self) -> &BackendInfo;

    fn upload(&self, m: &Matrix) -> Result<Self::Tensor>;
    fn download(&self, t: &Self::Tensor) -> Result<Matrix>;
    fn upload_mask(&self, m: &Mask) -> Result<Self::Mask>;
    fn download_mask(&self, m: &Self::Mask) -> Result<Mask>;
    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);
    /// Waits until all submitted work has finished.
    fn synchronize(&self) -> Result<()>;

    /// Device memory the backend may use, in bytes, where it knows; the harness checks a
    /// layer's working set against it before any work starts.
    fn memory_budget(&self) -> Option<u64> {
        None
    }

    /// Runs `work` and says how long the device spent on it. The default drains the device
    /// and uses the wall clock; GPU backends override it with timestamps where they have them.
    fn timed(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<(f64, TimeSource)> {
        self.synchronize()?;
        let t0 = Instant::now();
        work()?;
        self.synchronize()?;
        Ok((t0.elapsed().as_secs_f64(), TimeSource::WallClock))
    }

    /// §1: a ← a·n/(n+b) + ‖X[:, j]‖²/(n+b), with `seen` = n samples before and `batch` = b
    /// samples whose tokens are stacked in `x`.
    fn act_stat_update(
        &self,
        act: &mut Self::Tensor,
        seen: usize,
        x: &Self::Tensor,
        batch: usize,
    ) -> Result<()>;

    /// §2(a): A ← A + (c·g)² (l2) or A + |c·g| (l1) for one sample's gradient g (rows x cols).
    fn grad_accumulate(
        &self,
        acc: &mut Self::Tensor,
        g: &Self::Tensor,
        norm: GradNorm,
    ) -> Result<()>;

    /// §2(b): the same for g = dYᵀ X of one sample (dY: T x rows, X: T x cols), without
    /// materialising g.
    fn grad_accumulate_fused(
        &self,
        acc: &mut Self::Tensor,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        norm: GradNorm,
    ) -> Result<()>;

    /// §2: G = sqrt(A) for l2, G = A for l1.
    fn grad_finalize(&self, acc: &Self::Tensor, norm: GradNorm) -> Result<Self::Tensor>;

    /// §3: H ← H·n/(n+b) + (2/(n+b))·XᵀX.
    fn hessian_update(
        &self,
        h: &mut Self::Tensor,
        seen: usize,
        x: &Self::Tensor,
        batch: usize,
    ) -> Result<()>;

    /// §4: the importance scores of W.
    fn score(&self, w: &Self::Tensor, score: Score<'_, Self::Tensor>) -> Result<Self::Tensor>;

    /// §5: the pruned set of a score matrix; ties go to the lower column (or linear) index.
    fn select_mask(&self, scores: &Self::Tensor, pattern: MaskPattern) -> Result<Self::Mask>;

    /// §5: W_ij ← 0 where the mask is set.
    fn apply_mask(&self, w: &mut Self::Tensor, mask: &Self::Mask) -> Result<()>;

    /// §4+§5 in one: score, select and apply. Backends fuse this where one pass can do it;
    /// the result must equal the three ops run one after another.
    fn prune_scored(
        &self,
        w: &mut Self::Tensor,
        score: Score<'_, Self::Tensor>,
        pattern: MaskPattern,
    ) -> Result<Self::Mask> {
        let s = self.score(w, score)?;
        let mask = self.select_mask(&s, pattern)?;
        self.apply_mask(w, &mask)?;
        Ok(mask)
    }

    /// §6: dead columns, damping λ = percdamp·mean(diag H), and U = chol_upper((H+λI)⁻¹).
    fn hinv_factor(&self, h: &Self::Tensor, percdamp: f64) -> Result<HinvFactor<Self::Tensor>>;

    /// §7: blocked OBS prune of W in place with block size `block` (OBS_BLOCK in SparseGPT);
    /// zeroes `factor.dead` columns first.
    fn obs_prune(
        &self,
        w: &mut Self::Tensor,
        factor: &HinvFactor<Self::Tensor>,
        selection: ObsSelection<'_, Self::Mask>,
        block: usize,
    ) -> Result<ObsOutcome<Self::Mask>>;

    /// Ceiling probe for bandwidth: dst ← src (same shape), each element read and written
    /// once, as a device-to-device copy.
    fn copy(&self, _dst: &mut Self::Tensor, _src: &Self::Tensor) -> Result<()> {
        unsupported(self.info(), "no copy probe")
    }

    /// Ceiling probe for arithmetic: every element v of `t` runs
    /// `v ← v·FMA_PROBE_MUL + FMA_PROBE_ADD` `iters` times (2·iters flops per element; the
    /// elements are independent chains, so a GPU can overlap them). Compare with
    /// [`fma_probe_expected`].
    fn fma_probe(&self, _t: &mut Self::Tensor, _iters: u32) -> Result<()> {
        unsupported(self.info(), "no FMA probe")
    }

    /// §9: tr(ΔW H ΔWᵀ) and tr(W H Wᵀ) with ΔW = W − pruned.
    fn recon_error(
        &self,
        w: &Self::Tensor,
        pruned: &Self::Tensor,
        h: &Self::Tensor,
    ) -> Result<ReconError>;

    /// §12: Δ = W_p − W (or −W without `wp`) and Δ·H, the constant part of every re-fit
    /// gradient, once per linear.
    fn refit_base(
        &self,
        _wp: Option<&Self::Tensor>,
        _w: &Self::Tensor,
        _h: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        unsupported(self.info(), "no re-fit")
    }

    /// §12: one LoRA gradient (see [`LoraInputs`]); D is formed on the fly, never stored.
    fn lora_grad(
        &self,
        _inp: LoraInputs<'_, Self::Tensor, Self::Mask>,
    ) -> Result<LoraGrad<Self::Tensor>> {
        unsupported(self.info(), "no LoRA re-fit")
    }

    /// §12: AdamW on `param` in place with its moments `m`, `v`.
    fn adamw_step(
        &self,
        _param: &mut Self::Tensor,
        _grad: &Self::Tensor,
        _m: &mut Self::Tensor,
        _v: &mut Self::Tensor,
        _step: AdamStep,
    ) -> Result<()> {
        unsupported(self.info(), "no AdamW")
    }

    /// §12: the merged weight, W_p + s·M̄ ⊙ (B·A) or W_p ⊙ (B·A), zero wherever the mask is set
    /// (the explicit mask, whatever the product gives there).
    fn lora_merge(
        &self,
        _wp: &Self::Tensor,
        _mask: &Self::Mask,
        _b: &Self::Tensor,
        _a: &Self::Tensor,
        _form: LoraForm,
        _s: f64,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no LoRA merge")
    }

    /// §12 `rowscale`: s_i = (ŵ_i H w_iᵀ)/(ŵ_i H ŵ_iᵀ) (1 where the denominator is 0), Ŵ_i ←
    /// s_i·ŵ_i in place; returns s (1 x rows).
    fn row_scale(
        &self,
        _w_hat: &mut Self::Tensor,
        _w: &Self::Tensor,
        _h: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no row scale")
    }

    /// §12 `norm`: the system Σ_l (Ŵ_lᵀŴ_l) ⊙ H (cols x cols) and the right-hand side
    /// Σ_l diag(Ŵ_lᵀ (W_l − Ŵ_l) H) (1 x cols) over the (Ŵ_l, W_l) pairs that share the input:
    /// the normal equations for c − 1, so damping pulls towards the unchanged norm.
    fn norm_system(
        &self,
        _pairs: &[(&Self::Tensor, &Self::Tensor)],
        _h: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        unsupported(self.info(), "no norm re-fit")
    }

    /// (M + λI)⁻¹·rhs for symmetric positive semi-definite M and a 1 x n rhs, λ = percdamp ·
    /// mean(diag M) as §6 damps, through the §6 factor.
    fn spd_solve(
        &self,
        _m: &Self::Tensor,
        _rhs: &Self::Tensor,
        _percdamp: f64,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no solve")
    }

    /// §11: A ← A + dYᵀX for one sample (the plain sum whose mean is Ḡ), without
    /// materialising dYᵀX: the fused GEMM of §2(b) with a plain-sum epilogue.
    fn grad_sum(
        &self,
        _acc: &mut Self::Tensor,
        _dy: &Self::Tensor,
        _x: &Self::Tensor,
    ) -> Result<()> {
        unsupported(self.info(), "no mean-gradient accumulation")
    }

    /// §11: Hinv = (H + λI)⁻¹ written out, from §6's factor (dead diagonals to 1, the same λ).
    fn hinv_explicit(
        &self,
        _h: &Self::Tensor,
        _percdamp: f64,
    ) -> Result<HinvExplicit<Self::Tensor>> {
        unsupported(self.info(), "no explicit inverse Hessian")
    }

    /// §11 `obs`: for each listed group g (columns [g·width, (g+1)·width) of the consumer W),
    /// ε_g = ½·tr(W[:,S] (Hinv[S,S])⁻¹ W[:,S]ᵀ); 1 x groups.len().
    fn obs_saliency(
        &self,
        _w: &Self::Tensor,
        _hinv: &Self::Tensor,
        _width: usize,
        _groups: &[usize],
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no OBS saliency")
    }

    /// §11 Taylor saliency: one matrix's segmented sums (see [`TaylorInputs`]), 1 x segments.
    fn taylor_saliency(&self, _inp: TaylorInputs<'_, Self::Tensor>) -> Result<Self::Tensor> {
        unsupported(self.info(), "no Taylor saliency")
    }

    /// §11 compensation for the removed column set S (sorted, distinct):
    /// W ← W − W[:,S]·(Hinv[S,S])⁻¹·Hinv[S,:] and Hinv ← Hinv − Hinv[:,S]·(Hinv[S,S])⁻¹·Hinv[S,:],
    /// with W[:,S] and Hinv's rows and columns S exactly 0 after. Returns ε_S, the loss the
    /// removal adds (`obs_saliency` of S as one group).
    fn structured_update(
        &self,
        _w: &mut Self::Tensor,
        _hinv: &mut Self::Tensor,
        _removed: &[usize],
    ) -> Result<f64> {
        unsupported(self.info(), "no structured OBS update")
    }

    /// §11 compaction: the kept rows (all when `None`) and kept columns (all when `None`) of
    /// W, each list sorted ascending, as a smaller dense tensor.
    fn compact(
        &self,
        _w: &Self::Tensor,
        _rows: Option<&[usize]>,
        _cols: Option<&[usize]>,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no compaction")
    }

    /// §13: W under its mask (set = pruned; the mask decides, never a zero value) in `format`,
    /// kept values rounded to f16. Refuses a weight that is not 2:4 for the 2:4 format and a
    /// kept value f16 cannot hold, with the errors of [`crate::formats`].
    fn compress(
        &self,
        _w: &Self::Tensor,
        _mask: &Self::Mask,
        format: WeightFormat,
    ) -> Result<Self::Packed> {
        unsupported(self.info(), &format!("no {} compression", format.name()))
    }

    /// §13: the dense weight back from its compressed form (zeros where nothing is stored).
    fn decompress(&self, _p: &Self::Packed) -> Result<Self::Tensor> {
        unsupported(self.info(), "no decompression")
    }

    fn upload_packed(&self, _p: &PackedWeight) -> Result<Self::Packed> {
        unsupported(self.info(), "no compressed weights")
    }

    fn download_packed(&self, _p: &Self::Packed) -> Result<PackedWeight> {
        unsupported(self.info(), "no compressed weights")
    }

    /// §13: Y = X·Wᵀ for X [N, cols] and a compressed W [rows, cols]: Y [N, rows], f32
    /// accumulation of the f16 values.
    fn sparse_matmul(&self, _x: &Self::Tensor, _w: &Self::Packed) -> Result<Self::Tensor> {
        unsupported(self.info(), "no compressed-weight product")
    }

    /// §14 linear: Y = X·Wᵀ for X [N, cols] and W [rows, cols] (the HF layout): Y [N, rows].
    fn linear(&self, _x: &Self::Tensor, _w: &Self::Tensor) -> Result<Self::Tensor> {
        unsupported(self.info(), "no linear")
    }

    /// §14 RMSNorm per row (token): y = x / sqrt(mean(x²) + eps) · γ, with γ 1 x d.
    fn rms_norm(
        &self,
        _x: &Self::Tensor,
        _gamma: &Self::Tensor,
        _eps: f64,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no RMSNorm")
    }

    /// §14 RoPE in place on x [N, heads·e], HF's `rotate_half` form: for each head and
    /// i < e/2, (x_i, x_{i+e/2}) ← (x_i·c − x_{i+e/2}·s, x_{i+e/2}·c + x_i·s) with c, s the
    /// entries (t mod seq, i) of the tables `cos`, `sin` [seq, e/2]: windows of seq rows are
    /// stacked, each starting at position 0.
    fn rope(&self, _x: &mut Self::Tensor, _cos: &Self::Tensor, _sin: &Self::Tensor) -> Result<()> {
        unsupported(self.info(), "no RoPE")
    }

    /// §14 causal GQA attention over stacked windows of `seq` rows: q [N, heads·e], k and v
    /// [N, kv_heads·e]; query head h reads KV head ⌊h/r⌋ (r = heads/kv_heads); row t attends
    /// to rows ≤ t of its own window; softmax(q·kᵀ/√e) in f32 with the max subtracted, never a
    /// seq x seq matrix in memory. Output [N, heads·e].
    fn attention(
        &self,
        _q: &Self::Tensor,
        _k: &Self::Tensor,
        _v: &Self::Tensor,
        _heads: usize,
        _kv_heads: usize,
        _seq: usize,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no attention")
    }

    /// §14 the MLP's activation: silu(gate) ⊙ up, silu(z) = z / (1 + e^−z).
    fn silu_mul(&self, _gate: &Self::Tensor, _up: &Self::Tensor) -> Result<Self::Tensor> {
        unsupported(self.info(), "no SiLU-gate product")
    }

    /// §14 the residual add: x ← x + y.
    fn residual_add(&self, _x: &mut Self::Tensor, _y: &Self::Tensor) -> Result<()> {
        unsupported(self.info(), "no residual add")
    }

    /// §14 embedding gather: rows `ids` of `table` [vocab, d], as [ids.len(), d].
    fn embed(&self, _table: &Self::Tensor, _ids: &[u32]) -> Result<Self::Tensor> {
        unsupported(self.info(), "no embedding gather")
    }

    /// §14 the LM head fused with log-softmax and the next-token loss, one vocabulary chunk
    /// at a time so that the logits never sit in memory whole: `w_chunk` holds the vocabulary
    /// rows `offset..offset + w_chunk.rows` of the head; logits l = h·w_chunkᵀ [N, chunk] are
    /// folded into the running per-row `state` [N, 3] = (m, s, z): m the largest logit so far,
    /// s = Σ exp(l − m), z the logit of `targets[t]` once its chunk is seen (0 until then, and
    /// for `NO_TARGET`). `offset == 0` starts the state afresh, whatever it held. See
    /// [`nll_from_state`].
    fn lm_head_chunk(
        &self,
        _state: &mut Self::Tensor,
        _h: &Self::Tensor,
        _w_chunk: &Self::Tensor,
        _offset: usize,
        _targets: &[u32],
    ) -> Result<()> {
        unsupported(self.info(), "no LM-head loss")
    }

    // §15, the backward pass: each op takes the forward's inputs and the gradient of its
    // output, and returns the gradients of its inputs.

    /// §15 linear backward for Y = X·Wᵀ (X [N, cols], W [rows, cols], dY [N, rows]):
    /// (dX = dY·W [N, cols], dW = dYᵀ·X [rows, cols]).
    fn linear_backward(
        &self,
        _x: &Self::Tensor,
        _w: &Self::Tensor,
        _dy: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        unsupported(self.info(), "no linear backward")
    }

    /// §15 RMSNorm backward: with r = (mean(x²) + eps)^(−1/2) per row and g = γ ⊙ dy,
    /// dx = r·g − (r³/d)·x·Σ_j g_j·x_j, and dγ = Σ_rows dy ⊙ x·r (1 x d): (dx, dγ).
    fn rms_norm_backward(
        &self,
        _x: &Self::Tensor,
        _gamma: &Self::Tensor,
        _dy: &Self::Tensor,
        _eps: f64,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        unsupported(self.info(), "no RMSNorm backward")
    }

    /// §15 RoPE backward in place on dx (the tables and layout of [`Backend::rope`]): the
    /// transposed rotation, (d_i, d_{i+e/2}) ← (d_i·c + d_{i+e/2}·s, d_{i+e/2}·c − d_i·s).
    fn rope_backward(
        &self,
        _dx: &mut Self::Tensor,
        _cos: &Self::Tensor,
        _sin: &Self::Tensor,
    ) -> Result<()> {
        unsupported(self.info(), "no RoPE backward")
    }

    /// §15 SiLU-gate backward for a = silu(g) ⊙ u: (dg, du) with du = da ⊙ silu(g) and
    /// dg = da ⊙ u ⊙ σ(g)·(1 + g·(1 − σ(g))).
    fn silu_mul_backward(
        &self,
        _gate: &Self::Tensor,
        _up: &Self::Tensor,
        _da: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        unsupported(self.info(), "no SiLU-gate backward")
    }

    /// §15 the LM head's backward with the loss, one vocabulary chunk at a time as the forward
    /// (`w_chunk` holds the head's rows `offset..offset + w_chunk.rows`): with `lse` [N, 1] the
    /// forward's per-row log-sum-exp over the whole vocabulary (m + ln s of its state) and
    /// `scale` the loss's 1/(T − 1), dlogits(t, v) = scale·(exp(h_t·w_v − lse_t) −
    /// [offset + v = targets[t]]), zero for rows whose target is `NO_TARGET`; dh += dlogits·w_chunk
    /// and the chunk's dW = dlogitsᵀ·h is returned. The logits exist a chunk at a time only.
    #[allow(clippy::too_many_arguments)]
    fn lm_head_backward_chunk(
        &self,
        _dh: &mut Self::Tensor,
        _h: &Self::Tensor,
        _w_chunk: &Self::Tensor,
        _offset: usize,
        _targets: &[u32],
        _lse: &Self::Tensor,
        _scale: f64,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no LM-head backward")
    }

    /// §15 causal GQA attention as [`Backend::attention`], also returning what its backward
    /// recomputes the probabilities from: L [N, heads], each row's and head's log-sum-exp of
    /// the scaled scores q·kᵀ/√e over the keys it attends to.
    fn attention_with_lse(
        &self,
        _q: &Self::Tensor,
        _k: &Self::Tensor,
        _v: &Self::Tensor,
        _heads: usize,
        _kv_heads: usize,
        _seq: usize,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        unsupported(self.info(), "no attention log-sum-exp")
    }

    /// §15 attention backward, FlashAttention-2's: from the forward's q, k, v, its output o
    /// and log-sum-exp L, and dO, with P = exp(q·kᵀ/√e − L) recomputed (never a seq x seq
    /// matrix in memory), D = rowsum(dO ⊙ O), dS = P ⊙ (dO·Vᵀ − D): (dQ = dS·K/√e,
    /// dK = dSᵀ·Q/√e, dV = Pᵀ·dO), dK and dV of a KV head summed over its query heads.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        _q: &Self::Tensor,
        _k: &Self::Tensor,
        _v: &Self::Tensor,
        _o: &Self::Tensor,
        _lse: &Self::Tensor,
        _d_o: &Self::Tensor,
        _heads: usize,
        _kv_heads: usize,
        _seq: usize,
    ) -> Result<(Self::Tensor, Self::Tensor, Self::Tensor)> {
        unsupported(self.info(), "no attention backward")
    }

    /// §15 embedding backward: dE [vocab, d] with row v the sum of the rows t of dh whose
    /// ids[t] = v, in token order (deterministic: no atomics), zero for ids never seen.
    fn embed_backward(
        &self,
        _dh: &Self::Tensor,
        _ids: &[u32],
        _vocab: usize,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no embedding backward")
    }
}

/// A row of [`Backend::lm_head_chunk`] without a next token (a window's last position).
pub const NO_TARGET: u32 = u32::MAX;

/// −log softmax(logits)[target] per row from the LM-head state (m, s, z): m + ln s − z, in f64.
pub fn nll_from_state(state: &Matrix) -> Vec<f64> {
    (0..state.rows)
        .map(|t| {
            let r = state.row(t);
            r[0] as f64 + (r[1] as f64).ln() - r[2] as f64
        })
        .collect()
}

/// Shape checks shared by every backend, so they all reject the same inputs the same way.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsity_parses_and_rejects_impossible_targets() {
        assert_eq!(Sparsity::parse("0.5").unwrap(), Sparsity::Unstructured(0.5));
        assert_eq!(Sparsity::parse("2:4").unwrap(), Sparsity::NM { n: 2, m: 4 });
        for bad in ["1.5", "1", "-0.1", "4:2", "2:2", "0:4", "x", "2:", "nan"] {
            assert!(Sparsity::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(Sparsity::NM { n: 2, m: 4 }.check_shape(10).is_err());
        assert!(Sparsity::NM { n: 2, m: 4 }.check_shape(12).is_ok());
    }

    #[test]
    fn k_is_floor_of_fraction() {
        assert_eq!(unstructured_k(0.5, 11), 5);
        assert_eq!(unstructured_k(0.0, 11), 0);
        assert_eq!(unstructured_k(0.999, 10), 9);
    }
}
