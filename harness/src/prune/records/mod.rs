//! What a layer run is configured with and what it reports: the JSON schema of `prune --json`
//! and of the layer records in results files. Every method's options and records are here,
//! below the methods, so that the toolkit and the methods share one schema.

pub mod refit;
pub mod structured;
pub mod structured_report;

use serde::{Deserialize, Serialize};

use prunebench_kernels::ops::{OBS_BLOCK, PERCDAMP};
use prunebench_kernels::{GradNorm, MaskGroup, Matrix, Sparsity, TimeSource};
use prunebench_models::config::LinearSpec;
use prunebench_models::synthetic::CalibrationSource;

use crate::method::Method;

use refit::{LinearRefit, NormRefit, RefitConfig};
use structured::StructuredConfig;
use structured_report::StructuredReport;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneConfig {
    pub method: Method,
    pub sparsity: Sparsity,
    /// Overrides the method's unstructured comparison group (magnitude per row, say).
    pub group: Option<MaskGroup>,
    pub grad_norm: GradNorm,
    pub percdamp: f64,
    pub block: usize,
    /// The re-fit stage after the method (§12); no items, no stage.
    #[serde(default)]
    pub refit: RefitConfig,
    /// `--method structured`'s options (§11); the other methods ignore them.
    #[serde(default)]
    pub structured: StructuredConfig,
}

impl PruneConfig {
    pub fn new(method: Method, sparsity: Sparsity) -> Self {
        Self {
            method,
            sparsity,
            group: None,
            grad_norm: GradNorm::L2,
            percdamp: PERCDAMP,
            block: OBS_BLOCK,
            refit: RefitConfig::default(),
            structured: StructuredConfig::default(),
        }
    }
}

/// Where calibration data comes from: samples, and optionally ready statistics that replace
/// accumulating them.
pub struct Calibration<'a> {
    pub source: &'a dyn CalibrationSource,
    pub ready: Option<&'a dyn prunebench_models::ReadyStats>,
}

impl Calibration<'_> {
    /// Whether the ready statistics give §11's Taylor sums of every linear (the suite's own
    /// gradient pass), which stand in for output gradients.
    pub fn has_grad_sums(&self) -> bool {
        self.ready.is_some_and(|r| r.has_grad_sums())
    }
}

/// A progress tick: `done` of `total` units, with what is being worked on.
pub struct Progress<'a> {
    pub what: &'a str,
    pub done: u64,
    pub total: u64,
}

/// Why a stage ran: to prune, or only to measure the result (the Hessian of a method that
/// does not need it, the reconstruction error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    Prune,
    Evaluate,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    pub stage: String,
    pub purpose: Purpose,
    pub seconds: f64,
    pub calls: usize,
    pub source: TimeSource,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub group: String,
    pub cols: usize,
    pub samples: usize,
    pub tokens: usize,
    /// Statistics read ready-made from the calibration file instead of accumulated.
    pub ready: Vec<String>,
    pub stages: Vec<StageTime>,
    /// Columns whose Hessian diagonal was zero (SparseGPT).
    pub dead_columns: usize,
    /// The `norm` re-fit of the group's RMSNorm weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_refit: Option<NormRefit>,
    /// Re-fit items the group skipped, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refit_skipped: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearReport {
    pub name: String,
    pub group: String,
    pub rows: usize,
    pub cols: usize,
    pub pruned: usize,
    /// Achieved fraction pruned.
    pub sparsity: f64,
    /// ‖(W − Ŵ) Xᵀ‖²_F / ‖W Xᵀ‖²_F, from H (ALGORITHMS.md §9), of Ŵ as written: rounded to
    /// the layer's dtype.
    pub recon_error: f64,
    /// The same error of Ŵ in f32 before that rounding, where the layer's dtype is not f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recon_error_f32: Option<f64>,
    /// SparseGPT's summed OBS loss.
    pub obs_loss: Option<f64>,
    /// The re-fit after the method: errors before and after, what was trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refit: Option<LinearRefit>,
    /// Structured pruning: the [rows, cols] of the compacted weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_shape: Option<[usize; 2]>,
    pub stages: Vec<StageTime>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerReport {
    pub model: String,
    pub layer: usize,
    pub method: Method,
    pub sparsity: String,
    pub backend: prunebench_kernels::BackendInfo,
    pub calibration: String,
    pub groups: Vec<GroupReport>,
    pub linears: Vec<LinearReport>,
    /// Device time of the stages that prune, and of those that only evaluate.
    pub prune_seconds: f64,
    pub evaluate_seconds: f64,
    /// Wall-clock time of the whole layer, host work (data generation, transfers) included.
    pub wall_seconds: f64,
    /// Structured pruning: the new sizes, kept indices, parameters removed and OBS loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub structured: Option<StructuredReport>,
}

/// A pruned layer: the report, and the pruned weights when asked for.
pub struct LayerRun {
    pub report: LayerReport,
    pub pruned: Vec<(LinearSpec, Matrix)>,
    pub masks: Vec<prunebench_kernels::Mask>,
    /// Re-fitted RMSNorm weights (`norm`), in the dtype they came in.
    pub norms: Vec<prunebench_models::NormWeight>,
    /// Structured pruning: the compacted linears at their new shapes (rounded to their dtype),
    /// when the weights were asked for; `pruned` then holds the masked-dense ones.
    pub compacted: Vec<(LinearSpec, Matrix)>,
}
