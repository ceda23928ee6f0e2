//! `--method structured` (ALGORITHMS.md §11) on the CPU reference: the compacted layer
//! computes what the masked dense one does, GQA removal keeps heads with their KV heads, the
//! greedy rounds equal a one-group-at-a-time loop, obs with compensation beats the
//! alternatives on the synthetic layer, `--out` writes the compacted tensors and the config
//! delta, and bad input is refused with exit 2 and nothing written.

mod common;

use common::{json, prunebench};

use std::path::Path;

use prunebench_harness::{
    prune_layer, AttnUnit, Budget, Calibration, LayerRun, Method, PruneConfig, StructuredConfig,
};
use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::{Backend, Matrix, Sparsity};
use prunebench_models::config::{lookup, InputGroup, ModelConfig};
use prunebench_models::synthetic::{synthetic_layer, CalibrationSource, SyntheticCalibration};

/// A LLaMA-shaped layer with three KV groups of two query heads, and an FFN width that is no
/// multiple of a rounding unit.
fn gqa3() -> ModelConfig {
    ModelConfig {
        name: "gqa3".into(),
        hidden: 96,
        intermediate: 200,
        num_layers: 1,
        num_heads: 6,
        num_kv_heads: 3,
        head_dim: 16,
    }
}

fn prune(
    model: &ModelConfig,
    s: StructuredConfig,
    sparsity: f64,
) -> (LayerRun, SyntheticCalibration) {
    let layer = synthetic_layer(model, 0, &model.linears(), 7);
    let calib = SyntheticCalibration::new(model, 0, 4, 24, 7);
    let mut cfg = PruneConfig::new(Method::Structured, Sparsity::Unstructured(sparsity));
    cfg.structured = s;
    let run = prune_layer(
        &CpuBackend::new(),
        &layer,
        &Calibration {
            source: &calib,
            ready: None,
        },
        &cfg,
        true,
        &|_| {},
    )
    .expect("structured pruning");
    (run, calib)
}

fn weight<'a>(
    set: &'a [(prunebench_models::config::LinearSpec, Matrix)],
    name: &str,
) -> &'a Matrix {
    &set.iter().find(|(l, _)| l.name == name).expect(name).1
}

/// Y = X·Wᵀ in f64.
fn linear(x: &Matrix, w: &Matrix) -> Vec<Vec<f64>> {
    (0..x.rows)
        .map(|t| {
            (0..w.rows)
                .map(|o| {
                    (0..w.cols)
                        .map(|i| x.get(t, i) as f64 * w.get(o, i) as f64)
                        .sum()
                })
                .collect()
        })
        .collect()
}

fn silu(v: f64) -> f64 {
    v / (1.0 + (-v).exp())
}

fn mlp(x: &Matrix, gate: &Matrix, up: &Matrix, down: &Matrix) -> Vec<Vec<f64>> {
    let (g, u) = (linear(x, gate), linear(x, up));
    let act: Vec<f32> = g
        .iter()
        .zip(&u)
        .flat_map(|(gr, ur)| gr.iter().zip(ur).map(|(a, b)| (silu(*a) * b) as f32))
        .collect();
    let act = Matrix::new(x.rows, gate.rows, act).unwrap();
    linear(&act, down)
}

