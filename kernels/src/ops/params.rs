//! The parameters every backend shares: sparsity patterns, score and selection kinds, the
//! structured and re-fit inputs, and what a backend says about itself.

use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};

/// GBLM-Pruner's gradient scale `c` (§2): gradients are multiplied by 100 before squaring so
/// that f16 accumulation in the original code does not underflow; we keep it for equal scores.
pub const GBLM_GRAD_SCALE: f32 = 100.0;
/// SparseGPT's column block size B (§7).
pub const OBS_BLOCK: usize = 128;
/// SparseGPT's Hessian dampening as a fraction of the mean diagonal (§6).
pub const PERCDAMP: f64 = 0.01;

/// How the gradient accumulator combines samples (§2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradNorm {
    /// A += (c·g)², G = sqrt(A) (GBLM-Pruner's default).
    L2,
    /// A += |c·g|, G = A.
    L1,
}

impl GradNorm {
    /// The name the command line and the gradients file use: `l2` or `l1`.
    pub fn name(&self) -> &'static str {
        match self {
            GradNorm::L2 => "l2",
            GradNorm::L1 => "l1",
        }
    }
}

/// Which entries compete for the pruned slots in unstructured masks (§5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskGroup {
    /// Each output row prunes floor(p·cols) of its entries (Wanda, GBLM).
    PerRow,
    /// The whole matrix prunes floor(p·rows·cols) entries (magnitude, as its repositories do).
    Matrix,
}

/// A validated sparsity target: `0.5` or `2:4` style.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sparsity {
    Unstructured(f64),
    NM { n: usize, m: usize },
}

