//! The wgpu backend's own guarantees beyond conformance: tensors split across several storage
//! bindings give the same results, every output entry is written (outputs start as NaN),
//! limits and numerical failures come back as errors, and timing uses GPU timestamps.

#![cfg(feature = "wgpu")]

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::formats;
use prunebench_kernels::ops::{AdamStep, LoraForm, LoraInputs};
use prunebench_kernels::rng::heavy_tailed;
use prunebench_kernels::suite::{
    small_cases, small_refit_cases, small_sparse_cases, verify_case, CaseFormat, MaskSource, Op,
    OpCase, Outcome,
};
use prunebench_kernels::wgpu::{list_adapters, WgpuBackend};
use prunebench_kernels::{Backend, KernelError, Mask, Matrix, TimeSource, WeightFormat};

fn backend() -> WgpuBackend {
    WgpuBackend::new(None)
        .expect("no Vulkan adapter found: install mesa-vulkan-drivers (lavapipe) or a GPU driver")
}

/// Runs the small cases whose op name starts with one of `prefixes`; fails listing those
/// that did not pass.
fn run(b: &WgpuBackend, prefixes: &[&str]) -> usize {
    let reference = CpuBackend::new();
    let mut ran = 0;
    let mut failures = Vec::new();
    for case in small_cases()
        .into_iter()
        .filter(|c| prefixes.iter().any(|p| c.op_name().starts_with(p)))
    {
        let r = verify_case(b, &reference, &case);
        ran += 1;
        if r.outcome != Outcome::Pass {
            failures.push(format!("{}: {:?} {:?}", r.case, r.outcome, r.checks));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    ran
}

const ALL: &[&str] = &[""];
/// All but the factor, whose 64-row Cholesky blocks of a 200-column H need 51 KB (and so the
/// damped solve built on it), the LoRA ops, whose A (rank x cols) is bound whole, and §11's
/// saliency and update, whose |S| rows of Hinv are bound whole (their own tests split W and
/// Hinv at a cap those rows fit).
const ROW_SPLIT: &[&str] = &[
    "ACT_STAT",
    "HESSIAN",
    "GRAD_",
    "SCORE_",
    "MASK",
    "APPLY_MASK",
    "PRUNE_",
    "OBS_UNSTRUCTURED",
    "OBS_NM",
    "OBS_GIVEN",
    "RECON_",
    "COMPRESS",
    "MATMUL",
    "REFIT_BASE",
    "ADAMW",
    "ROW_SCALE",
    "NORM_SYSTEM",
];

const SPARSE: &[&str] = &["COMPRESS", "MATMUL"];

const REFIT: &[&str] = &[
    "REFIT_BASE",
    "LORA_",
    "ADAMW",
    "ROW_SCALE",
    "NORM_SYSTEM",
    "SPD_SOLVE",
];

#[test]
fn tensors_split_across_bindings_match_the_reference() {
    // 128 KiB: H, U (200 x 200 is 160 KB) and the OBS weights' factor come in several
    // windows; the factor's outer blocks shrink to one 64-column block.
    let b = backend().with_binding_limit(128 << 10);
    assert!(run(&b, ALL) > 0);
    assert!(
        b.split_ops() > 0,
        "no op split a tensor at a 128 KiB binding limit"
    );
    // 8 KiB: weights of 13 x 300 in slabs of 6 rows, the fused gradient's tokens in windows,
    // H in slabs of 15 rows, OBS sub-blocks of 9 columns (N:M: 8), products' tokens in
    // windows of 6.
    let b = backend().with_binding_limit(8 << 10);
    assert_eq!(b.max_binding(), 8 << 10);
    assert!(run(&b, ROW_SPLIT) > 0);
    assert!(
        b.split_ops() > 0,
        "no op split a tensor at an 8 KiB binding limit"
    );
}

#[test]
fn every_output_entry_is_written() {
    let b = backend().with_poisoned_outputs(true);
    run(&b, ALL);
}

#[test]
fn too_large_a_tensor_is_out_of_memory_before_any_work() {
    let b = backend();
    // On Vulkan the device-local memory is known, so a whole layer is checked against it
    // before it starts; a single allocation past the driver's budget is refused regardless.
    if b.info().api == "Vulkan" {
        let memory = b.memory_budget().expect("Vulkan reports its memory heaps");
        assert!(memory >= 1 << 20, "{memory} bytes of device-local memory");
        assert!(b
            .info()
            .limits
            .iter()
            .any(|(k, v)| k == "memory_bytes" && *v == memory));
    }
    match b.zeros(1 << 20, 1 << 20) {
        Err(KernelError::OutOfMemory {
            needed, available, ..
        }) => assert!(needed > available),
        other => panic!("expected OutOfMemory, got {:?}", other.map(|_| ())),
    }
    // Still usable afterwards.
    let t = b
        .upload(&Matrix::from_fn(3, 5, |r, c| (r * 5 + c) as f32))
        .unwrap();
    assert_eq!(b.download(&t).unwrap().get(2, 4), 14.0);
}

#[test]
fn indefinite_or_non_finite_hessians_are_errors() {
    let b = backend();
    // Eigenvalues 3 and -1: the damped matrix stays indefinite.
    let h = b
        .upload(&Matrix::new(2, 2, vec![1.0, 2.0, 2.0, 1.0]).unwrap())
        .unwrap();
    match b.hinv_factor(&h, 0.01) {
        Err(KernelError::NotPositiveDefinite { column }) => assert!(column < 2),
        other => panic!(
            "expected NotPositiveDefinite, got {:?}",
            other.map(|f| f.dead)
        ),
    }
    let mut m = Matrix::from_fn(70, 70, |r, c| if r == c { 2.0 } else { 0.0 });
    m.data[3 * 70 + 65] = f32::NAN;
    let h = b.upload(&m).unwrap();
    match b.hinv_factor(&h, 0.01) {
        Err(KernelError::NonFinite { row, col, .. }) => assert_eq!((row, col), (3, 65)),
        other => panic!("expected NonFinite, got {:?}", other.map(|f| f.dead)),
    }
    assert!(matches!(
        b.hinv_factor(&h, -1.0),
        Err(KernelError::InvalidArgument(_))
    ));
}

#[test]
fn shape_errors_are_errors() {
    let b = backend();
    let w = b.zeros(4, 8).unwrap();
    let g = b.zeros(4, 9).unwrap();
    let mut acc = b.zeros(4, 8).unwrap();
    assert!(matches!(
        b.grad_accumulate(&mut acc, &g, prunebench_kernels::GradNorm::L2),
        Err(KernelError::Shape(_))
    ));
    let bad = prunebench_kernels::MaskPattern::NM { n: 2, m: 3 };
    assert!(b.select_mask(&w, bad).is_err());
}

/// The LoRA ops at an 8 KiB binding limit, on shapes whose A (rank x cols, bound whole) fits
/// one binding: W-shaped tensors in slabs of about 10 rows, H in windows of rows (the K
/// range of D·H), so the gradient's epilogue runs on the last window only.
#[test]
fn lora_ops_split_across_bindings_match_the_reference() {
    let b = backend()
        .with_binding_limit(8 << 10)
        .with_poisoned_outputs(true);
    let reference = CpuBackend::new();
    for form in [LoraForm::Mask, LoraForm::Scale] {
        for (rank, rows, cols) in [(4, 40, 200), (17, 37, 100)] {
            for case in [
                OpCase::new(Op::LoraGrad(form, rank), rows, cols).tokens(300, 1),
                OpCase::new(Op::LoraMerge(form, rank), rows, cols),
            ] {
                let r = verify_case(&b, &reference, &case);
                assert_eq!(r.outcome, Outcome::Pass, "{}: {:?}", r.case, r.checks);
            }
        }
    }
    assert!(b.split_ops() > 0);
}

/// Every re-fit op given one wrong shape, as the error message it returns.
fn refit_shape_errors<B: Backend>(b: &B) -> Vec<String> {
    let t = |r: usize, c: usize| {
        b.upload(&Matrix::from_fn(r, c, |i, j| (i + 2 * j) as f32 / 10.0))
            .unwrap()
    };
    let mask = b.upload_mask(&Mask::empty(4, 8)).unwrap();
    let (w, h, lb, la) = (t(4, 8), t(8, 8), t(4, 2), t(2, 8));
    macro_rules! lora {
        ($a:expr) => {
            LoraInputs {
                form: LoraForm::Mask,
                wp: &w,
                mask: &mask,
                delta: &w,
                delta_h: &w,
                h: &h,
                b: &lb,
                a: $a,
                s: 2.0,
                norm: 1.0,
            }
        };
    }
    let (mut p, mut m, mut v) = (t(4, 8), t(4, 8), t(4, 8));
    let results = [
        b.refit_base(Some(&t(4, 7)), &w, &h).map(drop),
        b.refit_base(None, &w, &t(7, 8)).map(drop),
        b.lora_grad(lora!(&t(3, 8))).map(drop),
        b.lora_grad(lora!(&t(2, 7))).map(drop),
        b.adamw_step(&mut p, &t(4, 7), &mut m, &mut v, AdamStep::new(1e-3, 1)),
        b.lora_merge(&w, &mask, &t(3, 2), &la, LoraForm::Scale, 1.0)
            .map(drop),
        b.row_scale(&mut p, &t(4, 7), &h).map(drop),
        b.norm_system(&[(&w, &t(4, 7))], &h).map(drop),
        b.norm_system(&[(&w, &w)], &t(8, 7)).map(drop),
        b.spd_solve(&h, &t(1, 7), 0.01).map(drop),
    ];
    results
        .into_iter()
        .map(|r| match r {
            Err(e @ KernelError::Shape(_)) => e.to_string(),
            other => panic!("expected a shape error, got {:?}", other),
        })
        .collect()
}

#[test]
fn refit_shape_errors_are_the_references() {
    let got = refit_shape_errors(&backend());
    assert_eq!(got, refit_shape_errors(&CpuBackend::new()));
}

/// The damped solve as the reference solves it where the Hessian factor would not: a zero
/// column stays zero (damped by λ, not replaced by 1 as a dead column), and a zero system
/// gives zeros.
#[test]
fn damped_solve_keeps_zero_columns_and_solves_a_zero_system_to_zeros() {
    let b = backend();
    let cpu = CpuBackend::new();
    let n = 70;
    let zero = |i: usize| i == 5 || i == 66;
    let m = Matrix::from_fn(n, n, |i, j| {
        if zero(i) || zero(j) {
            0.0
        } else if i == j {
            2.0 + (i % 7) as f32
        } else {
            0.1 / (1.0 + (i as f32 - j as f32).abs()).powi(2)
        }
    });
    let rhs = Matrix::from_fn(1, n, |_, j| (j as f32 - 30.0) / 10.0);
    let solve = |m: &Matrix| {
        let got = b
            .download(
                &b.spd_solve(&b.upload(m).unwrap(), &b.upload(&rhs).unwrap(), 0.01)
                    .unwrap(),
            )
            .unwrap();
        let want = cpu
            .download(
                &cpu.spd_solve(&cpu.upload(m).unwrap(), &cpu.upload(&rhs).unwrap(), 0.01)
                    .unwrap(),
            )
            .unwrap();
        (got, want)
    };
    let (got, want) = solve(&m);
    for j in 0..n {
        let (g, w) = (got.get(0, j) as f64, want.get(0, j) as f64);
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1e-3),
            "x[{j}]: {g} vs {w}"
        );
    }
    // λ = 1% of the mean diagonal: a zero column solves to rhs_j / λ.
    let lambda = 0.01 * (0..n).map(|i| m.get(i, i) as f64).sum::<f64>() / n as f64;
    assert!((got.get(0, 5) as f64 - rhs.get(0, 5) as f64 / lambda).abs() < 1e-3);
    let (got, want) = solve(&Matrix::from_fn(n, n, |_, _| 0.0));
    assert!(got.data.iter().all(|&x| x == 0.0) && got == want);
}

