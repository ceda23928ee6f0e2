//! One table of op cases drives `verify`, the tests and the benches (as llama.cpp's
//! test-backend-ops does): each case has a canonical name that is also its filter and results
//! key, a work model (bytes, flops), deterministic inputs, a runner generic over the backend,
//! and a comparison against the CPU reference with the op's tolerance.

mod case;
mod compare;
mod families;
mod inputs;
mod run;

pub use case::{model_cases, small_cases, LayerDims, ModelShapes, Op, OpCase};
pub use compare::{compare, nmse, tie_aware_mask_mismatches, Check};
pub use families::forward::{
    forward_cases, lm_head_chunk_rows, rope_tables, small_cases as small_forward_cases,
    ForwardDims, RMS_NORM_CASE_EPS,
};
pub use families::obs::ObsKind;
pub use families::refit::{refit_cases, small_cases as small_refit_cases};
pub use families::sparse::{
    matmul_cases, packed_bytes, small_cases as small_sparse_cases, CaseFormat, MaskSource,
    MATMUL_TOKENS,
};
pub use families::structured::{
    small_cases as small_structured_cases, structured_cases, TAYLOR_CASE_SAMPLES,
};
pub use families::Family;
pub use inputs::CaseInputs;
pub use run::{collect, execute, prepare, CaseOutput, Prepared};

use serde::{Deserialize, Serialize};

use crate::cpu::CpuBackend;
use crate::error::KernelError;
use crate::ops::Backend;

/// How a case ended on a backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    /// The backend cannot run this (a missing feature, too little memory): recorded, not passed.
    Unsupported(String),
    /// The backend returned an error: a failure.
    Error(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseReport {
    pub case: String,
    pub checks: Vec<Check>,
    pub outcome: Outcome,
}

impl CaseReport {
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail | Outcome::Error(_))
    }

    /// One line: the case, its outcome and each figure against its tolerance.
    pub fn line(&self) -> String {
        let figures: Vec<String> = self
            .checks
            .iter()
            .map(|c| {
                format!(
                    "{} {}={:.3e} (tol {:.1e})",
                    c.what, c.metric, c.error, c.tolerance
                )
            })
            .collect();
        format!(
            "{:<62} {:?} {}",
            self.case,
            self.outcome,
            figures.join(", ")
        )
    }
}

/// Verifies every case against the reference, printing each case's line, and returns the
/// lines of those that did not pass. For tests: on their tiny shapes an unsupported case is
/// not passed either.
pub fn verify_cases<B: Backend>(backend: &B, cases: &[OpCase]) -> Vec<String> {
    let reference = CpuBackend::new();
    cases
        .iter()
        .map(|case| verify_case(backend, &reference, case))
        .inspect(|r| println!("{}", r.line()))
        .filter(|r| r.outcome != Outcome::Pass)
        .map(|r| r.line())
        .collect()
}

/// Runs `case` on `backend` and on the reference from the same inputs and compares them.
pub fn verify_case<B: Backend>(backend: &B, reference: &CpuBackend, case: &OpCase) -> CaseReport {
    let report = |outcome, checks| CaseReport {
        case: case.name(),
        checks,
        outcome,
    };
    let inputs = match CaseInputs::generate(case) {
        Ok(i) => i,
        Err(e) => return report(Outcome::Error(format!("inputs: {e}")), vec![]),
    };
    let want = match run_once(reference, case, &inputs) {
        Ok(o) => o,
        Err(e) => return report(Outcome::Error(format!("reference: {e}")), vec![]),
    };
    let got = match run_once(backend, case, &inputs) {
        Ok(o) => o,
        Err(KernelError::Unsupported(why)) => return report(Outcome::Unsupported(why), vec![]),
        Err(e @ KernelError::OutOfMemory { .. }) => {
            return report(Outcome::Unsupported(e.to_string()), vec![])
        }
        Err(e) => return report(Outcome::Error(e.to_string()), vec![]),
    };
    let checks = compare(case, &inputs, &want, &got);
    let outcome = if checks.iter().all(|c| c.pass) {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    report(outcome, checks)
}

/// prepare + execute + collect, once.
pub fn run_once<B: Backend>(
    backend: &B,
    case: &OpCase,
    inputs: &CaseInputs,
) -> crate::error::Result<CaseOutput> {
    let mut p = prepare(backend, case, inputs)?;
    execute(backend, &mut p)?;
    collect(backend, &p)
}
