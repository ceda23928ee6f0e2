//! The structured-pruning ops of §11: the gradient sums, the explicit damped inverse, the OBS
//! and Taylor saliencies of groups, the compensating update for removed groups and the
//! compaction of what is kept. Their names, cases (small odd shapes and one model layer's
//! groups), work model, inputs, run and comparison.

use std::sync::{Arc, Mutex, OnceLock};

use super::{not_in_family, Family};
use crate::cpu::CpuBackend;
use crate::error::Result;
use crate::ops::{
    tolerance as tol, Backend, HinvExplicit, SegmentAxis, TaylorInputs, TaylorKind,
    GBLM_GRAD_SCALE, PERCDAMP,
};
use crate::rng::{heavy_tailed, heavy_tailed_positive, Rng};
use crate::suite::case::{LayerDims, ModelShapes, Op, OpCase};
use crate::suite::compare::{dead_check, max_relative, relative, value_check, Check};
use crate::suite::inputs::{
    correlated, hessian_of, hessian_with_dead_column, identity, scaled, shapes_only, CaseInputs,
};
use crate::suite::run::{never_ran, CaseOutput};
use crate::tensor::Matrix;

const FAMILY: Family = Family::Structured;

/// The calibration samples N behind a Taylor case's statistics: Ḡ = sum / N and
/// F = l2 accumulator / (c²·N) (§11).
pub const TAYLOR_CASE_SAMPLES: usize = 4;

fn axis_name(a: SegmentAxis) -> &'static str {
    match a {
        SegmentAxis::Rows => "rows",
        SegmentAxis::Cols => "cols",
    }
}

fn kept_label(k: Option<usize>) -> String {
    k.map_or_else(|| "all".into(), |k| k.to_string())
}

// ---- The cases ----

fn obs_saliency(width: usize, rows: usize, cols: usize) -> OpCase {
    OpCase::new(Op::ObsSaliency { width }, rows, cols).tokens(cols + 100, 1)
}

fn taylor(kind: TaylorKind, axis: SegmentAxis, width: usize, r: usize, c: usize) -> OpCase {
    OpCase::new(Op::TaylorSaliency { kind, axis, width }, r, c)
}

fn structured_update(width: usize, removed: usize, rows: usize, cols: usize) -> OpCase {
    OpCase::new(Op::StructuredUpdate { width, removed }, rows, cols).tokens(cols + 100, 1)
}

fn compact(kept: (Option<usize>, Option<usize>), width: usize, r: usize, c: usize) -> OpCase {
    let (rows, cols) = kept;
    OpCase::new(Op::Compact { rows, cols, width }, r, c)
}

/// The structured ops of §11 on odd shapes: a single row, widths that are not multiples of any
/// workgroup (37, 130, 300), three KV groups (72 columns of width 24), single channels (width
/// 1), removed sets spread over several groups, every Taylor kind on both axes. Hessians from
/// more tokens than columns, so that Hinv is well conditioned before the damping.
pub fn small_cases() -> Vec<OpCase> {
    use SegmentAxis::{Cols, Rows};
    use TaylorKind::{Taylor1, Taylor2, TaylorMix};
    vec![
        OpCase::new(Op::GradSum, 13, 37).tokens(7, 1),
        OpCase::new(Op::GradSum, 1, 130).tokens(65, 1),
        OpCase::new(Op::GradSum, 67, 300).tokens(33, 1),
        OpCase::new(Op::HinvExplicit, 1, 37).tokens(80, 1),
        OpCase::new(Op::HinvExplicit, 1, 130).tokens(230, 1),
        OpCase::new(Op::HinvExplicit, 1, 300).tokens(400, 1),
        obs_saliency(1, 13, 37),
        obs_saliency(24, 13, 72),
        obs_saliency(13, 1, 130),
        obs_saliency(60, 37, 300),
        taylor(Taylor1, Rows, 1, 13, 37),
        taylor(Taylor1, Cols, 24, 13, 72),
        taylor(Taylor2, Rows, 13, 39, 37),
        taylor(Taylor2, Cols, 1, 1, 300),
        taylor(TaylorMix, Rows, 24, 72, 130),
        taylor(TaylorMix, Cols, 37, 13, 37),
        taylor(TaylorMix, Rows, 1, 1, 37),
        // One KV group of three; five single channels; one row; four groups of twenty.
        structured_update(24, 1, 13, 72),
        structured_update(1, 5, 13, 37),
        structured_update(13, 3, 1, 130),
        structured_update(20, 4, 37, 300),
        compact((Some(5), None), 1, 13, 37),
        compact((None, Some(20)), 1, 13, 37),
        compact((None, Some(130)), 10, 1, 300),
        compact((Some(48), Some(24)), 24, 72, 72),
    ]
}

