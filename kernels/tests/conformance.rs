//! Every op of the suite's small, odd-shaped cases on every backend compiled in, against the
//! CPU reference. Written once; `conformance!` instantiates it per backend. A backend whose
//! device cannot be found fails here with a message, never skips.

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::suite::{small_cases, verify_cases};
use prunebench_kernels::Backend;

/// Runs the small cases whose name starts with one of `prefixes` and fails listing every case
/// that did not pass (an unsupported case is a failure here: these shapes are tiny).
pub fn run_cases<B: Backend>(backend: &B, prefixes: &[&str]) {
    let cases: Vec<_> = small_cases()
        .into_iter()
        .filter(|c| prefixes.iter().any(|p| c.op_name().starts_with(p)))
        .collect();
    assert!(!cases.is_empty(), "no case matches {prefixes:?}");
    let failures = verify_cases(backend, &cases);
    assert!(
        failures.is_empty(),
        "{} on {}: {} of {} cases failed:\n{}",
        backend.info().backend,
        backend.info().device,
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The ceiling probes: the copy is exact, the FMA chains match their closed form (a chain of
/// n f32 steps is within ~n ulp of it; 1e-4 relative leaves room), on shapes that are not
/// multiples of any vector or workgroup width.
pub fn check_probes<B: Backend>(backend: &B) {
    use prunebench_kernels::ops::fma_probe_expected;
    use prunebench_kernels::rng::heavy_tailed;
    for (rows, cols) in [(1, 37), (13, 300), (129, 33)] {
        let src_host = heavy_tailed(rows, cols, 5);
        let src = backend.upload(&src_host).unwrap();
        let mut dst = backend.zeros(rows, cols).unwrap();
        backend.copy(&mut dst, &src).unwrap();
        assert_eq!(
            backend.download(&dst).unwrap(),
            src_host,
            "copy {rows}x{cols}"
        );
        let start = prunebench_kernels::Matrix::from_fn(rows, cols, |r, c| {
            ((r * 31 + c) % 200) as f32 / 100.0
        });
        let mut t = backend.upload(&start).unwrap();
        backend.fma_probe(&mut t, 50).unwrap();
        backend.fma_probe(&mut t, 30).unwrap();
        let got = backend.download(&t).unwrap();
        for (i, (&x, &g)) in start.data.iter().zip(&got.data).enumerate() {
            let want = fma_probe_expected(x, 80);
            assert!(
                ((g as f64 - want) / want).abs() < 1e-4,
                "fma {rows}x{cols} [{i}]: {g} vs {want}"
            );
        }
    }
}

/// One test per op family for the backend `$make` builds.
#[macro_export]
macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            fn check(prefixes: &[&str]) {
                let backend = $make;
                run_cases(&backend, prefixes);
            }
            #[test]
            fn statistics() {
                check(&["ACT_STAT", "HESSIAN"]);
            }
            #[test]
            fn gradients() {
                check(&["GRAD_ACC", "GRAD_FUSED"]);
            }
            #[test]
            fn scores() {
                check(&["SCORE_"]);
            }
            #[test]
            fn masks() {
                check(&["MASK", "APPLY_MASK"]);
            }
            #[test]
            fn fused_prune() {
                check(&["PRUNE_"]);
            }
            #[test]
            fn hinv_factor() {
                check(&["HINV_FACTOR"]);
            }
            #[test]
            fn obs() {
                // §7's three, named whole: §11's OBS_SALIENCY shares their prefix.
                check(&["OBS_UNSTRUCTURED", "OBS_NM", "OBS_GIVEN"]);
            }
            #[test]
            fn recon_error() {
                check(&["RECON_ERROR"]);
            }
            #[test]
            fn structured() {
                check(&[
                    "GRAD_SUM",
                    "HINV_EXPLICIT",
                    "OBS_SALIENCY",
                    "TAYLOR_SALIENCY",
                    "STRUCTURED_UPDATE",
                    "COMPACT",
                ]);
            }
            #[test]
            fn forward() {
                // §14's LLaMA forward ops; a backend without one fails here (unsupported is
                // not passed on these shapes).
                check(&[
                    "LINEAR",
                    "RMS_NORM",
                    "ROPE",
                    "ATTENTION",
                    "SILU_MUL",
                    "RESIDUAL_ADD",
                    "EMBED",
                    "LM_HEAD",
                ]);
            }
            #[test]
            fn ceiling_probes() {
                check_probes(&$make);
            }
        }
    };
}

// The reference against itself: proves the cases, runner and comparisons hold together.
conformance!(cpu, CpuBackend::new());

#[cfg(feature = "cubecl")]
conformance!(
    cubecl_wgpu,
    prunebench_kernels::cube::cube_wgpu(None).expect(
        "no Vulkan adapter for CubeCL: install mesa-vulkan-drivers (lavapipe) or a GPU driver"
    )
);

/// CUDA where a driver is installed: every small case on device 0. Without one (CI), the
/// backend must say so in one clear error, without panicking.
#[cfg(feature = "cuda")]
#[test]
fn cubecl_cuda() {
    use prunebench_kernels::cube::{cube_cuda, cuda_status};
    use prunebench_kernels::KernelError;
    let status = cuda_status();
    println!("{status}");
    match cube_cuda(0) {
        Ok(backend) => {
            assert_eq!(backend.info().backend, "cubecl-cuda");
            run_cases(&backend, &[""]);
        }
        Err(KernelError::Unsupported(msg)) if status == "CUDA: no driver found" => {
            assert_eq!(msg, "CUDA: no driver found (libcuda could not be loaded)");
        }
        Err(e) => panic!("CUDA is present ({status}) but the backend failed: {e}"),
    }
}

#[cfg(feature = "wgpu")]
conformance!(
    wgpu,
    prunebench_kernels::wgpu::WgpuBackend::new(None)
        .expect("no Vulkan adapter found: install mesa-vulkan-drivers (lavapipe) or a GPU driver")
);
