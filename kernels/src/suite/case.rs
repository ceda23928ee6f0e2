//! The op cases: which op, on what shape, its canonical name and its work model.

use serde::{Deserialize, Serialize};

use super::families::{forward, refit, stats, structured, Family};

use crate::formats::{self, WeightFormat};
use crate::ops::{
    unstructured_k, GradNorm, LoraForm, MaskGroup, MaskPattern, ScoreKind, SegmentAxis, Sparsity,
    TaylorKind, OBS_BLOCK,
};

/// How an OBS case selects (ALGORITHMS.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObsKind {
    Unstructured(f64),
    NM {
        n: usize,
        m: usize,
    },
    /// A per-row magnitude mask at this sparsity is given; only the updates run.
    Given(f64),
}

/// Where a compressed-weight case's mask comes from (§13): the suite's own pruners, whose
/// masks differ in how evenly rows are pruned, which a bitmap kernel feels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskSource {
    /// Nothing pruned: the dense baseline, a fully dense bitmap.
    None,
    /// Wanda's score, per row (or N:M).
    Wanda(Sparsity),
    /// |W| over the whole matrix (or N:M), as the magnitude repositories prune.
    Magnitude(Sparsity),
    /// SparseGPT's adaptive per-block selection with its OBS updates (the weights it leaves).
    SparseGpt(Sparsity),
    /// Random at this fraction with the middle row pruned whole (a row with no kept entry):
    /// for the correctness cases.
    Holes(f64),
}

impl MaskSource {
    pub fn label(&self) -> String {
        match self {
            MaskSource::None => "none".into(),
            MaskSource::Wanda(s) => format!("wanda{s}"),
            MaskSource::Magnitude(s) => format!("magnitude{s}"),
            MaskSource::SparseGpt(s) => format!("sparsegpt{s}"),
            MaskSource::Holes(p) => format!("holes{p}"),
        }
    }

    /// Entries a mask of this source keeps in a rows x cols weight, from the pruners' own
    /// counting rules (`None` for the random one, whose count depends on its draws).
    pub fn kept(&self, rows: usize, cols: usize) -> Option<usize> {
        let all = rows * cols;
        let nm = |n: usize, m: usize| all - rows * (cols / m) * n;
        Some(match *self {
            MaskSource::None => all,
            MaskSource::Wanda(Sparsity::Unstructured(p)) => all - rows * unstructured_k(p, cols),
            MaskSource::Magnitude(Sparsity::Unstructured(p)) => all - unstructured_k(p, all),
            MaskSource::SparseGpt(Sparsity::Unstructured(p)) => {
                let blocks = (0..cols).step_by(OBS_BLOCK);
                all - blocks
                    .map(|i| unstructured_k(p, rows * OBS_BLOCK.min(cols - i)))
                    .sum::<usize>()
            }
            MaskSource::Wanda(Sparsity::NM { n, m })
            | MaskSource::Magnitude(Sparsity::NM { n, m })
            | MaskSource::SparseGpt(Sparsity::NM { n, m }) => nm(n, m),
            MaskSource::Holes(_) => return None,
        })
    }
}

/// The weight format a product case runs: a device format, or structured pruning's compacted
/// dense weight (the intermediate dimension kept at this fraction, dense f16).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseFormat {
    Dense,
    TwoFour,
    Bitmap,
    Structured(f64),
}

impl CaseFormat {
    /// The format the weight is stored in on the device.
    pub fn storage(&self) -> WeightFormat {
        match self {
            CaseFormat::Dense | CaseFormat::Structured(_) => WeightFormat::Dense,
            CaseFormat::TwoFour => WeightFormat::TwoFour,
            CaseFormat::Bitmap => WeightFormat::Bitmap,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            CaseFormat::Structured(_) => "structured",
            f => f.storage().name(),
        }
    }

    /// The stored weight's shape for a rows x cols linear: structured pruning removes FFN
    /// channels or heads, which shrinks the wider side (up/gate/q/k/v lose rows, down and o
    /// lose columns).
    pub fn stored_shape(&self, rows: usize, cols: usize) -> (usize, usize) {
        match *self {
            CaseFormat::Structured(keep) => {
                let shrink = |n: usize| ((keep * n as f64).round() as usize).clamp(1, n);
                if cols > rows {
                    (rows, shrink(cols))
                } else {
                    (shrink(rows), cols)
                }
            }
            _ => (rows, cols),
        }
    }
}

