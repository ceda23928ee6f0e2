//! The command line end to end: every method and sparsity on the default layer, the default
//! command, verify and bench selecting ops, the GPU backends pruning like the reference, and
//! bad arguments and filters giving one clear message, a non-zero exit and no panic. Checkpoints
//! in and out are in `cli_checkpoints.rs`, `--out` in `cli_outputs.rs`.

mod common;

use common::cli::{fails, fails_with, refused};
use common::{json, prunebench};

#[test]
fn every_method_and_pattern_prunes_the_default_layer() {
    for method in ["magnitude", "wanda", "gblm", "sparsegpt"] {
        for sparsity in ["0.5", "2:4"] {
            let out = prunebench(&[
                "prune",
                "--backend",
                "cpu",
                "--method",
                method,
                "--sparsity",
                sparsity,
                "--samples",
                "4",
                "--tokens",
                "64",
                "--json",
            ]);
            let r = json(&out);
            let linears = r["linears"].as_array().unwrap();
            assert_eq!(linears.len(), 7, "{method} {sparsity}");
            for l in linears {
                let s = l["sparsity"].as_f64().unwrap();
                assert!((s - 0.5).abs() < 1e-9, "{method} {sparsity}: {l}");
                assert!(l["recon_error"].as_f64().unwrap() > 0.0);
            }
            assert_eq!(r["method"], method);
            assert_eq!(r["backend"]["backend"], "cpu");
        }
    }
}

