//! The whole-model commands as a hostile user runs them: every input protected from `--out`,
//! two runs never merged into one folder, every count bounded before anything is allocated,
//! every tensor and file a run will read checked before its first layer, and no display noise
//! on a headless machine. Each refusal is one `error:` line, exit 2, with the input's bytes
//! unchanged and nothing left in the output's folder.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{fixture, s};
use serde_json::Value;

/// Runs prunebench with plain progress lines on stderr, so a test can tell whether any work
/// (a perplexity pass, a layer) started before a refusal.
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .args(args)
        .env("PRUNEBENCH_PROGRESS", "lines")
        .output()
        .expect("run prunebench")
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// Runs `args`, which must be refused: exit 2, `needles` all in the one error line, no work
/// started (no progress line), and `watch` exactly as it was.
fn refused(args: &[&str], needles: &[&str], watch: &Path) -> String {
    let before = snapshot(watch);
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected '{n}' in: {err}");
    }
    assert!(
        !err.contains("progress:"),
        "{args:?}: work started before the refusal: {err}"
    );
    assert_eq!(
        snapshot(watch),
        before,
        "{args:?} changed {}",
        watch.display()
    );
    err
}

/// A copy of a fixture checkpoint with `edit` applied to config.json and to the tensors
/// (returning None drops a tensor).
fn copy_with(
    model: &str,
    to: &Path,
    edit_config: impl Fn(&mut Value),
    edit_tensor: impl Fn(&str, &[usize], &[u8]) -> Option<(Vec<usize>, Vec<u8>)>,
) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture(model)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    let path = to.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit_config(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let weights = to.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some((shape, data)) = edit_tensor(&name, view.shape(), view.data()) {
            kept.push((name, view.dtype(), shape, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(n, d, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&weights, out).unwrap();
}

fn unchanged(_: &str, shape: &[usize], data: &[u8]) -> Option<(Vec<usize>, Vec<u8>)> {
    Some((shape.to_vec(), data.to_vec()))
}

/// prune-model's arguments on a checkpoint: 2 windows of 16 tokens of the fixture text, magnitude
/// on the CPU reference; an option in `extra` replaces its default (clap refuses a repeat).
fn prune_model_args<'a>(ckpt: &'a Path, text: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "prune-model",
        "--checkpoint",
        s(ckpt),
        "--calibration-text",
        s(text),
    ];
    for pair in [
        ["--nsamples", "2"],
        ["--seqlen", "16"],
        ["--backend", "cpu"],
        ["--method", "magnitude"],
    ] {
        if !extra.contains(&pair[0]) {
            a.extend(pair);
        }
    }
    a.extend_from_slice(extra);
    a
}

// 1. Every input of every subcommand is protected from --out by the one registry.
#[test]
fn bench_never_writes_its_results_over_an_input() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = fixture("mha");
    let ids = tmp.path().join("ids.json");
    std::fs::copy(fixture("text_ids.json"), &ids).unwrap();
    let text = tmp.path().join("text.txt");
    std::fs::copy(fixture("text.txt"), &text).unwrap();
    let grads = tmp.path().join("grads.safetensors");
    std::fs::write(&grads, b"not read before the refusal").unwrap();
    for (flag, file) in [
        ("--model-ids", &ids),
        ("--model-text", &text),
        ("--gradients", &grads),
    ] {
        let mut args = vec![
            "bench",
            "--checkpoint",
            s(&ckpt),
            "--backend",
            "cpu",
            "--methods",
            "none",
            "--op",
            "RMS_NORM",
            "--samples",
            "2",
            "--tokens",
            "16",
            flag,
            s(file),
            "--out",
            s(file),
        ];
        if flag == "--gradients" {
            args.extend_from_slice(&["--model-ids", s(&ids)]);
        }
        refused(
            &args,
            &[
                &format!("the {flag} file"),
                "refusing to overwrite an input",
            ],
            tmp.path(),
        );
    }
}

