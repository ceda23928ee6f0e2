//! One decoder layer, the embeddings and the LM head on a backend (ALGORITHMS.md §14).

use std::collections::HashMap;

use prunebench_kernels::{nll_from_state, Backend, Matrix, NO_TARGET};
use prunebench_models::checkpoint::Checkpoint;
use prunebench_models::llama::LlamaConfig;
use prunebench_models::{InputGroup, NormWeight};

use crate::error::{Context, HarnessError, Result};

/// Where the model's tensors come from: the checkpoint, with the tensors a pruning run has
/// replaced so far taking precedence.
pub struct Weights<'a> {
    pub ckpt: &'a Checkpoint,
    pub replaced: &'a HashMap<String, Matrix>,
}

impl Weights<'_> {
    pub fn tensor(&self, name: &str) -> Result<Matrix> {
        match self.replaced.get(name) {
            Some(m) => Ok(m.clone()),
            None => Ok(self.ckpt.read_tensor(name)?.0),
        }
    }

    /// The LM head: `lm_head.weight`, or the embeddings when they are tied.
    pub fn head_name(&self, cfg: &LlamaConfig) -> Result<&'static str> {
        if self.ckpt.has_tensor(LM_HEAD) {
            Ok(LM_HEAD)
        } else if cfg.tie_word_embeddings {
            Ok(EMBED)
        } else {
            Err(HarnessError::Config(format!(
                "{}: the checkpoint has no {LM_HEAD} and tie_word_embeddings is false, so it \
                 has no LM head",
                self.ckpt.dir().display()
            )))
        }
    }
}

pub const EMBED: &str = "model.embed_tokens.weight";
pub const LM_HEAD: &str = "lm_head.weight";
pub const FINAL_NORM: &str = "model.norm.weight";

/// How the forward is cut into device work.
#[derive(Clone, Copy, Debug)]
pub struct ForwardOptions {
    /// Token rows per batch of windows (at least one window): bounds the activations, the
    /// largest being rows x intermediate f32.
    pub batch_rows: usize,
    /// Vocabulary rows of the LM head per chunk: the logits never exceed rows x this.
    pub head_chunk: usize,
    /// Embedding tables up to this many bytes are gathered on the device; larger ones (a
    /// 128k-token vocabulary is 2 GiB in f32) on the host.
    pub device_embed_bytes: u64,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self {
            batch_rows: 2048,
            head_chunk: 4096,
            device_embed_bytes: 64 << 20,
        }
    }
}

impl ForwardOptions {
    /// Windows of `seq` tokens per batch: as many as `batch_rows` holds, at least one.
    pub fn windows_per_batch(&self, seq: usize) -> usize {
        (self.batch_rows / seq.max(1)).max(1)
    }
}

/// The inputs of a layer's four linear groups for one batch (ALGORITHMS.md §8).
pub struct Captured {
    pub attn_in: Matrix,
    pub attn_out: Matrix,
    pub mlp_in: Matrix,
    pub mlp_act: Matrix,
}

impl Captured {
    pub fn get(&self, g: InputGroup) -> &Matrix {
        match g {
            InputGroup::AttnIn => &self.attn_in,
            InputGroup::AttnOut => &self.attn_out,
            InputGroup::MlpIn => &self.mlp_in,
            InputGroup::MlpAct => &self.mlp_act,
        }
    }
}

/// RoPE's tables for windows of `seq` tokens, on the device.
pub struct Rope<B: Backend> {
    pub(super) cos: B::Tensor,
    pub(super) sin: B::Tensor,
    pub(super) seq: usize,
}

impl<B: Backend> Rope<B> {
    pub fn new(b: &B, cfg: &LlamaConfig, seq: usize) -> Result<Self> {
        let (cos, sin) = cfg.rope_tables(seq);
        Ok(Self {
            cos: b.upload(&cos).context(|| "RoPE tables".into())?,
            sin: b.upload(&sin).context(|| "RoPE tables".into())?,
            seq,
        })
    }
}

/// One decoder layer's weights on the device; heads and KV heads from the tensors' shapes, so
/// a structurally pruned layer runs as it is.
pub struct LayerOnDevice<B: Backend> {
    pub(super) layer: usize,
    pub(super) norm_in: B::Tensor,
    pub(super) norm_post: B::Tensor,
    pub(super) q: B::Tensor,
    pub(super) k: B::Tensor,
    pub(super) v: B::Tensor,
    pub(super) o: B::Tensor,
    pub(super) gate: B::Tensor,
    pub(super) up: B::Tensor,
    pub(super) down: B::Tensor,
    pub(super) heads: usize,
    pub(super) kv_heads: usize,
}

fn norm_name(group: InputGroup, layer: usize) -> String {
    NormWeight::hf_tensor_name(group, layer).expect("attn_in and mlp_in have norms")
}

/// Host bytes of one layer's weights in f32, for the memory check.
pub fn layer_bytes(cfg: &LlamaConfig) -> u64 {
    let m = &cfg.model;
    let linear: usize = m.linears().iter().map(|l| l.rows * l.cols).sum();
    4 * (linear + 2 * m.hidden) as u64
}

