//! `--out` through the command line: every output goes through one checked, atomic path, so
//! an output never replaces an input, a device, FIFO or folder is refused, an unusable path is
//! refused before any work, a long legal name is written, and a signal during the write
//! leaves no temporary.

mod common;

use common::cli::{checkpoint, quick_with, refused, tiny_layers};
use common::prunebench;

use std::path::{Path, PathBuf};
use std::process::Command;

use prunebench_models::config::lookup;
use prunebench_models::DType;

/// Every file under `dir` (recursively) with its bytes, to show a failed run changed nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
        }
    }
    out.sort();
    out
}

#[test]
fn an_output_never_replaces_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lookup("tiny").unwrap();
    cfg.num_layers = 1;
    let layers = tiny_layers(&cfg, 1);
    let single = checkpoint(&dir.path().join("single"), &cfg, &layers, DType::BF16, 1);
    let sharded = checkpoint(&dir.path().join("sharded"), &cfg, &layers, DType::BF16, 2);
    let cal = dir.path().join("cal.safetensors");
    let src = prunebench_models::synthetic::SyntheticCalibration::new(&cfg, 0, 2, 8, 1);
    prunebench_models::calibration::write_calibration(&cal, &src, &cfg, &cfg.linears(), true)
        .unwrap();
    std::os::unix::fs::symlink(single.join("model.safetensors"), dir.path().join("link")).unwrap();
    let before = snapshot(dir.path());
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    let cases = [
        (&single, s(single.join("model.safetensors"))),
        (&single, s(single.join("config.json"))),
        (&single, s(single.join("new.safetensors"))),
        (&single, s(single.join("../single/model.safetensors"))),
        (&single, s(dir.path().join("link"))),
        (
            &sharded,
            s(sharded.join("model-00002-of-00002.safetensors")),
        ),
        (&single, s(cal.clone())),
    ];
    for (ck, out) in &cases {
        refused(
            &quick_with(&[
                "--checkpoint",
                ck.to_str().unwrap(),
                "--calibration",
                cal.to_str().unwrap(),
                "--out",
                out,
            ]),
            "refusing to overwrite an input",
        );
        assert_eq!(snapshot(dir.path()), before, "--out {out} changed a file");
    }
}

#[test]
fn an_output_onto_a_device_fifo_or_folder_is_refused() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    for (out, needle) in [
        ("/dev/null", "not a regular file"),
        (fifo.to_str().unwrap(), "not a regular file"),
        (folder.to_str().unwrap(), "it is a folder"),
        (".", "it is a folder"),
    ] {
        refused(&quick_with(&["--out", out]), needle);
        refused(&["bench", "--backend", "cpu", "--out", out], needle);
    }
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::read_dir(&folder).unwrap().next().is_none());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// An unusable --out is refused before any work: the layer is not even loaded (the progress
/// and ceiling lines never appear), and nothing is left behind.
#[test]
fn an_unusable_out_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    // /proc refuses new files, even to root.
    let err = refused(
        &[
            "bench",
            "--backend",
            "cpu",
            "--out",
            "/proc/prunebench.json",
        ],
        "is not writable",
    );
    assert!(!err.contains("measuring"), "{err}");
    refused(
        &quick_with(&["--out", "/proc/pruned.safetensors"]),
        "is not writable",
    );
    let missing = dir.path().join("no/such/out.json");
    refused(
        &[
            "bench",
            "--backend",
            "cpu",
            "--out",
            missing.to_str().unwrap(),
        ],
        "does not exist",
    );
    let results = dir.path().join("r.json");
    std::fs::write(&results, "{}").unwrap();
    refused(
        &["report", results.to_str().unwrap(), "--out", "/proc/report"],
        "is not writable",
    );
    refused(
        &[
            "report",
            results.to_str().unwrap(),
            "--out",
            results.to_str().unwrap(),
        ],
        "is not a folder",
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_long_legal_out_name_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("{}.safetensors", "p".repeat(228));
    assert_eq!(name.len(), 240);
    let out = dir.path().join(&name);
    let run = prunebench(&quick_with(&["--out", out.to_str().unwrap()]));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(name)]);
}

/// A signal while the output is being written removes its temporary and exits 128 + signal.
/// The test hook holds the complete temporary before its rename, so the signal lands then.
#[test]
fn a_signal_during_the_write_leaves_no_temporary() {
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.safetensors");
        let mut child = Command::new(env!("CARGO_BIN_EXE_prunebench"))
            .args(quick_with(&["--out", out.to_str().unwrap()]))
            .env(prunebench_models::output::HOLD_ENV, "60000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let held = || {
            std::fs::read_dir(dir.path()).unwrap().flatten().any(|e| {
                e.file_name().to_string_lossy().contains(".partial-")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        };
        while !held() {
            assert!(start.elapsed().as_secs() < 120, "no temporary appeared");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{signal}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "SIG{signal} left a file"
        );
    }
}
