//! What a structured run reports beside the per-linear records (`prune --json`), and the
//! config delta written next to `--out`.

use serde::{Deserialize, Serialize};

use super::structured::{AttnUnit, Budget, Compensate};

/// The layer's sizes after pruning, in HF `config.json` names, and the kept indices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigDelta {
    pub layer: usize,
    pub hidden_size: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Kept FFN channels (rows of gate/up, columns of down), ascending.
    pub kept_ffn_channels: Vec<usize>,
    /// Kept query heads (of the original numbering), ascending.
    pub kept_query_heads: Vec<usize>,
    /// Kept KV heads, ascending.
    pub kept_kv_heads: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StructuredReport {
    pub saliency: String,
    pub compensate: Compensate,
    pub attn_unit: AttnUnit,
    pub budget: Budget,
    pub rounds: usize,
    pub round_to: usize,
    /// The sizes before.
    pub original_intermediate_size: usize,
    pub original_num_attention_heads: usize,
    pub original_num_key_value_heads: usize,
    /// The sizes after and the kept indices.
    pub config: ConfigDelta,
    pub parameters_total: usize,
    pub parameters_removed: usize,
    /// parameters_removed / parameters_total.
    pub fraction_removed: f64,
    /// FFN channels and attention groups removed.
    pub ffn_removed: usize,
    pub attn_removed: usize,
    /// Σ ε_S of the removals, on each consumer's damped H (with `--compensate obs`).
    pub obs_loss: Option<f64>,
    /// Rounds that removed something, per kind.
    pub rounds_run: Vec<(String, usize)>,
    /// Per kind that lost groups: the smallest relative gap, over its rounds, between the
    /// highest removed saliency and the lowest kept one (how close the cut came to a tie).
    pub cut_margins: Vec<(String, f64)>,
}
