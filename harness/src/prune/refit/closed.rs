//! The closed-form re-fits (`norm`, `rowscale`) and the error the stage reports.

use prunebench_kernels::Backend;
use prunebench_models::config::LinearSpec;

use super::member::{scale_columns, Member};
use crate::error::{Context, HarnessError, Result};
use crate::prune::context::LayerCx;
use crate::prune::records::Purpose;
use crate::prune::stages::Stages;

/// The reconstruction error (§9) of the member's effective weight (Ŵ·diag(c) after `norm`).
pub(crate) fn error<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    m: &mut Member<'_, B>,
    h: &B::Tensor,
    col_scale: Option<&[f32]>,
) -> Result<f64> {
    let name = m.spec.name;
    let scaled;
    let w = match col_scale {
        None => &*m.pruned,
        Some(c) => {
            let mut host = b.download(m.pruned).context(|| cx.at(name))?;
            scale_columns(&mut host, c, false);
            scaled = b.upload(&host).context(|| cx.at(name))?;
            &scaled
        }
    };
    let mut recon = None;
    m.stages
        .time(b, "refit_error", Purpose::Evaluate, &mut || {
            recon = Some(b.recon_error(m.original, w, h)?);
            Ok(())
        })
        .context(|| cx.at(name))?;
    let e = recon.expect("recon computed").relative();
    if !e.is_finite() {
        return Err(HarnessError::Config(format!(
            "{}: the re-fitted weights are not finite (the error is {e}); nothing is written",
            cx.at(name)
        )));
    }
    Ok(e)
}

/// §12 `norm`: the column scale c = 1 + δ of the group's norm, δ from the damped system.
pub(crate) fn norm<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    members: &mut [Member<'_, B>],
    h: &B::Tensor,
) -> Result<Vec<f32>> {
    let what = cx.at(members[0].spec.input.name());
    let pairs: Vec<(&B::Tensor, &B::Tensor)> =
        members.iter().map(|m| (&*m.pruned, m.original)).collect();
    let mut system = None;
    let mut stages = Stages::default();
    stages
        .time(b, "norm_system", Purpose::Prune, &mut || {
            system = Some(b.norm_system(&pairs, h)?);
            Ok(())
        })
        .context(|| what.clone())?;
    let (m, rhs) = system.expect("system built");
    let mut delta = None;
    stages
        .time(b, "spd_solve", Purpose::Prune, &mut || {
            delta = Some(b.spd_solve(&m, &rhs, cx.cfg.percdamp)?);
            Ok(())
        })
        .context(|| what.clone())?;
    let delta = b
        .download(&delta.expect("solved"))
        .context(|| what.clone())?;
    members[0].stages.0.extend(stages.0);
    Ok(delta.data.iter().map(|d| 1.0 + d).collect())
}

/// §12 `rowscale` on `w` in place.
pub(crate) fn row_scale<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    spec: &LinearSpec,
    original: &B::Tensor,
    w: &mut B::Tensor,
    h: &B::Tensor,
    stages: &mut Stages,
) -> Result<()> {
    stages
        .time(b, "row_scale", Purpose::Prune, &mut || {
            b.row_scale(w, original, h)?;
            Ok(())
        })
        .context(|| cx.at(spec.name))
}
