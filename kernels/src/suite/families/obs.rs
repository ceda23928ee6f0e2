//! SparseGPT's ops of §6-§8: the inverse-Hessian factor, the blocked OBS prune with its lazy
//! updates (unstructured, N:M, or under a given mask), and the reconstruction error. Their
//! names, small cases, work model, inputs, run and comparison; the model's cases are listed
//! with the other per-layer ops in `model_cases`.

use serde::{Deserialize, Serialize};

use super::{not_in_family, Family};
use crate::cpu::CpuBackend;
use crate::error::Result;
use crate::ops::{
    tolerance as tol, Backend, HinvFactor, MaskGroup, MaskPattern, ObsOutcome, ObsSelection,
    ReconError, Score, PERCDAMP,
};
use crate::rng::heavy_tailed;
use crate::suite::case::{ModelShapes, Op, OpCase};
use crate::suite::compare::{dead_check, mask_disagreement, relative, value_check, Check};
use crate::suite::inputs::{
    correlated, hessian_of, hessian_with_dead_column, identity, random_mask, scaled, shapes_only,
    CaseInputs,
};
use crate::suite::run::{never_ran, CaseOutput};

const FAMILY: Family = Family::Obs;

/// How an OBS case selects (ALGORITHMS.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObsKind {
    Unstructured(f64),
    NM {
        n: usize,
        m: usize,
    },
    /// A per-row magnitude mask at this sparsity is given; only the updates run.
    Given(f64),
}

// ---- The cases ----

/// Odd shapes: a dead column in every Hessian, a factor past 256 columns (a GPU factor's
/// second outer block), a single row, rows over several GPU workgroups, an OBS block that ends
/// early, a block that is not a whole number of 32-column mask words, a block wider than a GPU
/// kernel's 128-column tile.
pub fn small_cases() -> Vec<OpCase> {
    let mut v = vec![
        OpCase::new(Op::HinvFactor, 1, 37).tokens(80, 1),
        OpCase::new(Op::HinvFactor, 1, 200).tokens(300, 1),
        OpCase::new(Op::HinvFactor, 1, 300).tokens(400, 1),
        OpCase::new(Op::ReconError, 13, 200).tokens(300, 1),
    ];
    for kind in [
        ObsKind::Unstructured(0.5),
        ObsKind::NM { n: 2, m: 4 },
        ObsKind::NM { n: 4, m: 8 },
        ObsKind::Given(0.5),
    ] {
        v.push(OpCase::new(Op::Obs(kind), 13, 200).tokens(300, 1));
    }
    v.push(OpCase::new(Op::Obs(ObsKind::Unstructured(0.5)), 1, 200).tokens(300, 1));
    v.push(
        OpCase::new(Op::Obs(ObsKind::Unstructured(0.5)), 37, 200)
            .tokens(300, 1)
            .block(48),
    );
    // 600 rows: the block selection's chunks hold two rows.
    v.push(OpCase::new(Op::Obs(ObsKind::Unstructured(0.6)), 600, 200).tokens(300, 1));
    v.push(
        OpCase::new(Op::Obs(ObsKind::NM { n: 2, m: 4 }), 20, 300)
            .tokens(400, 1)
            .block(256),
    );
    v
}

/// At a model's shapes: the factor of every distinct input width; SparseGPT on each linear
/// shape, unstructured and 2:4, and the error it leaves.
pub(in crate::suite) fn model_cases(m: &ModelShapes) -> Vec<OpCase> {
    let t = m.tokens;
    let mut v: Vec<OpCase> = m
        .input_cols()
        .into_iter()
        .map(|c| OpCase::new(Op::HinvFactor, 1, c).tokens(t, 1))
        .collect();
    for &(rows, cols) in &m.linears {
        for kind in [ObsKind::Unstructured(0.5), ObsKind::NM { n: 2, m: 4 }] {
            v.push(OpCase::new(Op::Obs(kind), rows, cols).tokens(t, 1));
        }
        v.push(OpCase::new(Op::ReconError, rows, cols).tokens(t, 1));
    }
    v
}

// ---- Names and work model ----

/// The op's name without shape, e.g. `OBS_NM`.
pub(in crate::suite) fn op_name(op: Op) -> String {
    match op {
        Op::HinvFactor => "HINV_FACTOR".into(),
        Op::Obs(ObsKind::Unstructured(_)) => "OBS_UNSTRUCTURED".into(),
        Op::Obs(ObsKind::NM { .. }) => "OBS_NM".into(),
        Op::Obs(ObsKind::Given(_)) => "OBS_GIVEN".into(),
        Op::ReconError => "RECON_ERROR".into(),
        op => not_in_family(op, FAMILY),
    }
}

