//! The LoRA re-fits (MaskLoRA, ScaleLoRA) of §12: AdamW on B and A against the layer-wise loss
//! from H, then the merge with the explicit mask.

use prunebench_kernels::ops::{scheduled_lr, AdamStep, LoraForm, LoraInputs};
use prunebench_kernels::rng::Rng;
use prunebench_kernels::{Backend, Matrix};
use prunebench_models::config::{LinearSpec, LINEAR_NAMES};

use crate::error::{Context, HarnessError, Result};
use crate::prune::context::LayerCx;
use crate::prune::records::Purpose;
use crate::prune::stages::Stages;

pub(crate) struct Linear<'t, B: Backend> {
    pub spec: &'t LinearSpec,
    pub original: &'t B::Tensor,
    pub pruned: &'t mut B::Tensor,
    pub mask: &'t B::Mask,
}

pub(crate) struct Trained {
    pub seconds_per_step: f64,
    pub first_loss: f64,
    pub last_loss: f64,
}

/// PEFT's initialisation: B = 0 and A uniform in ±1/√cols (MaskLoRA), A = B = 1/√r
/// (ScaleLoRA, so that B·A = 1), seeded per layer and linear.
pub fn initial_factors(
    form: LoraForm,
    rows: usize,
    cols: usize,
    rank: usize,
    seed: u64,
    stream: &[u64],
) -> (Matrix, Matrix) {
    match form {
        LoraForm::Mask => {
            let mut rng = Rng::derive(seed, stream);
            let bound = 1.0 / (cols as f64).sqrt();
            let a = Matrix::from_fn(rank, cols, |_, _| {
                ((2.0 * rng.uniform() - 1.0) * bound) as f32
            });
            (Matrix::zeros(rows, rank), a)
        }
        LoraForm::Scale => {
            let v = 1.0 / (rank as f32).sqrt();
            (
                Matrix::from_fn(rows, rank, |_, _| v),
                Matrix::from_fn(rank, cols, |_, _| v),
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn train<B: Backend>(
    b: &B,
    cx: &LayerCx<'_>,
    lin: Linear<'_, B>,
    form: LoraForm,
    rank: usize,
    h: &B::Tensor,
    tokens: usize,
    stages: &mut Stages,
) -> Result<Trained> {
    let cfg = &cx.cfg.refit;
    let l = lin.spec;
    let at = || cx.at(l.name);
    let (rows, cols) = (l.rows, l.cols);
    let base = match form {
        LoraForm::Mask => Some(&*lin.pruned),
        LoraForm::Scale => None,
    };
    let mut parts = None;
    stages
        .time(b, "refit_base", Purpose::Prune, &mut || {
            parts = Some(b.refit_base(base, lin.original, h)?);
            Ok(())
        })
        .context(at)?;
    let (delta, delta_h) = parts.expect("base computed");
    let id = LINEAR_NAMES.iter().position(|n| *n == l.name).unwrap_or(0) as u64;
    let (b0, a0) = initial_factors(form, rows, cols, rank, cfg.seed, &[cx.layer as u64, id]);
    let (mut fb, mut fa) = (b.upload(&b0).context(at)?, b.upload(&a0).context(at)?);
    let (mut mb, mut vb) = (
        b.zeros(rows, rank).context(at)?,
        b.zeros(rows, rank).context(at)?,
    );
    let (mut ma, mut va) = (
        b.zeros(rank, cols).context(at)?,
        b.zeros(rank, cols).context(at)?,
    );
    let s = form.scale();
    let norm = 1.0 / (tokens * rows) as f64;
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    let mut step_seconds = 0.0;
    for i in 0..cfg.steps {
        let mut grad = None;
        let t0 = stage_seconds(stages);
        stages
            .time(b, "lora_grad", Purpose::Prune, &mut || {
                grad = Some(b.lora_grad(LoraInputs {
                    form,
                    wp: &*lin.pruned,
                    mask: lin.mask,
                    delta: &delta,
                    delta_h: &delta_h,
                    h,
                    b: &fb,
                    a: &fa,
                    s,
                    norm,
                })?);
                Ok(())
            })
            .context(at)?;
        let g = grad.expect("gradient computed");
        if !g.loss.is_finite() {
            return Err(HarnessError::Config(format!(
                "{}: the {}:{rank} re-fit's loss is not finite at step {i} of {}; nothing is written",
                at(),
                form.name(),
                cfg.steps
            )));
        }
        if i == 0 {
            first = g.loss;
        }
        last = g.loss;
        let step = AdamStep::new(scheduled_lr(cfg.lr, i, cfg.steps), i as u32 + 1);
        stages
            .time(b, "adamw", Purpose::Prune, &mut || {
                b.adamw_step(&mut fb, &g.db, &mut mb, &mut vb, step)?;
                b.adamw_step(&mut fa, &g.da, &mut ma, &mut va, step)
            })
            .context(at)?;
        step_seconds += stage_seconds(stages) - t0;
    }
    let mut merged = None;
    stages
        .time(b, "lora_merge", Purpose::Prune, &mut || {
            merged = Some(b.lora_merge(lin.pruned, lin.mask, &fb, &fa, form, s)?);
            Ok(())
        })
        .context(at)?;
    let merged = merged.expect("merged");
    // The f32 weights as written: an update that overflowed them is refused here, naming where.
    let host = b.download(&merged).context(at)?;
    if let Some(i) = host.data.iter().position(|v| !v.is_finite()) {
        return Err(HarnessError::Config(format!(
            "{}: the {}:{rank} re-fit left a non-finite weight at row {}, column {} after {} steps; nothing is written",
            at(),
            form.name(),
            i / cols,
            i % cols,
            cfg.steps
        )));
    }
    *lin.pruned = merged;
    Ok(Trained {
        seconds_per_step: step_seconds / cfg.steps.max(1) as f64,
        first_loss: first,
        last_loss: last,
    })
}

fn stage_seconds(stages: &Stages) -> f64 {
    stages.0.iter().map(|s| s.seconds).sum()
}
