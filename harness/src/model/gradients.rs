//! Gradients of the language-model loss computed by the suite (ALGORITHMS.md §15): one
//! backward per calibration window, each window's dW of the seven linears of every layer
//! folded into what the method reads.
//! - GBLM-Pruner's statistic, as its gradient_computation.py: A ← A + (c·dW)² (l2) or
//!   A + |c·dW| (l1), c = 100, no division by the window count, finally G = √A (l2) or A (l1).
//! - §11's Taylor inputs for structured pruning: Σ dW (its mean is Ḡ) and the l2 accumulator
//!   Σ (c·dW)² (its mean over c² is the Fisher F), both left unfinished.
//!
//! The accumulators stay on the host (a whole model's worth of them would not fit beside one
//! resident layer); each window's dW is folded in on the device and the sum comes back.

use std::time::Instant;

use prunebench_kernels::{Backend, GradNorm, Matrix};
use prunebench_models::gradients::GradientsFile;
use prunebench_models::llama::LlamaConfig;
use prunebench_models::{GradSums, InputGroup, LinearSpec, ReadyStats};
use serde::Serialize;

use super::backward::model_backward;
use super::forward::{ForwardOptions, Weights};
use super::perplexity::window_len;
use crate::error::{Context, Result};
use crate::prune::Progress;

/// What a gradient pass keeps of every linear's per-window dW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradientsFor {
    /// GBLM-Pruner's statistic G (§2), finished.
    Gblm(GradNorm),
    /// §11's Taylor inputs: Σ dW and Σ (c·dW)², unfinished.
    Taylor,
}

impl GradientsFor {
    /// Host bytes of the result: f32 copies of every linear of the model, one for GBLM's
    /// statistic, two for the Taylor sums.
    pub fn host_bytes(self, cfg: &LlamaConfig) -> u64 {
        let m = &cfg.model;
        let params: u64 = m.linears().iter().map(|l| (l.rows * l.cols) as u64).sum();
        let copies = match self {
            GradientsFor::Gblm(_) => 1,
            GradientsFor::Taylor => 2,
        };
        (m.num_layers as u64)
            .saturating_mul(params)
            .saturating_mul(4 * copies)
    }
}

/// What a gradient pass kept, under the weights' HF names, and what the run saw.
pub struct GradientStats {
    /// GBLM's statistic (empty for a Taylor pass).
    pub tensors: Vec<(String, Matrix)>,
    /// The Taylor sums (empty for a GBLM pass).
    pub sums: Vec<(String, GradSums)>,
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

/// One linear's host accumulators: GBLM's A, or Σ(c·dW)² and Σ dW.
struct Slot {
    acc: Matrix,
    sum: Option<Matrix>,
}

impl Slot {
    /// Folds one window's dW in on the device.
    fn fold<B: Backend>(
        &mut self,
        b: &B,
        dw: &B::Tensor,
        norm: GradNorm,
    ) -> prunebench_kernels::error::Result<()> {
        let mut a = b.upload(&self.acc)?;
        b.grad_accumulate(&mut a, dw, norm)?;
        self.acc = b.download(&a)?;
        if let Some(sum) = &mut self.sum {
            let mut s = b.upload(sum)?;
            b.residual_add(&mut s, dw)?;
            *sum = b.download(&s)?;
        }
        Ok(())
    }
}

/// GBLM-Pruner's statistic over `windows`, one backward pass each.
pub fn gblm_gradients<B: Backend>(
    b: &B,
    w: &Weights<'_>,
    cfg: &LlamaConfig,
    windows: &[Vec<u32>],
    norm: GradNorm,
    opts: &ForwardOptions,
    progress: &dyn Fn(Progress<'_>),
) -> Result<GradientStats> {
    model_gradients(b, w, cfg, windows, GradientsFor::Gblm(norm), opts, progress)
}

/// What `what` asks of every linear over `windows`, one backward pass each.
pub fn model_gradients<B: Backend>(
    b: &B,
    w: &Weights<'_>,
    cfg: &LlamaConfig,
    windows: &[Vec<u32>],
    what: GradientsFor,
    opts: &ForwardOptions,
    progress: &dyn Fn(Progress<'_>),
) -> Result<GradientStats> {
    let start = Instant::now();
    let seqlen = window_len(windows)?;
    let linears = cfg.model.linears();
    // Taylor's F is §2's l2 accumulator whatever --grad-norm says: it is a Fisher.
    let norm = match what {
        GradientsFor::Gblm(n) => n,
        GradientsFor::Taylor => GradNorm::L2,
    };
    let mut acc: Vec<Vec<Slot>> = (0..cfg.model.num_layers)
        .map(|_| {
            linears
                .iter()
                .map(|l| Slot {
                    acc: Matrix::zeros(l.rows, l.cols),
                    sum: (what == GradientsFor::Taylor).then(|| Matrix::zeros(l.rows, l.cols)),
                })
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
            acc[layer][k]
                .fold(b, &dw, norm)
                .context(|| format!("layer {layer} {name}: gradient accumulation"))
        };
        loss_sum += model_backward(b, w, cfg, std::slice::from_ref(window), opts, &mut fold)?;
    }
    progress(Progress {
        what: "finishing",
        done: windows.len() as u64,
        total: windows.len() as u64,
    });
    let (mut tensors, mut sums) = (Vec::new(), Vec::new());
    for (layer, row) in acc.into_iter().enumerate() {
        for (l, slot) in linears.iter().zip(row) {
            let name = l.hf_tensor_name(layer);
            match slot.sum {
                Some(sum) => sums.push((name, GradSums { sum, sq: slot.acc })),
                None => {
                    let t = b.upload(&slot.acc).context(|| "accumulator".into())?;
                    let g = b
                        .grad_finalize(&t, norm)
                        .context(|| "finishing the statistic".into())?;
                    tensors.push((name, b.download(&g).context(|| "statistic".into())?));
                }
            }
        }
    }
    Ok(GradientStats {
        tensors,
        sums,
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
    /// What it holds for every linear.
    fn gives(&self) -> Gives;
}

/// What a whole-model run's gradients give every linear.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gives {
    /// GBLM's finished statistic G.
    pub statistic: bool,
    /// §11's Taylor sums.
    pub taylor_sums: bool,
}

impl ModelGradients for GradientsFile {
    fn layer_stats(&self, layer: usize) -> Box<dyn ReadyStats + '_> {
        Box::new(self.layer(layer))
    }

    fn gives(&self) -> Gives {
        Gives {
            statistic: true,
            taylor_sums: false,
        }
    }
}

impl ModelGradients for GradientStats {
    fn layer_stats(&self, layer: usize) -> Box<dyn ReadyStats + '_> {
        Box::new(LayerStats { stats: self, layer })
    }

    fn gives(&self) -> Gives {
        Gives {
            statistic: !self.tensors.is_empty(),
            taylor_sums: !self.sums.is_empty(),
        }
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

    fn ready_grad_sums(&self, linear: &LinearSpec) -> prunebench_models::Result<Option<GradSums>> {
        let name = linear.hf_tensor_name(self.layer);
        Ok(self
            .stats
            .sums
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.clone()))
    }

    fn has_grad_sums(&self) -> bool {
        !self.stats.sums.is_empty()
    }
}
