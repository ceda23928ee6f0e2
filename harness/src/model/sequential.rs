//! The seeds' sequential pruning loop (ALGORITHMS.md §14): calibration windows through the
//! embeddings; then for each layer, run it capturing its four group inputs, prune it with the
//! layer method of `prune`, and run it again with the pruned weights, so that the next layer
//! is calibrated on what the pruned model computes.

use std::collections::HashMap;
use std::time::Instant;

use prunebench_kernels::{Backend, Matrix};
use prunebench_models::checkpoint::Checkpoint;
use prunebench_models::llama::LlamaConfig;
use prunebench_models::{CalibrationSource, InputGroup, LinearSpec, NormWeight};
use serde::{Deserialize, Serialize};

use super::forward::{embed, layer_pass, Captured, ForwardOptions, LayerOnDevice, Rope, Weights};
use super::gradients::{Gives, ModelGradients};
use super::perplexity::window_len;
use crate::error::{HarnessError, Result};
use crate::method::Method;
use crate::methods::prune_layer;
use crate::prune::{Calibration, LayerReport, Progress, PruneConfig, StageTime};

/// A pruned model: the per-layer reports, every tensor the run replaced (HF names, rounded to
/// the checkpoint's dtype, as written), and the time per stage over the model.
pub struct ModelRun {
    pub layers: Vec<LayerReport>,
    pub replaced: HashMap<String, Matrix>,
    pub totals: ModelTotals,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelTotals {
    pub layers: usize,
    pub calibration_windows: usize,
    pub seqlen: usize,
    /// Linear parameters of the layers before, and how many are zero or removed after.
    pub parameters: usize,
    pub parameters_pruned: usize,
    /// Device time per stage summed over every layer (the layer reports' stages).
    pub stages: Vec<StageTime>,
    /// Wall-clock time of the layer forwards (capture and propagation), of pruning, and of
    /// the whole loop.
    pub forward_seconds: f64,
    pub prune_seconds: f64,
    pub wall_seconds: f64,
    /// Structured pruning: the model's new sizes, one for every layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured_sizes: Option<StructuredSizes>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StructuredSizes {
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
}

/// One layer's captured group inputs as a calibration source, a window a sample.
struct CapturedCalibration {
    batches: Vec<Captured>,
    per_batch: usize,
    seq: usize,
    samples: usize,
    describe: String,
}

impl CalibrationSource for CapturedCalibration {
    fn samples(&self) -> usize {
        self.samples
    }

    fn tokens(&self) -> usize {
        self.seq
    }

    fn input(&self, group: InputGroup, sample: usize) -> prunebench_models::Result<Matrix> {
        let m = self.batches[sample / self.per_batch].get(group);
        let start = (sample % self.per_batch) * self.seq;
        Ok(Matrix {
            rows: self.seq,
            cols: m.cols,
            data: m.data[start * m.cols..(start + self.seq) * m.cols].to_vec(),
        })
    }

    fn output_grad(
        &self,
        linear: &LinearSpec,
        _sample: usize,
    ) -> prunebench_models::Result<Matrix> {
        Err(prunebench_models::ModelError::Calibration(format!(
            "a whole-model run has no output gradients for {} (give --gradients)",
            linear.name
        )))
    }