/// Greedy rounds of §11's `obs` compensation by default.
const STRUCTURED_ROUNDS: usize = 8;

/// The structured ops on one model's layer, at a 50% cut: the gradient sums and Taylor
/// saliencies of every linear shape with its producer or consumer groups (heads of e rows or
/// columns, single FFN channels), the explicit Hinv of both consumers' inputs, the OBS saliency
/// of o's KV groups (e·r columns) and query heads (e) and of down's channels, the first of
/// eight greedy rounds' updates on o and down, and compaction of each linear to its kept half.
pub fn structured_cases(dims: &LayerDims, tokens: usize) -> Vec<OpCase> {
    use SegmentAxis::{Cols, Rows};
    use TaylorKind::{Taylor1, Taylor2, TaylorMix};
    let LayerDims {
        hidden: d,
        intermediate: f,
        heads,
        kv_heads: g,
        head_dim: e,
    } = *dims;
    let r = heads / g.max(1);
    let (q, kv, o, up, down) = ((heads * e, d), (g * e, d), (d, heads * e), (f, d), (d, f));
    let with_tokens = |c: OpCase| c.tokens(tokens, 1);
    let mut v = Vec::new();
    for (rows, cols) in [q, kv, o, up, down] {
        v.push(with_tokens(OpCase::new(Op::GradSum, rows, cols)));
    }
    v.push(with_tokens(OpCase::new(Op::HinvExplicit, 1, o.1)));
    v.push(with_tokens(OpCase::new(Op::HinvExplicit, 1, f)));
    // The first greedy round removes ⌈(groups to remove) / rounds⌉ of half the groups. Each
    // consumer's saliencies and update are listed together: they share the inverse.
    let first_round = |groups: usize| (groups / 2).div_ceil(STRUCTURED_ROUNDS).max(1);
    for width in [e * r, e] {
        v.push(with_tokens(OpCase::new(
            Op::ObsSaliency { width },
            o.0,
            o.1,
        )));
    }
    v.push(with_tokens(OpCase::new(
        Op::StructuredUpdate {
            width: e * r,
            removed: first_round(g),
        },
        o.0,
        o.1,
    )));
    v.push(with_tokens(OpCase::new(
        Op::ObsSaliency { width: 1 },
        down.0,
        down.1,
    )));
    v.push(with_tokens(OpCase::new(
        Op::StructuredUpdate {
            width: 1,
            removed: first_round(f),
        },
        down.0,
        down.1,
    )));
    v.extend([
        taylor(TaylorMix, Rows, e, q.0, q.1),
        taylor(TaylorMix, Rows, e, kv.0, kv.1),
        taylor(TaylorMix, Cols, e, o.0, o.1),
        taylor(TaylorMix, Rows, 1, up.0, up.1),
        taylor(TaylorMix, Cols, 1, down.0, down.1),
        taylor(Taylor1, Cols, e, o.0, o.1),
        taylor(Taylor2, Rows, 1, up.0, up.1),
    ]);
    // Half the KV groups kept (their q rows, k/v rows and o columns), half the FFN channels.
    let half = |n: usize, width: usize| Some((n / width / 2).max(1) * width);
    v.extend([
        compact((half(q.0, e * r), None), e * r, q.0, q.1),
        compact((half(kv.0, e), None), e, kv.0, kv.1),
        compact((None, half(o.1, e * r)), e * r, o.0, o.1),
        compact((half(up.0, 1), None), 1, up.0, up.1),
        compact((None, half(down.1, 1)), 1, down.0, down.1),
    ]);
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|c| seen.insert(c.name()));
    v
}

/// At a model's shapes.
pub(in crate::suite) fn model_cases(m: &ModelShapes) -> Vec<OpCase> {
    structured_cases(&m.layer, m.tokens)
}

