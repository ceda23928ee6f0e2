//! Running a case on any backend in three steps, so benches can time `execute` alone:
//! `prepare` uploads the inputs, `execute` runs the op on the device (in place where the op
//! is), `collect` downloads what the comparison needs.

use super::case::{ObsKind, Op, OpCase};
use super::families::{forward, refit, stats, structured, Family};
use super::inputs::CaseInputs;
use crate::error::Result;
use crate::formats::{PackedWeight, WeightFormat};
use crate::ops::{
    Backend, HinvFactor, MaskPattern, ObsOutcome, ObsSelection, ReconError, Score, ScoreKind,
};
use crate::tensor::{Mask, Matrix};

/// A case's device tensors, by op.
pub enum Prepared<B: Backend> {
    /// A statistics op's tensors.
    Stats(stats::Prepared<B>),
    /// A re-fit op's tensors.
    Refit(refit::Prepared<B>),
    /// A structured-pruning op's tensors.
    Structured(structured::Prepared<B>),
    Score {
        w: B::Tensor,
        act: B::Tensor,
        grad: B::Tensor,
        kind: ScoreKind,
        out: Option<B::Tensor>,
    },
    Mask {
        scores: B::Tensor,
        pattern: MaskPattern,
        out: Option<B::Mask>,
    },
    ApplyMask {
        w: B::Tensor,
        mask: B::Mask,
    },
    Prune {
        w: B::Tensor,
        act: B::Tensor,
        grad: B::Tensor,
        kind: ScoreKind,
        pattern: MaskPattern,
        out: Option<B::Mask>,
    },
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
    Compress {
        w: B::Tensor,
        mask: B::Mask,
        format: WeightFormat,
        out: Option<B::Packed>,
    },
    Matmul {
        x: B::Tensor,
        w: B::Packed,
        out: Option<B::Tensor>,
    },
    /// A forward op's tensors.
    Forward(forward::Prepared<B>),
}

/// What a run produced, on the host.
#[derive(Clone, Debug, Default)]
pub struct CaseOutput {
    pub values: Vec<(&'static str, Matrix)>,
    pub mask: Option<Mask>,
    pub loss: Option<f64>,
    pub recon: Option<ReconError>,
    pub dead: Option<Vec<usize>>,
    pub packed: Option<PackedWeight>,
}

impl CaseOutput {
    pub fn value(&self, name: &str) -> Option<&Matrix> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, m)| m)
    }
}

fn score_of<'a, T>(kind: ScoreKind, act: &'a T, grad: &'a T) -> Score<'a, T> {
    match kind {
        ScoreKind::Magnitude => Score::Magnitude,
        ScoreKind::Wanda => Score::Wanda { act },
        ScoreKind::Gblm => Score::Gblm { act, grad },
    }
}

pub fn prepare<B: Backend>(b: &B, case: &OpCase, inp: &CaseInputs) -> Result<Prepared<B>> {
    match case.op.family() {
        Family::Stats => Ok(Prepared::Stats(stats::prepare(b, case, inp)?)),
        Family::Refit => Ok(Prepared::Refit(refit::prepare(b, case, inp)?)),
        Family::Structured => Ok(Prepared::Structured(structured::prepare(b, case, inp)?)),
        Family::Forward => Ok(Prepared::Forward(forward::prepare(b, case, inp)?)),
        _ => prepare_by_op(b, case, inp),
    }
}

