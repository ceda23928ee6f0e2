//! What `--method structured` is configured with (ALGORITHMS.md §11), parsed and checked
//! before any work.

use serde::{Deserialize, Serialize};

use prunebench_kernels::TaylorKind;

use crate::error::{HarnessError, Result};

/// Default greedy rounds (§11): each re-scores the remaining groups after the last update.
pub const DEFAULT_ROUNDS: usize = 8;
/// Default multiple the kept FFN width is rounded to (LLM-Pruner's users found odd widths
/// slower than dense).
pub const DEFAULT_ROUND_TO: usize = 64;

/// How much of each kind goes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Budget {
    /// The `--sparsity` fraction of the layer's linear parameters, FFN channels and attention
    /// groups competing by saliency per parameter removed.
    Layer,
    /// Each kind by its own fraction of its groups.
    PerKind { ffn: f64, attn: f64 },
}

/// The attention group that is removed whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttnUnit {
    /// A KV head with its r query heads (GQA keeps r uniform).
    KvGroup,
    /// One query head; every KV group loses the same number.
    QueryHead,
}

/// How groups are ranked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Saliency {
    /// The second-order removal loss on the consumer.
    Obs,
    Taylor(TaylorKind),
}

impl Saliency {
    pub fn name(&self) -> &'static str {
        match self {
            Saliency::Obs => "obs",
            Saliency::Taylor(k) => k.name(),
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        if s == "obs" {
            return Ok(Saliency::Obs);
        }
        TaylorKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .map(Saliency::Taylor)
            .ok_or_else(|| {
                HarnessError::Config(format!(
                    "unknown --saliency '{s}': expected obs, taylor1, taylor2 or taylor_mix"
                ))
            })
    }
}

/// What happens to the consumer when its columns go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compensate {
    /// The structured OBS update of the remaining columns.
    Obs,
    /// Removal alone.
    None,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StructuredConfig {
    pub budget: Budget,
    pub attn_unit: AttnUnit,
    pub saliency: Saliency,
    pub compensate: Compensate,
    pub rounds: usize,
    pub round_to: usize,
}

impl Default for StructuredConfig {
    fn default() -> Self {
        Self {
            budget: Budget::Layer,
            attn_unit: AttnUnit::KvGroup,
            saliency: Saliency::Obs,
            compensate: Compensate::Obs,
            rounds: DEFAULT_ROUNDS,
            round_to: DEFAULT_ROUND_TO,
        }
    }
}

impl StructuredConfig {
    /// `ffn=0.5,attn=0.25` (a kind left out keeps all its groups).
    pub fn parse_structure(s: &str) -> Result<Budget> {
        let (mut ffn, mut attn) = (0.0, 0.0);
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (kind, value) = item.split_once('=').ok_or_else(|| {
                HarnessError::Config(format!(
                    "--structure item '{item}' is not KIND=FRACTION (e.g. ffn=0.5,attn=0.25)"
                ))
            })?;
            let p: f64 = value.trim().parse().map_err(|_| {
                HarnessError::Config(format!("--structure {kind}: '{value}' is not a number"))
            })?;
            if !(0.0..1.0).contains(&p) {
                return Err(HarnessError::Config(format!(
                    "--structure {kind}={p}: the fraction must be in [0, 1)"
                )));
            }
            match kind.trim() {
                "ffn" => ffn = p,
                "attn" => attn = p,
                k => {
                    return Err(HarnessError::Config(format!(
                        "--structure: unknown kind '{k}': expected ffn or attn"
                    )))
                }
            }
        }
        Ok(Budget::PerKind { ffn, attn })
    }

    /// The options that need no layer to check.
    pub fn check(&self) -> Result<()> {
        if self.rounds == 0 {
            return Err(HarnessError::Config("--rounds must be at least 1".into()));
        }
        if self.round_to == 0 {
            return Err(HarnessError::Config(
                "--round-to must be at least 1 (1 disables rounding)".into(),
            ));
        }
        Ok(())
    }
}