/// Bytes of a compressed weight in `format` with `kept` kept entries: every buffer of the
/// layout in `formats`.
pub fn packed_bytes(format: WeightFormat, rows: usize, cols: usize, kept: usize) -> u64 {
    4 * match format {
        WeightFormat::Dense => rows * formats::dense_words_per_row(cols),
        WeightFormat::TwoFour => {
            rows * (formats::two_four_value_words_per_row(cols)
                + formats::two_four_code_words_per_row(cols))
        }
        WeightFormat::Bitmap => {
            rows * formats::bitmap_words_per_row(cols)
                + rows
                + 1
                + formats::bitmap_value_words(kept)
        }
    } as u64
}

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
        match self.op.family() {
            Family::Stats => stats::op_name(self.op),
            Family::Refit => refit::op_name(self.op),
            Family::Structured => structured::op_name(self.op),
            Family::Forward => forward::op_name(self.op),
            _ => self.op_name_by_op(),
        }
    }

    /// The masks, obs and sparse families, not yet in modules of their own (`families/`): their
    /// names, parameters and work model stay in these `*_by_op` matches until they move.
    fn op_name_by_op(&self) -> String {
        match self.op {
            Op::Score(k) => format!("SCORE_{}", k.name().to_uppercase()),
            Op::Mask(_) => "MASK".into(),
            Op::ApplyMask => "APPLY_MASK".into(),
            Op::Prune(k, _) => format!("PRUNE_{}", k.name().to_uppercase()),
            Op::HinvFactor => "HINV_FACTOR".into(),
            Op::Obs(ObsKind::Unstructured(_)) => "OBS_UNSTRUCTURED".into(),
            Op::Obs(ObsKind::NM { .. }) => "OBS_NM".into(),
            Op::Obs(ObsKind::Given(_)) => "OBS_GIVEN".into(),
            Op::ReconError => "RECON_ERROR".into(),
            Op::Compress(..) => "COMPRESS".into(),
            Op::Matmul { .. } => "MATMUL".into(),
            op => unreachable!("{op:?} is named by its family"),
        }
    }

    /// The canonical string, e.g. `PRUNE_WANDA(pattern=2:4,rows=4096,cols=11008)`: the filter
    /// and the key of results.
    pub fn name(&self) -> String {
        let params = match self.op.family() {
            Family::Stats => stats::params(self),
            Family::Refit => refit::params(self),
            Family::Structured => structured::params(self),
            Family::Forward => forward::params(self),
            _ => self.params_by_op(),
        };
        format!("{}({params})", self.op_name())
    }

    fn params_by_op(&self) -> String {
        let (r, c) = (self.rows, self.cols);
        match self.op {
            Op::Mask(p) | Op::Prune(_, p) => format!("pattern={},rows={r},cols={c}", p.label()),
            Op::HinvFactor => format!("cols={c}"),
            Op::Obs(k) => {
                let sel = match k {
                    ObsKind::Unstructured(p) | ObsKind::Given(p) => format!("p={p}"),
                    ObsKind::NM { n, m } => format!("pattern={n}:{m}"),
                };
                format!("{sel},rows={r},cols={c},block={}", self.block)
            }
            Op::Compress(f, m) => {
                format!("format={},mask={},rows={r},cols={c}", f.name(), m.label())
            }
            Op::Matmul { format, mask, n } => {
                let how = match (format, mask) {
                    (CaseFormat::Structured(keep), _) => format!(",keep={keep}"),
                    (_, MaskSource::None) => String::new(),
                    (_, m) => format!(",mask={}", m.label()),
                };
                format!("format={}{how},n={n},rows={r},cols={c}", format.name())
            }
            _ => format!("rows={r},cols={c}"),
        }
    }

    /// Bytes a device must move at the least (f32 tensors, 1-bit masks): each input read once,
    /// each output written once.
    pub fn bytes(&self) -> u64 {
        match self.op.family() {
            Family::Stats => stats::bytes(self),
            Family::Refit => refit::bytes(self),
            Family::Structured => structured::bytes(self),
            Family::Forward => forward::bytes(self),
            _ => self.bytes_by_op(),
        }
    }

    fn bytes_by_op(&self) -> u64 {
        let (r, c) = (self.rows as u64, self.cols as u64);
        let mask = r * c.div_ceil(32) * 4;
        let f = 4u64;
        match self.op {
            Op::Score(ScoreKind::Magnitude) => f * 2 * r * c,
            Op::Score(ScoreKind::Wanda) => f * (2 * r * c + c),
            Op::Score(ScoreKind::Gblm) => f * (3 * r * c + c),
            Op::Mask(_) => f * r * c + mask,
            Op::ApplyMask => f * 2 * r * c + mask,
            Op::Prune(k, _) => {
                let stats = match k {
                    ScoreKind::Magnitude => 0,
                    ScoreKind::Wanda => c,
                    ScoreKind::Gblm => c + r * c,
                };
                f * (2 * r * c + stats) + mask
            }
            Op::HinvFactor => f * 2 * c * c,
            Op::Obs(_) => f * (2 * r * c + c * c) + mask,
            Op::ReconError => f * (2 * r * c + c * c),
            Op::Compress(format, _) => {
                let kept = self.kept().unwrap_or(self.rows * self.cols);
                f * r * c + mask + packed_bytes(format, self.rows, self.cols, kept)
            }
            Op::Matmul { format, n, .. } => {
                let (sr, sc) = format.stored_shape(self.rows, self.cols);
                let kept = self.kept().unwrap_or(sr * sc);
                packed_bytes(format.storage(), sr, sc, kept) + f * (n * (sr + sc)) as u64
            }
            op => unreachable!("{op:?} is modelled by its family"),
        }
    }

    /// Entries a compressed-weight case keeps (structured: every entry of the smaller
    /// weight); `None` for other ops and random masks.
    pub fn kept(&self) -> Option<usize> {
        match self.op {
            Op::Compress(_, m) => m.kept(self.rows, self.cols),
            Op::Matmul { format, mask, .. } => {
                let (sr, sc) = format.stored_shape(self.rows, self.cols);
                mask.kept(sr, sc)
            }
            _ => None,
        }
    }

    /// The stored weight's bytes of a product case.
    pub fn weight_bytes(&self) -> Option<u64> {
        match self.op {
            Op::Matmul { format, .. } => {
                let (sr, sc) = format.stored_shape(self.rows, self.cols);
                let kept = self.kept().unwrap_or(sr * sc);
                Some(packed_bytes(format.storage(), sr, sc, kept))
            }
            _ => None,
        }
    }

    /// The dense f16 product of the same linear and token count: the baseline of a product
    /// case's speedup, and its bytes the numerator of the bandwidth bound S_max (§13).
    pub fn dense_equivalent(&self) -> Option<OpCase> {
        match self.op {
            Op::Matmul { n, .. } => Some(OpCase {
                op: Op::Matmul {
                    format: CaseFormat::Dense,
                    mask: MaskSource::None,
                    n,
                },
                ..*self
            }),
            _ => None,
        }
    }

    /// Floating-point operations of the math as ALGORITHMS.md counts them.
    pub fn flops(&self) -> u64 {
        match self.op.family() {
            Family::Stats => stats::flops(self),
            Family::Refit => refit::flops(self),
            Family::Structured => structured::flops(self),
            Family::Forward => forward::flops(self),
            _ => self.flops_by_op(),
        }
    }

    fn flops_by_op(&self) -> u64 {
        let (r, c) = (self.rows as u64, self.cols as u64);
        match self.op {
            Op::Score(ScoreKind::Magnitude) | Op::Mask(_) | Op::ApplyMask => 0,
            Op::Score(ScoreKind::Wanda) | Op::Prune(ScoreKind::Wanda, _) => r * c,
            Op::Score(ScoreKind::Gblm) | Op::Prune(ScoreKind::Gblm, _) => 3 * r * c,
            Op::Prune(ScoreKind::Magnitude, _) => 0,
            // Cholesky c³/3, triangular inverse c³/3, L⁻ᵀL⁻¹ c³/3, second Cholesky c³/3.
            Op::HinvFactor => 4 * c * c * c / 3,
            // Lazy updates ~ r·c² in all, plus the in-block rank-1 updates r·B·c.
            Op::Obs(_) => r * c * c + r * self.block as u64 * c,
            Op::ReconError => 4 * r * c * c,
            Op::Compress(..) => 0,
            // Useful multiply-adds only: a sparse format skips the pruned entries.
            Op::Matmul { format, n, .. } => {
                let (sr, sc) = format.stored_shape(self.rows, self.cols);
                2 * n as u64 * self.kept().unwrap_or(sr * sc) as u64
            }
            op => unreachable!("{op:?} is modelled by its family"),
        }
    }

    /// Whether the op's cost is dominated by arithmetic (scored against the FMA peak) rather
    /// than memory traffic (scored against bandwidth).
    pub fn compute_bound(&self) -> bool {
        match self.op.family() {
            Family::Stats => stats::compute_bound(self),
            Family::Refit => refit::compute_bound(self),
            Family::Structured => structured::compute_bound(self),
            Family::Forward => forward::compute_bound(self),
            _ => self.compute_bound_by_op(),
        }
    }

    fn compute_bound_by_op(&self) -> bool {
        match self.op {
            // From 64 tokens a dense f16 product does 64 flops per weight byte: past the
            // balance point of current GPUs' f32 units.
            Op::Matmul { n, .. } => n >= 64,
            op => matches!(op, Op::HinvFactor | Op::Obs(_) | Op::ReconError),
        }
    }
}

