//! The re-fit ops of §12: the base terms Δ and Δ·H of a pruned linear, the LoRA gradient and
//! merge in both forms, one AdamW step, the closed-form row scales, the norm system and the
//! damped solve. Their names, cases (small odd shapes and a model's linears), work model,
//! inputs, run and comparison.

use super::{not_in_family, Family};
use crate::cpu::CpuBackend;
use crate::error::Result;
use crate::ops::{tolerance as tol, AdamStep, Backend, LoraForm, LoraGrad, LoraInputs};
use crate::rng::{heavy_tailed, heavy_tailed_positive};
use crate::suite::case::{ModelShapes, Op, OpCase};
use crate::suite::compare::{relative, value_check, Check};
use crate::suite::inputs::{correlated, hessian_of, scaled, shapes_only, CaseInputs};
use crate::suite::run::{never_ran, CaseOutput};
use crate::tensor::{Mask, Matrix};

const FAMILY: Family = Family::Refit;

/// The AdamW step every ADAMW case takes: the third, at PERP's learning rate.
pub const ADAMW_CASE_STEP: (f64, u32) = (5e-4, 3);

// ---- The cases ----

/// The re-fit ops on odd shapes: a single row, widths that are not a multiple of any tile, a
/// rank above a tile's width, rank 1, and rows past one 128-row tile (the GEMM's wider tiles).
pub fn small_cases() -> Vec<OpCase> {
    let mut v = vec![
        OpCase::new(Op::RefitBase, 13, 200).tokens(300, 1),
        OpCase::new(Op::RefitBase, 1, 37).tokens(80, 1),
        OpCase::new(Op::AdamW, 13, 37),
        OpCase::new(Op::AdamW, 1, 300),
        OpCase::new(Op::RowScale, 13, 200).tokens(300, 1),
        OpCase::new(Op::RowScale, 1, 37).tokens(80, 1),
        OpCase::new(Op::RowScale, 150, 200).tokens(300, 1),
        OpCase::new(Op::NormSystem, 13, 200).tokens(300, 1),
        OpCase::new(Op::NormSystem, 1, 37).tokens(80, 1),
        OpCase::new(Op::SpdSolve, 1, 37).tokens(80, 1),
        OpCase::new(Op::SpdSolve, 1, 300).tokens(400, 1),
    ];
    for form in [LoraForm::Mask, LoraForm::Scale] {
        for (rank, rows, cols) in [(4, 13, 200), (1, 1, 37), (17, 37, 130)] {
            v.push(OpCase::new(Op::LoraGrad(form, rank), rows, cols).tokens(300, 1));
            v.push(OpCase::new(Op::LoraMerge(form, rank), rows, cols));
        }
        v.push(OpCase::new(Op::LoraGrad(form, 4), 150, 200).tokens(300, 1));
    }
    v
}

/// The re-fit ops on a model's linear shapes at PERP's rank 16.
pub fn refit_cases(shapes: &[(usize, usize)], tokens: usize) -> Vec<OpCase> {
    let mut v = Vec::new();
    let mut input_cols: Vec<usize> = shapes.iter().map(|s| s.1).collect();
    input_cols.sort_unstable();
    input_cols.dedup();
    for &c in &input_cols {
        v.push(OpCase::new(Op::SpdSolve, 1, c).tokens(tokens, 1));
    }
    for &(r, c) in shapes {
        v.push(OpCase::new(Op::RefitBase, r, c).tokens(tokens, 1));
        v.push(OpCase::new(Op::AdamW, r, 16));
        v.push(OpCase::new(Op::AdamW, 16, c));
        v.push(OpCase::new(Op::RowScale, r, c).tokens(tokens, 1));
        v.push(OpCase::new(Op::NormSystem, r, c).tokens(tokens, 1));
        for form in [LoraForm::Mask, LoraForm::Scale] {
            v.push(OpCase::new(Op::LoraGrad(form, 16), r, c).tokens(tokens, 1));
            v.push(OpCase::new(Op::LoraMerge(form, 16), r, c));
        }
    }
    // Shapes with the same rows share their AdamW case over B.
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|c| seen.insert(c.name()));
    v
}

/// At a model's shapes.
pub(in crate::suite) fn model_cases(m: &ModelShapes) -> Vec<OpCase> {
    refit_cases(&m.linears, m.tokens)
}

// ---- Names and work model ----

