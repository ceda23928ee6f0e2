//! A structured layer run on one backend: the statistics of both blocks, the plan, the greedy
//! rounds of removal and compensation per block, then each linear's evaluation and the
//! compacted weights. Every matrix op runs on the device; only scores and indices cross.

use prunebench_kernels::ops::GBLM_GRAD_SCALE;
use prunebench_kernels::{Backend, Mask, Matrix, TaylorInputs};
use prunebench_models::config::{InputGroup, LinearSpec};
use prunebench_models::LayerWeights;

use crate::error::{Context, HarnessError, Result};
use crate::methods::Pruned;
use crate::prune::context::{LayerCx, Ticker};
use crate::prune::evaluate::{evaluate_linear, LinearOnDevice};
use crate::prune::records::RunContext;
use crate::prune::stages::Stages;
use crate::prune::stats::{self, GradStat, GroupStats};
use crate::prune::{
    Calibration, GroupReport, LayerReport, LayerRun, LinearReport, Progress, PruneConfig, Purpose,
};
use crate::refit::{refit_group, GroupRefit, Member};

use super::config::{Compensate, Saliency, StructuredConfig};
use super::geometry::{complement, Geometry, Kind};
use super::report::{ConfigDelta, StructuredReport};
use super::select::{self, Plan};

type Linear = (LinearSpec, Matrix);

/// One block (attention or MLP): its producers, its consumer and their statistics.
struct Block<'l, B: Backend> {
    kind: Kind,
    producers: Vec<&'l Linear>,
    /// The producers' weights on the device (scored by Taylor, evaluated after).
    producer_w: Vec<B::Tensor>,
    consumer: &'l Linear,
    consumer_original: B::Tensor,
    /// The consumer as it is being compensated.
    w: B::Tensor,
    p_stats: GroupStats<B>,
    c_stats: GroupStats<B>,
    hinv: Option<B::Tensor>,
    dead: usize,
    removed: Vec<usize>,
    loss: f64,
    rounds_run: usize,
    /// The smallest relative gap, over the rounds, between the highest removed score and the
    /// lowest kept one: below the saliency tolerance, another backend may rightly cut the
    /// other way.
    margin: f64,
    samples: usize,
}

fn find<'l>(layer: &'l LayerWeights, name: &str) -> Result<&'l Linear> {
    layer
        .linears
        .iter()
        .find(|(l, _)| l.name == name)
        .ok_or_else(|| {
            HarnessError::Config(format!(
                "structured pruning removes whole heads and channels across all seven linears of \
                 a layer; layer {} has no {name} (select --linears all)",
                layer.layer
            ))
        })
}

/// Everything that can be refused before any work.
fn check(
    cx: &LayerCx<'_>,
    layer: &LayerWeights,
    calib: &Calibration<'_>,
    geom: &Geometry,
) -> Result<()> {
    let cfg = cx.cfg;
    let s = &cfg.structured;
    s.check()?;
    let fraction = cfg.sparsity.fraction();
    if matches!(cfg.sparsity, prunebench_kernels::Sparsity::NM { .. }) {
        return Err(HarnessError::Config(format!(
            "structured pruning takes a fraction of the layer's parameters, not the N:M pattern {}",
            cfg.sparsity
        )));
    }
    for kind in [Kind::Attn, Kind::Ffn] {
        let (producers, consumer) = kind.linears();
        for name in producers.iter().chain(std::iter::once(&consumer)) {
            find(layer, name)?;
        }
    }
    // Shapes, finiteness and the re-fit options, as for every method.
    crate::prune::check_layer(cx, layer)?;
    if !geom.heads.is_multiple_of(geom.kv_heads) {
        return Err(HarnessError::Config(format!(
            "{} heads do not split into {} KV groups",
            geom.heads, geom.kv_heads
        )));
    }
    select::check(geom, s, fraction)?;
    if let Saliency::Taylor(k) = s.saliency {
        if !calib.source.has_output_grads() {
            return Err(HarnessError::Config(format!(
                "--saliency {} needs output gradients (dY) of every linear, and the calibration \
                 ({}) has none: use --saliency obs, or a calibration with gradients",
                k.name(),
                calib.source.describe()
            )));
        }
        if cfg.grad_norm != prunebench_kernels::GradNorm::L2 {
            return Err(HarnessError::Config(
                "the Taylor saliencies read the l2 gradient accumulator (the diagonal Fisher); \
                 --grad-norm l1 does not apply to structured pruning"
                    .into(),
            ));
        }
    }
    Ok(())
}