/// Causal GQA attention of `heads` query heads over `kv` KV heads (head h reads KV head
/// ⌊h/(heads/kv)⌋, as HF's repeat_kv), then o_proj; no RoPE, which rotates kept and removed
/// heads alike and so cannot tell the two layers apart.
fn attention(
    x: &Matrix,
    q: &Matrix,
    k: &Matrix,
    v: &Matrix,
    o: &Matrix,
    e: usize,
) -> Vec<Vec<f64>> {
    let (qs, ks, vs) = (linear(x, q), linear(x, k), linear(x, v));
    let heads = q.rows / e;
    let r = heads / (k.rows / e);
    let t = x.rows;
    let mut out = vec![0.0f32; t * heads * e];
    for h in 0..heads {
        let kvh = h / r;
        for i in 0..t {
            let s: Vec<f64> = (0..=i)
                .map(|j| {
                    (0..e)
                        .map(|d| qs[i][h * e + d] * ks[j][kvh * e + d])
                        .sum::<f64>()
                        / (e as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
            for d in 0..e {
                let a: f64 = (0..=i)
                    .map(|j| (s[j] - m).exp() / z * vs[j][kvh * e + d])
                    .sum();
                out[i * heads * e + h * e + d] = a as f32;
            }
        }
    }
    linear(&Matrix::new(t, heads * e, out).unwrap(), o)
}

fn assert_close(a: &[Vec<f64>], b: &[Vec<f64>], what: &str) {
    let num: f64 = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let den: f64 = b.iter().flatten().map(|y| y * y).sum();
    // Both layers compute with the same f32 weights; only the f64 summation order differs.
    assert!(num <= 1e-20 * den.max(1.0), "{what}: nmse {}", num / den);
}

#[test]
fn the_compacted_layer_computes_what_the_masked_dense_layer_does() {
    let model = gqa3();
    for unit in [AttnUnit::KvGroup, AttnUnit::QueryHead] {
        let s = StructuredConfig {
            budget: Budget::PerKind {
                ffn: 0.3,
                attn: 0.5,
            },
            attn_unit: unit,
            round_to: 8,
            ..StructuredConfig::default()
        };
        let (run, calib) = prune(&model, s, 0.0);
        let st = run.report.structured.as_ref().unwrap();
        assert!(
            st.ffn_removed > 0 && st.attn_removed > 0,
            "{unit:?}: {st:?}"
        );
        let (dense, small) = (&run.pruned, &run.compacted);
        let w = |set, n| weight(set, n);
        let x = calib.input(InputGroup::MlpIn, 1).unwrap();
        assert_close(
            &mlp(
                &x,
                w(small, "gate_proj"),
                w(small, "up_proj"),
                w(small, "down_proj"),
            ),
            &mlp(
                &x,
                w(dense, "gate_proj"),
                w(dense, "up_proj"),
                w(dense, "down_proj"),
            ),
            "MLP",
        );
        let x = calib.input(InputGroup::AttnIn, 1).unwrap();
        let e = model.head_dim;
        let attn = |set| {
            attention(
                &x,
                w(set, "q_proj"),
                w(set, "k_proj"),
                w(set, "v_proj"),
                w(set, "o_proj"),
                e,
            )
        };
        assert_close(&attn(small), &attn(dense), "attention through o");
        assert_eq!(w(small, "down_proj").cols, st.config.intermediate_size);
        assert_eq!(
            w(small, "q_proj").rows,
            st.config.num_attention_heads * e,
            "{unit:?}"
        );
    }
}

#[test]
fn gqa_removal_takes_whole_kv_groups_or_equal_query_heads_from_each() {
    for name in ["llama3-8b", "llama2-70b"] {
        let m = lookup(name).unwrap();
        let r = m.num_heads / m.num_kv_heads;
        // The sizes alone decide which rows and columns go; a small layer with the same
        // head ratio runs the whole method.
        let small = ModelConfig {
            name: format!("{name}-ratio"),
            hidden: 64,
            intermediate: 96,
            num_layers: 1,
            num_heads: 2 * r,
            num_kv_heads: 2,
            head_dim: 8,
        };
        let e = small.head_dim;
        let s = StructuredConfig {
            budget: Budget::PerKind {
                ffn: 0.0,
                attn: 0.5,
            },
            ..StructuredConfig::default()
        };
        let (run, _) = prune(&small, s.clone(), 0.0);
        let c = &run.report.structured.as_ref().unwrap().config;
        assert_eq!(c.num_key_value_heads, 1, "{name}");
        let g = c.kept_kv_heads[0];
        let heads: Vec<usize> = (g * r..(g + 1) * r).collect();
        assert_eq!(
            c.kept_query_heads, heads,
            "{name}: a KV group keeps its r heads"
        );
        let mask = |n: &str| {
            let i = run.pruned.iter().position(|(l, _)| l.name == n).unwrap();
            &run.masks[i]
        };
        for n in ["k_proj", "v_proj"] {
            for row in 0..2 * e {
                assert_eq!(mask(n).get(row, 0), row / e != g, "{name} {n} row {row}");
            }
        }
        for row in 0..2 * r * e {
            assert_eq!(
                mask("q_proj").get(row, 3),
                row / (r * e) != g,
                "{name} q row {row}"
            );
            assert_eq!(
                mask("o_proj").get(5, row),
                row / (r * e) != g,
                "{name} o col {row}"
            );
        }
        let s = StructuredConfig {
            attn_unit: AttnUnit::QueryHead,
            ..s
        };
        let (run, _) = prune(&small, s, 0.0);
        let c = &run.report.structured.as_ref().unwrap().config;
        assert_eq!(c.num_key_value_heads, 2, "{name}: k and v stay whole");
        assert_eq!(c.num_attention_heads, 2 * (r - r / 2), "{name}");
        for kv in 0..2 {
            let kept = c.kept_query_heads.iter().filter(|&&h| h / r == kv).count();
            assert_eq!(
                kept,
                r - r / 2,
                "{name}: KV group {kv} keeps as many as the other"
            );
        }
    }
}

#[test]
fn one_group_per_round_is_the_direct_greedy_loop() {
    let model = gqa3();
    let removed = 17;
    let s = StructuredConfig {
        budget: Budget::PerKind {
            ffn: removed as f64 / 200.0 + 1e-9,
            attn: 0.0,
        },
        round_to: 1,
        rounds: 200,
        ..StructuredConfig::default()
    };
    let (run, calib) = prune(&model, s, 0.0);
    let kept = &run
        .report
        .structured
        .as_ref()
        .unwrap()
        .config
        .kept_ffn_channels;
    assert_eq!(kept.len(), 200 - removed);

    // The same statistics, then ZipLM's loop written out: score every remaining channel,
    // remove the lowest, update, repeat.
    let b = CpuBackend::new();
    let layer = synthetic_layer(&model, 0, &model.linears(), 7);
    let down = &layer
        .linears
        .iter()
        .find(|(l, _)| l.name == "down_proj")
        .unwrap()
        .1;
    let mut h = b.zeros(200, 200).unwrap();
    for s in 0..calib.samples() {
        let x = b
            .upload(&calib.input(InputGroup::MlpAct, s).unwrap())
            .unwrap();
        b.hessian_update(&mut h, s, &x, 1).unwrap();
    }
    let mut hinv = b.hinv_explicit(&h, 0.01).unwrap().hinv;
    let mut w = b.upload(down).unwrap();
    let mut remaining: Vec<usize> = (0..200).collect();
    for _ in 0..removed {
        let scores = b
            .download(&b.obs_saliency(&w, &hinv, 1, &remaining).unwrap())
            .unwrap();
        let (i, _) = scores
            .data
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .unwrap();
        let c = remaining.remove(i);
        b.structured_update(&mut w, &mut hinv, &[c]).unwrap();
    }
    assert_eq!(kept, &remaining);
    let compacted = weight(&run.compacted, "down_proj");
    let direct = b
        .download(&b.compact(&w, None, Some(&remaining)).unwrap())
        .unwrap();
    assert_eq!(
        compacted.data, direct.data,
        "the same updates in the same order"
    );
}

fn block_error(args: &[&str]) -> f64 {
    let mut all = vec![
        "prune",
        "--backend",
        "cpu",
        "--method",
        "structured",
        "--sparsity",
        "0.3",
        "--json",
    ];
    all.extend_from_slice(args);
    let r = json(&prunebench(&all));
    r["linears"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "down_proj")
        .unwrap()["recon_error"]
        .as_f64()
        .unwrap()
}

#[test]
fn obs_with_compensation_has_the_lowest_block_output_error() {
    let obs = block_error(&[]);
    let taylor = block_error(&["--saliency", "taylor1"]);
    let none = block_error(&["--compensate", "none"]);
    assert!(obs < taylor, "obs {obs} vs taylor1 {taylor}");
    assert!(obs < none, "obs {obs} vs no compensation {none}");
}

#[test]
fn the_default_layer_reports_sizes_and_writes_the_compacted_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layer.safetensors");
    let r = json(&prunebench(&[
        "prune",
        "--backend",
        "cpu",
        "--method",
        "structured",
        "--sparsity",
        "0.3",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]));
    let s = &r["structured"];
    let c = &s["config"];
    let f = c["intermediate_size"].as_u64().unwrap() as usize;
    assert_eq!(f % 64, 0, "rounded to --round-to 64");
    assert_eq!(c["kept_ffn_channels"].as_array().unwrap().len(), f);
    let removed = s["parameters_removed"].as_u64().unwrap() as f64;
    let total = s["parameters_total"].as_u64().unwrap() as f64;
    assert!((removed / total - 0.3).abs() < 0.1, "{removed} of {total}");
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("model.layers.0.mlp.down_proj.weight")
            .unwrap()
            .shape(),
        &[256, f]
    );
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["intermediate_size"], f.to_string());
    let delta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("layer.safetensors.config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(&delta, c);
}

fn refused(args: &[&str], needle: &str, dir: &Path) {
    let out = prunebench(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: '{err}' should mention '{needle}'"
    );
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with("out"))
        .collect();
    assert!(left.is_empty(), "{args:?} left {left:?}");
}