/// The key parameters of the canonical name.
pub(in crate::suite) fn params(case: &OpCase) -> String {
    let (r, c) = (case.rows, case.cols);
    match case.op {
        Op::HinvFactor => format!("cols={c}"),
        Op::Obs(k) => {
            let sel = match k {
                ObsKind::Unstructured(p) | ObsKind::Given(p) => format!("p={p}"),
                ObsKind::NM { n, m } => format!("pattern={n}:{m}"),
            };
            format!("{sel},rows={r},cols={c},block={}", case.block)
        }
        Op::ReconError => format!("rows={r},cols={c}"),
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
        Op::HinvFactor => f * 2 * c * c,
        Op::Obs(_) => f * (2 * r * c + c * c) + mask,
        Op::ReconError => f * (2 * r * c + c * c),
        op => not_in_family(op, FAMILY),
    }
}

/// Floating-point operations the kernels do (the convention in KERNELS.md).
pub(in crate::suite) fn flops(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    match case.op {
        // The direct route every backend takes (§6): Cholesky c³/3 and triangular inverse
        // c³/3, not the recipe's four steps (which would add L⁻ᵀL⁻¹ and a second Cholesky).
        Op::HinvFactor => 2 * c * c * c / 3,
        // Lazy updates ~ r·c² in all, plus the in-block rank-1 updates r·B·c.
        Op::Obs(_) => r * c * c + r * case.block as u64 * c,
        Op::ReconError => 4 * r * c * c,
        op => not_in_family(op, FAMILY),
    }
}

/// The factor, the updates and the error's products are all O(c³) or O(r·c²): compute-bound.
pub(in crate::suite) fn compute_bound(case: &OpCase) -> bool {
    match case.op {
        Op::HinvFactor | Op::Obs(_) | Op::ReconError => true,
        op => not_in_family(op, FAMILY),
    }
}

// ---- Inputs ----

/// Hessians of correlated calibration-like rows (the factor's with a dead column); OBS gets
/// the reference's factor as f32, so every backend updates from the same U.
pub(in crate::suite) fn inputs(case: &OpCase) -> Result<CaseInputs> {
    let (r, c, s) = (case.rows, case.cols, case.seed);
    let mut inp = CaseInputs::default();
    match case.op {
        Op::HinvFactor => inp.tensors = vec![("h", hessian_with_dead_column(case)?)],
        Op::Obs(kind) => {
            let w = scaled(heavy_tailed(r, c, s), 0.02);
            let cpu = CpuBackend::new();
            let u = if shapes_only() {
                identity(c)
            } else {
                let h = hessian_of(&correlated(case.tokens, c, s + 1), 1)?;
                let f = cpu.hinv_factor(&cpu.upload(&h)?, PERCDAMP)?;
                inp.dead = f.dead;
                inp.damp = f.damp;
                cpu.download(&f.u)?
            };
            if let ObsKind::Given(p) = kind {
                let pattern = MaskPattern::Unstructured {
                    sparsity: p,
                    group: MaskGroup::PerRow,
                };
                let scores = cpu.score(&cpu.upload(&w)?, Score::Magnitude)?;
                inp.mask = Some(cpu.select_mask(&scores, pattern)?);
            }
            inp.tensors = vec![("w", w), ("u", u)];
        }
        Op::ReconError => {
            let w = scaled(heavy_tailed(r, c, s), 0.02);
            let mut pruned = w.clone();
            let mask = random_mask(r, c, s + 1);
            for rr in 0..r {
                for cc in 0..c {
                    if mask.get(rr, cc) {
                        pruned.data[rr * c + cc] = 0.0;
                    }
                }
            }
            let h = hessian_of(&correlated(case.tokens, c, s + 2), 1)?;
            inp.tensors = vec![("w", w), ("pruned", pruned), ("h", h)];
        }
        op => not_in_family(op, FAMILY),
    }
    Ok(inp)
}

// ---- Running on a backend ----

/// An OBS-family case's device tensors, by op.
pub enum Prepared<B: Backend> {
    HinvFactor {
        h: B::Tensor,
        out: Option<HinvFactor<B::Tensor>>,
    },
    Obs {
        w: B::Tensor,
        factor: HinvFactor<B::Tensor>,
        given: Option<B::Mask>,
        kind: ObsKind,
        block: usize,
        out: Option<ObsOutcome<B::Mask>>,
    },
    ReconError {
        w: B::Tensor,
        pruned: B::Tensor,
        h: B::Tensor,
        out: Option<ReconError>,
    },
}

