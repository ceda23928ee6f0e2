//! `prunebench prune-model`: the seeds' sequential loop over a whole checkpoint (ALGORITHMS.md
//! §14), perplexity before and after, and the pruned model as a Hugging Face folder.

use std::collections::HashMap;
use std::process::ExitCode;

use anyhow::Result;

use prunebench_harness::model::{
    self, sequential, ForwardOptions, Gives, GradientStats, GradientSummary, GradientsFor,
    ModelGradients, ModelRun, Perplexity, Weights,
};
use prunebench_harness::PruneConfig;
use prunebench_kernels::{Backend, BackendInfo};
use prunebench_models::checkpoint::Checkpoint;
use prunebench_models::gradients::GradientsFile;
use prunebench_models::llama::LlamaConfig;
use prunebench_models::output::Inputs;
use prunebench_models::{hf_out, text};

use super::backends::{dispatch, resolve, BackendJob};
use super::model_input::{check_host_memory, open, seqlen, Tokens};
use super::perplexity::eval_windows;
use super::progress::Bar;
use super::prune::{ms, prune_config};
use super::PruneModelArgs;

struct PruneModelJob<'a> {
    ckpt: &'a Checkpoint,
    cfg: &'a LlamaConfig,
    calibration: &'a [Vec<u32>],
    eval: Option<&'a [Vec<u32>]>,
    pcfg: &'a PruneConfig,
    gradients: Option<&'a GradientsFile>,
    limit: Option<u64>,
}

struct Outcome {
    run: ModelRun,
    /// What `gblm` without `--gradients` computed first.
    gradients: Option<GradientSummary>,
    dense: Option<Perplexity>,
    pruned: Option<Perplexity>,
    info: BackendInfo,
}

impl BackendJob for PruneModelJob<'_> {
    type Output = Outcome;
    fn run<B: Backend>(self, b: &B) -> Result<Outcome> {
        let opts = ForwardOptions::default();
        let budget = match (b.memory_budget(), self.limit) {
            (Some(a), Some(l)) => Some(a.min(l)),
            (a, l) => a.or(l),
        };
        let layer0 = self.ckpt.read_layer(0, &self.cfg.model.linears())?;
        model::check_memory(
            budget,
            self.cfg,
            self.calibration,
            &opts,
            Some((&layer0, self.pcfg)),
        )?;
        if let Some(e) = self.eval {
            model::check_memory(budget, self.cfg, e, &opts, None)?;
        }
        drop(layer0);
        let backend = b.info().backend.clone();
        let ppl = |replaced: &HashMap<String, prunebench_kernels::Matrix>, label: &str| {
            let Some(windows) = self.eval else {
                return Ok(None);
            };
            let w = Weights {
                ckpt: self.ckpt,
                replaced,
            };
            let bar = Bar::with_eta(&format!("{label} perplexity on {backend}"));
            let p = model::perplexity(b, &w, self.cfg, windows, &opts, &|p| bar.update(p));
            bar.finish();
            p.map(Some)
        };
        let dense = ppl(&HashMap::new(), "dense")?;
        // gblm or a Taylor saliency without a file: the gradients of the dense model first,
        // on these windows.
        let computed = match computed_gradients(self.pcfg, self.gradients.is_some()) {
            Some(what) => Some(self.dense_gradients(b, &opts, what)?),
            None => None,
        };
        let grads: Option<&dyn ModelGradients> = match (&computed, self.gradients) {
            (Some(g), _) => Some(g),
            (None, Some(f)) => Some(f),
            (None, None) => None,
        };
        let bar = Bar::with_eta(&format!("{} on {backend}", self.pcfg.method));
        let run = model::prune_model(
            b,
            self.ckpt,
            self.cfg,
            self.calibration,
            self.pcfg,
            grads,
            &opts,
            &|p| bar.update(p),
        );
        bar.finish();
        let run = run?;
        let pruned = ppl(&run.replaced, "pruned")?;
        Ok(Outcome {
            run,
            gradients: computed.map(|g| g.summary),
            dense,
            pruned,
            info: b.info().clone(),
        })
    }
}

impl PruneModelJob<'_> {
    /// The gradients the method reads, of the dense model, from the suite's backward pass one
    /// window at a time over the calibration windows (`prunebench gradients` without the file).
    fn dense_gradients<B: Backend>(
        &self,
        b: &B,
        opts: &ForwardOptions,
        what: GradientsFor,
    ) -> Result<GradientStats> {
        let none = HashMap::new();
        let w = Weights {
            ckpt: self.ckpt,
            replaced: &none,
        };
        let bar = Bar::with_eta(&format!("gradients on {}", b.info().backend));
        let stats = model::model_gradients(b, &w, self.cfg, self.calibration, what, opts, &|p| {
            bar.update(p)
        });
        bar.finish();
        Ok(stats?)
    }
}

/// What the suite's gradient pass computes first, where the method reads gradients that no
/// file gives: GBLM's statistic, or §11's Taylor sums.
fn computed_gradients(pcfg: &PruneConfig, file: bool) -> Option<GradientsFor> {
    let needs = pcfg.needs();
    if file {
        None
    } else if needs.taylor_sums() {
        Some(GradientsFor::Taylor)
    } else if needs.gblm_statistic() {
        Some(GradientsFor::Gblm(pcfg.grad_norm))
    } else {
        None
    }
}

