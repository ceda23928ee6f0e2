//! What the command-line tests share: running the built binary, and its JSON.

/// What the `cli*.rs` files share.
pub mod cli;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[allow(dead_code)] // not every test file runs the binary
pub fn prunebench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .args(args)
        .output()
        .expect("run prunebench")
}

/// The JSON a successful run printed; a failed run fails the test with its stderr.
#[allow(dead_code)] // not every test file reads JSON
pub fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// A file or folder of the forward fixtures (tests/fixtures/forward).
#[allow(dead_code)] // not every test file runs on the fixtures
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/forward")
        .join(name)
}

/// The forward fixture's token windows (`ids` of its reference.safetensors, int64, one
/// window per row).
#[allow(dead_code)]
pub fn fixture_windows(model: &str) -> Vec<Vec<u32>> {
    let bytes = std::fs::read(fixture(model).join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("ids").unwrap();
    let seq = ids.shape()[1];
    ids.data()
        .chunks_exact(8 * seq)
        .map(|w| {
            w.chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                .collect()
        })
        .collect()
}

/// A path as a command-line argument.
#[allow(dead_code)]
pub fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
