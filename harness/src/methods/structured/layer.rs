//! A structured layer run on one backend: the statistics of both blocks, the plan, the greedy
//! rounds of removal and compensation per block (`block`), then each linear's re-fit,
//! evaluation and compacted weights, assembled as every method's run is.

use prunebench_kernels::{Backend, Matrix};
use prunebench_models::config::{InputGroup, LinearSpec};
use prunebench_models::LayerWeights;

use crate::error::{Context, HarnessError, Result};
use crate::prune::assemble::{assemble, GroupDone, LinearDone, RunContext};
use crate::prune::check::check_layer;
use crate::prune::context::{LayerCx, Ticker};
use crate::prune::evaluate::{evaluate_linear, LinearOnDevice, Pruned};
use crate::prune::records::structured::{Compensate, Saliency, StructuredConfig};
use crate::prune::refit::{refit_group, GroupRefit, Member};
use crate::prune::stages::Stages;
use crate::prune::{Calibration, LayerRun, Progress, PruneConfig, Purpose};

use super::block::{column_mask, find, row_mask, Block};
use super::geometry::{complement, Geometry, Kind};
use super::select::{self, Plan};
use super::spec::check_config;
use super::summary::{structured_report, Removals};

/// Everything that can be refused before any work.
fn check(
    cx: &LayerCx<'_>,
    layer: &LayerWeights,
    calib: &Calibration<'_>,
    geom: &Geometry,
) -> Result<()> {
    let cfg = cx.cfg;
    let s = &cfg.structured;
    check_config(cfg)?;
    let fraction = cfg.sparsity.fraction();
    for kind in [Kind::Attn, Kind::Ffn] {
        let (producers, consumer) = kind.linears();
        for name in producers.iter().chain(std::iter::once(&consumer)) {
            find(layer, name)?;
        }
    }
    // Shapes, finiteness and the re-fit options, as for every method; the method's own
    // configuration was checked first, before the linears were looked up.
    check_layer(cx, layer, |_| Ok(()))?;
    if !geom.heads.is_multiple_of(geom.kv_heads) {
        return Err(HarnessError::Config(format!(
            "{} heads do not split into {} KV groups",
            geom.heads, geom.kv_heads
        )));
    }
    select::check(geom, s, fraction)?;
    if let Saliency::Taylor(k) = s.saliency {
        if !calib.source.has_output_grads() && !calib.has_grad_sums() {
            return Err(HarnessError::Config(format!(
                "--saliency {} needs output gradients (dY) of every linear, and the calibration \
                 ({}) has none: use --saliency obs, or a calibration with gradients",
                k.name(),
                calib.source.describe()
            )));
        }
    }
    Ok(())
}

/// Each input group's re-fit, in the order of the cuts.
type GroupRefits = Vec<(InputGroup, GroupRefit)>;

/// What the run shares across both blocks.
struct Run<'r, B: Backend> {
    b: &'r B,
    cx: LayerCx<'r>,
    layer: &'r LayerWeights,
    calib: &'r Calibration<'r>,
    geom: Geometry,
    keep: bool,
}

