//! The command line end to end: every method and sparsity on the default layer, a sharded
//! bf16 checkpoint pruned and written back, and every kind of bad input giving one clear
//! message, a non-zero exit, no panic and no output file.

mod common;

use common::{json, prunebench};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use prunebench_models::checkpoint::write_checkpoint;
use prunebench_models::config::{lookup, ModelConfig};
use prunebench_models::synthetic::synthetic_layer;
use prunebench_models::{DType, LayerWeights};

/// A quick prune on the CPU reference: 2 samples of 8 tokens.
const QUICK: [&str; 7] = [
    "prune",
    "--backend",
    "cpu",
    "--samples",
    "2",
    "--tokens",
    "8",
];

fn quick_with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    QUICK.iter().copied().chain(extra.iter().copied()).collect()
}

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

fn tiny_layers(cfg: &ModelConfig, layers: usize) -> Vec<LayerWeights> {
    (0..layers)
        .map(|i| synthetic_layer(cfg, i, &cfg.linears(), 9))
        .collect()
}

fn checkpoint(
    dir: &Path,
    cfg: &ModelConfig,
    layers: &[LayerWeights],
    dtype: DType,
    shards: usize,
) -> PathBuf {
    write_checkpoint(dir, cfg, layers, dtype, shards).unwrap();
    dir.to_path_buf()
}

#[test]
fn a_sharded_bf16_checkpoint_round_trips_through_prune() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lookup("tiny").unwrap();
    cfg.num_layers = 2;
    let layers = tiny_layers(&cfg, 2);
    let ck = checkpoint(&dir.path().join("model"), &cfg, &layers, DType::BF16, 3);
    let out_file = dir.path().join("pruned.safetensors");
    let out = prunebench(&[
        "prune",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--layer",
        "1",
        "--method",
        "wanda",
        "--sparsity",
        "2:4",
        "--backend",
        "cpu",
        "--samples",
        "4",
        "--tokens",
        "32",
        "--out",
        out_file.to_str().unwrap(),
        "--json",
    ]);
    let r = json(&out);
    assert_eq!(r["layer"], 1);
    let bytes = std::fs::read(&out_file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 7);
    for (spec, original) in &layers[1].linears {
        let name = spec.hf_tensor_name(1);
        let t = st
            .tensor(&name)
            .unwrap_or_else(|_| panic!("{name} missing"));
        assert_eq!(t.dtype(), safetensors::Dtype::BF16);
        assert_eq!(t.shape(), &[spec.rows, spec.cols]);
        let got = DType::BF16.decode(t.data());
        let orig = DType::BF16.decode(&DType::BF16.encode(&original.data));
        for r in 0..spec.rows {
            for g in (0..spec.cols).step_by(4) {
                let idx = r * spec.cols + g;
                let zeros = (idx..idx + 4).filter(|&i| got[i] == 0.0).count();
                assert_eq!(zeros, 2, "{name} row {r} group {g}");
                for i in idx..idx + 4 {
                    assert!(
                        got[i] == 0.0 || got[i] == orig[i],
                        "{name} changed a kept weight"
                    );
                }
            }
        }
    }
}

