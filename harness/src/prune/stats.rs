//! The statistics pass (ALGORITHMS.md §1-§3): one pass over the calibration samples of one
//! input group accumulates what the method declares it needs, each statistic of the shared
//! input computed once for all the group's linears. Statistics the calibration file has
//! ready are uploaded instead. H is always there: the evaluation measures every method by it.

use prunebench_kernels::{Backend, Matrix};
use prunebench_models::config::{InputGroup, LinearSpec};

use crate::error::{Context, HarnessError, Result};

use super::context::{LayerCx, Ticker};
use super::records::{Calibration, Purpose};
use super::stages::Stages;

/// The calibration statistics a method prunes with (ALGORITHMS.md §1-§3). The statistics pass
/// gathers these and H, which the evaluation always needs; `hessian` says H is also the
/// method's own input, so its time counts as pruning rather than evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// §1's activation statistic a.
    pub act: bool,
    /// §2's gradient statistic G per linear (needs output gradients).
    pub grads: bool,
    /// §11's plain gradient sum Σ_s dY_sᵀX_s per linear, whose mean is Ḡ.
    pub mean_grad: bool,
    pub hessian: bool,
    /// Whether a calibration file's ready final G may stand in for accumulating §2's
    /// statistic (GBLM's G; the structured Taylor scores need the accumulator itself).
    pub ready_grads: bool,
}

impl Needs {
    /// Nothing but the weights (magnitude); a method names what it adds. A ready G may stand
    /// in unless the method says it needs the accumulator.
    pub const DEFAULT: Needs = Needs {
        act: false,
        grads: false,
        mean_grad: false,
        hessian: false,
        ready_grads: true,
    };
}

impl Needs {
    /// GBLM's finished statistic G, which a gradients file may give.
    pub fn gblm_statistic(&self) -> bool {
        self.grads && self.ready_grads
    }

    /// §11's Taylor sums (Σ g and the l2 accumulator), which only output gradients or the
    /// suite's own gradient pass give.
    pub fn taylor_sums(&self) -> bool {
        self.mean_grad || (self.grads && !self.ready_grads)
    }
}

impl Default for Needs {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A gradient statistic of one linear (§2): final G read from the calibration file, or the
/// accumulator A that the method finalises.
pub(crate) enum GradStat<T> {
    Ready(T),
    Accumulated(T),
}

pub(crate) struct GroupStats<B: Backend> {
    pub group: InputGroup,
    pub cols: usize,
    /// §1's activation statistic a, where the method needs it.
    pub act: Option<B::Tensor>,
    /// §3's H.
    pub hessian: B::Tensor,
    /// Per member linear, in member order, where the method needs gradients.
    pub grads: Vec<Option<GradStat<B::Tensor>>>,
    /// Per member linear, §11's plain gradient sum, where the method needs the mean gradient.
    pub grad_sums: Vec<Option<B::Tensor>>,
    /// Statistics read ready-made from the calibration file.
    pub ready: Vec<String>,
    /// Group-level stage times (the shared statistics, the method's group work).
    pub stages: Stages,
    /// Per member linear: stage times that start in this pass (gradient accumulation).
    pub member_stages: Vec<Stages>,
}

type Member = (LinearSpec, Matrix);

/// Uploads what is ready, allocates what must be accumulated, then runs the pass.
pub(crate) fn gather<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    group: InputGroup,
    members: &[&Member],
    needs: Needs,
    calib: &Calibration<'_>,
    ticker: &mut Ticker<'_>,
) -> Result<GroupStats<B>> {
    let cols = members[0].0.cols;
    let gname = group.name();
    let mut ready = Vec::new();

    let ready_act = match (needs.act, calib.ready) {
        (true, Some(f)) => f.ready_act_stat(group)?,
        _ => None,
    };
    let ready_h = match calib.ready {
        Some(f) => f.ready_hessian(group)?,
        None => None,
    };
    let act = match &ready_act {
        Some(a) => {
            ready.push("act".to_string());
            Some(b.upload(a).context(|| cx.at(gname))?)
        }
        None if needs.act => Some(b.zeros(1, cols).context(|| cx.at(gname))?),
        None => None,
    };
    let hessian = match &ready_h {
        Some(m) => {
            ready.push("hessian".to_string());
            b.upload(m).context(|| cx.at(gname))?
        }
        None => b.zeros(cols, cols).context(|| cx.at(gname))?,
    };
    // §11's sums from the suite's gradient pass stand in for the whole group's accumulation,
    // or for none of it.
    let sums_ready = needs.taylor_sums() && calib.has_grad_sums();
    let mut grads = Vec::new();
    let mut grad_sums = Vec::new();
    for (l, _) in members {
        if sums_ready {
            let f = calib.ready.expect("checked above");
            let s = f.ready_grad_sums(l)?.ok_or_else(|| {
                HarnessError::Config(format!("the gradient sums have no {}", l.name))
            })?;
            ready.push(format!("grad_sums.{}", l.name));
            let up = |m: &prunebench_kernels::Matrix| b.upload(m).context(|| cx.at(l.name));
            grads.push(if needs.grads {
                Some(GradStat::Accumulated(up(&s.sq)?))
            } else {
                None
            });
            grad_sums.push(if needs.mean_grad {
                Some(up(&s.sum)?)
            } else {
                None
            });
            continue;
        }
        let r = match (needs.gblm_statistic(), calib.ready) {
            (true, Some(f)) => f.ready_grad(l)?,
            _ => None,
        };
        grads.push(match r {
            Some(m) => {
                ready.push(format!("grad.{}", l.name));
                Some(GradStat::Ready(b.upload(&m).context(|| cx.at(l.name))?))
            }
            None if needs.grads => Some(GradStat::Accumulated(
                b.zeros(l.rows, l.cols).context(|| cx.at(l.name))?,
            )),
            None => None,
        });
        grad_sums.push(
            needs
                .mean_grad
                .then(|| b.zeros(l.rows, l.cols).context(|| cx.at(l.name)))
                .transpose()?,
        );
    }
    let mut stats = GroupStats {
        group,
        cols,
        act,
        hessian,
        grads,
        grad_sums,
        ready,
        stages: Stages::default(),
        member_stages: members.iter().map(|_| Stages::default()).collect(),
    };
    let pass = Pass {
        act: ready_act.is_none() && stats.act.is_some(),
        hessian: ready_h.is_none(),
        grads: !sums_ready
            && (stats
                .grads
                .iter()
                .any(|g| matches!(g, Some(GradStat::Accumulated(_))))
                || needs.mean_grad),
        hessian_purpose: if needs.hessian {
            Purpose::Prune
        } else {
            Purpose::Evaluate
        },
    };
    accumulate(b, cx, members, calib, &pass, &mut stats, ticker)?;
    Ok(stats)
}

