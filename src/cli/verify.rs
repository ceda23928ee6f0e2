//! `prunebench verify`: every op (the suite's odd shapes and the model's shapes), then whole
//! layers per method and sparsity, on a backend against the CPU reference. Exit status 1 if
//! anything failed.

use std::process::ExitCode;

use anyhow::{bail, Result};
use serde::Serialize;

use prunebench_harness::verify::{verify_layer, LayerVerification};
use prunebench_harness::Method;
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::suite::{
    model_cases, small_cases, verify_case, CaseReport, OpCase, Outcome,
};
use prunebench_kernels::{Backend, BackendInfo, Sparsity};

use super::backends::{dispatch, resolve, BackendJob};
use super::layer_input::LayerInput;
use super::progress::Bar;
use super::VerifyArgs;

#[derive(Serialize)]
struct VerifyOutput {
    backend: BackendInfo,
    ops: Vec<CaseReport>,
    layers: Vec<LayerVerification>,
}

struct VerifyJob<'a> {
    args: &'a VerifyArgs,
    input: &'a LayerInput,
    cases: Vec<OpCase>,
    methods: Vec<Method>,
    sparsities: Vec<Sparsity>,
}

impl BackendJob for VerifyJob<'_> {
    type Output = VerifyOutput;
    fn run<B: Backend>(self, b: &B) -> Result<VerifyOutput> {
        let reference = CpuBackend::new();
        let quiet = self.args.json;
        let mut ops = Vec::new();
        let cases = self.cases;
        if !cases.is_empty() {
            if !quiet {
                println!(
                    "ops on {} ({}): {} cases",
                    b.info().backend,
                    b.info().device,
                    cases.len()
                );
            }
            for case in &cases {
                let r = verify_case(b, &reference, case);
                if !quiet {
                    print_case(&r);
                }
                ops.push(r);
            }
        }
        let mut layers = Vec::new();
        for cfg in self
            .args
            .select
            .layer_configs(&self.methods, &self.sparsities)?
        {
            let (method, sparsity) = (cfg.method, cfg.sparsity);
            let bar = Bar::new(&format!("verify {method} {sparsity}"));
            let v = verify_layer(
                b,
                &self.input.layer,
                &self.input.calibration(),
                &cfg,
                &|p| bar.update(p),
            );
            bar.finish();
            let v = v?;
            if !quiet {
                print_layer(&v);
            }
            layers.push(v);
        }
        Ok(VerifyOutput {
            backend: b.info().clone(),
            ops,
            layers,
        })
    }
}

fn print_case(r: &CaseReport) {
    let status = match &r.outcome {
        Outcome::Pass => "ok".to_string(),
        Outcome::Fail => "FAIL".to_string(),
        Outcome::Unsupported(why) => format!("unsupported ({why})"),
        Outcome::Error(e) => format!("ERROR {e}"),
    };
    let figures: Vec<String> = r
        .checks
        .iter()
        .map(|c| {
            format!(
                "{} {} {:.2e} <= {:.1e}",
                c.what, c.metric, c.error, c.tolerance
            )
        })
        .collect();
    println!("  {:<64} {:<6} {}", r.case, status, figures.join("; "));
}

fn print_layer(v: &LayerVerification) {
    let structure = match v.backend_report.structured.as_ref().map(|s| s.budget) {
        Some(prunebench_harness::Budget::PerKind { ffn, attn }) => {
            format!(" (ffn={ffn}, attn={attn})")
        }
        _ => String::new(),
    };
    println!(
        "layer {} {} {} at {}{structure}: {}",
        v.backend_report.model,
        v.backend_report.layer,
        v.method,
        v.sparsity,
        if v.pass() { "ok" } else { "FAIL" }
    );
    for l in &v.linears {
        println!(
            "  {:<10} {:>12} pruned {}/{} mask disagreement {:.2e} <= {:.0e}, recon {:.4e} vs {:.4e} (rel {:.1e} <= {:.0e}) {}",
            l.linear,
            format!("{}x{}", l.rows, l.cols),
            l.pruned_backend,
            l.pruned_reference,
            l.mask_disagreement,
            l.mask_tolerance,
            l.recon_backend,
            l.recon_reference,
            l.recon_relative_difference,
            l.recon_tolerance,
            if l.pass { "ok" } else { "FAIL" }
        );
        if let Some(e) = l.compacted_nmse {
            println!(
                "  {:<10} compacted weight nmse {e:.2e} <= {:.0e}",
                "",
                prunebench_harness::verify::LAYER_COMPACT_NMSE
            );
        }
    }
}

pub fn run(a: VerifyArgs) -> Result<ExitCode> {
    let choice = resolve(&a.backend.backend)?;
    let methods = a.select.methods()?;
    let sparsities = a.select.sparsities()?;
    prunebench_harness::RefitConfig::parse_items(&a.select.refit)?;
    let input = LayerInput::load(&a.layer)?;
    let cases = if a.skip_ops {
        vec![]
    } else {
        a.select.filter(
            small_cases()
                .into_iter()
                .chain(model_cases(&input.model_shapes(a.layer.tokens))),
        )?
    };
    if cases.is_empty() && methods.is_empty() {
        bail!("nothing to verify: --skip-ops with --methods none");
    }
    let job = VerifyJob {
        args: &a,
        input: &input,
        cases,
        methods,
        sparsities,
    };
    let out = dispatch(choice, a.backend.adapter.as_deref(), job)?;
    let failed_ops = out.ops.iter().filter(|r| r.failed()).count();
    let unsupported = out
        .ops
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Unsupported(_)))
        .count();
    let failed_layers = out.layers.iter().filter(|l| !l.pass()).count();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{}: ops {} passed, {} failed, {} unsupported; layers {} passed, {} failed",
            out.backend.backend,
            out.ops.len() - failed_ops - unsupported,
            failed_ops,
            unsupported,
            out.layers.len() - failed_layers,
            failed_layers
        );
    }
    Ok(if failed_ops + failed_layers > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
