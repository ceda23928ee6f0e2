//! The op families: every op belongs to one, and the conformance tests, `verify` and the
//! benches select ops by family, so an op added to the table is checked on every backend
//! without a list of names to extend.

use super::case::{ModelShapes, Op, OpCase};

pub(super) mod backward;
pub(super) mod forward;
pub(super) mod masks;
pub(super) mod obs;
pub(super) mod refit;
pub(super) mod sparse;
pub(super) mod stats;
pub(super) mod structured;

/// The one dispatch from a family to its module: `by_family!(family, f => f::bytes(case))`
/// evaluates the body with `f` naming the family's module, whose functions share their names
/// and signatures (`small_cases`, `model_cases`, `op_name`, `params`, `bytes`, `flops`, `compute_bound`,
/// `inputs`, `compare`).
macro_rules! by_family {
    ($family:expr, $f:ident => $body:expr) => {{
        use $crate::suite::families::Family;
        match $family {
            Family::Stats => {
                use $crate::suite::families::stats as $f;
                $body
            }
            Family::Masks => {
                use $crate::suite::families::masks as $f;
                $body
            }
            Family::Obs => {
                use $crate::suite::families::obs as $f;
                $body
            }
            Family::Sparse => {
                use $crate::suite::families::sparse as $f;
                $body
            }
            Family::Refit => {
                use $crate::suite::families::refit as $f;
                $body
            }
            Family::Structured => {
                use $crate::suite::families::structured as $f;
                $body
            }
            Family::Forward => {
                use $crate::suite::families::forward as $f;
                $body
            }
            Family::Backward => {
                use $crate::suite::families::backward as $f;
                $body
            }
        }
    }};
}
pub(super) use by_family;

/// A family of ops that share their inputs' kind and their place in the pruning pipeline
/// (ALGORITHMS.md's sections).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// §3-§5: the activation statistics, the Hessian and the gradient accumulators.
    Stats,
    /// §4-§5: scores, mask selection, applying a mask, and the fused prune.
    Masks,
    /// §6-§8: the inverse-Hessian factor, SparseGPT's OBS updates, the reconstruction error.
    Obs,
    /// §13: compressed weights and their products.
    Sparse,
    /// §12: the re-fit ops.
    Refit,
    /// §11: the structured-pruning ops.
    Structured,
    /// §14: the LLaMA forward ops.
    Forward,
    /// §15: the LLaMA backward ops.
    Backward,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::Stats,
        Family::Masks,
        Family::Obs,
        Family::Sparse,
        Family::Refit,
        Family::Structured,
        Family::Forward,
        Family::Backward,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Stats => "stats",
            Family::Masks => "masks",
            Family::Obs => "obs",
            Family::Sparse => "sparse",
            Family::Refit => "refit",
            Family::Structured => "structured",
            Family::Forward => "forward",
            Family::Backward => "backward",
        }
    }

    /// The family's small, odd-shaped correctness cases: its share of
    /// [`small_cases`](crate::suite::small_cases).
    pub fn small_cases(self) -> Vec<OpCase> {
        by_family!(self, f => f::small_cases())
    }

    /// The family's cases at a model's sizes: its share of
    /// [`model_cases`](crate::suite::model_cases).
    pub fn model_cases(self, m: &ModelShapes) -> Vec<OpCase> {
        by_family!(self, f => f::model_cases(m))
    }
}

impl Op {
    /// The family the op belongs to: the one place an op is assigned.
    pub fn family(&self) -> Family {
        match self {
            Op::ActStat | Op::Hessian | Op::GradAccumulate(_) | Op::GradFused(_) => Family::Stats,
            Op::Score(_) | Op::Mask(_) | Op::ApplyMask | Op::Prune(..) => Family::Masks,
            Op::HinvFactor | Op::Obs(_) | Op::ReconError => Family::Obs,
            Op::Compress(..) | Op::Matmul { .. } => Family::Sparse,
            Op::RefitBase
            | Op::LoraGrad(..)
            | Op::AdamW
            | Op::LoraMerge(..)
            | Op::RowScale
            | Op::NormSystem
            | Op::SpdSolve => Family::Refit,
            Op::GradSum
            | Op::HinvExplicit
            | Op::ObsSaliency { .. }
            | Op::TaylorSaliency { .. }
            | Op::StructuredUpdate { .. }
            | Op::Compact { .. } => Family::Structured,
            Op::Linear
            | Op::RmsNorm
            | Op::Rope { .. }
            | Op::Attention { .. }
            | Op::SiluMul
            | Op::ResidualAdd
            | Op::Embed
            | Op::LmHead { .. } => Family::Forward,
            Op::LinearBackward
            | Op::RmsNormBackward
            | Op::RopeBackward { .. }
            | Op::SiluMulBackward
            | Op::EmbedBackward
            | Op::AttentionBackward { .. }
            | Op::LmHeadBackward { .. } => Family::Backward,
        }
    }
}

/// For a family's matches over `Op`: the dispatch by [`Op::family`] sends a family its own
/// ops only, so another family's op there is a bug in that dispatch.
fn not_in_family(op: Op, family: Family) -> ! {
    unreachable!("{op:?} reached the {} family", family.name())
}

/// Real layer sizes for the families' case-list tests.
#[cfg(test)]
pub(super) mod llama {
    use crate::suite::LayerDims;

    pub const LLAMA_7B: LayerDims = LayerDims {
        hidden: 4096,
        intermediate: 11008,
        heads: 32,
        kv_heads: 32,
        head_dim: 128,
    };
    pub const LLAMA3_8B: LayerDims = LayerDims {
        hidden: 4096,
        intermediate: 14336,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
    };
    pub const LLAMA2_70B: LayerDims = LayerDims {
        hidden: 8192,
        intermediate: 28672,
        heads: 64,
        kv_heads: 8,
        head_dim: 128,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_small_cases() {
        for f in Family::ALL {
            let cases = f.small_cases();
            assert!(!cases.is_empty(), "{} has no small case", f.name());
            // A family lists its own ops only: the dispatch would send another's elsewhere.
            for c in cases {
                assert_eq!(c.op.family(), f, "{} listed by {}", c.name(), f.name());
            }
        }
    }
}
