//! The pruning methods by name and what each needs from calibration; each method's work is
//! its own module under `crate::methods`.

use serde::{Deserialize, Serialize};

use prunebench_kernels::{MaskGroup, MaskPattern, ScoreKind, Sparsity};

use crate::methods;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Magnitude,
    Wanda,
    Gblm,
    Sparsegpt,
    /// Whole FFN channels and attention groups (§11); configured by `PruneConfig::structured`.
    Structured,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::Magnitude,
        Method::Wanda,
        Method::Gblm,
        Method::Sparsegpt,
    ];

    /// Every method `--method` accepts: the mask methods of [`Method::ALL`] and structured.
    pub const EVERY: [Method; 5] = [
        Method::Magnitude,
        Method::Wanda,
        Method::Gblm,
        Method::Sparsegpt,
        Method::Structured,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::Gblm => "gblm",
            Method::Sparsegpt => "sparsegpt",
            Method::Structured => "structured",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::EVERY
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
    }

    /// The statistics the method's module declares it needs.
    pub fn needs(&self) -> Needs {
        match self {
            Method::Magnitude => methods::magnitude::NEEDS,
            Method::Wanda => methods::wanda::NEEDS,
            Method::Gblm => methods::gblm::NEEDS,
            Method::Sparsegpt => methods::sparsegpt::NEEDS,
            Method::Structured => methods::structured::needs(&Default::default()),
        }
    }

    pub fn needs_act_stat(&self) -> bool {
        self.needs().act
    }

    pub fn needs_grads(&self) -> bool {
        self.needs().grads
    }

    /// The score a mask-based method ranks by; SparseGPT selects inside its OBS loop.
    pub fn score_kind(&self) -> Option<ScoreKind> {
        match self {
            Method::Magnitude => Some(ScoreKind::Magnitude),
            Method::Wanda => Some(ScoreKind::Wanda),
            Method::Gblm => Some(ScoreKind::Gblm),
            Method::Sparsegpt | Method::Structured => None,
        }
    }

    /// The comparison group of unstructured masks: the papers' repositories compare within
    /// each output row for Wanda and GBLM, and over the whole matrix for magnitude.
    pub fn default_group(&self) -> MaskGroup {
        match self {
            Method::Magnitude => MaskGroup::Matrix,
            _ => MaskGroup::PerRow,
        }
    }

    pub fn mask_pattern(&self, sparsity: Sparsity, group: Option<MaskGroup>) -> MaskPattern {
        MaskPattern::new(sparsity, group.unwrap_or(self.default_group()))
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
