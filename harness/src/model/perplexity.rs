//! Perplexity as the seeds' `eval_ppl` (ALGORITHMS.md §14): nll is the mean over every
//! predicted position of −log softmax(logits)[next token], within each window; ppl = exp(nll).

use std::time::Instant;

use prunebench_kernels::{Backend, Matrix};
use prunebench_models::llama::LlamaConfig;
use serde::{Deserialize, Serialize};

use super::forward::{
    embed, layer_pass, Batches, ForwardOptions, Head, LayerOnDevice, Rope, Weights,
};
use crate::error::{HarnessError, Result};
use crate::prune::Progress;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    pub windows: usize,
    pub seqlen: usize,
    /// Positions predicted: windows x (seqlen − 1).
    pub tokens: usize,
    pub nll: f64,
    pub ppl: f64,
    /// Wall-clock time of the whole evaluation, transfers included.
    pub seconds: f64,
}

/// Checks that every window has the same, non-zero length, and returns it.
pub fn window_len(windows: &[Vec<u32>]) -> Result<usize> {
    let seq = windows.first().map_or(0, Vec::len);
    if seq == 0 || windows.iter().any(|w| w.len() != seq) {
        return Err(HarnessError::Config(
            "token windows must be non-empty and all of one length".into(),
        ));
    }
    Ok(seq)
}

/// The embeddings of `windows`, then every layer in turn over all of them; `observe` sees the
/// hidden states after the embeddings (0) and after each layer (1..=L).
pub fn run_layers<B: Backend>(
    b: &B,
    w: &Weights<'_>,
    cfg: &LlamaConfig,
    windows: &[Vec<u32>],
    opts: &ForwardOptions,
    progress: &dyn Fn(Progress<'_>),
    observe: &mut dyn FnMut(usize, &Batches),
) -> Result<Batches> {
    let seq = window_len(windows)?;
    let layers = cfg.model.num_layers;
    let mut batches = embed(b, w, windows, seq, opts)?;
    observe(0, &batches);
    let rope = Rope::new(b, cfg, seq)?;
    for layer in 0..layers {
        let what = format!("layer {}/{layers}", layer + 1);
        progress(Progress {
            what: &what,
            done: layer as u64,
            total: layers as u64 + 1,
        });
        let p = LayerOnDevice::load(b, w, cfg, layer)?;
        layer_pass(b, &p, &mut batches, &rope, cfg.rms_norm_eps, false)?;
        observe(layer + 1, &batches);
    }
    Ok(batches)
}

pub fn perplexity<B: Backend>(
    b: &B,
    w: &Weights<'_>,
    cfg: &LlamaConfig,
    windows: &[Vec<u32>],
    opts: &ForwardOptions,
    progress: &dyn Fn(Progress<'_>),
) -> Result<Perplexity> {
    let t0 = Instant::now();
    let batches = run_layers(b, w, cfg, windows, opts, progress, &mut |_, _| {})?;
    let layers = cfg.model.num_layers as u64;
    progress(Progress {
        what: "LM head",
        done: layers,
        total: layers + 1,
    });
    let head = Head::load(b, w, cfg, opts)?;
    let (mut sum, mut count) = (0.0, 0);
    for (x, ids) in batches.hidden.iter().zip(&batches.ids) {
        let (s, c) = head.nll(b, x, ids, cfg.rms_norm_eps)?;
        sum += s;
        count += c;
    }
    if count == 0 {
        return Err(HarnessError::Config(
            "windows of one token predict nothing: perplexity needs --seqlen of at least 2".into(),
        ));
    }
    let nll = sum / count as f64;
    Ok(Perplexity {
        windows: batches.windows(),
        seqlen: batches.seq,
        tokens: count,
        nll,
        ppl: nll.exp(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The hidden states after the embeddings and after each layer, and the logits, of a few
/// windows: the whole forward on the host, for checks against other implementations.
pub fn trace<B: Backend>(
    b: &B,
    w: &Weights<'_>,
    cfg: &LlamaConfig,
    windows: &[Vec<u32>],
) -> Result<(Vec<Matrix>, Matrix)> {
    let opts = ForwardOptions {
        batch_rows: usize::MAX,
        ..ForwardOptions::default()
    };
    let mut hidden = Vec::new();
    let batches = run_layers(b, w, cfg, windows, &opts, &|_| {}, &mut |_, bs| {
        hidden.push(bs.hidden[0].clone())
    })?;
    let head = Head::load(b, w, cfg, &opts)?;
    let logits = head.logits(b, &batches.hidden[0], cfg.rms_norm_eps)?;
    Ok((hidden, logits))
}
