//! `prunebench perplexity`: a checkpoint's perplexity on a text, as the seeds' `eval_ppl`.

use std::process::ExitCode;

use anyhow::Result;

use prunebench_harness::model::{self, ForwardOptions, Perplexity, Weights};
use prunebench_kernels::Backend;
use prunebench_models::llama::LlamaConfig;
use prunebench_models::{checkpoint::Checkpoint, text};

use super::backends::{dispatch, resolve, BackendJob};
use super::model_input::{open, seqlen, Tokens};
use super::progress::Bar;
use super::PerplexityArgs;

pub struct PerplexityJob<'a> {
    pub ckpt: &'a Checkpoint,
    pub cfg: &'a LlamaConfig,
    pub windows: &'a [Vec<u32>],
    pub opts: ForwardOptions,
    pub limit: Option<u64>,
    pub label: &'a str,
}

impl BackendJob for PerplexityJob<'_> {
    type Output = (Perplexity, prunebench_kernels::BackendInfo);
    fn run<B: Backend>(self, b: &B) -> Result<Self::Output> {
        let budget = match (b.memory_budget(), self.limit) {
            (Some(a), Some(l)) => Some(a.min(l)),
            (a, l) => a.or(l),
        };
        model::check_memory(budget, self.cfg, self.windows, &self.opts, None)?;
        let none = Default::default();
        let w = Weights {
            ckpt: self.ckpt,
            replaced: &none,
        };
        let bar = Bar::with_eta(&format!("{} on {}", self.label, b.info().backend));
        let p = model::perplexity(b, &w, self.cfg, self.windows, &self.opts, &|p| {
            bar.update(p)
        });
        bar.finish();
        Ok((p?, b.info().clone()))
    }
}

/// Evaluation windows of `ids`, at most `limit` of them.
pub fn eval_windows(ids: &[u32], seq: usize, limit: Option<usize>) -> Result<Vec<Vec<u32>>> {
    let mut w = text::eval_windows(ids, seq)?;
    if let Some(n) = limit {
        // n ≥ 1: its parser refuses 0 rather than read it as "one" or "all".
        w.truncate(n);
    }
    Ok(w)
}

pub fn run(a: PerplexityArgs) -> Result<ExitCode> {
    let (ckpt, cfg) = open(&a.checkpoint)?;
    let tokens = Tokens::pick(&a.text, &a.token_ids, "evaluation text")?.ok_or_else(|| {
        anyhow::anyhow!("give the text with --text FILE or its ids with --token-ids FILE")
    })?;
    let seq = seqlen(a.seqlen, &cfg)?;
    let choice = resolve(&a.backend.backend)?;
    let ids = tokens.load(&a.checkpoint, &cfg, "--token-ids")?;
    let windows = eval_windows(&ids, seq, a.windows)?;
    let job = PerplexityJob {
        ckpt: &ckpt,
        cfg: &cfg,
        windows: &windows,
        opts: ForwardOptions::default(),
        limit: a.limits.max_device_memory,
        label: "perplexity",
    };
    let (p, info) = dispatch(choice, a.backend.adapter.as_deref(), job)?;
    if a.json {
        let v = serde_json::json!({
            "checkpoint": a.checkpoint,
            "text": tokens.path(),
            "backend": info,
            "perplexity": p,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: perplexity {:.4} (nll {:.6}) over {} windows of {} tokens ({} predicted) on {} ({}), {:.2} s",
            a.checkpoint.display(),
            p.ppl,
            p.nll,
            p.windows,
            p.seqlen,
            p.tokens,
            info.backend,
            info.device,
            p.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
