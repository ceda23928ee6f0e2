//! Re-fitting after pruning (ALGORITHMS.md §12, PERP): a stage between a method's step and the
//! evaluation, over one input group's pruned linears, from the group's input Hessian. The
//! items run in the order given; each keeps the method's mask bit for bit.
//!
//! `norm` rescales the RMSNorm weight γ in front of the group, which scales the columns of
//! the group's inputs by c: the linears' effective weights become Ŵ·diag(c) while the written
//! ones stay Ŵ. An item after `norm` re-fits the effective weights and writes them back divided
//! by c, so that the written norm and linears together compute what was fitted.

mod closed;
mod lora;

use serde::{Deserialize, Serialize};

use prunebench_kernels::ops::LoraForm;
use prunebench_kernels::{Backend, Matrix};
use prunebench_models::config::LinearSpec;
use prunebench_models::{InputGroup, NormWeight};

use crate::error::{Context, HarnessError, Result};
use crate::prune::context::LayerCx;
use crate::prune::stages::Stages;

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

/// One linear's state through the re-fit: the written-space weight Ŵ on the device and its
/// explicit mask.
pub(crate) struct Member<'t, B: Backend> {
    pub spec: &'t LinearSpec,
    pub original: &'t B::Tensor,
    pub pruned: &'t mut B::Tensor,
    pub mask: &'t B::Mask,
    pub stages: &'t mut Stages,
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

/// What the stage leaves for the group.
pub(crate) struct GroupRefit {
    pub linears: Vec<LinearRefit>,
    pub norm: Option<NormRefit>,
    /// The norm's column scale c, when `norm` ran: evaluation and writing apply it.
    pub col_scale: Option<Vec<f32>>,
    /// Groups without a norm skip `norm`: the report says so.
    pub skipped: Vec<String>,
}

/// Runs the configured items over the group's pruned members.
#[allow(clippy::too_many_arguments)]
pub(crate) fn refit_group<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    group: InputGroup,
    members: &mut [Member<'_, B>],
    h: &B::Tensor,
    norm: Option<&NormWeight>,
    tokens: usize,
    layer_parameters: usize,
) -> Result<GroupRefit> {
    let cfg = &cx.cfg.refit;
    let mut errors_before = Vec::new();
    for m in members.iter_mut() {
        errors_before.push(closed::error(b, cx, m, h, None)?);
    }
    let mut out = GroupRefit {
        linears: members
            .iter()
            .zip(&errors_before)
            .map(|(_, &e)| LinearRefit {
                items: Vec::new(),
                error_before: e,
                error_after: e,
                trained_parameters: 0,
                trained_fraction: 0.0,
                steps: 0,
                seconds_per_step: None,
                lora_loss: None,
            })
            .collect(),
        norm: None,
        col_scale: None,
        skipped: Vec::new(),
    };
    for item in &cfg.items {
        match *item {
            RefitItem::Norm => {
                let Some(gamma) = norm else {
                    out.skipped.push(format!(
                        "norm: the {} input has no norm weight",
                        group.name()
                    ));
                    continue;
                };
                let c = closed::norm(b, cx, members, h)?;
                out.linears[0].trained_parameters += c.len();
                let weights: Vec<f32> = gamma.data.iter().zip(&c).map(|(g, c)| g * c).collect();
                if let Some(i) = weights.iter().position(|v| !v.is_finite()) {
                    return Err(HarnessError::Config(format!(
                        "{}: the norm re-fit gave a non-finite weight at column {i}",
                        cx.at(group.name())
                    )));
                }
                out.norm = Some(NormRefit {
                    group: group.name().into(),
                    tensor: NormWeight::hf_tensor_name(group, cx.layer).unwrap_or_default(),
                    weights,
                    scale_min: c.iter().copied().fold(f32::INFINITY, f32::min) as f64,
                    scale_max: c.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64,
                });
                out.col_scale = Some(c);
            }
            RefitItem::RowScale => {
                for (k, m) in members.iter_mut().enumerate() {
                    let (spec, original) = (m.spec, m.original);
                    let stages = &mut *m.stages;
                    with_effective_parts(b, cx, spec, m.pruned, out.col_scale.as_deref(), |w| {
                        closed::row_scale(b, cx, spec, original, w, h, stages)
                    })?;
                    out.linears[k].trained_parameters += m.spec.rows;
                }
            }
            RefitItem::Lora { form, rank } => {
                for (k, m) in members.iter_mut().enumerate() {
                    let spec = m.spec;
                    let (original, mask) = (m.original, m.mask);
                    let stages = &mut *m.stages;
                    let mut result = None;
                    with_effective_parts(b, cx, spec, m.pruned, out.col_scale.as_deref(), |w| {
                        result = Some(lora::train(
                            b,
                            cx,
                            lora::Linear {
                                spec,
                                original,
                                pruned: w,
                                mask,
                            },
                            form,
                            rank,
                            h,
                            tokens,
                            stages,
                        )?);
                        Ok(())
                    })?;
                    let trained = result.expect("trained");
                    let rec = &mut out.linears[k];
                    rec.trained_parameters += rank * (spec.rows + spec.cols);
                    rec.steps += cfg.steps;
                    rec.seconds_per_step = Some(trained.seconds_per_step);
                    rec.lora_loss = Some((trained.first_loss, trained.last_loss));
                }
            }
        }
        for rec in &mut out.linears {
            rec.items.push(item.label());
        }
    }
    for (k, m) in members.iter_mut().enumerate() {
        let rec = &mut out.linears[k];
        rec.error_after = closed::error(b, cx, m, h, out.col_scale.as_deref())?;
        rec.trained_fraction = rec.trained_parameters as f64 / layer_parameters.max(1) as f64;
    }
    Ok(out)
}

/// Runs `work` on the effective weight Ŵ·diag(c) when a norm re-fit has run (a host round trip
/// of the weight, once per item), and stores the result back divided by c.
fn with_effective_parts<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    spec: &LinearSpec,
    pruned: &mut B::Tensor,
    col_scale: Option<&[f32]>,
    work: impl FnOnce(&mut B::Tensor) -> Result<()>,
) -> Result<()> {
    let Some(c) = col_scale else {
        return work(pruned);
    };
    if let Some(j) = c.iter().position(|v| v.abs() < 1e-6) {
        return Err(HarnessError::Config(format!(
            "{}: the norm re-fit scaled column {j} by {}, too close to 0 to re-fit the weights after it",
            cx.at(spec.name),
            c[j]
        )));
    }
    let mut w = b.download(pruned).context(|| cx.at(spec.name))?;
    scale_columns(&mut w, c, false);
    let mut eff = b.upload(&w).context(|| cx.at(spec.name))?;
    work(&mut eff)?;
    let mut w = b.download(&eff).context(|| cx.at(spec.name))?;
    scale_columns(&mut w, c, true);
    *pruned = b.upload(&w).context(|| cx.at(spec.name))?;
    Ok(())
}

/// W·diag(c), or W·diag(1/c) with `divide`.
pub(crate) fn scale_columns(w: &mut Matrix, c: &[f32], divide: bool) {
    let cols = w.cols;
    for row in w.data.chunks_mut(cols.max(1)) {
        for (v, s) in row.iter_mut().zip(c) {
            if divide {
                *v /= s;
            } else {
                *v *= s;
            }
        }
    }
}