impl<B: Backend> LayerOnDevice<B> {
    pub fn load(b: &B, w: &Weights<'_>, cfg: &LlamaConfig, layer: usize) -> Result<Self> {
        let e = cfg.model.head_dim;
        let up = |name: String| -> Result<B::Tensor> {
            let m = w.tensor(&name)?;
            b.upload(&m).context(|| format!("uploading {name}"))
        };
        let lin = |name: &str| -> Result<B::Tensor> {
            let spec = cfg.model.linear(name)?;
            up(spec.hf_tensor_name(layer))
        };
        let q = lin("q_proj")?;
        let k = lin("k_proj")?;
        let (q_rows, k_rows) = (b.shape(&q).0, b.shape(&k).0);
        if !q_rows.is_multiple_of(e)
            || !k_rows.is_multiple_of(e)
            || k_rows == 0
            || !(q_rows / e).is_multiple_of(k_rows / e)
        {
            return Err(HarnessError::Config(format!(
                "layer {layer}: q_proj has {q_rows} rows and k_proj {k_rows}, not whole heads of \
                 head_dim {e} with the query heads a multiple of the KV heads"
            )));
        }
        Ok(Self {
            layer,
            norm_in: up(norm_name(InputGroup::AttnIn, layer))?,
            norm_post: up(norm_name(InputGroup::MlpIn, layer))?,
            q,
            k,
            v: lin("v_proj")?,
            o: lin("o_proj")?,
            gate: lin("gate_proj")?,
            up: lin("up_proj")?,
            down: lin("down_proj")?,
            heads: q_rows / e,
            kv_heads: k_rows / e,
        })
    }

    /// The layer on x [rows, d] (whole windows), in place; with `capture`, the inputs of its
    /// four linear groups come back to the host.
    pub fn forward(
        &self,
        b: &B,
        x: &mut B::Tensor,
        rope: &Rope<B>,
        eps: f64,
        capture: bool,
    ) -> Result<Option<Captured>> {
        let l = self.layer;
        let cx = |what: &'static str| move || format!("layer {l}: {what}");
        let h = b
            .rms_norm(x, &self.norm_in, eps)
            .context(cx("input norm"))?;
        let mut q = b.linear(&h, &self.q).context(cx("q_proj"))?;
        let mut k = b.linear(&h, &self.k).context(cx("k_proj"))?;
        let v = b.linear(&h, &self.v).context(cx("v_proj"))?;
        b.rope(&mut q, &rope.cos, &rope.sin).context(cx("RoPE"))?;
        b.rope(&mut k, &rope.cos, &rope.sin).context(cx("RoPE"))?;
        let att = b
            .attention(&q, &k, &v, self.heads, self.kv_heads, rope.seq)
            .context(cx("attention"))?;
        drop((q, k, v));
        let o = b.linear(&att, &self.o).context(cx("o_proj"))?;
        b.residual_add(x, &o).context(cx("residual"))?;
        drop(o);
        let h2 = b
            .rms_norm(x, &self.norm_post, eps)
            .context(cx("post-attention norm"))?;
        let g = b.linear(&h2, &self.gate).context(cx("gate_proj"))?;
        let u = b.linear(&h2, &self.up).context(cx("up_proj"))?;
        let a = b.silu_mul(&g, &u).context(cx("SiLU-gate product"))?;
        drop((g, u));
        let d = b.linear(&a, &self.down).context(cx("down_proj"))?;
        b.residual_add(x, &d).context(cx("residual"))?;
        if !capture {
            return Ok(None);
        }
        let down = |t: &B::Tensor| b.download(t).context(cx("downloading a group input"));
        Ok(Some(Captured {
            attn_in: down(&h)?,
            attn_out: down(&att)?,
            mlp_in: down(&h2)?,
            mlp_act: down(&a)?,
        }))
    }
}

/// Token windows stacked into batches, with their hidden states on the host.
pub struct Batches {
    pub seq: usize,
    /// The windows of each batch, in order.
    pub ids: Vec<Vec<Vec<u32>>>,
    /// Each batch's hidden states, [windows·seq, d].
    pub hidden: Vec<Matrix>,
}

impl Batches {
    pub fn windows(&self) -> usize {
        self.ids.iter().map(Vec::len).sum()
    }
}

/// The embeddings of `windows` (each `seq` long), cut into batches.
pub fn embed<B: Backend>(
    b: &B,
    w: &Weights<'_>,
    windows: &[Vec<u32>],
    seq: usize,
    opts: &ForwardOptions,
) -> Result<Batches> {
    let table = w.tensor(EMBED)?;
    let on_device = (table.data.len() as u64) * 4 <= opts.device_embed_bytes;
    let dev = if on_device {
        Some(
            b.upload(&table)
                .context(|| "uploading the embeddings".into())?,
        )
    } else {
        None
    };
    let per = opts.windows_per_batch(seq);
    let mut out = Batches {
        seq,
        ids: Vec::new(),
        hidden: Vec::new(),
    };
    for chunk in windows.chunks(per) {
        let ids: Vec<u32> = chunk.iter().flatten().copied().collect();
        prunebench_kernels::ops::check::ids(&ids, table.rows).context(|| "the token ids".into())?;
        let x = match &dev {
            Some(t) => {
                let x = b.embed(t, &ids).context(|| "embedding gather".into())?;
                b.download(&x).context(|| "embedding gather".into())?
            }
            None => gather_rows(&table, &ids),
        };
        out.ids.push(chunk.to_vec());
        out.hidden.push(x);
    }
    Ok(out)
}