impl<'l, B: Backend> Block<'l, B> {
    fn gather(
        b: &B,
        cx: &LayerCx<'_>,
        layer: &'l LayerWeights,
        kind: Kind,
        calib: &Calibration<'_>,
        ticker: &mut Ticker<'_>,
    ) -> Result<Self> {
        let needs = super::needs(&cx.cfg.structured);
        let (pnames, cname) = kind.linears();
        let producers: Vec<&Linear> = pnames
            .iter()
            .map(|n| find(layer, n))
            .collect::<Result<_>>()?;
        let consumer = find(layer, cname)?;
        let p_stats = stats::gather(
            b,
            cx,
            producers[0].0.input,
            &producers,
            needs,
            calib,
            ticker,
        )?;
        let c_stats = stats::gather(b, cx, consumer.0.input, &[consumer], needs, calib, ticker)?;
        let producer_w = producers
            .iter()
            .map(|(l, w)| b.upload(w).context(|| cx.at(l.name)))
            .collect::<Result<_>>()?;
        let at = || cx.at(consumer.0.name);
        let mut block = Block {
            kind,
            producers,
            producer_w,
            consumer,
            consumer_original: b.upload(&consumer.1).context(at)?,
            w: b.upload(&consumer.1).context(at)?,
            p_stats,
            c_stats,
            hinv: None,
            dead: 0,
            removed: Vec::new(),
            loss: 0.0,
            rounds_run: 0,
            margin: f64::INFINITY,
            samples: calib.source.samples(),
        };
        let s = &cx.cfg.structured;
        if s.saliency == Saliency::Obs || s.compensate == Compensate::Obs {
            block.invert(b, cx)?;
        }
        Ok(block)
    }

    /// Hinv of the consumer's input; its dead columns (zero Hessian diagonal: the input is
    /// always 0 there) lose their weights, as §6 does, so they score 0 and go first.
    fn invert(&mut self, b: &B, cx: &LayerCx<'_>) -> Result<()> {
        let (l, _) = self.consumer;
        let h = &self.c_stats.hessian;
        let mut inv = None;
        self.c_stats
            .stages
            .time(b, "hinv_explicit", Purpose::Prune, &mut || {
                inv = Some(b.hinv_explicit(h, cx.cfg.percdamp)?);
                Ok(())
            })
            .context(|| cx.at(&format!("{} inverse Hessian", l.input.name())))?;
        let inv = inv.expect("inverse computed");
        if !inv.dead.is_empty() {
            let mask = column_mask(l.rows, l.cols, &inv.dead);
            let m = b.upload_mask(&mask).context(|| cx.at(l.name))?;
            b.apply_mask(&mut self.w, &m).context(|| cx.at(l.name))?;
        }
        self.dead = inv.dead.len();
        self.hinv = Some(inv.hinv);
        Ok(())
    }

    fn width(&self, geom: &Geometry) -> usize {
        geom.width(self.kind)
    }

