//! Checkpoints: round trips in every dtype, sharded and single-file, pruned layers written
//! back, and every malformed input giving the right error, naming the culprit, without
//! panicking or leaving files behind.

use std::collections::HashMap;
use std::path::Path;

use prunebench_kernels::Matrix;
use prunebench_models::checkpoint::{write_checkpoint, write_layer, Checkpoint};
use prunebench_models::config::{lookup, ModelConfig};
use prunebench_models::synthetic::synthetic_layer;
use prunebench_models::{DType, LayerWeights, ModelError};
use safetensors::SafeTensors;

/// The tiny model cut to two layers, so that layer 2 is out of range.
fn two_layer_tiny() -> ModelConfig {
    let mut cfg = lookup("tiny").unwrap();
    cfg.num_layers = 2;
    cfg
}

fn tiny_layers() -> Vec<LayerWeights> {
    let cfg = two_layer_tiny();
    (0..2)
        .map(|i| synthetic_layer(&cfg, i, &cfg.linears(), 5))
        .collect()
}

fn tiny_checkpoint(dir: &Path, dtype: DType, shards: usize) -> Vec<LayerWeights> {
    let layers = tiny_layers();
    write_checkpoint(dir, &two_layer_tiny(), &layers, dtype, shards).unwrap();
    layers
}

fn rounded(v: f32, d: DType) -> f32 {
    d.decode(&d.encode(&[v]))[0]
}

/// The error, after checking that its message mentions each of `needles`.
fn expect_err<T>(r: Result<T, ModelError>, needles: &[&str]) -> ModelError {
    let Err(e) = r else {
        panic!("expected an error mentioning {needles:?}")
    };
    let msg = e.to_string();
    for n in needles {
        assert!(msg.contains(n), "'{msg}' should mention '{n}'");
    }
    e
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn checkpoints_round_trip_in_every_dtype() {
    for (dtype, shards) in [
        (DType::BF16, 2),
        (DType::BF16, 3),
        (DType::F16, 1),
        (DType::F32, 1),
        (DType::F32, 2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let layers = tiny_checkpoint(dir.path(), dtype, shards);
        let files = files_in(dir.path());
        if shards > 1 {
            assert!(files.contains(&"model.safetensors.index.json".to_string()));
            assert_eq!(files.len(), shards + 2, "{files:?}");
        } else {
            assert_eq!(files, ["config.json", "model.safetensors"]);
        }
        let ck = Checkpoint::open(dir.path()).unwrap();
        let mut want_cfg = two_layer_tiny();
        want_cfg.name = ck.config().name.clone();
        assert_eq!(ck.config(), &want_cfg);
        let linears = ck.config().linears();
        let got = ck.read_layer(1, &linears).unwrap();
        assert_eq!((got.layer, &got.dtypes[..]), (1, &[dtype; 7][..]));
        assert_eq!(got.linears.len(), 7);
        let mut changed_by_rounding = 0;
        for ((l, m), (wl, want)) in got.linears.iter().zip(&layers[1].linears) {
            assert_eq!(l, wl);
            assert_eq!((m.rows, m.cols), (l.rows, l.cols));
            for (a, b) in m.data.iter().zip(&want.data) {
                assert_eq!(*a, rounded(*b, dtype), "{} {dtype:?}", l.name);
                changed_by_rounding += usize::from(a != b);
            }
        }
        // The test is only meaningful if the half-precision files really are half precision.
        assert_eq!(changed_by_rounding > 0, dtype != DType::F32, "{dtype:?}");
        // Layer 0 differs from layer 1, and a subset reads in the order asked.
        let sub = [linears[6].clone(), linears[1].clone()];
        let l0 = ck.read_layer(0, &sub).unwrap();
        assert_eq!(l0.linears[0].0.name, "down_proj");
        assert_ne!(l0.linears[0].1, got.linears[6].1);
    }
}

/// A tensor as stored: dtype, shape, values as f32.
type RawTensor = (DType, Vec<usize>, Vec<f32>);

/// The tensors of a safetensors file by name, and its metadata.
fn read_raw(path: &Path) -> (HashMap<String, RawTensor>, HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let d = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                other => panic!("unexpected dtype {other:?}"),
            };
            (name, (d, view.shape().to_vec(), d.decode(view.data())))
        })
        .collect();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

