//! Checkpoints through the command line: a sharded bf16 checkpoint pruned and written back,
//! mixed dtypes written back each in its own, and every kind of bad input (a missing or
//! misshapen tensor, non-finite or truncated data, inputs that are not regular files,
//! impossible ready statistics, oversized config sizes, updates beyond f16) giving one clear
//! message, a non-zero exit, no panic and no output file.

mod common;

use common::cli::{checkpoint, fails, quick_with, refused, tiny_layers};
use common::{json, prunebench};

use std::path::Path;
use std::process::Command;

use prunebench_models::config::{lookup, ModelConfig};
use prunebench_models::DType;

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