pub(crate) fn prune_layer<B: Backend>(
    b: &B,
    layer: &LayerWeights,
    calib: &Calibration<'_>,
    cfg: &PruneConfig,
    keep: bool,
    progress: &dyn Fn(Progress<'_>),
) -> Result<LayerRun> {
    let started = std::time::Instant::now();
    let s: &StructuredConfig = &cfg.structured;
    let run = Run {
        b,
        cx: LayerCx {
            layer: layer.layer,
            cfg,
        },
        layer,
        calib,
        geom: Geometry::new(&layer.model, s.attn_unit),
        keep,
    };
    check(&run.cx, layer, calib, &run.geom)?;

    let samples = calib.source.samples() as u64;
    let mut ticker = Ticker::new(4 * samples + 7, progress);
    let (mut attn, mut ffn) = run.remove_groups(&mut ticker)?;
    let mut linears = Vec::new();
    let mut refits: GroupRefits = Vec::new();
    for block in [&mut attn, &mut ffn] {
        let (done, block_refits) = run.finish_block(block, &mut ticker)?;
        linears.extend(done);
        refits.extend(block_refits);
    }
    let removals = Removals {
        attn: attn.removed.clone(),
        ffn: ffn.removed.clone(),
        obs_loss: (s.compensate == Compensate::Obs).then_some(attn.loss + ffn.loss),
        rounds_run: vec![
            (Kind::Attn.name().to_string(), attn.rounds_run),
            (Kind::Ffn.name().to_string(), ffn.rounds_run),
        ],
        margins: vec![
            (Kind::Attn.name().to_string(), attn.margin),
            (Kind::Ffn.name().to_string(), ffn.margin),
        ],
    };
    let structured = structured_report(&run.geom, s, layer.layer, removals);
    let groups = groups_done([attn, ffn], refits);
    let context = RunContext {
        layer,
        cfg,
        backend: b.info(),
        calib,
        started,
    };
    Ok(assemble(context, groups, linears, Some(structured)))
}

/// Each block's producer and consumer groups, in that order, with the re-fit each had.
fn groups_done<B: Backend>(blocks: [Block<'_, B>; 2], mut refits: GroupRefits) -> Vec<GroupDone> {
    let mut out = Vec::new();
    for block in blocks {
        for (stats, dead) in [(block.p_stats, 0), (block.c_stats, block.dead)] {
            let refit = refits
                .iter()
                .position(|(g, _)| *g == stats.group)
                .map(|i| refits.remove(i).1);
            out.push(GroupDone::new(stats, dead, refit));
        }
    }
    out
}

impl<'l, B: Backend> Run<'l, B> {
    /// Both blocks' statistics, the plan from their first scores, then the rounds of removal.
    fn remove_groups(&self, ticker: &mut Ticker<'_>) -> Result<(Block<'l, B>, Block<'l, B>)> {
        let (b, cx, geom) = (self.b, &self.cx, &self.geom);
        let mut attn = Block::gather(b, cx, self.layer, Kind::Attn, self.calib, ticker)?;
        let mut ffn = Block::gather(b, cx, self.layer, Kind::Ffn, self.calib, ticker)?;
        let all_attn: Vec<usize> = (0..geom.groups(Kind::Attn)).collect();
        let all_ffn: Vec<usize> = (0..geom.groups(Kind::Ffn)).collect();
        let s_attn = attn.scores(b, cx, geom, &all_attn)?;
        let s_ffn = ffn.scores(b, cx, geom, &all_ffn)?;
        let s = &cx.cfg.structured;
        let plan: Plan = select::plan(geom, s, cx.cfg.sparsity.fraction(), &s_ffn, &s_attn);
        attn.remove(b, cx, geom, plan.attn, s_attn)?;
        ffn.remove(b, cx, geom, plan.ffn, s_ffn)?;
        Ok((attn, ffn))
    }

    /// A removed block's linears cut, re-fitted, evaluated and compacted.
    fn finish_block(
        &self,
        block: &mut Block<'_, B>,
        ticker: &mut Ticker<'_>,
    ) -> Result<(Vec<LinearDone>, GroupRefits)> {
        let mut cuts = cut_block(self.b, &self.cx, &self.geom, block)?;
        let mut all_stages: Vec<Stages> = cuts.iter().map(|_| Stages::default()).collect();
        let refits = refit_cuts(
            self.b,
            &self.cx,
            self.layer,
            &mut cuts,
            &mut all_stages,
            self.calib,
        )?;
        // Each cut's place among its group's members, the order `refit_cuts` gave them.
        let member: Vec<usize> = (0..cuts.len())
            .map(|i| {
                let g = cuts[i].spec.input;
                cuts[..i].iter().filter(|c| c.spec.input == g).count()
            })
            .collect();
        let mut done = Vec::with_capacity(cuts.len());
        for ((cut, stages), member) in cuts.into_iter().zip(all_stages).zip(member) {
            let name = cut.spec.name;
            let refit = refits
                .iter()
                .find(|(g, _)| *g == cut.spec.input)
                .map(|(_, r)| r);
            done.push(self.finish_cut(cut, stages, refit, member)?);
            ticker.tick(&format!("{name}: pruned"));
        }
        Ok((done, refits))
    }

    /// One cut linear: compacted when the weights are kept, evaluated, and its record.
    fn finish_cut(
        &self,
        cut: Cut<'_, B>,
        mut stages: Stages,
        refit: Option<&GroupRefit>,
        member: usize,
    ) -> Result<LinearDone> {
        let (b, cx) = (self.b, &self.cx);
        let l = cut.spec;
        let linear = LinearOnDevice {
            spec: l,
            original: cut.original,
            pruned: &cut.masked,
            dtype: self.layer.dtype_of(l.name),
            col_scale: refit.and_then(|r| r.col_scale.as_deref()),
        };
        let outcome = Pruned {
            mask: cut.mask,
            obs_loss: cut.obs_loss,
        };
        let mut small = None;
        if self.keep {
            stages
                .time(b, "compact", Purpose::Prune, &mut || {
                    small = Some(b.compact(
                        &cut.masked,
                        cut.kept_rows.as_deref(),
                        cut.kept_cols.as_deref(),
                    )?);
                    Ok(())
                })
                .context(|| cx.at(l.name))?;
        }
        let evaluated = evaluate_linear(b, cx, linear, outcome, cut.h, stages, self.keep)?;
        let shape = (
            cut.kept_rows.as_ref().map_or(l.rows, Vec::len),
            cut.kept_cols.as_ref().map_or(l.cols, Vec::len),
        );
        let compacted = match (&evaluated.kept, small) {
            (Some(_), Some(small)) => {
                let mut m: Matrix = b.download(&small).context(|| cx.at(l.name))?;
                self.layer.dtype_of(l.name).round_trip(&mut m.data);
                let spec = LinearSpec {
                    rows: shape.0,
                    cols: shape.1,
                    ..l.clone()
                };
                Some((spec, m))
            }
            _ => None,
        };
        Ok(LinearDone {
            spec: l.clone(),
            evaluated,
            refit: refit.and_then(|r| r.linears.get(member).cloned()),
            kept_shape: Some([shape.0, shape.1]),
            compacted,
        })
    }
}

/// A pruned linear's masked-dense weight and what is kept of it.
struct Cut<'t, B: Backend> {
    spec: &'t LinearSpec,
    original: &'t B::Tensor,
    masked: B::Tensor,
    mask: B::Mask,
    kept_rows: Option<Vec<usize>>,
    kept_cols: Option<Vec<usize>>,
    obs_loss: Option<f64>,
    h: &'t B::Tensor,
}

/// The masked-dense weights of a pruned block: producers without the removed groups' rows,
/// the consumer (compensated) without their columns.
fn cut_block<'t, B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    geom: &Geometry,
    block: &'t mut Block<'_, B>,
) -> Result<Vec<Cut<'t, B>>> {
    let s = &cx.cfg.structured;
    let (cl, _) = block.consumer;
    let mut consumer_w = std::mem::replace(&mut block.w, b.zeros(1, 1).context(|| cx.at(cl.name))?);
    let cols = geom.consumer_cols(block.kind, &block.removed);
    let cmask = b
        .upload_mask(&column_mask(cl.rows, cl.cols, &cols))
        .context(|| cx.at(cl.name))?;
    // With compensation the update has already zeroed these columns; without, this removes.
    b.apply_mask(&mut consumer_w, &cmask)
        .context(|| cx.at(cl.name))?;
    let block: &'t Block<'_, B> = block;
    let mut cuts = Vec::new();
    for (i, (l, w)) in block.producers.iter().enumerate() {
        let rows = geom.producer_rows(block.kind, l.name, &block.removed);
        let mut masked = b.upload(w).context(|| cx.at(l.name))?;
        let mask = b
            .upload_mask(&row_mask(l.rows, l.cols, &rows))
            .context(|| cx.at(l.name))?;
        b.apply_mask(&mut masked, &mask).context(|| cx.at(l.name))?;
        cuts.push(Cut {
            spec: l,
            original: &block.producer_w[i],
            masked,
            mask,
            kept_rows: (!rows.is_empty()).then(|| complement(l.rows, &rows)),
            kept_cols: None,
            obs_loss: None,
            h: &block.p_stats.hessian,
        });
    }
    cuts.push(Cut {
        spec: cl,
        original: &block.consumer_original,
        masked: consumer_w,
        mask: cmask,
        kept_rows: None,
        kept_cols: (!cols.is_empty()).then(|| complement(cl.cols, &cols)),
        obs_loss: (s.compensate == Compensate::Obs).then_some(block.loss),
        h: &block.c_stats.hessian,
    });
    Ok(cuts)
}