// ---- Names and work model ----

/// The op's name without shape, e.g. `OBS_SALIENCY`.
pub(in crate::suite) fn op_name(op: Op) -> String {
    match op {
        Op::GradSum => "GRAD_SUM".into(),
        Op::HinvExplicit => "HINV_EXPLICIT".into(),
        Op::ObsSaliency { .. } => "OBS_SALIENCY".into(),
        Op::TaylorSaliency { .. } => "TAYLOR_SALIENCY".into(),
        Op::StructuredUpdate { .. } => "STRUCTURED_UPDATE".into(),
        Op::Compact { .. } => "COMPACT".into(),
        op => not_in_family(op, FAMILY),
    }
}

/// The key parameters of the canonical name.
pub(in crate::suite) fn params(case: &OpCase) -> String {
    let (r, c, t) = (case.rows, case.cols, case.tokens);
    match case.op {
        Op::GradSum => format!("rows={r},cols={c},tokens={t}"),
        Op::HinvExplicit => format!("cols={c}"),
        Op::ObsSaliency { width } => format!("width={width},rows={r},cols={c}"),
        Op::TaylorSaliency { kind, axis, width } => format!(
            "kind={},axis={},width={width},rows={r},cols={c}",
            kind.name(),
            axis_name(axis)
        ),
        Op::StructuredUpdate { width, removed } => {
            format!("width={width},removed={removed},rows={r},cols={c}")
        }
        Op::Compact { rows, cols, width } => format!(
            "kept_rows={},kept_cols={},width={width},rows={r},cols={c}",
            kept_label(rows),
            kept_label(cols)
        ),
        op => not_in_family(op, FAMILY),
    }
}

/// Bytes moved at the least (f32 tensors): each input read once, each output written once.
pub(in crate::suite) fn bytes(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    let f = 4u64;
    match case.op {
        Op::GradSum => f * (case.tokens as u64 * (r + c) + 2 * r * c),
        Op::HinvExplicit => f * 2 * c * c,
        // W, each group's diagonal block of Hinv (c/width blocks of width²), the scores.
        Op::ObsSaliency { width } => {
            let k = width as u64;
            f * (r * c + c * k + c / k)
        }
        Op::TaylorSaliency { kind, axis, width } => {
            let stats = kind.needs_mean_grad() as u64 + kind.needs_fisher() as u64;
            let along = match axis {
                SegmentAxis::Rows => r,
                SegmentAxis::Cols => c,
            };
            f * ((1 + stats) * r * c + along / width as u64)
        }
        // W and Hinv read and written in place.
        Op::StructuredUpdate { .. } => f * (2 * r * c + 2 * c * c),
        // The kept entries read and written, the index lists read.
        Op::Compact { rows, cols, .. } => {
            let (kr, kc) = (rows.map_or(r, |k| k as u64), cols.map_or(c, |k| k as u64));
            f * 2 * kr * kc + 4 * (rows.map_or(0, |k| k as u64) + cols.map_or(0, |k| k as u64))
        }
        op => not_in_family(op, FAMILY),
    }
}

/// Floating-point operations of the math as ALGORITHMS.md counts them.
pub(in crate::suite) fn flops(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    match case.op {
        // The product dYᵀX and the add.
        Op::GradSum => 2 * r * c * case.tokens as u64 + r * c,
        // Cholesky c³/3, triangular inverse c³/3, L⁻ᵀL⁻¹ c³/3.
        Op::HinvExplicit => c * c * c,
        // Per group S of k columns: the Cholesky of Hinv[S,S] k³/3, Q = W[:,S]·L⁻ᵀ as a
        // triangular solve r·k², ½‖Q‖² 2·r·k; c/k groups.
        Op::ObsSaliency { width } => {
            let k = width as u64;
            c * k * k / 3 + r * c * k + 2 * r * c
        }
        // Per entry: Ḡ = scale·sum, W·Ḡ, the add (taylor1); F = scale·acc, W·F·W, the add
        // (taylor2); both, ½·, the difference and the add (taylor_mix).
        Op::TaylorSaliency { kind, .. } => {
            let per = match kind {
                TaylorKind::Taylor1 => 3,
                TaylorKind::Taylor2 => 4,
                TaylorKind::TaylorMix => 8,
            };
            per * r * c
        }
        // k = |S|: the Cholesky of Hinv[S,S] k³/3, Y = L⁻¹·Hinv[S,:] k²·c, Q = W[:,S]·L⁻ᵀ
        // r·k², ε = ½‖Q‖² 2·r·k, W −= Q·Y 2·r·k·c, Hinv −= YᵀY a SYRK c²·k.
        Op::StructuredUpdate { width, removed } => {
            let k = (width * removed) as u64;
            k * k * k / 3 + k * k * c + r * k * k + 2 * r * k + 2 * r * k * c + c * c * k
        }
        Op::Compact { .. } => 0,
        op => not_in_family(op, FAMILY),
    }
}

