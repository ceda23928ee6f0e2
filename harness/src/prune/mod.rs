//! A whole LLaMA decoder layer pruned by one method on one backend (ALGORITHMS.md §1-§9), as
//! three steps, each in a module of its own:
//! 1. the statistics pass (`stats`): per input group, one pass over the calibration samples
//!    gathers what the method declares it needs (each shared input's statistics once);
//! 2. the method's step (`crate::methods`, one module per method) over the group's linears;
//! 3. the evaluation (`evaluate`): each linear's reconstruction error against the same H.
//!
//! One group's statistics and linears are on the device at a time, which bounds the peak.

pub(crate) mod context;
pub(crate) mod evaluate;
pub(crate) mod records;
pub(crate) mod stages;
pub(crate) mod stats;

use records::RunContext;
pub use records::{
    Calibration, GroupReport, LayerReport, LayerRun, LinearReport, Progress, PruneConfig, Purpose,
    StageTime,
};

use prunebench_kernels::{Backend, Matrix};
use prunebench_models::config::{InputGroup, LinearSpec};
use prunebench_models::LayerWeights;

use crate::error::{Context, HarnessError, Result};
use crate::method::Method;
use crate::methods::{group_step, sparsegpt};
use crate::refit::{refit_group, Member};

use context::{LayerCx, Ticker};
use evaluate::{evaluate_linear, LinearOnDevice};
use stats::GroupStats;

fn ordered_groups(linears: &[(LinearSpec, Matrix)]) -> Vec<InputGroup> {
    let mut groups: Vec<InputGroup> = Vec::new();
    for (l, _) in linears {
        if !groups.contains(&l.input) {
            groups.push(l.input);
        }
    }
    groups
}

