//! Calibration files: written from a source and read back sample by sample, in f32 and half
//! precision, ready statistics, and every inconsistency reported with the tensor at fault.

use prunebench_models::ReadyStats;
use std::collections::HashMap;
use std::path::Path;

use prunebench_kernels::Matrix;
use prunebench_models::calibration::{
    write_calibration, write_calibration_as, write_statistics, CalibrationFile, ReadyStatistics,
};
use prunebench_models::config::lookup;
use prunebench_models::synthetic::SyntheticCalibration;
use prunebench_models::{CalibrationSource, DType, InputGroup, ModelError};

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

/// Writes raw f32 tensors with the calibration marker, to build malformed files.
fn write_raw(path: &Path, tensors: &[(&str, Vec<usize>)], nan_at: Option<usize>) {
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, shape)| {
            let n: usize = shape.iter().product();
            let mut v: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
            if let Some(i) = nan_at {
                v[i] = f32::NAN;
            }
            DType::F32.encode(&v)
        })
        .collect();
    let views: Vec<_> = tensors
        .iter()
        .zip(&data)
        .map(|((name, shape), d)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), d)
                .unwrap();
            (name.to_string(), v)
        })
        .collect();
    let meta = HashMap::from([("prunebench.calibration".to_string(), "1".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

#[test]
fn calibration_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let src = SyntheticCalibration::new(&cfg, 0, 3, 10, 2);
    let path = dir.path().join("calib.safetensors");
    let linears = cfg.linears();
    // q, k, v (one input group) and down_proj (another).
    let chosen = [
        linears[0].clone(),
        linears[1].clone(),
        linears[2].clone(),
        linears[6].clone(),
    ];
    write_calibration(&path, &src, &cfg, &chosen, true).unwrap();
    let f = CalibrationFile::open(&path, &cfg).unwrap();
    assert_eq!((f.samples(), f.tokens()), (3, 10));
    assert!(f.has_output_grads());
    assert!(f.describe().contains("calib.safetensors") && f.describe().contains("3 samples"));
    for s in 0..3 {
        for g in [InputGroup::AttnIn, InputGroup::MlpAct] {
            assert_eq!(f.input(g, s).unwrap(), src.input(g, s).unwrap());
        }
        for l in &chosen {
            assert_eq!(f.output_grad(l, s).unwrap(), src.output_grad(l, s).unwrap());
        }
    }
    // What was not written is named when asked for.
    let e = expect_err(
        f.input(InputGroup::MlpIn, 0),
        &["x.mlp_in", "calib.safetensors"],
    );
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{e}");
    expect_err(f.output_grad(&linears[3], 0), &["dy.o_proj"]);
    expect_err(f.input(InputGroup::AttnIn, 3), &["sample 3", "3"]);
    assert!(f.ready_hessian(InputGroup::AttnIn).unwrap().is_none());
    assert!(f.ready_act_stat(InputGroup::AttnIn).unwrap().is_none());
    assert!(f.ready_grad(&linears[0]).unwrap().is_none());

    // Without gradients.
    write_calibration(&path, &src, &cfg, &chosen[..1], false).unwrap();
    let f = CalibrationFile::open(&path, &cfg).unwrap();
    assert!(!f.has_output_grads());
    expect_err(f.output_grad(&linears[0], 0), &["dy.q_proj"]);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary files"
    );
}

#[test]
fn half_precision_calibration_round_trips_after_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let src = SyntheticCalibration::new(&cfg, 1, 2, 6, 3);
    let gate = cfg.linear("gate_proj").unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let path = dir.path().join("calib.safetensors");
        write_calibration_as(&path, &src, &cfg, std::slice::from_ref(&gate), true, dtype).unwrap();
        let f = CalibrationFile::open(&path, &cfg).unwrap();
        let x = f.input(InputGroup::MlpIn, 1).unwrap();
        let want = src.input(InputGroup::MlpIn, 1).unwrap();
        let rounded = dtype.decode(&dtype.encode(&want.data));
        assert_eq!(x.data, rounded, "{dtype:?}");
        assert_ne!(x.data, want.data, "{dtype:?} must round");
        let dy = f.output_grad(&gate, 0).unwrap();
        let want = src.output_grad(&gate, 0).unwrap();
        assert_eq!(
            dy.data,
            dtype.decode(&dtype.encode(&want.data)),
            "{dtype:?}"
        );
    }
}

#[test]
fn a_file_for_another_model_is_a_shape_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let src = SyntheticCalibration::new(&cfg, 0, 2, 4, 2);
    let path = dir.path().join("calib.safetensors");
    write_calibration(&path, &src, &cfg, &cfg.linears()[..1], false).unwrap();
    let other = lookup("llama-7b").unwrap();
    let e = expect_err(
        CalibrationFile::open(&path, &other),
        &[
            "x.attn_in",
            "calib.safetensors",
            "[2, 4, 256]",
            "[2, 4, 4096]",
        ],
    );
    assert!(matches!(e, ModelError::WrongShape { .. }), "{e}");
}