    fn has_output_grads(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// Host bytes the loop holds besides one layer's weights: the hidden states and one layer's
/// captured group inputs, f32.
pub fn host_bytes(cfg: &LlamaConfig, windows: usize, seq: usize) -> u64 {
    let m = &cfg.model;
    // Saturating: the user's counts reach here, and a wrapped product would pass the check.
    let tokens = (windows as u64).saturating_mul(seq as u64);
    let attn = (m.num_heads * m.head_dim) as u64;
    let per_token = 4 * (2 * m.hidden as u64 + attn + m.hidden as u64 + m.intermediate as u64);
    tokens.saturating_mul(per_token)
}

/// Refuses, before any work, what the loop cannot do with one LlamaConfig for the result;
/// `gives`: what the gradients will hold (a file's, or those computed first).
pub fn check_config(cfg: &PruneConfig, gives: Gives) -> Result<()> {
    (crate::methods::spec(cfg.method).check_config)(cfg)?;
    let needs = cfg.needs();
    if needs.gblm_statistic() && !gives.statistic {
        return Err(HarnessError::Config(
            "gblm needs the dense model's gradients: give --gradients FILE (from \
             `prunebench gradients` or baselines/compute_gradients.py)"
                .into(),
        ));
    }
    if needs.taylor_sums() && !gives.taylor_sums {
        return Err(HarnessError::Config(
            "the Taylor saliencies need the mean gradient and the Fisher of every linear, \
             which a gradients file does not hold: leave out --gradients, and prune-model \
             computes them first from the dense model"
                .into(),
        ));
    }
    if cfg.method == Method::Structured
        && !matches!(cfg.structured.budget, crate::Budget::PerKind { .. })
    {
        return Err(HarnessError::Config(
            "a whole model is pruned structurally by uniform fractions, so that one config.json \
             describes every layer: give --structure ffn=P,attn=Q"
                .into(),
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn prune_model<B: Backend>(
    b: &B,
    ckpt: &Checkpoint,
    cfg: &LlamaConfig,
    calibration: &[Vec<u32>],
    pcfg: &PruneConfig,
    gradients: Option<&dyn ModelGradients>,
    opts: &ForwardOptions,
    progress: &dyn Fn(Progress<'_>),
) -> Result<ModelRun> {
    check_config(pcfg, gradients.map(|g| g.gives()).unwrap_or_default())?;
    let t0 = Instant::now();
    let seq = window_len(calibration)?;
    let layers = cfg.model.num_layers;
    let mut replaced: HashMap<String, Matrix> = HashMap::new();
    let rope = Rope::new(b, cfg, seq)?;
    let mut batches = {
        let w = Weights {
            ckpt,
            replaced: &replaced,
        };
        embed(b, &w, calibration, seq, opts)?
    };
    let per_batch = opts.windows_per_batch(seq);
    let linears = cfg.model.linears();
    let mut reports = Vec::new();
    let (mut forward_s, mut prune_s) = (0.0, 0.0);
    let mut sizes: Option<StructuredSizes> = None;
    let total = 3 * layers as u64;
    for layer in 0..layers {
        let tick = |stage: &str, k: u64| {
            let what = format!("layer {}/{layers}: {stage}", layer + 1);
            progress(Progress {
                what: &what,
                done: 3 * layer as u64 + k,
                total,
            })
        };
        tick("calibrating", 0);
        let tf = Instant::now();
        let captured = {
            let w = Weights {
                ckpt,
                replaced: &replaced,
            };
            let dense = LayerOnDevice::load(b, &w, cfg, layer)?;
            layer_pass(b, &dense, &mut batches, &rope, cfg.rms_norm_eps, true)?
        };
        forward_s += tf.elapsed().as_secs_f64();
        tick("pruning", 1);
        let tp = Instant::now();
        let weights = ckpt.read_layer(layer, &linears)?;
        let source = CapturedCalibration {
            batches: captured,
            per_batch,
            seq,
            samples: calibration.len(),
            describe: format!(
                "{} windows of {seq} tokens through the pruned layers before",
                calibration.len()
            ),
        };
        let ready = gradients.map(|g| g.layer_stats(layer));
        let calib = Calibration {
            source: &source,
            ready: ready.as_deref(),
        };
        let run = prune_layer(b, &weights, &calib, pcfg, true, &|_| {})?;
        drop(source);
        prune_s += tp.elapsed().as_secs_f64();
        // A run that compacts writes the compacted linears; its masked-dense ones in `pruned`
        // are for verification.
        let out = if run.compacted.is_empty() {
            &run.pruned
        } else {
            &run.compacted
        };
        for (l, m) in out {
            let name = l.hf_tensor_name(layer);
            replaced.insert(name.clone(), rounded(ckpt, &name, m.clone())?);
        }
        for n in &run.norms {
            let name = NormWeight::hf_tensor_name(n.group, layer).expect("normed group");
            let m = Matrix {
                rows: 1,
                cols: n.data.len(),
                data: n.data.clone(),
            };
            replaced.insert(name.clone(), rounded(ckpt, &name, m)?);
        }
        if let Some(s) = &run.report.structured {
            let now = StructuredSizes {
                intermediate_size: s.config.intermediate_size,
                num_attention_heads: s.config.num_attention_heads,
                num_key_value_heads: s.config.num_key_value_heads,
            };
            if sizes.is_some_and(|before| before != now) {
                return Err(HarnessError::Config(format!(
                    "layer {layer} was pruned to {now:?}, an earlier layer to {sizes:?}: one \
                     config.json cannot describe the model"
                )));
            }
            sizes = Some(now);
        }
        reports.push(run.report);
        tick("propagating", 2);
        let tf = Instant::now();
        {
            let w = Weights {
                ckpt,
                replaced: &replaced,
            };
            let pruned = LayerOnDevice::load(b, &w, cfg, layer)?;
            layer_pass(b, &pruned, &mut batches, &rope, cfg.rms_norm_eps, false)?;
        }
        forward_s += tf.elapsed().as_secs_f64();
    }
    progress(Progress {
        what: "done",
        done: total,
        total,
    });
    let totals = totals(&reports, &linears, layers, calibration.len(), seq, sizes);
    Ok(ModelRun {
        layers: reports,
        replaced,
        totals: ModelTotals {
            forward_seconds: forward_s,
            prune_seconds: prune_s,
            wall_seconds: t0.elapsed().as_secs_f64(),
            ..totals
        },
    })
}

/// A replaced tensor in the dtype it will be written in, so that the next layer sees what the
/// pruned checkpoint computes.
fn rounded(ckpt: &Checkpoint, name: &str, mut m: Matrix) -> Result<Matrix> {
    let (dtype, _) = ckpt.tensor_info(name)?;
    dtype.round_trip(&mut m.data);
    Ok(m)
}

fn totals(
    reports: &[LayerReport],
    linears: &[LinearSpec],
    layers: usize,
    windows: usize,
    seq: usize,
    sizes: Option<StructuredSizes>,
) -> ModelTotals {
    let mut stages: Vec<StageTime> = Vec::new();
    let all = reports.iter().flat_map(|r| {
        r.groups
            .iter()
            .flat_map(|g| g.stages.iter())
            .chain(r.linears.iter().flat_map(|l| l.stages.iter()))
    });
    for s in all {
        match stages
            .iter_mut()
            .find(|t| t.stage == s.stage && t.purpose == s.purpose)
        {
            Some(t) => {
                t.seconds += s.seconds;
                t.calls += s.calls;
            }
            None => stages.push(s.clone()),
        }
    }
    let per_layer: usize = linears.iter().map(|l| l.rows * l.cols).sum();
    let pruned: usize = reports
        .iter()
        .map(|r| match &r.structured {
            Some(s) => s.parameters_removed,
            None => r.linears.iter().map(|l| l.pruned).sum(),
        })
        .sum();
    ModelTotals {
        layers,
        calibration_windows: windows,
        seqlen: seq,
        parameters: per_layer * layers,
        parameters_pruned: pruned,
        stages,
        forward_seconds: 0.0,
        prune_seconds: 0.0,
        wall_seconds: 0.0,
        structured_sizes: sizes,
    }
}