fn prepare_by_op<B: Backend>(b: &B, case: &OpCase, inp: &CaseInputs) -> Result<Prepared<B>> {
    let up = |name: &str| b.upload(inp.get(name));
    Ok(match case.op {
        Op::Score(kind) => Prepared::Score {
            w: up("w")?,
            act: up("act")?,
            grad: up("grad")?,
            kind,
            out: None,
        },
        Op::Mask(pattern) => Prepared::Mask {
            scores: up("scores")?,
            pattern,
            out: None,
        },
        Op::ApplyMask => Prepared::ApplyMask {
            w: up("w")?,
            mask: b.upload_mask(inp.mask.as_ref().expect("apply case has a mask"))?,
        },
        Op::Prune(kind, pattern) => Prepared::Prune {
            w: up("w")?,
            act: up("act")?,
            grad: up("grad")?,
            kind,
            pattern,
            out: None,
        },
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
        Op::Compress(format, _) => Prepared::Compress {
            w: up("w")?,
            mask: b.upload_mask(inp.mask.as_ref().expect("compress case has a mask"))?,
            format,
            out: None,
        },
        Op::Matmul { .. } => Prepared::Matmul {
            x: up("x")?,
            w: b.upload_packed(inp.packed.as_ref().expect("product case has a weight"))?,
            out: None,
        },
        op => unreachable!("{op:?} is prepared by its family"),
    })
}

/// Runs the op once; in-place ops update their state, so call `prepare` again for a fresh run.
pub fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::Stats(p) => stats::execute(b, p),
        Prepared::Refit(p) => refit::execute(b, p),
        Prepared::Structured(p) => structured::execute(b, p),
        Prepared::Score {
            w,
            act,
            grad,
            kind,
            out,
        } => {
            *out = Some(b.score(w, score_of(*kind, act, grad))?);
            Ok(())
        }
        Prepared::Mask {
            scores,
            pattern,
            out,
        } => {
            *out = Some(b.select_mask(scores, *pattern)?);
            Ok(())
        }
        Prepared::ApplyMask { w, mask } => b.apply_mask(w, mask),
        Prepared::Prune {
            w,
            act,
            grad,
            kind,
            pattern,
            out,
        } => {
            *out = Some(b.prune_scored(w, score_of(*kind, act, grad), *pattern)?);
            Ok(())
        }
        Prepared::HinvFactor { h, out } => {
            *out = Some(b.hinv_factor(h, crate::ops::PERCDAMP)?);
            Ok(())
        }
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
            Ok(())
        }
        Prepared::ReconError { w, pruned, h, out } => {
            *out = Some(b.recon_error(w, pruned, h)?);
            Ok(())
        }
        Prepared::Compress {
            w,
            mask,
            format,
            out,
        } => {
            *out = Some(b.compress(w, mask, *format)?);
            Ok(())
        }
        Prepared::Matmul { x, w, out } => {
            *out = Some(b.sparse_matmul(x, w)?);
            Ok(())
        }
        Prepared::Forward(p) => forward::execute(b, p),
    }
}

/// The error of a `collect` before any `execute`.
pub(super) fn never_ran() -> crate::error::KernelError {
    crate::error::KernelError::InvalidArgument("collect called before execute".into())
}

pub fn collect<B: Backend>(b: &B, p: &Prepared<B>) -> Result<CaseOutput> {
    let mut o = CaseOutput::default();
    match p {
        Prepared::Forward(p) => return forward::collect(b, p),
        Prepared::Stats(p) => return stats::collect(b, p),
        Prepared::Refit(p) => return refit::collect(b, p),
        Prepared::Structured(p) => return structured::collect(b, p),
        Prepared::Score { out, .. } => {
            o.values
                .push(("scores", b.download(out.as_ref().ok_or_else(never_ran)?)?));
        }
        Prepared::Mask { out, .. } => {
            o.mask = Some(b.download_mask(out.as_ref().ok_or_else(never_ran)?)?);
        }
        Prepared::ApplyMask { w, .. } => o.values.push(("w", b.download(w)?)),
        Prepared::Prune { w, out, .. } => {
            o.values.push(("w", b.download(w)?));
            o.mask = Some(b.download_mask(out.as_ref().ok_or_else(never_ran)?)?);
        }
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
        Prepared::Compress { out, .. } => {
            let packed = out.as_ref().ok_or_else(never_ran)?;
            o.packed = Some(b.download_packed(packed)?);
            // The round trip on the same backend: decompression is checked here too.
            o.values.push(("w", b.download(&b.decompress(packed)?)?));
        }
        Prepared::Matmul { out, .. } => {
            o.values
                .push(("y", b.download(out.as_ref().ok_or_else(never_ran)?)?));
        }
    }
    Ok(o)
}
