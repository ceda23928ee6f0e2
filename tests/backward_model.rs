//! The whole-model backward against the real thing: transformers' autograd in float64 on the
//! two forward fixtures (tests/fixtures/forward/{mha,gqa}/gradients.safetensors, made by
//! baselines/make_gradient_fixtures.py): every linear's dW of the causal-LM loss over the two
//! windows, on a multi-head f32 model and on a GQA model with three KV groups, llama3 RoPE
//! scaling and tied embeddings in bf16. GBLM's statistic and §11's Taylor sums from the same
//! fixture's per-window figures.

mod common;

use std::collections::HashMap;

use common::{fixture, fixture_windows};
use prunebench_harness::model::{
    gblm_gradients, model_backward, model_gradients, ForwardOptions, GradientsFor, Weights,
};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::{Backend, GradNorm, Matrix};
use prunebench_models::checkpoint::Checkpoint;
use prunebench_models::llama::LlamaConfig;
use safetensors::SafeTensors;

/// The reference computes in f64 and hands out f32 tensors; the fixture is f64 autograd stored
/// as f32: both within f32 rounding (6e-8) of the same values. The bound.
const REFERENCE_REL_RMS: f64 = 1e-6;

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn rel_rms(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// A fixture checkpoint, its config, and no replaced tensors (the dense model).
fn open(model: &str) -> (Checkpoint, LlamaConfig, HashMap<String, Matrix>) {
    let ckpt = Checkpoint::open(&fixture(model)).unwrap();
    let cfg = ckpt.llama().unwrap();
    (ckpt, cfg, HashMap::new())
}

/// The backend's dW of every linear and loss against transformers'.
fn check<B: Backend>(b: &B, model: &str, tol: f64) {
    let (ckpt, cfg, none) = open(model);
    let w = Weights {
        ckpt: &ckpt,
        replaced: &none,
    };
    let windows = fixture_windows(model);
    let want_bytes = std::fs::read(fixture(model).join("gradients.safetensors")).unwrap();
    let want = SafeTensors::deserialize(&want_bytes).unwrap();
    let (mut seen, mut worst) = (0, 0.0f64);
    let mut grads = |layer: usize, name: &'static str, dw: B::Tensor| {
        let key = format!("model.layers.{layer}.{}.{name}.weight", group(name));
        let got = b.download(&dw).unwrap();
        let e = rel_rms(&got.data, &f32s(want.tensor(&key).unwrap().data()));
        assert!(e <= tol, "{model} {key}: relative RMS {e:e} from autograd");
        worst = worst.max(e);
        seen += 1;
        Ok(())
    };
    let loss = model_backward(
        b,
        &w,
        &cfg,
        &windows,
        &ForwardOptions::default(),
        &mut grads,
    )
    .unwrap();
    let linears = want
        .names()
        .iter()
        .filter(|n| !n.starts_with("gblm."))
        .count();
    assert_eq!(seen, linears, "{model}: every linear's dW");
    eprintln!("{model}: largest relative RMS of a dW from autograd {worst:.2e}");
    let (_, meta) = SafeTensors::read_metadata(&want_bytes).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["prunebench.fixture"]).unwrap();
    let want_loss = meta["loss"].as_f64().unwrap();
    assert!(
        (loss - want_loss).abs() <= 1e-6 * want_loss,
        "{model} loss {loss} vs {want_loss}"
    );
}

fn group(linear: &str) -> &'static str {
    match linear {
        "q_proj" | "k_proj" | "v_proj" | "o_proj" => "self_attn",
        _ => "mlp",
    }
}

#[test]
fn reference_gradients_match_autograd_multi_head_f32() {
    check(&CpuBackend::new(), "mha", REFERENCE_REL_RMS);
}

#[test]
fn reference_gradients_match_autograd_gqa_llama3_rope_tied_bf16() {
    check(&CpuBackend::new(), "gqa", REFERENCE_REL_RMS);
}

