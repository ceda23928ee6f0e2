//! The whole-model backward (ALGORITHMS.md §15) with one layer resident, as the forward: the
//! forward keeps each layer's input hidden states on the host, and the backward, from the
//! LM head's loss down, loads a layer, recomputes its forward from its stored input
//! (activation checkpointing, one layer at a time) and turns the gradient of its output into
//! that of its input, handing each linear's dW to the caller as it is produced.

use prunebench_kernels::{Backend, Matrix};
use prunebench_models::llama::LlamaConfig;

use super::forward::{embed, ForwardOptions, Head, LayerOnDevice, Rope, Weights};
use crate::error::{Context, Result};

/// What a backward hands out: (layer, linear name as in the checkpoint, e.g. `q_proj`, dW).
pub type WeightGrads<'s, T> = dyn FnMut(usize, &'static str, T) -> Result<()> + 's;

/// A layer's forward intermediates, recomputed from its input for the backward.
struct Recomputed<B: Backend> {
    h: B::Tensor,
    q: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    att: B::Tensor,
    lse: B::Tensor,
    x1: B::Tensor,
    h2: B::Tensor,
    g: B::Tensor,
    u: B::Tensor,
    a: B::Tensor,
}

impl<B: Backend> LayerOnDevice<B> {
    fn recompute(&self, b: &B, x: &B::Tensor, rope: &Rope<B>, eps: f64) -> Result<Recomputed<B>> {
        let l = self.layer;
        let cx = |what: &'static str| move || format!("layer {l} (recomputed): {what}");
        let h = b
            .rms_norm(x, &self.norm_in, eps)
            .context(cx("input norm"))?;
        let mut q = b.linear(&h, &self.q).context(cx("q_proj"))?;
        let mut k = b.linear(&h, &self.k).context(cx("k_proj"))?;
        let v = b.linear(&h, &self.v).context(cx("v_proj"))?;
        b.rope(&mut q, &rope.cos, &rope.sin).context(cx("RoPE"))?;
        b.rope(&mut k, &rope.cos, &rope.sin).context(cx("RoPE"))?;
        let (att, lse) = b
            .attention_with_lse(&q, &k, &v, self.heads, self.kv_heads, rope.seq)
            .context(cx("attention"))?;
        let mut x1 = b.linear(&att, &self.o).context(cx("o_proj"))?;
        // x1 = x + o_proj(att), added into the projection's own output: no second upload of x.
        b.residual_add(&mut x1, x).context(cx("residual"))?;
        let h2 = b
            .rms_norm(&x1, &self.norm_post, eps)
            .context(cx("post-attention norm"))?;
        let g = b.linear(&h2, &self.gate).context(cx("gate_proj"))?;
        let u = b.linear(&h2, &self.up).context(cx("up_proj"))?;
        let a = b.silu_mul(&g, &u).context(cx("SiLU-gate product"))?;
        Ok(Recomputed {
            h,
            q,
            k,
            v,
            att,
            lse,
            x1,
            h2,
            g,
            u,
            a,
        })
    }

    /// The layer's backward for its input `xh` [rows, d] (whole windows): `dx` holds the
    /// gradient of the layer's output and is replaced by that of its input; each linear's dW
    /// goes to `grads`.
    pub fn backward(
        &self,
        b: &B,
        xh: &Matrix,
        dx: &mut B::Tensor,
        rope: &Rope<B>,
        eps: f64,
        grads: &mut WeightGrads<'_, B::Tensor>,
    ) -> Result<()> {
        let l = self.layer;
        let cx = |what: &'static str| move || format!("layer {l} backward: {what}");
        let x = b.upload(xh).context(cx("the layer's input"))?;
        let r = self.recompute(b, &x, rope, eps)?;
        // x2 = x1 + down(silu(gate(h2)) ⊙ up(h2)): dx flows to x1 unchanged and into the MLP.
        let (da, dw) = b
            .linear_backward(&r.a, &self.down, dx)
            .context(cx("down_proj"))?;
        grads(l, "down_proj", dw)?;
        let (dg, du) = b
            .silu_mul_backward(&r.g, &r.u, &da)
            .context(cx("SiLU-gate product"))?;
        let (mut dh2, dw) = b
            .linear_backward(&r.h2, &self.gate, &dg)
            .context(cx("gate_proj"))?;
        grads(l, "gate_proj", dw)?;
        let (dh2_up, dw) = b
            .linear_backward(&r.h2, &self.up, &du)
            .context(cx("up_proj"))?;
        grads(l, "up_proj", dw)?;
        b.residual_add(&mut dh2, &dh2_up)
            .context(cx("summing dh2"))?;
        let (dx1, _) = b
            .rms_norm_backward(&r.x1, &self.norm_post, &dh2, eps)
            .context(cx("post-attention norm"))?;
        b.residual_add(dx, &dx1).context(cx("residual"))?;
        // x1 = x + o_proj(attention(rope(q(h)), rope(k(h)), v(h))), h = norm(x).
        let (datt, dw) = b
            .linear_backward(&r.att, &self.o, dx)
            .context(cx("o_proj"))?;
        grads(l, "o_proj", dw)?;
        let (mut dq, mut dk, dv) = b
            .attention_backward(
                &r.q,
                &r.k,
                &r.v,
                &r.att,
                &r.lse,
                &datt,
                self.heads,
                self.kv_heads,
                rope.seq,
            )
            .context(cx("attention"))?;
        b.rope_backward(&mut dq, &rope.cos, &rope.sin)
            .context(cx("RoPE"))?;
        b.rope_backward(&mut dk, &rope.cos, &rope.sin)
            .context(cx("RoPE"))?;
        let mut dh = None;
        for (name, w, dy) in [
            ("q_proj", &self.q, &dq),
            ("k_proj", &self.k, &dk),
            ("v_proj", &self.v, &dv),
        ] {
            let (part, dw) = b.linear_backward(&r.h, w, dy).context(cx(name))?;
            grads(l, name, dw)?;
            match &mut dh {
                None => dh = Some(part),
                Some(sum) => b.residual_add(sum, &part).context(cx("summing dh"))?,
            }
        }
        let dh = dh.expect("three projections");
        let (dxn, _) = b
            .rms_norm_backward(&x, &self.norm_in, &dh, eps)
            .context(cx("input norm"))?;
        b.residual_add(dx, &dxn).context(cx("residual"))?;
        Ok(())
    }
}

