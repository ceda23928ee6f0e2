//! The results file: one JSON document per `prunebench bench` run (or baseline run), holding
//! the device, the ceilings measured on it, and one flat record per (op or layer, parameters,
//! backend, device). The schema is versioned by `schema`; docs/FORMATS.md documents every field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use prunebench_kernels::suite::Check;
use prunebench_kernels::BackendInfo;
use prunebench_models::input::read_input_text;

use crate::error::{HarnessError, Result};

pub const SCHEMA: &str = "prunebench.results/1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultsFile {
    pub schema: String,
    pub tool: ToolInfo,
    /// UTC, RFC 3339.
    pub date: String,
    pub device: BackendInfo,
    pub ceilings: Ceilings,
    pub timing: TimingPolicy,
    pub records: Vec<Record>,
    /// Pruned models' perplexities (a quality run: `scripts/quality-table.sh`,
    /// `baselines/prune_reference.py`); the report's summary puts them side by side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quality: Vec<QualityRecord>,
}

/// One model's perplexity on an evaluation text: dense, or pruned by a method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QualityRecord {
    /// `PERPLEXITY(model=..,method=..,sparsity=..,...)`: equal keys are the same experiment.
    pub key: String,
    pub method: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub backend: String,
    pub device: String,
    pub windows: usize,
    pub seqlen: usize,
    pub tokens: usize,
    pub nll: f64,
    pub ppl: f64,
    #[serde(default)]
    pub sparsity_achieved: Option<f64>,
    /// Wall-clock time of the pruning run and of the evaluation.
    #[serde(default)]
    pub prune_seconds: Option<f64>,
    #[serde(default)]
    pub eval_seconds: Option<f64>,
    #[serde(default)]
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    /// `prunebench` or the baseline's name (e.g. `pytorch`).
    pub name: String,
    pub version: String,
    pub git_commit: String,
    /// The command line that produced the file.
    pub command: String,
}

/// The device's measured ceilings, against which every record's fraction of peak is taken.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ceilings {
    /// Device-to-device copy, (bytes read + bytes written) / median time, in GB/s (1e9 B/s).
    pub copy_gbps: Option<f64>,
    pub copy_bytes: u64,
    /// f32 fused multiply-add rate of the FMA probe, in TFLOP/s (1e12 flop/s).
    pub fma_tflops: Option<f64>,
    pub fma_flops: u64,
    /// Why a ceiling is missing, or anything unusual about it.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimingPolicy {
    pub warmup: usize,
    pub repeats: usize,
    /// Independent input sets rotated between repeats, so a weight that fits in the last-level
    /// cache is not timed warm.
    pub input_sets: usize,
    pub source: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    Op,
    Layer,
    /// A whole model: pruned through the sequential loop (§14), or GBLM's gradient statistic
    /// from the backward pass (§15, op `GRADIENTS`).
    Model,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Timed, and verified against the CPU reference in the same run.
    Pass,
    /// Timed, but the verification failed: the time is not to be trusted.
    Fail,
    /// Timed without verification (asked for, or no reference at that size).
    Unverified,
    /// The backend cannot run this case on this device.
    Unsupported,
    /// The run failed.
    Error,
}

/// Which ceiling bounds a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Memory,
    Compute,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Canonical key, e.g. `PRUNE_WANDA(pattern=2:4,rows=4096,cols=11008)` or
    /// `LAYER(model=llama-7b,method=sparsegpt,sparsity=0.5,samples=16,tokens=256)`.
    pub key: String,
    pub kind: RecordKind,
    /// The op or method name without parameters (`PRUNE_WANDA`, `LAYER_SPARSEGPT`).
    pub op: String,
    pub params: BTreeMap<String, String>,
    pub backend: String,
    pub device: String,
    pub status: Status,
    pub detail: String,
    pub median_s: Option<f64>,
    pub min_s: Option<f64>,
    pub max_s: Option<f64>,
    pub repeats: usize,
    pub time_source: String,
    pub bytes: u64,
    pub flops: u64,
    pub gbps: Option<f64>,
    pub tflops: Option<f64>,
    pub bound: Bound,
    /// Achieved rate over the binding ceiling (GB/s over copy GB/s, or TFLOP/s over FMA
    /// TFLOP/s). Not clamped: above 1 means the model of the op's traffic is pessimistic.
    pub peak_fraction: Option<f64>,
    pub checks: Vec<Check>,
    /// Per-stage medians for layer records, seconds.
    pub stages: BTreeMap<String, f64>,
    /// For a product from a compressed weight (§13): what it buys over dense on this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payoff: Option<Payoff>,
}

/// A compressed-weight product against the dense f16 product of the same linear and token
/// count, timed in the same run on the same device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payoff {
    /// The dense record's key.
    pub dense_key: String,
    pub dense_median_s: Option<f64>,
    /// Dense time over this time.
    pub speedup: Option<f64>,
    /// The bandwidth bound on the speedup: the dense product's bytes over this one's
    /// (weights, X and Y), what a purely memory-bound kernel could gain.
    pub s_max: f64,
    /// Speedup over S_max.
    pub efficiency: Option<f64>,
    /// This format's weight bytes over dense f16's.
    pub memory_ratio: f64,
}

impl Record {
    /// Fills rates and the fraction of peak from the median time.
    pub fn derive_rates(&mut self, ceilings: &Ceilings) {
        let Some(t) = self.median_s.filter(|t| *t > 0.0) else {
            return;
        };
        self.gbps = Some(self.bytes as f64 / t / 1e9);
        self.tflops = Some(self.flops as f64 / t / 1e12);
        self.peak_fraction = match self.bound {
            Bound::Memory => ceilings.copy_gbps.zip(self.gbps).map(|(p, g)| g / p),
            Bound::Compute => ceilings.fma_tflops.zip(self.tflops).map(|(p, f)| f / p),
        };
    }
}

/// Median, min and max of a sample of times.
pub fn summarize(times: &[f64]) -> Option<(f64, f64, f64)> {
    if times.is_empty() {
        return None;
    }
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    let n = t.len();
    let median = if n % 2 == 1 {
        t[n / 2]
    } else {
        (t[n / 2 - 1] + t[n / 2]) / 2.0
    };
    Some((median, t[0], t[n - 1]))
}

impl ResultsFile {
    pub fn read(path: &Path) -> Result<ResultsFile> {
        let bad = |why: String| HarnessError::Config(format!("{}: {why}", path.display()));
        let text = read_input_text(path, "a results JSON file")?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        match v.get("schema").and_then(|s| s.as_str()) {
            Some(SCHEMA) => {}
            Some(other) => {
                return Err(bad(format!(
                    "schema '{other}' is not one this build reads ({SCHEMA})"
                )))
            }
            None => {
                return Err(bad(
                    "not a prunebench results file (no \"schema\" field)".into()
                ))
            }
        }
        serde_json::from_value(v).map_err(|e| bad(format!("does not match {SCHEMA}: {e}")))
    }

    /// Writes atomically: a temporary file beside `path`, renamed when complete.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("results serialise");
        write_atomic_text(path, &text)
    }
}

/// Writes `text` to `path` through the one output path (a temporary renamed when complete).
pub fn write_atomic_text(path: &Path, text: &str) -> Result<()> {
    Ok(prunebench_models::output::write_file(
        path,
        text.as_bytes(),
    )?)
}

/// The current UTC time as RFC 3339 (no external clock crate needed for one format).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples() {
        assert_eq!(summarize(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn utc_now_is_rfc3339() {
        let s = utc_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z') && &s[10..11] == "T");
    }
}
