//! The op cases: which op, on what shape, its canonical name and its work model.

use serde::{Deserialize, Serialize};

use super::families::forward::ForwardDims;
use super::families::{by_family, Family};

pub use super::families::obs::ObsKind;
pub use super::families::sparse::{CaseFormat, MaskSource};
use crate::formats::WeightFormat;
use crate::ops::{GradNorm, LoraForm, MaskPattern, ScoreKind, SegmentAxis, TaylorKind, OBS_BLOCK};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    ActStat,
    Hessian,
    GradAccumulate(GradNorm),
    GradFused(GradNorm),
    Score(ScoreKind),
    Mask(MaskPattern),
    ApplyMask,
    /// Score, select and apply in one call (`Backend::prune_scored`).
    Prune(ScoreKind, MaskPattern),
    HinvFactor,
    Obs(ObsKind),
    ReconError,
    /// §13: compress a pruned f32 weight under its mask (the case also checks decompression).
    Compress(WeightFormat, MaskSource),
    /// §13: Y = X·Wᵀ for `n` tokens from a compressed weight.
    Matmul {
        format: CaseFormat,
        mask: MaskSource,
        n: usize,
    },
    /// §12: Δ and Δ·H of a pruned linear.
    RefitBase,
    /// §12: one LoRA gradient at this rank.
    LoraGrad(LoraForm, usize),
    /// §12: one AdamW step over a rows x cols parameter.
    AdamW,
    /// §12: the merge at this rank, with the mask epilogue.
    LoraMerge(LoraForm, usize),
    /// §12: the closed-form row scales.
    RowScale,
    /// §12: the norm system over two linears sharing the input (as gate and up).
    NormSystem,
    /// §12: the damped solve of a cols x cols system.
    SpdSolve,
    /// §11: A ← A + dYᵀX for one sample of `tokens` (the plain sum whose mean is Ḡ).
    GradSum,
    /// §11: Hinv = (H + λI)⁻¹ written out, from a Hessian with a dead column.
    HinvExplicit,
    /// §11 `obs`: the saliency of every group of `width` consumer columns.
    ObsSaliency {
        width: usize,
    },
    /// §11: one matrix's Taylor saliency, segments of `width` rows or columns.
    TaylorSaliency {
        kind: TaylorKind,
        axis: SegmentAxis,
        width: usize,
    },
    /// §11 compensation: `removed` groups of `width` columns at once, a seeded choice of
    /// groups that are not neighbours (so the removed set is not one contiguous run).
    StructuredUpdate {
        width: usize,
        removed: usize,
    },
    /// §11 compaction: this many rows and columns kept (all when `None`), a seeded choice of
    /// whole runs of `width` (as heads are kept whole).
    Compact {
        rows: Option<usize>,
        cols: Option<usize>,
        width: usize,
    },
    /// §14 linear: Y = X·Wᵀ for X [`tokens`, cols] and W [rows, cols].
    Linear,
    /// §14 RMSNorm of `tokens` rows of `cols`, at [`RMS_NORM_CASE_EPS`].
    RmsNorm,
    /// §14 RoPE in place on `tokens` rows of `heads` heads of `head_dim` (`cols` = heads·e),
    /// windows of `seq` positions, the tables built in f64 from `theta`.
    Rope {
        heads: usize,
        head_dim: usize,
        seq: usize,
        theta: f64,
    },
    /// §14 causal GQA attention: `heads` query heads over `kv_heads` KV heads of `head_dim`,
    /// `tokens` rows in windows of `seq`.
    Attention {
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        seq: usize,
    },
    /// §14 silu(gate) ⊙ up on `tokens` rows of `cols`.
    SiluMul,
    /// §14 x ← x + y on `tokens` rows of `cols`.
    ResidualAdd,
    /// §14 `tokens` rows gathered from a table of rows x cols = vocab x d.
    Embed,
    /// §14 the LM-head loss of `tokens` rows of h against W of rows x cols = vocab x d, every
    /// chunk of `chunk` vocabulary rows in turn (the last one short where it does not divide).
    LmHead {
        chunk: usize,
    },
    /// §15: dX and dW of the linear Y = X·Wᵀ for X [`tokens`, cols] and W [rows, cols].
    LinearBackward,
    /// §15: RMSNorm's dx and dγ for `tokens` rows of `cols`, at [`RMS_NORM_CASE_EPS`].
    RmsNormBackward,
    /// §15: RoPE's transposed rotation, as [`Op::Rope`].
    RopeBackward {
        heads: usize,
        head_dim: usize,
        seq: usize,
        theta: f64,
    },
    /// §15: the SiLU-gate product's dg and du.
    SiluMulBackward,
    /// §15: the embedding's gradient, a `rows`-row table from `tokens` rows of dh.
    EmbedBackward,
    /// §15: causal GQA attention's dQ, dK and dV (FlashAttention-2's backward), as
    /// [`Op::Attention`].
    AttentionBackward {
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        seq: usize,
    },
    /// §15: the LM head's backward with the loss over a `rows`-entry vocabulary in chunks of
    /// `chunk` rows, from `tokens` rows of h of `cols`.
    LmHeadBackward {
        chunk: usize,
    },
}

