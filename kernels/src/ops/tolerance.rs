//! Tolerances, as normalised squared error `sum((gpu-ref)^2) / sum(ref^2)` unless said: what
//! every GPU result is held to against the CPU reference, each with its reason.

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
/// §15's elementwise backward ops (RMSNorm's dx, RoPE's transposed rotation, the SiLU-gate's
/// dg and du, the embedding's per-id sums): a few f32 roundings per output, and RMSNorm's two
/// f32 row sums over d terms, as the forward's; a wrong sign or half is off by O(1).
pub const BACKWARD_ELEMENTWISE: f64 = 1e-10;
/// §15's reductions over the tokens (RMSNorm's dγ) and GEMM-shaped gradients (the linear's
/// dX = dY·W and dW = dYᵀ·X): f32 sums over N or rows terms, ~1e-6 relative at worst, as
/// the forward's GEMMs.
pub const BACKWARD_GEMM: f64 = 1e-8;
