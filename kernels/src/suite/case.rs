//! The op cases: which op, on what shape, its canonical name and its work model.

use serde::{Deserialize, Serialize};

use crate::ops::{GradNorm, MaskGroup, MaskPattern, ScoreKind, OBS_BLOCK};

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

fn norm_name(n: GradNorm) -> &'static str {
    match n {
        GradNorm::L2 => "L2",
        GradNorm::L1 => "L1",
    }
}

impl OpCase {
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
        match self.op {
            Op::ActStat => "ACT_STAT".into(),
            Op::Hessian => "HESSIAN".into(),
            Op::GradAccumulate(n) => format!("GRAD_ACC_{}", norm_name(n)),
            Op::GradFused(n) => format!("GRAD_FUSED_{}", norm_name(n)),
            Op::Score(k) => format!("SCORE_{}", k.name().to_uppercase()),
            Op::Mask(_) => "MASK".into(),
            Op::ApplyMask => "APPLY_MASK".into(),
            Op::Prune(k, _) => format!("PRUNE_{}", k.name().to_uppercase()),
            Op::HinvFactor => "HINV_FACTOR".into(),
            Op::Obs(ObsKind::Unstructured(_)) => "OBS_UNSTRUCTURED".into(),
            Op::Obs(ObsKind::NM { .. }) => "OBS_NM".into(),
            Op::Obs(ObsKind::Given(_)) => "OBS_GIVEN".into(),
            Op::ReconError => "RECON_ERROR".into(),
        }
    }

    /// The canonical string, e.g. `PRUNE_WANDA(pattern=2:4,rows=4096,cols=11008)`: the filter
    /// and the key of results.
    pub fn name(&self) -> String {
        let (r, c, t, b) = (self.rows, self.cols, self.tokens, self.batch);
        let params = match self.op {
            Op::ActStat | Op::Hessian => format!("cols={c},tokens={t},batch={b}"),
            Op::GradFused(_) => format!("rows={r},cols={c},tokens={t}"),
            Op::Mask(p) | Op::Prune(_, p) => format!("pattern={},rows={r},cols={c}", p.label()),
            Op::HinvFactor => format!("cols={c}"),
            Op::Obs(k) => {
                let sel = match k {
                    ObsKind::Unstructured(p) | ObsKind::Given(p) => format!("p={p}"),
                    ObsKind::NM { n, m } => format!("pattern={n}:{m}"),
                };
                format!("{sel},rows={r},cols={c},block={}", self.block)
            }
            _ => format!("rows={r},cols={c}"),
        };
        format!("{}({params})", self.op_name())
    }

    /// Bytes a device must move at the least (f32 tensors, 1-bit masks): each input read once,
    /// each output written once.
    pub fn bytes(&self) -> u64 {
        let (r, c) = (self.rows as u64, self.cols as u64);
        let x = (self.tokens * self.batch) as u64 * c;
        let mask = r * c.div_ceil(32) * 4;
        let f = 4u64;
        match self.op {
            Op::ActStat => f * (x + 2 * c),
            Op::Hessian => f * (x + 2 * c * c),
            Op::GradAccumulate(_) => f * 3 * r * c,
            Op::GradFused(_) => f * (self.tokens as u64 * (r + c) + 2 * r * c),
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
        }
    }

    /// Floating-point operations of the math as ALGORITHMS.md counts them.
    pub fn flops(&self) -> u64 {
        let (r, c) = (self.rows as u64, self.cols as u64);
        let tokens = (self.tokens * self.batch) as u64;
        match self.op {
            Op::ActStat => 2 * tokens * c,
            Op::Hessian => 2 * tokens * c * c,
            Op::GradAccumulate(_) => 3 * r * c,
            Op::GradFused(_) => 2 * r * c * self.tokens as u64 + 3 * r * c,
            Op::Score(ScoreKind::Magnitude) | Op::Mask(_) | Op::ApplyMask => 0,
            Op::Score(ScoreKind::Wanda) | Op::Prune(ScoreKind::Wanda, _) => r * c,
            Op::Score(ScoreKind::Gblm) | Op::Prune(ScoreKind::Gblm, _) => 3 * r * c,
            Op::Prune(ScoreKind::Magnitude, _) => 0,
            // Cholesky c³/3, triangular inverse c³/3, L⁻ᵀL⁻¹ c³/3, second Cholesky c³/3.
            Op::HinvFactor => 4 * c * c * c / 3,
            // Lazy updates ~ r·c² in all, plus the in-block rank-1 updates r·B·c.
            Op::Obs(_) => r * c * c + r * self.block as u64 * c,
            Op::ReconError => 4 * r * c * c,
        }
    }

    /// Whether the op's cost is dominated by arithmetic (scored against the FMA peak) rather
    /// than memory traffic (scored against bandwidth).
    pub fn compute_bound(&self) -> bool {
        matches!(
            self.op,
            Op::Hessian | Op::GradFused(_) | Op::HinvFactor | Op::Obs(_) | Op::ReconError
        )
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
const NM48: MaskPattern = MaskPattern::NM { n: 4, m: 8 };

/// Small odd shapes for correctness: a single row, sizes that are not multiples of any
/// workgroup size, an OBS block that ends early, N:M with m = 4 and 8.
pub fn small_cases() -> Vec<OpCase> {
    use GradNorm::{L1, L2};
    use ScoreKind::{Gblm, Magnitude, Wanda};
    let mut v = vec![
        OpCase::new(Op::ActStat, 1, 37).tokens(7, 3),
        OpCase::new(Op::ActStat, 1, 300).tokens(33, 2),
        OpCase::new(Op::Hessian, 1, 37).tokens(7, 3),
        OpCase::new(Op::Hessian, 1, 130).tokens(65, 1),
        OpCase::new(Op::GradAccumulate(L2), 1, 37),
        OpCase::new(Op::GradAccumulate(L1), 13, 300),
        OpCase::new(Op::GradFused(L2), 13, 37).tokens(7, 1),
        OpCase::new(Op::GradFused(L1), 1, 130).tokens(65, 1),
        OpCase::new(Op::GradFused(L2), 67, 129).tokens(33, 1),
        OpCase::new(Op::ApplyMask, 13, 300),
        OpCase::new(Op::HinvFactor, 1, 37).tokens(80, 1),
        OpCase::new(Op::HinvFactor, 1, 200).tokens(300, 1),
        // Past 256 columns: a GPU factor's second outer block.
        OpCase::new(Op::HinvFactor, 1, 300).tokens(400, 1),
        OpCase::new(Op::ReconError, 13, 200).tokens(300, 1),
    ];
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
    }
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
