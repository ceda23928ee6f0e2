//! Deterministic inputs for each case: heavy-tailed, never zero (so an unwritten output is
//! caught), with deliberate ties in the mask cases and a dead column in the Hessian cases.
//! Statistics the op consumes (H, U) come from the reference, then travel as f32 like any
//! input, so each backend is tested on exactly the same numbers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::case::{MaskSource, ObsKind, Op, OpCase};
use super::families::{forward, refit, stats, structured, Family};
use crate::cpu::CpuBackend;
use crate::error::Result;
use crate::formats::{self, PackedWeight};
use crate::ops::{
    Backend, MaskGroup, MaskPattern, ObsSelection, Score, Sparsity, OBS_BLOCK, PERCDAMP,
};
use crate::rng::{heavy_tailed, heavy_tailed_positive, Rng};
use crate::tensor::{Mask, Matrix};

/// The host inputs of one case, by role.
#[derive(Clone, Debug, Default)]
pub struct CaseInputs {
    pub tensors: Vec<(&'static str, Matrix)>,
    pub mask: Option<Mask>,
    /// Samples already folded into a running statistic (act, H) before this update.
    pub seen: usize,
    pub dead: Vec<usize>,
    pub damp: f64,
    /// The reference's compression of `w` under `mask`, for the product cases (so a backend's
    /// product is tested on exactly the reference's encoding).
    pub packed: Option<PackedWeight>,
    /// Index lists by role (removed columns, kept rows, kept columns); a role absent here
    /// means every index.
    pub indices: Vec<(&'static str, Vec<usize>)>,
    /// Token ids by role (an embedding's ids, the LM head's targets with `NO_TARGET` rows).
    pub token_ids: Vec<(&'static str, Vec<u32>)>,
}

impl CaseInputs {
    pub fn get(&self, name: &str) -> &Matrix {
        &self
            .tensors
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("case input '{name}' was never generated"))
            .1
    }

    pub fn index(&self, name: &str) -> Option<&[usize]> {
        self.indices
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn token_ids(&self, name: &str) -> &[u32] {
        self.token_ids
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
            .unwrap_or_else(|| panic!("case token ids '{name}' were never generated"))
    }

    pub fn generate(case: &OpCase) -> Result<Self> {
        match case.op.family() {
            Family::Stats => stats::inputs(case),
            Family::Refit => refit::inputs(case),
            Family::Structured => structured::inputs(case),
            Family::Forward => forward::inputs(case),
            _ => Self::generate_by_op(case),
        }
    }

    fn generate_by_op(case: &OpCase) -> Result<Self> {
        let (r, c, s) = (case.rows, case.cols, case.seed);
        let mut inp = CaseInputs::default();
        match case.op {
            Op::Score(_) | Op::Prune(..) => {
                inp.tensors = vec![
                    ("w", scaled(heavy_tailed(r, c, s), 0.02)),
                    ("act", heavy_tailed_positive(1, c, s + 1)),
                    ("grad", scaled(heavy_tailed_positive(r, c, s + 2), 1e-2)),
                ];
            }
            Op::Mask(_) => inp.tensors = vec![("scores", tied_scores(r, c, s))],
            Op::ApplyMask => {
                let w = heavy_tailed(r, c, s);
                inp.mask = Some(random_mask(r, c, s + 1));
                inp.tensors = vec![("w", w)];
            }
            Op::HinvFactor => inp.tensors = vec![("h", hessian_with_dead_column(case)?)],
            Op::Obs(kind) => {
                let w = scaled(heavy_tailed(r, c, s), 0.02);
                let h = hessian_of(&correlated(case.tokens, c, s + 1), 1)?;
                let cpu = CpuBackend::new();
                let f = cpu.hinv_factor(&cpu.upload(&h)?, PERCDAMP)?;
                inp.dead = f.dead;
                inp.damp = f.damp;
                if let ObsKind::Given(p) = kind {
                    let pattern = MaskPattern::Unstructured {
                        sparsity: p,
                        group: MaskGroup::PerRow,
                    };
                    let scores = cpu.score(&cpu.upload(&w)?, Score::Magnitude)?;
                    inp.mask = Some(cpu.select_mask(&scores, pattern)?);
                }
                inp.tensors = vec![("w", w), ("u", cpu.download(&f.u)?)];
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
            Op::Compress(_, source) => {
                let (w, mask) = pruned_weight(source, r, c, s)?;
                inp.mask = Some((*mask).clone());
                inp.tensors = vec![("w", (*w).clone())];
            }
            Op::Matmul { format, mask, n } => {
                let (sr, sc) = format.stored_shape(r, c);
                let (w, m) = pruned_weight(mask, sr, sc, s)?;
                inp.packed = Some(formats::compress(&w, &m, format.storage())?);
                inp.tensors = vec![("x", heavy_tailed(n, sc, s + 2))];
            }
            op => unreachable!("{op:?}'s inputs are made by its family"),
        }
        Ok(inp)
    }
}

type PrunedWeight = (Arc<Matrix>, Arc<Mask>);

/// A weight pruned by `source`, its values exactly f16 (so compression round trips bit for
/// bit). SparseGPT's costs an OBS run on the reference, so every weight is kept for the
/// process: the product cases at every token count share it.
fn pruned_weight(source: MaskSource, rows: usize, cols: usize, seed: u64) -> Result<PrunedWeight> {
    static CACHE: OnceLock<Mutex<HashMap<String, PrunedWeight>>> = OnceLock::new();
    let key = format!("{}/{rows}x{cols}/{seed}", source.label());
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().expect("cache lock").get(&key) {
        return Ok(hit.clone());
    }
    let made = make_pruned_weight(source, rows, cols, seed)?;
    let made = (Arc::new(made.0), Arc::new(made.1));
    // Only SparseGPT's weights are costly enough to keep; the rest regenerate in moments.
    if matches!(source, MaskSource::SparseGpt(_)) {
        cache.lock().expect("cache lock").insert(key, made.clone());
    }
    Ok(made)
}

fn make_pruned_weight(
    source: MaskSource,
    rows: usize,
    cols: usize,
    seed: u64,
) -> Result<(Matrix, Mask)> {
    let cpu = CpuBackend::new();
    let mut w = formats::round_to_f16(&scaled(heavy_tailed(rows, cols, seed), 0.02));
    let scored = |score: Score<'_, _>, sp: Sparsity, group: MaskGroup| -> Result<Mask> {
        let s = cpu.score(&cpu.upload(&w)?, score)?;
        cpu.select_mask(&s, MaskPattern::new(sp, group))
    };
    let mask = match source {
        MaskSource::None => Mask::empty(rows, cols),
        MaskSource::Wanda(sp) => {
            let act = cpu.upload(&heavy_tailed_positive(1, cols, seed + 1))?;
            scored(Score::Wanda { act: &act }, sp, MaskGroup::PerRow)?
        }
        MaskSource::Magnitude(sp) => scored(Score::Magnitude, sp, MaskGroup::Matrix)?,
        MaskSource::SparseGpt(sp) => {
            // 256 calibration-like tokens: H is damped to full rank by the 1% of §6.
            let h = hessian_of(&correlated(256, cols, seed + 1), 1)?;
            let factor = cpu.hinv_factor(&cpu.upload(&h)?, PERCDAMP)?;
            let selection = match sp {
                Sparsity::Unstructured(p) => ObsSelection::Unstructured(p),
                Sparsity::NM { n, m } => ObsSelection::NM { n, m },
            };
            let mut wt = cpu.upload(&w)?;
            let out = cpu.obs_prune(&mut wt, &factor, selection, OBS_BLOCK)?;
            w = formats::round_to_f16(&cpu.download(&wt)?);
            out.mask
        }
        MaskSource::Holes(p) => {
            let mut rng = Rng::new(seed + 1);
            let mut m = Mask::empty(rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    m.set(r, c, rng.uniform() < p || (rows > 1 && r == rows / 2));
                }
            }
            m
        }
    };
    Ok((w, mask))
}

/// The weight a case compresses, for the comparison: the mask's kept entries, exactly f16.
pub fn compress_input(inp: &CaseInputs) -> (&Matrix, &Mask) {
    (
        inp.get("w"),
        inp.mask.as_ref().expect("a compression case has a mask"),
    )
}

pub(super) fn scaled(mut m: Matrix, k: f32) -> Matrix {
    for v in &mut m.data {
        *v *= k;
    }
    m
}

/// Calibration-like rows: a low-rank mix of heavy-tailed latents plus heavy-tailed noise, so
/// H has the correlated structure and spread diagonal that make the factor hard.
pub(super) fn correlated(tokens: usize, cols: usize, seed: u64) -> Matrix {
    let rank = 8.min(cols);
    let z = heavy_tailed(tokens, rank, seed);
    let mix = heavy_tailed(rank, cols, seed + 100);
    let mut x = heavy_tailed(tokens, cols, seed + 200);
    for t in 0..tokens {
        for k in 0..rank {
            let zk = z.get(t, k);
            for j in 0..cols {
                x.data[t * cols + j] += zk * mix.get(k, j);
            }
        }
    }
    x
}

/// H (§3) of `case.tokens` calibration-like rows with column c/2 dead (zero in every row), as
/// the factor and inverse cases take it.
pub(super) fn hessian_with_dead_column(case: &OpCase) -> Result<Matrix> {
    let (c, s) = (case.cols, case.seed);
    let mut x = correlated(case.tokens, c, s);
    let dead = c / 2;
    for t in 0..x.rows {
        x.data[t * c + dead] = 0.0;
    }
    hessian_of(&x, 1)
}

/// H of §3 from one batch of `samples` samples stacked in `x`, by the reference, as f32.
pub(super) fn hessian_of(x: &Matrix, samples: usize) -> Result<Matrix> {
    let cpu = CpuBackend::new();
    let mut h = cpu.zeros(x.cols, x.cols)?;
    cpu.hessian_update(&mut h, 0, &cpu.upload(x)?, samples)?;
    cpu.download(&h)
}

/// Positive scores where every third row is rounded to a few levels, so that many entries tie
/// exactly and the tie rule decides.
fn tied_scores(rows: usize, cols: usize, seed: u64) -> Matrix {
    let mut m = heavy_tailed_positive(rows, cols, seed);
    for r in (0..rows).step_by(3) {
        for v in &mut m.data[r * cols..(r + 1) * cols] {
            *v = (*v * 2.0).round().max(1.0) / 2.0;
        }
    }
    m
}

fn random_mask(rows: usize, cols: usize, seed: u64) -> Mask {
    let mut rng = Rng::new(seed);
    let mut m = Mask::empty(rows, cols);
    for r in 0..rows {
        for c in 0..cols {
            m.set(r, c, rng.uniform() < 0.5);
        }
    }
    m
}
