//! The pruning methods by name: the key `--method` parses and the JSON records carry. What each
//! method needs, scores and checks is its entry in the registry (`crate::methods`).

use serde::{Deserialize, Serialize};

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
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
