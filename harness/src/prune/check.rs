//! What every method's layer run refuses before any work: shapes, sparsity and finiteness of
//! the weights, the method's own configuration, and the re-fit's options.

use prunebench_models::LayerWeights;

use crate::error::{Context, HarnessError, Result};

use super::context::LayerCx;
use super::records::PruneConfig;

/// A method's own configuration check, from its registry entry.
pub(crate) type ConfigCheck = fn(&PruneConfig) -> Result<()>;

pub(crate) fn check_layer(
    cx: &LayerCx<'_>,
    layer: &LayerWeights,
    check_config: ConfigCheck,
) -> Result<()> {
    let cfg = cx.cfg;
    cfg.sparsity.validate().context(|| cx.at("sparsity"))?;
    for (l, w) in &layer.linears {
        if w.shape() != (l.rows, l.cols) {
            return Err(HarnessError::Config(format!(
                "layer {} {}: weight is {}x{}, the model says {}x{}",
                layer.layer, l.name, w.rows, w.cols, l.rows, l.cols
            )));
        }
        cfg.sparsity.check_shape(l.cols).context(|| cx.at(l.name))?;
        w.check_finite(&format!("{} weight", l.name))
            .context(|| cx.at(l.name))?;
    }
    check_config(cfg)?;
    cfg.refit.check(layer)?;
    Ok(())
}