#[test]
fn timing_uses_gpu_timestamps_where_the_adapter_has_them() {
    let b = backend();
    let x = b
        .upload(&Matrix::from_fn(256, 128, |r, c| {
            ((r * 7 + c) % 13) as f32 - 6.0
        }))
        .unwrap();
    let mut h = b.zeros(128, 128).unwrap();
    let (secs, source) = b.timed(&mut || b.hessian_update(&mut h, 0, &x, 1)).unwrap();
    assert!(secs > 0.0 && secs < 60.0, "{secs} s");
    let want = if b.has_timestamps() {
        TimeSource::DeviceTimestamps
    } else {
        TimeSource::WallClock
    };
    assert_eq!(source, want);
}

#[test]
fn adapters_are_listed_and_chosen_by_name() {
    let all = list_adapters();
    assert!(
        all.iter().any(|a| a.api != "Gl"),
        "no compute adapter listed: {all:?}"
    );
    for a in &all {
        assert!(a
            .limits
            .iter()
            .any(|(k, v)| k == "max_storage_buffer_binding_size" && *v > 0));
    }
    let b = backend();
    assert_eq!(b.info().backend, "wgpu");
    assert_ne!(b.info().api, "Gl");
    let name = b.info().device.clone();
    let again = WgpuBackend::new(Some(&name[..name.len().min(6)].to_uppercase())).unwrap();
    assert_eq!(again.info().device, name);
    match WgpuBackend::new(Some("no such adapter")) {
        Err(KernelError::Device(msg)) => assert!(msg.contains("adapters seen"), "{msg}"),
        other => panic!(
            "expected an error, got {:?}",
            other.map(|b| b.info().clone())
        ),
    }
}

