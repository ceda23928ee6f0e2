//! Checkpoints and calibration files: round trips in every dtype, sharded and single-file,
//! and every malformed input giving the right error without panicking or leaving files behind.

use std::path::Path;

use prunebench_models::calibration::{write_calibration, CalibrationFile};
use prunebench_models::checkpoint::{write_checkpoint, write_layer, Checkpoint};
use prunebench_models::config::lookup;
use prunebench_models::synthetic::{synthetic_layer, SyntheticCalibration};
use prunebench_models::{CalibrationSource, DType, InputGroup, ModelError};

fn tiny_checkpoint(
    dir: &Path,
    dtype: DType,
    shards: usize,
) -> Vec<prunebench_models::LayerWeights> {
    let cfg = lookup("tiny").unwrap();
    let mut small = cfg.clone();
    small.num_layers = 2;
    let layers: Vec<_> = (0..2)
        .map(|i| synthetic_layer(&small, i, &small.linears(), 5))
        .collect();
    write_checkpoint(dir, &small, &layers, dtype, shards).unwrap();
    layers
}

fn rounded(v: f32, d: DType) -> f32 {
    d.decode(&d.encode(&[v]))[0]
}

#[test]
fn checkpoints_round_trip_in_every_dtype() {
    for (dtype, shards) in [
        (DType::BF16, 3),
        (DType::F16, 1),
        (DType::F32, 1),
        (DType::F32, 2),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let layers = tiny_checkpoint(dir.path(), dtype, shards);
        if shards > 1 {
            assert!(dir.path().join("model.safetensors.index.json").exists());
        }
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.config().hidden, 256);
        let linears = ck.config().linears();
        let got = ck.read_layer(1, &linears).unwrap();
        assert_eq!(got.dtype, dtype);
        for ((l, m), (_, want)) in got.linears.iter().zip(&layers[1].linears) {
            assert_eq!((m.rows, m.cols), (l.rows, l.cols));
            for (a, b) in m.data.iter().zip(&want.data) {
                assert_eq!(*a, rounded(*b, dtype), "{} {dtype:?}", l.name);
            }
        }
    }
}

#[test]
fn write_layer_preserves_names_shapes_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path(), DType::BF16, 2);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let cfg = ck.config().clone();
    let layer = ck.read_layer(0, &cfg.linears()).unwrap();
    let mut pruned = layer.linears.clone();
    for (_, m) in &mut pruned {
        for v in m.data.iter_mut().step_by(2) {
            *v = 0.0;
        }
    }
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let file = out.join("layer0.safetensors");
    write_layer(&file, &layer, &pruned).unwrap();
    // Read back through the checkpoint reader: same names, shapes, dtype, zeros kept.
    std::fs::copy(dir.path().join("config.json"), out.join("config.json")).unwrap();
    std::fs::rename(&file, out.join("model.safetensors")).unwrap();
    let back = Checkpoint::open(&out)
        .unwrap()
        .read_layer(0, &cfg.linears())
        .unwrap();
    assert_eq!(back.dtype, DType::BF16);
    for ((l, m), (_, p)) in back.linears.iter().zip(&pruned) {
        assert_eq!(m, p, "{}", l.name);
    }
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        2,
        "no temporary files left"
    );
}

fn expect_err(r: Result<impl std::fmt::Debug, ModelError>, needle: &str) -> ModelError {
    let e = r.expect_err("expected an error");
    assert!(
        e.to_string().contains(needle),
        "'{e}' should mention '{needle}'"
    );
    e
}

