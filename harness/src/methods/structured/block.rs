//! One block of a structured run (attention or MLP): its producers and consumer with their
//! statistics, the saliency of its groups, and the greedy rounds of removal and compensation.
//! Every matrix op runs on the device; only scores and indices cross.

use prunebench_kernels::ops::GBLM_GRAD_SCALE;
use prunebench_kernels::{Backend, Mask, Matrix, TaylorInputs};
use prunebench_models::config::LinearSpec;
use prunebench_models::LayerWeights;

use crate::error::{Context, HarnessError, Result};
use crate::prune::context::{LayerCx, Ticker};
use crate::prune::records::structured::{AttnUnit, Compensate, Saliency};
use crate::prune::stats::{self, GradStat, GroupStats};
use crate::prune::{Calibration, Purpose};

use super::geometry::{Geometry, Kind};
use super::select;
use super::spec::needs;

pub(super) type Linear = (LinearSpec, Matrix);

/// One block (attention or MLP): its producers, its consumer and their statistics.
pub(super) struct Block<'l, B: Backend> {
    pub(super) kind: Kind,
    pub(super) producers: Vec<&'l Linear>,
    /// The producers' weights on the device (scored by Taylor, evaluated after).
    pub(super) producer_w: Vec<B::Tensor>,
    pub(super) consumer: &'l Linear,
    pub(super) consumer_original: B::Tensor,
    /// The consumer as it is being compensated.
    pub(super) w: B::Tensor,
    pub(super) p_stats: GroupStats<B>,
    pub(super) c_stats: GroupStats<B>,
    pub(super) hinv: Option<B::Tensor>,
    pub(super) dead: usize,
    pub(super) removed: Vec<usize>,
    pub(super) loss: f64,
    pub(super) rounds_run: usize,
    /// The smallest relative gap, over the rounds, between the highest removed score and the
    /// lowest kept one: below the saliency tolerance, another backend may rightly cut the
    /// other way.
    pub(super) margin: f64,
    pub(super) samples: usize,
}

pub(super) fn find<'l>(layer: &'l LayerWeights, name: &str) -> Result<&'l Linear> {
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

impl<'l, B: Backend> Block<'l, B> {
    pub(super) fn gather(
        b: &B,
        cx: &LayerCx<'_>,
        layer: &'l LayerWeights,
        kind: Kind,
        calib: &Calibration<'_>,
        ticker: &mut Ticker<'_>,
    ) -> Result<Self> {
        let needs = needs(&cx.cfg.structured);
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
    pub(super) fn scores(
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
    pub(super) fn remove(
        &mut self,
        b: &B,
        cx: &LayerCx<'_>,
        geom: &Geometry,
        count: usize,
        initial: Vec<f64>,
    ) -> Result<()> {
        let s = &cx.cfg.structured;
        let unit = match (self.kind, geom.unit) {
            (Kind::Attn, AttnUnit::QueryHead) => geom.kv_heads,
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

pub(super) fn column_mask(rows: usize, cols: usize, set: &[usize]) -> Mask {
    let mut m = Mask::empty(rows, cols);
    for r in 0..rows {
        for &c in set {
            m.set(r, c, true);
        }
    }
    m
}

pub(super) fn row_mask(rows: usize, cols: usize, set: &[usize]) -> Mask {
    let mut m = Mask::empty(rows, cols);
    for &r in set {
        for c in 0..cols {
            m.set(r, c, true);
        }
    }
    m
}