#[test]
fn bad_structured_input_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let out = out.to_str().unwrap();
    let cal = dir.path().join("cal.safetensors");
    let cfg = lookup("tiny").unwrap();
    let src = SyntheticCalibration::new(&cfg, 0, 2, 8, 1);
    prunebench_models::calibration::write_calibration(&cal, &src, &cfg, &cfg.linears(), false)
        .unwrap();
    let base = [
        "prune",
        "--backend",
        "cpu",
        "--samples",
        "2",
        "--tokens",
        "8",
        "--method",
        "structured",
        "--out",
        out,
    ];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter()
            .map(|s| s.to_string())
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&["--sparsity", "0.95"]), "would remove every group"),
        (
            with(&["--structure", "ffn=0.5,heads=0.2"]),
            "unknown kind 'heads'",
        ),
        (with(&["--structure", "ffn=1"]), "must be in [0, 1)"),
        (with(&["--structure", "attn=-0.1"]), "must be in [0, 1)"),
        (
            with(&["--model", "llama-7b", "--attn-unit", "query_head"]),
            "r = 1",
        ),
        (
            with(&["--round-to", "0"]),
            "--round-to <ROUND_TO>': must be at least 1",
        ),
        (with(&["--sparsity", "2:4"]), "not the N:M pattern"),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, needle, dir.path());
    }
    let mut args = with(&["--saliency", "taylor1"]);
    args.extend([
        "--calibration".to_string(),
        cal.to_str().unwrap().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, "needs output gradients", dir.path());
}