impl<B: Backend> Head<B> {
    /// The final norm and LM head's backward for final hidden states `x` (before the norm) of
    /// `windows`: the loss is the mean next-token loss over every predicted position. Returns
    /// (the loss, dx).
    fn backward(
        &self,
        b: &B,
        x: &Matrix,
        windows: &[Vec<u32>],
        eps: f64,
    ) -> Result<(f64, B::Tensor)> {
        let targets = self.targets(windows)?;
        let count = targets
            .iter()
            .filter(|&&t| t != prunebench_kernels::NO_TARGET)
            .count();
        let xt = b.upload(x).context(|| "uploading hidden states".into())?;
        let h = b
            .rms_norm(&xt, &self.norm, eps)
            .context(|| "final norm".into())?;
        let mut state = b.zeros(x.rows, 3).context(|| "LM-head state".into())?;
        for (offset, w) in &self.chunks {
            b.lm_head_chunk(&mut state, &h, w, *offset, &targets)
                .context(|| "LM-head loss".into())?;
        }
        let state = b.download(&state).context(|| "LM-head state".into())?;
        let nll = prunebench_kernels::nll_from_state(&state);
        let loss: f64 = nll
            .iter()
            .zip(&targets)
            .filter(|(_, &t)| t != prunebench_kernels::NO_TARGET)
            .map(|(v, _)| v)
            .sum::<f64>()
            / count.max(1) as f64;
        // lse = m + ln s per row, from the forward's state.
        let lse = Matrix::from_fn(x.rows, 1, |t, _| {
            let r = state.row(t);
            (r[0] as f64 + (r[1] as f64).ln()) as f32
        });
        let lse = b.upload(&lse).context(|| "LM-head log-sum-exp".into())?;
        let scale = 1.0 / count.max(1) as f64;
        let mut dh = b.zeros(x.rows, x.cols).context(|| "LM-head dh".into())?;
        for (offset, w) in &self.chunks {
            b.lm_head_backward_chunk(&mut dh, &h, w, *offset, &targets, &lse, scale)
                .context(|| "LM-head backward".into())?;
        }
        let (dx, _) = b
            .rms_norm_backward(&xt, &self.norm, &dh, eps)
            .context(|| "final norm backward".into())?;
        Ok((loss, dx))
    }
}

/// The gradient of the mean next-token loss over every predicted position of `windows` (one
/// batch, each `seq` tokens) with respect to every linear of every layer, handed to `grads`
/// layer by layer from the top; returns the loss. Embeddings, norms and the head get none.
pub fn model_backward<B: Backend>(
    b: &B,
    w: &Weights<'_>,
    cfg: &LlamaConfig,
    windows: &[Vec<u32>],
    opts: &ForwardOptions,
    grads: &mut WeightGrads<'_, B::Tensor>,
) -> Result<f64> {
    let seq = windows.first().map_or(0, Vec::len);
    let eps = cfg.rms_norm_eps;
    let rope = Rope::new(b, cfg, seq)?;
    let one_batch = ForwardOptions {
        batch_rows: windows.len() * seq,
        ..*opts
    };
    let batches = embed(b, w, windows, seq, &one_batch)?;
    let mut x = batches
        .hidden
        .into_iter()
        .next()
        .unwrap_or_else(|| Matrix::zeros(0, cfg.model.hidden));
    // The forward, keeping every layer's input on the host.
    let mut inputs = Vec::with_capacity(cfg.model.num_layers);
    for layer in 0..cfg.model.num_layers {
        let dev = LayerOnDevice::load(b, w, cfg, layer)?;
        let mut t = b.upload(&x).context(|| "uploading hidden states".into())?;
        dev.forward(b, &mut t, &rope, eps, false)?;
        inputs.push(std::mem::replace(
            &mut x,
            b.download(&t)
                .context(|| "downloading hidden states".into())?,
        ));
    }
    let head = Head::load(b, w, cfg, opts)?;
    let (loss, mut dx) = head.backward(b, &x, windows, eps)?;
    drop(head);
    for (layer, xin) in inputs.iter().enumerate().rev() {
        let dev = LayerOnDevice::load(b, w, cfg, layer)?;
        dev.backward(b, xin, &mut dx, &rope, eps, grads)?;
    }
    Ok(loss)
}
