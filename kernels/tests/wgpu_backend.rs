//! The wgpu backend's own guarantees beyond conformance: tensors split across several storage
//! bindings give the same results, every output entry is written (outputs start as NaN),
//! limits and numerical failures come back as errors, and timing uses GPU timestamps.

#![cfg(feature = "wgpu")]

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::suite::{small_cases, verify_case, Outcome};
use prunebench_kernels::wgpu::{list_adapters, WgpuBackend};
use prunebench_kernels::{Backend, KernelError, Matrix, TimeSource};

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
/// All but the factor, whose 64-row Cholesky blocks of a 200-column H need 51 KB.
const ROW_SPLIT: &[&str] = &[
    "ACT_STAT",
    "HESSIAN",
    "GRAD_",
    "SCORE_",
    "MASK",
    "APPLY_MASK",
    "PRUNE_",
    "OBS_",
    "RECON_",
];

#[test]
fn tensors_split_across_bindings_match_the_reference() {
    // 128 KiB: H, U (200 x 200 is 160 KB) and the OBS weights' factor come in several
    // windows; the factor's outer blocks shrink to one 64-column block.
    let b = backend().with_max_binding(128 << 10);
    assert!(run(&b, ALL) > 0);
    assert!(
        b.split_ops() > 0,
        "no op split a tensor at a 128 KiB binding limit"
    );
    // 8 KiB: weights of 13 x 300 in slabs of 6 rows, the fused gradient's tokens in windows,
    // H in slabs of 15 rows, OBS sub-blocks of 9 columns (N:M: 8).
    let b = backend().with_max_binding(8 << 10);
    assert_eq!(b.max_binding(), 8 << 10);
    assert!(run(&b, ROW_SPLIT) > 0);
    assert!(
        b.split_ops() > 0,
        "no op split a tensor at an 8 KiB binding limit"
    );
}

#[test]
fn every_output_entry_is_written() {
    let b = backend();
    b.set_poison(true);
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
