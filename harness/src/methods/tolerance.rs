//! How closely a GPU backend's pruned layer must agree with the reference's (`verify`), with
//! the reason for each figure. A method's entry in the registry names the ones it is held to.

/// Fraction of mask entries allowed to differ from the reference. The backend accumulates
/// statistics in f32 (the reference in f64), so scores differ by ~1e-6 relative and only
/// entries that close to a row's threshold can flip: far fewer than 1 in 10⁴.
pub const LAYER_MASK_DISAGREEMENT: f64 = 1e-4;
/// SparseGPT chooses masks on weights its own f32 updates produced, and a flip early in a
/// block changes later updates of that row: allow 1 in 10³.
pub const LAYER_MASK_DISAGREEMENT_SPARSEGPT: f64 = 1e-3;
/// Relative difference of the reconstruction error figure.
pub const LAYER_RECON_REL: f64 = 1e-3;
pub const LAYER_RECON_REL_SPARSEGPT: f64 = 1e-2;
/// After a LoRA re-fit: AdamW divides each update by the root of the second moment, so f32
/// rounding in early gradients moves every later step a little; over the default 100 steps the
/// final error differs from the f64 run by well under 1%; allow 2%.
pub const LAYER_RECON_REL_REFIT: f64 = 2e-2;
/// The LoRA loss at step 0, before any update: one f32 trace against f64.
pub const REFIT_FIRST_LOSS_REL: f64 = 1e-3;
/// Structured pruning's compacted weights against the reference's, normalised squared error:
/// the consumer carries up to `rounds` f32 structured updates (each within
/// `tolerance::STRUCTURED_UPDATE`), the producers are copied exactly.
pub const LAYER_COMPACT_NMSE: f64 = 1e-4;