// 2. Two runs started with the same new --out: one writes the folder, the other is refused
// whole at its final move; the folder holds one model's files only.
#[test]
fn two_runs_into_one_new_folder_never_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let text = fixture("text.txt");
    let spawn = |model: &str| {
        let ckpt = fixture(model);
        let args = prune_model_args(&ckpt, &text, &["--out", s(&out)]);
        Command::new(env!("CARGO_BIN_EXE_prunebench"))
            .args(&args)
            // Both finish their work and wait, complete, before the final move: both have
            // passed every early check by then.
            .env("PRUNEBENCH_TEST_HOLD_PARTIAL_DIR_MS", "4000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("mha"), spawn("gqa"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes == [Some(0), Some(2)] || codes == [Some(2), Some(0)],
        "{codes:?}: {} / {}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    let (winner, loser) = if codes[0] == Some(0) {
        ("mha", &b)
    } else {
        ("gqa", &a)
    };
    let err = String::from_utf8_lossy(&loser.stderr);
    assert!(err.contains("no longer empty"), "{err}");
    // The folder is the winner's alone: its config and tokenizer, byte for byte.
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(fixture(winner).join(f)).unwrap(),
            "{f}"
        );
    }
    let written = Value::from(
        std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
    );
    assert!(!written.to_string().contains("reference"), "{written}");
    // Nothing else beside it: no temporary of the refused run.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}

/// prune-model with `extra` must be refused naming `flag` and `bound`, with nothing read.
fn prune_model_refuses(extra: &[&str], flag: &str, bound: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (ckpt, text) = (fixture("mha"), fixture("text.txt"));
    let out = tmp.path().join("out");
    let mut extra = extra.to_vec();
    extra.extend_from_slice(&["--out", s(&out)]);
    refused(
        &prune_model_args(&ckpt, &text, &extra),
        &[flag, bound],
        tmp.path(),
    );
}

// 3. A count too large for any run is refused before anything is allocated (it once panicked
// with "capacity overflow", exit 101).
#[test]
fn a_huge_count_is_refused_with_its_bound() {
    prune_model_refuses(
        &["--nsamples", "9223372036854775808"],
        "--nsamples",
        "at most 65536",
    );
    prune_model_refuses(&["--nsamples", "0"], "--nsamples", "at least 1");
    prune_model_refuses(&["--seqlen", "0"], "--seqlen", "at least 1");
}

// 6. Zero windows to evaluate is refused, not read as one window.
#[test]
fn zero_evaluation_windows_are_refused() {
    let text = fixture("text.txt");
    prune_model_refuses(
        &["--eval-text", s(&text), "--eval-windows", "0"],
        "--eval-windows",
        "at least 1",
    );
    let tmp = tempfile::tempdir().unwrap();
    refused(
        &[
            "perplexity",
            "--checkpoint",
            s(&fixture("mha")),
            "--text",
            s(&text),
            "--windows",
            "0",
        ],
        &["--windows", "at least 1"],
        tmp.path(),
    );
}

// 7. MiB are scaled to bytes with checked arithmetic: 2^44 MiB once wrapped to 0 bytes.
#[test]
fn a_device_memory_limit_cannot_wrap() {
    prune_model_refuses(
        &["--max-device-memory", "17592186044416"],
        "--max-device-memory",
        "at most 1099511627776",
    );
}

// 4. synthetic-model refuses what the checkpoint reader would, and what would not fit in
// memory, before it makes its folder.
#[test]
fn synthetic_model_refuses_what_it_could_not_write_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("syn");
    for (extra, needles) in [
        (
            vec!["--vocab", "1099511627776", "--layers", "1"],
            vec!["--vocab", "at most 1048576"],
        ),
        (
            vec!["--tokens", "1099511627776"],
            vec!["--tokens", "at most 67108864"],
        ),
        (
            vec!["--layers", "65537", "--vocab", "64"],
            vec!["--layers", "at most 65536"],
        ),
        // 80 layers of LLaMA-2-70B in f32: far beyond any test machine's memory.
        (
            vec!["--model", "llama2-70b"],
            vec!["needs about", "GiB of memory", "is available"],
        ),
    ] {
        let mut args = vec!["synthetic-model", "--out", s(&out)];
        args.extend(extra);
        refused(&args, &needles, tmp.path());
    }
}

