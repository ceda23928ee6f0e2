//! `prunebench compile`: every CubeCL kernel the op cases (and the whole-layer runs) launch,
//! generated as CUDA C++ for each target architecture and compiled by NVRTC, without a GPU;
//! a table of registers, shared memory, spills and theoretical occupancy per kernel, and of
//! launches and cubes per case. Exit status 1 when a kernel fails to compile or exceeds the
//! architecture's limits, or a case could not run through.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use prunebench_harness::prune_layer;
use prunebench_harness::{Progress, PruneConfig};
use prunebench_kernels::cube::compile_only::{
    self, compile_all, CaseLaunches, CompileOnlyBackend, KernelReport, KernelSource, Nvrtc, Target,
    TARGETS,
};
use prunebench_kernels::cube::gemm_tile;
use prunebench_kernels::ops::Backend;
use prunebench_kernels::plan::factor::{block_width, planned_launches, WaveShare};
use prunebench_kernels::suite::{model_cases, run_once, small_cases, Op, OpCase};

mod table;

use super::layer_input::LayerInput;
use super::progress::Bar;
use super::{LayerArgs, SelectionArgs};

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// Target architectures, comma-separated: sm_90a (H100, H200), sm_80 (A100).
    #[arg(long, default_value = "sm_90a,sm_80")]
    pub arch: String,
    /// The CUDA toolkit NVRTC and the headers come from (e.g. the CUDA_PATH
    /// scripts/cuda-toolkit.sh prints); default CUDA_PATH, then /usr/local/cuda, /opt/cuda.
    #[arg(long)]
    pub cuda_path: Option<PathBuf>,
    #[command(flatten)]
    pub layer: LayerArgs,
    #[command(flatten)]
    pub select: SelectionArgs,
    /// Skip the op cases (whole layers only).
    #[arg(long)]
    pub skip_ops: bool,
    /// Print the results as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Compile this CUDA C++ file too, as one more kernel (for testing the error path).
    #[arg(long, hide = true)]
    pub extra_source: Option<PathBuf>,
}

#[derive(Serialize)]
struct CompileOutput {
    /// Read by `prunebench report` for its "CUDA resources" section.
    schema: &'static str,
    nvrtc: String,
    model: String,
    kernels: Vec<KernelReport>,
    cases: Vec<CaseRecord>,
}

#[derive(Serialize)]
struct CaseRecord {
    #[serde(flatten)]
    launches: CaseLaunches,
    /// "ok", or why the case stopped (its later kernels were then never seen).
    status: String,
    /// HINV_FACTOR: its plan's GEMM-shaped launches on this target's SMs, and the share of
    /// its flops in those under one wave.
    #[serde(skip_serializing_if = "Option::is_none")]
    factor_plan: Option<WaveShare>,
}

/// What of a HINV_FACTOR case's work its plan runs in launches under one wave of `t`: the
/// launches and flops come from the plan (`plan::factor`), as the backend cuts its matrix and
/// tiles its GEMMs.
fn factor_share(b: &CompileOnlyBackend, t: &Target, case: &OpCase) -> Option<WaveShare> {
    if case.op != Op::HinvFactor {
        return None;
    }
    let n = case.cols;
    let slabs = b.slabs(n, n).ok()?;
    let fill = 2 * t.sms as usize;
    Some(WaveShare::of(
        &planned_launches(n, &slabs, block_width(&slabs), |m, c, count| {
            gemm_tile(m, c, count, fill)
        }),
        t.sms as usize,
    ))
}

fn targets(list: &str) -> Result<Vec<&'static Target>> {
    let mut out: Vec<&'static Target> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(t) = compile_only::target(name) else {
            let known: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
            bail!(
                "unknown architecture '{name}' (known: {})",
                known.join(", ")
            );
        };
        if !out.contains(&t) {
            out.push(t);
        }
    }
    if out.is_empty() {
        bail!("--arch names no architecture");
    }
    Ok(out)
}

