//! Whole-layer verification: the same layer, calibration and method on a backend and on the
//! CPU reference, compared per linear by pruned count, mask agreement and reconstruction error.

use serde::{Deserialize, Serialize};

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::Backend;
use prunebench_models::LayerWeights;

use crate::error::Result;
use crate::method::Method;
use crate::methods::prune_layer;
use crate::prune::{Calibration, LayerReport, Progress, PruneConfig};

pub use crate::methods::tolerance::*;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearVerification {
    pub linear: String,
    pub rows: usize,
    pub cols: usize,
    pub pruned_reference: usize,
    pub pruned_backend: usize,
    pub mask_disagreement: f64,
    pub mask_tolerance: f64,
    pub recon_reference: f64,
    pub recon_backend: f64,
    pub recon_relative_difference: f64,
    pub recon_tolerance: f64,
    /// The re-fit's first LoRA loss against the reference's, relative, where a LoRA ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refit_first_loss_relative_difference: Option<f64>,
    /// Structured pruning: the compacted weight's normalised squared error against the
    /// reference's, where both kept the same indices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_nmse: Option<f64>,
    pub pass: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerVerification {
    pub method: Method,
    pub sparsity: String,
    pub linears: Vec<LinearVerification>,
    pub backend_report: LayerReport,
    pub reference_report: LayerReport,
}

impl LayerVerification {
    pub fn pass(&self) -> bool {
        self.linears.iter().all(|l| l.pass)
    }
}

pub fn verify_layer<B: Backend>(
    b: &B,
    layer: &LayerWeights,
    calib: &Calibration<'_>,
    cfg: &PruneConfig,
    progress: &dyn Fn(Progress<'_>),
) -> Result<LayerVerification> {
    let got = prune_layer(b, layer, calib, cfg, true, progress)?;
    let want = prune_layer(&CpuBackend::new(), layer, calib, cfg, true, progress)?;
    let tolerance = crate::methods::tolerance_of(cfg.method);
    // A method whose kept groups must agree exactly does so unless the reference's own cut came
    // within the saliency tolerance of a tie: then either side of it is right.
    let tie = structured_tie(&got.report, &want.report);
    let mask_tol = match tolerance.mask_disagreement {
        Some(fraction) => fraction,
        None if tie => 1.0,
        None => 0.0,
    };
    let mut recon_tol = tolerance.recon_rel;
    if !cfg.refit.items.is_empty() {
        recon_tol = recon_tol.max(LAYER_RECON_REL_REFIT);
    }
    let mut linears = Vec::new();
    for (i, (g, w)) in got
        .report
        .linears
        .iter()
        .zip(&want.report.linears)
        .enumerate()
    {
        let (gm, wm) = (&got.masks[i], &want.masks[i]);
        let differ: usize = gm
            .bits
            .iter()
            .zip(&wm.bits)
            .map(|(a, b)| (a ^ b).count_ones() as usize)
            .sum();
        let disagreement = differ as f64 / (g.rows * g.cols) as f64;
        let rel = if w.recon_error == g.recon_error {
            0.0
        } else {
            (g.recon_error - w.recon_error).abs() / w.recon_error.abs().max(f64::MIN_POSITIVE)
        };
        let first_loss = |r: &crate::prune::LinearReport| {
            r.refit.as_ref().and_then(|f| f.lora_loss).map(|l| l.0)
        };
        let loss_rel = first_loss(g)
            .zip(first_loss(w))
            .map(|(a, b)| (a - b).abs() / b.abs().max(f64::MIN_POSITIVE));
        // Compacted weights exist where the method compacts (structured pruning).
        let compacted_nmse = got
            .compacted
            .get(i)
            .zip(want.compacted.get(i))
            .filter(|((gs, _), (ws, _))| gs == ws && disagreement == 0.0)
            .map(|((_, gm), (_, wm))| prunebench_kernels::suite::nmse(wm, gm));
        let pass = (g.pruned == w.pruned || tie)
            && compacted_nmse.is_none_or(|e| e <= LAYER_COMPACT_NMSE)
            && disagreement <= mask_tol
            && rel <= recon_tol
            && loss_rel.is_none_or(|r| r <= REFIT_FIRST_LOSS_REL);
        linears.push(LinearVerification {
            linear: g.name.clone(),
            rows: g.rows,
            cols: g.cols,
            pruned_reference: w.pruned,
            pruned_backend: g.pruned,
            mask_disagreement: disagreement,
            mask_tolerance: mask_tol,
            recon_reference: w.recon_error,
            recon_backend: g.recon_error,
            recon_relative_difference: rel,
            recon_tolerance: recon_tol,
            refit_first_loss_relative_difference: loss_rel,
            compacted_nmse,
            pass,
        });
    }
    Ok(LayerVerification {
        method: cfg.method,
        sparsity: cfg.sparsity.to_string(),
        linears,
        backend_report: got.report,
        reference_report: want.report,
    })
}

/// Whether the reference's structured cut was within the saliency tolerance of a tie in a
/// kind whose kept set the backend chose differently.
fn structured_tie(got: &LayerReport, want: &LayerReport) -> bool {
    let (Some(g), Some(w)) = (&got.structured, &want.structured) else {
        return false;
    };
    let close = |kind: &str| {
        w.cut_margins
            .iter()
            .any(|(k, m)| k == kind && *m <= prunebench_kernels::ops::tolerance::SALIENCY_REL)
    };
    let (gc, wc) = (&g.config, &w.config);
    (gc.kept_ffn_channels != wc.kept_ffn_channels && close("ffn"))
        || ((gc.kept_query_heads != wc.kept_query_heads || gc.kept_kv_heads != wc.kept_kv_heads)
            && close("attention"))
}
