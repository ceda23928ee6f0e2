//! The evaluation after a method's step (ALGORITHMS.md §9): each linear's reconstruction
//! error against the group's H, its achieved sparsity, and its record. The error is that of
//! the weights as the layer's dtype stores them, since that is what `--out` writes and what a
//! user then runs; a bf16 checkpoint's rounding of SparseGPT's updates moves it by up to 1%.

use prunebench_kernels::{Backend, Mask, Matrix};
use prunebench_models::config::LinearSpec;
use prunebench_models::DType;

use crate::error::{Context, HarnessError, Result};

use super::context::LayerCx;
use super::records::{LinearReport, Purpose};
use super::refit::scale_columns;
use super::stages::Stages;

/// What a method leaves for one linear: the device mask of pruned entries and, for OBS, the
/// summed loss.
pub(crate) struct Pruned<M> {
    pub mask: M,
    pub obs_loss: Option<f64>,
}

/// A linear's record, and its pruned weights (as written) and mask when the caller keeps them.
pub(crate) struct Evaluated {
    pub report: LinearReport,
    pub kept: Option<(Matrix, Mask)>,
}

pub(crate) struct LinearOnDevice<'t, B: Backend> {
    pub spec: &'t LinearSpec,
    pub original: &'t B::Tensor,
    pub pruned: &'t B::Tensor,
    /// The dtype the weights are stored in.
    pub dtype: DType,
    /// The column scale c of a `norm` re-fit: the layer computes with Ŵ·diag(c), so that is
    /// what is measured, while Ŵ is what is written.
    pub col_scale: Option<&'t [f32]>,
}

pub(crate) fn evaluate_linear<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    linear: LinearOnDevice<'_, B>,
    outcome: Pruned<B::Mask>,
    h: &B::Tensor,
    mut stages: Stages,
    keep: bool,
) -> Result<Evaluated> {
    let l = linear.spec;
    let recon = |w: &B::Tensor, stages: &mut Stages| -> Result<f64> {
        let mut recon = None;
        stages
            .time(b, "recon_error", Purpose::Evaluate, &mut || {
                recon = Some(b.recon_error(linear.original, w, h)?);
                Ok(())
            })
            .context(|| cx.at(l.name))?;
        Ok(recon.expect("recon computed").relative())
    };
    let (recon_error, recon_error_f32, written) = if let Some(c) = linear.col_scale {
        let mut w = b.download(linear.pruned).context(|| cx.at(l.name))?;
        check_in_range(cx, l, linear.dtype, &w.data)?;
        linear.dtype.round_trip(&mut w.data);
        let mut effective = w.clone();
        scale_columns(&mut effective, c, false);
        let on_device = b.upload(&effective).context(|| cx.at(l.name))?;
        (recon(&on_device, &mut stages)?, None, Some(w))
    } else if linear.dtype == DType::F32 {
        (recon(linear.pruned, &mut stages)?, None, None)
    } else {
        let mut w = b.download(linear.pruned).context(|| cx.at(l.name))?;
        check_in_range(cx, l, linear.dtype, &w.data)?;
        linear.dtype.round_trip(&mut w.data);
        let on_device = b.upload(&w).context(|| cx.at(l.name))?;
        let f32_error = recon(linear.pruned, &mut stages)?;
        (recon(&on_device, &mut stages)?, Some(f32_error), Some(w))
    };
    let mask = b.download_mask(&outcome.mask).context(|| cx.at(l.name))?;
    let pruned = mask.count();
    let kept = match (keep, written) {
        (false, _) => None,
        (true, Some(w)) => Some((w, mask)),
        (true, None) => Some((b.download(linear.pruned).context(|| cx.at(l.name))?, mask)),
    };
    Ok(Evaluated {
        report: LinearReport {
            name: l.name.to_string(),
            group: l.input.name().to_string(),
            rows: l.rows,
            cols: l.cols,
            pruned,
            sparsity: pruned as f64 / (l.rows * l.cols) as f64,
            recon_error,
            recon_error_f32,
            obs_loss: outcome.obs_loss,
            refit: None,
            kept_shape: None,
            stages: stages.0,
        },
        kept,
    })
}

/// A weight the method moved beyond the dtype's range (SparseGPT's updates on f16 weights near
/// 65504) would be stored as Inf: the layer cannot be written or measured, so it is refused
/// with the position, rather than reported with an infinite error.
fn check_in_range(cx: &LayerCx<'_>, l: &LinearSpec, dtype: DType, values: &[f32]) -> Result<()> {
    let Some(i) = dtype.first_out_of_range(values) else {
        return Ok(());
    };
    Err(HarnessError::Config(format!(
        "{}: tensor {}: the pruned weight {} at row {}, column {} is beyond the range of {} (it would be stored as Inf)",
        cx.at(l.name),
        l.hf_tensor_name(cx.layer),
        values[i],
        i / l.cols,
        i % l.cols,
        dtype.name()
    )))
}
