//! `prunebench gradients` as a user runs it: GBLM-Pruner's statistic of a checkpoint from the
//! suite's own backward pass, written as the file `prune-model --gradients` reads, the same
//! bytes on a second run, and every bad input refused with one line, exit 2 and no file.

mod common;

use common::cli::{fails, refused};
use common::{fixture, json, prunebench, s};
use prunebench_models::checkpoint::Checkpoint;
use prunebench_models::gradients::GradientsFile;
use safetensors::SafeTensors;

fn args<'a>(ckpt: &'a str, text: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "gradients",
        "--checkpoint",
        ckpt,
        "--calibration-text",
        text,
        "--nsamples",
        "3",
        "--seqlen",
        "32",
        "--backend",
        "cpu",
        "--out",
        out,
    ]
}

#[test]
fn gradients_are_written_as_prune_model_reads_them_and_reproduce() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, text) = (fixture("gqa"), fixture("text.txt"));
    let (first, second) = (
        dir.path().join("g1.safetensors"),
        dir.path().join("g2.safetensors"),
    );
    let mut a = args(s(&ckpt), s(&text), s(&first));
    a.push("--json");
    let v = json(&prunebench(&a));
    assert_eq!(v["summary"]["windows"], 3);
    assert_eq!(v["summary"]["seqlen"], 32);
    assert_eq!(v["grad_norm"], "l2");
    assert!(v["summary"]["mean_loss"].as_f64().unwrap() > 0.0);
    let cfg = Checkpoint::open(&ckpt).unwrap().llama().unwrap();
    GradientsFile::open(&first, &cfg.model).expect("prune-model --gradients reads it");
    let bytes = std::fs::read(&first).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    for (k, want) in [
        ("nsamples", "3"),
        ("seqlen", "32"),
        ("seed", "0"),
        ("grad_scale", "100"),
    ] {
        assert_eq!(meta[k], want, "metadata {k}");
    }
    let out = prunebench(&args(s(&ckpt), s(&text), s(&second)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        bytes,
        std::fs::read(&second).unwrap(),
        "a second run's file differs"
    );
}

#[test]
fn bad_gradients_inputs_are_refused_before_any_work() {
    let (ckpt, text) = (fixture("mha"), fixture("text.txt"));
    let (ckpt, text) = (s(&ckpt), s(&text));
    let base = ["gradients", "--checkpoint", ckpt, "--backend", "cpu"];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter()
            .map(|a| a.to_string())
            .chain(extra.iter().map(|a| a.to_string()))
            .collect()
    };
    let run = |a: Vec<String>, needle: &str| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fails(&a, needle);
    };
    run(with(&[]), "give the calibration text");
    let text_arg = |extra: &[&str]| {
        let mut v = with(&[]);
        v.extend(["--calibration-text".to_string(), text.to_string()]);
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    run(text_arg(&["--seqlen", "4096"]), "max_position_embeddings");
    run(text_arg(&["--grad-norm", "l3"]), "--grad-norm");
    // --out inside the checkpoint folder: refused, and the folder unchanged.
    let inside = format!("{ckpt}/grads.safetensors");
    let mut a = text_arg(&[]);
    a.extend(["--out".to_string(), inside.clone()]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    refused(&a, "--checkpoint folder");
    assert!(!std::path::Path::new(&inside).exists());
}

/// `prune-model --method gblm` without `--gradients` computes the statistic on its own
/// calibration windows first, and prunes exactly as with the file `gradients` writes for
/// those windows.
#[test]
fn prune_model_gblm_computes_its_gradients_as_the_gradients_command() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, text) = (fixture("mha"), fixture("text.txt"));
    let grads = dir.path().join("g.safetensors");
    let windows = ["--nsamples", "2", "--seqlen", "16", "--backend", "cpu"];
    let mut a = vec![
        "gradients",
        "--checkpoint",
        s(&ckpt),
        "--calibration-text",
        s(&text),
    ];
    a.extend(windows);
    a.extend(["--out", s(&grads)]);
    let out = prunebench(&a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prune = |extra: &[&str]| {
        let mut a = vec![
            "prune-model",
            "--checkpoint",
            s(&ckpt),
            "--calibration-text",
            s(&text),
        ];
        a.extend(windows);
        a.extend(["--method", "gblm", "--json"]);
        a.extend(extra);
        json(&prunebench(&a))
    };
    let own = prune(&[]);
    let from_file = prune(&["--gradients", s(&grads)]);
    assert_eq!(own["gradients"]["windows"], 2);
    assert!(from_file["gradients"].is_null());
    for (l, (x, y)) in own["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(from_file["layers"].as_array().unwrap())
        .enumerate()
    {
        for (lx, ly) in x["linears"].as_array().unwrap().iter().zip(ly_of(y)) {
            assert_eq!(
                lx["recon_error"], ly["recon_error"],
                "layer {l} {}",
                lx["name"]
            );
            assert_eq!(lx["pruned"], ly["pruned"], "layer {l} {}", lx["name"]);
        }
    }
}

fn ly_of(v: &serde_json::Value) -> &Vec<serde_json::Value> {
    v["linears"].as_array().unwrap()
}

/// Two runs on one GPU backend write the same bytes: no floating-point atomics anywhere in
/// the backward (ALGORITHMS.md §15).
fn same_bytes_twice(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, text) = (fixture("gqa"), fixture("text.txt"));
    let files: Vec<_> = (0..2)
        .map(|i| {
            let out = dir.path().join(format!("g{i}.safetensors"));
            let mut a = args(s(&ckpt), s(&text), s(&out));
            let at = a.iter().position(|&x| x == "cpu").unwrap();
            a[at] = backend;
            let run = prunebench(&a);
            assert!(
                run.status.success(),
                "{}",
                String::from_utf8_lossy(&run.stderr)
            );
            std::fs::read(&out).unwrap()
        })
        .collect();
    assert!(
        files[0] == files[1],
        "two {backend} runs wrote different files"
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn gradients_on_wgpu_are_the_same_bytes_twice() {
    same_bytes_twice("wgpu");
}

#[cfg(feature = "cubecl")]
#[test]
fn gradients_on_cubecl_wgpu_are_the_same_bytes_twice() {
    same_bytes_twice("cubecl-wgpu");
}