#[test]
fn malformed_checkpoints_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path(), DType::F32, 1);
    let cfg = lookup("tiny").unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    expect_err(ck.read_layer(2, &cfg.linears()), "out of range");

    // Missing config.json.
    let empty = tempfile::tempdir().unwrap();
    expect_err(Checkpoint::open(empty.path()).map(|_| ()), "config.json");

    // A tensor missing, and a tensor of the wrong shape: rewrite the file without / with them.
    let layers = tiny_checkpoint(dir.path(), DType::F32, 1);
    let mut small = cfg.clone();
    small.num_layers = 2;
    let mut missing = layers.clone();
    missing[0].linears.remove(3);
    write_checkpoint(dir.path(), &small, &missing, DType::F32, 1).unwrap();
    let e = expect_err(
        Checkpoint::open(dir.path())
            .unwrap()
            .read_layer(0, &cfg.linears()),
        "model.layers.0.self_attn.o_proj.weight",
    );
    assert!(matches!(e, ModelError::MissingTensor { .. }));
    let mut wrong = layers.clone();
    let (_, m) = &mut wrong[0].linears[0];
    m.rows -= 1;
    m.data.truncate(m.rows * m.cols);
    write_checkpoint(dir.path(), &small, &wrong, DType::F32, 1).unwrap();
    let e = expect_err(
        Checkpoint::open(dir.path())
            .unwrap()
            .read_layer(0, &cfg.linears()),
        "q_proj",
    );
    assert!(matches!(e, ModelError::WrongShape { .. }), "{e}");

    // NaN in a weight: named with its position.
    let mut nan = layers.clone();
    nan[1].linears[6].1.data[5 * 688 + 7] = f32::NAN;
    write_checkpoint(dir.path(), &small, &nan, DType::F32, 1).unwrap();
    let e = expect_err(
        Checkpoint::open(dir.path())
            .unwrap()
            .read_layer(1, &cfg.linears()),
        "down_proj",
    );
    assert!(
        matches!(e, ModelError::NonFinite { row: 5, col: 7, .. }),
        "{e}"
    );

    // Truncated file.
    write_checkpoint(dir.path(), &small, &layers, DType::F32, 1).unwrap();
    let f = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(len / 2).unwrap();
    expect_err(Checkpoint::open(dir.path()).map(|_| ()), "truncated");
}

#[test]
fn an_index_pointing_to_a_missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path(), DType::BF16, 2);
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    expect_err(
        Checkpoint::open(dir.path()).map(|_| ()),
        "model-00002-of-00002.safetensors",
    );
}

#[test]
fn write_layer_into_a_missing_folder_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let layer = synthetic_layer(&cfg, 0, &cfg.linears(), 1);
    let target = dir.path().join("nope").join("out.safetensors");
    let r = write_layer(&target, &layer, &layer.linears);
    assert!(r.is_err());
    assert!(!target.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn calibration_files_round_trip_and_check_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let src = SyntheticCalibration::new(&cfg, 0, 3, 10, 2);
    let path = dir.path().join("calib.safetensors");
    let linears = cfg.linears();
    write_calibration(&path, &src, &cfg, &linears[..3], true).unwrap();
    let f = CalibrationFile::open(&path, &cfg).unwrap();
    assert_eq!((f.samples(), f.tokens()), (3, 10));
    assert!(f.has_output_grads());
    assert_eq!(
        f.input(InputGroup::AttnIn, 2).unwrap(),
        src.input(InputGroup::AttnIn, 2).unwrap()
    );
    assert_eq!(
        f.output_grad(&linears[1], 1).unwrap(),
        src.output_grad(&linears[1], 1).unwrap()
    );
    expect_err(f.input(InputGroup::MlpIn, 0), "x.mlp_in");
    expect_err(f.input(InputGroup::AttnIn, 3), "sample 3");
    assert!(f.ready_hessian(InputGroup::AttnIn).unwrap().is_none());

    // The same file read against a model of another width is a shape error.
    let other = lookup("llama-7b").unwrap();
    let e = expect_err(CalibrationFile::open(&path, &other).map(|_| ()), "expected");
    assert!(matches!(e, ModelError::WrongShape { .. }), "{e}");

    // A safetensors file without the format marker is refused.
    let ckdir = tempfile::tempdir().unwrap();
    tiny_checkpoint(ckdir.path(), DType::F32, 1);
    expect_err(
        CalibrationFile::open(&ckdir.path().join("model.safetensors"), &cfg).map(|_| ()),
        "not a prunebench calibration file",
    );
}
