//! `prunebench gradients`: GBLM-Pruner's gradient statistic of a dense checkpoint computed by
//! the suite's own backward pass (ALGORITHMS.md §15), on the same calibration windows as
//! `prune-model`, written in the format `--gradients` reads.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use prunebench_harness::model::{
    gblm_gradients, ForwardOptions, GradientStats, GradientsFor, Weights,
};
use prunebench_kernels::ops::GBLM_GRAD_SCALE;
use prunebench_kernels::{Backend, BackendInfo, GradNorm};
use prunebench_models::checkpoint::Checkpoint;
use prunebench_models::gradients::{self, GradientsMeta};
use prunebench_models::llama::LlamaConfig;
use prunebench_models::output::{check_file, Inputs};
use prunebench_models::text;

use super::backends::{dispatch, resolve, BackendJob};
use super::model_input::{check_host_memory, open, seqlen, Tokens};
use super::progress::Bar;
use super::prune::parse_norm;
use super::{numbers, BackendArgs};

#[derive(Args, Debug)]
pub struct GradientsArgs {
    /// A Hugging Face LLaMA folder (the dense model): config.json, safetensors, and
    /// tokenizer.json for a text.
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Calibration text, tokenized with the checkpoint's tokenizer.json.
    #[arg(long)]
    pub calibration_text: Option<PathBuf>,
    /// Calibration token ids instead of a text: a JSON list, or raw little-endian u32.
    #[arg(long)]
    pub calibration_ids: Option<PathBuf>,
    /// Calibration windows (one backward pass each), drawn at seeded random offsets of the
    /// text as `prune-model` draws them.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_WINDOWS))]
    pub nsamples: usize,
    /// Tokens per window (default min(2048, max_position_embeddings)).
    #[arg(long, allow_negative_numbers = true, value_parser = numbers::count(1, numbers::MAX_SEQLEN))]
    pub seqlen: Option<usize>,
    /// Seed of the windows' offsets.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = numbers::seed)]
    pub seed: u64,
    /// How the windows' gradients are combined: l2 (√Σ(100·dW)², GBLM-Pruner's default) or
    /// l1 (Σ|100·dW|).
    #[arg(long, default_value = "l2")]
    pub grad_norm: String,
    /// The gradients file to write (safetensors; read back by `prune-model --gradients`).
    #[arg(long)]
    pub out: PathBuf,
    /// Print a summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

struct GradientsJob<'a> {
    ckpt: &'a Checkpoint,
    cfg: &'a LlamaConfig,
    windows: &'a [Vec<u32>],
    norm: GradNorm,
}

impl BackendJob for GradientsJob<'_> {
    type Output = (GradientStats, BackendInfo);
    fn run<B: Backend>(self, b: &B) -> Result<Self::Output> {
        let replaced = Default::default();
        let w = Weights {
            ckpt: self.ckpt,
            replaced: &replaced,
        };
        let bar = Bar::with_eta(&format!("gradients on {}", b.info().backend));
        let opts = ForwardOptions::default();
        let stats = gblm_gradients(b, &w, self.cfg, self.windows, self.norm, &opts, &|p| {
            bar.update(p)
        });
        bar.finish();
        Ok((stats?, b.info().clone()))
    }
}

/// Host bytes: every layer's input hidden states of one window, and one f32 copy of every
/// linear's statistic (each accumulator is dropped as its finished values replace it).
pub(super) fn host_bytes(cfg: &LlamaConfig, seq: usize, what: GradientsFor) -> u64 {
    let m = &cfg.model;
    let states = (m.num_layers as u64 + 1).saturating_mul(seq as u64 * m.hidden as u64 * 4);
    states.saturating_add(what.host_bytes(cfg))
}

pub fn run(a: GradientsArgs, inputs: &Inputs) -> Result<ExitCode> {
    // Every argument and input is checked before any work starts.
    let norm = parse_norm(&a.grad_norm)?;
    let (ckpt, cfg) = open(&a.checkpoint)?;
    let tokens = Tokens::calibration(&a.calibration_text, &a.calibration_ids)?;
    let seq = seqlen(a.seqlen, &cfg)?;
    check_file(&a.out, inputs).map_err(super::out_error)?;
    check_host_memory(
        host_bytes(&cfg, seq, GradientsFor::Gblm(norm)),
        &format!(
            "the gradient statistic of {} with windows of {seq} tokens",
            cfg.model.name
        ),
        "use a shorter --seqlen",
    )?;
    let choice = resolve(&a.backend.backend)?;
    let ids = tokens.load(&a.checkpoint, &cfg, "--calibration-ids")?;
    let windows = text::calibration_windows(&ids, a.nsamples, seq, a.seed)?;
    let job = GradientsJob {
        ckpt: &ckpt,
        cfg: &cfg,
        windows: &windows,
        norm,
    };
    let (stats, info) = dispatch(choice, a.backend.adapter.as_deref(), job)?;
    // Checked again: a folder may have appeared at --out while the run went on.
    check_file(&a.out, inputs).map_err(super::out_error)?;
    let meta = GradientsMeta {
        grad_norm: norm.name(),
        nsamples: windows.len(),
        seqlen: seq,
        seed: a.seed,
        grad_scale: GBLM_GRAD_SCALE,
    };
    gradients::write(&a.out, &stats.tensors, &meta).map_err(super::out_error)?;
    let s = &stats.summary;
    if a.json {
        let v = serde_json::json!({
            "checkpoint": a.checkpoint,
            "model": cfg.model.name,
            "backend": info,
            "grad_norm": meta.grad_norm,
            "seed": a.seed,
            "summary": s,
            "tensors": stats.tensors.len(),
            "out": a.out,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: GBLM gradients ({}) on {} ({}) from {} windows of {} tokens, mean loss {:.4}, \
             {:.1} s: {} tensors written to {}",
            cfg.model.name,
            meta.grad_norm,
            info.backend,
            info.device,
            s.windows,
            s.seqlen,
            s.mean_loss,
            s.seconds,
            stats.tensors.len(),
            a.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
