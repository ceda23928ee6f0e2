//! Timing on any backend: the device ceilings (copy bandwidth, FMA rate), each op case of the
//! suite's table, and whole layers per method. Every timing comes from `Backend::timed`
//! (device timestamps where the backend has them), after warm-up, rotating independent input
//! sets so that caches do not flatter the result, and is reported as a median with the bytes
//! and flops it moved.

use std::collections::BTreeMap;

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::ops::{fma_probe_expected, FMA_PROBE_ADD};
use prunebench_kernels::rng::heavy_tailed;
use prunebench_kernels::suite::{self, CaseInputs, OpCase, Outcome};
use prunebench_kernels::{Backend, KernelError, Matrix, TimeSource};

use crate::error::Result;
use crate::methods::prune_layer;
use crate::prune::{Calibration, Progress, PruneConfig, Purpose};
use crate::results::{summarize, Bound, Ceilings, Payoff, Record, RecordKind, Status};
use prunebench_models::LayerWeights;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub warmup: usize,
    pub repeats: usize,
    pub input_sets: usize,
    /// Compare each op with the CPU reference in the same run.
    pub verify: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            warmup: 2,
            repeats: 10,
            input_sets: 3,
            verify: true,
        }
    }
}

pub fn source_name(s: TimeSource) -> &'static str {
    match s {
        TimeSource::DeviceTimestamps => "device_timestamps",
        TimeSource::WallClock => "wall_clock",
    }
}

/// Times `work` `warmup + repeats` times and keeps the last `repeats`.
fn time_repeated<B: Backend>(
    b: &B,
    opts: &BenchOptions,
    work: &mut dyn FnMut(usize) -> prunebench_kernels::error::Result<()>,
) -> prunebench_kernels::error::Result<(Vec<f64>, TimeSource)> {
    let mut times = Vec::new();
    let mut source = TimeSource::WallClock;
    for i in 0..opts.warmup + opts.repeats {
        let (t, s) = b.timed(&mut || work(i))?;
        if i >= opts.warmup {
            times.push(t);
            source = s;
        }
    }
    Ok((times, source))
}

/// Sizes of the ceiling probes: large enough to leave every cache on a GPU (1 GiB copied,
/// 16M chains of FMAs), smaller on CPUs and software rasterisers where that would take long.
pub fn probe_sizes(device_type: &str) -> (usize, usize, u32) {
    if device_type == "cpu" {
        (4096, 4096, 256) // 64 MiB copy; 16M elements x 256 FMAs
    } else {
        (65_536, 4096, 4096) // 1 GiB copy; 268M elements x 4096 FMAs
    }
}

/// Measures the copy bandwidth and FMA rate of the backend's device, each verified.
pub fn measure_ceilings<B: Backend>(b: &B, opts: &BenchOptions) -> Ceilings {
    let (rows, cols, iters) = probe_sizes(&b.info().device_type);
    let mut c = Ceilings::default();
    let src_host = heavy_tailed(rows, cols, 1);
    let copy = (|| -> prunebench_kernels::error::Result<(f64, u64)> {
        let src = b.upload(&src_host)?;
        let mut dst = b.zeros(rows, cols)?;
        let (times, _) = time_repeated(b, opts, &mut |_| b.copy(&mut dst, &src))?;
        if b.download(&dst)? != src_host {
            return Err(KernelError::Device(
                "the copy probe did not copy exactly".into(),
            ));
        }
        let bytes = 2 * 4 * (rows * cols) as u64;
        let (median, _, _) = summarize(&times).expect("repeats > 0");
        Ok((bytes as f64 / median / 1e9, bytes))
    })();
    match copy {
        Ok((gbps, bytes)) => {
            c.copy_gbps = Some(gbps);
            c.copy_bytes = bytes;
        }
        Err(e) => c.notes.push(format!("copy ceiling not measured: {e}")),
    }
    // Start values spread over [0, 2) so that every chain is different.
    let fma_host = Matrix::from_fn(rows / 4, cols, |r, col| {
        ((r * 7 + col) % 1000) as f32 / 500.0
    });
    let fma = (|| -> prunebench_kernels::error::Result<(f64, u64)> {
        let mut t = b.upload(&fma_host)?;
        let (times, _) = time_repeated(b, opts, &mut |_| b.fma_probe(&mut t, iters))?;
        // Each call continues from the last: check the total against the closed form.
        let total = iters * (opts.warmup + opts.repeats) as u32;
        let got = b.download(&t)?;
        for i in (0..got.data.len()).step_by(997) {
            let want = fma_probe_expected(fma_host.data[i], total);
            if ((got.data[i] as f64 - want) / want.abs().max(FMA_PROBE_ADD as f64)).abs() > 1e-3 {
                return Err(KernelError::Device(format!(
                    "the FMA probe computed {} at element {i}, expected {want}",
                    got.data[i]
                )));
            }
        }
        let flops = 2 * iters as u64 * fma_host.data.len() as u64;
        let (median, _, _) = summarize(&times).expect("repeats > 0");
        Ok((flops as f64 / median / 1e12, flops))
    })();
    match fma {
        Ok((tflops, flops)) => {
            c.fma_tflops = Some(tflops);
            c.fma_flops = flops;
        }
        Err(e) => c.notes.push(format!("FMA ceiling not measured: {e}")),
    }
    c
}