/// Whether the op's cost is dominated by arithmetic rather than memory traffic.
pub(in crate::suite) fn compute_bound(case: &OpCase) -> bool {
    match case.op {
        // About k/4 flops per byte for groups of k columns (the triangular solve against
        // W's k columns dominates): from k = 64, 16 per byte, past the f32 balance.
        Op::ObsSaliency { width } => width >= 64,
        // Between k/8 and k/4 flops per byte for k removed columns (the two GEMMs against
        // W and Hinv, both read and written): from k = 128.
        Op::StructuredUpdate { width, removed } => width * removed >= 128,
        // The product dYᵀX, and three c³/3 factorisations.
        Op::GradSum | Op::HinvExplicit => true,
        // An elementwise pass; a gather.
        Op::TaylorSaliency { .. } | Op::Compact { .. } => false,
        op => not_in_family(op, FAMILY),
    }
}

// ---- Inputs ----

/// The case's deterministic inputs.
pub(in crate::suite) fn inputs(case: &OpCase) -> Result<CaseInputs> {
    let (r, c, s) = (case.rows, case.cols, case.seed);
    let mut inp = CaseInputs::default();
    match case.op {
        Op::HinvExplicit => inp.tensors = vec![("h", hessian_with_dead_column(case)?)],
        Op::GradSum => {
            // The sum of earlier samples, of the size one sample adds (each term a dot of
            // `tokens` products), so that an error in the new term cannot hide under it.
            let earlier = 1e-3 * (case.tokens as f32).sqrt();
            inp.tensors = vec![
                ("acc", scaled(heavy_tailed(r, c, s), earlier)),
                ("dy", scaled(heavy_tailed(case.tokens, r, s + 1), 1e-3)),
                ("x", heavy_tailed(case.tokens, c, s + 2)),
            ];
        }
        Op::ObsSaliency { .. } => {
            let w = scaled(heavy_tailed(r, c, s), 0.02);
            let hinv = hinv_of(case.tokens, c, s + 1)?;
            inp.tensors = vec![("w", w), ("hinv", (*hinv).clone())];
        }
        Op::StructuredUpdate { width, removed } => {
            let w = scaled(heavy_tailed(r, c, s), 0.02);
            let hinv = hinv_of(case.tokens, c, s + 1)?;
            let groups = spread_choice(c / width, removed, s + 2);
            let cols = groups
                .iter()
                .flat_map(|&g| g * width..(g + 1) * width)
                .collect();
            inp.indices = vec![("removed", cols)];
            inp.tensors = vec![("w", w), ("hinv", (*hinv).clone())];
        }
        Op::TaylorSaliency { kind, .. } => {
            let n = TAYLOR_CASE_SAMPLES as f32;
            let w = scaled(heavy_tailed(r, c, s), 0.02);
            // Ḡ about 1e-3 and F about 0.1, so that W·Ḡ and ½·W·F·W are of one size for
            // |W| ~ 0.02: taylor_mix's difference depends on both, and neither statistic
            // can be read wrongly (or not at all) without moving the scores.
            let mut tensors = vec![("w", w)];
            if kind.needs_mean_grad() {
                tensors.push(("grad_sum", scaled(heavy_tailed(r, c, s + 1), 1e-3 * n)));
            }
            if kind.needs_fisher() {
                let acc = 0.1 * GBLM_GRAD_SCALE * GBLM_GRAD_SCALE * n;
                tensors.push(("grad_sq", scaled(heavy_tailed_positive(r, c, s + 2), acc)));
            }
            inp.tensors = tensors;
        }
        Op::Compact { rows, cols, width } => {
            let mut lists = Vec::new();
            for (role, kept, len, seed) in [("rows", rows, r, s + 1), ("cols", cols, c, s + 2)] {
                if let Some(k) = kept {
                    let groups = random_choice(len / width, k / width, seed);
                    let idx = groups.iter().flat_map(|&g| g * width..(g + 1) * width);
                    lists.push((role, idx.collect()));
                }
            }
            inp.indices = lists;
            inp.tensors = vec![("w", heavy_tailed(r, c, s))];
        }
        op => not_in_family(op, FAMILY),
    }
    Ok(inp)
}

