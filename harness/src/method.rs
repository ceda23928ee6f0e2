//! The four pruning methods and what each needs from calibration.

use serde::{Deserialize, Serialize};

use prunebench_kernels::{MaskGroup, MaskPattern, ScoreKind, Sparsity};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Magnitude,
    Wanda,
    Gblm,
    Sparsegpt,
}

impl Method {
    pub const ALL: [Method; 4] = [
        Method::Magnitude,
        Method::Wanda,
        Method::Gblm,
        Method::Sparsegpt,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Method::Magnitude => "magnitude",
            Method::Wanda => "wanda",
            Method::Gblm => "gblm",
            Method::Sparsegpt => "sparsegpt",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
    }

    pub fn needs_act_stat(&self) -> bool {
        matches!(self, Method::Wanda | Method::Gblm)
    }

    pub fn needs_grads(&self) -> bool {
        matches!(self, Method::Gblm)
    }

    /// The score a mask-based method ranks by; SparseGPT selects inside its OBS loop.
    pub fn score_kind(&self) -> Option<ScoreKind> {
        match self {
            Method::Magnitude => Some(ScoreKind::Magnitude),
            Method::Wanda => Some(ScoreKind::Wanda),
            Method::Gblm => Some(ScoreKind::Gblm),
            Method::Sparsegpt => None,
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