/// The op's name without shape, e.g. `LORA_GRAD_MASK`.
pub(in crate::suite) fn op_name(op: Op) -> String {
    match op {
        Op::RefitBase => "REFIT_BASE".into(),
        Op::LoraGrad(f, _) => format!("LORA_GRAD_{}", f.name().to_uppercase()),
        Op::AdamW => "ADAMW".into(),
        Op::LoraMerge(f, _) => format!("LORA_MERGE_{}", f.name().to_uppercase()),
        Op::RowScale => "ROW_SCALE".into(),
        Op::NormSystem => "NORM_SYSTEM".into(),
        Op::SpdSolve => "SPD_SOLVE".into(),
        op => not_in_family(op, FAMILY),
    }
}

/// The key parameters of the canonical name.
pub(in crate::suite) fn params(case: &OpCase) -> String {
    let (r, c) = (case.rows, case.cols);
    match case.op {
        Op::LoraGrad(_, rank) | Op::LoraMerge(_, rank) => {
            format!("rank={rank},rows={r},cols={c}")
        }
        Op::SpdSolve => format!("cols={c}"),
        Op::RefitBase | Op::AdamW | Op::RowScale | Op::NormSystem => format!("rows={r},cols={c}"),
        op => not_in_family(op, FAMILY),
    }
}

/// Bytes moved at the least (f32 tensors, 1-bit masks): each input read once, each output
/// written once.
pub(in crate::suite) fn bytes(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    let mask = r * c.div_ceil(32) * 4;
    let f = 4u64;
    match case.op {
        Op::RefitBase => f * (4 * r * c + c * c),
        // W_p or the mask, Δ, ΔH, H, B, A in; ∂B, ∂A out (Ḡ stays in the kernel's tiles or
        // makes one round trip, which the model does not count).
        Op::LoraGrad(_, k) => {
            let k = k as u64;
            f * (3 * r * c + c * c + 2 * k * (r + c)) + mask
        }
        Op::AdamW => f * 7 * r * c,
        Op::LoraMerge(_, k) => f * (2 * r * c + k as u64 * (r + c)) + mask,
        Op::RowScale => f * (3 * r * c + c * c + r),
        Op::NormSystem => f * (4 * r * c + 2 * c * c + c),
        Op::SpdSolve => f * (c * c + 2 * c),
        op => not_in_family(op, FAMILY),
    }
}

/// Floating-point operations of the math as ALGORITHMS.md counts them.
pub(in crate::suite) fn flops(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    match case.op {
        Op::RefitBase => 2 * r * c * c,
        // B·A, D·H, ∂B and ∂A.
        Op::LoraGrad(_, k) => 2 * r * c * c + 6 * k as u64 * r * c,
        Op::AdamW => 12 * r * c,
        Op::LoraMerge(_, k) => 2 * k as u64 * r * c,
        Op::RowScale => 2 * r * c * c + 4 * r * c,
        // Two linears: ŴᵀŴ (a SYRK, half a GEMM) and (W − Ŵ)·H each.
        Op::NormSystem => 2 * (r * c * c + 2 * r * c * c),
        // Cholesky c³/3 and two triangular solves.
        Op::SpdSolve => c * c * c / 3 + 2 * c * c,
        op => not_in_family(op, FAMILY),
    }
}

/// Whether the op's cost is dominated by arithmetic rather than memory traffic: the products
/// with H and the solve are; AdamW and the merge (a rank-k update) are not.
pub(in crate::suite) fn compute_bound(case: &OpCase) -> bool {
    match case.op {
        Op::RefitBase | Op::LoraGrad(..) | Op::RowScale | Op::NormSystem | Op::SpdSolve => true,
        Op::AdamW | Op::LoraMerge(..) => false,
        op => not_in_family(op, FAMILY),
    }
}

// ---- Inputs ----