    /// The saliency of each group in `groups`, with the consumer as it is now.
    fn scores(
        &mut self,
        b: &B,
        cx: &LayerCx<'_>,
        geom: &Geometry,
        groups: &[usize],
    ) -> Result<Vec<f64>> {
        let s = &cx.cfg.structured;
        let at = format!("{} saliency", self.kind.name());
        match s.saliency {
            Saliency::Obs => {
                let hinv = self.hinv.as_ref().expect("Hinv for obs saliency");
                let (w, width) = (&self.w, self.width(geom));
                let mut out = None;
                self.c_stats
                    .stages
                    .time(b, "obs_saliency", Purpose::Prune, &mut || {
                        out = Some(b.obs_saliency(w, hinv, width, groups)?);
                        Ok(())
                    })
                    .context(|| cx.at(&at))?;
                let m = b.download(&out.expect("scores")).context(|| cx.at(&at))?;
                Ok(m.data.iter().map(|&v| v as f64).collect())
            }
            Saliency::Taylor(kind) => {
                let n = self.samples.max(1) as f64;
                let c = GBLM_GRAD_SCALE as f64;
                let mut total = vec![0.0f64; geom.groups(self.kind)];
                for (name, axis, width) in geom.taylor_parts(self.kind) {
                    let (w, stats, i) = if name == self.consumer.0.name {
                        (&self.w, &mut self.c_stats, 0)
                    } else {
                        let i = self
                            .producers
                            .iter()
                            .position(|(l, _)| l.name == name)
                            .expect("a producer of the block");
                        (&self.producer_w[i], &mut self.p_stats, i)
                    };
                    let grad_sq = match &stats.grads[i] {
                        Some(GradStat::Accumulated(t)) | Some(GradStat::Ready(t)) => Some(t),
                        None => None,
                    };
                    let inp = TaylorInputs {
                        w,
                        grad_sum: stats.grad_sums[i].as_ref(),
                        grad_sq,
                        grad_scale: 1.0 / n,
                        fisher_scale: 1.0 / (c * c * n),
                        kind,
                        axis,
                        width,
                    };
                    let mut out = None;
                    stats
                        .stages
                        .time(b, "taylor_saliency", Purpose::Prune, &mut || {
                            out = Some(b.taylor_saliency(inp)?);
                            Ok(())
                        })
                        .context(|| cx.at(name))?;
                    let m = b.download(&out.expect("scores")).context(|| cx.at(name))?;
                    for (t, v) in total.iter_mut().zip(&m.data) {
                        *t += *v as f64;
                    }
                }
                Ok(groups.iter().map(|&g| total[g]).collect())
            }
        }
    }

    /// Removes `count` groups in the configured rounds, the first round ranked by `initial`
    /// (the scores of every group, before any removal).
    fn remove(
        &mut self,
        b: &B,
        cx: &LayerCx<'_>,
        geom: &Geometry,
        count: usize,
        initial: Vec<f64>,
    ) -> Result<()> {
        let s = &cx.cfg.structured;
        let unit = match (self.kind, geom.unit) {
            (Kind::Attn, super::config::AttnUnit::QueryHead) => geom.kv_heads,
            _ => 1,
        };
        let mut remaining: Vec<usize> = (0..geom.groups(self.kind)).collect();
        let mut scores = Some(initial);
        let mut left = count;
        let mut t = 0;
        while left > 0 && t < s.rounds {
            let take = select::round_take(left, s.rounds, t, unit);
            let sc = match scores.take() {
                Some(sc) => sc,
                None => self.scores(b, cx, geom, &remaining)?,
            };
            let chosen = select::choose(geom, self.kind, &remaining, &sc, take);
            self.margin = self
                .margin
                .min(select::margin(geom, self.kind, &remaining, &sc, &chosen));
            let cols = geom.consumer_cols(self.kind, &chosen);
            if s.compensate == Compensate::Obs {
                let hinv = self.hinv.as_mut().expect("Hinv for the OBS update");
                let w = &mut self.w;
                let mut loss = 0.0;
                self.c_stats
                    .stages
                    .time(b, "structured_update", Purpose::Prune, &mut || {
                        loss = b.structured_update(w, hinv, &cols)?;
                        Ok(())
                    })
                    .context(|| cx.at(self.consumer.0.name))?;
                self.loss += loss;
            }
            remaining = complement_of(&remaining, &chosen);
            left -= chosen.len();
            self.removed.extend(&chosen);
            t += 1;
            self.rounds_run = t;
        }
        self.removed.sort_unstable();
        Ok(())
    }
}

/// `remaining` without `chosen` (both ascending).
fn complement_of(remaining: &[usize], chosen: &[usize]) -> Vec<usize> {
    remaining
        .iter()
        .copied()
        .filter(|g| chosen.binary_search(g).is_err())
        .collect()
}

fn column_mask(rows: usize, cols: usize, set: &[usize]) -> Mask {
    let mut m = Mask::empty(rows, cols);
    for r in 0..rows {
        for &c in set {
            m.set(r, c, true);
        }
    }
    m
}