pub fn run(a: PruneModelArgs, inputs: &Inputs) -> Result<ExitCode> {
    // Every argument and input is checked before any work starts.
    let pcfg = prune_config(&a.method)?;
    let (ckpt, cfg) = open(&a.checkpoint)?;
    let gradients = match &a.gradients {
        Some(p) => Some(GradientsFile::open(p, &cfg.model)?),
        None => None,
    };
    // Without --gradients, what the method reads is computed first (`computed_gradients`).
    let gives = match &gradients {
        Some(f) => f.gives(),
        None => Gives {
            statistic: true,
            taylor_sums: true,
        },
    };
    sequential::check_config(&pcfg, gives)?;
    let calib_tokens = Tokens::calibration(&a.calibration_text, &a.calibration_ids)?;
    let eval_tokens = Tokens::pick(&a.eval_text, &a.eval_ids, "evaluation text")?;
    let seq = seqlen(a.seqlen, &cfg)?;
    let states = sequential::host_bytes(&cfg, a.nsamples, seq);
    check_host_memory(
        states,
        &format!(
            "keeping the hidden states of {} windows of {seq} tokens of {} on the host",
            a.nsamples, cfg.model.name
        ),
        "use fewer --nsamples or a shorter --seqlen",
    )?;
    if let Some(what) = computed_gradients(&pcfg, gradients.is_some()) {
        check_host_memory(
            what.host_bytes(&cfg).saturating_add(states),
            &format!(
                "the dense model's gradients of every linear of {} beside the hidden states",
                cfg.model.name
            ),
            "give --gradients FILE (gblm), or use fewer --nsamples or a shorter --seqlen",
        )?;
    }
    let choice = resolve(&a.backend.backend)?;
    if let Some(out) = &a.out {
        hf_out::check_output_folder(&ckpt, out, inputs).map_err(super::out_error)?;
        hf_out::check_files_to_copy(&ckpt)?;
    }
    let ids = calib_tokens.load(&a.checkpoint, &cfg, "--calibration-ids")?;
    let calibration = text::calibration_windows(&ids, a.nsamples, seq, a.seed)?;
    let eval = match &eval_tokens {
        Some(t) => {
            let ids = t.load(&a.checkpoint, &cfg, "--eval-ids")?;
            Some(eval_windows(&ids, seq, a.eval_windows)?)
        }
        None => None,
    };
    let job = PruneModelJob {
        ckpt: &ckpt,
        cfg: &cfg,
        calibration: &calibration,
        eval: eval.as_deref(),
        pcfg: &pcfg,
        gradients: gradients.as_ref(),
        limit: a.limits.max_device_memory,
    };
    let out = dispatch(choice, a.backend.adapter.as_deref(), job)?;
    if let Some(dir) = &a.out {
        let config = match out.run.totals.structured_sizes {
            Some(s) => Some(LlamaConfig::updated_json(
                &ckpt.config_json()?,
                s.intermediate_size,
                s.num_attention_heads,
                s.num_key_value_heads,
            )),
            None => None,
        };
        hf_out::write_pruned_checkpoint(&ckpt, dir, &out.run.replaced, config.as_ref(), inputs)
            .map_err(super::out_error)?;
    }
    if a.json {
        let v = serde_json::json!({
            "checkpoint": a.checkpoint,
            "model": cfg.model,
            "backend": out.info,
            "method": pcfg.method,
            "sparsity": pcfg.sparsity.to_string(),
            "config": pcfg,
            "layers": out.run.layers,
            "totals": out.run.totals,
            "perplexity": {"dense": out.dense, "pruned": out.pruned},
            "gradients": out.gradients,
            "out": a.out,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_summary(&a, &cfg, &pcfg, &out);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(a: &PruneModelArgs, cfg: &LlamaConfig, pcfg: &PruneConfig, o: &Outcome) {
    let t = &o.run.totals;
    println!(
        "{}: {} at {} on {} ({}), {} windows of {} tokens",
        cfg.model.name,
        pcfg.method,
        pcfg.sparsity,
        o.info.backend,
        o.info.device,
        t.calibration_windows,
        t.seqlen
    );
    for r in &o.run.layers {
        let mean_err =
            r.linears.iter().map(|l| l.recon_error).sum::<f64>() / r.linears.len().max(1) as f64;
        let pruned: usize = r.linears.iter().map(|l| l.pruned).sum();
        let total: usize = r.linears.iter().map(|l| l.rows * l.cols).sum();
        println!(
            "layer {:>3}: pruned {:>6.2}%  mean recon err {:.4e}  prune {}  wall {}",
            r.layer,
            100.0 * pruned as f64 / total.max(1) as f64,
            mean_err,
            ms(r.prune_seconds),
            ms(r.wall_seconds)
        );
    }
    if let Some(s) = t.structured_sizes {
        println!(
            "structured: intermediate {} -> {}, heads {} -> {}, KV heads {} -> {}",
            cfg.model.intermediate,
            s.intermediate_size,
            cfg.model.num_heads,
            s.num_attention_heads,
            cfg.model.num_kv_heads,
            s.num_key_value_heads
        );
    }
    let stages: Vec<String> = t
        .stages
        .iter()
        .map(|s| format!("{} {}", s.stage, ms(s.seconds)))
        .collect();
    println!(
        "total: {} of {} linear parameters pruned ({:.2}%); forward {}, prune {}, wall {}",
        t.parameters_pruned,
        t.parameters,
        100.0 * t.parameters_pruned as f64 / t.parameters.max(1) as f64,
        ms(t.forward_seconds),
        ms(t.prune_seconds),
        ms(t.wall_seconds)
    );
    println!("stages (device time over the model): {}", stages.join(", "));
    if let (Some(d), Some(p)) = (&o.dense, &o.pruned) {
        println!(
            "perplexity: dense {:.4}, pruned {:.4} ({} windows of {} tokens)",
            d.ppl, p.ppl, d.windows, d.seqlen
        );
    }
    if let Some(out) = &a.out {
        println!("pruned checkpoint written to {}", out.display());
    }
}
