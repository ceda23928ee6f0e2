//! `prunebench bench`: the device's ceilings, every op of the table on the model's shapes,
//! whole layers per method, and (given a whole model) GBLM's gradient pass and the model pruned
//! per method, timed on one backend and verified against the CPU reference in the
//! same run; one results JSON per run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};

use prunebench_harness::bench::{
    attach_payoff, bench_case, bench_layer, measure_ceilings, with_dense_baselines, BenchOptions,
};
use prunebench_harness::results::{
    utc_now, Ceilings, Record, ResultsFile, Status, TimingPolicy, ToolInfo, SCHEMA,
};
use prunebench_kernels::suite::{model_cases, ModelShapes, OpCase};
use prunebench_kernels::{Backend, Sparsity};
use prunebench_models::output::Inputs;

use super::backends::{dispatch, resolve, BackendJob};
use super::layer_input::LayerInput;
use super::progress::Bar;
use super::BenchArgs;

/// The whole model the whole-model records prune, with its calibration windows.
struct WholeModel {
    ckpt: prunebench_models::checkpoint::Checkpoint,
    cfg: prunebench_models::llama::LlamaConfig,
    windows: Vec<Vec<u32>>,
    gradients: Option<prunebench_models::gradients::GradientsFile>,
    /// Why the GRADIENTS record cannot run (its host accumulators would not fit), if so.
    no_backward: Option<String>,
}

struct BenchJob<'a> {
    args: &'a BenchArgs,
    model: Option<WholeModel>,
    input: &'a LayerInput,
    cases: Vec<OpCase>,
    opts: BenchOptions,
    methods: Vec<prunebench_harness::Method>,
    sparsities: Vec<Sparsity>,
}

impl BackendJob for BenchJob<'_> {
    type Output = ResultsFile;
    fn run<B: Backend>(self, b: &B) -> Result<ResultsFile> {
        let info = b.info().clone();
        eprintln!(
            "measuring the ceilings of {} ({})",
            info.device, info.backend
        );
        let ceilings = measure_ceilings(b, &self.opts);
        let cases = &self.cases;
        let mut records: Vec<Record> = Vec::new();
        let bar = Bar::new("bench ops");
        for (i, case) in cases.iter().enumerate() {
            bar.update(prunebench_harness::Progress {
                what: &case.name(),
                done: i as u64,
                total: cases.len() as u64,
            });
            records.push(bench_case(b, case, &self.opts, &ceilings));
        }
        bar.finish();
        attach_payoff(&mut records, cases);
        for cfg in self
            .args
            .select
            .layer_configs(&self.methods, &self.sparsities)?
        {
            let (method, sparsity) = (cfg.method, cfg.sparsity);
            let bar = Bar::new(&format!("bench layer {method} {sparsity}"));
            records.push(rated(&bar, &ceilings, |progress| {
                bench_layer(
                    b,
                    &self.input.layer,
                    &self.input.calibration(),
                    &cfg,
                    self.args.layer_repeats,
                    progress,
                )
            })?);
        }
        if let Some(m) = &self.model {
            // The backward pass's cost, once per run: it does not depend on the method.
            match &m.no_backward {
                Some(why) => eprintln!("whole model, gradients: skipped ({why})"),
                None => {
                    let bar = Bar::with_eta("bench model gradients");
                    records.push(rated(&bar, &ceilings, |progress| {
                        prunebench_harness::bench::bench_gradients(
                            b,
                            &m.ckpt,
                            &m.cfg,
                            &m.windows,
                            self.args.layer_repeats,
                            progress,
                        )
                    })?);
                }
            }
            for cfg in self
                .args
                .select
                .layer_configs(&self.methods, &self.sparsities)?
            {
                let (method, sparsity) = (cfg.method, cfg.sparsity);
                if let Err(e) = prunebench_harness::model::sequential::check_config(
                    &cfg,
                    m.gradients
                        .as_ref()
                        .map(prunebench_harness::model::ModelGradients::gives)
                        .unwrap_or_default(),
                ) {
                    eprintln!("whole model, {method} {sparsity}: skipped ({e})");
                    continue;
                }
                let bar = Bar::with_eta(&format!("bench model {method} {sparsity}"));
                records.push(rated(&bar, &ceilings, |progress| {
                    prunebench_harness::bench::bench_model(
                        b,
                        &m.ckpt,
                        &m.cfg,
                        &m.windows,
                        &cfg,
                        m.gradients.as_ref(),
                        self.args.layer_repeats,
                        progress,
                    )
                })?);
            }
        }
        let source = records
            .iter()
            .find(|r| !r.time_source.is_empty())
            .map_or("none", |r| r.time_source.as_str())
            .to_string();
        Ok(ResultsFile {
            schema: SCHEMA.into(),
            tool: ToolInfo {
                name: "prunebench".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                git_commit: env!("PRUNEBENCH_GIT_COMMIT").into(),
                command: command_line(),
            },
            date: utc_now(),
            device: info,
            ceilings,
            timing: TimingPolicy {
                warmup: self.opts.warmup,
                repeats: self.opts.repeats,
                input_sets: self.opts.input_sets,
                source,
            },
            records,
            quality: Vec::new(),
        })
    }
}

