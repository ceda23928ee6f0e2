//! `prunebench prune`: one layer, one method, one backend; a table or JSON, and optionally the
//! pruned weights as safetensors.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};

use prunebench_harness::prune::{LayerReport, Purpose};
use prunebench_harness::{prune_layer, LayerRun, Method, PruneConfig, RefitConfig};
use prunebench_kernels::{Backend, GradNorm, MaskGroup, Sparsity};
use prunebench_models::checkpoint::write_layer_with_norms;

use super::backends::{dispatch, resolve, BackendJob};
use super::layer_input::LayerInput;
use super::progress::Bar;
use super::PruneArgs;

struct PruneJob<'a> {
    input: &'a LayerInput,
    cfg: PruneConfig,
    keep: bool,
}

impl BackendJob for PruneJob<'_> {
    type Output = LayerRun;
    fn run<B: Backend>(self, b: &B) -> Result<LayerRun> {
        let bar = Bar::new(&format!("{} on {}", self.cfg.method, b.info().backend));
        let run = prune_layer(
            b,
            &self.input.layer,
            &self.input.calibration(),
            &self.cfg,
            self.keep,
            &|p| bar.update(p),
        );
        bar.finish();
        Ok(run?)
    }
}

pub fn parse_method(s: &str) -> Result<Method> {
    Method::parse(s).ok_or_else(|| {
        anyhow!("unknown method '{s}': expected magnitude, wanda, gblm or sparsegpt")
    })
}

pub fn parse_group(s: Option<&str>) -> Result<Option<MaskGroup>> {
    Ok(match s.map(|s| s.trim().to_ascii_lowercase()) {
        None => None,
        Some(g) if g == "row" => Some(MaskGroup::PerRow),
        Some(g) if g == "matrix" => Some(MaskGroup::Matrix),
        Some(g) => bail!("unknown --group '{g}': expected row or matrix"),
    })
}

fn parse_norm(s: &str) -> Result<GradNorm> {
    match s.trim().to_ascii_lowercase().as_str() {
        "l2" => Ok(GradNorm::L2),
        "l1" => Ok(GradNorm::L1),
        _ => bail!("unknown --grad-norm '{s}': expected l2 or l1"),
    }
}

pub fn run(a: PruneArgs) -> Result<ExitCode> {
    // Every argument is checked before any work starts.
    let method = parse_method(&a.method)?;
    let sparsity = Sparsity::parse(&a.sparsity)?;
    let mut cfg = PruneConfig::new(method, sparsity);
    cfg.group = parse_group(a.group.as_deref())?;
    cfg.grad_norm = parse_norm(&a.grad_norm)?;
    cfg.refit = RefitConfig {
        items: RefitConfig::parse_items(&a.refit)?,
        steps: a.refit_steps,
        lr: a.refit_lr,
        seed: a.refit_seed,
    };
    let choice = resolve(&a.backend.backend)?;
    let inputs = a.layer.inputs();
    if let Some(out) = &a.out {
        super::check_out_file(out, &inputs)?;
    }
    let input = LayerInput::load(&a.layer)?;
    let job = PruneJob {
        input: &input,
        cfg,
        keep: a.out.is_some(),
    };
    let run = dispatch(choice, a.backend.adapter.as_deref(), job)?;
    if let Some(out) = &a.out {
        write_layer_with_norms(out, &input.layer, &run.pruned, &run.norms)
            .map_err(super::out_error)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&run.report)?);
    } else {
        print_table(&run.report);
        if let Some(out) = &a.out {
            println!("pruned weights written to {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn ms(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

fn print_table(r: &LayerReport) {
    println!(
        "{} layer {}: {} at {} on {} ({})",
        r.model, r.layer, r.method, r.sparsity, r.backend.backend, r.backend.device
    );
    println!("calibration: {}", r.calibration);
    for g in &r.groups {
        let stages: Vec<String> = g
            .stages
            .iter()
            .map(|s| format!("{} {} ({}x)", s.stage, ms(s.seconds), s.calls))
            .collect();
        let ready = if g.ready.is_empty() {
            String::new()
        } else {
            format!(", ready: {}", g.ready.join(" "))
        };
        println!(
            "input {:<9} cols {:>6}: {}{ready}",
            g.group,
            g.cols,
            if stages.is_empty() {
                "-".to_string()
            } else {
                stages.join(", ")
            }
        );
    }
    println!(
        "{:<10} {:>13} {:>8} {:>12} {:>12}  stages",
        "linear", "shape", "pruned", "recon err", "prune time"
    );
    for l in &r.linears {
        let prune: f64 = l
            .stages
            .iter()
            .filter(|s| s.purpose == Purpose::Prune)
            .map(|s| s.seconds)
            .sum();
        let stages: Vec<String> = l
            .stages
            .iter()
            .map(|s| format!("{} {}", s.stage, ms(s.seconds)))
            .collect();
        println!(
            "{:<10} {:>13} {:>7.2}% {:>12.4e} {:>12}  {}",
            l.name,
            format!("{}x{}", l.rows, l.cols),
            100.0 * l.sparsity,
            l.recon_error,
            ms(prune),
            stages.join(", ")
        );
    }
    let source = r
        .linears
        .first()
        .and_then(|l| l.stages.first())
        .map(|s| format!("{:?}", s.source))
        .unwrap_or_default();
    println!(
        "total: prune {} + evaluate {} ({source}), wall {}",
        ms(r.prune_seconds),
        ms(r.evaluate_seconds),
        ms(r.wall_seconds)
    );
}