#[test]
fn write_layer_preserves_names_shapes_and_dtype() {
    for dtype in [DType::BF16, DType::F16, DType::F32] {
        let dir = tempfile::tempdir().unwrap();
        tiny_checkpoint(dir.path(), dtype, 2);
        let ck = Checkpoint::open(dir.path()).unwrap();
        let cfg = ck.config().clone();
        let layer = ck.read_layer(1, &cfg.linears()).unwrap();
        let mut pruned = layer.linears[..5].to_vec();
        for (_, m) in &mut pruned {
            for v in m.data.iter_mut().step_by(2) {
                *v = 0.0;
            }
        }
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let file = out.join("layer1.safetensors");
        write_layer(&file, &layer, &pruned).unwrap();
        assert_eq!(
            files_in(&out),
            ["layer1.safetensors"],
            "no temporary files left"
        );

        let (tensors, meta) = read_raw(&file);
        assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
        assert_eq!(tensors.len(), 5);
        for (l, m) in &pruned {
            let name = format!(
                "model.layers.1.{}.{}.weight",
                if ["gate_proj", "up_proj", "down_proj"].contains(&l.name) {
                    "mlp"
                } else {
                    "self_attn"
                },
                l.name
            );
            let (d, shape, values) = tensors
                .get(&name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(
                (*d, shape.as_slice()),
                (dtype, &[l.rows, l.cols][..]),
                "{name}"
            );
            // The values were read from a file of this dtype, so writing loses nothing.
            assert_eq!(values, &m.data, "{name}");
        }
    }
}

#[test]
fn write_layer_refuses_bad_input_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let layer = synthetic_layer(&cfg, 0, &cfg.linears(), 1);

    // A folder that does not exist.
    let target = dir.path().join("nope").join("out.safetensors");
    let e = expect_err(
        write_layer(&target, &layer, &layer.linears),
        &["out.safetensors", "does not exist"],
    );
    assert!(matches!(e, ModelError::Write { .. }), "{e}");
    assert!(files_in(dir.path()).is_empty());

    // A matrix of the wrong shape for its linear.
    let target = dir.path().join("out.safetensors");
    let mut wrong = layer.linears.clone();
    wrong[2].1 = Matrix::zeros(127, 256);
    let e = expect_err(
        write_layer(&target, &layer, &wrong),
        &[
            "model.layers.0.self_attn.v_proj.weight",
            "[128, 256]",
            "[127, 256]",
        ],
    );
    assert!(matches!(e, ModelError::WrongShape { .. }), "{e}");

    // A NaN: refused, with its position.
    let mut nan = layer.linears.clone();
    nan[4].1.data[3 * 256 + 9] = f32::NAN;
    let e = expect_err(write_layer(&target, &layer, &nan), &["gate_proj"]);
    assert!(
        matches!(e, ModelError::NonFinite { row: 3, col: 9, .. }),
        "{e}"
    );

    // A value f32 holds and f16 does not: refused after conversion, with its position.
    let mut half = layer.clone();
    half.dtypes[1] = DType::F16;
    let mut big = layer.linears.clone();
    big[1].1.data[2 * 256 + 5] = -70000.0;
    let e = expect_err(
        write_layer(&target, &half, &big),
        &["k_proj", "row 2, column 5", "-70000", "f16"],
    );
    assert!(matches!(e, ModelError::OutOfRange { .. }), "{e}");
    // The same value is fine in f32 and bf16.
    for d in [DType::F32, DType::BF16] {
        half.dtypes[1] = d;
        write_layer(&target, &half, &big[1..2]).unwrap();
        std::fs::remove_file(&target).unwrap();
    }

    // The same linear twice.
    let twice = [layer.linears[0].clone(), layer.linears[0].clone()];
    let e = expect_err(write_layer(&target, &layer, &twice), &["q_proj", "twice"]);
    assert!(matches!(e, ModelError::Write { .. }), "{e}");

    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

#[test]
fn each_linear_is_written_in_the_dtype_it_came_in() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let mut layer = synthetic_layer(&cfg, 0, &cfg.linears(), 1);
    let dtypes = [DType::BF16, DType::F32, DType::F16];
    for (i, d) in layer.dtypes.iter_mut().enumerate() {
        *d = dtypes[i % 3];
    }
    let target = dir.path().join("out.safetensors");
    // Written in another order than read: the dtype follows the linear, not the position.
    let pruned: Vec<_> = layer.linears.iter().rev().cloned().collect();
    write_layer(&target, &layer, &pruned).unwrap();
    let (tensors, _) = read_raw(&target);
    for (i, (l, _)) in layer.linears.iter().enumerate() {
        assert_eq!(tensors[&l.hf_tensor_name(0)].0, dtypes[i % 3], "{}", l.name);
    }
}