#[test]
fn every_refit_case_runs_and_matches_the_reference() {
    let b = backend();
    assert_eq!(run(&b, REFIT), small_refit_cases().len());
}

#[test]
fn every_sparse_case_runs_and_matches_the_reference() {
    let b = backend();
    assert_eq!(run(&b, SPARSE), small_sparse_cases().len());
}

/// Weights of 40 x 300 at an 8 KiB binding limit: W (f32) in slabs of 6 rows, packed
/// weights in slabs of 13 (dense, bitmap) or 25 rows (2:4), bitmap values in windows that
/// start mid-word.
#[test]
fn compressed_weights_split_across_bindings_match_the_reference() {
    let b = backend().with_binding_limit(8 << 10);
    let reference = CpuBackend::new();
    let holes = MaskSource::Holes(0.6);
    let two_four = MaskSource::Wanda(prunebench_kernels::Sparsity::NM { n: 2, m: 4 });
    let mut cases = Vec::new();
    for (f, cf, m) in [
        (WeightFormat::Dense, CaseFormat::Dense, holes),
        (WeightFormat::TwoFour, CaseFormat::TwoFour, two_four),
        (WeightFormat::Bitmap, CaseFormat::Bitmap, holes),
    ] {
        cases.push(OpCase::new(Op::Compress(f, m), 40, 300));
        for n in [3, 17] {
            let op = Op::Matmul {
                format: cf,
                mask: m,
                n,
            };
            cases.push(OpCase::new(op, 40, 300));
        }
    }
    for case in cases {
        let r = verify_case(&b, &reference, &case);
        assert_eq!(r.outcome, Outcome::Pass, "{}: {:?}", r.case, r.checks);
    }
    assert!(b.split_ops() > 0);
}