/// Which statistics the samples must still give.
struct Pass {
    act: bool,
    hessian: bool,
    grads: bool,
    hessian_purpose: Purpose,
}

fn accumulate<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    members: &[&Member],
    calib: &Calibration<'_>,
    pass: &Pass,
    stats: &mut GroupStats<B>,
    ticker: &mut Ticker<'_>,
) -> Result<()> {
    let src = calib.source;
    let (samples, tokens) = (src.samples(), src.tokens());
    let (group, cols) = (stats.group, stats.cols);
    let gname = group.name();
    if pass.grads && !src.has_output_grads() {
        return Err(HarnessError::Config(format!(
            "{} needs output gradients (dY) for layer {} {gname}, and the calibration ({}) has none",
            cx.cfg.method,
            cx.layer,
            src.describe()
        )));
    }
    if !(pass.act || pass.hessian || pass.grads) {
        ticker.skip(samples as u64);
        return Ok(());
    }
    if samples == 0 || tokens == 0 {
        return Err(HarnessError::Config(format!(
            "layer {} {gname}: statistics must be accumulated but the calibration ({}) has no samples",
            cx.layer,
            src.describe()
        )));
    }
    for s in 0..samples {
        let x = src.input(group, s)?;
        if x.shape() != (tokens, cols) {
            return Err(HarnessError::Config(format!(
                "calibration input {gname} sample {s} is {}x{}, expected {tokens}x{cols}",
                x.rows, x.cols
            )));
        }
        x.check_finite(&format!("calibration input {gname} sample {s}"))
            .context(|| cx.at(gname))?;
        let xt = b.upload(&x).context(|| cx.at(gname))?;
        if pass.act {
            let a = stats.act.as_mut().expect("act allocated when needed");
            stats
                .stages
                .time(b, "act_stat", Purpose::Prune, &mut || {
                    b.act_stat_update(a, s, &xt, 1)
                })
                .context(|| cx.at(gname))?;
        }
        if pass.hessian {
            let h = &mut stats.hessian;
            stats
                .stages
                .time(b, "hessian", pass.hessian_purpose, &mut || {
                    b.hessian_update(h, s, &xt, 1)
                })
                .context(|| cx.at(gname))?;
        }
        if pass.grads {
            accumulate_grads(b, cx, members, calib, s, &xt, stats)?;
        }
        ticker.tick(&format!("{gname}: calibration sample {}", s + 1));
    }
    Ok(())
}

/// §2(b) for every member whose gradient statistic is accumulated, from sample `s`.
fn accumulate_grads<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    members: &[&Member],
    calib: &Calibration<'_>,
    s: usize,
    xt: &B::Tensor,
    stats: &mut GroupStats<B>,
) -> Result<()> {
    let tokens = calib.source.tokens();
    for (i, (l, _)) in members.iter().enumerate() {
        let acc = match stats.grads[i].as_mut() {
            Some(GradStat::Accumulated(acc)) => Some(acc),
            _ => None,
        };
        let sum = stats.grad_sums[i].as_mut();
        if acc.is_none() && sum.is_none() {
            continue;
        }
        let dy = calib.source.output_grad(l, s)?;
        if dy.shape() != (tokens, l.rows) {
            return Err(HarnessError::Config(format!(
                "output gradient of {} sample {s} is {}x{}, expected {tokens}x{}",
                l.name, dy.rows, dy.cols, l.rows
            )));
        }
        dy.check_finite(&format!("output gradient of {} sample {s}", l.name))
            .context(|| cx.at(l.name))?;
        let dyt = b.upload(&dy).context(|| cx.at(l.name))?;
        let norm = cx.cfg.grad_norm;
        if let Some(acc) = acc {
            stats.member_stages[i]
                .time(b, "grad_accumulate", Purpose::Prune, &mut || {
                    b.grad_accumulate_fused(acc, &dyt, xt, norm)
                })
                .context(|| cx.at(l.name))?;
        }
        if let Some(sum) = sum {
            stats.member_stages[i]
                .time(b, "grad_sum", Purpose::Prune, &mut || {
                    b.grad_sum(sum, &dyt, xt)
                })
                .context(|| cx.at(l.name))?;
        }
    }
    Ok(())
}