impl Sparsity {
    /// Parses `0.5` (unstructured, p in [0,1)) or `2:4` (N:M with 1 <= n < m).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| KernelError::InvalidArgument(format!("sparsity '{s}': {why}"));
        let sp = if let Some((n, m)) = s.split_once(':') {
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| bad("N in N:M is not a whole number"))?;
            let m: usize = m
                .trim()
                .parse()
                .map_err(|_| bad("M in N:M is not a whole number"))?;
            Sparsity::NM { n, m }
        } else {
            let p: f64 = s
                .trim()
                .parse()
                .map_err(|_| bad("expected a fraction like 0.5 or a pattern like 2:4"))?;
            Sparsity::Unstructured(p)
        };
        match sp.problem() {
            Some(why) => Err(bad(&why)),
            None => Ok(sp),
        }
    }

    /// Why this target is impossible, if it is.
    fn problem(&self) -> Option<String> {
        match *self {
            Sparsity::Unstructured(p) if !(0.0..1.0).contains(&p) => {
                Some(format!("fraction {p} is outside [0, 1)"))
            }
            Sparsity::NM { n, m } if n == 0 || n >= m => {
                Some(format!("N:M needs 1 <= N < M, got {n}:{m}"))
            }
            _ => None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self.problem() {
            Some(why) => Err(KernelError::InvalidArgument(why)),
            None => Ok(()),
        }
    }

    /// Checks that a `rows x cols` matrix can take this pattern (N:M needs m | cols).
    pub fn check_shape(&self, cols: usize) -> Result<()> {
        match *self {
            Sparsity::NM { n, m } if !cols.is_multiple_of(m) => {
                Err(KernelError::InvalidArgument(format!(
                    "{n}:{m} sparsity needs the column count to be a multiple of {m}, got {cols}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The pruned fraction this pattern aims at.
    pub fn fraction(&self) -> f64 {
        match *self {
            Sparsity::Unstructured(p) => p,
            Sparsity::NM { n, m } => n as f64 / m as f64,
        }
    }
}

impl std::fmt::Display for Sparsity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sparsity::Unstructured(p) => write!(f, "{p}"),
            Sparsity::NM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// Mask selection for a score matrix (§5).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaskPattern {
    Unstructured { sparsity: f64, group: MaskGroup },
    NM { n: usize, m: usize },
}

impl MaskPattern {
    /// A short canonical form: `row0.5`, `matrix0.3`, `2:4`.
    pub fn label(&self) -> String {
        match *self {
            MaskPattern::Unstructured {
                sparsity,
                group: MaskGroup::PerRow,
            } => format!("row{sparsity}"),
            MaskPattern::Unstructured {
                sparsity,
                group: MaskGroup::Matrix,
            } => format!("matrix{sparsity}"),
            MaskPattern::NM { n, m } => format!("{n}:{m}"),
        }
    }

    pub fn new(sparsity: Sparsity, group: MaskGroup) -> Self {
        match sparsity {
            Sparsity::Unstructured(p) => MaskPattern::Unstructured { sparsity: p, group },
            Sparsity::NM { n, m } => MaskPattern::NM { n, m },
        }
    }
}

/// Exactly how many entries an unstructured group of `group_size` prunes: floor(p·size).
/// Every backend uses this one function so that k never differs by a rounding.
pub fn unstructured_k(p: f64, group_size: usize) -> usize {
    ((p * group_size as f64).floor() as usize).min(group_size)
}

/// Which importance score (§4), without its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoreKind {
    Magnitude,
    Wanda,
    Gblm,
}

impl ScoreKind {
    pub fn name(&self) -> &'static str {
        match self {
            ScoreKind::Magnitude => "magnitude",
            ScoreKind::Wanda => "wanda",
            ScoreKind::Gblm => "gblm",
        }
    }
}

/// The importance score of §4 and the statistics it needs (all on the device).
#[derive(Debug)]
pub enum Score<'a, T> {
    /// |W|
    Magnitude,
    /// |W_ij|·sqrt(a_j), `act` is the 1 x cols activation statistic of §1.
    Wanda { act: &'a T },
    /// |W_ij|·sqrt(a_j) + |W_ij|·G_ij, `grad` the rows x cols finalised gradient G of §2.
    Gblm { act: &'a T, grad: &'a T },
}

// Hand-written so that a `Score` or `ObsSelection` is Copy whatever the tensor type: they
// only hold references (derive would demand `T: Copy`).
impl<T> Clone for Score<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Score<'_, T> {}
impl<M> Clone for ObsSelection<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for ObsSelection<'_, M> {}

/// How SparseGPT's OBS prune chooses what to prune (§7).
#[derive(Debug)]
pub enum ObsSelection<'a, M> {
    /// Adaptive per block: floor(p·rows·B) lowest W²/diag(U)² of each column block.
    Unstructured(f64),
    /// n lowest of every m consecutive columns per row, chosen on the updated weights.
    NM { n: usize, m: usize },
    /// A mask chosen elsewhere (magnitude, Wanda, GBLM); only the OBS updates run.
    Given(&'a M),
}

/// The damped inverse-Hessian factor of §6.
#[derive(Debug)]
pub struct HinvFactor<T> {
    /// Upper Cholesky factor U of (H + λI)⁻¹, cols x cols.
    pub u: T,
    /// Columns whose Hessian diagonal was zero: their weights are zeroed before pruning.
    pub dead: Vec<usize>,
    /// The damping λ that was added.
    pub damp: f64,
}

/// What an OBS prune returns: the pruned set and the summed loss Σ (w−q)²/d²/2.
#[derive(Debug)]
pub struct ObsOutcome<M> {
    pub mask: M,
    pub loss: f64,
}

/// The reconstruction error of §9 as its two traces: error = num / den with
/// num = tr(ΔW H ΔWᵀ), den = tr(W H Wᵀ).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconError {
    pub num: f64,
    pub den: f64,
}

impl ReconError {
    pub fn relative(&self) -> f64 {
        if self.den == 0.0 {
            0.0
        } else {
            self.num / self.den
        }
    }
}

/// §11's Taylor saliencies (LLM-Pruner's `param_first`, `param_second`, `param_mix`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaylorKind {
    /// |W·Ḡ|.
    Taylor1,
    /// |W·F·W|.
    Taylor2,
    /// |W·Ḡ − ½·W·F·W|.
    TaylorMix,
}

impl TaylorKind {
    pub const ALL: [TaylorKind; 3] = [
        TaylorKind::Taylor1,
        TaylorKind::Taylor2,
        TaylorKind::TaylorMix,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            TaylorKind::Taylor1 => "taylor1",
            TaylorKind::Taylor2 => "taylor2",
            TaylorKind::TaylorMix => "taylor_mix",
        }
    }

    /// Whether the kind reads the mean gradient Ḡ (the plain sum of §11).
    pub fn needs_mean_grad(&self) -> bool {
        !matches!(self, TaylorKind::Taylor2)
    }

    /// Whether the kind reads the diagonal Fisher F (§2's l2 accumulator).
    pub fn needs_fisher(&self) -> bool {
        !matches!(self, TaylorKind::Taylor1)
    }
}

/// Which way a segmented sum runs over a weight: a group's rows (its producers) or its columns
/// (its consumer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentAxis {
    Rows,
    Cols,
}

/// One matrix's share of §11's Taylor saliency: per segment k of `width` rows (or columns),
/// Σ over its entries of the kind's term, with Ḡ = `grad_scale`·`grad_sum` and
/// F = `fisher_scale`·`grad_sq`.
pub struct TaylorInputs<'a, T> {
    pub w: &'a T,
    /// Σ_s g_s, for the kinds that read Ḡ.
    pub grad_sum: Option<&'a T>,
    /// §2's l2 accumulator Σ_s (c·g_s)², for the kinds that read F.
    pub grad_sq: Option<&'a T>,
    /// 1/N: Ḡ from the plain sum.
    pub grad_scale: f64,
    /// 1/(c²·N): F from the l2 accumulator.
    pub fisher_scale: f64,
    pub kind: TaylorKind,
    pub axis: SegmentAxis,
    pub width: usize,
}