#[test]
fn inconsistent_or_unknown_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let path = dir.path().join("bad.safetensors");
    // (tensors in the file, what the error must mention)
    type Case<'a> = (Vec<(&'a str, Vec<usize>)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("x.attn_in", vec![3, 10, 256]),
                ("x.mlp_in", vec![2, 10, 256]),
            ],
            vec![
                "x.mlp_in",
                "2 samples x 10 tokens",
                "x.attn_in",
                "3 samples x 10 tokens",
            ],
        ),
        (
            vec![
                ("x.attn_in", vec![3, 10, 256]),
                ("dy.q_proj", vec![3, 9, 256]),
            ],
            vec!["dy.q_proj", "3 samples x 9 tokens", "3 samples x 10 tokens"],
        ),
        (
            vec![("dy.k_proj", vec![3, 10, 256])],
            vec!["dy.k_proj", "[3, 10, 128]", "[3, 10, 256]"],
        ),
        (
            vec![("x.attn_in", vec![10, 256])],
            vec!["x.attn_in", "[samples, tokens, 256]"],
        ),
        (
            vec![("x.attention", vec![1, 1, 256])],
            vec!["x.attention", "unknown input group"],
        ),
        (
            vec![("dy.lm_head", vec![1, 1, 256])],
            vec!["dy.lm_head", "unknown linear", "q_proj"],
        ),
        (
            vec![("weights", vec![2])],
            vec!["unexpected tensor weights"],
        ),
        (
            vec![("stat.act.mlp_act", vec![256])],
            vec!["stat.act.mlp_act", "[688]", "[256]"],
        ),
        (
            vec![("stat.hessian.attn_in", vec![256])],
            vec!["stat.hessian.attn_in", "[256, 256]"],
        ),
        (
            vec![("stat.grad.up_proj", vec![256, 688])],
            vec!["stat.grad.up_proj", "[688, 256]"],
        ),
        (
            vec![("stat.mean.attn_in", vec![256])],
            vec!["stat.mean.attn_in", "unknown statistic"],
        ),
    ];
    for (tensors, needles) in cases {
        write_raw(&path, &tensors, None);
        let mut all = needles.clone();
        all.push("bad.safetensors");
        expect_err(CalibrationFile::open(&path, &cfg), &all);
    }
}

#[test]
fn format_marker_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let path = dir.path().join("plain.safetensors");
    let data = DType::F32.encode(&[1.0; 256]);
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 1, 256], &data)
            .unwrap();
    safetensors::serialize_to_file([("x.attn_in", view.clone())], None, &path).unwrap();
    let e = expect_err(
        CalibrationFile::open(&path, &cfg),
        &["plain.safetensors", "not a prunebench calibration file"],
    );
    assert!(matches!(e, ModelError::BadConfig { .. }), "{e}");
    let meta = HashMap::from([("prunebench.calibration".to_string(), "2".to_string())]);
    safetensors::serialize_to_file([("x.attn_in", view)], Some(meta), &path).unwrap();
    expect_err(CalibrationFile::open(&path, &cfg), &["version 2"]);
    let e = expect_err(
        CalibrationFile::open(&dir.path().join("none.safetensors"), &cfg),
        &["none.safetensors"],
    );
    assert!(matches!(e, ModelError::Io { .. }), "{e}");
}

#[test]
fn a_nan_in_an_input_is_located_by_sample_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let path = dir.path().join("nan.safetensors");
    // Sample 1, token 2, column 5 of a 3 x 4 x 256 tensor.
    write_raw(
        &path,
        &[("x.attn_out", vec![3, 4, 256])],
        Some((4 + 2) * 256 + 5),
    );
    let f = CalibrationFile::open(&path, &cfg).unwrap();
    assert!(f.input(InputGroup::AttnOut, 0).is_ok());
    let e = expect_err(
        f.input(InputGroup::AttnOut, 1),
        &[
            "x.attn_out",
            "nan.safetensors",
            "sample 1",
            "token 2",
            "column 5",
        ],
    );
    assert!(
        matches!(
            e,
            ModelError::NonFiniteInput {
                sample: 1,
                token: 2,
                col: 5,
                ..
            }
        ),
        "{e}"
    );
}

/// A positive definite matrix with unit diagonal, as a (normalised) Hessian is:
/// 1 / (1 + |i - j|), a Toeplitz matrix of a convex decreasing sequence.
fn hessian_like(n: usize) -> Matrix {
    Matrix::from_fn(n, n, |i, j| 1.0 / (1.0 + i.abs_diff(j) as f32))
}

