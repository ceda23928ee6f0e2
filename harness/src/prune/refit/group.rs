//! The re-fit stage over one input group's pruned members: the configured items in order.

use prunebench_kernels::Backend;
use prunebench_models::config::LinearSpec;
use prunebench_models::{InputGroup, NormWeight};

use crate::error::{Context, HarnessError, Result};
use crate::prune::context::LayerCx;
use crate::prune::records::refit::{LinearRefit, NormRefit, RefitItem};

use super::member::{scale_columns, Member};
use super::{closed, lora};

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