/// The reference's explicit damped inverse (§11) of the Hessian of `tokens` calibration-like
/// rows from `seed`, as f32. At model widths the inverse costs the reference minutes, and the
/// saliency and update cases of one width (listed next to each other) share it: the last few
/// are kept, as many as the benches rotate input sets.
fn hinv_of(tokens: usize, cols: usize, seed: u64) -> Result<Arc<Matrix>> {
    type Cached = Vec<((usize, usize, u64), Arc<Matrix>)>;
    static CACHE: OnceLock<Mutex<Cached>> = OnceLock::new();
    const KEEP: usize = 3;
    let key = (tokens, cols, seed);
    let cache = CACHE.get_or_init(Default::default);
    if let Some((_, hit)) = cache
        .lock()
        .expect("cache lock")
        .iter()
        .find(|(k, _)| *k == key)
    {
        return Ok(hit.clone());
    }
    if shapes_only() {
        return Ok(Arc::new(identity(cols)));
    }
    let cpu = CpuBackend::new();
    let h = hessian_of(&correlated(tokens, cols, seed), 1)?;
    let hinv = cpu.hinv_explicit(&cpu.upload(&h)?, PERCDAMP)?;
    let made = Arc::new(cpu.download(&hinv.hinv)?);
    // Small ones regenerate in moments.
    if cols >= 1024 {
        let mut kept = cache.lock().expect("cache lock");
        kept.push((key, made.clone()));
        if kept.len() > KEEP {
            kept.remove(0);
        }
    }
    Ok(made)
}

/// `k` of the groups 0..n, sorted, from `seed`; no two neighbours where k ≤ (n + 1)/2, so that
/// a removed set is several separate runs rather than one.
fn spread_choice(n: usize, k: usize, seed: u64) -> Vec<usize> {
    if k == 0 || 2 * k > n + 1 {
        return random_choice(n, k, seed);
    }
    // k sorted distinct picks from n − k + 1 slots, the i-th shifted by i: gaps of at least 2.
    random_choice(n - k + 1, k, seed)
        .into_iter()
        .enumerate()
        .map(|(i, g)| g + i)
        .collect()
}

/// `k` distinct indices of 0..n, sorted, from `seed` (a partial Fisher-Yates shuffle).
fn random_choice(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut all: Vec<usize> = (0..n).collect();
    let k = k.min(n);
    for i in 0..k {
        let j = i + rng.below(n - i);
        all.swap(i, j);
    }
    let mut chosen = all[..k].to_vec();
    chosen.sort_unstable();
    chosen
}

// ---- Running on a backend ----

/// A structured case's device tensors, by op.
pub enum Prepared<B: Backend> {
    GradSum {
        acc: B::Tensor,
        dy: B::Tensor,
        x: B::Tensor,
    },
    HinvExplicit {
        h: B::Tensor,
        out: Option<HinvExplicit<B::Tensor>>,
    },
    ObsSaliency {
        w: B::Tensor,
        hinv: B::Tensor,
        width: usize,
        groups: Vec<usize>,
        out: Option<B::Tensor>,
    },
    TaylorSaliency {
        w: B::Tensor,
        grad_sum: Option<B::Tensor>,
        grad_sq: Option<B::Tensor>,
        kind: TaylorKind,
        axis: SegmentAxis,
        width: usize,
        out: Option<B::Tensor>,
    },
    /// The update zeroes Hinv[S,S], so a second run on its own output would fail: from the
    /// second run on (the benches' repeats), W and Hinv are first restored from `start` by a
    /// device copy, which those timings include.
    StructuredUpdate {
        w: B::Tensor,
        hinv: B::Tensor,
        start: (B::Tensor, B::Tensor),
        removed: Vec<usize>,
        out: Option<f64>,
    },
    Compact {
        w: B::Tensor,
        rows: Option<Vec<usize>>,
        cols: Option<Vec<usize>>,
        out: Option<B::Tensor>,
    },
}