/// The case's deterministic inputs.
pub(in crate::suite) fn inputs(case: &OpCase) -> Result<CaseInputs> {
    let (r, c, s) = (case.rows, case.cols, case.seed);
    let mut inp = CaseInputs::default();
    match case.op {
        Op::RefitBase | Op::RowScale => {
            let (w, wp, _) = refit_weight(r, c, s);
            let h = hessian_of(&correlated(case.tokens, c, s + 1), 1)?;
            inp.tensors = vec![("w", w), ("wp", wp), ("h", h)];
        }
        Op::LoraGrad(form, k) => {
            let (w, wp, mask) = refit_weight(r, c, s);
            let h = hessian_of(&correlated(case.tokens, c, s + 1), 1)?;
            // Δ and Δ·H as the reference forms them (Δ·H stands in as Δ when only shapes
            // are wanted: it is an r x c² product).
            let (delta, delta_h) = if shapes_only() {
                let delta = heavy_tailed(r, c, s + 3);
                (delta.clone(), delta)
            } else {
                let cpu = CpuBackend::new();
                let (wpt, wt, ht) = (cpu.upload(&wp)?, cpu.upload(&w)?, cpu.upload(&h)?);
                let base = match form {
                    LoraForm::Mask => Some(&wpt),
                    LoraForm::Scale => None,
                };
                let (delta, delta_h) = cpu.refit_base(base, &wt, &ht)?;
                (cpu.download(&delta)?, cpu.download(&delta_h)?)
            };
            let (b, a) = lora_factors(form, r, c, k, s);
            inp.mask = Some(mask);
            inp.tensors = vec![
                ("wp", wp),
                ("h", h),
                ("delta", delta),
                ("delta_h", delta_h),
                ("b", b),
                ("a", a),
            ];
        }
        Op::LoraMerge(form, k) => {
            let (_, wp, mask) = refit_weight(r, c, s);
            let (b, a) = lora_factors(form, r, c, k, s);
            inp.mask = Some(mask);
            inp.tensors = vec![("wp", wp), ("b", b), ("a", a)];
        }
        Op::AdamW => {
            inp.tensors = vec![
                ("param", scaled(heavy_tailed(r, c, s), 0.01)),
                ("grad", scaled(heavy_tailed(r, c, s + 1), 1e-3)),
                ("m", scaled(heavy_tailed(r, c, s + 2), 1e-4)),
                ("v", scaled(heavy_tailed_positive(r, c, s + 3), 1e-8)),
            ];
        }
        Op::NormSystem => {
            let (w1, wp1, _) = refit_weight(r, c, s);
            let (w2, wp2, _) = refit_weight(r, c, s + 10);
            let h = hessian_of(&correlated(case.tokens, c, s + 1), 1)?;
            inp.tensors = vec![("w1", w1), ("wp1", wp1), ("w2", w2), ("wp2", wp2), ("h", h)];
        }
        Op::SpdSolve => {
            let m = hessian_of(&correlated(case.tokens, c, s), 1)?;
            inp.tensors = vec![("m", m), ("rhs", heavy_tailed(1, c, s + 1))];
        }
        op => not_in_family(op, FAMILY),
    }
    Ok(inp)
}

/// A dense weight, its pruned copy and the mask (half of every row, by magnitude).
fn refit_weight(rows: usize, cols: usize, seed: u64) -> (Matrix, Matrix, Mask) {
    let w = scaled(heavy_tailed(rows, cols, seed), 0.02);
    let mut mask = Mask::empty(rows, cols);
    let mut wp = w.clone();
    for r in 0..rows {
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| w.get(r, a).abs().total_cmp(&w.get(r, b).abs()));
        for &c in &order[..cols / 2] {
            mask.set(r, c, true);
            wp.data[r * cols + c] = 0.0;
        }
    }
    (w, wp, mask)
}

/// B and A away from their initial values (B = 0 would make ∂A vanish): the mask form's near
/// PEFT's scale, the scale form's near 1/√r so that B·A ≈ 1.
fn lora_factors(
    form: LoraForm,
    rows: usize,
    cols: usize,
    rank: usize,
    seed: u64,
) -> (Matrix, Matrix) {
    let mut b = scaled(heavy_tailed(rows, rank, seed + 20), 0.01);
    let mut a = scaled(
        heavy_tailed(rank, cols, seed + 21),
        1.0 / (cols as f32).sqrt(),
    );
    if form == LoraForm::Scale {
        let base = 1.0 / (rank as f32).sqrt();
        for v in b.data.iter_mut().chain(a.data.iter_mut()) {
            *v = base + 0.1 * base * (*v).clamp(-3.0, 3.0);
        }
    }
    (b, a)
}

// ---- Running on a backend ----

