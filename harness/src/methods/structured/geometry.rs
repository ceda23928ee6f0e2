//! The groups of one decoder layer (ALGORITHMS.md §11): which rows and columns of which
//! linears a group spans, what it costs in parameters, and the kept indices it leaves.

use prunebench_kernels::SegmentAxis;
use prunebench_models::config::ModelConfig;

use crate::prune::records::structured::AttnUnit;

/// The two kinds of group, each a block with one consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Attn,
    Ffn,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Attn => "attention",
            Kind::Ffn => "ffn",
        }
    }

    /// The producers, whose rows go, and the consumer, whose columns go.
    pub fn linears(&self) -> (&'static [&'static str], &'static str) {
        match self {
            Kind::Attn => (&["q_proj", "k_proj", "v_proj"], "o_proj"),
            Kind::Ffn => (&["gate_proj", "up_proj"], "down_proj"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub unit: AttnUnit,
}

impl Geometry {
    pub fn new(m: &ModelConfig, unit: AttnUnit) -> Self {
        Self {
            hidden: m.hidden,
            heads: m.num_heads,
            kv_heads: m.num_kv_heads,
            head_dim: m.head_dim,
            intermediate: m.intermediate,
            unit,
        }
    }

    /// Query heads per KV head.
    pub fn r(&self) -> usize {
        self.heads / self.kv_heads
    }

    pub fn groups(&self, kind: Kind) -> usize {
        match (kind, self.unit) {
            (Kind::Ffn, _) => self.intermediate,
            (Kind::Attn, AttnUnit::KvGroup) => self.kv_heads,
            (Kind::Attn, AttnUnit::QueryHead) => self.heads,
        }
    }

    /// Consumer columns per group: the `width` of its saliency and update.
    pub fn width(&self, kind: Kind) -> usize {
        match (kind, self.unit) {
            (Kind::Ffn, _) => 1,
            (Kind::Attn, AttnUnit::KvGroup) => self.r() * self.head_dim,
            (Kind::Attn, AttnUnit::QueryHead) => self.head_dim,
        }
    }

    /// Linear parameters one group takes with it.
    pub fn params(&self, kind: Kind) -> usize {
        let (d, e) = (self.hidden, self.head_dim);
        match (kind, self.unit) {
            (Kind::Ffn, _) => 3 * d,
            (Kind::Attn, AttnUnit::KvGroup) => (2 + 2 * self.r()) * e * d,
            (Kind::Attn, AttnUnit::QueryHead) => 2 * e * d,
        }
    }

    /// All linear parameters of the layer.
    pub fn total_params(&self) -> usize {
        let (d, e) = (self.hidden, self.head_dim);
        2 * self.heads * e * d + 2 * self.kv_heads * e * d + 3 * self.intermediate * d
    }

    /// Each matrix's share of a group for the Taylor sums: (linear, axis, width).
    pub fn taylor_parts(&self, kind: Kind) -> Vec<(&'static str, SegmentAxis, usize)> {
        use SegmentAxis::{Cols, Rows};
        let e = self.head_dim;
        match (kind, self.unit) {
            (Kind::Ffn, _) => vec![
                ("gate_proj", Rows, 1),
                ("up_proj", Rows, 1),
                ("down_proj", Cols, 1),
            ],
            (Kind::Attn, AttnUnit::KvGroup) => {
                let re = self.r() * e;
                vec![
                    ("q_proj", Rows, re),
                    ("k_proj", Rows, e),
                    ("v_proj", Rows, e),
                    ("o_proj", Cols, re),
                ]
            }
            (Kind::Attn, AttnUnit::QueryHead) => vec![("q_proj", Rows, e), ("o_proj", Cols, e)],
        }
    }

    /// The consumer columns of the removed groups, sorted.
    pub fn consumer_cols(&self, kind: Kind, removed: &[usize]) -> Vec<usize> {
        let w = self.width(kind);
        let mut cols: Vec<usize> = removed.iter().flat_map(|&g| g * w..(g + 1) * w).collect();
        cols.sort_unstable();
        cols
    }

    /// The rows of producer `name` that the removed groups take, sorted.
    pub fn producer_rows(&self, kind: Kind, name: &str, removed: &[usize]) -> Vec<usize> {
        let e = self.head_dim;
        let span = match (kind, self.unit, name) {
            (Kind::Ffn, _, _) => 1,
            (Kind::Attn, AttnUnit::KvGroup, "q_proj") => self.r() * e,
            (Kind::Attn, AttnUnit::KvGroup, _) => e,
            (Kind::Attn, AttnUnit::QueryHead, "q_proj") => e,
            // k and v keep every KV head when single query heads go.
            (Kind::Attn, AttnUnit::QueryHead, _) => return Vec::new(),
        };
        let mut rows: Vec<usize> = removed
            .iter()
            .flat_map(|&g| g * span..(g + 1) * span)
            .collect();
        rows.sort_unstable();
        rows
    }

    /// The KV group of group `g` (itself for whole KV groups).
    pub fn kv_group_of(&self, g: usize) -> usize {
        match self.unit {
            AttnUnit::KvGroup => g,
            AttnUnit::QueryHead => g / self.r(),
        }
    }
}

/// 0..n without the listed indices.
pub(crate) fn complement(n: usize, removed: &[usize]) -> Vec<usize> {
    let mut gone = vec![false; n];
    for &i in removed {
        gone[i] = true;
    }
    (0..n).filter(|&i| !gone[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prunebench_models::config::lookup;

    /// At the real GQA shapes: KV group g spans its e rows of k and v, the r·e rows of q of
    /// its r heads and the same o columns; a query head spans e rows of q and e columns of o
    /// and leaves k and v whole.
    #[test]
    fn gqa_groups_span_their_heads_at_llama3_8b_and_llama2_70b_shapes() {
        for name in ["llama3-8b", "llama2-70b"] {
            let m = lookup(name).unwrap();
            let (e, r) = (m.head_dim, m.num_heads / m.num_kv_heads);
            let g = Geometry::new(&m, AttnUnit::KvGroup);
            assert_eq!(g.groups(Kind::Attn), m.num_kv_heads);
            let kv = 3;
            assert_eq!(
                g.producer_rows(Kind::Attn, "k_proj", &[kv]),
                (kv * e..(kv + 1) * e).collect::<Vec<_>>()
            );
            let heads: Vec<usize> = (kv * r * e..(kv + 1) * r * e).collect();
            assert_eq!(g.producer_rows(Kind::Attn, "q_proj", &[kv]), heads);
            assert_eq!(g.consumer_cols(Kind::Attn, &[kv]), heads);
            assert_eq!(g.params(Kind::Attn), (2 + 2 * r) * e * m.hidden);
            let q = Geometry::new(&m, AttnUnit::QueryHead);
            let h = kv * r + 1;
            assert_eq!(q.kv_group_of(h), kv);
            assert!(q.producer_rows(Kind::Attn, "v_proj", &[h]).is_empty());
            assert_eq!(
                q.consumer_cols(Kind::Attn, &[h]),
                (h * e..(h + 1) * e).collect::<Vec<_>>()
            );
            let total: usize = m.linears().iter().map(|l| l.rows * l.cols).sum();
            assert_eq!(g.total_params(), total);
        }
    }
}
