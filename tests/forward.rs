//! The whole-model forward against the real thing: transformers' LLaMA on two small random
//! checkpoints (tests/fixtures/forward, made by baselines/make_forward_fixtures.py), one
//! multi-head in f32, one with three KV groups, llama3 RoPE scaling and tied embeddings in
//! bf16. The CPU reference must reproduce transformers' hidden states, logits and loss; each
//! GPU backend must reproduce the CPU reference.

mod common;

use std::collections::HashMap;

use common::{fixture, fixture_windows};
use prunebench_harness::model::perplexity::trace;
use prunebench_harness::model::{perplexity, ForwardOptions, Weights};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::{Backend, Matrix};
use prunebench_models::checkpoint::Checkpoint;
use prunebench_models::llama::LlamaConfig;
use safetensors::{Dtype, SafeTensors};

struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn open(model: &str) -> Self {
        Self {
            bytes: std::fs::read(fixture(model).join("reference.safetensors")).unwrap(),
        }
    }

    fn values(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let d = t.data();
        let v: Vec<f64> = match t.dtype() {
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{name}: unexpected dtype {other:?}"),
        };
        (t.shape().to_vec(), v)
    }
}

/// sqrt(Σ(a−b)²/Σb²): the relative RMS difference.
fn rel_rms(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn open(model: &str) -> (Checkpoint, LlamaConfig) {
    let ckpt = Checkpoint::open(&fixture(model)).unwrap();
    let cfg = ckpt.llama().unwrap();
    (ckpt, cfg)
}

/// Our hidden states after the embeddings and each layer, the last one through the final
/// norm as transformers reports it, and the logits.
fn our_trace<B: Backend>(b: &B, model: &str) -> (Vec<Matrix>, Matrix, f64) {
    let (ckpt, cfg) = open(model);
    let none = HashMap::new();
    let w = Weights {
        ckpt: &ckpt,
        replaced: &none,
    };
    let windows = fixture_windows(model);
    let (mut hidden, logits) = trace(b, &w, &cfg, &windows).unwrap();
    let last = hidden.pop().unwrap();
    let gamma = ckpt.read_tensor("model.norm.weight").unwrap().0;
    let cpu = CpuBackend::new();
    let normed = cpu
        .rms_norm(
            &cpu.upload(&last).unwrap(),
            &cpu.upload(&gamma).unwrap(),
            cfg.rms_norm_eps,
        )
        .unwrap();
    hidden.push(cpu.download(&normed).unwrap());
    let p = perplexity(b, &w, &cfg, &windows, &ForwardOptions::default(), &|_| {}).unwrap();
    (hidden, logits, p.nll)
}

/// f32 transformers differs from f64 by 5e-7 to 7e-7 (relative RMS of the logits, the
/// fixtures' README); our CPU reference computes in f64 and returns f32, so it sits within
/// f32 rounding (6e-8) of the f64 values, and within about 1e-6 of transformers' f32 ones.
const VS_F64: f64 = 1e-6;
const VS_F32: f64 = 5e-6;

fn check_against_transformers(model: &str) {
    let r = Reference::open(model);
    let (hidden, logits, nll) = our_trace(&CpuBackend::new(), model);
    for (prec, tol) in [("f64", VS_F64), ("f32", VS_F32)] {
        for (i, h) in hidden.iter().enumerate() {
            let (_, want) = r.values(&format!("{prec}.hidden.{i}"));
            let e = rel_rms(&h.data, &want);
            assert!(e <= tol, "{model} hidden.{i} vs {prec} transformers: {e:e}");
        }
        let (shape, want) = r.values(&format!("{prec}.logits"));
        assert_eq!(shape[2], logits.cols);
        let e = rel_rms(&logits.data, &want);
        assert!(e <= tol, "{model} logits vs {prec} transformers: {e:e}");
        let (_, loss) = r.values(&format!("{prec}.loss"));
        let rel = (nll - loss[0]).abs() / loss[0];
        // The bound: perplexity's nll equals transformers' loss to 1e-4 relative.
        assert!(
            rel <= 1e-4,
            "{model} nll {nll} vs {prec} loss {}: {rel:e}",
            loss[0]
        );
    }
}

#[test]
fn cpu_forward_reproduces_transformers_multi_head_f32() {
    check_against_transformers("mha");
}

#[test]
fn cpu_forward_reproduces_transformers_gqa_llama3_rope_tied_bf16() {
    check_against_transformers("gqa");
}

/// A GPU backend's forward against the CPU reference's: f32 GEMMs and attention at every
/// layer (FORWARD_GEMM per op, 1e-8 nmse, so ~1e-4 relative RMS at most) compound over the
/// layers; 1e-4 relative RMS of the hidden states and logits, and the nll to 1e-5.
#[allow(dead_code)]
fn check_gpu<B: Backend>(b: &B, model: &str) {
    let (h_ref, l_ref, nll_ref) = our_trace(&CpuBackend::new(), model);
    let (h, l, nll) = our_trace(b, model);
    let to64 = |m: &Matrix| m.data.iter().map(|&v| v as f64).collect::<Vec<_>>();
    for (i, (a, want)) in h.iter().zip(&h_ref).enumerate() {
        let e = rel_rms(&a.data, &to64(want));
        assert!(e <= 1e-4, "{model} {} hidden.{i}: {e:e}", b.info().backend);
    }
    let e = rel_rms(&l.data, &to64(&l_ref));
    assert!(e <= 1e-4, "{model} {} logits: {e:e}", b.info().backend);
    let rel = (nll - nll_ref).abs() / nll_ref;
    assert!(
        rel <= 1e-5,
        "{model} {} nll {nll} vs {nll_ref}",
        b.info().backend
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_forward_reproduces_the_cpu_reference() {
    let b = prunebench_kernels::wgpu::WgpuBackend::new(None).expect("a Vulkan adapter (lavapipe)");
    check_gpu(&b, "mha");
    check_gpu(&b, "gqa");
}

#[cfg(feature = "cubecl")]
#[test]
fn cubecl_wgpu_forward_reproduces_the_cpu_reference() {
    let b = prunebench_kernels::cube::cube_wgpu(None).expect("a Vulkan adapter (lavapipe)");
    check_gpu(&b, "mha");
    check_gpu(&b, "gqa");
}