pub(in crate::suite) fn prepare<B: Backend>(
    b: &B,
    case: &OpCase,
    inp: &CaseInputs,
) -> Result<Prepared<B>> {
    let up = |name: &str| b.upload(inp.get(name));
    Ok(match case.op {
        Op::HinvFactor => Prepared::HinvFactor {
            h: up("h")?,
            out: None,
        },
        Op::Obs(kind) => Prepared::Obs {
            w: up("w")?,
            factor: HinvFactor {
                u: up("u")?,
                dead: inp.dead.clone(),
                damp: inp.damp,
            },
            given: match &inp.mask {
                Some(m) => Some(b.upload_mask(m)?),
                None => None,
            },
            kind,
            block: case.block,
            out: None,
        },
        Op::ReconError => Prepared::ReconError {
            w: up("w")?,
            pruned: up("pruned")?,
            h: up("h")?,
            out: None,
        },
        op => not_in_family(op, FAMILY),
    })
}

/// Runs the op once; OBS updates `w` in place.
pub(in crate::suite) fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::HinvFactor { h, out } => *out = Some(b.hinv_factor(h, PERCDAMP)?),
        Prepared::Obs {
            w,
            factor,
            given,
            kind,
            block,
            out,
        } => {
            let sel = match (*kind, given.as_ref()) {
                (ObsKind::Unstructured(p), _) => ObsSelection::Unstructured(p),
                (ObsKind::NM { n, m }, _) => ObsSelection::NM { n, m },
                (ObsKind::Given(_), Some(m)) => ObsSelection::Given(m),
                (ObsKind::Given(_), None) => unreachable!("given-mask case without a mask"),
            };
            *out = Some(b.obs_prune(w, factor, sel, *block)?);
        }
        Prepared::ReconError { w, pruned, h, out } => *out = Some(b.recon_error(w, pruned, h)?),
    }
    Ok(())
}

pub(in crate::suite) fn collect<B: Backend>(b: &B, p: &Prepared<B>) -> Result<CaseOutput> {
    let mut o = CaseOutput::default();
    match p {
        Prepared::HinvFactor { out, .. } => {
            let f = out.as_ref().ok_or_else(never_ran)?;
            o.values.push(("u", b.download(&f.u)?));
            o.dead = Some(f.dead.clone());
        }
        Prepared::Obs { w, out, .. } => {
            let r = out.as_ref().ok_or_else(never_ran)?;
            o.values.push(("w", b.download(w)?));
            o.mask = Some(b.download_mask(&r.mask)?);
            o.loss = Some(r.loss);
        }
        Prepared::ReconError { out, .. } => o.recon = Some(out.ok_or_else(never_ran)?),
    }
    Ok(o)
}

// ---- Comparison ----

/// The checks of one case: reference output `want`, backend output `got`.
pub(in crate::suite) fn compare(
    case: &OpCase,
    _inputs: &CaseInputs,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    match case.op {
        Op::HinvFactor => vec![
            value_check("u", want, got, tol::HINV_FACTOR),
            dead_check(want, got),
        ],
        Op::Obs(kind) => obs_checks(kind, want, got),
        Op::ReconError => match (want.recon, got.recon) {
            (Some(a), Some(b)) => vec![
                Check::new(
                    "tr(dW H dWt)",
                    "relative",
                    relative(a.num, b.num),
                    tol::RECON_REL,
                ),
                Check::new(
                    "tr(W H Wt)",
                    "relative",
                    relative(a.den, b.den),
                    tol::RECON_REL,
                ),
            ],
            _ => vec![Check::new(
                "recon",
                "relative",
                f64::INFINITY,
                tol::RECON_REL,
            )],
        },
        op => not_in_family(op, FAMILY),
    }
}

/// OBS selects adaptively from f32 arithmetic, so a backend's mask may differ from the
/// reference's in a few entries near the threshold (none under a given mask); its weights and
/// loss must agree within the op's tolerances all the same.
fn obs_checks(kind: ObsKind, want: &CaseOutput, got: &CaseOutput) -> Vec<Check> {
    let loss = match (want.loss, got.loss) {
        (Some(a), Some(b)) => relative(a, b),
        _ => f64::INFINITY,
    };
    let allowed = match kind {
        ObsKind::Given(_) => 0.0,
        _ => 1.0 - tol::OBS_MASK_AGREEMENT,
    };
    let mask = match (&want.mask, &got.mask) {
        (Some(a), Some(b)) => Check::new("mask", "disagreement", mask_disagreement(a, b), allowed),
        _ => Check::new("mask", "mismatches", f64::INFINITY, 0.0),
    };
    vec![
        value_check("w", want, got, tol::OBS_WEIGHTS),
        Check::new("loss", "relative", loss, tol::OBS_LOSS_REL),
        mask,
    ]
}