/// GBLM-Pruner's statistic over the fixture's two windows, one backward each, against
/// transformers' (`gblm.` tensors of the fixture).
fn check_statistic<B: Backend>(b: &B, model: &str, tol: f64) {
    let (ckpt, cfg, none) = open(model);
    let w = Weights {
        ckpt: &ckpt,
        replaced: &none,
    };
    let opts = ForwardOptions::default();
    let stats = gblm_gradients(
        b,
        &w,
        &cfg,
        &fixture_windows(model),
        GradNorm::L2,
        &opts,
        &|_| {},
    )
    .unwrap();
    let bytes = std::fs::read(fixture(model).join("gradients.safetensors")).unwrap();
    let want = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(stats.tensors.len(), 7 * cfg.model.num_layers);
    for (name, g) in &stats.tensors {
        let e = rel_rms(
            &g.data,
            &f32s(want.tensor(&format!("gblm.{name}")).unwrap().data()),
        );
        assert!(
            e <= tol,
            "{model} statistic {name}: relative RMS {e:e} from transformers"
        );
    }
}

/// §11's Taylor sums over the fixture's two windows, one backward each: Σ_w dW_w is twice the
/// fixture's dW (its loss is the mean over both windows' equal token counts), and the l2
/// accumulator Σ_w (100·dW_w)² is the square of its GBLM statistic.
fn check_taylor_sums<B: Backend>(b: &B, model: &str, tol: f64) {
    let (ckpt, cfg, none) = open(model);
    let w = Weights {
        ckpt: &ckpt,
        replaced: &none,
    };
    let windows = fixture_windows(model);
    assert_eq!(windows.len(), 2);
    let opts = ForwardOptions::default();
    let stats =
        model_gradients(b, &w, &cfg, &windows, GradientsFor::Taylor, &opts, &|_| {}).unwrap();
    let bytes = std::fs::read(fixture(model).join("gradients.safetensors")).unwrap();
    let want = SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        stats.tensors.is_empty(),
        "a Taylor pass keeps no GBLM statistic"
    );
    assert_eq!(stats.sums.len(), 7 * cfg.model.num_layers);
    for (name, s) in &stats.sums {
        let dw: Vec<f32> = f32s(want.tensor(name).unwrap().data())
            .iter()
            .map(|v| 2.0 * v)
            .collect();
        let e = rel_rms(&s.sum.data, &dw);
        assert!(e <= tol, "{model} Σ dW of {name}: relative RMS {e:e}");
        let g = f32s(want.tensor(&format!("gblm.{name}")).unwrap().data());
        let sq: Vec<f32> = g.iter().map(|v| v * v).collect();
        // A square doubles a relative error.
        let e = rel_rms(&s.sq.data, &sq);
        assert!(
            e <= 2.0 * tol,
            "{model} Σ (c·dW)² of {name}: relative RMS {e:e}"
        );
    }
}

#[test]
fn reference_taylor_sums_match_transformers() {
    for model in ["mha", "gqa"] {
        check_taylor_sums(&CpuBackend::new(), model, REFERENCE_REL_RMS);
    }
}

#[test]
fn reference_statistic_matches_transformers_multi_head_f32() {
    check_statistic(&CpuBackend::new(), "mha", REFERENCE_REL_RMS);
}

#[test]
fn reference_statistic_matches_transformers_gqa_llama3_rope_tied_bf16() {
    check_statistic(&CpuBackend::new(), "gqa", REFERENCE_REL_RMS);
}

/// The GPU backends against the same autograd figures: f32 GEMMs, attention and reductions
/// through a whole model's backward, the bound.
const GPU_REL_RMS: f64 = 1e-4;

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_gradients_and_statistic_match_autograd() {
    let b = prunebench_kernels::wgpu::WgpuBackend::new(None).expect("a Vulkan adapter (lavapipe)");
    for model in ["mha", "gqa"] {
        check(&b, model, GPU_REL_RMS);
        check_statistic(&b, model, GPU_REL_RMS);
        check_taylor_sums(&b, model, GPU_REL_RMS);
    }
}

#[cfg(feature = "cubecl")]
#[test]
fn cubecl_wgpu_gradients_and_statistic_match_autograd() {
    let b = prunebench_kernels::cube::cube_wgpu(None).expect("a Vulkan adapter (lavapipe)");
    for model in ["mha", "gqa"] {
        check(&b, model, GPU_REL_RMS);
        check_statistic(&b, model, GPU_REL_RMS);
        check_taylor_sums(&b, model, GPU_REL_RMS);
    }
}
