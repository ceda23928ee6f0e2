//! What the command-line tests (`cli*.rs`) share: a quick prune, tiny checkpoints, and runs
//! that must fail with one clear message.

// Each CLI test file uses a part of this; the other test files none.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use prunebench_models::checkpoint::write_checkpoint;
use prunebench_models::config::ModelConfig;
use prunebench_models::synthetic::synthetic_layer;
use prunebench_models::{DType, LayerWeights};

use super::prunebench;

/// A quick prune on the CPU reference: 2 samples of 8 tokens.
pub const QUICK: [&str; 7] = [
    "prune",
    "--backend",
    "cpu",
    "--samples",
    "2",
    "--tokens",
    "8",
];

pub fn quick_with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    QUICK.iter().copied().chain(extra.iter().copied()).collect()
}

pub fn tiny_layers(cfg: &ModelConfig, layers: usize) -> Vec<LayerWeights> {
    (0..layers)
        .map(|i| synthetic_layer(cfg, i, &cfg.linears(), 9))
        .collect()
}

pub fn checkpoint(
    dir: &Path,
    cfg: &ModelConfig,
    layers: &[LayerWeights],
    dtype: DType,
    shards: usize,
) -> PathBuf {
    write_checkpoint(dir, cfg, layers, dtype, shards).unwrap();
    dir.to_path_buf()
}

/// Runs prunebench, failing the test if it has not finished within `limit` (an input it
/// blocks on, such as a FIFO, would otherwise hang the test run).
pub fn prunebench_within(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run prunebench");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("run prunebench"),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("{args:?} did not finish within {limit:?}: blocked on an input?")
        }
    }
}

/// Runs a failing command: exit status 2, the message on stderr, no panic.
pub fn fails_with(args: &[&str], needle: &str) {
    let out = prunebench_within(args, Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} should fail: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: stderr '{err}' should mention '{needle}'"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
}

/// Like `fails_with` for a command writing --out, which must leave no output file.
pub fn fails(args: &[&str], needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("out.safetensors");
    let mut all: Vec<&str> = args.to_vec();
    let out_str = out_file.to_str().unwrap().to_string();
    all.extend(["--out", &out_str]);
    fails_with(&all, needle);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "{args:?} left a file behind"
    );
}

/// Runs a command that must be refused: exit status 2, `needle` in one clear error, no panic.
pub fn refused(args: &[&str], needle: &str) -> String {
    let out = prunebench(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} should be refused: {err}"
    );
    assert!(
        err.contains(needle),
        "{args:?}: '{err}' should mention '{needle}'"
    );
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    err
}