pub(in crate::suite) fn prepare<B: Backend>(
    b: &B,
    case: &OpCase,
    inp: &CaseInputs,
) -> Result<Prepared<B>> {
    let up = |name: &str| b.upload(inp.get(name));
    let up_if = |name: &str, present: bool| present.then(|| up(name)).transpose();
    Ok(match case.op {
        Op::GradSum => Prepared::GradSum {
            acc: up("acc")?,
            dy: up("dy")?,
            x: up("x")?,
        },
        Op::HinvExplicit => Prepared::HinvExplicit {
            h: up("h")?,
            out: None,
        },
        Op::ObsSaliency { width } => Prepared::ObsSaliency {
            w: up("w")?,
            hinv: up("hinv")?,
            width,
            groups: (0..case.cols / width.max(1)).collect(),
            out: None,
        },
        Op::TaylorSaliency { kind, axis, width } => Prepared::TaylorSaliency {
            w: up("w")?,
            grad_sum: up_if("grad_sum", kind.needs_mean_grad())?,
            grad_sq: up_if("grad_sq", kind.needs_fisher())?,
            kind,
            axis,
            width,
            out: None,
        },
        Op::StructuredUpdate { .. } => Prepared::StructuredUpdate {
            w: up("w")?,
            hinv: up("hinv")?,
            start: (up("w")?, up("hinv")?),
            removed: inp
                .index("removed")
                .expect("an update case has removed columns")
                .to_vec(),
            out: None,
        },
        Op::Compact { .. } => Prepared::Compact {
            w: up("w")?,
            rows: inp.index("rows").map(<[usize]>::to_vec),
            cols: inp.index("cols").map(<[usize]>::to_vec),
            out: None,
        },
        op => not_in_family(op, FAMILY),
    })
}

/// Runs the op once; the gradient sum adds in place, the update restores its start first.
pub(in crate::suite) fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::GradSum { acc, dy, x } => b.grad_sum(acc, dy, x),
        Prepared::HinvExplicit { h, out } => {
            *out = Some(b.hinv_explicit(h, crate::ops::PERCDAMP)?);
            Ok(())
        }
        Prepared::ObsSaliency {
            w,
            hinv,
            width,
            groups,
            out,
        } => {
            *out = Some(b.obs_saliency(w, hinv, *width, groups)?);
            Ok(())
        }
        Prepared::TaylorSaliency {
            w,
            grad_sum,
            grad_sq,
            kind,
            axis,
            width,
            out,
        } => {
            let n = TAYLOR_CASE_SAMPLES as f64;
            let c = GBLM_GRAD_SCALE as f64;
            *out = Some(b.taylor_saliency(TaylorInputs {
                w,
                grad_sum: grad_sum.as_ref(),
                grad_sq: grad_sq.as_ref(),
                grad_scale: 1.0 / n,
                fisher_scale: 1.0 / (c * c * n),
                kind: *kind,
                axis: *axis,
                width: *width,
            })?);
            Ok(())
        }
        Prepared::StructuredUpdate {
            w,
            hinv,
            start,
            removed,
            out,
        } => {
            if out.is_some() {
                b.copy(w, &start.0)?;
                b.copy(hinv, &start.1)?;
            }
            *out = Some(b.structured_update(w, hinv, removed)?);
            Ok(())
        }
        Prepared::Compact { w, rows, cols, out } => {
            *out = Some(b.compact(w, rows.as_deref(), cols.as_deref())?);
            Ok(())
        }
    }
}

