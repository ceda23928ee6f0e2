//! One assembly of a layer run for both paths, per input group and over the whole layer: the
//! group and linear records, the layer's record with its device time summed per purpose, and
//! the outputs the caller keeps (pruned weights, masks, re-fitted norms, compacted weights).

use prunebench_kernels::{Backend, Matrix};
use prunebench_models::config::{InputGroup, LinearSpec};
use prunebench_models::{LayerWeights, NormWeight};

use super::evaluate::Evaluated;
use super::records::structured_report::StructuredReport;
use super::records::{
    Calibration, GroupReport, LayerReport, LayerRun, LinearReport, PruneConfig, Purpose,
};
use super::refit::{GroupRefit, LinearRefit, NormRefit};
use super::stages::Stages;
use super::stats::GroupStats;

/// What every layer run reports beside its groups and linears.
pub(crate) struct RunContext<'a> {
    pub layer: &'a LayerWeights,
    pub cfg: &'a PruneConfig,
    pub backend: &'a prunebench_kernels::BackendInfo,
    pub calib: &'a Calibration<'a>,
    pub started: std::time::Instant,
}

/// One input group's part of the run, as either path leaves it.
pub(crate) struct GroupDone {
    group: InputGroup,
    cols: usize,
    ready: Vec<String>,
    stages: Stages,
    dead_columns: usize,
    norm_refit: Option<NormRefit>,
    refit_skipped: Vec<String>,
}

impl GroupDone {
    /// The group's statistics (their stage times and what came ready), the columns its method
    /// found dead, and what the re-fit did to it.
    pub fn new<B: Backend>(
        stats: GroupStats<B>,
        dead_columns: usize,
        refit: Option<GroupRefit>,
    ) -> Self {
        let (norm_refit, refit_skipped) = match refit {
            Some(r) => (r.norm, r.skipped),
            None => (None, Vec::new()),
        };
        GroupDone {
            group: stats.group,
            cols: stats.cols,
            ready: stats.ready,
            stages: stats.stages,
            dead_columns,
            norm_refit,
            refit_skipped,
        }
    }
}

/// One linear's part of the run.
pub(crate) struct LinearDone {
    pub spec: LinearSpec,
    pub evaluated: Evaluated,
    pub refit: Option<LinearRefit>,
    /// A whole-layer run's compacted shape, and the compacted weight when kept.
    pub kept_shape: Option<[usize; 2]>,
    pub compacted: Option<(LinearSpec, Matrix)>,
}

/// The layer's record and outputs, groups and linears in the order the run left them.
pub(crate) fn assemble(
    run: RunContext<'_>,
    groups: Vec<GroupDone>,
    linears: Vec<LinearDone>,
    structured: Option<StructuredReport>,
) -> LayerRun {
    let norms = refitted_norms(run.layer, &groups);
    let group_reports = groups
        .into_iter()
        .map(|g| group_report(g, run.calib))
        .collect();
    let (mut pruned, mut masks, mut compacted) = (Vec::new(), Vec::new(), Vec::new());
    let mut linear_reports = Vec::with_capacity(linears.len());
    for l in linears {
        let mut report = l.evaluated.report;
        report.refit = l.refit;
        report.kept_shape = l.kept_shape;
        if let Some((w, mask)) = l.evaluated.kept {
            pruned.push((l.spec, w));
            masks.push(mask);
        }
        compacted.extend(l.compacted);
        linear_reports.push(report);
    }
    LayerRun {
        report: layer_report(run, group_reports, linear_reports, structured),
        pruned,
        masks,
        norms,
        compacted,
    }
}

/// The RMSNorm weights a `norm` re-fit rescaled, in the dtype they came in.
fn refitted_norms(layer: &LayerWeights, groups: &[GroupDone]) -> Vec<NormWeight> {
    groups
        .iter()
        .filter_map(|g| {
            let (n, orig) = (g.norm_refit.as_ref()?, layer.norm(g.group)?);
            Some(NormWeight {
                group: g.group,
                data: n.weights.clone(),
                dtype: orig.dtype,
            })
        })
        .collect()
}

fn group_report(g: GroupDone, calib: &Calibration<'_>) -> GroupReport {
    GroupReport {
        group: g.group.name().to_string(),
        cols: g.cols,
        samples: calib.source.samples(),
        tokens: calib.source.tokens(),
        ready: g.ready,
        stages: g.stages.0,
        dead_columns: g.dead_columns,
        norm_refit: g.norm_refit,
        refit_skipped: g.refit_skipped,
    }
}

/// The layer's record, the device time summed per purpose over every group and linear stage.
fn layer_report(
    run: RunContext<'_>,
    groups: Vec<GroupReport>,
    linears: Vec<LinearReport>,
    structured: Option<StructuredReport>,
) -> LayerReport {
    let sum = |p: Purpose| -> f64 {
        groups
            .iter()
            .flat_map(|g| g.stages.iter())
            .chain(linears.iter().flat_map(|l| l.stages.iter()))
            .filter(|s| s.purpose == p)
            .map(|s| s.seconds)
            .fold(0.0, |a, b| a + b)
    };
    LayerReport {
        model: run.layer.model.name.clone(),
        layer: run.layer.layer,
        method: run.cfg.method,
        sparsity: run.cfg.sparsity.to_string(),
        backend: run.backend.clone(),
        calibration: run.calib.source.describe(),
        prune_seconds: sum(Purpose::Prune),
        evaluate_seconds: sum(Purpose::Evaluate),
        groups,
        linears,
        wall_seconds: run.started.elapsed().as_secs_f64(),
        structured,
    }
}