/// Runs prunebench, failing the test if it has not finished within `limit` (an input it
/// blocks on, such as a FIFO, would otherwise hang the test run).
fn prunebench_within(args: &[&str], limit: Duration) -> Output {
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
fn fails_with(args: &[&str], needle: &str) {
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
fn fails(args: &[&str], needle: &str) {
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
fn bad_checkpoints_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lookup("tiny").unwrap();
    cfg.num_layers = 1;
    let layers = tiny_layers(&cfg, 1);
    let run = |ck: &Path, extra: &[&str], needle: &str| {
        let mut args = vec![
            "prune",
            "--backend",
            "cpu",
            "--samples",
            "2",
            "--tokens",
            "8",
            "--checkpoint",
            ck.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        fails(&args, needle);
    };

    let mut missing = layers.clone();
    missing[0].linears.remove(3);
    run(
        &checkpoint(&dir.path().join("missing"), &cfg, &missing, DType::BF16, 2),
        &[],
        "o_proj.weight is missing",
    );

    let mut wrong = layers.clone();
    wrong[0].linears[4].1 = prunebench_kernels::Matrix::zeros(10, 256);
    run(
        &checkpoint(&dir.path().join("shape"), &cfg, &wrong, DType::F16, 1),
        &[],
        "has shape [10, 256], expected [688, 256]",
    );

    let mut nan = layers.clone();
    nan[0].linears[0].1.data[3] = f32::NAN;
    run(
        &checkpoint(&dir.path().join("nan"), &cfg, &nan, DType::F32, 1),
        &[],
        "non-finite",
    );

    let trunc = checkpoint(&dir.path().join("trunc"), &cfg, &layers, DType::BF16, 1);
    let f = trunc.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    run(&trunc, &[], "truncated");

    run(&dir.path().join("nowhere"), &[], "nowhere");

    // 2:4 on a model whose hidden size (250) is not a multiple of 4.
    let odd = ModelConfig {
        name: "odd".into(),
        hidden: 250,
        intermediate: 688,
        num_layers: 1,
        num_heads: 5,
        num_kv_heads: 5,
        head_dim: 50,
    };
    let odd_layers = tiny_layers(&odd, 1);
    run(
        &checkpoint(&dir.path().join("odd"), &odd, &odd_layers, DType::BF16, 1),
        &["--sparsity", "2:4"],
        "multiple of 4",
    );
}

/// Replaces `path` (a file, or nothing) with what `make` puts there.
#[cfg(unix)]
fn replace(path: &Path, make: impl FnOnce(&Path)) {
    let _ = std::fs::remove_file(path);
    make(path);
}

#[cfg(unix)]
fn make_dir(p: &Path) {
    std::fs::create_dir(p).unwrap();
}

#[cfg(unix)]
fn make_loop(p: &Path) {
    // p -> p.other -> p
    let other = p.with_extension("other");
    std::os::unix::fs::symlink(&other, p).unwrap();
    std::os::unix::fs::symlink(p, &other).unwrap();
}

#[cfg(unix)]
fn make_fifo(p: &Path) {
    let ok = Command::new("mkfifo").arg(p).status().unwrap().success();
    assert!(ok, "mkfifo {}", p.display());
}

/// Each input of a checkpoint run replaced by something that is not a regular file: the
/// error says what stands there and what was expected, and nothing blocks.
#[cfg(unix)]
#[test]
fn inputs_that_are_not_regular_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lookup("tiny").unwrap();
    cfg.num_layers = 1;
    let layers = tiny_layers(&cfg, 1);
    let mut n = 0;
    let mut case = |shards: usize, file: &str, make: fn(&Path), needle: &str| {
        n += 1;
        let ck = checkpoint(
            &dir.path().join(format!("ck{n}")),
            &cfg,
            &layers,
            DType::F32,
            shards,
        );
        replace(&ck.join(file), make);
        fails(&quick_with(&["--checkpoint", ck.to_str().unwrap()]), needle);
    };
    let st = "model.safetensors";
    let shard = "model-00002-of-00002.safetensors";
    let index = "model.safetensors.index.json";
    case(
        1,
        st,
        make_dir,
        "model.safetensors is a directory, expected a safetensors file",
    );
    case(
        2,
        shard,
        make_dir,
        "of-00002.safetensors is a directory, expected a safetensors shard",
    );
    case(
        1,
        "config.json",
        make_dir,
        "config.json is a directory, expected a JSON model config",
    );
    case(
        2,
        index,
        make_dir,
        "index.json is a directory, expected a JSON shard index",
    );
    case(
        1,
        st,
        make_loop,
        "model.safetensors is a symbolic link loop",
    );
    case(
        2,
        shard,
        make_loop,
        "of-00002.safetensors is a symbolic link loop",
    );
    case(
        1,
        "config.json",
        make_loop,
        "config.json is a symbolic link loop",
    );
    case(2, index, make_loop, "index.json is a symbolic link loop");
    case(
        1,
        st,
        make_fifo,
        "model.safetensors is a FIFO (named pipe), expected a safetensors file",
    );
    case(
        2,
        shard,
        make_fifo,
        "of-00002.safetensors is a FIFO (named pipe)",
    );
    case(
        1,
        "config.json",
        make_fifo,
        "config.json is a FIFO (named pipe)",
    );
    case(2, index, make_fifo, "index.json is a FIFO (named pipe)");
    case(
        1,
        st,
        |p| std::os::unix::fs::symlink(p.with_extension("gone"), p).unwrap(),
        "model.safetensors is a symbolic link to a missing file",
    );

    // The checkpoint folder itself, and the calibration file.
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let base = [
        "prune",
        "--backend",
        "cpu",
        "--samples",
        "2",
        "--tokens",
        "8",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |args: Vec<String>, needle: &str| {
        fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), needle)
    };
    run(
        with(&["--checkpoint", file.to_str().unwrap()]),
        "plain is a regular file, expected a checkpoint folder",
    );
    for (make, needle) in [
        (
            make_dir as fn(&Path),
            "calib is a directory, expected a calibration safetensors file",
        ),
        (make_loop, "calib is a symbolic link loop"),
        (
            make_fifo,
            "calib is a FIFO (named pipe), expected a calibration safetensors file",
        ),
    ] {
        let calib = dir.path().join("calib");
        let _ = std::fs::remove_dir(&calib);
        replace(&calib, make);
        run(with(&["--calibration", calib.to_str().unwrap()]), needle);
    }
}

/// A ready statistic no accumulation could give is refused, naming the tensor and where the
/// offending value is, instead of producing NaN scores.
#[test]
fn impossible_ready_statistics_are_refused() {
    use prunebench_kernels::Matrix;
    use prunebench_models::calibration::{write_statistics, ReadyStatistics};
    use prunebench_models::InputGroup;
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let identity = Matrix::from_fn(256, 256, |i, j| if i == j { 1.0 } else { 0.0 });
    let act = |bad: Option<usize>| {
        Matrix::from_fn(1, 256, |_, j| if Some(j) == bad { -0.5 } else { 1.0 })
    };
    let run = |stats: ReadyStatistics, method: &str, needles: &[&str]| {
        let path = dir.path().join("stats.safetensors");
        write_statistics(&path, &cfg, &stats).unwrap();
        for needle in needles {
            fails(
                &[
                    "prune",
                    "--backend",
                    "cpu",
                    "--method",
                    method,
                    "--linears",
                    "q_proj",
                    "--calibration",
                    path.to_str().unwrap(),
                ],
                needle,
            );
        }
    };
    let g = InputGroup::AttnIn;
    run(
        ReadyStatistics {
            act: vec![(g, act(Some(3)))],
            hessian: vec![(g, identity.clone())],
            ..Default::default()
        },
        "wanda",
        &[
            "tensor stat.act.attn_in in",
            "not a valid activation statistic: -0.5 at column 3 is negative",
        ],
    );
    let mut asym = identity.clone();
    asym.data[2 * 256 + 7] = 0.5;
    run(
        ReadyStatistics {
            hessian: vec![(g, asym)],
            ..Default::default()
        },
        "sparsegpt",
        &[
            "tensor stat.hessian.attn_in in",
            "not symmetric: row 2, column 7 holds 0.5 but row 7, column 2 holds 0",
        ],
    );
    let mut neg = identity.clone();
    neg.data[5 * 256 + 5] = -1.0;
    run(
        ReadyStatistics {
            hessian: vec![(g, neg)],
            ..Default::default()
        },
        "sparsegpt",
        &[
            "tensor stat.hessian.attn_in in",
            "diagonal value -1 at row 5, column 5 is negative",
        ],
    );
    let q = cfg.linear("q_proj").unwrap();
    let grad = Matrix::from_fn(256, 256, |i, j| if (i, j) == (4, 9) { -2.0 } else { 1.0 });
    run(
        ReadyStatistics {
            act: vec![(g, act(None))],
            hessian: vec![(g, identity)],
            grad: vec![(q, grad)],
        },
        "gblm",
        &[
            "tensor stat.grad.q_proj in",
            "not a valid gradient statistic: -2 at row 4, column 9 is negative",
        ],
    );
}

/// Sizes in config.json too large for any model are refused naming the field, not carried
/// into shape arithmetic that overflows.
#[test]
fn oversized_config_sizes_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lookup("tiny").unwrap();
    cfg.num_layers = 1;
    let ck = checkpoint(
        &dir.path().join("big"),
        &cfg,
        &tiny_layers(&cfg, 1),
        DType::F32,
        1,
    );
    let base = serde_json::json!({
        "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 1,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32,
    });
    for (key, value, needle) in [
        (
            "num_attention_heads",
            1u64 << 32,
            "num_attention_heads 4294967296 is larger than the limit",
        ),
        (
            "num_key_value_heads",
            1 << 32,
            "num_key_value_heads 4294967296 is larger than the limit",
        ),
        (
            "head_dim",
            1 << 32,
            "head_dim 4294967296 is larger than the limit",
        ),
        (
            "hidden_size",
            1 << 32,
            "hidden_size 4294967296 is larger than the limit",
        ),
        (
            "intermediate_size",
            u64::MAX,
            "intermediate_size 18446744073709551615 is larger than the limit",
        ),
        (
            "num_hidden_layers",
            1 << 40,
            "num_hidden_layers 1099511627776 is larger than the limit",
        ),
        (
            "head_dim",
            1 << 18,
            "num_attention_heads x head_dim = 8 x 262144 = 2097152 is larger than the limit",
        ),
    ] {
        let mut c = base.clone();
        c[key] = value.into();
        std::fs::write(ck.join("config.json"), c.to_string()).unwrap();
        fails(&quick_with(&["--checkpoint", ck.to_str().unwrap()]), needle);
    }
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
        "LM_HEAD",
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

// Outputs: every --out goes through one checked, atomic path.

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

/// Runs a command that must be refused: exit status 2, `needle` in one clear error, no panic.
fn refused(args: &[&str], needle: &str) -> String {
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

/// SparseGPT's updates on f16 weights near the top of f16's range overflow it: the output
/// would hold Inf. It is refused, naming the tensor and position, and nothing is written.
#[test]
fn an_update_beyond_f16_is_refused_not_written_as_inf() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lookup("tiny").unwrap();
    cfg.num_layers = 1;
    let mut layers = tiny_layers(&cfg, 1);
    for (_, m) in &mut layers[0].linears {
        let max = m.data.iter().fold(0f32, |a, v| a.max(v.abs()));
        m.data.iter_mut().for_each(|v| *v *= 65000.0 / max);
    }
    let ck = checkpoint(&dir.path().join("ck"), &cfg, &layers, DType::F16, 1);
    let out = dir.path().join("out.safetensors");
    let err = refused(
        &quick_with(&[
            "--checkpoint",
            ck.to_str().unwrap(),
            "--method",
            "sparsegpt",
            "--out",
            out.to_str().unwrap(),
        ]),
        "beyond the range of f16",
    );
    assert!(
        err.contains("tensor model.layers.0.") && err.contains(", column "),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "{err}");
}

/// A checkpoint whose linears have different dtypes is written back with each in its own.
#[test]
fn mixed_dtypes_are_written_back_each_in_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lookup("tiny").unwrap();
    cfg.num_layers = 1;
    let layers = tiny_layers(&cfg, 1);
    let ck = checkpoint(&dir.path().join("ck"), &cfg, &layers, DType::BF16, 1);
    let dtype_of = |i: usize| [DType::F32, DType::F16, DType::BF16][i % 3];
    let bytes: Vec<(String, Vec<usize>, DType, Vec<u8>)> = layers[0]
        .linears
        .iter()
        .enumerate()
        .map(|(i, (l, m))| {
            let d = dtype_of(i);
            (
                l.hf_tensor_name(0),
                vec![m.rows, m.cols],
                d,
                d.encode(&m.data),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, shape, d, b)| {
            let view =
                safetensors::tensor::TensorView::new(d.to_safetensors(), shape.clone(), b).unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, &ck.join("model.safetensors")).unwrap();
    let out = dir.path().join("out.safetensors");
    let run = prunebench(&quick_with(&[
        "--checkpoint",
        ck.to_str().unwrap(),
        "--method",
        "magnitude",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&written).unwrap();
    for (i, (name, _, d, _)) in bytes.iter().enumerate() {
        assert_eq!(
            st.tensor(name).unwrap().dtype(),
            d.to_safetensors(),
            "{name} ({i})"
        );
    }
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