fn row_mask(rows: usize, cols: usize, set: &[usize]) -> Mask {
    let mut m = Mask::empty(rows, cols);
    for &r in set {
        for c in 0..cols {
            m.set(r, c, true);
        }
    }
    m
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

pub(crate) fn prune_layer<B: Backend>(
    b: &B,
    layer: &LayerWeights,
    calib: &Calibration<'_>,
    cfg: &PruneConfig,
    keep: bool,
    progress: &dyn Fn(Progress<'_>),
) -> Result<LayerRun> {
    let t_wall = std::time::Instant::now();
    let cx = LayerCx {
        layer: layer.layer,
        cfg,
    };
    let s: &StructuredConfig = &cfg.structured;
    let geom = Geometry::new(&layer.model, s.attn_unit);
    check(&cx, layer, calib, &geom)?;

    let samples = calib.source.samples() as u64;
    let mut ticker = Ticker::new(4 * samples + 7, progress);
    let mut attn = Block::gather(b, &cx, layer, Kind::Attn, calib, &mut ticker)?;
    let mut ffn = Block::gather(b, &cx, layer, Kind::Ffn, calib, &mut ticker)?;
    let all_attn: Vec<usize> = (0..geom.groups(Kind::Attn)).collect();
    let all_ffn: Vec<usize> = (0..geom.groups(Kind::Ffn)).collect();
    let s_attn = attn.scores(b, &cx, &geom, &all_attn)?;
    let s_ffn = ffn.scores(b, &cx, &geom, &all_ffn)?;
    let plan: Plan = select::plan(&geom, s, cfg.sparsity.fraction(), &s_ffn, &s_attn);
    attn.remove(b, &cx, &geom, plan.attn, s_attn)?;
    ffn.remove(b, &cx, &geom, plan.ffn, s_ffn)?;

    let mut linear_reports = Vec::new();
    let mut group_reports = Vec::new();
    let (mut pruned_out, mut masks, mut compacted) = (Vec::new(), Vec::new(), Vec::new());
    let mut group_refits: Vec<(InputGroup, GroupRefit)> = Vec::new();
    let mut norms_out = Vec::new();
    for block in [&mut attn, &mut ffn] {
        let mut cuts = cut_block(b, &cx, &geom, block)?;
        let mut all_stages: Vec<Stages> = cuts.iter().map(|_| Stages::default()).collect();
        let refits = refit_cuts(b, &cx, layer, &mut cuts, &mut all_stages, calib)?;
        // Each cut's place among its group's members, the order `refit_cuts` gave them.
        let member: Vec<usize> = (0..cuts.len())
            .map(|i| {
                let g = cuts[i].spec.input;
                cuts[..i].iter().filter(|c| c.spec.input == g).count()
            })
            .collect();
        for ((cut, stages), member) in cuts.into_iter().zip(all_stages).zip(member) {
            let l = cut.spec;
            let refit = refits.iter().find(|(g, _)| *g == l.input).map(|(_, r)| r);
            let linear = LinearOnDevice {
                spec: l,
                original: cut.original,
                pruned: &cut.masked,
                dtype: layer.dtype_of(l.name),
                col_scale: refit.and_then(|r| r.col_scale.as_deref()),
            };
            let outcome = Pruned {
                mask: cut.mask,
                obs_loss: cut.obs_loss,
            };
            let mut stages = stages;
            let linear_refit = refit.and_then(|r| r.linears.get(member).cloned());
            let mut small = None;
            if keep {
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
            let done = evaluate_linear(b, &cx, linear, outcome, cut.h, stages, keep)?;
            let mut report: LinearReport = done.report;
            report.refit = linear_refit;
            let shape = (
                cut.kept_rows.as_ref().map_or(l.rows, Vec::len),
                cut.kept_cols.as_ref().map_or(l.cols, Vec::len),
            );
            report.kept_shape = Some([shape.0, shape.1]);
            if let (Some((w, mask)), Some(small)) = (done.kept, small) {
                let mut m = b.download(&small).context(|| cx.at(l.name))?;
                layer.dtype_of(l.name).round_trip(&mut m.data);
                let spec = LinearSpec {
                    rows: shape.0,
                    cols: shape.1,
                    ..l.clone()
                };
                compacted.push((spec, m));
                pruned_out.push((l.clone(), w));
                masks.push(mask);
            }
            linear_reports.push(report);
            ticker.tick(&format!("{}: pruned", l.name));
        }
        for (g, r) in refits {
            if let (Some(n), Some(orig)) = (&r.norm, layer.norm(g)) {
                norms_out.push(prunebench_models::NormWeight {
                    group: g,
                    data: n.weights.clone(),
                    dtype: orig.dtype,
                });
            }
            group_refits.push((g, r));
        }
    }
    let attn_removed = attn.removed.clone();
    let ffn_removed = ffn.removed.clone();
    let obs_loss = (s.compensate == Compensate::Obs).then_some(attn.loss + ffn.loss);
    let rounds_run = vec![
        (Kind::Attn.name().to_string(), attn.rounds_run),
        (Kind::Ffn.name().to_string(), ffn.rounds_run),
    ];
    let margins = vec![
        (Kind::Attn.name().to_string(), attn.margin),
        (Kind::Ffn.name().to_string(), ffn.margin),
    ];
    for block in [attn, ffn] {
        for (st, dead) in [(block.p_stats, 0), (block.c_stats, block.dead)] {
            group_reports.push(GroupReport {
                group: st.group.name().to_string(),
                cols: st.cols,
                samples: calib.source.samples(),
                tokens: calib.source.tokens(),
                ready: st.ready,
                stages: st.stages.0,
                dead_columns: dead,
                norm_refit: group_refits
                    .iter()
                    .find(|(g, _)| *g == st.group)
                    .and_then(|(_, r)| r.norm.clone()),
                refit_skipped: group_refits
                    .iter()
                    .find(|(g, _)| *g == st.group)
                    .map(|(_, r)| r.skipped.clone())
                    .unwrap_or_default(),
            });
        }
    }
    let structured = structured_report(
        &geom,
        s,
        layer.layer,
        Removals {
            attn: attn_removed,
            ffn: ffn_removed,
            obs_loss,
            rounds_run,
            margins,
        },
    );

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
        Some(structured),
    );
    Ok(LayerRun {
        report,
        pruned: pruned_out,
        masks,
        norms: norms_out,
        compacted,
    })
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

/// What both blocks' rounds removed, for the report.
struct Removals {
    attn: Vec<usize>,
    ffn: Vec<usize>,
    obs_loss: Option<f64>,
    rounds_run: Vec<(String, usize)>,
    margins: Vec<(String, f64)>,
}

fn structured_report(
    geom: &Geometry,
    s: &StructuredConfig,
    layer: usize,
    r: Removals,
) -> StructuredReport {
    let Removals {
        attn: attn_removed,
        ffn: ffn_removed,
        obs_loss,
        rounds_run,
        margins,
    } = r;
    let (attn_removed, ffn_removed) = (&attn_removed[..], &ffn_removed[..]);
    let kept_ffn = complement(geom.intermediate, ffn_removed);
    let (kept_heads, kept_kv) = match geom.unit {
        super::config::AttnUnit::KvGroup => {
            let kv = complement(geom.kv_heads, attn_removed);
            let heads = kv
                .iter()
                .flat_map(|&g| g * geom.r()..(g + 1) * geom.r())
                .collect();
            (heads, kv)
        }
        super::config::AttnUnit::QueryHead => (
            complement(geom.heads, attn_removed),
            (0..geom.kv_heads).collect(),
        ),
    };
    let removed =
        attn_removed.len() * geom.params(Kind::Attn) + ffn_removed.len() * geom.params(Kind::Ffn);
    let total = geom.total_params();
    StructuredReport {
        saliency: s.saliency.name().to_string(),
        compensate: s.compensate,
        attn_unit: s.attn_unit,
        budget: s.budget,
        rounds: s.rounds,
        round_to: s.round_to,
        original_intermediate_size: geom.intermediate,
        original_num_attention_heads: geom.heads,
        original_num_key_value_heads: geom.kv_heads,
        config: ConfigDelta {
            layer,
            hidden_size: geom.hidden,
            head_dim: geom.head_dim,
            intermediate_size: kept_ffn.len(),
            num_attention_heads: kept_heads.len(),
            num_key_value_heads: kept_kv.len(),
            kept_ffn_channels: kept_ffn,
            kept_query_heads: kept_heads,
            kept_kv_heads: kept_kv,
        },
        parameters_total: total,
        parameters_removed: removed,
        fraction_removed: removed as f64 / total as f64,
        ffn_removed: ffn_removed.len(),
        attn_removed: attn_removed.len(),
        obs_loss,
        rounds_run,
        cut_margins: margins.into_iter().filter(|(_, m)| m.is_finite()).collect(),
    }
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
) -> Result<Vec<(InputGroup, GroupRefit)>> {
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