/// One case or layer run on every target's backend; its launches per target.
fn record(
    name: &str,
    backends: &[(&'static Target, CompileOnlyBackend)],
    run: impl Fn(&CompileOnlyBackend) -> Result<()>,
    cases: &mut Vec<CaseRecord>,
) {
    for (t, b) in backends {
        compile_only::take_launches(t);
        // Launches are queued to the runtime's server: wait until it has taken them all, so
        // they count for this case, and so that two targets' servers never generate code at
        // once (CubeCL 0.10's CUDA code generator numbers its temporaries with one counter per
        // process, reset by every kernel: two at once can both declare `_tmp_0`).
        let status = match run(b).and_then(|()| b.synchronize().map_err(Into::into)) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error: {e:#}"),
        };
        let launches = compile_only::take_launches(t);
        // Host memory stands in for the device's: give back what the case freed.
        b.client().memory_cleanup();
        cases.push(CaseRecord {
            launches: CaseLaunches::new(name, t, &launches),
            status,
            factor_plan: None,
        });
    }
}

pub fn run(a: CompileArgs) -> Result<ExitCode> {
    let targets = targets(&a.arch)?;
    let nvrtc = Nvrtc::load(a.cuda_path.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let extra = match &a.extra_source {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let methods = a.select.methods()?;
    let sparsities = a.select.sparsities()?;
    let input = LayerInput::load(&a.layer)?;
    let cases: Vec<OpCase> = if a.skip_ops {
        vec![]
    } else {
        a.select.filter(
            small_cases()
                .into_iter()
                .chain(model_cases(&input.model_shapes(a.layer.tokens))),
        )?
    };
    let layer_runs = if a.select.op.is_some() {
        vec![]
    } else {
        a.select.layer_configs(&methods, &sparsities)?
    };
    if cases.is_empty() && layer_runs.is_empty() {
        bail!("nothing to compile: --skip-ops with --methods none");
    }
    let backends: Vec<_> = targets
        .iter()
        .map(|&t| (t, compile_only::compile_only(t)))
        .collect();
    let quiet = a.json;
    if !quiet {
        eprintln!(
            "NVRTC {}.{} from {}",
            nvrtc.version.0,
            nvrtc.version.1,
            nvrtc.cuda_path.display()
        );
        eprintln!(
            "running {} op cases and {} layer runs through the compile-only runtime ({})",
            cases.len(),
            layer_runs.len(),
            targets
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let records = run_all(&cases, &layer_runs, &backends, &input);
    let kernels = compile_targets(&nvrtc, &targets, extra.as_deref(), quiet);
    let out = CompileOutput {
        schema: prunebench_harness::report::cuda::SCHEMA,
        // The version only: the file is committed, and the toolkit's folder is this machine's.
        nvrtc: format!("NVRTC {}.{}", nvrtc.version.0, nvrtc.version.1),
        model: input.layer.model.name.clone(),
        kernels,
        cases: records,
    };
    let json = serde_json::to_string_pretty(&out)?;
    if let Some(path) = &a.out {
        prunebench_models::output::write_file(path, json.as_bytes())?;
    }
    if a.json {
        println!("{json}");
    } else {
        table::print(&out.kernels, &out.cases_view(), &targets);
    }
    let failed_kernels = out.kernels.iter().filter(|k| !k.ok()).count();
    let failed_cases = out.cases.iter().filter(|c| c.status != "ok").count();
    Ok(if failed_kernels + failed_cases > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Every op case, then every whole-layer run, through the compile-only backends: one record
/// per case (its launches, or why it failed), with a progress bar.
fn run_all(
    cases: &[OpCase],
    layer_runs: &[PruneConfig],
    backends: &[(&'static Target, CompileOnlyBackend)],
    input: &LayerInput,
) -> Vec<CaseRecord> {
    let mut records = Vec::new();
    // The inputs (at their shapes only: model-sized allocations, no draws or reference
    // statistics) are independent between cases: a batch is generated in parallel, then run
    // one case at a time so that each launch is counted for its case.
    let total = (cases.len() + layer_runs.len()) as u64;
    let bar = Bar::new("compile");
    let mut done = 0u64;
    for chunk in cases.chunks(compile_only::input_batch()) {
        bar.update(Progress {
            what: &chunk[0].name(),
            done,
            total,
        });
        let inputs = compile_only::generate_inputs(chunk);
        for (case, inputs) in chunk.iter().zip(inputs) {
            done += 1;
            let name = case.name();
            let first = records.len();
            match inputs {
                Ok(inputs) => record(
                    &name,
                    backends,
                    |b| run_once(b, case, &inputs).map(drop).map_err(Into::into),
                    &mut records,
                ),
                Err(e) => record(
                    &name,
                    backends,
                    |_| Err(anyhow::anyhow!("inputs: {e}")),
                    &mut records,
                ),
            }
            for (r, (t, b)) in records[first..].iter_mut().zip(backends) {
                r.factor_plan = factor_share(b, t, case);
            }
        }
    }
    for cfg in layer_runs {
        let name = format!(
            "LAYER(model={},method={},sparsity={})",
            input.layer.model.name, cfg.method, cfg.sparsity
        );
        bar.update(Progress {
            what: &name,
            done,
            total,
        });
        done += 1;
        record(
            &name,
            backends,
            |b| {
                prune_layer(b, &input.layer, &input.calibration(), cfg, false, &|_| {})
                    .map(drop)
                    .map_err(Into::into)
            },
            &mut records,
        );
    }
    bar.finish();
    records
}

/// The kernels the runs generated, and the extra source, compiled by NVRTC per target.
fn compile_targets(
    nvrtc: &Nvrtc,
    targets: &[&'static Target],
    extra: Option<&str>,
    quiet: bool,
) -> Vec<KernelReport> {
    let mut kernels = Vec::new();
    for &t in targets {
        let mut sources = compile_only::kernels(t);
        if let Some(src) = extra {
            sources.push(KernelSource {
                name: "extra_source".into(),
                variant: "-".into(),
                id: "--extra-source".into(),
                cube_dim: [1, 1, 1],
                dynamic_shared: 0,
                source: Ok(src.to_string()),
            });
        }
        if !quiet {
            eprintln!("compiling {} kernels for {}", sources.len(), t.name);
        }
        kernels.extend(compile_all(nvrtc, t, &sources));
    }
    kernels
}

impl CompileOutput {
    fn cases_view(&self) -> Vec<(&CaseLaunches, &str, Option<&WaveShare>)> {
        self.cases
            .iter()
            .map(|c| (&c.launches, c.status.as_str(), c.factor_plan.as_ref()))
            .collect()
    }
}