#[test]
fn a_layer_out_of_range_names_the_range() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path(), DType::F32, 1);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let e = expect_err(
        ck.read_layer(2, &ck.config().linears()),
        &["layer 2", "0-1"],
    );
    assert!(matches!(e, ModelError::LayerOutOfRange { .. }), "{e}");
}

#[test]
fn a_missing_config_or_folder_is_named() {
    let empty = tempfile::tempdir().unwrap();
    let e = expect_err(Checkpoint::open(empty.path()), &["config.json"]);
    assert!(matches!(e, ModelError::Io { .. }), "{e}");
    let gone = empty.path().join("gone");
    let e = expect_err(Checkpoint::open(&gone), &["gone"]);
    assert!(matches!(e, ModelError::Io { .. }), "{e}");

    // A config but no weights, or PyTorch pickles only.
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path(), DType::F32, 1);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = expect_err(Checkpoint::open(dir.path()), &["model.safetensors"]);
    assert!(matches!(e, ModelError::BadConfig { .. }), "{e}");
    std::fs::write(dir.path().join("pytorch_model.bin"), b"pickle").unwrap();
    expect_err(
        Checkpoint::open(dir.path()),
        &["convert them to safetensors"],
    );
}

#[test]
fn a_missing_tensor_is_named_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = tiny_layers();
    layers[0].linears.remove(3);
    write_checkpoint(dir.path(), &two_layer_tiny(), &layers, DType::F32, 1).unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    let e = expect_err(
        ck.read_layer(0, &ck.config().linears()),
        &[
            "model.layers.0.self_attn.o_proj.weight",
            "model.safetensors",
        ],
    );
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
    // Layer 1 is complete and still reads.
    assert!(ck.read_layer(1, &ck.config().linears()).is_ok());

    // Sharded: the index is what lacks the name.
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &two_layer_tiny(), &layers, DType::BF16, 2).unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    let e = expect_err(
        ck.read_layer(0, &ck.config().linears()),
        &["o_proj", "model.safetensors.index.json"],
    );
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
}

#[test]
fn a_wrong_shape_names_expected_and_actual() {
    let dir = tempfile::tempdir().unwrap();
    let mut layers = tiny_layers();
    layers[0].linears[5].1 = Matrix::zeros(688, 255);
    write_checkpoint(dir.path(), &two_layer_tiny(), &layers, DType::F16, 1).unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    let e = expect_err(
        ck.read_layer(0, &ck.config().linears()),
        &[
            "model.layers.0.mlp.up_proj.weight",
            "[688, 256]",
            "[688, 255]",
            "model.safetensors",
        ],
    );
    assert!(matches!(e, ModelError::WrongShape { .. }), "{e}");
}

#[test]
fn a_nan_or_inf_in_a_weight_is_located() {
    for (dtype, bad) in [(DType::F32, f32::NAN), (DType::BF16, f32::INFINITY)] {
        let dir = tempfile::tempdir().unwrap();
        let mut layers = tiny_layers();
        layers[1].linears[6].1.data[5 * 688 + 7] = bad;
        write_checkpoint(dir.path(), &two_layer_tiny(), &layers, dtype, 1).unwrap();
        let ck = Checkpoint::open(dir.path()).unwrap();
        let e = expect_err(
            ck.read_layer(1, &ck.config().linears()),
            &["model.layers.1.mlp.down_proj.weight", "row 5", "column 7"],
        );
        assert!(
            matches!(e, ModelError::NonFinite { row: 5, col: 7, .. }),
            "{e}"
        );
        assert!(ck.read_layer(0, &ck.config().linears()).is_ok());
    }
}

