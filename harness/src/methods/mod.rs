//! The method registry: one module per pruning method, each with its entry ([`MethodSpec`]:
//! what it needs, its score, its default comparison group, its configuration check, and
//! whether it runs per input group or over the whole layer), and the layer run that
//! dispatches on it. The methods build on the layer toolkit (`crate::prune`), which knows
//! none of them.

pub(crate) mod gblm;
pub(crate) mod magnitude;
mod per_group;
pub(crate) mod sparsegpt;
mod spec;
mod step;
pub mod structured;
pub mod tolerance;
pub(crate) mod wanda;

use prunebench_kernels::{Backend, MaskGroup, MaskPattern, ScoreKind, Sparsity};
use prunebench_models::LayerWeights;

use crate::error::Result;
use crate::method::Method;
use crate::prune::context::LayerCx;
use crate::prune::memory::{check_memory, working_set, Footprint, Scope};
use crate::prune::{Calibration, LayerRun, Needs, Progress, PruneConfig};

pub(crate) use spec::{LayerWork, MethodSpec};
use step::GroupStep;

/// The registry entry of `method`.
pub(crate) fn spec(method: Method) -> &'static MethodSpec {
    match method {
        Method::Magnitude => &magnitude::SPEC,
        Method::Wanda => &wanda::SPEC,
        Method::Gblm => &gblm::SPEC,
        Method::Sparsegpt => &sparsegpt::SPEC,
        Method::Structured => &structured::SPEC,
    }
}

/// What `verify` holds the method's layer to.
pub(crate) fn tolerance_of(method: Method) -> spec::LayerTolerance {
    spec(method).tolerance
}

/// The op cases of one layer's pruning run: its bench records' bytes and flops.
pub(crate) fn layer_work(run: &spec::LayerWork<'_>) -> Vec<prunebench_kernels::suite::OpCase> {
    (spec(run.cfg.method).work)(run)
}

/// The step of a per-group method, fresh for each group; a whole-layer method has none.
fn group_step<'s, B: Backend + 's>(method: Method) -> Option<Box<dyn GroupStep<B> + 's>> {
    match method {
        Method::Magnitude => Some(Box::new(magnitude::Magnitude)),
        Method::Wanda => Some(Box::new(wanda::Wanda)),
        Method::Gblm => Some(Box::new(gblm::Gblm)),
        Method::Sparsegpt => Some(Box::new(sparsegpt::SparseGpt::<B>::default())),
        Method::Structured => None,
    }
}

impl Method {
    /// The score a mask-based method ranks by (see [`MethodSpec::score`]).
    pub fn score_kind(&self) -> Option<ScoreKind> {
        spec(*self).score
    }

    /// The comparison group of unstructured masks (see [`MethodSpec::default_group`]).
    pub fn default_group(&self) -> MaskGroup {
        spec(*self).default_group
    }

    pub fn mask_pattern(&self, sparsity: Sparsity, group: Option<MaskGroup>) -> MaskPattern {
        MaskPattern::new(sparsity, group.unwrap_or(self.default_group()))
    }

    /// Whether the method runs per input group or over the whole layer.
    pub fn scope(&self) -> Scope {
        spec(*self).scope
    }
}

impl PruneConfig {
    /// The statistics this configuration's method needs.
    pub fn needs(&self) -> Needs {
        (spec(self.method).needs)(self)
    }

    fn footprint(&self) -> Footprint {
        Footprint {
            needs: self.needs(),
            scope: self.method.scope(),
        }
    }
}

/// Device bytes the layer needs at its peak: one input group's statistics and linears at a
/// time, or every group's for a whole-layer method.
pub fn working_set_bytes(layer: &LayerWeights, cfg: &PruneConfig, tokens: usize) -> u64 {
    working_set(layer, cfg, cfg.footprint(), tokens)
}

/// Prunes every linear of `layer` with `cfg` on backend `b`. `keep` asks for the pruned
/// weights back on the host (for writing or verification).
pub fn prune_layer<B: Backend>(
    b: &B,
    layer: &LayerWeights,
    calib: &Calibration<'_>,
    cfg: &PruneConfig,
    keep: bool,
    progress: &dyn Fn(Progress<'_>),
) -> Result<LayerRun> {
    let spec = spec(cfg.method);
    match spec.scope {
        Scope::PerGroup => {
            let new_step = || group_step::<B>(cfg.method).expect("a per-group method's step");
            per_group::prune_layer(b, layer, calib, cfg, keep, progress, spec, &new_step)
        }
        Scope::WholeLayer => {
            // The memory check comes first here: the whole-layer run checks its
            // configuration and the layer's shapes against its own geometry.
            let cx = LayerCx {
                layer: layer.layer,
                cfg,
            };
            check_memory(b, &cx, layer, calib, cfg.footprint())?;
            structured::prune_layer(b, layer, calib, cfg, keep, progress)
        }
    }
}