pub(in crate::suite) fn collect<B: Backend>(b: &B, p: &Prepared<B>) -> Result<CaseOutput> {
    let mut o = CaseOutput::default();
    match p {
        Prepared::GradSum { acc, .. } => o.values.push(("acc", b.download(acc)?)),
        Prepared::HinvExplicit { out, .. } => {
            let f = out.as_ref().ok_or_else(never_ran)?;
            o.values.push(("hinv", b.download(&f.hinv)?));
            o.dead = Some(f.dead.clone());
        }
        Prepared::ObsSaliency { out, .. } | Prepared::TaylorSaliency { out, .. } => {
            o.values
                .push(("scores", b.download(out.as_ref().ok_or_else(never_ran)?)?));
        }
        Prepared::StructuredUpdate { w, hinv, out, .. } => {
            o.loss = Some(out.ok_or_else(never_ran)?);
            o.values.push(("w", b.download(w)?));
            o.values.push(("hinv", b.download(hinv)?));
        }
        Prepared::Compact { out, .. } => {
            o.values
                .push(("w", b.download(out.as_ref().ok_or_else(never_ran)?)?));
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
        // The fused GEMM's plain-sum epilogue: the same f32 reduction as GRAD_FUSED's.
        Op::GradSum => vec![value_check("acc", want, got, tol::REDUCTION)],
        Op::HinvExplicit => vec![
            value_check("hinv", want, got, tol::HINV_EXPLICIT),
            dead_check(want, got),
        ],
        Op::ObsSaliency { .. } | Op::TaylorSaliency { .. } => vec![per_score_check(want, got)],
        Op::StructuredUpdate { .. } => {
            let removed = inputs
                .index("removed")
                .expect("an update case has removed columns");
            vec![
                value_check("w", want, got, tol::STRUCTURED_UPDATE),
                value_check("hinv", want, got, tol::STRUCTURED_UPDATE),
                Check::new(
                    "loss",
                    "relative",
                    match (want.loss, got.loss) {
                        (Some(a), Some(b)) => relative(a, b),
                        _ => f64::INFINITY,
                    },
                    tol::SALIENCY_REL,
                ),
                Check::new(
                    "zero where removed",
                    "mismatches",
                    removed_nonzeros(got, removed),
                    0.0,
                ),
            ]
        }
        // A gather is exact (and a wrong shape is an infinite error).
        Op::Compact { .. } => vec![value_check("w", want, got, 0.0)],
        op => not_in_family(op, FAMILY),
    }
}

/// Saliencies rank groups against each other, so each score is held to its own relative
/// error: a norm over all of them would hide a wrong small group among large ones.
fn per_score_check(want: &CaseOutput, got: &CaseOutput) -> Check {
    let e = match (want.value("scores"), got.value("scores")) {
        (Some(a), Some(b)) => max_relative(a, b),
        _ => f64::INFINITY,
    };
    Check::new("scores", "max_relative", e, tol::SALIENCY_REL)
}

/// Entries of W's removed columns and of Hinv's removed rows and columns that are not exactly
/// 0 (the op promises exact zeros, not a rounding residue); a missing output counts as all.
fn removed_nonzeros(got: &CaseOutput, removed: &[usize]) -> f64 {
    let (Some(w), Some(hinv)) = (got.value("w"), got.value("hinv")) else {
        return f64::INFINITY;
    };
    let n = hinv.cols;
    if hinv.rows != n || w.cols != n || removed.iter().any(|&c| c >= n) {
        return f64::INFINITY;
    }
    let in_w = (0..w.rows)
        .flat_map(|r| removed.iter().map(move |&c| w.get(r, c)))
        .filter(|&v| v != 0.0)
        .count();
    let in_hinv = removed
        .iter()
        .flat_map(|&i| (0..n).flat_map(move |j| [hinv.get(i, j), hinv.get(j, i)]))
        .filter(|&v| v != 0.0)
        .count();
    (in_w + in_hinv) as f64
}

#[cfg(test)]
mod tests {
    use super::super::llama::{LLAMA2_70B, LLAMA3_8B, LLAMA_7B};
    use super::*;

    #[test]
    fn structured_cases_cut_the_layer_into_its_groups() {
        let names = |d: &LayerDims| -> Vec<String> {
            structured_cases(d, 128).iter().map(|c| c.name()).collect()
        };
        let gqa = names(&LLAMA3_8B);
        for want in [
            // o's KV groups (e·r = 4·128 columns) and query heads; down's channels.
            "OBS_SALIENCY(width=512,rows=4096,cols=4096)",
            "OBS_SALIENCY(width=128,rows=4096,cols=4096)",
            "OBS_SALIENCY(width=1,rows=4096,cols=14336)",
            // The first of 8 rounds at 50%: 1 of 8 KV groups, ⌈7168/8⌉ channels.
            "STRUCTURED_UPDATE(width=512,removed=1,rows=4096,cols=4096)",
            "STRUCTURED_UPDATE(width=1,removed=896,rows=4096,cols=14336)",
            "TAYLOR_SALIENCY(kind=taylor_mix,axis=rows,width=128,rows=1024,cols=4096)",
            "TAYLOR_SALIENCY(kind=taylor_mix,axis=cols,width=1,rows=4096,cols=14336)",
            "COMPACT(kept_rows=2048,kept_cols=all,width=512,rows=4096,cols=4096)",
            "COMPACT(kept_rows=512,kept_cols=all,width=128,rows=1024,cols=4096)",
            "COMPACT(kept_rows=all,kept_cols=7168,width=1,rows=4096,cols=14336)",
            "GRAD_SUM(rows=1024,cols=4096,tokens=128)",
            "HINV_EXPLICIT(cols=14336)",
        ] {
            assert!(
                gqa.contains(&want.to_string()),
                "{want} missing from {gqa:#?}"
            );
        }
        // Multi-head attention: a KV group is one head, so the two o widths are one case.
        let mha = names(&LLAMA_7B);
        assert!(mha.contains(&"STRUCTURED_UPDATE(width=128,removed=2,rows=4096,cols=4096)".into()));
        assert_eq!(
            mha.iter().filter(|n| n.starts_with("OBS_SALIENCY")).count(),
            2
        );
        assert!(names(&LLAMA2_70B)
            .contains(&"OBS_SALIENCY(width=1024,rows=8192,cols=8192)".to_string()));
        for d in [LLAMA_7B, LLAMA3_8B, LLAMA2_70B] {
            let cases = structured_cases(&d, 128);
            assert!(cases.len() <= 25, "{} structured cases", cases.len());
            for c in &cases {
                // Every group fits its axis, so no case is refused by the op's own checks.
                let fits = match c.op {
                    Op::ObsSaliency { width } => c.cols % width == 0,
                    Op::TaylorSaliency { axis, width, .. } => match axis {
                        SegmentAxis::Rows => c.rows % width == 0,
                        SegmentAxis::Cols => c.cols % width == 0,
                    },
                    Op::StructuredUpdate { width, removed } => {
                        c.cols % width == 0 && removed > 0 && removed < c.cols / width
                    }
                    Op::Compact { rows, cols, width } => [(rows, c.rows), (cols, c.cols)]
                        .iter()
                        .all(|&(k, n)| k.is_none_or(|k| k > 0 && k < n && k % width == 0)),
                    Op::GradSum | Op::HinvExplicit => true,
                    _ => false,
                };
                assert!(fits, "{}", c.name());
            }
        }
    }

    #[test]
    fn structured_work_model() {
        // Width 1: a third of a flop per 1x1 "Cholesky", then a pass over W and Hinv's
        // diagonal.
        let one = OpCase::new(Op::ObsSaliency { width: 1 }, 10, 20);
        assert_eq!(one.flops(), 20 / 3 + 3 * 200);
        assert_eq!(one.bytes(), 4 * (200 + 20 + 20));
        assert!(!one.compute_bound());
        let heads = OpCase::new(Op::ObsSaliency { width: 128 }, 4096, 4096);
        assert!(heads.compute_bound());
        // 2 groups of 3: k = 6 over 12 columns of 5 rows.
        let u = OpCase::new(
            Op::StructuredUpdate {
                width: 3,
                removed: 2,
            },
            5,
            12,
        );
        assert_eq!(
            u.flops(),
            216 / 3 + 36 * 12 + 5 * 36 + 2 * 5 * 6 + 2 * 5 * 6 * 12 + 144 * 6
        );
        let c = OpCase::new(
            Op::Compact {
                rows: Some(4),
                cols: None,
                width: 2,
            },
            10,
            20,
        );
        assert_eq!((c.flops(), c.bytes()), (0, 4 * 2 * 4 * 20 + 4 * 4));
    }
}
