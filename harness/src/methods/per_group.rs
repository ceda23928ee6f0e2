//! A layer run of a per-group method (ALGORITHMS.md §1-§9): per input group, the statistics
//! pass, the method's step over the group's linears, the re-fit, then each linear's
//! evaluation. One group's statistics and linears are on the device at a time, which bounds
//! the peak.

use prunebench_kernels::{Backend, Matrix};
use prunebench_models::config::{InputGroup, LinearSpec};
use prunebench_models::LayerWeights;

use crate::error::{Context, Result};
use crate::prune::assemble::{assemble, GroupDone, LinearDone, RunContext};
use crate::prune::check::check_layer;
use crate::prune::context::{ordered_groups, LayerCx, Ticker};
use crate::prune::evaluate::{evaluate_linear, LinearOnDevice, Pruned};
use crate::prune::memory::{check_memory, Footprint, Scope};
use crate::prune::refit::{refit_group, GroupRefit, Member};
use crate::prune::stages::Stages;
use crate::prune::stats::{self, GroupStats};
use crate::prune::{Calibration, LayerRun, Progress, PruneConfig};

use super::spec::MethodSpec;
use super::step::GroupStep;

/// A fresh step of the method for each group.
pub(crate) type NewStep<'s, B> = &'s dyn Fn() -> Box<dyn GroupStep<B> + 's>;

/// One member linear after the method's step: the original and pruned weights on the device,
/// the method's outcome, and the member's stage times so far.
struct PrunedMember<'l, B: Backend> {
    spec: &'l LinearSpec,
    original: B::Tensor,
    pruned: B::Tensor,
    outcome: Pruned<B::Mask>,
    stages: Stages,
}