/// The done-when of the structured issue: the default layer at 0.3 on both GPU backends (on
/// lavapipe where there is no GPU) keeps what the reference keeps, with the same sizes and
/// errors within the layer tolerance.
#[test]
fn both_gpu_backends_prune_the_default_layer_as_the_reference_does() {
    let run = |backend: &str| {
        json(&prunebench(&[
            "prune",
            "--backend",
            backend,
            "--method",
            "structured",
            "--sparsity",
            "0.3",
            "--json",
        ]))
    };
    let want = run("cpu");
    for backend in ["wgpu", "cubecl-wgpu"] {
        let got = run(backend);
        assert_eq!(
            got["structured"]["config"], want["structured"]["config"],
            "{backend}: kept sets"
        );
        for (g, w) in got["linears"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want["linears"].as_array().unwrap())
        {
            let (a, b) = (
                g["recon_error"].as_f64().unwrap(),
                w["recon_error"].as_f64().unwrap(),
            );
            assert!(
                (a - b).abs() <= prunebench_harness::verify::LAYER_RECON_REL_SPARSEGPT * b,
                "{backend} {}: {a} vs {b}",
                g["name"]
            );
        }
        let (a, b) = (
            got["structured"]["obs_loss"].as_f64().unwrap(),
            want["structured"]["obs_loss"].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 1e-2 * b, "{backend}: OBS loss {a} vs {b}");
    }
}

#[test]
fn a_refit_after_structured_pruning_lowers_the_block_errors_and_keeps_the_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layer.safetensors");
    let r = json(&prunebench(&[
        "prune",
        "--backend",
        "cpu",
        "--samples",
        "4",
        "--tokens",
        "64",
        "--method",
        "structured",
        "--structure",
        "ffn=0.3,attn=0.25",
        "--refit",
        "norm,masklora:8",
        "--refit-steps",
        "30",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]));
    for l in r["linears"].as_array().unwrap() {
        let f = &l["refit"];
        let (before, after) = (
            f["error_before"].as_f64().unwrap(),
            f["error_after"].as_f64().unwrap(),
        );
        // A producer's error is all in its removed rows, which no re-fit of the kept ones can
        // touch (each row's output is its own); the consumers' kept columns do compensate.
        let consumer = l["name"] == "o_proj" || l["name"] == "down_proj";
        assert!(
            after < before || (!consumer && after <= before * (1.0 + 1e-9)),
            "{}: {before} -> {after}",
            l["name"]
        );
    }
    let c = &r["structured"]["config"];
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f = c["intermediate_size"].as_u64().unwrap() as usize;
    let heads = c["num_attention_heads"].as_u64().unwrap() as usize;
    assert_eq!(
        st.tensor("model.layers.0.mlp.up_proj.weight")
            .unwrap()
            .shape(),
        &[f, 256]
    );
    assert_eq!(
        st.tensor("model.layers.0.self_attn.o_proj.weight")
            .unwrap()
            .shape(),
        &[256, heads * 32]
    );
    assert!(st
        .tensor("model.layers.0.post_attention_layernorm.weight")
        .is_ok());
}