/// A re-fit case's device tensors, by op.
pub enum Prepared<B: Backend> {
    RefitBase {
        wp: B::Tensor,
        w: B::Tensor,
        h: B::Tensor,
        out: Option<(B::Tensor, B::Tensor)>,
    },
    LoraGrad {
        form: LoraForm,
        wp: B::Tensor,
        mask: B::Mask,
        delta: B::Tensor,
        delta_h: B::Tensor,
        h: B::Tensor,
        b: B::Tensor,
        a: B::Tensor,
        s: f64,
        norm: f64,
        out: Option<LoraGrad<B::Tensor>>,
    },
    AdamW {
        param: B::Tensor,
        grad: B::Tensor,
        m: B::Tensor,
        v: B::Tensor,
    },
    LoraMerge {
        form: LoraForm,
        wp: B::Tensor,
        mask: B::Mask,
        b: B::Tensor,
        a: B::Tensor,
        out: Option<B::Tensor>,
    },
    RowScale {
        w_hat: B::Tensor,
        w: B::Tensor,
        h: B::Tensor,
        out: Option<B::Tensor>,
    },
    NormSystem {
        pairs: Vec<(B::Tensor, B::Tensor)>,
        h: B::Tensor,
        out: Option<(B::Tensor, B::Tensor)>,
    },
    SpdSolve {
        m: B::Tensor,
        rhs: B::Tensor,
        out: Option<B::Tensor>,
    },
}

pub(in crate::suite) fn prepare<B: Backend>(
    b: &B,
    case: &OpCase,
    inp: &CaseInputs,
) -> Result<Prepared<B>> {
    let up = |name: &str| b.upload(inp.get(name));
    Ok(match case.op {
        Op::RefitBase => Prepared::RefitBase {
            wp: up("wp")?,
            w: up("w")?,
            h: up("h")?,
            out: None,
        },
        Op::LoraGrad(form, _) => Prepared::LoraGrad {
            form,
            wp: up("wp")?,
            mask: b.upload_mask(inp.mask.as_ref().expect("re-fit case has a mask"))?,
            delta: up("delta")?,
            delta_h: up("delta_h")?,
            h: up("h")?,
            b: up("b")?,
            a: up("a")?,
            s: form.scale(),
            norm: case.refit_norm(),
            out: None,
        },
        Op::AdamW => Prepared::AdamW {
            param: up("param")?,
            grad: up("grad")?,
            m: up("m")?,
            v: up("v")?,
        },
        Op::LoraMerge(form, _) => Prepared::LoraMerge {
            form,
            wp: up("wp")?,
            mask: b.upload_mask(inp.mask.as_ref().expect("re-fit case has a mask"))?,
            b: up("b")?,
            a: up("a")?,
            out: None,
        },
        Op::RowScale => Prepared::RowScale {
            w_hat: up("wp")?,
            w: up("w")?,
            h: up("h")?,
            out: None,
        },
        Op::NormSystem => Prepared::NormSystem {
            pairs: vec![(up("wp1")?, up("w1")?), (up("wp2")?, up("w2")?)],
            h: up("h")?,
            out: None,
        },
        Op::SpdSolve => Prepared::SpdSolve {
            m: up("m")?,
            rhs: up("rhs")?,
            out: None,
        },
        op => not_in_family(op, FAMILY),
    })
}

/// Runs the op once; AdamW updates its state in place.
pub(in crate::suite) fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::RefitBase { wp, w, h, out } => {
            *out = Some(b.refit_base(Some(wp), w, h)?);
            Ok(())
        }
        Prepared::LoraGrad {
            form,
            wp,
            mask,
            delta,
            delta_h,
            h,
            b: lb,
            a,
            s,
            norm,
            out,
        } => {
            *out = Some(b.lora_grad(LoraInputs {
                form: *form,
                wp,
                mask,
                delta,
                delta_h,
                h,
                b: lb,
                a,
                s: *s,
                norm: *norm,
            })?);
            Ok(())
        }
        Prepared::AdamW { param, grad, m, v } => {
            let (lr, t) = ADAMW_CASE_STEP;
            b.adamw_step(param, grad, m, v, AdamStep::new(lr, t))
        }
        Prepared::LoraMerge {
            form,
            wp,
            mask,
            b: lb,
            a,
            out,
        } => {
            *out = Some(b.lora_merge(wp, mask, lb, a, *form, form.scale())?);
            Ok(())
        }
        Prepared::RowScale { w_hat, w, h, out } => {
            *out = Some(b.row_scale(w_hat, w, h)?);
            Ok(())
        }
        Prepared::NormSystem { pairs, h, out } => {
            let refs: Vec<(&B::Tensor, &B::Tensor)> = pairs.iter().map(|(a, c)| (a, c)).collect();
            *out = Some(b.norm_system(&refs, h)?);
            Ok(())
        }
        Prepared::SpdSolve { m, rhs, out } => {
            *out = Some(b.spd_solve(m, rhs, crate::ops::PERCDAMP)?);
            Ok(())
        }
    }
}

