//! What the command-line tests share: running the built binary, and its JSON.

use std::process::{Command, Output};

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