const ROW: MaskGroup = MaskGroup::PerRow;

fn row(p: f64) -> MaskPattern {
    MaskPattern::Unstructured {
        sparsity: p,
        group: ROW,
    }
}

fn matrix(p: f64) -> MaskPattern {
    MaskPattern::Unstructured {
        sparsity: p,
        group: MaskGroup::Matrix,
    }
}

const NM24: MaskPattern = MaskPattern::NM { n: 2, m: 4 };
const S24: Sparsity = Sparsity::NM { n: 2, m: 4 };

fn matmul(format: CaseFormat, mask: MaskSource, n: usize, rows: usize, cols: usize) -> OpCase {
    OpCase::new(Op::Matmul { format, mask, n }, rows, cols)
}
const NM48: MaskPattern = MaskPattern::NM { n: 4, m: 8 };

/// Small odd shapes for correctness: a single row, sizes that are not multiples of any
/// workgroup size, an OBS block that ends early, N:M with m = 4 and 8.
pub fn small_cases() -> Vec<OpCase> {
    use ScoreKind::{Gblm, Magnitude, Wanda};
    let mut v = stats::small_stats_cases();
    v.extend([
        OpCase::new(Op::ApplyMask, 13, 300),
        OpCase::new(Op::HinvFactor, 1, 37).tokens(80, 1),
        OpCase::new(Op::HinvFactor, 1, 200).tokens(300, 1),
        // Past 256 columns: a GPU factor's second outer block.
        OpCase::new(Op::HinvFactor, 1, 300).tokens(400, 1),
        OpCase::new(Op::ReconError, 13, 200).tokens(300, 1),
    ]);
    for k in [Magnitude, Wanda, Gblm] {
        v.push(OpCase::new(Op::Score(k), 1, 37));
        v.push(OpCase::new(Op::Score(k), 13, 300));
    }
    for p in [row(0.5), row(0.7), matrix(0.3), NM24] {
        v.push(OpCase::new(Op::Mask(p), 13, 300));
    }
    v.push(OpCase::new(Op::Mask(row(0.5)), 1, 37));
    v.push(OpCase::new(Op::Mask(matrix(0.5)), 1, 37));
    v.push(OpCase::new(Op::Mask(NM48), 13, 296));
    v.push(OpCase::new(Op::Mask(MaskPattern::NM { n: 1, m: 4 }), 1, 40));
    for (k, p) in [
        (Wanda, row(0.5)),
        (Gblm, NM24),
        (Magnitude, matrix(0.5)),
        (Wanda, NM48),
    ] {
        v.push(OpCase::new(Op::Prune(k, p), 13, 296));
    }
    v.push(OpCase::new(Op::Prune(Wanda, row(0.5)), 1, 37));
    for kind in [
        ObsKind::Unstructured(0.5),
        ObsKind::NM { n: 2, m: 4 },
        ObsKind::NM { n: 4, m: 8 },
        ObsKind::Given(0.5),
    ] {
        v.push(OpCase::new(Op::Obs(kind), 13, 200).tokens(300, 1));
    }
    v.push(OpCase::new(Op::Obs(ObsKind::Unstructured(0.5)), 1, 200).tokens(300, 1));
    // Rows over several GPU workgroups with a block that is not a whole number of 32-column
    // mask words; a block wider than a GPU kernel's 128-column tile.
    v.push(
        OpCase::new(Op::Obs(ObsKind::Unstructured(0.5)), 37, 200)
            .tokens(300, 1)
            .block(48),
    );
    v.push(
        OpCase::new(Op::Obs(ObsKind::NM { n: 2, m: 4 }), 20, 300)
            .tokens(400, 1)
            .block(256),
    );
    v.extend(small_sparse_cases());
    v.extend(refit::small_refit_cases());
    v.extend(structured::small_structured_cases());
    v.extend(forward::small_forward_cases());
    v
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

/// The compressed formats on odd shapes: columns that are not a multiple of a kernel unit,
/// a single row, N = 3 and N past one token block, a row with no kept entry, a fully dense
/// bitmap, 2:4 groups that keep fewer than two (kept zeros), each pruner's mask.
pub fn small_sparse_cases() -> Vec<OpCase> {
    use CaseFormat::{Bitmap, Dense, Structured, TwoFour};
    use MaskSource::{Holes, Magnitude, None, SparseGpt, Wanda};
    let half = Sparsity::Unstructured(0.5);
    let s34 = Sparsity::NM { n: 3, m: 4 };
    let mut v = vec![
        OpCase::new(Op::Compress(WeightFormat::Dense, Wanda(half)), 13, 37),
        OpCase::new(Op::Compress(WeightFormat::Dense, None), 1, 300),
        OpCase::new(Op::Compress(WeightFormat::TwoFour, Wanda(S24)), 13, 36),
        OpCase::new(Op::Compress(WeightFormat::TwoFour, Wanda(s34)), 13, 300),
        OpCase::new(Op::Compress(WeightFormat::TwoFour, Magnitude(S24)), 1, 40),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, Wanda(half)), 13, 300),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, Holes(0.6)), 13, 37),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, None), 13, 300),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, Magnitude(half)), 1, 37),
        OpCase::new(Op::Compress(WeightFormat::Bitmap, SparseGpt(half)), 13, 200),
    ];
    v.extend([
        matmul(Dense, None, 1, 13, 37),
        matmul(Dense, None, 3, 13, 300),
        matmul(Dense, None, 17, 1, 300),
        matmul(TwoFour, Wanda(S24), 3, 13, 300),
        matmul(TwoFour, Wanda(s34), 1, 1, 36),
        matmul(TwoFour, Magnitude(S24), 17, 13, 40),
        matmul(Bitmap, Holes(0.6), 3, 13, 300),
        matmul(Bitmap, None, 1, 13, 37),
        matmul(Bitmap, Magnitude(half), 17, 1, 300),
        matmul(Bitmap, SparseGpt(half), 3, 13, 200),
        matmul(Structured(0.5), None, 3, 13, 300),
    ]);
    v
}

