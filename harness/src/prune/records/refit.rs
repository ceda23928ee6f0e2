//! What `--refit` is configured with and what the re-fit reports (ALGORITHMS.md §12): part of
//! the layer schema; the re-fit itself is `crate::prune::refit`.

use serde::{Deserialize, Serialize};

use prunebench_kernels::ops::LoraForm;
use prunebench_models::{InputGroup, NormWeight};

use crate::error::{HarnessError, Result};

/// One re-fit of the list `--refit` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefitItem {
    Norm,
    RowScale,
    Lora { form: LoraForm, rank: usize },
}

impl RefitItem {
    pub fn label(&self) -> String {
        match self {
            RefitItem::Norm => "norm".into(),
            RefitItem::RowScale => "rowscale".into(),
            RefitItem::Lora { form, rank } => format!("{}:{rank}", form.name()),
        }
    }
}

impl std::fmt::Display for RefitItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

/// What `--refit`, `--refit-steps`, `--refit-lr` and `--refit-seed` ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefitConfig {
    pub items: Vec<RefitItem>,
    pub steps: usize,
    pub lr: f64,
    pub seed: u64,
}

/// Defaults chosen on the synthetic layers (docs/CLI.md): PERP trains 20 steps of 128-sample
/// batches at lr 5e-4 on the model's loss; layer-wise from H every step sees all of the
/// calibration at once, and a larger rate in fewer steps reaches the same plateau.
pub const DEFAULT_STEPS: usize = 100;
pub const DEFAULT_LR: f64 = 2e-3;

impl Default for RefitConfig {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            steps: DEFAULT_STEPS,
            lr: DEFAULT_LR,
            seed: 0,
        }
    }
}

impl RefitConfig {
    /// Parses `norm,masklora:16` style lists; `none` or an empty string is no re-fit.
    pub fn parse_items(list: &str) -> Result<Vec<RefitItem>> {
        let bad = |why: String| HarnessError::Config(format!("--refit '{list}': {why}"));
        let mut items = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let item = match part.split_once(':') {
                None if part == "none" => continue,
                None if part == "norm" => RefitItem::Norm,
                None if part == "rowscale" => RefitItem::RowScale,
                Some((form, rank)) if form == "masklora" || form == "scalelora" => {
                    let rank: usize = rank.parse().map_err(|_| {
                        bad(format!("rank '{rank}' of {form} is not a whole number"))
                    })?;
                    if rank == 0 {
                        return Err(bad(format!("{form} needs a rank of at least 1")));
                    }
                    let form = if form == "masklora" {
                        LoraForm::Mask
                    } else {
                        LoraForm::Scale
                    };
                    RefitItem::Lora { form, rank }
                }
                _ => {
                    return Err(bad(format!(
                        "unknown item '{part}' (norm, rowscale, masklora:R, scalelora:R)"
                    )))
                }
            };
            if item == RefitItem::Norm && items.contains(&RefitItem::Norm) {
                return Err(bad("norm is listed twice".into()));
            }
            items.push(item);
        }
        Ok(items)
    }

    /// Checks that every item fits every linear (rank at most min(rows, cols)) and that the
    /// norms it needs are there, before any work.
    pub fn check(&self, layer: &prunebench_models::LayerWeights) -> Result<()> {
        if self.items.is_empty() {
            return Ok(());
        }
        if self.steps == 0
            && self
                .items
                .iter()
                .any(|i| matches!(i, RefitItem::Lora { .. }))
        {
            return Err(HarnessError::Config(
                "--refit-steps must be at least 1 for a LoRA re-fit".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(HarnessError::Config(format!(
                "--refit-lr must be a positive number, got {}",
                self.lr
            )));
        }
        for item in &self.items {
            match *item {
                RefitItem::Lora { form, rank } => {
                    for (l, _) in &layer.linears {
                        if rank > l.rows.min(l.cols) {
                            return Err(HarnessError::Config(format!(
                                "--refit {}:{rank}: the rank is above min(rows, cols) = {} of {} ({}x{})",
                                form.name(),
                                l.rows.min(l.cols),
                                l.name,
                                l.rows,
                                l.cols
                            )));
                        }
                    }
                }
                RefitItem::Norm => {
                    for group in [InputGroup::AttnIn, InputGroup::MlpIn] {
                        let pruned_here = layer.linears.iter().any(|(l, _)| l.input == group);
                        if pruned_here && layer.norm(group).is_none() {
                            return Err(HarnessError::Config(format!(
                                "--refit norm: layer {} has no {} tensor ({}), which the {} linears' norm re-fit rescales",
                                layer.layer,
                                NormWeight::hf_name(group).unwrap_or("norm"),
                                NormWeight::hf_tensor_name(group, layer.layer).unwrap_or_default(),
                                group.name()
                            )));
                        }
                    }
                }
                RefitItem::RowScale => {}
            }
        }
        Ok(())
    }
}

/// What the re-fit did to one linear (`prune --json`, per linear).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearRefit {
    pub items: Vec<String>,
    /// Reconstruction error (§9, f32 on the device) before and after the re-fit.
    pub error_before: f64,
    pub error_after: f64,
    /// Parameters trained for this linear (LoRA factors; a row scale per row; the norm's
    /// columns counted once per group, on its first linear).
    pub trained_parameters: usize,
    /// Those over the layer's linear parameters.
    pub trained_fraction: f64,
    pub steps: usize,
    /// Mean device time of one LoRA step (gradient and both AdamW updates), seconds.
    pub seconds_per_step: Option<f64>,
    /// The loss of §12 at each LoRA step, first and last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_loss: Option<(f64, f64)>,
}

/// The norm re-fit of one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormRefit {
    pub group: String,
    pub tensor: String,
    /// γ' = γ ⊙ c.
    pub weights: Vec<f32>,
    pub scale_min: f64,
    pub scale_max: f64,
}