// 5. Every tensor and file a run reads is checked before its first layer.
#[test]
fn a_checkpoint_that_would_fail_late_is_refused_before_the_first_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let text = fixture("text.txt");
    let out = tmp.path().join("out");

    // config.json says 3 layers, the weights hold 2.
    let more = tmp.path().join("more-layers");
    copy_with(
        "mha",
        &more,
        |v| v["num_hidden_layers"] = 3.into(),
        unchanged,
    );
    refused(
        &prune_model_args(&more, &text, &["--out", s(&out)]),
        &[
            "model.layers.2.self_attn.q_proj.weight is missing",
            "num_hidden_layers = 3",
        ],
        tmp.path(),
    );

    // No final norm, with an evaluation text: once refused after the dense forward.
    let no_norm = tmp.path().join("no-norm");
    copy_with(
        "mha",
        &no_norm,
        |_| {},
        |n, shape, data| (n != "model.norm.weight").then(|| (shape.to_vec(), data.to_vec())),
    );
    refused(
        &prune_model_args(
            &no_norm,
            &text,
            &["--eval-text", s(&text), "--out", s(&out)],
        ),
        &["model.norm.weight is missing"],
        tmp.path(),
    );

    // A dangling link among the checkpoint's top-level files: the checkpoint is at fault.
    #[cfg(unix)]
    {
        let linked = tmp.path().join("dangling");
        copy_with("mha", &linked, |_| {}, unchanged);
        std::os::unix::fs::symlink(tmp.path().join("gone.json"), linked.join("extra.json"))
            .unwrap();
        let err = refused(
            &prune_model_args(&linked, &text, &["--out", s(&out)]),
            &["extra.json"],
            tmp.path(),
        );
        assert!(!err.contains("--out"), "blames the output: {err}");
    }
}

// 8. An embedding of the wrong width is named, with its shape and the expected one.
#[test]
fn an_embedding_of_the_wrong_width_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let text = fixture("text.txt");
    let out = tmp.path().join("out");
    let narrow = tmp.path().join("narrow-embed");
    copy_with(
        "mha",
        &narrow,
        |_| {},
        |n, shape, data| {
            if n == "model.embed_tokens.weight" {
                let half = shape[1] / 2;
                let row_bytes = data.len() / shape[0];
                let bytes: Vec<u8> = data
                    .chunks(row_bytes)
                    .flat_map(|r| r[..row_bytes / 2].to_vec())
                    .collect();
                Some((vec![shape[0], half], bytes))
            } else {
                Some((shape.to_vec(), data.to_vec()))
            }
        },
    );
    for args in [
        prune_model_args(&narrow, &text, &["--out", s(&out)]),
        vec![
            "perplexity",
            "--checkpoint",
            s(&narrow),
            "--text",
            s(&text),
            "--seqlen",
            "16",
        ],
    ] {
        refused(
            &args,
            &[
                "model.embed_tokens.weight",
                "[320, 32]",
                "expected [320, 64]",
            ],
            tmp.path(),
        );
    }
}

// 9. A sparsity that looks like a flag reaches the sparsity's own check.
#[test]
fn a_hyphenated_sparsity_gets_a_message_about_the_sparsity() {
    let tmp = tempfile::tempdir().unwrap();
    for v in ["-0:4", "-1:2"] {
        refused(
            &[
                "prune",
                "--backend",
                "cpu",
                "--samples",
                "2",
                "--tokens",
                "8",
                "--sparsity",
                v,
            ],
            &[&format!("sparsity '{v}'")],
            tmp.path(),
        );
    }
}

// 10. The README's first command on a machine without a display: no error line at all.
#[test]
fn the_first_command_prints_no_error_without_a_display() {
    let out = Command::new(env!("CARGO_BIN_EXE_prunebench"))
        .args(["prune", "--samples", "4", "--tokens", "32"])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .env_remove("MESA_VK_DEVICE_SELECT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.to_lowercase().contains("error"), "stderr: {err}");
}
