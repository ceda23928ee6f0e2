//! The op set of ALGORITHMS.md §1-§7 as one trait, with the parameters every backend shares
//! and the tolerance each GPU result is held to against the CPU reference.
//!
//! Tensors live on the backend's device between ops (`Backend::Tensor`), so a method can chain
//! statistics, scores, masks and updates without host round trips; `upload`/`download` are the
//! only crossings. All device tensors are f32 (the CPU reference holds f64).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};
use crate::formats::{PackedWeight, WeightFormat};
use crate::tensor::{Mask, Matrix};

/// GBLM-Pruner's gradient scale `c` (§2): gradients are multiplied by 100 before squaring so
/// that f16 accumulation in the original code does not underflow; we keep it for equal scores.
pub const GBLM_GRAD_SCALE: f32 = 100.0;
/// SparseGPT's column block size B (§7).
pub const OBS_BLOCK: usize = 128;
/// SparseGPT's Hessian dampening as a fraction of the mean diagonal (§6).
pub const PERCDAMP: f64 = 0.01;

/// Tolerances, as normalised squared error `sum((gpu-ref)^2) / sum(ref^2)` unless said.
pub mod tolerance {
    /// Elementwise ops (scores, apply, gradient accumulation given g): each output is one or
    /// two f32 roundings away from the f64 value, relative error ~1e-7, squared ~1e-14.
    pub const ELEMENTWISE: f64 = 1e-11;
    /// The same ops, per entry: |gpu−ref| / |ref| after a few f32 roundings (and an f32 sqrt)
    /// is a few 1e-7; a norm alone would hide one wrong entry among heavy-tailed large ones.
    pub const ELEMENTWISE_MAX_REL: f64 = 1e-5;
    /// Reductions over up to a few hundred thousand f32 terms (activation statistic, Hessian,
    /// fused gradient): error grows like sqrt(K)·eps for blocked sums, ~1e-5 relative at worst.
    pub const REDUCTION: f64 = 1e-8;
    /// The damped inverse-Hessian factor U: f32 Cholesky loses about cond(H)·eps, and the 1%
    /// damping bounds cond(H + λI) to roughly 100·max(diag)/mean(diag); heavy-tailed channels
    /// make that 1e3-1e4, so ~1e-3 relative on U.
    pub const HINV_FACTOR: f64 = 1e-5;
    /// OBS-updated weights: a long chain of rank-1 updates in f32 on top of an f32 factor.
    pub const OBS_WEIGHTS: f64 = 1e-4;
    /// Relative difference of SparseGPT's summed OBS loss against the reference.
    pub const OBS_LOSS_REL: f64 = 1e-2;
    /// SparseGPT's own mask selection can flip a late decision on a rounding difference
    /// (ALGORITHMS.md §7): at least this fraction of mask bits must agree.
    pub const OBS_MASK_AGREEMENT: f64 = 0.999;
    /// Reconstruction error figures (ratios of traces), relative.
    pub const RECON_REL: f64 = 1e-3;
    /// A product Y = X·Wᵀ from a compressed weight (§13), per output: |gpu−ref| / Σ|w·x|. The
    /// f16 weights are decoded exactly, so only the f32 accumulation differs: a chain of L
    /// terms is off by at most L·2⁻²⁴ of Σ|w·x| and typically by √L·2⁻²⁴ (about 3e-6 for a
    /// lane's 1800 terms at 14336 columns). A wrong or dropped value moves an output by its
    /// own |w·x|, on average Σ|w·x|/cols: far above this on the test shapes.
    pub const SPARSE_MATMUL_BOUND: f64 = 1e-4;
    /// The same products as a whole, normalised squared error: f32 accumulation is ~1e-7
    /// relative per output, 1e-14 squared; a decoding error in one row stands out.
    pub const SPARSE_MATMUL_NMSE: f64 = 1e-10;
    /// §11's explicit Hinv: the §6 factor's accuracy, and UᵀU (or the solve that forms Hinv)
    /// adds only an f32 sum over cols terms on top.
    pub const HINV_EXPLICIT: f64 = 1e-5;
    /// §11's saliencies and removal losses, relative per score: an f32 Cholesky of Hinv[S,S]
    /// (whose condition the 1% damping bounds, as for §6) and a sum of squares over rows·|S|
    /// terms; a score of the wrong group is off by far more than this.
    pub const SALIENCY_REL: f64 = 1e-3;
    /// §11's compensated weights and downdated Hinv: one f32 solve and two f32 GEMMs on an
    /// f32 Hinv, as the OBS weights of §7 but with no long chain of rank-1 updates.
    pub const STRUCTURED_UPDATE: f64 = 1e-5;
    /// Re-fit GEMM-shaped results (ΔH, D·H and the gradients built on them, the norm system):
    /// f32 sums over cols terms, as the Hessian.
    pub const REFIT_GEMM: f64 = 1e-8;
    /// Re-fit losses and solved scales, relative: a trace of f32 products, and a damped solve
    /// whose condition the 1% damping bounds as for the Hinv factor.
    pub const REFIT_REL: f64 = 1e-3;
    /// §14's elementwise forward ops (SiLU-gate product, residual add, embedding gather, RoPE
    /// from f64-computed tables) and RMSNorm, whose f32 sum of d squares adds ~√d·2⁻²⁴
    /// relative: a few f32 roundings per output, squared ~1e-13; a wrong position, head half
    /// or row is off by O(1).
    pub const FORWARD_ELEMENTWISE: f64 = 1e-10;
    /// §14's GEMM-shaped forward ops (the linear X·Wᵀ and causal attention): f32 sums over
    /// the inner dimension (cols, or e then the keys with an online softmax), ~1e-6 relative
    /// per output at worst, as the Hessian's reductions.
    pub const FORWARD_GEMM: f64 = 1e-8;
    /// §14's per-token next-token loss from the chunked LM head, relative to max(1, |nll|):
    /// the logits are f32 GEMM outputs (~1e-6 relative of Σ|h·w|), and the running max and
    /// exponential sum over the vocabulary add a few f32 roundings.
    pub const NLL_REL: f64 = 1e-4;
}