pub(in crate::suite) fn collect<B: Backend>(b: &B, p: &Prepared<B>) -> Result<CaseOutput> {
    let mut o = CaseOutput::default();
    match p {
        Prepared::RefitBase { out, .. } | Prepared::NormSystem { out, .. } => {
            let (x, y) = out.as_ref().ok_or_else(never_ran)?;
            let names = match p {
                Prepared::RefitBase { .. } => ("delta", "delta_h"),
                _ => ("m", "rhs"),
            };
            o.values.push((names.0, b.download(x)?));
            o.values.push((names.1, b.download(y)?));
        }
        Prepared::LoraGrad { out, .. } => {
            let g = out.as_ref().ok_or_else(never_ran)?;
            o.values.push(("db", b.download(&g.db)?));
            o.values.push(("da", b.download(&g.da)?));
            o.loss = Some(g.loss);
        }
        Prepared::AdamW { param, m, v, .. } => {
            o.values.push(("param", b.download(param)?));
            o.values.push(("m", b.download(m)?));
            o.values.push(("v", b.download(v)?));
        }
        Prepared::LoraMerge { out, .. } => {
            o.values
                .push(("w", b.download(out.as_ref().ok_or_else(never_ran)?)?));
        }
        Prepared::RowScale { w_hat, out, .. } => {
            o.values.push(("w", b.download(w_hat)?));
            o.values
                .push(("scales", b.download(out.as_ref().ok_or_else(never_ran)?)?));
        }
        Prepared::SpdSolve { out, .. } => {
            o.values
                .push(("x", b.download(out.as_ref().ok_or_else(never_ran)?)?));
        }
    }
    Ok(o)
}

// ---- Comparison ----

/// The checks of one case: reference output `want`, backend output `got`.
pub(in crate::suite) fn compare(
    case: &OpCase,
    inputs: &CaseInputs,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    match case.op {
        Op::RefitBase => vec![
            value_check("delta", want, got, tol::ELEMENTWISE),
            value_check("delta_h", want, got, tol::REFIT_GEMM),
        ],
        Op::LoraGrad(..) => vec![
            value_check("db", want, got, tol::REFIT_GEMM),
            value_check("da", want, got, tol::REFIT_GEMM),
            Check::new(
                "loss",
                "relative",
                match (want.loss, got.loss) {
                    (Some(a), Some(b)) => relative(a, b),
                    _ => f64::INFINITY,
                },
                tol::REFIT_REL,
            ),
        ],
        Op::AdamW => ["param", "m", "v"]
            .into_iter()
            .map(|w| value_check(w, want, got, tol::ELEMENTWISE))
            .collect(),
        Op::LoraMerge(..) => {
            let mask = inputs.mask.as_ref().expect("merge case has a mask");
            // The mask survives bit for bit: no pruned entry written, no kept entry dropped.
            let broken = got.value("w").map_or(f64::INFINITY, |w| {
                (0..w.data.len())
                    .filter(|&i| {
                        let pruned = mask.get(i / w.cols, i % w.cols);
                        (w.data[i] != 0.0) == pruned
                    })
                    .count() as f64
            });
            vec![
                value_check("w", want, got, tol::ELEMENTWISE),
                Check::new("mask kept", "mismatches", broken, 0.0),
            ]
        }
        Op::RowScale => vec![
            value_check("scales", want, got, tol::REFIT_GEMM),
            value_check("w", want, got, tol::REFIT_GEMM),
        ],
        Op::NormSystem => vec![
            value_check("m", want, got, tol::REFIT_GEMM),
            value_check("rhs", want, got, tol::REFIT_GEMM),
        ],
        Op::SpdSolve => vec![value_check("x", want, got, tol::HINV_FACTOR)],
        op => not_in_family(op, FAMILY),
    }
}
