//! A method's entry in the registry: what the layer run asks of it before and around its own
//! work. Every field has a default, so an entry names only where the method differs.

use prunebench_kernels::{MaskGroup, ScoreKind};

use crate::error::Result;
use crate::prune::check::ConfigCheck;
use crate::prune::{Needs, PruneConfig, Scope};

pub(crate) struct MethodSpec {
    /// The statistics the pass gathers for the method under a configuration (structured
    /// pruning's depend on its saliency).
    pub needs: fn(&PruneConfig) -> Needs,
    /// The score a mask method ranks by; SparseGPT selects inside its OBS loop and structured
    /// pruning ranks whole groups, so neither has one.
    pub score: Option<ScoreKind>,
    /// The comparison group of unstructured masks: the papers' repositories compare within
    /// each output row for Wanda and GBLM, and over the whole matrix for magnitude.
    pub default_group: MaskGroup,
    /// The method's own configuration check, before any work.
    pub check_config: ConfigCheck,
    /// Whether the method runs per input group or over the whole layer.
    pub scope: Scope,
}

fn no_check(_: &PruneConfig) -> Result<()> {
    Ok(())
}

impl MethodSpec {
    pub const DEFAULT: MethodSpec = MethodSpec {
        needs: |_| Needs::DEFAULT,
        score: None,
        default_group: MaskGroup::PerRow,
        check_config: no_check,
        scope: Scope::PerGroup,
    };
}