const FORMATS: [WeightFormat; 3] = [
    WeightFormat::Dense,
    WeightFormat::TwoFour,
    WeightFormat::Bitmap,
];

/// A mask keeping columns 4g + (r mod 3) and 4g + 3 of every group: 2:4 everywhere.
fn two_four_mask(rows: usize, cols: usize) -> Mask {
    let mut m = Mask::empty(rows, cols);
    for r in 0..rows {
        for c in 0..cols {
            m.set(r, c, c % 4 != r % 3 && c % 4 != 3);
        }
    }
    m
}

/// Compresses on both backends; both must fail with the same error, which is returned.
fn same_error(w: &Matrix, mask: &Mask, format: WeightFormat) -> KernelError {
    let (cpu, gpu) = (CpuBackend::new(), backend());
    let want = cpu
        .compress(&cpu.upload(w).unwrap(), mask, format)
        .expect_err("the reference refuses");
    let got = match gpu.compress(
        &gpu.upload(w).unwrap(),
        &gpu.upload_mask(mask).unwrap(),
        format,
    ) {
        Err(e) => e,
        Ok(_) => panic!(
            "{}: compressed what the reference refuses ({want})",
            format.name()
        ),
    };
    assert_eq!(got.to_string(), want.to_string(), "{}", format.name());
    assert_eq!(
        std::mem::discriminant(&got),
        std::mem::discriminant(&want),
        "{}",
        format.name()
    );
    got
}

#[test]
fn bad_input_to_compression_gives_the_references_errors() {
    let w = formats::round_to_f16(&heavy_tailed(6, 16, 1));
    // Not 2:4: row 3 keeps 3 of group 2, row 4 all of group 0; the first is reported.
    let mut mask = two_four_mask(6, 16);
    mask.set(3, 8 + 1, false);
    mask.set(3, 8 + 2, false);
    for c in 0..4 {
        mask.set(4, c, false);
    }
    let e = same_error(&w, &mask, WeightFormat::TwoFour);
    assert!(e.to_string().contains("not 2:4: row 3, group 2"), "{e}");

    let w10 = formats::round_to_f16(&heavy_tailed(3, 10, 2));
    let e = same_error(&w10, &Mask::empty(3, 10), WeightFormat::TwoFour);
    assert!(matches!(e, KernelError::InvalidArgument(_)), "{e}");

    for f in FORMATS {
        let e = same_error(&w, &Mask::empty(6, 20), f);
        assert!(matches!(e, KernelError::Shape(_)), "{e}");
    }

    // Kept values f16 cannot hold: the first in row order is named, a pruned one is ignored,
    // and it comes before a 2:4 error earlier in the matrix.
    let mut bad = w.clone();
    let mut mask = two_four_mask(6, 16);
    bad.data[16 + 4 * 2] = 1e6; // row 1: pruned
    bad.data[2 * 16 + 6] = 1e6; // row 2, column 6: kept
    bad.data[4 * 16 + 3] = f32::NAN; // kept, later
    bad.data[5 * 16 + 7] = f32::INFINITY; // kept, later
    assert!(mask.get(1, 8) && !mask.get(2, 6) && !mask.get(4, 3) && !mask.get(5, 7));
    for f in FORMATS {
        let e = same_error(&bad, &mask, f);
        assert!(e.to_string().contains("row 2, column 6"), "{e}");
    }
    mask.set(0, 0, false);
    mask.set(0, 1, false);
    assert!(!mask.get(0, 3));
    let e = same_error(&bad, &mask, WeightFormat::TwoFour);
    assert!(e.to_string().contains("row 2, column 6"), "{e}");
    // NaN alone.
    let mut nan = w.clone();
    nan.data[4 * 16 + 3] = f32::NAN;
    let e = same_error(&nan, &Mask::empty(6, 16), WeightFormat::Bitmap);
    assert!(e.to_string().contains("row 4, column 3"), "{e}");
}

