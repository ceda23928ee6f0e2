//! A method's entry in the registry: what the layer run asks of it before and around its own
//! work. Every field has a default, so an entry names only where the method differs.

use prunebench_kernels::suite::{Op, OpCase};
use prunebench_kernels::{MaskGroup, ScoreKind};
use prunebench_models::LayerWeights;

use super::tolerance::{LAYER_MASK_DISAGREEMENT, LAYER_RECON_REL};
use crate::error::Result;
use crate::prune::check::ConfigCheck;
use crate::prune::{LayerReport, Needs, PruneConfig, Scope};

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
    /// How closely a GPU backend's layer must agree with the reference's.
    pub tolerance: LayerTolerance,
    /// The op cases one layer's pruning runs: the bytes and flops of its bench records.
    pub work: fn(&LayerWork<'_>) -> Vec<OpCase>,
}

/// What `verify` holds a method's pruned layer to against the reference.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LayerTolerance {
    /// The fraction of mask entries that may differ; `None`: the kept groups must be the same
    /// (unless the reference's own cut came within the saliency tolerance of a tie).
    pub mask_disagreement: Option<f64>,
    /// The reconstruction error's relative difference.
    pub recon_rel: f64,
}

/// One layer's pruning run, as its work model sees it.
pub(crate) struct LayerWork<'a> {
    pub layer: &'a LayerWeights,
    pub cfg: &'a PruneConfig,
    pub report: &'a LayerReport,
    pub samples: usize,
    pub tokens: usize,
}

impl LayerWork<'_> {
    /// Each linear with whether it is the first of its input group (whose statistics are
    /// gathered once).
    pub fn linears(&self) -> Vec<(bool, LinearWork)> {
        let mut seen = Vec::new();
        self.layer
            .linears
            .iter()
            .map(|(l, _)| {
                let first = !seen.contains(&l.input);
                seen.push(l.input);
                let shape = LinearWork {
                    rows: l.rows,
                    cols: l.cols,
                    tokens: self.tokens,
                };
                (first, shape)
            })
            .collect()
    }
}

/// One linear of a layer's run: its shape and the tokens per sample.
#[derive(Clone, Copy)]
pub(crate) struct LinearWork {
    rows: usize,
    cols: usize,
    tokens: usize,
}

impl LinearWork {
    /// The op on this linear.
    pub fn case(&self, op: Op) -> OpCase {
        OpCase::new(op, self.rows, self.cols).tokens(self.tokens, 1)
    }
}

/// A mask method's layer: per sample the statistics its score needs (the activation norms
/// once per input group, the fused gradient per linear), then one fused prune per linear.
fn mask_method_work(run: &LayerWork<'_>) -> Vec<OpCase> {
    let cfg = run.cfg;
    let (needs, method) = (cfg.needs(), cfg.method);
    let kind = method.score_kind().expect("a mask method has a score");
    let pattern = method.mask_pattern(cfg.sparsity, cfg.group);
    let mut cases = Vec::new();
    for (first, l) in run.linears() {
        if first && needs.act {
            cases.extend(std::iter::repeat_n(l.case(Op::ActStat), run.samples));
        }
        if needs.grads {
            let grad = l.case(Op::GradFused(cfg.grad_norm));
            cases.extend(std::iter::repeat_n(grad, run.samples));
        }
        cases.push(l.case(Op::Prune(kind, pattern)));
    }
    cases
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
        tolerance: LayerTolerance {
            mask_disagreement: Some(LAYER_MASK_DISAGREEMENT),
            recon_rel: LAYER_RECON_REL,
        },
        work: mask_method_work,
    };
}
