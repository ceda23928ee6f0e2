//! `prunebench prune`: one layer, one method, one backend; a table or JSON, and optionally the
//! pruned weights as safetensors.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};

use prunebench_harness::prune::{LayerReport, Purpose};
use prunebench_harness::{
    prune_layer, AttnUnit, Budget, Compensate, LayerRun, Method, PruneConfig, RefitConfig,
    Saliency, StructuredConfig,
};
use prunebench_kernels::{Backend, GradNorm, MaskGroup, Sparsity};
use prunebench_models::checkpoint::{write_layer_with_meta, write_layer_with_norms};
use prunebench_models::output::Inputs;

use super::backends::{dispatch, resolve, BackendJob};
use super::layer_input::LayerInput;
use super::progress::Bar;
use super::{MethodArgs, PruneArgs, StructuredArgs};

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
        anyhow!("unknown method '{s}': expected magnitude, wanda, gblm, sparsegpt or structured")
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

pub fn parse_norm(s: &str) -> Result<GradNorm> {
    match s.trim().to_ascii_lowercase().as_str() {
        "l2" => Ok(GradNorm::L2),
        "l1" => Ok(GradNorm::L1),
        _ => bail!("unknown --grad-norm '{s}': expected l2 or l1"),
    }
}

/// `--method structured`'s options, each checked before any work.
pub fn parse_structured(a: &StructuredArgs) -> Result<StructuredConfig> {
    let budget = match &a.structure {
        Some(s) => StructuredConfig::parse_structure(s)?,
        None => Budget::Layer,
    };
    let attn_unit = match a.attn_unit.trim().to_ascii_lowercase().as_str() {
        "kv_group" => AttnUnit::KvGroup,
        "query_head" => AttnUnit::QueryHead,
        u => bail!("unknown --attn-unit '{u}': expected kv_group or query_head"),
    };
    let compensate = match a.compensate.trim().to_ascii_lowercase().as_str() {
        "obs" => Compensate::Obs,
        "none" => Compensate::None,
        c => bail!("unknown --compensate '{c}': expected obs or none"),
    };
    let cfg = StructuredConfig {
        budget,
        attn_unit,
        saliency: Saliency::parse(&a.saliency)?,
        compensate,
        rounds: a.rounds,
        round_to: a.round_to,
    };
    cfg.check()?;
    Ok(cfg)
}

/// Where structured pruning writes the layer's new sizes: FILE.config.json beside FILE.
pub fn config_delta_path(out: &std::path::Path) -> std::path::PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".config.json");
    out.with_file_name(name)
}

/// The layer method's configuration from its options, each checked before any work.
pub fn prune_config(a: &MethodArgs) -> Result<PruneConfig> {
    let method = parse_method(&a.method)?;
    let sparsity = Sparsity::parse(&a.sparsity)?;
    let mut cfg = PruneConfig::new(method, sparsity);
    cfg.group = parse_group(a.group.as_deref())?;
    cfg.grad_norm = parse_norm(&a.grad_norm)?;
    cfg.structured = parse_structured(&a.structured)?;
    if method != Method::Structured && a.structured.structure.is_some() {
        bail!("--structure applies to --method structured only");
    }
    cfg.refit = RefitConfig {
        items: RefitConfig::parse_items(&a.refit)?,
        steps: a.refit_steps,
        lr: a.refit_lr,
        seed: a.refit_seed,
    };
    Ok(cfg)
}

pub fn run(a: PruneArgs, inputs: &Inputs) -> Result<ExitCode> {
    // Every argument is checked before any work starts.
    let cfg = prune_config(&a.method)?;
    let method = cfg.method;
    let choice = resolve(&a.backend.backend)?;
    if let Some(out) = &a.out {
        super::check_out_file(out, inputs)?;
        if method == Method::Structured {
            super::check_out_file(&config_delta_path(out), inputs)?;
        }
    }
    let input = LayerInput::load(&a.layer)?;
    let job = PruneJob {
        input: &input,
        cfg,
        keep: a.out.is_some(),
    };
    let run = dispatch(choice, a.backend.adapter.as_deref(), job)?;
    if let Some(out) = &a.out {
        match &run.report.structured {
            Some(s) => write_structured(out, &input, &run, &s.config)?,
            None => write_layer_with_norms(out, &input.layer, &run.pruned, &run.norms)
                .map_err(super::out_error)?,
        }
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

/// The compacted linears with the new sizes in the safetensors metadata, then the config
/// delta beside them; each file goes through a temporary name, and the first is removed again
/// if the second cannot be written, so no partial output is left.
fn write_structured(
    out: &std::path::Path,
    input: &LayerInput,
    run: &LayerRun,
    delta: &prunebench_harness::ConfigDelta,
) -> Result<()> {
    let meta = [
        ("intermediate_size", delta.intermediate_size),
        ("num_attention_heads", delta.num_attention_heads),
        ("num_key_value_heads", delta.num_key_value_heads),
        ("head_dim", delta.head_dim),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    write_layer_with_meta(out, &input.layer, &run.compacted, &run.norms, &meta)
        .map_err(super::out_error)?;
    let json = serde_json::to_string_pretty(delta)? + "\n";
    let path = config_delta_path(out);
    let tmp = path.with_extension("json.partial");
    let written = std::fs::write(&tmp, json).and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(out);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
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
        // Folded from +0.0: an empty f64 sum is −0.0, which would print as "-0.00 ms".
        let prune: f64 = l
            .stages
            .iter()
            .filter(|s| s.purpose == Purpose::Prune)
            .map(|s| s.seconds)
            .fold(0.0, |a, b| a + b);
        let stages: Vec<String> = l
            .stages
            .iter()
            .map(|s| format!("{} {}", s.stage, ms(s.seconds)))
            .collect();
        let shape = match l.kept_shape {
            Some([r, c]) if (r, c) != (l.rows, l.cols) => {
                format!("{}x{}->{r}x{c}", l.rows, l.cols)
            }
            _ => format!("{}x{}", l.rows, l.cols),
        };
        println!(
            "{:<10} {:>13} {:>7.2}% {:>12.4e} {:>12}  {}",
            l.name,
            shape,
            100.0 * l.sparsity,
            l.recon_error,
            ms(prune),
            stages.join(", ")
        );
    }
    if let Some(s) = &r.structured {
        let c = &s.config;
        println!(
            "structured ({} saliency, compensate {}): removed {} of {} parameters ({:.2}%): \
             intermediate {} -> {}, heads {} -> {}, KV heads {} -> {}{}",
            s.saliency,
            match s.compensate {
                prunebench_harness::Compensate::Obs => "obs",
                prunebench_harness::Compensate::None => "none",
            },
            s.parameters_removed,
            s.parameters_total,
            100.0 * s.fraction_removed,
            s.original_intermediate_size,
            c.intermediate_size,
            s.original_num_attention_heads,
            c.num_attention_heads,
            s.original_num_key_value_heads,
            c.num_key_value_heads,
            s.obs_loss
                .map(|l| format!(", OBS loss {l:.4e}"))
                .unwrap_or_default()
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