/// §12 after the removal (`--refit`): each input group's members re-fitted with the removed rows
/// and columns as their mask, so nothing removed comes back and the compaction still holds.
fn refit_cuts<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    layer: &LayerWeights,
    cuts: &mut [Cut<'_, B>],
    stages: &mut [Stages],
    calib: &Calibration<'_>,
) -> Result<GroupRefits> {
    if cx.cfg.refit.items.is_empty() {
        return Ok(Vec::new());
    }
    let layer_parameters: usize = layer.linears.iter().map(|(l, _)| l.rows * l.cols).sum();
    let mut groups: Vec<InputGroup> = Vec::new();
    for c in cuts.iter() {
        if !groups.contains(&c.spec.input) {
            groups.push(c.spec.input);
        }
    }
    let mut out = Vec::new();
    for g in groups {
        let h = cuts
            .iter()
            .find(|c| c.spec.input == g)
            .map(|c| c.h)
            .expect("a member");
        let mut members: Vec<Member<'_, B>> = cuts
            .iter_mut()
            .zip(stages.iter_mut())
            .filter(|(c, _)| c.spec.input == g)
            .map(|(c, st)| Member {
                spec: c.spec,
                original: c.original,
                pruned: &mut c.masked,
                mask: &c.mask,
                stages: st,
            })
            .collect();
        let r = refit_group(
            b,
            cx,
            g,
            &mut members,
            h,
            layer.norm(g),
            calib.source.tokens(),
            layer_parameters,
        )?;
        out.push((g, r));
    }
    Ok(out)
}