#[test]
fn truncated_or_corrupt_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path(), DType::F32, 1);
    let f = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(len / 2).unwrap();
    let e = expect_err(
        Checkpoint::open(dir.path()),
        &["model.safetensors", "truncated"],
    );
    assert!(matches!(e, ModelError::Corrupt { .. }), "{e}");

    for garbage in [&b""[..], b"\x10\0\0\0\0\0\0\0{not json at all", &[0xff; 64]] {
        std::fs::write(&f, garbage).unwrap();
        let e = expect_err(Checkpoint::open(dir.path()), &["model.safetensors"]);
        assert!(matches!(e, ModelError::Corrupt { .. }), "{e}");
    }

    // One shard of several cut short.
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path(), DType::BF16, 2);
    let shard = dir.path().join("model-00002-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    file.set_len(len - 2).unwrap();
    let e = expect_err(
        Checkpoint::open(dir.path()),
        &["model-00002-of-00002.safetensors"],
    );
    assert!(matches!(e, ModelError::Corrupt { .. }), "{e}");
}

#[test]
fn an_index_pointing_to_a_missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path(), DType::BF16, 2);
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = expect_err(
        Checkpoint::open(dir.path()),
        &["model-00002-of-00002.safetensors"],
    );
    assert!(matches!(e, ModelError::Io { .. }), "{e}");

    let index = dir.path().join("model.safetensors.index.json");
    for (text, needle) in [("[1, 2]", "weight_map"), ("{", "not valid JSON")] {
        std::fs::write(&index, text).unwrap();
        let e = expect_err(
            Checkpoint::open(dir.path()),
            &["model.safetensors.index.json", needle],
        );
        assert!(matches!(e, ModelError::BadConfig { .. }), "{e}");
    }
}

/// A shard named by an absolute path or through `..` would read weights from outside the
/// checkpoint folder, even though the shard file itself exists.
#[test]
fn an_index_naming_a_shard_outside_the_folder_is_refused() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("model");
    tiny_checkpoint(&dir, DType::BF16, 2);
    let shard = "model-00001-of-00002.safetensors";
    std::fs::copy(dir.join(shard), outer.path().join(shard)).unwrap();
    let index = dir.join("model.safetensors.index.json");
    let original = std::fs::read_to_string(&index).unwrap();
    let absolute = outer.path().join(shard);
    for name in [
        format!("../{shard}"),
        absolute.to_string_lossy().into_owned(),
    ] {
        std::fs::write(&index, original.replace(shard, &name)).unwrap();
        let e = expect_err(
            Checkpoint::open(&dir),
            &["not a file name in the checkpoint folder", &name],
        );
        assert!(matches!(e, ModelError::BadConfig { .. }), "{e}");
    }
}

#[test]
fn an_unsupported_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_layer_tiny();
    write_checkpoint(dir.path(), &cfg, &[], DType::F32, 1).unwrap();
    // q_proj of layer 0 stored as int32.
    let data = vec![0u8; 256 * 256 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![256, 256], &data)
        .unwrap();
    let name = cfg.linear("q_proj").unwrap().hf_tensor_name(0);
    safetensors::serialize_to_file(
        [(name.as_str(), view)],
        None,
        &dir.path().join("model.safetensors"),
    )
    .unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    let e = expect_err(
        ck.read_layer(0, &cfg.linears()[..1]),
        &[name.as_str(), "I32", "BF16"],
    );
    assert!(matches!(e, ModelError::UnsupportedDtype { .. }), "{e}");
}

/// What stands where a checkpoint file should be is named, with what was expected; a
/// dangling or looping link is not taken for an absent file (which would send the reader
/// looking for another one).
#[cfg(unix)]
#[test]
fn inputs_that_are_not_regular_files_are_named() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    tiny_checkpoint(&ck, DType::F32, 1);
    let st = ck.join("model.safetensors");
    let index = ck.join("model.safetensors.index.json");

    std::fs::remove_file(&st).unwrap();
    std::fs::create_dir(&st).unwrap();
    let e = expect_err(
        Checkpoint::open(&ck),
        &["model.safetensors is a directory, expected a safetensors file"],
    );
    assert!(matches!(e, ModelError::NotAFile { .. }), "{e}");
    std::fs::remove_dir(&st).unwrap();

    // An index that loops is reported, not skipped for a missing model.safetensors.
    symlink(&index, &index).unwrap();
    expect_err(
        Checkpoint::open(&ck),
        &[
            "model.safetensors.index.json is a symbolic link loop",
            "expected a JSON shard index",
        ],
    );
    std::fs::remove_file(&index).unwrap();
    symlink(ck.join("elsewhere.json"), &index).unwrap();
    expect_err(
        Checkpoint::open(&ck),
        &["index.json is a symbolic link to a missing file"],
    );
    std::fs::remove_file(&index).unwrap();

    // A link to a good file is followed.
    tiny_checkpoint(&dir.path().join("real"), DType::F32, 1);
    symlink(dir.path().join("real/model.safetensors"), &st).unwrap();
    assert_eq!(Checkpoint::open(&ck).unwrap().config().hidden, 256);

    // Neither file present is still reported as such.
    std::fs::remove_file(&st).unwrap();
    expect_err(Checkpoint::open(&ck), &["neither model.safetensors nor"]);
}

