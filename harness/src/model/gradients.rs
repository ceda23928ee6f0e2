//! GBLM-Pruner's gradient statistic computed by the suite (ALGORITHMS.md §15, as its
//! gradient_computation.py): one backward per calibration window, and for each of the seven
//! linears of every layer A ← A + (c·dW)² (l2) or A + |c·dW| (l1), c = 100, no division by the
//! window count, finally G = √A (l2) or A (l1).
//!
//! The accumulators stay on the host (a whole model's worth of them would not fit beside one
//! resident layer); each window's dW is folded in on the device and the sum comes back.

use std::time::Instant;

use prunebench_kernels::{Backend, GradNorm, Matrix};
use prunebench_models::gradients::GradientsFile;
use prunebench_models::llama::LlamaConfig;
use prunebench_models::{InputGroup, LinearSpec, ReadyStats};
use serde::Serialize;

use super::backward::model_backward;
use super::forward::{ForwardOptions, Weights};
use super::perplexity::window_len;
use crate::error::{Context, Result};
use crate::prune::Progress;

/// The statistic of every linear, under the weight's HF name, and what the run saw.
pub struct GradientStats {
    pub tensors: Vec<(String, Matrix)>,
    pub summary: GradientSummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct GradientSummary {
    pub windows: usize,
    pub seqlen: usize,
    /// The mean over windows of each window's causal-LM loss.
    pub mean_loss: f64,
    /// Wall-clock time of the whole run, transfers included.
    pub seconds: f64,
}

/// The statistic over `windows`, one backward pass each.
pub fn gblm_gradients<B: Backend>(
    b: &B,
    w: &Weights<'_>,
    cfg: &LlamaConfig,
    windows: &[Vec<u32>],
    norm: GradNorm,
    opts: &ForwardOptions,
    progress: &dyn Fn(Progress<'_>),
) -> Result<GradientStats> {
    let start = Instant::now();
    let seqlen = window_len(windows)?;
    let linears = cfg.model.linears();
    let mut acc: Vec<Vec<Matrix>> = (0..cfg.model.num_layers)
        .map(|_| {
            linears
                .iter()
                .map(|l| Matrix::zeros(l.rows, l.cols))
                .collect()
        })
        .collect();
    let mut loss_sum = 0.0;
    for (i, window) in windows.iter().enumerate() {
        progress(Progress {
            what: &format!("window {}/{}", i + 1, windows.len()),
            done: i as u64,
            total: windows.len() as u64,
        });
        let mut fold = |layer: usize, name: &'static str, dw: B::Tensor| -> Result<()> {
            let k = linears
                .iter()
                .position(|l| l.name == name)
                .expect("a linear of the layer");
            let slot = &mut acc[layer][k];
            let mut a = b
                .upload(slot)
                .context(|| format!("layer {layer} {name}: accumulator"))?;
            b.grad_accumulate(&mut a, &dw, norm)
                .context(|| format!("layer {layer} {name}: gradient accumulation"))?;
            *slot = b
                .download(&a)
                .context(|| format!("layer {layer} {name}: accumulator"))?;
            Ok(())
        };
        loss_sum += model_backward(b, w, cfg, std::slice::from_ref(window), opts, &mut fold)?;
    }
    progress(Progress {
        what: "finishing",
        done: windows.len() as u64,
        total: windows.len() as u64,
    });
    let mut tensors = Vec::with_capacity(acc.len() * linears.len());
    for (layer, row) in acc.into_iter().enumerate() {
        for (l, a) in linears.iter().zip(row) {
            let t = b.upload(&a).context(|| "accumulator".into())?;
            let g = b
                .grad_finalize(&t, norm)
                .context(|| "finishing the statistic".into())?;
            tensors.push((
                l.hf_tensor_name(layer),
                b.download(&g).context(|| "statistic".into())?,
            ));
        }
    }
    Ok(GradientStats {
        tensors,
        summary: GradientSummary {
            windows: windows.len(),
            seqlen,
            mean_loss: loss_sum / windows.len().max(1) as f64,
            seconds: start.elapsed().as_secs_f64(),
        },
    })
}

/// Where a whole-model run's GBLM statistic comes from: a gradients file, or the suite's own
/// backward pass run first.
pub trait ModelGradients {
    /// The statistic of one layer's linears, as the layer's pruning pass reads it.
    fn layer_stats(&self, layer: usize) -> Box<dyn ReadyStats + '_>;
}

impl ModelGradients for GradientsFile {
    fn layer_stats(&self, layer: usize) -> Box<dyn ReadyStats + '_> {
        Box::new(self.layer(layer))
    }
}

impl ModelGradients for GradientStats {
    fn layer_stats(&self, layer: usize) -> Box<dyn ReadyStats + '_> {
        Box::new(LayerStats { stats: self, layer })
    }
}

/// One layer's view of [`GradientStats`]: gradients ready, no activation statistics.
struct LayerStats<'a> {
    stats: &'a GradientStats,
    layer: usize,
}

impl ReadyStats for LayerStats<'_> {
    fn ready_act_stat(&self, _group: InputGroup) -> prunebench_models::Result<Option<Matrix>> {
        Ok(None)
    }

    fn ready_hessian(&self, _group: InputGroup) -> prunebench_models::Result<Option<Matrix>> {
        Ok(None)
    }

    fn ready_grad(&self, linear: &LinearSpec) -> prunebench_models::Result<Option<Matrix>> {
        let name = linear.hf_tensor_name(self.layer);
        Ok(self
            .stats
            .tensors
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| m.clone()))
    }
}