/// Device bytes the layer needs at its peak: one input group's statistics and linears at a time.
pub fn working_set_bytes(layer: &LayerWeights, cfg: &PruneConfig, tokens: usize) -> u64 {
    let f = 4u64;
    let structured = cfg.method == Method::Structured;
    let per_group = ordered_groups(&layer.linears).into_iter().map(|g| {
        let ls: Vec<&LinearSpec> = layer
            .linears
            .iter()
            .map(|(l, _)| l)
            .filter(|l| l.input == g)
            .collect();
        let cols = ls.first().map_or(0, |l| l.cols) as u64;
        let factor = if cfg.needs().hessian { 2 } else { 1 };
        let group = f * (factor * cols * cols + cols + tokens as u64 * cols);
        let grads: u64 = if cfg.needs().grads || cfg.needs().mean_grad {
            ls.iter().map(|l| f * (l.rows * l.cols) as u64).sum()
        } else {
            0
        };
        // Original and pruned W of every member (all are pruned before the evaluation),
        // plus a score matrix for one at a time; a re-fit adds Δ, ΔH and Ḡ per linear.
        let resident: u64 = ls.iter().map(|l| f * 2 * (l.rows * l.cols) as u64).sum();
        let refit = if cfg.refit.items.is_empty() { 0 } else { 3 };
        let per_linear = ls
            .iter()
            .map(|l| f * ((1 + refit) * l.rows * l.cols + tokens * l.rows) as u64)
            .max()
            .unwrap_or(0);
        // Structured pruning also holds the consumer's explicit Hinv.
        let hinv = if structured && matches!(g, InputGroup::AttnOut | InputGroup::MlpAct) {
            f * cols * cols
        } else {
            0
        };
        group + grads + resident + per_linear + hinv
    });
    // Structured pruning keeps every group's statistics until the whole layer is planned.
    if structured {
        per_group.sum()
    } else {
        per_group.max().unwrap_or(0)
    }
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
    if cfg.method == Method::Structured {
        let cx = LayerCx {
            layer: layer.layer,
            cfg,
        };
        check_memory(b, &cx, layer, calib)?;
        return crate::methods::structured::prune_layer(b, layer, calib, cfg, keep, progress);
    }
    let t_wall = std::time::Instant::now();
    let cx = LayerCx {
        layer: layer.layer,
        cfg,
    };
    check_layer(&cx, layer)?;
    check_memory(b, &cx, layer, calib)?;

    let groups = ordered_groups(&layer.linears);
    let samples = calib.source.samples() as u64;
    let total = groups.len() as u64 * samples + layer.linears.len() as u64;
    let mut ticker = Ticker::new(total, progress);
    let mut group_reports = Vec::new();
    let mut linear_reports = Vec::new();
    let (mut pruned_out, mut masks) = (Vec::new(), Vec::new());

    let layer_parameters: usize = layer.linears.iter().map(|(l, _)| l.rows * l.cols).sum();
    let mut norms_out = Vec::new();
    for g in groups {
        let members: Vec<&(LinearSpec, Matrix)> =
            layer.linears.iter().filter(|(l, _)| l.input == g).collect();
        let mut stats: GroupStats<B> =
            stats::gather(b, &cx, g, &members, cfg.needs(), calib, &mut ticker)?;
        let mut step = group_step::<B>(cfg.method);
        step.prepare(b, &cx, &mut stats)?;
        let member_stages = std::mem::take(&mut stats.member_stages);
        // Every member is pruned before any is evaluated: the re-fit's `norm` spans them all.
        let mut done_members = Vec::new();
        for ((i, (l, w)), mut stages) in members.iter().enumerate().zip(member_stages) {
            let original = b.upload(w).context(|| cx.at(l.name))?;
            let mut wt = b.upload(w).context(|| cx.at(l.name))?;
            let outcome = step.prune_linear(b, &cx, &stats, (i, l), &mut wt, &mut stages)?;
            done_members.push((l, original, wt, outcome, stages));
        }
        let refitted = if cfg.refit.items.is_empty() {
            None
        } else {
            let mut refit_members: Vec<Member<'_, B>> = done_members
                .iter_mut()
                .map(|(l, original, wt, outcome, stages)| Member {
                    spec: l,
                    original,
                    pruned: wt,
                    mask: &outcome.mask,
                    stages,
                })
                .collect();
            Some(refit_group(
                b,
                &cx,
                g,
                &mut refit_members,
                &stats.hessian,
                layer.norm(g),
                calib.source.tokens(),
                layer_parameters,
            )?)
        };
        let col_scale = refitted.as_ref().and_then(|r| r.col_scale.clone());
        let mut linear_refits = refitted.as_ref().map(|r| r.linears.clone());
        for (k, (l, original, wt, outcome, stages)) in done_members.into_iter().enumerate() {
            let linear = LinearOnDevice {
                spec: l,
                original: &original,
                pruned: &wt,
                dtype: layer.dtype_of(l.name),
                col_scale: col_scale.as_deref(),
            };
            let mut done = evaluate_linear(b, &cx, linear, outcome, &stats.hessian, stages, keep)?;
            done.report.refit = linear_refits.as_mut().map(|r| r[k].clone());
            if let Some((w, mask)) = done.kept {
                pruned_out.push(((*l).clone(), w));
                masks.push(mask);
            }
            linear_reports.push(done.report);
            ticker.tick(&format!("{}: pruned", l.name));
        }
        let (norm_refit, refit_skipped) = match refitted {
            Some(r) => (r.norm, r.skipped),
            None => (None, Vec::new()),
        };
        if let (Some(n), Some(orig)) = (&norm_refit, layer.norm(g)) {
            norms_out.push(prunebench_models::NormWeight {
                group: g,
                data: n.weights.clone(),
                dtype: orig.dtype,
            });
        }
        group_reports.push(GroupReport {
            group: g.name().to_string(),
            cols: stats.cols,
            samples: calib.source.samples(),
            tokens: calib.source.tokens(),
            ready: stats.ready,
            stages: stats.stages.0,
            dead_columns: step.dead_columns(),
            norm_refit,
            refit_skipped,
        });
    }

    let report = LayerReport::assemble(
        RunContext {
            layer,
            cfg,
            backend: b.info(),
            calibration: calib.source.describe(),
            started: t_wall,
        },
        group_reports,
        linear_reports,
        None,
    );
    Ok(LayerRun {
        report,
        pruned: pruned_out,
        masks,
        norms: norms_out,
        compacted: Vec::new(),
    })
}

/// Shapes, sparsity and finiteness of the weights, and the method's own configuration, all
/// before any work.
pub(crate) fn check_layer(cx: &LayerCx<'_>, layer: &LayerWeights) -> Result<()> {
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
    if cfg.method == Method::Sparsegpt {
        sparsegpt::check_config(cfg)?;
    }
    cfg.refit.check(layer)?;
    Ok(())
}

/// Refuses a layer whose working set exceeds the backend's memory, before any work.
fn check_memory<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    layer: &LayerWeights,
    calib: &Calibration<'_>,
) -> Result<()> {
    let Some(budget) = b.memory_budget() else {
        return Ok(());
    };
    let src = calib.source;
    let need = working_set_bytes(layer, cx.cfg, src.tokens());
    if need <= budget {
        return Ok(());
    }
    Err(HarnessError::Kernel {
        context: cx.at("memory check"),
        error: prunebench_kernels::KernelError::OutOfMemory {
            what: format!(
                "pruning {} with {} ({} samples x {} tokens)",
                layer.model.name,
                cx.cfg.method,
                src.samples(),
                src.tokens()
            ),
            needed: need,
            available: budget,
        },
    })
}