/// Values that are not f16 round to the nearest (ties to even) as on the reference, the
/// largest finite ones and subnormals included.
#[test]
fn compression_rounds_as_the_reference() {
    let edge = [
        65519.0,
        -65519.0,
        65504.0,
        1.0 + 1.0 / 2048.0,              // a tie: to even (1.0)
        1.0 + 3.0 / 2048.0,              // a tie: to even (1 + 2/1024)
        2f32.powi(-25),                  // a tie with zero: 0
        3.0 * 2f32.powi(-26),            // just above: the smallest subnormal
        2f32.powi(-14) - 2f32.powi(-26), // rounds up to the smallest normal
        1e-30,
        -0.0,
        0.0,
        1e-40,
    ];
    let rows = 7;
    let cols = 36;
    let mut w = heavy_tailed(rows, cols, 5);
    for (i, v) in w.data.iter_mut().enumerate() {
        *v *= 10f32.powi((i % 10) as i32 - 8);
    }
    w.data[..edge.len()].copy_from_slice(&edge);
    let mask = two_four_mask(rows, cols);
    let cpu = CpuBackend::new();
    let b = backend();
    let wt = b.upload(&w).unwrap();
    for (f, mask) in [
        (WeightFormat::Dense, Mask::empty(rows, cols)),
        (WeightFormat::TwoFour, mask.clone()),
        (WeightFormat::Bitmap, Mask::empty(rows, cols)),
        (WeightFormat::Bitmap, mask),
    ] {
        let want = cpu.compress(&cpu.upload(&w).unwrap(), &mask, f).unwrap();
        let p = b.compress(&wt, &b.upload_mask(&mask).unwrap(), f).unwrap();
        assert_eq!(b.download_packed(&p).unwrap(), want, "{}", f.name());
        let back = b.download(&b.decompress(&p).unwrap()).unwrap();
        let truth = formats::masked_f16(&w, &mask);
        let bits = |m: &Matrix| m.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&truth), "{}", f.name());
    }
}

#[test]
fn bad_input_to_the_product_is_an_error() {
    let b = backend();
    let w = formats::round_to_f16(&heavy_tailed(5, 16, 3));
    let p = formats::compress(&w, &Mask::empty(5, 16), WeightFormat::Bitmap).unwrap();
    let packed = b.upload_packed(&p).unwrap();
    let none = b.zeros(0, 16).unwrap();
    match b.sparse_matmul(&none, &packed) {
        Err(KernelError::Shape(msg)) => assert!(msg.contains("N = 0"), "{msg}"),
        other => panic!("expected a shape error, got {:?}", other.map(|_| ())),
    }
    let x = b.upload(&heavy_tailed(2, 15, 4)).unwrap();
    assert!(matches!(
        b.sparse_matmul(&x, &packed),
        Err(KernelError::Shape(_))
    ));
    // A layout that does not add up is refused before anything reads it.
    let mut short = p.clone();
    short.values.pop();
    assert!(matches!(
        b.upload_packed(&short),
        Err(KernelError::Shape(_))
    ));
    let mut moved = p;
    moved.offsets[2] += 1;
    match b.upload_packed(&moved) {
        Err(KernelError::InvalidArgument(msg)) => assert!(msg.contains("bitmap row 1"), "{msg}"),
        other => panic!("expected an error, got {:?}", other.map(|_| ())),
    }
}