fn op_record(case: &OpCase, backend: &str, device: &str) -> Record {
    let params = case
        .name()
        .split_once('(')
        .map(|(_, p)| p.trim_end_matches(')'))
        .unwrap_or("")
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Record {
        key: case.name(),
        kind: RecordKind::Op,
        op: case.op_name(),
        params,
        backend: backend.into(),
        device: device.into(),
        status: Status::Unverified,
        detail: String::new(),
        median_s: None,
        min_s: None,
        max_s: None,
        repeats: 0,
        time_source: String::new(),
        bytes: case.bytes(),
        flops: case.flops(),
        gbps: None,
        tflops: None,
        bound: if case.compute_bound() {
            Bound::Compute
        } else {
            Bound::Memory
        },
        peak_fraction: None,
        checks: Vec::new(),
        stages: BTreeMap::new(),
        payoff: None,
    }
}

/// The dense baselines a list of product cases needs, added where the selection left them out,
/// so every sparse product can be set against dense on the same device.
pub fn with_dense_baselines(mut cases: Vec<OpCase>) -> Vec<OpCase> {
    let mut have: std::collections::BTreeSet<String> = cases.iter().map(|c| c.name()).collect();
    let missing: Vec<OpCase> = cases
        .iter()
        .filter_map(|c| c.dense_equivalent())
        .filter(|d| have.insert(d.name()))
        .collect();
    cases.extend(missing);
    cases
}

/// Fills each product record's payoff from the dense record of the same linear and token
/// count. `records[i]` must be the record of `cases[i]`.
pub fn attach_payoff(records: &mut [Record], cases: &[OpCase]) {
    let medians: BTreeMap<String, Option<f64>> = records
        .iter()
        .map(|r| (r.key.clone(), r.median_s))
        .collect();
    for (rec, case) in records.iter_mut().zip(cases) {
        let (Some(dense), Some(weights)) = (case.dense_equivalent(), case.weight_bytes()) else {
            continue;
        };
        let dense_key = dense.name();
        if dense_key == rec.key {
            continue;
        }
        let dense_median_s = medians.get(&dense_key).copied().flatten();
        let speedup = dense_median_s
            .zip(rec.median_s)
            .filter(|(_, t)| *t > 0.0)
            .map(|(d, t)| d / t);
        let s_max = dense.bytes() as f64 / case.bytes() as f64;
        rec.payoff = Some(Payoff {
            dense_key,
            dense_median_s,
            speedup,
            s_max,
            efficiency: speedup.map(|s| s / s_max),
            memory_ratio: weights as f64 / dense.weight_bytes().unwrap_or(1) as f64,
        });
    }
}