/// A whole-layer or whole-model record timed under `bar`, its rates against the device's
/// ceilings.
fn rated(
    bar: &Bar,
    ceilings: &Ceilings,
    time: impl FnOnce(&dyn Fn(prunebench_harness::Progress<'_>)) -> prunebench_harness::Result<Record>,
) -> Result<Record> {
    let rec = time(&|p| bar.update(p));
    bar.finish();
    let mut rec = rec?;
    rec.derive_rates(ceilings);
    Ok(rec)
}

/// The folder of results files when `--out` is not given.
const DEFAULT_DIR: &str = "results";

fn default_out(backend: &str, device: &str) -> PathBuf {
    let slug: String = device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let slug = slug
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    Path::new(DEFAULT_DIR).join(format!("{backend}-{slug}.json"))
}

/// The work model of every case the arguments select, and the roofline's prediction.
fn dry_run(a: &BenchArgs) -> Result<ExitCode> {
    let (cfg, checkpoint) = LayerInput::model(&a.layer)?;
    let forward = super::layer_input::forward_dims(&cfg, checkpoint.as_ref());
    let linears = prunebench_models::config::parse_linears(&cfg, &a.layer.linears)?;
    let shapes = super::layer_input::distinct_shapes(&linears);
    println!(
        "{:<66} {:>10} {:>12} {:>8} {:>7} {:>11}",
        "case", "MB", "GFLOP", "flop/B", "bound", "predicted"
    );
    let cases = model_cases(&ModelShapes {
        linears: shapes,
        layer: cfg.layer_dims(),
        forward,
        tokens: a.layer.tokens,
    });
    for c in a.select.filter(cases)? {
        let (b, f) = (c.bytes() as f64, c.flops() as f64);
        let memory = a.copy_gbps.map(|g| b / (g * 1e9));
        let compute = a.fma_tflops.map(|t| f / (t * 1e12));
        let predicted = match (memory, compute) {
            (Some(m), Some(c)) => Some(m.max(c)),
            (m, c) => m.or(c),
        };
        println!(
            "{:<66} {:>10.1} {:>12.3} {:>8.2} {:>7} {:>11}",
            c.name(),
            b / 1e6,
            f / 1e9,
            f / b,
            if c.compute_bound() {
                "compute"
            } else {
                "memory"
            },
            predicted.map_or("–".into(), super::prune::ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The whole-model records' inputs, when --model-text or --model-ids is given (with
/// --checkpoint), checked before any work.
fn whole_model(a: &BenchArgs) -> Result<Option<WholeModel>> {
    let Some(tokens) =
        super::model_input::Tokens::pick(&a.model_text, &a.model_ids, "whole-model calibration")?
    else {
        if a.gradients.is_some() {
            bail!(
                "--gradients applies to the whole-model records: give --model-text or --model-ids"
            );
        }
        return Ok(None);
    };
    let Some(dir) = &a.layer.checkpoint else {
        bail!("the whole-model records prune the --checkpoint model: give --checkpoint DIR");
    };
    let (ckpt, cfg) = super::model_input::open(dir)?;
    prunebench_models::text::check_seqlen(a.layer.tokens, &cfg)?;
    let ids = tokens.load(dir, &cfg, "--model-ids")?;
    let windows = prunebench_models::text::calibration_windows(
        &ids,
        a.layer.samples,
        a.layer.tokens,
        a.layer.seed,
    )?;
    let gradients = match &a.gradients {
        Some(p) => Some(prunebench_models::gradients::GradientsFile::open(
            p, &cfg.model,
        )?),
        None => None,
    };
    // The statistic's accumulators stay on the host, f32 for every linear of every layer: a
    // model too large for that skips the GRADIENTS record rather than the whole run.
    let no_backward = super::model_input::check_host_memory(
        super::gradients::host_bytes(
            &cfg,
            a.layer.tokens,
            // What bench_gradients runs: GBLM's default statistic.
            prunebench_harness::model::GradientsFor::Gblm(prunebench_kernels::GradNorm::L2),
        ),
        "the GRADIENTS record (an f32 accumulator per linear weight, on the host)",
        "the other records run without it",
    )
    .err()
    .map(|e| e.to_string());
    Ok(Some(WholeModel {
        ckpt,
        cfg,
        windows,
        gradients,
        no_backward,
    }))
}

pub fn run(a: BenchArgs, inputs: &Inputs) -> Result<ExitCode> {
    if a.dry_run {
        return dry_run(&a);
    }
    let choice = resolve(&a.backend.backend)?;
    let methods = a.select.methods()?;
    let sparsities = a.select.sparsities()?;
    prunebench_harness::RefitConfig::parse_items(&a.select.refit)?;
    if a.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    match &a.out {
        Some(out) => super::check_out_file(out, inputs)?,
        // The default file's name depends on the device, known only after the run; its
        // folder can be checked now (and is created at the end).
        None => super::check_out_folder(Path::new(DEFAULT_DIR), inputs)?,
    }
    let model = whole_model(&a)?;
    let input = LayerInput::load(&a.layer)?;
    let cases = with_dense_baselines(
        a.select
            .filter(model_cases(&input.model_shapes(a.layer.tokens)))?,
    );
    if cases.is_empty() && methods.is_empty() {
        bail!("nothing to bench: no op case selected and --methods none");
    }
    let job = BenchJob {
        args: &a,
        model,
        input: &input,
        cases,
        opts: BenchOptions {
            warmup: a.warmup,
            repeats: a.repeats,
            input_sets: a.input_sets,
            verify: !a.no_verify,
        },
        methods,
        sparsities,
    };
    let results = dispatch(choice, a.backend.adapter.as_deref(), job)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| default_out(&results.device.backend, &results.device.device));
    if a.out.is_none() {
        std::fs::create_dir_all(DEFAULT_DIR)
            .map_err(|e| super::out_error(format!("{DEFAULT_DIR}: {e}")))?;
        super::check_out_file(&out, inputs)?;
    }
    results.write(&out)?;
    print_summary(&results);
    println!("results written to {}", out.display());
    let failed = results
        .records
        .iter()
        .filter(|r| matches!(r.status, Status::Fail | Status::Error))
        .count();
    Ok(if failed > 0 {
        eprintln!("{failed} record(s) failed verification or errored");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_summary(r: &ResultsFile) {
    let c = &r.ceilings;
    println!(
        "{} ({}): copy {} GB/s, FMA {} TFLOP/s{}",
        r.device.device,
        r.device.backend,
        c.copy_gbps.map_or("–".into(), |v| format!("{v:.1}")),
        c.fma_tflops.map_or("–".into(), |v| format!("{v:.3}")),
        if c.notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.notes.join("; "))
        }
    );
    println!(
        "{:<72} {:>8} {:>12} {:>10} {:>10} {:>7} {:>15}",
        "case", "status", "median", "GB/s", "TFLOP/s", "% peak", "x dense (S_max)"
    );
    for rec in &r.records {
        let f = |v: Option<f64>, d: usize| v.map_or("–".into(), |x| format!("{x:.d$}"));
        let payoff = rec.payoff.as_ref().map_or(String::new(), |p| {
            format!("{} ({:.2})", f(p.speedup, 2), p.s_max)
        });
        println!(
            "{:<72} {:>8} {:>12} {:>10} {:>10} {:>7} {:>15}",
            rec.key,
            format!("{:?}", rec.status).to_lowercase(),
            rec.median_s.map_or("–".into(), super::prune::ms),
            f(rec.gbps, 1),
            f(rec.tflops, 3),
            f(rec.peak_fraction.map(|p| 100.0 * p), 0),
            payoff
        );
    }
}

/// The command line as the user would type it again: the program by its file name, not by
/// the path it was started from (results files are shared between machines).
fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    let program = args.first().and_then(|a| {
        std::path::Path::new(a)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    });
    if let Some(name) = program {
        args[0] = name;
    }
    args.join(" ")
}