#[test]
fn ready_statistics_are_checked_for_values_no_accumulation_gives() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let path = dir.path().join("stats.safetensors");
    let g = InputGroup::AttnOut;
    let with_h = |h: Matrix| {
        let stats = ReadyStatistics {
            hessian: vec![(g, h)],
            ..Default::default()
        };
        write_statistics(&path, &cfg, &stats).unwrap();
        CalibrationFile::open(&path, &cfg).unwrap().ready_hessian(g)
    };
    // Off by 0.5% of the entries' scale (the unit diagonal), as the two triangles of a
    // bf16-stored X^T X may be: accepted.
    let mut near = hessian_like(256);
    near.data[3 * 256 + 200] += 0.005;
    assert!(with_h(near).is_ok());
    // Off by 5%: not a Hessian.
    let mut far = hessian_like(256);
    far.data[3 * 256 + 200] += 0.05;
    let e = expect_err(
        with_h(far),
        &[
            "stat.hessian.attn_out",
            "stats.safetensors",
            "not symmetric",
            "row 3, column 200",
        ],
    );
    assert!(matches!(e, ModelError::InvalidStatistic { .. }), "{e}");
    // A tiny off-diagonal entry (a dot product that cancelled) is judged against its
    // columns' scale, not its own: twice its transpose, yet accepted.
    let mut cancelled = hessian_like(256);
    cancelled.data[256 + 2] = 1e-3;
    cancelled.data[2 * 256 + 1] = 2e-3;
    assert!(with_h(cancelled).is_ok());
    let mut neg = hessian_like(256);
    neg.data[7 * 256 + 7] = -0.25;
    expect_err(with_h(neg), &["diagonal value -0.25 at row 7, column 7"]);

    // Each statistic is also refused with NaN or Inf, located.
    write_raw(&path, &[("stat.act.mlp_act", vec![688])], Some(40));
    let f = CalibrationFile::open(&path, &cfg).unwrap();
    expect_err(
        f.ready_act_stat(InputGroup::MlpAct),
        &["stat.act.mlp_act", "non-finite", "column 40"],
    );
    // Zero is a valid a (a dead input column), a negative one is not.
    let stats = ReadyStatistics {
        act: vec![(
            g,
            Matrix::from_fn(1, 256, |_, j| if j == 9 { -1e-6 } else { 0.0 }),
        )],
        ..Default::default()
    };
    write_statistics(&path, &cfg, &stats).unwrap();
    let f = CalibrationFile::open(&path, &cfg).unwrap();
    expect_err(
        f.ready_act_stat(g),
        &[
            "stat.act.attn_out",
            "activation statistic",
            "column 9 is negative",
        ],
    );
}

#[test]
fn ready_statistics_round_trip_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let path = dir.path().join("stats.safetensors");
    let up = cfg.linear("up_proj").unwrap();
    let fill = |r, c, k: f32| Matrix::from_fn(r, c, |i, j| k + (i * c + j) as f32);
    let stats = ReadyStatistics {
        act: vec![(InputGroup::MlpAct, fill(1, 688, 1.0))],
        hessian: vec![(InputGroup::AttnIn, hessian_like(256))],
        grad: vec![(up.clone(), fill(688, 256, 3.0))],
    };
    write_statistics(&path, &cfg, &stats).unwrap();
    let f = CalibrationFile::open(&path, &cfg).unwrap();
    assert_eq!((f.samples(), f.tokens()), (0, 0));
    assert_eq!(
        f.ready_act_stat(InputGroup::MlpAct).unwrap(),
        Some(stats.act[0].1.clone())
    );
    assert_eq!(
        f.ready_hessian(InputGroup::AttnIn).unwrap(),
        Some(stats.hessian[0].1.clone())
    );
    assert_eq!(f.ready_grad(&up).unwrap(), Some(stats.grad[0].1.clone()));
    assert_eq!(f.ready_act_stat(InputGroup::AttnIn).unwrap(), None);
    expect_err(f.input(InputGroup::AttnIn, 0), &["sample 0", "0 samples"]);
    // A linear of another model's shape is the caller's mistake, and said so.
    let big_up = lookup("llama-7b").unwrap().linear("up_proj").unwrap();
    expect_err(f.ready_grad(&big_up), &["up_proj", "11008x4096", "688x256"]);

    // A statistic of the wrong shape is refused before anything is written.
    std::fs::remove_file(&path).unwrap();
    let wrong = ReadyStatistics {
        hessian: vec![(InputGroup::MlpAct, fill(256, 256, 0.0))],
        ..Default::default()
    };
    let e = expect_err(
        write_statistics(&path, &cfg, &wrong),
        &["stat.hessian.mlp_act", "[688, 688]", "[256, 256]"],
    );
    assert!(matches!(e, ModelError::WrongShape { .. }), "{e}");
    assert!(!path.exists());
}

#[test]
fn writing_for_the_wrong_model_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lookup("tiny").unwrap();
    let big = lookup("llama-7b").unwrap();
    let src = SyntheticCalibration::new(&cfg, 0, 1, 2, 0);
    let path = dir.path().join("calib.safetensors");
    // Linears of another model: refused up front.
    let e = expect_err(
        write_calibration(&path, &src, &cfg, &big.linears()[..1], false),
        &["q_proj", "4096x4096", "256x256"],
    );
    assert!(matches!(e, ModelError::Write { .. }), "{e}");
    // A source whose samples do not fit the model: found while streaming, file removed.
    let e = expect_err(
        write_calibration(&path, &src, &big, &big.linears()[..1], false),
        &["x.attn_in", "2x256", "expected 2x4096"],
    );
    assert!(matches!(e, ModelError::Write { .. }), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
