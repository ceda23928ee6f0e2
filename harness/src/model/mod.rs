//! Whole LLaMA models (ALGORITHMS.md §14): the decoder forward composed from the op set, one
//! layer's weights on the device at a time; perplexity as the seeds' `eval_ppl`; and the seeds'
//! sequential pruning loop, where each layer is calibrated on what the already-pruned layers
//! before it compute.
//!
//! Hidden states stay on the host between layers and are streamed to the device a batch of
//! windows at a time: a layer's weights are then the only thing resident, whatever the
//! number of windows.

pub mod backward;
pub mod forward;
pub mod gradients;
pub mod perplexity;
pub mod preflight;
pub mod sequential;

pub use backward::model_backward;
pub use forward::{ForwardOptions, Weights};
pub use gradients::{
    gblm_gradients, model_gradients, Gives, GradientStats, GradientSummary, GradientsFor,
    ModelGradients,
};
pub use perplexity::{perplexity, Perplexity};
pub use preflight::check_tensors;
pub use sequential::{prune_model, ModelRun};

use prunebench_models::llama::LlamaConfig;
use prunebench_models::LayerWeights;

use crate::error::{HarnessError, Result};
use crate::prune::PruneConfig;

/// Device bytes at the peak of one layer: its weights and one batch's activations for the
/// forward (the largest ones live together: x, h, q, k, v, the attention output, h2, gate, up
/// and their product), the LM head's chunk of logits, or, when pruning, the layer method's
/// own working set, whichever is larger.
pub fn peak_device_bytes(
    cfg: &LlamaConfig,
    windows: usize,
    seq: usize,
    opts: &ForwardOptions,
    prune: Option<(&LayerWeights, &PruneConfig)>,
) -> u64 {
    let m = &cfg.model;
    let rows = (opts.windows_per_batch(seq).min(windows.max(1)) * seq) as u64;
    let (d, q, kv, i) = (
        m.hidden as u64,
        (m.num_heads * m.head_dim) as u64,
        (m.num_kv_heads * m.head_dim) as u64,
        m.intermediate as u64,
    );
    let acts = 4 * rows * (4 * d + 2 * q + 2 * kv + 3 * i);
    let head = 4 * (rows * opts.head_chunk as u64 + opts.head_chunk as u64 * d + 2 * rows * d);
    let forward = forward::layer_bytes(cfg) + acts.max(head);
    let pruning = prune.map_or(0, |(layer, pcfg)| {
        crate::methods::working_set_bytes(layer, pcfg, seq)
    });
    forward.max(pruning)
}

/// Refuses a run whose peak does not fit `budget` (device bytes), before any work.
pub fn check_memory(
    budget: Option<u64>,
    cfg: &LlamaConfig,
    windows: &[Vec<u32>],
    opts: &ForwardOptions,
    prune: Option<(&LayerWeights, &PruneConfig)>,
) -> Result<()> {
    let seq = windows.first().map_or(1, Vec::len);
    let Some(budget) = budget else {
        return Ok(());
    };
    let need = peak_device_bytes(cfg, windows.len(), seq, opts, prune);
    if need <= budget {
        return Ok(());
    }
    Err(HarnessError::Config(format!(
        "one layer of {} with windows of {seq} tokens needs {:.1} MiB of device memory, and \
         {:.1} MiB is available: use a smaller --seqlen or a device with more memory",
        cfg.model.name,
        need as f64 / (1u64 << 20) as f64,
        budget as f64 / (1u64 << 20) as f64
    )))
}