/// One op on one shape. `rows x cols` is the weight (out x in); `tokens` is T per sample and
/// `batch` the samples per statistics update; `block` the OBS block size.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpCase {
    pub op: Op,
    pub rows: usize,
    pub cols: usize,
    pub tokens: usize,
    pub batch: usize,
    pub block: usize,
    pub seed: u64,
}

impl OpCase {
    /// 1/(T·rows), the mean-squared error's normalisation (§12).
    pub fn refit_norm(&self) -> f64 {
        1.0 / (self.tokens * self.rows) as f64
    }

    pub fn new(op: Op, rows: usize, cols: usize) -> Self {
        Self {
            op,
            rows,
            cols,
            tokens: 16,
            batch: 1,
            block: OBS_BLOCK,
            seed: 0x5EED,
        }
    }

    pub fn tokens(mut self, tokens: usize, batch: usize) -> Self {
        self.tokens = tokens;
        self.batch = batch;
        self
    }

    pub fn block(mut self, block: usize) -> Self {
        self.block = block;
        self
    }

    /// The op's name without shape, e.g. `PRUNE_WANDA`; what `--op` filters match first.
    pub fn op_name(&self) -> String {
        by_family!(self.op.family(), f => f::op_name(self.op))
    }

    /// The canonical string, e.g. `PRUNE_WANDA(pattern=row0.5,rows=4096,cols=11008)`: the
    /// filter and the key of results.
    pub fn name(&self) -> String {
        let params = by_family!(self.op.family(), f => f::params(self));
        format!("{}({params})", self.op_name())
    }

    /// Bytes a device must move at the least (f32 tensors, 1-bit masks): each input read once,
    /// each output written once.
    pub fn bytes(&self) -> u64 {
        by_family!(self.op.family(), f => f::bytes(self))
    }

    /// Floating-point operations of the math as ALGORITHMS.md counts them.
    pub fn flops(&self) -> u64 {
        by_family!(self.op.family(), f => f::flops(self))
    }

    /// Whether the op's cost is dominated by arithmetic (scored against the FMA peak) rather
    /// than memory traffic (scored against bandwidth).
    pub fn compute_bound(&self) -> bool {
        by_family!(self.op.family(), f => f::compute_bound(self))
    }
}

/// Small odd shapes for correctness, every family's in the order of [`Family::ALL`]: a single
/// row, sizes that are not multiples of any workgroup size, blocks and windows that end early.
pub fn small_cases() -> Vec<OpCase> {
    Family::ALL
        .into_iter()
        .flat_map(Family::small_cases)
        .collect()
}

/// The sizes of one decoder layer that §11's groups are cut from: d = `hidden`, F =
/// `intermediate`, H = `heads`, G = `kv_heads`, e = `head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDims {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// What the cases at a model's sizes are cut from: one layer's distinct linear shapes (out x
/// in), its sizes, the forward pass's sizes, and the calibration tokens per sample.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelShapes {
    pub linears: Vec<(usize, usize)>,
    pub layer: LayerDims,
    pub forward: ForwardDims,
    pub tokens: usize,
}

impl ModelShapes {
    /// The distinct input widths of the linears (the columns the statistics are taken over).
    pub fn input_cols(&self) -> Vec<usize> {
        let mut cols: Vec<usize> = self.linears.iter().map(|s| s.1).collect();
        cols.sort_unstable();
        cols.dedup();
        cols
    }
}

/// Every family's cases at a model's sizes, in the order of [`Family::ALL`]: what `verify
/// --model`, the benches and `compile` run.
pub fn model_cases(m: &ModelShapes) -> Vec<OpCase> {
    Family::ALL
        .into_iter()
        .flat_map(|f| f.model_cases(m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_canonical() {
        let cases = small_cases();
        let mut names: Vec<String> = cases.iter().map(|c| c.name()).collect();
        assert!(names.contains(&"PRUNE_WANDA(pattern=row0.5,rows=13,cols=296)".to_string()));
        assert!(names.contains(&"OBS_NM(pattern=2:4,rows=13,cols=200,block=128)".to_string()));
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate case names");
    }

    #[test]
    fn work_model_counts_the_math() {
        let h = OpCase::new(Op::Hessian, 1, 4096).tokens(2048, 1);
        // The SYRK's one triangle, not the full product's 2·T·c².
        assert_eq!(h.flops(), 2048 * 4096 * 4097);
        let f = OpCase::new(Op::HinvFactor, 1, 4096);
        assert_eq!(f.flops(), 2 * 4096u64.pow(3) / 3);
        let s = OpCase::new(Op::Score(ScoreKind::Magnitude), 10, 20);
        assert_eq!(s.bytes(), 4 * 2 * 200);
    }
}