#[test]
fn the_default_command_runs() {
    let out = prunebench(&["prune", "--backend", "cpu"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("down_proj") && text.contains("50.00%"),
        "{text}"
    );
    let out = prunebench(&["devices"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("cpu:"));
}

#[test]
fn bad_arguments_fail_cleanly() {
    let base = [
        "prune",
        "--backend",
        "cpu",
        "--samples",
        "2",
        "--tokens",
        "8",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    fails(&with(&["--model", "gpt-9"]), "unknown model 'gpt-9'");
    fails(&with(&["--layer", "99"]), "out of range");
    fails(&with(&["--sparsity", "1.5"]), "outside [0, 1)");
    fails(&with(&["--sparsity", "4:2"]), "1 <= N < M");
    // Negative values are values, not unknown flags.
    fails(&with(&["--sparsity", "-0.1"]), "outside [0, 1)");
    fails(&with(&["--sparsity", "-1"]), "outside [0, 1)");
    fails(&with(&["--layer", "-1"]), "must not be negative");
    // (`base` sets --samples and --tokens already.)
    let cpu = ["prune", "--backend", "cpu"];
    fails(
        &[&cpu[..], &["--samples", "-2"]].concat(),
        "must not be negative",
    );
    fails(
        &[&cpu[..], &["--tokens", "-8"]].concat(),
        "must not be negative",
    );
    fails(&with(&["--seed", "-3"]), "must not be negative");
    fails(&with(&["--linears", "q_proj,x_proj"]), "x_proj");
    fails(&with(&["--method", "obs"]), "unknown method");
    fails(&["prune", "--backend", "tpu"], "unknown backend 'tpu'");
}

#[test]
fn negative_numbers_in_verify_and_bench_are_reported_as_values() {
    let skip = ["--backend", "cpu", "--skip-ops", "--methods", "wanda"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["verify"];
        v.extend(skip);
        v.extend(extra);
        v
    };
    fails_with(&with(&["--sparsities", "-0.1"]), "outside [0, 1)");
    fails_with(&with(&["--sparsities", "-0.5,2:4"]), "outside [0, 1)");
    let bench = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec!["bench", "--backend", "cpu", "--dry-run"];
        v.extend(extra);
        v
    };
    fails_with(&bench(&["--repeats", "-1"]), "must not be negative");
    fails_with(&bench(&["--warmup", "-1"]), "must not be negative");
    fails_with(&bench(&["--input-sets", "-1"]), "must not be negative");
    fails_with(&bench(&["--layer-repeats", "-1"]), "must not be negative");
    fails_with(&bench(&["--copy-gbps", "-5"]), "above 0");
    fails_with(&bench(&["--fma-tflops", "-0.5"]), "above 0");
    fails_with(&bench(&["--fma-tflops", "0"]), "above 0");
}

#[test]
fn verify_on_the_reference_passes_and_reports() {
    let out = prunebench(&[
        "verify",
        "--backend",
        "cpu",
        "--op",
        "MASK",
        "--methods",
        "wanda",
        "--sparsities",
        "2:4",
        "--samples",
        "2",
        "--tokens",
        "16",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("MASK(pattern=2:4,rows=13,cols=300)"),
        "{text}"
    );
    assert!(text.contains("layers 1 passed, 0 failed"), "{text}");
}

/// `--op` selects the forward ops as any other: the odd shapes, then the model's pass over one
/// window of `--tokens` (the tiny model's 4096-token vocabulary in one chunk); `bench
/// --dry-run` lists LLaMA 3's at 2048 tokens with the vocabulary in chunks of 4096.
#[test]
fn verify_and_bench_select_the_forward_ops() {
    let out = prunebench(&[
        "verify",
        "--backend",
        "cpu",
        "--op",
        // With the parenthesis: LM_HEAD_BACKWARD's names contain LM_HEAD too.
        "LM_HEAD(",
        "--methods",
        "none",
        "--tokens",
        "16",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "LM_HEAD(chunk=128,n=13,vocab=300,cols=37)",
        "LM_HEAD(chunk=4096,n=16,vocab=4096,cols=256)",
        "ops 5 passed, 0 failed",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    let out = prunebench(&[
        "bench",
        "--backend",
        "cpu",
        "--dry-run",
        "--model",
        "llama3-8b",
        "--tokens",
        "2048",
        "--op",
        "n=2048",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "ATTENTION(heads=32,kv_heads=8,head_dim=128,seq=2048,n=2048)",
        "ROPE(heads=8,head_dim=128,seq=2048,theta=500000,n=2048)",
        "LM_HEAD(chunk=4096,n=2048,vocab=128256,cols=4096)",
        "EMBED(n=2048,vocab=128256,cols=4096)",
        "LINEAR(n=2048,rows=14336,cols=4096)",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
    // A checkpoint's vocabulary and RoPE base come from its config.json (320 tokens,
    // rope_parameters' θ = 500000).
    let gqa = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/forward/gqa");
    let out = prunebench(&[
        "bench",
        "--backend",
        "cpu",
        "--dry-run",
        "--checkpoint",
        gqa,
        "--tokens",
        "32",
        "--op",
        "n=32",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "ROPE(heads=6,head_dim=16,seq=32,theta=500000,n=32)",
        "EMBED(n=32,vocab=320,cols=96)",
        "LM_HEAD(chunk=4096,n=32,vocab=320,cols=96)",
    ] {
        assert!(text.contains(want), "{want} in {text}");
    }
}

/// The GPU backends through the command line (on lavapipe where there is no GPU): the same
/// layer, the same pruned counts, reconstruction errors within the layer tolerance of the
/// reference's.
#[cfg(all(feature = "wgpu", feature = "cubecl"))]
#[test]
fn gpu_backends_prune_like_the_reference() {
    let run = |backend: &str| {
        let r = json(&prunebench(&[
            "prune",
            "--backend",
            backend,
            "--method",
            "sparsegpt",
            "--sparsity",
            "2:4",
            "--samples",
            "2",
            "--tokens",
            "32",
            "--linears",
            "q_proj,down_proj",
            "--json",
        ]));
        assert_eq!(r["backend"]["backend"], backend);
        r["linears"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["pruned"].as_u64().unwrap(),
                    l["recon_error"].as_f64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let want = run("cpu");
    for backend in ["wgpu", "cubecl-wgpu"] {
        for ((pw, ew), (pg, eg)) in want.iter().zip(run(backend)) {
            assert_eq!(*pw, pg, "{backend}");
            assert!(
                (ew - eg).abs() <= 1e-2 * ew,
                "{backend}: recon {eg} vs reference {ew}"
            );
        }
    }
    let out = prunebench(&[
        "verify",
        "--backend",
        "wgpu",
        "--op",
        "PRUNE_GBLM(pattern=2:4",
        "--methods",
        "gblm",
        "--sparsities",
        "0.5",
        "--samples",
        "2",
        "--tokens",
        "16",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("wgpu: ops") && text.contains("0 failed"),
        "{text}"
    );
}

/// A filter that selects nothing is a mistake, refused before any work, in every subcommand.
#[test]
fn a_filter_that_matches_nothing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let out = out.to_str().unwrap();
    let quick = ["--backend", "cpu", "--samples", "2", "--tokens", "8"];
    let run = |cmd: &str, extra: &[&str], needle: &str| {
        let args: Vec<&str> = [cmd].iter().chain(&quick).chain(extra).copied().collect();
        refused(&args, needle);
    };
    run(
        "bench",
        &["--op", "NOPE", "--out", out],
        "no op case matches --op NOPE",
    );
    run(
        "bench",
        &["--op", "NOPE", "--dry-run"],
        "no op case matches --op NOPE",
    );
    run("verify", &["--op", "NOPE"], "no op case matches --op NOPE");
    run(
        "verify",
        &["--skip-ops", "--methods", "none"],
        "nothing to verify",
    );
    run(
        "bench",
        &["--op", "NOPE", "--methods", "none", "--out", out],
        "--op NOPE",
    );
    for cmd in ["bench", "verify"] {
        run(cmd, &["--methods", ","], "unknown method");
        run(cmd, &["--linears", ","], "unknown linear");
        run(cmd, &["--sparsities", ","], "sparsity");
    }
    run("prune", &["--linears", ""], "unknown linear");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