fn gather_rows(table: &Matrix, ids: &[u32]) -> Matrix {
    let d = table.cols;
    let mut data = Vec::with_capacity(ids.len() * d);
    for &id in ids {
        data.extend_from_slice(table.row(id as usize));
    }
    Matrix {
        rows: ids.len(),
        cols: d,
        data,
    }
}

/// Runs one layer over every batch: with `capture`, only to bring back its group inputs (the
/// hidden states stay as they were); without, to replace the hidden states by its output.
pub fn layer_pass<B: Backend>(
    b: &B,
    layer: &LayerOnDevice<B>,
    batches: &mut Batches,
    rope: &Rope<B>,
    eps: f64,
    capture: bool,
) -> Result<Vec<Captured>> {
    let mut captured = Vec::new();
    for x in batches.hidden.iter_mut() {
        let mut t = b.upload(x).context(|| "uploading hidden states".into())?;
        match layer.forward(b, &mut t, rope, eps, capture)? {
            Some(c) => captured.push(c),
            None => {
                *x = b
                    .download(&t)
                    .context(|| "downloading hidden states".into())?
            }
        }
    }
    Ok(captured)
}

/// The final norm and LM head on the device, in vocabulary chunks.
pub struct Head<B: Backend> {
    pub(super) norm: B::Tensor,
    /// (first vocabulary row, the chunk's rows).
    pub(super) chunks: Vec<(usize, B::Tensor)>,
    pub(super) vocab: usize,
}

impl<B: Backend> Head<B> {
    pub fn load(b: &B, w: &Weights<'_>, cfg: &LlamaConfig, opts: &ForwardOptions) -> Result<Self> {
        let name = w.head_name(cfg)?;
        let head = w.tensor(name)?;
        let norm = w.tensor(FINAL_NORM)?;
        // A chunk also stays within 64 MiB, so it fits one storage binding at any width.
        let step = opts
            .head_chunk
            .min(prunebench_kernels::suite::lm_head_chunk_rows(head.cols))
            .max(1);
        let mut chunks = Vec::new();
        for start in (0..head.rows).step_by(step) {
            let rows = step.min(head.rows - start);
            let m = Matrix {
                rows,
                cols: head.cols,
                data: head.data[start * head.cols..(start + rows) * head.cols].to_vec(),
            };
            chunks.push((start, b.upload(&m).context(|| format!("uploading {name}"))?));
        }
        Ok(Self {
            norm: b
                .upload(&norm)
                .context(|| "uploading the final norm".into())?,
            chunks,
            vocab: head.rows,
        })
    }

    /// Each row's next token within its window (`NO_TARGET` for a window's last row), checked
    /// against the vocabulary.
    pub fn targets(&self, windows: &[Vec<u32>]) -> Result<Vec<u32>> {
        let targets: Vec<u32> = windows
            .iter()
            .flat_map(|w| (0..w.len()).map(move |t| w.get(t + 1).copied().unwrap_or(NO_TARGET)))
            .collect();
        if let Some(&bad) = targets
            .iter()
            .find(|&&t| t != NO_TARGET && t as usize >= self.vocab)
        {
            return Err(HarnessError::Config(format!(
                "token id {bad} is outside the LM head's vocabulary of {}",
                self.vocab
            )));
        }
        Ok(targets)
    }

    /// Σ −log p(next token) over every position of the batch that has a next token within
    /// its window, and how many such positions.
    pub fn nll(&self, b: &B, x: &Matrix, windows: &[Vec<u32>], eps: f64) -> Result<(f64, usize)> {
        let targets = self.targets(windows)?;
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
        let nll = nll_from_state(&state);
        let mut sum = 0.0;
        let mut count = 0;
        for (v, &t) in nll.iter().zip(&targets) {
            if t != NO_TARGET {
                sum += v;
                count += 1;
            }
        }
        Ok((sum, count))
    }

    /// The logits [rows, vocab] of final hidden states x (before the final norm), for checks
    /// against other implementations: small models only.
    pub fn logits(&self, b: &B, x: &Matrix, eps: f64) -> Result<Matrix> {
        let xt = b.upload(x).context(|| "uploading hidden states".into())?;
        let h = b
            .rms_norm(&xt, &self.norm, eps)
            .context(|| "final norm".into())?;
        let mut out = Matrix::zeros(x.rows, self.vocab);
        for (offset, w) in &self.chunks {
            let l = b.linear(&h, w).context(|| "LM head".into())?;
            let l = b.download(&l).context(|| "LM head".into())?;
            for r in 0..x.rows {
                out.data[r * self.vocab + offset..][..l.cols].copy_from_slice(l.row(r));
            }
        }
        Ok(out)
    }
}
