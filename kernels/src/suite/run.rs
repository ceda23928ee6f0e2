//! Running a case on any backend in three steps, so benches can time `execute` alone:
//! `prepare` uploads the inputs, `execute` runs the op on the device (in place where the op
//! is), `collect` downloads what the comparison needs.

use super::case::OpCase;
use super::families::{backward, forward, masks, obs, refit, sparse, stats, structured, Family};
use super::inputs::CaseInputs;
use crate::error::Result;
use crate::formats::PackedWeight;
use crate::ops::{Backend, ReconError};
use crate::tensor::{Mask, Matrix};

/// A case's device tensors, by family.
pub enum Prepared<B: Backend> {
    Stats(stats::Prepared<B>),
    Masks(masks::Prepared<B>),
    Obs(obs::Prepared<B>),
    Sparse(sparse::Prepared<B>),
    Refit(refit::Prepared<B>),
    Structured(structured::Prepared<B>),
    Forward(forward::Prepared<B>),
    Backward(backward::Prepared<B>),
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

/// Uploads the case's inputs to `b`.
pub fn prepare<B: Backend>(b: &B, case: &OpCase, inp: &CaseInputs) -> Result<Prepared<B>> {
    Ok(match case.op.family() {
        Family::Stats => Prepared::Stats(stats::prepare(b, case, inp)?),
        Family::Masks => Prepared::Masks(masks::prepare(b, case, inp)?),
        Family::Obs => Prepared::Obs(obs::prepare(b, case, inp)?),
        Family::Sparse => Prepared::Sparse(sparse::prepare(b, case, inp)?),
        Family::Refit => Prepared::Refit(refit::prepare(b, case, inp)?),
        Family::Structured => Prepared::Structured(structured::prepare(b, case, inp)?),
        Family::Forward => Prepared::Forward(forward::prepare(b, case, inp)?),
        Family::Backward => Prepared::Backward(backward::prepare(b, case, inp)?),
    })
}

/// Runs the op once; in-place ops update their state, so call `prepare` again for a fresh run.
pub fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::Stats(p) => stats::execute(b, p),
        Prepared::Masks(p) => masks::execute(b, p),
        Prepared::Obs(p) => obs::execute(b, p),
        Prepared::Sparse(p) => sparse::execute(b, p),
        Prepared::Refit(p) => refit::execute(b, p),
        Prepared::Structured(p) => structured::execute(b, p),
        Prepared::Forward(p) => forward::execute(b, p),
        Prepared::Backward(p) => backward::execute(b, p),
    }
}

/// The error of a `collect` before any `execute`.
pub(super) fn never_ran() -> crate::error::KernelError {
    crate::error::KernelError::InvalidArgument("collect called before execute".into())
}

/// Downloads what the comparison needs.
pub fn collect<B: Backend>(b: &B, p: &Prepared<B>) -> Result<CaseOutput> {
    match p {
        Prepared::Stats(p) => stats::collect(b, p),
        Prepared::Masks(p) => masks::collect(b, p),
        Prepared::Obs(p) => obs::collect(b, p),
        Prepared::Sparse(p) => sparse::collect(b, p),
        Prepared::Refit(p) => refit::collect(b, p),
        Prepared::Structured(p) => structured::collect(b, p),
        Prepared::Forward(p) => forward::collect(b, p),
        Prepared::Backward(p) => backward::collect(b, p),
    }
}