/// Verifies (when asked) and times one op case.
pub fn bench_case<B: Backend>(
    b: &B,
    case: &OpCase,
    opts: &BenchOptions,
    ceilings: &Ceilings,
) -> Record {
    let info = b.info();
    let mut rec = op_record(case, &info.backend, &info.device);
    if opts.verify {
        let v = suite::verify_case(b, &CpuBackend::new(), case);
        rec.checks = v.checks;
        match v.outcome {
            Outcome::Pass => rec.status = Status::Pass,
            Outcome::Fail => rec.status = Status::Fail,
            Outcome::Unsupported(why) => {
                rec.status = Status::Unsupported;
                rec.detail = why;
                return rec;
            }
            Outcome::Error(e) => {
                rec.status = Status::Error;
                rec.detail = e;
                return rec;
            }
        }
    }
    match time_case(b, case, opts) {
        Ok((times, source)) => {
            if let Some((median, min, max)) = summarize(&times) {
                rec.median_s = Some(median);
                rec.min_s = Some(min);
                rec.max_s = Some(max);
            }
            rec.repeats = times.len();
            rec.time_source = source_name(source).into();
            rec.derive_rates(ceilings);
        }
        Err(KernelError::Unsupported(why)) => {
            rec.status = Status::Unsupported;
            rec.detail = why;
        }
        Err(e @ KernelError::OutOfMemory { .. }) => {
            rec.status = Status::Unsupported;
            rec.detail = e.to_string();
        }
        Err(e) => {
            rec.status = Status::Error;
            rec.detail = e.to_string();
        }
    }
    rec
}

/// Device times of `repeats` executions of `case`, rotating `input_sets` prepared input sets.
pub fn time_case<B: Backend>(
    b: &B,
    case: &OpCase,
    opts: &BenchOptions,
) -> prunebench_kernels::error::Result<(Vec<f64>, TimeSource)> {
    let mut sets = Vec::new();
    for k in 0..opts.input_sets.max(1) {
        let mut c = *case;
        c.seed = case.seed.wrapping_add(1000 * k as u64);
        let inputs = CaseInputs::generate(&c)?;
        sets.push(suite::prepare(b, &c, &inputs)?);
    }
    let n = sets.len();
    time_repeated(b, opts, &mut |i| suite::execute(b, &mut sets[i % n]))
}