/// Token counts of the product cases: decode (1-16) and small batches (§13).
pub const MATMUL_TOKENS: [usize; 7] = [1, 2, 4, 8, 16, 64, 256];

/// Every format on each weight shape at every token count: the dense baseline, 2:4 from Wanda,
/// bitmaps from Wanda and magnitude at 50/60/70% and from SparseGPT at 50% (its mask costs an
/// OBS run on the reference per input set), structured at half the intermediate dimension.
pub fn matmul_cases(shapes: &[(usize, usize)]) -> Vec<OpCase> {
    use CaseFormat::{Bitmap, Dense, Structured, TwoFour};
    use MaskSource::{Magnitude, None, SparseGpt, Wanda};
    let mut v = Vec::new();
    for &(r, c) in shapes {
        for n in MATMUL_TOKENS {
            v.push(matmul(Dense, None, n, r, c));
            if c % 4 == 0 {
                v.push(matmul(TwoFour, Wanda(S24), n, r, c));
            }
            for p in [0.5, 0.6, 0.7] {
                v.push(matmul(Bitmap, Wanda(Sparsity::Unstructured(p)), n, r, c));
                v.push(matmul(
                    Bitmap,
                    Magnitude(Sparsity::Unstructured(p)),
                    n,
                    r,
                    c,
                ));
            }
            v.push(matmul(
                Bitmap,
                SparseGpt(Sparsity::Unstructured(0.5)),
                n,
                r,
                c,
            ));
            v.push(matmul(Structured(0.5), None, n, r, c));
        }
    }
    v
}

