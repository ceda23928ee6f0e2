//! A whole LLaMA decoder layer pruned by one method on one backend (ALGORITHMS.md §1-§9):
//! one pass over the calibration samples per input group accumulates every statistic that
//! group's linears need (each shared input's statistics computed once), then each linear is
//! scored, masked and updated, and its reconstruction error measured against the same H.

use serde::{Deserialize, Serialize};

use prunebench_kernels::ops::{OBS_BLOCK, PERCDAMP};
use prunebench_kernels::{
    Backend, GradNorm, HinvFactor, MaskGroup, Matrix, ObsSelection, Score, Sparsity, TimeSource,
};
use prunebench_models::calibration::CalibrationFile;
use prunebench_models::config::{InputGroup, LinearSpec};
use prunebench_models::synthetic::CalibrationSource;
use prunebench_models::LayerWeights;

use crate::error::{Context, HarnessError, Result};
use crate::method::Method;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneConfig {
    pub method: Method,
    pub sparsity: Sparsity,
    /// Overrides the method's unstructured comparison group (magnitude per row, say).
    pub group: Option<MaskGroup>,
    pub grad_norm: GradNorm,
    pub percdamp: f64,
    pub block: usize,
}

impl PruneConfig {
    pub fn new(method: Method, sparsity: Sparsity) -> Self {
        Self {
            method,
            sparsity,
            group: None,
            grad_norm: GradNorm::L2,
            percdamp: PERCDAMP,
            block: OBS_BLOCK,
        }
    }
}

/// Where calibration data comes from: samples, and optionally ready statistics that replace
/// accumulating them.
pub struct Calibration<'a> {
    pub source: &'a dyn CalibrationSource,
    pub ready: Option<&'a CalibrationFile>,
}

/// A progress tick: `done` of `total` units, with what is being worked on.
pub struct Progress<'a> {
    pub what: &'a str,
    pub done: u64,
    pub total: u64,
}

/// Why a stage ran: to prune, or only to measure the result (the Hessian of a method that
/// does not need it, the reconstruction error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    Prune,
    Evaluate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    pub stage: String,
    pub purpose: Purpose,
    pub seconds: f64,
    pub calls: usize,
    pub source: TimeSource,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub group: String,
    pub cols: usize,
    pub samples: usize,
    pub tokens: usize,
    /// Statistics read ready-made from the calibration file instead of accumulated.
    pub ready: Vec<String>,
    pub stages: Vec<StageTime>,
    /// Columns whose Hessian diagonal was zero (SparseGPT).
    pub dead_columns: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearReport {
    pub name: String,
    pub group: String,
    pub rows: usize,
    pub cols: usize,
    pub pruned: usize,
    /// Achieved fraction pruned.
    pub sparsity: f64,
    /// ‖(W − Ŵ) Xᵀ‖²_F / ‖W Xᵀ‖²_F, from H (ALGORITHMS.md §9).
    pub recon_error: f64,
    /// SparseGPT's summed OBS loss.
    pub obs_loss: Option<f64>,
    pub stages: Vec<StageTime>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    pub model: String,
    pub layer: usize,
    pub method: Method,
    pub sparsity: String,
    pub backend: prunebench_kernels::BackendInfo,
    pub calibration: String,
    pub groups: Vec<GroupReport>,
    pub linears: Vec<LinearReport>,
    /// Device time of the stages that prune, and of those that only evaluate.
    pub prune_seconds: f64,
    pub evaluate_seconds: f64,
    /// Wall-clock time of the whole layer, host work (data generation, transfers) included.
    pub wall_seconds: f64,
}

/// A pruned layer: the report, and the pruned weights when asked for.
pub struct LayerRun {
    pub report: LayerReport,
    pub pruned: Vec<(LinearSpec, Matrix)>,
    pub masks: Vec<prunebench_kernels::Mask>,
}

struct Stages(Vec<StageTime>);