/// How the gradient accumulator combines samples (§2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradNorm {
    /// A += (c·g)², G = sqrt(A) (GBLM-Pruner's default).
    L2,
    /// A += |c·g|, G = A.
    L1,
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

/// What a backend without an op answers: the op is refused by name, never faked.
fn unsupported<T>(info: &BackendInfo, what: &str) -> Result<T> {
    Err(KernelError::Unsupported(format!(
        "{}: {what}",
        info.backend
    )))
}

/// The op set. Shapes: a weight W is rows x cols (out x in), a calibration batch X is
/// (b·T) x cols, output gradients dY are T x rows, statistics `a` are 1 x cols, H is cols x cols.
pub trait Backend {
    /// A matrix resident on the backend's device.
    type Tensor;
    /// A bit-packed mask resident on the device (layout of [`Mask`]).
    type Mask;
    /// A compressed weight resident on the device (layout of [`PackedWeight`]).
    type Packed;

    fn info(&self) -> &BackendInfo;

    fn upload(&self, m: &Matrix) -> Result<Self::Tensor>;
    fn download(&self, t: &Self::Tensor) -> Result<Matrix>;
    fn upload_mask(&self, m: &Mask) -> Result<Self::Mask>;
    fn download_mask(&self, m: &Self::Mask) -> Result<Mask>;
    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);
    /// Waits until all submitted work has finished.
    fn synchronize(&self) -> Result<()>;

    /// Device memory the backend may use, in bytes, where it knows; the harness checks a
    /// layer's working set against it before any work starts.
    fn memory_budget(&self) -> Option<u64> {
        None
    }

    /// Runs `work` and says how long the device spent on it. The default drains the device
    /// and uses the wall clock; GPU backends override it with timestamps where they have them.
    fn timed(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<(f64, TimeSource)> {
        self.synchronize()?;
        let t0 = Instant::now();
        work()?;
        self.synchronize()?;
        Ok((t0.elapsed().as_secs_f64(), TimeSource::WallClock))
    }

    /// §1: a ← a·n/(n+b) + ‖X[:, j]‖²/(n+b), with `seen` = n samples before and `batch` = b
    /// samples whose tokens are stacked in `x`.
    fn act_stat_update(
        &self,
        act: &mut Self::Tensor,
        seen: usize,
        x: &Self::Tensor,
        batch: usize,
    ) -> Result<()>;

    /// §2(a): A ← A + (c·g)² (l2) or A + |c·g| (l1) for one sample's gradient g (rows x cols).
    fn grad_accumulate(
        &self,
        acc: &mut Self::Tensor,
        g: &Self::Tensor,
        norm: GradNorm,
    ) -> Result<()>;

    /// §2(b): the same for g = dYᵀ X of one sample (dY: T x rows, X: T x cols), without
    /// materialising g.
    fn grad_accumulate_fused(
        &self,
        acc: &mut Self::Tensor,
        dy: &Self::Tensor,
        x: &Self::Tensor,
        norm: GradNorm,
    ) -> Result<()>;

    /// §2: G = sqrt(A) for l2, G = A for l1.
    fn grad_finalize(&self, acc: &Self::Tensor, norm: GradNorm) -> Result<Self::Tensor>;

    /// §3: H ← H·n/(n+b) + (2/(n+b))·XᵀX.
    fn hessian_update(
        &self,
        h: &mut Self::Tensor,
        seen: usize,
        x: &Self::Tensor,
        batch: usize,
    ) -> Result<()>;

    /// §4: the importance scores of W.
    fn score(&self, w: &Self::Tensor, score: Score<'_, Self::Tensor>) -> Result<Self::Tensor>;

    /// §5: the pruned set of a score matrix; ties go to the lower column (or linear) index.
    fn select_mask(&self, scores: &Self::Tensor, pattern: MaskPattern) -> Result<Self::Mask>;

    /// §5: W_ij ← 0 where the mask is set.
    fn apply_mask(&self, w: &mut Self::Tensor, mask: &Self::Mask) -> Result<()>;

    /// §4+§5 in one: score, select and apply. Backends fuse this where one pass can do it;
    /// the result must equal the three ops run one after another.
    fn prune_scored(
        &self,
        w: &mut Self::Tensor,
        score: Score<'_, Self::Tensor>,
        pattern: MaskPattern,
    ) -> Result<Self::Mask> {
        let s = self.score(w, score)?;
        let mask = self.select_mask(&s, pattern)?;
        self.apply_mask(w, &mask)?;
        Ok(mask)
    }

    /// §6: dead columns, damping λ = percdamp·mean(diag H), and U = chol_upper((H+λI)⁻¹).
    fn hinv_factor(&self, h: &Self::Tensor, percdamp: f64) -> Result<HinvFactor<Self::Tensor>>;

    /// §7: blocked OBS prune of W in place with block size `block` (OBS_BLOCK in SparseGPT);
    /// zeroes `factor.dead` columns first.
    fn obs_prune(
        &self,
        w: &mut Self::Tensor,
        factor: &HinvFactor<Self::Tensor>,
        selection: ObsSelection<'_, Self::Mask>,
        block: usize,
    ) -> Result<ObsOutcome<Self::Mask>>;

    /// Ceiling probe for bandwidth: dst ← src (same shape), each element read and written
    /// once, as a device-to-device copy.
    fn copy(&self, _dst: &mut Self::Tensor, _src: &Self::Tensor) -> Result<()> {
        unsupported(self.info(), "no copy probe")
    }

    /// Ceiling probe for arithmetic: every element v of `t` runs
    /// `v ← v·FMA_PROBE_MUL + FMA_PROBE_ADD` `iters` times (2·iters flops per element; the
    /// elements are independent chains, so a GPU can overlap them). Compare with
    /// [`fma_probe_expected`].
    fn fma_probe(&self, _t: &mut Self::Tensor, _iters: u32) -> Result<()> {
        unsupported(self.info(), "no FMA probe")
    }

    /// §9: tr(ΔW H ΔWᵀ) and tr(W H Wᵀ) with ΔW = W − pruned.
    fn recon_error(
        &self,
        w: &Self::Tensor,
        pruned: &Self::Tensor,
        h: &Self::Tensor,
    ) -> Result<ReconError>;

    /// §12: Δ = W_p − W (or −W without `wp`) and Δ·H, the constant part of every re-fit
    /// gradient, once per linear.
    fn refit_base(
        &self,
        _wp: Option<&Self::Tensor>,
        _w: &Self::Tensor,
        _h: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        unsupported(self.info(), "no re-fit")
    }

    /// §12: one LoRA gradient (see [`LoraInputs`]); D is formed on the fly, never stored.
    fn lora_grad(
        &self,
        _inp: LoraInputs<'_, Self::Tensor, Self::Mask>,
    ) -> Result<LoraGrad<Self::Tensor>> {
        unsupported(self.info(), "no LoRA re-fit")
    }

    /// §12: AdamW on `param` in place with its moments `m`, `v`.
    fn adamw_step(
        &self,
        _param: &mut Self::Tensor,
        _grad: &Self::Tensor,
        _m: &mut Self::Tensor,
        _v: &mut Self::Tensor,
        _step: AdamStep,
    ) -> Result<()> {
        unsupported(self.info(), "no AdamW")
    }

    /// §12: the merged weight, W_p + s·M̄ ⊙ (B·A) or W_p ⊙ (B·A), zero wherever the mask is set
    /// (the explicit mask, whatever the product gives there).
    fn lora_merge(
        &self,
        _wp: &Self::Tensor,
        _mask: &Self::Mask,
        _b: &Self::Tensor,
        _a: &Self::Tensor,
        _form: LoraForm,
        _s: f64,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no LoRA merge")
    }

    /// §12 `rowscale`: s_i = (ŵ_i H w_iᵀ)/(ŵ_i H ŵ_iᵀ) (1 where the denominator is 0), Ŵ_i ←
    /// s_i·ŵ_i in place; returns s (1 x rows).
    fn row_scale(
        &self,
        _w_hat: &mut Self::Tensor,
        _w: &Self::Tensor,
        _h: &Self::Tensor,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no row scale")
    }

    /// §12 `norm`: the system Σ_l (Ŵ_lᵀŴ_l) ⊙ H (cols x cols) and the right-hand side
    /// Σ_l diag(Ŵ_lᵀ (W_l − Ŵ_l) H) (1 x cols) over the (Ŵ_l, W_l) pairs that share the input:
    /// the normal equations for c − 1, so damping pulls towards the unchanged norm.
    fn norm_system(
        &self,
        _pairs: &[(&Self::Tensor, &Self::Tensor)],
        _h: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::Tensor)> {
        unsupported(self.info(), "no norm re-fit")
    }

    /// (M + λI)⁻¹·rhs for symmetric positive semi-definite M and a 1 x n rhs, λ = percdamp ·
    /// mean(diag M) as §6 damps, through the §6 factor.
    fn spd_solve(
        &self,
        _m: &Self::Tensor,
        _rhs: &Self::Tensor,
        _percdamp: f64,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no solve")
    }

    /// §11: A ← A + dYᵀX for one sample (the plain sum whose mean is Ḡ), without
    /// materialising dYᵀX: the fused GEMM of §2(b) with a plain-sum epilogue.
    fn grad_sum_fused(
        &self,
        _acc: &mut Self::Tensor,
        _dy: &Self::Tensor,
        _x: &Self::Tensor,
    ) -> Result<()> {
        unsupported(self.info(), "no mean-gradient accumulation")
    }

    /// §11: Hinv = (H + λI)⁻¹ written out, from §6's factor (dead diagonals to 1, the same λ).
    fn hinv_explicit(
        &self,
        _h: &Self::Tensor,
        _percdamp: f64,
    ) -> Result<HinvExplicit<Self::Tensor>> {
        unsupported(self.info(), "no explicit inverse Hessian")
    }

    /// §11 `obs`: for each listed group g (columns [g·width, (g+1)·width) of the consumer W),
    /// ε_g = ½·tr(W[:,S] (Hinv[S,S])⁻¹ W[:,S]ᵀ); 1 x groups.len().
    fn obs_saliency(
        &self,
        _w: &Self::Tensor,
        _hinv: &Self::Tensor,
        _width: usize,
        _groups: &[usize],
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no OBS saliency")
    }

    /// §11 Taylor saliency: one matrix's segmented sums (see [`TaylorInputs`]), 1 x segments.
    fn taylor_saliency(&self, _inp: TaylorInputs<'_, Self::Tensor>) -> Result<Self::Tensor> {
        unsupported(self.info(), "no Taylor saliency")
    }

    /// §11 compensation for the removed column set S (sorted, distinct):
    /// W ← W − W[:,S]·(Hinv[S,S])⁻¹·Hinv[S,:] and Hinv ← Hinv − Hinv[:,S]·(Hinv[S,S])⁻¹·Hinv[S,:],
    /// with W[:,S] and Hinv's rows and columns S exactly 0 after. Returns ε_S, the loss the
    /// removal adds (`obs_saliency` of S as one group).
    fn structured_update(
        &self,
        _w: &mut Self::Tensor,
        _hinv: &mut Self::Tensor,
        _removed: &[usize],
    ) -> Result<f64> {
        unsupported(self.info(), "no structured OBS update")
    }

    /// §11 compaction: the kept rows (all when `None`) and kept columns (all when `None`) of
    /// W, each list sorted ascending, as a smaller dense tensor.
    fn compact(
        &self,
        _w: &Self::Tensor,
        _rows: Option<&[usize]>,
        _cols: Option<&[usize]>,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no compaction")
    }

    /// §13: W under its mask (set = pruned; the mask decides, never a zero value) in `format`,
    /// kept values rounded to f16. Refuses a weight that is not 2:4 for the 2:4 format and a
    /// kept value f16 cannot hold, with the errors of [`crate::formats`].
    fn compress(
        &self,
        _w: &Self::Tensor,
        _mask: &Self::Mask,
        format: WeightFormat,
    ) -> Result<Self::Packed> {
        unsupported(self.info(), &format!("no {} compression", format.name()))
    }

    /// §13: the dense weight back from its compressed form (zeros where nothing is stored).
    fn decompress(&self, _p: &Self::Packed) -> Result<Self::Tensor> {
        unsupported(self.info(), "no decompression")
    }

    fn upload_packed(&self, _p: &PackedWeight) -> Result<Self::Packed> {
        unsupported(self.info(), "no compressed weights")
    }

    fn download_packed(&self, _p: &Self::Packed) -> Result<PackedWeight> {
        unsupported(self.info(), "no compressed weights")
    }

    /// §13: Y = X·Wᵀ for X [N, cols] and a compressed W [rows, cols]: Y [N, rows], f32
    /// accumulation of the f16 values.
    fn sparse_matmul(&self, _x: &Self::Tensor, _w: &Self::Packed) -> Result<Self::Tensor> {
        unsupported(self.info(), "no compressed-weight product")
    }

    /// §14 linear: Y = X·Wᵀ for X [N, cols] and W [rows, cols] (the HF layout): Y [N, rows].
    fn linear(&self, _x: &Self::Tensor, _w: &Self::Tensor) -> Result<Self::Tensor> {
        unsupported(self.info(), "no linear")
    }

    /// §14 RMSNorm per row (token): y = x / sqrt(mean(x²) + eps) · γ, with γ 1 x d.
    fn rms_norm(
        &self,
        _x: &Self::Tensor,
        _gamma: &Self::Tensor,
        _eps: f64,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no RMSNorm")
    }

    /// §14 RoPE in place on x [N, heads·e], HF's `rotate_half` form: for each head and
    /// i < e/2, (x_i, x_{i+e/2}) ← (x_i·c − x_{i+e/2}·s, x_{i+e/2}·c + x_i·s) with c, s the
    /// entries (t mod seq, i) of the tables `cos`, `sin` [seq, e/2]: windows of seq rows are
    /// stacked, each starting at position 0.
    fn rope(&self, _x: &mut Self::Tensor, _cos: &Self::Tensor, _sin: &Self::Tensor) -> Result<()> {
        unsupported(self.info(), "no RoPE")
    }

    /// §14 causal GQA attention over stacked windows of `seq` rows: q [N, heads·e], k and v
    /// [N, kv_heads·e]; query head h reads KV head ⌊h/r⌋ (r = heads/kv_heads); row t attends
    /// to rows ≤ t of its own window; softmax(q·kᵀ/√e) in f32 with the max subtracted, never a
    /// seq x seq matrix in memory. Output [N, heads·e].
    fn attention(
        &self,
        _q: &Self::Tensor,
        _k: &Self::Tensor,
        _v: &Self::Tensor,
        _heads: usize,
        _kv_heads: usize,
        _seq: usize,
    ) -> Result<Self::Tensor> {
        unsupported(self.info(), "no attention")
    }

    /// §14 the MLP's activation: silu(gate) ⊙ up, silu(z) = z / (1 + e^−z).
    fn silu_mul(&self, _gate: &Self::Tensor, _up: &Self::Tensor) -> Result<Self::Tensor> {
        unsupported(self.info(), "no SiLU-gate product")
    }

    /// §14 the residual add: x ← x + y.
    fn add_assign(&self, _x: &mut Self::Tensor, _y: &Self::Tensor) -> Result<()> {
        unsupported(self.info(), "no residual add")
    }

    /// §14 embedding gather: rows `ids` of `table` [vocab, d], as [ids.len(), d].
    fn embed(&self, _table: &Self::Tensor, _ids: &[u32]) -> Result<Self::Tensor> {
        unsupported(self.info(), "no embedding gather")
    }

    /// §14 the LM head fused with log-softmax and the next-token loss, one vocabulary chunk
    /// at a time so that the logits never sit in memory whole: `w_chunk` holds the vocabulary
    /// rows `offset..offset + w_chunk.rows` of the head; logits l = h·w_chunkᵀ [N, chunk] are
    /// folded into the running per-row `state` [N, 3] = (m, s, z): m the largest logit so far,
    /// s = Σ exp(l − m), z the logit of `targets[t]` once its chunk is seen (0 until then, and
    /// for `NO_TARGET`). `offset == 0` starts the state afresh, whatever it held. See
    /// [`nll_from_state`].
    fn lm_head_chunk(
        &self,
        _state: &mut Self::Tensor,
        _h: &Self::Tensor,
        _w_chunk: &Self::Tensor,
        _offset: usize,
        _targets: &[u32],
    ) -> Result<()> {
        unsupported(self.info(), "no LM-head loss")
    }
}

/// A row of [`Backend::lm_head_chunk`] without a next token (a window's last position).
pub const NO_TARGET: u32 = u32::MAX;

/// −log softmax(logits)[target] per row from the LM-head state (m, s, z): m + ln s − z, in f64.
pub fn nll_from_state(state: &Matrix) -> Vec<f64> {
    (0..state.rows)
        .map(|t| {
            let r = state.row(t);
            r[0] as f64 + (r[1] as f64).ln() - r[2] as f64
        })
        .collect()
}

/// Shape checks shared by every backend, so they all reject the same inputs the same way.
pub mod check {
    use super::*;

    pub fn same(what: &str, a: (usize, usize), b: (usize, usize)) -> Result<()> {
        if a != b {
            return Err(KernelError::Shape(format!(
                "{what}: {}x{} vs {}x{}",
                a.0, a.1, b.0, b.1
            )));
        }
        Ok(())
    }

    pub fn act_stat(act: (usize, usize), x: (usize, usize), batch: usize) -> Result<()> {
        same("activation statistic vs X columns", act, (1, x.1))?;
        batch_tokens(x, batch)
    }

    pub fn hessian(h: (usize, usize), x: (usize, usize), batch: usize) -> Result<()> {
        same("Hessian vs X columns", h, (x.1, x.1))?;
        batch_tokens(x, batch)
    }

    fn batch_tokens(x: (usize, usize), batch: usize) -> Result<()> {
        if batch == 0 || !x.0.is_multiple_of(batch) {
            return Err(KernelError::Shape(format!(
                "X has {} token rows, not a whole number per sample for a batch of {batch}",
                x.0
            )));
        }
        Ok(())
    }

    pub fn fused_grad(acc: (usize, usize), dy: (usize, usize), x: (usize, usize)) -> Result<()> {
        if dy.0 != x.0 {
            return Err(KernelError::Shape(format!(
                "dY has {} tokens but X has {}",
                dy.0, x.0
            )));
        }
        same("gradient accumulator vs dYᵀX", acc, (dy.1, x.1))
    }

    pub fn score<T>(
        w: (usize, usize),
        score: &Score<'_, T>,
        shape: impl Fn(&T) -> (usize, usize),
    ) -> Result<()> {
        match score {
            Score::Magnitude => Ok(()),
            Score::Wanda { act } => same("activation statistic vs W columns", shape(act), (1, w.1)),
            Score::Gblm { act, grad } => {
                same("activation statistic vs W columns", shape(act), (1, w.1))?;
                same("gradient statistic vs W", shape(grad), w)
            }
        }
    }

    pub fn pattern(p: &MaskPattern, cols: usize) -> Result<()> {
        match *p {
            MaskPattern::Unstructured { sparsity, .. } => {
                Sparsity::Unstructured(sparsity).validate()
            }
            MaskPattern::NM { n, m } => {
                let s = Sparsity::NM { n, m };
                s.validate()?;
                s.check_shape(cols)
            }
        }
    }

    /// §12 `refit_base`: H is cols x cols, W_p (when given) has W's shape.
    pub fn refit_base(
        wp: Option<(usize, usize)>,
        w: (usize, usize),
        h: (usize, usize),
    ) -> Result<()> {
        same("Hessian vs W columns", h, (w.1, w.1))?;
        if let Some(p) = wp {
            same("pruned vs original W", p, w)?;
        }
        Ok(())
    }

    /// §12 `lora_grad`: every operand against W_p (rows x cols); the rank is B's column
    /// count. Returns (rows, cols, rank).
    pub fn lora(
        wp: (usize, usize),
        mask: (usize, usize),
        delta: (usize, usize),
        delta_h: (usize, usize),
        h: (usize, usize),
        b: (usize, usize),
        a: (usize, usize),
    ) -> Result<(usize, usize, usize)> {
        let (rows, cols) = wp;
        let r = b.1;
        same("mask vs W_p", mask, (rows, cols))?;
        same("Δ vs W_p", delta, (rows, cols))?;
        same("ΔH vs W_p", delta_h, (rows, cols))?;
        same("Hessian vs W columns", h, (cols, cols))?;
        same("B vs rows x rank", b, (rows, r))?;
        same("A vs rank x cols", a, (r, cols))?;
        Ok((rows, cols, r))
    }

    /// §12 `adamw_step`: gradient and moments have the parameter's shape.
    pub fn adamw(
        param: (usize, usize),
        grad: (usize, usize),
        m: (usize, usize),
        v: (usize, usize),
    ) -> Result<()> {
        same("gradient vs parameter", grad, param)?;
        same("first moment vs parameter", m, param)?;
        same("second moment vs parameter", v, param)
    }

    /// §12 `lora_merge`: the mask has W_p's shape, B is rows x r, A is r x cols. Returns
    /// (rows, cols, rank).
    pub fn lora_merge(
        wp: (usize, usize),
        mask: (usize, usize),
        b: (usize, usize),
        a: (usize, usize),
    ) -> Result<(usize, usize, usize)> {
        let (rows, cols) = wp;
        let r = b.1;
        same("mask vs W_p", mask, (rows, cols))?;
        same("B vs rows x rank", b, (rows, r))?;
        same("A vs rank x cols", a, (r, cols))?;
        Ok((rows, cols, r))
    }

    /// §12 `row_scale`: W has Ŵ's shape, H is cols x cols.
    pub fn row_scale(w_hat: (usize, usize), w: (usize, usize), h: (usize, usize)) -> Result<()> {
        same("W vs Ŵ", w, w_hat)?;
        same("Hessian vs W columns", h, (w_hat.1, w_hat.1))
    }

    /// §12 `norm_system`: H is square.
    pub fn norm_hessian(h: (usize, usize)) -> Result<()> {
        same("Hessian", h, (h.1, h.1))
    }

    /// §12 `norm_system`: one (Ŵ, W) pair against the Hessian's `cols`.
    pub fn norm_pair(cols: usize, w_hat: (usize, usize), w: (usize, usize)) -> Result<()> {
        same("Ŵ vs Hessian columns", w_hat, (w_hat.0, cols))?;
        same("W vs Ŵ", w, w_hat)
    }

    /// `spd_solve`: a square system and a 1 x n right-hand side. Returns n.
    pub fn spd_solve(m: (usize, usize), rhs: (usize, usize)) -> Result<usize> {
        let n = m.0;
        same("system", m, (n, n))?;
        same("right-hand side", rhs, (1, n))?;
        Ok(n)
    }

    /// `obs_saliency`: W's columns and Hinv agree, the groups fit. Returns the group count.
    pub fn obs_saliency(
        w: (usize, usize),
        hinv: (usize, usize),
        width: usize,
        groups: &[usize],
    ) -> Result<usize> {
        same("inverse Hessian vs W columns", hinv, (w.1, w.1))?;
        let n = segments(w.1, width, "columns")?;
        if let Some(&g) = groups.iter().find(|&&g| g >= n) {
            return Err(KernelError::InvalidArgument(format!(
                "group {g} is past the {n} groups of width {width}"
            )));
        }
        Ok(n)
    }

    /// `len` split into segments of `width`: their count.
    pub fn segments(len: usize, width: usize, what: &str) -> Result<usize> {
        if width == 0 || !len.is_multiple_of(width) {
            return Err(KernelError::InvalidArgument(format!(
                "{len} {what} do not split into groups of width {width}"
            )));
        }
        Ok(len / width)
    }

    /// `taylor_saliency`: the statistics the kind reads are there with W's shape. Returns the
    /// segment count.
    pub fn taylor<T>(
        inp: &TaylorInputs<'_, T>,
        shape: impl Fn(&T) -> (usize, usize),
    ) -> Result<usize> {
        let w = shape(inp.w);
        for (need, stat, what) in [
            (inp.kind.needs_mean_grad(), inp.grad_sum, "gradient sum"),
            (
                inp.kind.needs_fisher(),
                inp.grad_sq,
                "squared-gradient accumulator",
            ),
        ] {
            match stat {
                Some(t) => same(what, shape(t), w)?,
                None if need => {
                    return Err(KernelError::InvalidArgument(format!(
                        "{} saliency needs the {what}",
                        inp.kind.name()
                    )))
                }
                None => {}
            }
        }
        match inp.axis {
            SegmentAxis::Rows => segments(w.0, inp.width, "rows"),
            SegmentAxis::Cols => segments(w.1, inp.width, "columns"),
        }
    }

    /// `structured_update`: shapes agree; S is sorted, distinct, inside W and not everything.
    pub fn structured_update(
        w: (usize, usize),
        hinv: (usize, usize),
        removed: &[usize],
    ) -> Result<()> {
        same("inverse Hessian vs W columns", hinv, (w.1, w.1))?;
        indices(removed, w.1, "removed column")?;
        if removed.is_empty() {
            return Err(KernelError::InvalidArgument("no columns to remove".into()));
        }
        Ok(())
    }

    /// Indices sorted ascending, distinct, each below `len`.
    pub fn indices(idx: &[usize], len: usize, what: &str) -> Result<()> {
        if let Some(&i) = idx.iter().find(|&&i| i >= len) {
            return Err(KernelError::InvalidArgument(format!(
                "{what} {i} is past the {len} there are"
            )));
        }
        if idx.windows(2).any(|p| p[0] >= p[1]) {
            return Err(KernelError::InvalidArgument(format!(
                "{what}s must be sorted and distinct"
            )));
        }
        Ok(())
    }

    /// `compact`: the kept indices are valid and leave something. Returns the new shape.
    pub fn compact(
        w: (usize, usize),
        rows: Option<&[usize]>,
        cols: Option<&[usize]>,
    ) -> Result<(usize, usize)> {
        let mut shape = w;
        if let Some(r) = rows {
            indices(r, w.0, "kept row")?;
            shape.0 = r.len();
        }
        if let Some(c) = cols {
            indices(c, w.1, "kept column")?;
            shape.1 = c.len();
        }
        if shape.0 == 0 || shape.1 == 0 {
            return Err(KernelError::InvalidArgument(format!(
                "compaction of a {}x{} weight keeps nothing",
                w.0, w.1
            )));
        }
        Ok(shape)
    }

    pub fn obs<M>(
        w: (usize, usize),
        u: (usize, usize),
        sel: &ObsSelection<'_, M>,
        block: usize,
    ) -> Result<()> {
        same("Hessian factor vs W columns", u, (w.1, w.1))?;
        if block == 0 {
            return Err(KernelError::InvalidArgument("OBS block size is 0".into()));
        }
        match *sel {
            ObsSelection::Unstructured(p) => Sparsity::Unstructured(p).validate(),
            ObsSelection::NM { n, m } => {
                let s = Sparsity::NM { n, m };
                s.validate()?;
                s.check_shape(w.1)?;
                if !block.is_multiple_of(m) {
                    return Err(KernelError::InvalidArgument(format!(
                        "OBS block size {block} is not a multiple of M = {m}"
                    )));
                }
                Ok(())
            }
            ObsSelection::Given(_) => Ok(()),
        }
    }

    /// §14 linear: X [N, cols] against W [rows, cols].
    pub fn linear(x: (usize, usize), w: (usize, usize)) -> Result<()> {
        if x.1 != w.1 {
            return Err(KernelError::Shape(format!(
                "linear: X is {}x{} but W is {}x{} (columns must agree)",
                x.0, x.1, w.0, w.1
            )));
        }
        Ok(())
    }

    pub fn rms_norm(x: (usize, usize), gamma: (usize, usize), eps: f64) -> Result<()> {
        same("RMSNorm weight vs X columns", gamma, (1, x.1))?;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(KernelError::InvalidArgument(format!(
                "RMSNorm eps {eps} is not a finite number >= 0"
            )));
        }
        Ok(())
    }

    /// Returns (seq, head_dim).
    pub fn rope(
        x: (usize, usize),
        cos: (usize, usize),
        sin: (usize, usize),
    ) -> Result<(usize, usize)> {
        same("RoPE sin vs cos table", sin, cos)?;
        let (seq, e) = (cos.0, 2 * cos.1);
        if seq == 0 || e == 0 || !x.1.is_multiple_of(e) {
            return Err(KernelError::Shape(format!(
                "RoPE: tables {}x{} (head_dim {e}) do not fit rows of {} columns",
                cos.0, cos.1, x.1
            )));
        }
        window_rows(x.0, seq, "RoPE")?;
        Ok((seq, e))
    }

    fn window_rows(rows: usize, seq: usize, what: &str) -> Result<()> {
        if seq == 0 || !rows.is_multiple_of(seq) {
            return Err(KernelError::Shape(format!(
                "{what}: {rows} rows are not whole windows of {seq}"
            )));
        }
        Ok(())
    }

    /// Returns head_dim.
    pub fn attention(
        q: (usize, usize),
        k: (usize, usize),
        v: (usize, usize),
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<usize> {
        same("attention V vs K", v, k)?;
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(KernelError::InvalidArgument(format!(
                "attention: {heads} query heads are not a multiple of {kv_heads} KV heads"
            )));
        }
        if !q.1.is_multiple_of(heads) || q.1 == 0 {
            return Err(KernelError::Shape(format!(
                "attention: Q has {} columns, not {heads} heads' worth",
                q.1
            )));
        }
        let e = q.1 / heads;
        if k.1 != kv_heads * e || k.0 != q.0 {
            return Err(KernelError::Shape(format!(
                "attention: K is {}x{}, expected {}x{} ({kv_heads} KV heads of {e})",
                k.0,
                k.1,
                q.0,
                kv_heads * e
            )));
        }
        window_rows(q.0, seq, "attention")?;
        Ok(e)
    }

    pub fn ids(ids: &[u32], vocab: usize) -> Result<()> {
        if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
            return Err(KernelError::InvalidArgument(format!(
                "token id {id} at position {i} is outside the vocabulary of {vocab}"
            )));
        }
        Ok(())
    }

    pub fn lm_head(
        state: (usize, usize),
        h: (usize, usize),
        w: (usize, usize),
        targets: usize,
    ) -> Result<()> {
        linear(h, w)?;
        same("LM-head state vs rows", state, (h.0, 3))?;
        if targets != h.0 {
            return Err(KernelError::Shape(format!(
                "LM head: {targets} targets for {} rows",
                h.0
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparsity_parses_and_rejects_impossible_targets() {
        assert_eq!(Sparsity::parse("0.5").unwrap(), Sparsity::Unstructured(0.5));
        assert_eq!(Sparsity::parse("2:4").unwrap(), Sparsity::NM { n: 2, m: 4 });
        for bad in ["1.5", "1", "-0.1", "4:2", "2:2", "0:4", "x", "2:", "nan"] {
            assert!(Sparsity::parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(Sparsity::NM { n: 2, m: 4 }.check_shape(10).is_err());
        assert!(Sparsity::NM { n: 2, m: 4 }.check_shape(12).is_ok());
    }

    #[test]
    fn k_is_floor_of_fraction() {
        assert_eq!(unstructured_k(0.5, 11), 5);
        assert_eq!(unstructured_k(0.0, 11), 0);
        assert_eq!(unstructured_k(0.999, 10), 9);
    }
}