/// Times a whole layer per method: `repeats` runs, per-stage medians, the prune time (every
/// stage that prunes, statistics included) as the record's time.
pub fn bench_layer<B: Backend>(
    b: &B,
    layer: &LayerWeights,
    calib: &Calibration<'_>,
    cfg: &PruneConfig,
    repeats: usize,
    progress: &dyn Fn(Progress<'_>),
) -> Result<Record> {
    let info = b.info();
    let samples = calib.source.samples();
    let tokens = calib.source.tokens();
    let mut params = BTreeMap::new();
    params.insert("model".to_string(), layer.model.name.clone());
    params.insert("method".into(), cfg.method.name().into());
    params.insert("sparsity".into(), cfg.sparsity.to_string());
    params.insert("samples".into(), samples.to_string());
    params.insert("tokens".into(), tokens.to_string());
    let names: Vec<&str> = layer.linears.iter().map(|(l, _)| l.name).collect();
    let linears = if names.len() == layer.model.linears().len() {
        "all".to_string()
    } else {
        names.join("+")
    };
    params.insert("linears".into(), linears.clone());
    let refit = if cfg.refit.items.is_empty() {
        String::new()
    } else {
        let items: Vec<String> = cfg.refit.items.iter().map(|i| i.label()).collect();
        params.insert("refit".into(), items.join("+"));
        format!(",refit={}", items.join("+"))
    };
    // Structured runs also differ by their budget and saliency.
    let structured = if cfg.method == crate::method::Method::Structured {
        let s = &cfg.structured;
        let budget = match s.budget {
            crate::Budget::Layer => "layer".to_string(),
            crate::Budget::PerKind { ffn, attn } => {
                format!("ffn={ffn}+attn={attn}")
            }
        };
        params.insert("structure".into(), budget.clone());
        params.insert("saliency".into(), s.saliency.name().into());
        format!(",structure={budget},saliency={}", s.saliency.name())
    } else {
        String::new()
    };
    let key = format!(
        "LAYER(model={},method={},sparsity={},samples={samples},tokens={tokens},linears={linears}{structured}{refit})",
        layer.model.name, cfg.method, cfg.sparsity,
    );
    let mut prune_times = Vec::new();
    let mut stage_times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut source = String::new();
    let mut flops = 0u64;
    let mut bytes = 0u64;
    for _ in 0..repeats.max(1) {
        let run = prune_layer(b, layer, calib, cfg, false, progress)?;
        let r = &run.report;
        prune_times.push(r.prune_seconds);
        let stages = r
            .groups
            .iter()
            .flat_map(|g| g.stages.iter())
            .chain(r.linears.iter().flat_map(|l| l.stages.iter()))
            .filter(|s| s.purpose == Purpose::Prune);
        let mut per_stage: BTreeMap<String, f64> = BTreeMap::new();
        for s in stages {
            *per_stage.entry(s.stage.clone()).or_default() += s.seconds;
            source = source_name(s.source).into();
        }
        for (k, v) in per_stage {
            stage_times.entry(k).or_default().push(v);
        }
        (bytes, flops) = layer_work(layer, cfg, r, samples, tokens);
    }
    Ok(timed_record(
        key,
        RecordKind::Layer,
        format!("LAYER_{}", cfg.method.name().to_uppercase()),
        params,
        info,
        "time of the pruning stages (statistics included); see `stages`",
        &prune_times,
        source,
        (bytes, flops),
        stage_times,
    ))
}

/// A whole-layer or whole-model record from its repeated times and per-stage times (their
/// medians): unverified, with rates derived without ceilings (the caller adds them).
#[allow(clippy::too_many_arguments)]
fn timed_record(
    key: String,
    kind: RecordKind,
    op: String,
    params: BTreeMap<String, String>,
    info: &prunebench_kernels::BackendInfo,
    detail: &str,
    times: &[f64],
    source: String,
    (bytes, flops): (u64, u64),
    stage_times: BTreeMap<String, Vec<f64>>,
) -> Record {
    let (median, min, max) = summarize(times).expect("at least one run");
    let mut rec = Record {
        key,
        kind,
        op,
        params,
        backend: info.backend.clone(),
        device: info.device.clone(),
        status: Status::Unverified,
        detail: detail.into(),
        median_s: Some(median),
        min_s: Some(min),
        max_s: Some(max),
        repeats: times.len(),
        time_source: source,
        bytes,
        flops,
        gbps: None,
        tflops: None,
        bound: Bound::Compute,
        peak_fraction: None,
        checks: Vec::new(),
        stages: stage_times
            .into_iter()
            .map(|(k, v)| (k, summarize(&v).expect("non-empty").0))
            .collect(),
        payoff: None,
    };
    rec.derive_rates(&Ceilings::default());
    rec
}

/// Bytes and flops of a layer's pruning stages, summed from the op work model.
fn layer_work(
    layer: &LayerWeights,
    cfg: &PruneConfig,
    report: &crate::prune::LayerReport,
    samples: usize,
    tokens: usize,
) -> (u64, u64) {
    let cases = crate::methods::layer_work(&crate::methods::LayerWork {
        layer,
        cfg,
        report,
        samples,
        tokens,
    });
    (
        cases.iter().map(|c| c.bytes()).sum(),
        cases.iter().map(|c| c.flops()).sum(),
    )
}

/// Times a whole model pruned per method (ALGORITHMS.md §14): `repeats` runs of the
/// sequential loop, the wall time of the loop as the record's time, the device time per stage
/// summed over the model as `stages`; bytes and flops the layers' pruning work (the op work
/// model, per layer) plus the two forwards of every layer over the calibration tokens.
#[allow(clippy::too_many_arguments)]
pub fn bench_model<B: Backend>(
    b: &B,
    ckpt: &prunebench_models::checkpoint::Checkpoint,
    cfg: &prunebench_models::llama::LlamaConfig,
    calibration: &[Vec<u32>],
    pcfg: &PruneConfig,
    gradients: Option<&prunebench_models::gradients::GradientsFile>,
    repeats: usize,
    progress: &dyn Fn(Progress<'_>),
) -> Result<Record> {
    use crate::model::{prune_model, ForwardOptions};
    let info = b.info();
    let seq = calibration.first().map_or(0, Vec::len);
    let samples = calibration.len();
    let mut params = BTreeMap::new();
    params.insert("model".to_string(), cfg.model.name.clone());
    params.insert("method".into(), pcfg.method.name().into());
    params.insert("sparsity".into(), pcfg.sparsity.to_string());
    params.insert("nsamples".into(), samples.to_string());
    params.insert("seqlen".into(), seq.to_string());
    params.insert("layers".into(), cfg.model.num_layers.to_string());
    let structure = match pcfg.structured.budget {
        crate::Budget::PerKind { ffn, attn }
            if pcfg.method == crate::method::Method::Structured =>
        {
            params.insert("structure".into(), format!("ffn={ffn}+attn={attn}"));
            format!(",structure=ffn={ffn}+attn={attn}")
        }
        _ => String::new(),
    };
    let key = format!(
        "MODEL(model={},method={},sparsity={},nsamples={samples},seqlen={seq},layers={}{structure})",
        cfg.model.name, pcfg.method, pcfg.sparsity, cfg.model.num_layers
    );
    let mut walls = Vec::new();
    let mut stage_times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut source = String::new();
    let (mut bytes, mut flops) = (0u64, 0u64);
    let opts = ForwardOptions::default();
    for _ in 0..repeats.max(1) {
        let grads = gradients.map(|g| g as &dyn crate::model::ModelGradients);
        let run = prune_model(b, ckpt, cfg, calibration, pcfg, grads, &opts, progress)?;
        walls.push(run.totals.wall_seconds);
        for s in run
            .totals
            .stages
            .iter()
            .filter(|s| s.purpose == Purpose::Prune)
        {
            stage_times
                .entry(s.stage.clone())
                .or_default()
                .push(s.seconds);
            source = source_name(s.source).into();
        }
        (bytes, flops) = (0, 0);
        for (i, r) in run.layers.iter().enumerate() {
            let layer = ckpt.read_layer(i, &cfg.model.linears())?;
            let (lb, lf) = layer_work(&layer, pcfg, r, samples, seq);
            bytes += lb;
            flops += lf;
        }
        let params_per_layer: u64 = cfg
            .model
            .linears()
            .iter()
            .map(|l| (l.rows * l.cols) as u64)
            .sum();
        let tokens = (samples * seq) as u64;
        let m = &cfg.model;
        let attn = 2 * tokens * (seq as u64 + 1) * (m.num_heads * m.head_dim) as u64;
        let layers = m.num_layers as u64;
        flops += layers * 2 * (2 * params_per_layer * tokens + attn);
        bytes += layers * 2 * 4 * params_per_layer;
    }
    Ok(timed_record(
        key,
        RecordKind::Model,
        format!("MODEL_{}", pcfg.method.name().to_uppercase()),
        params,
        info,
        "wall time of the whole sequential loop (forwards, statistics, pruning, transfers); \
         `stages`: device time per stage summed over the layers",
        &walls,
        source,
        (bytes, flops),
        stage_times,
    ))
}

/// Bytes and flops of GBLM's gradient statistic over `windows` windows of `seq` tokens, the work
/// model both this suite and the PyTorch baseline (`baselines/pytorch_baseline.py`,
/// `gradients_work`) use, so the two records' rates compare. With P the parameters of one
/// layer's seven linears, L layers, D = heads·head_dim, V·H the LM head, per window:
/// - linears: the forward (2·P·T per layer), the forward recomputed from the layer's stored
///   input on the way down (2·P·T), and the backward's dX and dW products (4·P·T);
/// - attention: A = 2·T·(T+1)·D per layer forward (QKᵀ and PV over the causal half, as
///   `bench_model` counts it), A again recomputed, and the backward's five products of that
///   size (S again, dV, dP, dQ, dK: 2.5·A);
/// - the LM head: the logits (2·V·H·T), then in the backward the logits again and dX
///   (4·V·H·T); the head gets no dW (GBLM scores only the layers' linears).
///
/// Bytes: every f32 weight read once per pass (linears three times: forward, recompute,
/// backward; the head twice), plus each linear's f32 accumulator read and written once per
/// window. Activations, norms and embeddings are left out: at these sizes they are small beside
/// the weights, and leaving them out keeps the model the same whatever a backend keeps resident.
pub fn gradients_work(
    m: &prunebench_models::ModelConfig,
    vocab: usize,
    windows: usize,
    seq: usize,
) -> (u64, u64) {
    let p: u64 = m.linears().iter().map(|l| (l.rows * l.cols) as u64).sum();
    let (t, layers) = (seq as u64, m.num_layers as u64);
    let head = (vocab * m.hidden) as u64;
    let attn = 2 * t * (t + 1) * (m.num_heads * m.head_dim) as u64;
    // 4.5·A written as 9·T·(T+1)·D / 2 without leaving the integers: A is even.
    let flops = layers * (8 * p * t + 9 * attn / 2) + 6 * head * t;
    let bytes = 4 * (3 * p * layers + 2 * head) + 2 * 4 * p * layers;
    (bytes * windows as u64, flops * windows as u64)
}

/// Times GBLM-Pruner's gradient statistic of a whole model (ALGORITHMS.md §15): `repeats`
/// runs of the suite's backward pass over `windows` (one per window, the statistic's l2
/// accumulation, the final square root), each run's wall time as a time; bytes and flops from
/// [`gradients_work`].
pub fn bench_gradients<B: Backend>(
    b: &B,
    ckpt: &prunebench_models::checkpoint::Checkpoint,
    cfg: &prunebench_models::llama::LlamaConfig,
    windows: &[Vec<u32>],
    repeats: usize,
    progress: &dyn Fn(Progress<'_>),
) -> Result<Record> {
    use crate::model::{gblm_gradients, ForwardOptions, Weights};
    // The statistic GBLM-Pruner prunes with (its default); `bench` has no option for l1.
    let norm = prunebench_kernels::GradNorm::L2;
    let info = b.info();
    let seq = windows.first().map_or(0, Vec::len);
    let samples = windows.len();
    let m = &cfg.model;
    let mut params = BTreeMap::new();
    params.insert("model".to_string(), m.name.clone());
    params.insert("nsamples".into(), samples.to_string());
    params.insert("seqlen".into(), seq.to_string());
    params.insert("layers".into(), m.num_layers.to_string());
    params.insert("norm".into(), norm.name().into());
    let key = format!(
        "GRADIENTS(model={},nsamples={samples},seqlen={seq},layers={},norm={})",
        m.name,
        m.num_layers,
        norm.name()
    );
    let replaced = Default::default();
    let w = Weights {
        ckpt,
        replaced: &replaced,
    };
    let opts = ForwardOptions::default();
    let mut walls = Vec::new();
    for _ in 0..repeats.max(1) {
        let stats = gblm_gradients(b, &w, cfg, windows, norm, &opts, progress)?;
        walls.push(stats.summary.seconds);
    }
    Ok(timed_record(
        key,
        RecordKind::Model,
        "GRADIENTS".into(),
        params,
        info,
        "wall time of the statistic over every window (forward, recomputed forward and backward \
         per layer, accumulation, transfers)",
        &walls,
        source_name(TimeSource::WallClock).into(),
        gradients_work(m, cfg.vocab_size, samples, seq),
        BTreeMap::new(),
    ))
}