/// What the run shares across its groups.
struct Run<'r, B: Backend> {
    b: &'r B,
    cx: LayerCx<'r>,
    layer: &'r LayerWeights,
    calib: &'r Calibration<'r>,
    spec: &'r MethodSpec,
    keep: bool,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn prune_layer<B: Backend>(
    b: &B,
    layer: &LayerWeights,
    calib: &Calibration<'_>,
    cfg: &PruneConfig,
    keep: bool,
    progress: &dyn Fn(Progress<'_>),
    spec: &MethodSpec,
    new_step: NewStep<'_, B>,
) -> Result<LayerRun> {
    let started = std::time::Instant::now();
    let run = Run {
        b,
        cx: LayerCx {
            layer: layer.layer,
            cfg,
        },
        layer,
        calib,
        spec,
        keep,
    };
    check_layer(&run.cx, layer, spec.check_config)?;
    let footprint = Footprint {
        needs: (spec.needs)(cfg),
        scope: Scope::PerGroup,
    };
    check_memory(b, &run.cx, layer, calib, footprint)?;

    let groups = ordered_groups(&layer.linears);
    let samples = calib.source.samples() as u64;
    let total = groups.len() as u64 * samples + layer.linears.len() as u64;
    let mut ticker = Ticker::new(total, progress);
    let (mut group_done, mut linear_done) = (Vec::new(), Vec::new());
    for g in groups {
        let (group, linears) = run.group(g, new_step, &mut ticker)?;
        group_done.push(group);
        linear_done.extend(linears);
    }
    let context = RunContext {
        layer,
        cfg,
        backend: b.info(),
        calib,
        started,
    };
    Ok(assemble(context, group_done, linear_done, None))
}

impl<B: Backend> Run<'_, B> {
    /// One input group: statistics, the method's step on every member, the re-fit, then each
    /// member's evaluation. Every member is pruned before any is evaluated: the re-fit's
    /// `norm` spans them all.
    fn group(
        &self,
        g: InputGroup,
        new_step: NewStep<'_, B>,
        ticker: &mut Ticker<'_>,
    ) -> Result<(GroupDone, Vec<LinearDone>)> {
        let (b, cx) = (self.b, &self.cx);
        let members: Vec<&(LinearSpec, Matrix)> = self
            .layer
            .linears
            .iter()
            .filter(|(l, _)| l.input == g)
            .collect();
        let needs = (self.spec.needs)(cx.cfg);
        let mut stats: GroupStats<B> =
            stats::gather(b, cx, g, &members, needs, self.calib, ticker)?;
        let mut step = new_step();
        step.prepare(b, cx, &mut stats)?;
        let mut pruned = self.prune_members(&members, step.as_mut(), &mut stats)?;
        let refitted = self.refit(g, &mut pruned, &stats)?;
        let linears = self.evaluate_members(pruned, refitted.as_ref(), &stats, ticker)?;
        Ok((
            GroupDone::new(stats, step.dead_columns(), refitted),
            linears,
        ))
    }

    fn prune_members<'l>(
        &self,
        members: &[&'l (LinearSpec, Matrix)],
        step: &mut dyn GroupStep<B>,
        stats: &mut GroupStats<B>,
    ) -> Result<Vec<PrunedMember<'l, B>>> {
        let (b, cx) = (self.b, &self.cx);
        let member_stages = std::mem::take(&mut stats.member_stages);
        let mut out = Vec::with_capacity(members.len());
        for ((i, (l, w)), mut stages) in members.iter().enumerate().zip(member_stages) {
            let original = b.upload(w).context(|| cx.at(l.name))?;
            let mut pruned = b.upload(w).context(|| cx.at(l.name))?;
            let outcome = step.prune_linear(b, cx, stats, (i, l), &mut pruned, &mut stages)?;
            out.push(PrunedMember {
                spec: l,
                original,
                pruned,
                outcome,
                stages,
            });
        }
        Ok(out)
    }

    /// §12 over the group's pruned members, when `--refit` asks for it.
    fn refit(
        &self,
        g: InputGroup,
        pruned: &mut [PrunedMember<'_, B>],
        stats: &GroupStats<B>,
    ) -> Result<Option<GroupRefit>> {
        if self.cx.cfg.refit.items.is_empty() {
            return Ok(None);
        }
        let layer_parameters: usize = self
            .layer
            .linears
            .iter()
            .map(|(l, _)| l.rows * l.cols)
            .sum();
        let mut members: Vec<Member<'_, B>> = pruned
            .iter_mut()
            .map(|m| Member {
                spec: m.spec,
                original: &m.original,
                pruned: &mut m.pruned,
                mask: &m.outcome.mask,
                stages: &mut m.stages,
            })
            .collect();
        let r = refit_group(
            self.b,
            &self.cx,
            g,
            &mut members,
            &stats.hessian,
            self.layer.norm(g),
            self.calib.source.tokens(),
            layer_parameters,
        )?;
        Ok(Some(r))
    }

    fn evaluate_members(
        &self,
        pruned: Vec<PrunedMember<'_, B>>,
        refitted: Option<&GroupRefit>,
        stats: &GroupStats<B>,
        ticker: &mut Ticker<'_>,
    ) -> Result<Vec<LinearDone>> {
        let col_scale = refitted.and_then(|r| r.col_scale.as_deref());
        let mut out = Vec::with_capacity(pruned.len());
        for (k, m) in pruned.into_iter().enumerate() {
            let l = m.spec;
            let linear = LinearOnDevice {
                spec: l,
                original: &m.original,
                pruned: &m.pruned,
                dtype: self.layer.dtype_of(l.name),
                col_scale,
            };
            let evaluated = evaluate_linear(
                self.b,
                &self.cx,
                linear,
                m.outcome,
                &stats.hessian,
                m.stages,
                self.keep,
            )?;
            out.push(LinearDone {
                spec: l.clone(),
                evaluated,
                refit: refitted.map(|r| r.linears[k].clone()),
                kept_shape: None,
                compacted: None,
            });
            ticker.tick(&format!("{}: pruned", l.name));
        }
        Ok(out)
    }
}