#[test]
fn any_tensor_is_read_by_name() {
    for shards in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        let layers = tiny_checkpoint(dir.path(), DType::BF16, shards);
        let ck = Checkpoint::open(dir.path()).unwrap();
        let names = ck.tensor_names();
        // 7 linears and 2 norms per layer, sorted.
        assert_eq!(names.len(), 18);
        assert!(names.windows(2).all(|p| p[0] < p[1]));
        let q = "model.layers.1.self_attn.q_proj.weight";
        let norm = "model.layers.0.post_attention_layernorm.weight";
        assert!(ck.has_tensor(q) && !ck.has_tensor("lm_head.weight"));
        let shard = ck.shard_of(q).unwrap();
        assert_eq!(shard.parent().unwrap(), dir.path());
        assert!(tensors_of(shard).contains(&q.to_string()));
        assert_eq!(ck.shard_of("lm_head.weight"), None);

        assert_eq!(ck.tensor_info(q).unwrap(), (DType::BF16, vec![256, 256]));
        let (m, d) = ck.read_tensor(q).unwrap();
        assert_eq!((m.rows, m.cols, d), (256, 256, DType::BF16));
        let want = &layers[1].linears[0].1;
        assert!(m
            .data
            .iter()
            .zip(&want.data)
            .all(|(a, b)| *a == rounded(*b, DType::BF16)));
        // A 1-D tensor is a 1 x n matrix.
        let (m, _) = ck.read_tensor(norm).unwrap();
        assert_eq!((m.rows, m.cols), (1, 256));
        let want = &layers[0]
            .norm(prunebench_models::InputGroup::MlpIn)
            .unwrap()
            .data;
        assert!(m
            .data
            .iter()
            .zip(want)
            .all(|(a, b)| *a == rounded(*b, DType::BF16)));

        let e = expect_err(ck.read_tensor("lm_head.weight"), &["lm_head.weight"]);
        assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
        expect_err(ck.tensor_info("lm_head.weight"), &["lm_head.weight"]);
    }
}

fn tensors_of(path: &Path) -> Vec<String> {
    read_raw(path).0.into_keys().collect()
}

#[test]
fn a_tensor_of_another_rank_is_not_read_as_a_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_layer_tiny();
    write_checkpoint(dir.path(), &cfg, &[], DType::F32, 1).unwrap();
    let data = vec![0u8; 2 * 3 * 4 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3, 4], &data)
        .unwrap();
    safetensors::serialize_to_file(
        [("conv.weight", view)],
        None,
        &dir.path().join("model.safetensors"),
    )
    .unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.tensor_info("conv.weight").unwrap().1, vec![2, 3, 4]);
    let e = expect_err(
        ck.read_tensor("conv.weight"),
        &["conv.weight", "[2, 3, 4]", "1-D or 2-D"],
    );
    assert!(matches!(e, ModelError::NotAMatrix { .. }), "{e}");
}

#[test]
fn the_llama_config_is_read_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path(), DType::F16, 1);
    let ck = Checkpoint::open(dir.path()).unwrap();
    // write_checkpoint's config.json has no vocab_size: the whole-model config needs it.
    let e = ck.llama().unwrap_err().to_string();
    assert!(
        e.contains("vocab_size is missing") && e.contains("config.json"),
        "{e}"
    );
    let path = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["vocab_size"] = 1000.into();
    v["rope_theta"] = 500000.0.into();
    v["tie_word_embeddings"] = true.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let l = ck.llama().unwrap();
    assert_eq!(&l.model, ck.config());
    assert_eq!((l.vocab_size, l.rope_theta), (1000, 500000.0));
    assert!(l.tie_word_embeddings && l.rope_scaling.is_none());
}