impl Stages {
    /// Runs `work` under the backend's timer and adds its time to `stage`.
    fn time<B: Backend>(
        &mut self,
        b: &B,
        stage: &str,
        purpose: Purpose,
        work: &mut dyn FnMut() -> prunebench_kernels::error::Result<()>,
    ) -> prunebench_kernels::error::Result<()> {
        let (seconds, source) = b.timed(work)?;
        match self.0.iter_mut().find(|s| s.stage == stage) {
            Some(s) => {
                s.seconds += seconds;
                s.calls += 1;
            }
            None => self.0.push(StageTime {
                stage: stage.into(),
                purpose,
                seconds,
                calls: 1,
                source,
            }),
        }
        Ok(())
    }
}

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
    ordered_groups(&layer.linears)
        .into_iter()
        .map(|g| {
            let ls: Vec<&LinearSpec> = layer
                .linears
                .iter()
                .map(|(l, _)| l)
                .filter(|l| l.input == g)
                .collect();
            let cols = ls.first().map_or(0, |l| l.cols) as u64;
            let factor = if cfg.method == Method::Sparsegpt {
                2
            } else {
                1
            };
            let group = f * (factor * cols * cols + cols + tokens as u64 * cols);
            let grads: u64 = if cfg.method.needs_grads() {
                ls.iter().map(|l| f * (l.rows * l.cols) as u64).sum()
            } else {
                0
            };
            // Original and pruned W, plus a score matrix, for the largest linear at a time.
            let per_linear = ls
                .iter()
                .map(|l| f * (3 * l.rows * l.cols + tokens * l.rows) as u64)
                .max()
                .unwrap_or(0);
            group + grads + per_linear
        })
        .max()
        .unwrap_or(0)
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
    let t_wall = std::time::Instant::now();
    let at = |what: &str| format!("layer {} {what}", layer.layer);
    cfg.sparsity.validate().context(|| at("sparsity"))?;
    for (l, w) in &layer.linears {
        if w.shape() != (l.rows, l.cols) {
            return Err(HarnessError::Config(format!(
                "layer {} {}: weight is {}x{}, the model says {}x{}",
                layer.layer, l.name, w.rows, w.cols, l.rows, l.cols
            )));
        }
        cfg.sparsity.check_shape(l.cols).context(|| at(l.name))?;
        w.check_finite(&format!("{} weight", l.name))
            .context(|| at(l.name))?;
    }
    if cfg.method == Method::Sparsegpt {
        if let Sparsity::NM { m, .. } = cfg.sparsity {
            if !cfg.block.is_multiple_of(m) {
                return Err(HarnessError::Config(format!(
                    "OBS block size {} is not a multiple of M = {m}",
                    cfg.block
                )));
            }
        }
    }
    let src = calib.source;
    let (samples, tokens) = (src.samples(), src.tokens());
    if let Some(budget) = b.memory_budget() {
        let need = working_set_bytes(layer, cfg, tokens);
        if need > budget {
            return Err(HarnessError::Kernel {
                context: at("memory check"),
                error: prunebench_kernels::KernelError::OutOfMemory {
                    what: format!(
                        "pruning {} with {} ({} samples x {} tokens)",
                        layer.model.name, cfg.method, samples, tokens
                    ),
                    needed: need,
                    available: budget,
                },
            });
        }
    }

    let groups = ordered_groups(&layer.linears);
    let total: u64 = groups.len() as u64 * samples as u64 + layer.linears.len() as u64;
    let mut done = 0u64;
    let tick = |what: &str, done: &mut u64| {
        *done += 1;
        progress(Progress {
            what,
            done: *done,
            total,
        })
    };

    let mut group_reports = Vec::new();
    let mut linear_reports = Vec::new();
    let mut pruned_out = Vec::new();
    let mut masks = Vec::new();
    let method = cfg.method;

    for g in groups {
        let members: Vec<&(LinearSpec, Matrix)> =
            layer.linears.iter().filter(|(l, _)| l.input == g).collect();
        let cols = members[0].0.cols;
        let gname = g.name();
        let mut stages = Stages(Vec::new());
        // Per-linear stage times start here, since GBLM's gradients accumulate in this pass.
        let mut member_stages: Vec<Stages> = members.iter().map(|_| Stages(Vec::new())).collect();
        let mut ready = Vec::new();

        // Statistics: ready-made where the calibration file has them, else accumulated.
        let ready_act = match (method.needs_act_stat(), calib.ready) {
            (true, Some(f)) => f.ready_act_stat(g)?,
            _ => None,
        };
        let ready_h = match calib.ready {
            Some(f) => f.ready_hessian(g)?,
            None => None,
        };
        let mut act = match &ready_act {
            Some(a) => {
                ready.push("act".to_string());
                Some(b.upload(a).context(|| at(gname))?)
            }
            None if method.needs_act_stat() => Some(b.zeros(1, cols).context(|| at(gname))?),
            None => None,
        };
        let mut h = match &ready_h {
            Some(m) => {
                ready.push("hessian".to_string());
                b.upload(m).context(|| at(gname))?
            }
            None => b.zeros(cols, cols).context(|| at(gname))?,
        };
        // GBLM's gradient accumulators, one per linear of the group.
        let mut grads: Vec<Option<B::Tensor>> = Vec::new();
        let mut grads_ready = Vec::new();
        for (l, _) in &members {
            let r = match (method.needs_grads(), calib.ready) {
                (true, Some(f)) => f.ready_grad(l)?,
                _ => None,
            };
            grads_ready.push(r.is_some());
            grads.push(match r {
                Some(m) => {
                    ready.push(format!("grad.{}", l.name));
                    Some(b.upload(&m).context(|| at(l.name))?)
                }
                None if method.needs_grads() => {
                    Some(b.zeros(l.rows, l.cols).context(|| at(l.name))?)
                }
                None => None,
            });
        }
        if method.needs_grads() && grads_ready.iter().any(|r| !r) && !src.has_output_grads() {
            return Err(HarnessError::Config(format!(
                "gblm needs output gradients (dY) for layer {} {gname}, and the calibration ({}) has none",
                layer.layer,
                src.describe()
            )));
        }

        let act_purpose = Purpose::Prune;
        let h_purpose = if method == Method::Sparsegpt {
            Purpose::Prune
        } else {
            Purpose::Evaluate
        };
        let need_act = ready_act.is_none() && act.is_some();
        let need_h = ready_h.is_none();
        let need_grads = grads_ready.iter().any(|r| !r) && method.needs_grads();
        if need_act || need_h || need_grads {
            if samples == 0 || tokens == 0 {
                return Err(HarnessError::Config(format!(
                    "layer {} {gname}: statistics must be accumulated but the calibration ({}) has no samples",
                    layer.layer,
                    src.describe()
                )));
            }
            for s in 0..samples {
                let x = src.input(g, s)?;
                if x.shape() != (tokens, cols) {
                    return Err(HarnessError::Config(format!(
                        "calibration input {gname} sample {s} is {}x{}, expected {tokens}x{cols}",
                        x.rows, x.cols
                    )));
                }
                x.check_finite(&format!("calibration input {gname} sample {s}"))
                    .context(|| at(gname))?;
                let xt = b.upload(&x).context(|| at(gname))?;
                if need_act {
                    let a = act.as_mut().expect("act allocated when needed");
                    stages
                        .time(b, "act_stat", act_purpose, &mut || {
                            b.act_stat_update(a, s, &xt, 1)
                        })
                        .context(|| at(gname))?;
                }
                if need_h {
                    stages
                        .time(b, "hessian", h_purpose, &mut || {
                            b.hessian_update(&mut h, s, &xt, 1)
                        })
                        .context(|| at(gname))?;
                }
                if need_grads {
                    for (i, (l, _)) in members.iter().enumerate() {
                        if grads_ready[i] {
                            continue;
                        }
                        let dy = src.output_grad(l, s)?;
                        if dy.shape() != (tokens, l.rows) {
                            return Err(HarnessError::Config(format!(
                                "output gradient of {} sample {s} is {}x{}, expected {tokens}x{}",
                                l.name, dy.rows, dy.cols, l.rows
                            )));
                        }
                        dy.check_finite(&format!("output gradient of {} sample {s}", l.name))
                            .context(|| at(l.name))?;
                        let dyt = b.upload(&dy).context(|| at(l.name))?;
                        let acc = grads[i].as_mut().expect("accumulator allocated");
                        member_stages[i]
                            .time(b, "grad_accumulate", Purpose::Prune, &mut || {
                                b.grad_accumulate_fused(acc, &dyt, &xt, cfg.grad_norm)
                            })
                            .context(|| at(l.name))?;
                    }
                }
                tick(&format!("{gname}: calibration sample {}", s + 1), &mut done);
            }
        } else {
            done += samples as u64;
        }

        let factor: Option<HinvFactor<B::Tensor>> = if method == Method::Sparsegpt {
            let mut f = None;
            stages
                .time(b, "hinv_factor", Purpose::Prune, &mut || {
                    f = Some(b.hinv_factor(&h, cfg.percdamp)?);
                    Ok(())
                })
                .context(|| at(&format!("{gname} inverse-Hessian factor")))?;
            f
        } else {
            None
        };
        let dead = factor.as_ref().map_or(0, |f| f.dead.len());

        for ((i, (l, w)), mut lst) in members.iter().enumerate().zip(member_stages) {
            let orig = b.upload(w).context(|| at(l.name))?;
            let mut wt = b.upload(w).context(|| at(l.name))?;
            let mut mask = None;
            let mut loss = None;
            match method {
                Method::Sparsegpt => {
                    let f = factor.as_ref().expect("factor computed for sparsegpt");
                    let sel = match cfg.sparsity {
                        Sparsity::Unstructured(p) => ObsSelection::Unstructured(p),
                        Sparsity::NM { n, m } => ObsSelection::NM { n, m },
                    };
                    lst.time(b, "obs_prune", Purpose::Prune, &mut || {
                        let o = b.obs_prune(&mut wt, f, sel, cfg.block)?;
                        loss = Some(o.loss);
                        mask = Some(o.mask);
                        Ok(())
                    })
                    .context(|| at(l.name))?;
                }
                _ => {
                    // A ready G from the calibration file is final; an accumulated A is
                    // finalised (sqrt for l2) here.
                    let finalised = match &grads[i] {
                        Some(acc) if !grads_ready[i] => {
                            let mut out = None;
                            lst.time(b, "grad_finalize", Purpose::Prune, &mut || {
                                out = Some(b.grad_finalize(acc, cfg.grad_norm)?);
                                Ok(())
                            })
                            .context(|| at(l.name))?;
                            out
                        }
                        _ => None,
                    };
                    let g_final = finalised.as_ref().or(grads[i].as_ref());
                    let score = match method {
                        Method::Magnitude => Score::Magnitude,
                        Method::Wanda => Score::Wanda {
                            act: act.as_ref().expect("act for wanda"),
                        },
                        _ => Score::Gblm {
                            act: act.as_ref().expect("act for gblm"),
                            grad: g_final.expect("G for gblm"),
                        },
                    };
                    let pattern = method.mask_pattern(cfg.sparsity, cfg.group);
                    lst.time(b, "prune_scored", Purpose::Prune, &mut || {
                        mask = Some(b.prune_scored(&mut wt, score, pattern)?);
                        Ok(())
                    })
                    .context(|| at(l.name))?;
                }
            }
            let mut recon = None;
            lst.time(b, "recon_error", Purpose::Evaluate, &mut || {
                recon = Some(b.recon_error(&orig, &wt, &h)?);
                Ok(())
            })
            .context(|| at(l.name))?;
            let mask = b
                .download_mask(mask.as_ref().expect("mask produced"))
                .context(|| at(l.name))?;
            let pruned = mask.count();
            if keep {
                pruned_out.push(((*l).clone(), b.download(&wt).context(|| at(l.name))?));
                masks.push(mask);
            }
            linear_reports.push(LinearReport {
                name: l.name.to_string(),
                group: gname.to_string(),
                rows: l.rows,
                cols: l.cols,
                pruned,
                sparsity: pruned as f64 / (l.rows * l.cols) as f64,
                recon_error: recon.expect("recon computed").relative(),
                obs_loss: loss,
                stages: lst.0,
            });
            tick(&format!("{}: pruned", l.name), &mut done);
        }
        group_reports.push(GroupReport {
            group: gname.to_string(),
            cols,
            samples,
            tokens,
            ready,
            stages: stages.0,
            dead_columns: dead,
        });
    }

    let sum = |p: Purpose| -> f64 {
        group_reports
            .iter()
            .flat_map(|g| g.stages.iter())
            .chain(linear_reports.iter().flat_map(|l| l.stages.iter()))
            .filter(|s| s.purpose == p)
            .map(|s| s.seconds)
            .sum()
    };
    let report = LayerReport {
        model: layer.model.name.clone(),
        layer: layer.layer,
        method,
        sparsity: cfg.sparsity.to_string(),
        backend: b.info().clone(),
        calibration: src.describe(),
        prune_seconds: sum(Purpose::Prune),
        evaluate_seconds: sum(Purpose::Evaluate),
        groups: group_reports,
        linears: linear_reports,
        wall_seconds: t_wall.elapsed().as_secs_f64(),
    };
    Ok(LayerRun {
        report,
        pruned: pruned_out,
        masks,
    })
}
