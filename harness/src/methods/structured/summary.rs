//! What a structured run reports beside the per-linear records: the new sizes, the kept
//! indices, the parameters removed, the OBS loss and how close each cut came.

use crate::prune::records::structured::{AttnUnit, StructuredConfig};
use crate::prune::records::structured_report::{ConfigDelta, StructuredReport};

use super::geometry::{complement, Geometry, Kind};

/// What both blocks' rounds removed, for the report.
pub(super) struct Removals {
    pub attn: Vec<usize>,
    pub ffn: Vec<usize>,
    pub obs_loss: Option<f64>,
    pub rounds_run: Vec<(String, usize)>,
    pub margins: Vec<(String, f64)>,
}

pub(super) fn structured_report(
    geom: &Geometry,
    s: &StructuredConfig,
    layer: usize,
    r: Removals,
) -> StructuredReport {
    let Removals {
        attn: attn_removed,
        ffn: ffn_removed,
        obs_loss,
        rounds_run,
        margins,
    } = r;
    let (attn_removed, ffn_removed) = (&attn_removed[..], &ffn_removed[..]);
    let kept_ffn = complement(geom.intermediate, ffn_removed);
    let (kept_heads, kept_kv) = match geom.unit {
        AttnUnit::KvGroup => {
            let kv = complement(geom.kv_heads, attn_removed);
            let heads = kv
                .iter()
                .flat_map(|&g| g * geom.r()..(g + 1) * geom.r())
                .collect();
            (heads, kv)
        }
        AttnUnit::QueryHead => (
            complement(geom.heads, attn_removed),
            (0..geom.kv_heads).collect(),
        ),
    };
    let removed =
        attn_removed.len() * geom.params(Kind::Attn) + ffn_removed.len() * geom.params(Kind::Ffn);
    let total = geom.total_params();
    StructuredReport {
        saliency: s.saliency.name().to_string(),
        compensate: s.compensate,
        attn_unit: s.attn_unit,
        budget: s.budget,
        rounds: s.rounds,
        round_to: s.round_to,
        original_intermediate_size: geom.intermediate,
        original_num_attention_heads: geom.heads,
        original_num_key_value_heads: geom.kv_heads,
        config: ConfigDelta {
            layer,
            hidden_size: geom.hidden,
            head_dim: geom.head_dim,
            intermediate_size: kept_ffn.len(),
            num_attention_heads: kept_heads.len(),
            num_key_value_heads: kept_kv.len(),
            kept_ffn_channels: kept_ffn,
            kept_query_heads: kept_heads,
            kept_kv_heads: kept_kv,
        },
        parameters_total: total,
        parameters_removed: removed,
        fraction_removed: removed as f64 / total as f64,
        ffn_removed: ffn_removed.len(),
        attn_removed: attn_removed.len(),
        obs_loss,
        rounds_run,
        cut_margins: margins.into_iter().filter(|(_, m)| m.is_finite()).collect(),
    }
}