// Only references and plain values: copyable whatever T is (a derive would ask T: Copy).
impl<T> Clone for TaylorInputs<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for TaylorInputs<'_, T> {}

/// §11's explicit damped inverse Hessian, from §6's factor.
#[derive(Debug)]
pub struct HinvExplicit<T> {
    /// Hinv = (H + λI)⁻¹ (dead diagonals set to 1 first), cols x cols.
    pub hinv: T,
    /// Columns whose Hessian diagonal was zero.
    pub dead: Vec<usize>,
    /// The damping λ that was added.
    pub damp: f64,
}

/// The two LoRA forms PERP merges without losing the sparsity (§12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraForm {
    /// Ŵ = W_p + s·M̄ ⊙ (B·A).
    Mask,
    /// Ŵ = W_p ⊙ (B·A).
    Scale,
}

impl LoraForm {
    pub fn name(&self) -> &'static str {
        match self {
            LoraForm::Mask => "masklora",
            LoraForm::Scale => "scalelora",
        }
    }

    /// s = α/r with PERP's α = 2r for MaskLoRA, so s = 2 at every rank; ScaleLoRA has none.
    pub fn scale(&self) -> f64 {
        match self {
            LoraForm::Mask => 2.0,
            LoraForm::Scale => 1.0,
        }
    }
}

/// What one LoRA gradient evaluation of §12 reads. With P = M̄ (the kept entries of `mask`,
/// mask form) or W_p (scale form) and D = P ⊙ (B·A): E = Δ + s·D, E·H = ΔH + s·D·H,
/// L = norm/2 · Σ E ⊙ EH, Ḡ = s·norm · P ⊙ EH, ∂B = Ḡ·Aᵀ, ∂A = Bᵀ·Ḡ. Δ = W_p − W for the
/// mask form and −W for the scale form (whose s is 1); `norm` = 1/(T·rows).
#[derive(Debug)]
pub struct LoraInputs<'a, T, M> {
    pub form: LoraForm,
    pub wp: &'a T,
    pub mask: &'a M,
    pub delta: &'a T,
    pub delta_h: &'a T,
    pub h: &'a T,
    /// rows x r
    pub b: &'a T,
    /// r x cols
    pub a: &'a T,
    pub s: f64,
    pub norm: f64,
}

/// ∂L/∂B, ∂L/∂A and L at the current B, A.
#[derive(Debug)]
pub struct LoraGrad<T> {
    pub db: T,
    pub da: T,
    pub loss: f64,
}

/// One AdamW step's scalars (PyTorch's AdamW, no weight decay); `t` counts from 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub t: u32,
}

impl AdamStep {
    pub fn new(lr: f64, t: u32) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t,
        }
    }
}

/// The linear warm-up / linear decay schedule of §12 (transformers'
/// `get_linear_schedule_with_warmup`): the learning rate of step `i` (from 0) of `steps`.
pub fn scheduled_lr(lr: f64, i: usize, steps: usize) -> f64 {
    let warmup = steps / 10;
    if i < warmup {
        lr * i as f64 / warmup as f64
    } else {
        lr * (steps - i) as f64 / (steps - warmup).max(1) as f64
    }
}

/// The FMA probe's constants: a contraction towards 1, so values stay bounded however many
/// iterations run.
pub const FMA_PROBE_MUL: f32 = 0.999;
pub const FMA_PROBE_ADD: f32 = 0.001;

/// The FMA probe's result for start value `x` after `iters` steps, in f64 closed form:
/// v_n = m^n (x − 1) + 1 for v ← m·v + (1 − m).
pub fn fma_probe_expected(x: f32, iters: u32) -> f64 {
    let m = FMA_PROBE_MUL as f64;
    m.powi(iters as i32) * (x as f64 - 1.0) + 1.0
}

/// Where a timing came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSource {
    /// GPU timestamp queries or the runtime's device-side profiler.
    DeviceTimestamps,
    /// Host wall clock around the work, with the device drained before and after.
    WallClock,
}

/// What a backend says about itself and its device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// `cpu`, `wgpu`, `cubecl-wgpu`, `cubecl-cuda`.
    pub backend: String,
    /// The adapter or device name.
    pub device: String,
    pub vendor: String,
    /// Vulkan, Metal, DX12, CUDA, host.
    pub api: String,
    pub driver: String,
    /// `discrete`, `integrated`, `cpu`, `virtual`, `other`.
    pub device_type: String,
    /// Limits that bound what the backend can run, as name -> value.
    pub limits: Vec<(String, u64)>,
}