/// Every op on the given weight shapes (a model's distinct linear shapes), with `tokens`
/// calibration tokens per sample: what `verify --model` and the benches run.
pub fn model_cases(shapes: &[(usize, usize)], tokens: usize) -> Vec<OpCase> {
    use GradNorm::L2;
    use ScoreKind::{Gblm, Magnitude, Wanda};
    let mut v = Vec::new();
    let mut input_cols: Vec<usize> = shapes.iter().map(|s| s.1).collect();
    input_cols.sort_unstable();
    input_cols.dedup();
    for &c in &input_cols {
        v.push(OpCase::new(Op::ActStat, 1, c).tokens(tokens, 1));
        v.push(OpCase::new(Op::Hessian, 1, c).tokens(tokens, 1));
        v.push(OpCase::new(Op::HinvFactor, 1, c).tokens(tokens, 1));
    }
    for &(r, c) in shapes {
        v.push(OpCase::new(Op::GradAccumulate(L2), r, c));
        v.push(OpCase::new(Op::GradFused(L2), r, c).tokens(tokens, 1));
        for k in [Magnitude, Wanda, Gblm] {
            v.push(OpCase::new(Op::Score(k), r, c));
        }
        v.push(OpCase::new(Op::Mask(row(0.5)), r, c));
        v.push(OpCase::new(Op::Mask(matrix(0.5)), r, c));
        v.push(OpCase::new(Op::Mask(NM24), r, c));
        v.push(OpCase::new(Op::ApplyMask, r, c));
        v.push(OpCase::new(Op::Prune(Magnitude, matrix(0.5)), r, c));
        for k in [Wanda, Gblm] {
            v.push(OpCase::new(Op::Prune(k, row(0.5)), r, c));
            v.push(OpCase::new(Op::Prune(k, NM24), r, c));
        }
        for kind in [ObsKind::Unstructured(0.5), ObsKind::NM { n: 2, m: 4 }] {
            v.push(OpCase::new(Op::Obs(kind), r, c).tokens(tokens, 1));
        }
        v.push(OpCase::new(Op::ReconError, r, c).tokens(tokens, 1));
        let half = Sparsity::Unstructured(0.5);
        v.push(OpCase::new(
            Op::Compress(WeightFormat::Dense, MaskSource::None),
            r,
            c,
        ));
        if c % 4 == 0 {
            let two_four = MaskSource::Wanda(S24);
            v.push(OpCase::new(
                Op::Compress(WeightFormat::TwoFour, two_four),
                r,
                c,
            ));
        }
        let bitmap = MaskSource::Wanda(half);
        v.push(OpCase::new(
            Op::Compress(WeightFormat::Bitmap, bitmap),
            r,
            c,
        ));
    }
    v.extend(matmul_cases(shapes));
    v.extend(refit::refit_cases(shapes, tokens));
    v
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
        assert_eq!(h.flops(), 2 * 2048 * 4096 * 4096);
        let s = OpCase::new(Op::Score(ScoreKind::Magnitude), 10, 20);
        assert_eq!(s.bytes(), 4 * 2 * 200);
    }
}
