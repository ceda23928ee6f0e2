//! `prune --refit` end to end on the CPU reference: every re-fitted linear's error drops, the
//! written weights keep the mask and the norms are written; bad re-fit arguments are refused
//! with exit 2 and nothing written.

mod common;

use common::prunebench;

use std::path::Path;

use prunebench_models::checkpoint::{write_checkpoint, Checkpoint};
use prunebench_models::config::lookup;
use prunebench_models::synthetic::synthetic_layer;
use prunebench_models::{DType, InputGroup};

const QUICK: [&str; 9] = [
    "prune",
    "--backend",
    "cpu",
    "--samples",
    "2",
    "--tokens",
    "32",
    "--method",
    "magnitude",
];

fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    QUICK.iter().copied().chain(extra.iter().copied()).collect()
}

#[test]
fn a_refit_lowers_every_error_keeps_the_mask_and_writes_the_norms() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("layer.safetensors");
    let o = prunebench(&with(&[
        "--refit",
        "norm,masklora:16",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let linears = r["linears"].as_array().unwrap();
    assert_eq!(linears.len(), 7);
    for l in linears {
        let f = &l["refit"];
        let (before, after) = (
            f["error_before"].as_f64().unwrap(),
            f["error_after"].as_f64().unwrap(),
        );
        assert!(after < before, "{}: {after} !< {before}", l["name"]);
        // o and down read inputs without a norm in front: only the LoRA applies to them.
        let items = if ["o_proj", "down_proj"].contains(&l["name"].as_str().unwrap()) {
            serde_json::json!(["masklora:16"])
        } else {
            serde_json::json!(["norm", "masklora:16"])
        };
        assert_eq!(f["items"], items, "{}", l["name"]);
        assert!(f["trained_fraction"].as_f64().unwrap() > 0.0);
        assert!(f["seconds_per_step"].as_f64().unwrap() >= 0.0);
    }
    let norms: Vec<&str> = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["norm_refit"]["tensor"].as_str())
        .collect();
    let skipped = r["groups"][1]["refit_skipped"].as_array().unwrap();
    assert!(skipped[0]
        .as_str()
        .unwrap()
        .contains("attn_out input has no norm"));
    assert_eq!(
        norms,
        [
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight"
        ]
    );
    // The file: seven linears whose zeros are exactly the pruned entries, and both norms.
    let text = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&text).unwrap();
    for l in linears {
        let name = format!(
            "model.layers.0.{}.{}.weight",
            if l["group"].as_str().unwrap().starts_with("attn") {
                "self_attn"
            } else {
                "mlp"
            },
            l["name"].as_str().unwrap()
        );
        let t = st.tensor(&name).unwrap();
        let zeros = t
            .data()
            .chunks_exact(4)
            .filter(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) == 0.0)
            .count();
        assert_eq!(zeros as u64, l["pruned"].as_u64().unwrap(), "{name}");
    }
    for n in norms {
        assert_eq!(st.tensor(n).unwrap().shape(), [256]);
    }
}

fn refused(args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let mut all = args.to_vec();
    all.extend(["--out", out.to_str().unwrap()]);
    let o = prunebench(&all);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: '{err}' lacks '{needle}'");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "{args:?} left a file"
    );
}

#[test]
fn bad_refits_are_refused_before_any_work() {
    refused(
        &with(&["--refit", "norm,lora:16"]),
        "unknown item 'lora:16'",
    );
    refused(&with(&["--refit", "masklora:0"]), "rank of at least 1");
    refused(&with(&["--refit", "scalelora:x"]), "not a whole number");
    // k_proj of the tiny model is 128 x 256.
    refused(
        &with(&["--refit", "masklora:200"]),
        "above min(rows, cols) = 128 of k_proj",
    );
    refused(&with(&["--refit", "norm,norm"]), "norm is listed twice");
    refused(
        &with(&["--refit", "masklora:4", "--refit-lr", "-1"]),
        "positive",
    );
}

#[test]
fn a_diverging_refit_stops_and_writes_nothing() {
    refused(
        &with(&[
            "--refit",
            "masklora:4",
            "--refit-lr",
            "1e30",
            "--refit-steps",
            "20",
        ]),
        "finite",
    );
}

#[test]
fn norm_needs_the_norm_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let mut layer = synthetic_layer(&cfg, 0, &cfg.linears(), 3);
    layer.norms.clear();
    let ck = dir.path().join("ck");
    write_checkpoint(&ck, &cfg, &[layer], DType::BF16, 1).unwrap();
    let path = ck.to_str().unwrap();
    refused(
        &with(&["--checkpoint", path, "--refit", "norm"]),
        "no input_layernorm tensor (model.layers.0.input_layernorm.weight)",
    );
    // With the norms present they are read in the checkpoint's dtype.
    let mut layer = synthetic_layer(&cfg, 0, &cfg.linears(), 3);
    layer.norms.retain(|n| n.group == InputGroup::AttnIn);
    let ck2 = dir.path().join("ck2");
    write_checkpoint(&ck2, &cfg, &[layer], DType::BF16, 1).unwrap();
    let read = Checkpoint::open(Path::new(&ck2))
        .unwrap()
        .read_layer(0, &cfg.linears())
        .unwrap();
    assert_eq!(read.norms.len(), 1);
    assert_eq!(read.norms[0].dtype, DType::BF16);
}

/// The GPU backends re-fit like the reference (on lavapipe where there is no GPU): the same
/// errors within the layer tolerance of `verify --refit`, the same norm weights.
#[cfg(all(feature = "wgpu", feature = "cubecl"))]
#[test]
fn gpu_backends_refit_like_the_reference() {
    let run = |backend: &str| {
        let o = prunebench(&[
            "prune",
            "--backend",
            backend,
            "--method",
            "wanda",
            "--sparsity",
            "2:4",
            "--samples",
            "2",
            "--tokens",
            "32",
            "--linears",
            "q_proj,k_proj,down_proj",
            "--refit",
            "norm,masklora:4,rowscale",
            "--refit-steps",
            "10",
            "--json",
        ]);
        assert!(
            o.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let errors: Vec<f64> = r["linears"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["refit"]["error_after"].as_f64().unwrap())
            .collect();
        let gamma: Vec<f64> = r["groups"][0]["norm_refit"]["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        (errors, gamma)
    };
    let (want, want_gamma) = run("cpu");
    for backend in ["wgpu", "cubecl-wgpu"] {
        let (got, gamma) = run(backend);
        for (w, g) in want.iter().zip(&got) {
            assert!(
                (w - g).abs() <= 2e-2 * w,
                "{backend}: error {g} vs reference {w}"
            );
        }
        for (w, g) in want_gamma.iter().zip(&gamma) {
            assert!(
                (w - g).abs() <= 1e-3 * w.abs(),
                "{backend}: γ' {g} vs reference {w}"
            );
        }
    }
}
