//! Every op of the suite's small, odd-shaped cases on every backend compiled in, against the
//! CPU reference. Written once per op family; `conformance!` instantiates it per backend, one
//! test per family of `Family::ALL`, so an op added to the table is run on every backend with
//! its family. A backend whose device cannot be found fails here with a message, never skips.

use std::collections::BTreeSet;

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::suite::{small_cases, verify_cases, Family, Op, OpCase};
use prunebench_kernels::Backend;

/// Runs `cases` and fails listing every case that did not pass (an unsupported case is a
/// failure here: these shapes are tiny).
pub fn run_cases<B: Backend>(backend: &B, cases: &[OpCase]) {
    let failures = verify_cases(backend, cases);
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

/// Every small case of `family`.
pub fn run_family<B: Backend>(backend: &B, family: Family) {
    let cases = family.small_cases();
    assert!(!cases.is_empty(), "no case of family {}", family.name());
    run_cases(backend, &cases);
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

/// Every family with the name of its test: `conformance!` makes one test of each per backend,
/// and `every_op_is_run_on_every_backend` holds this list to `Family::ALL` and the op table.
macro_rules! each_family {
    ($then:ident) => {
        $then! {
            stats: Stats,
            masks: Masks,
            obs: Obs,
            sparse: Sparse,
            refit: Refit,
            structured: Structured,
            forward: Forward,
            backward: Backward,
        }
    };
}

macro_rules! family_tests {
    ($($test:ident: $family:ident,)*) => {
        $(
            #[test]
            fn $test() {
                check(Family::$family);
            }
        )*
    };
}

macro_rules! family_list {
    ($($test:ident: $family:ident,)*) => {
        &[$(Family::$family),*]
    };
}

/// The families each backend's `conformance!` runs.
const TESTED: &[Family] = each_family!(family_list);

/// One test per op family for the backend `$make` builds, and the ceiling probes.
#[macro_export]
macro_rules! conformance {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::*;
            fn check(family: Family) {
                let backend = $make;
                run_family(&backend, family);
            }
            each_family!(family_tests);
            #[test]
            fn ceiling_probes() {
                check_probes(&$make);
            }
        }
    };
}

/// The kinds of op, numbered: a kind added to `Op` does not compile here until it is
/// numbered (and `OP_KINDS` raised), and then fails the coverage test below until a small case
/// of a tested family runs it.
const OP_KINDS: usize = 41;

fn kind(op: &Op) -> usize {
    match op {
        Op::ActStat => 0,
        Op::Hessian => 1,
        Op::GradAccumulate(_) => 2,
        Op::GradFused(_) => 3,
        Op::Score(_) => 4,
        Op::Mask(_) => 5,
        Op::ApplyMask => 6,
        Op::Prune(..) => 7,
        Op::HinvFactor => 8,
        Op::Obs(_) => 9,
        Op::ReconError => 10,
        Op::Compress(..) => 11,
        Op::Matmul { .. } => 12,
        Op::RefitBase => 13,
        Op::LoraGrad(..) => 14,
        Op::AdamW => 15,
        Op::LoraMerge(..) => 16,
        Op::RowScale => 17,
        Op::NormSystem => 18,
        Op::SpdSolve => 19,
        Op::GradSum => 20,
        Op::HinvExplicit => 21,
        Op::ObsSaliency { .. } => 22,
        Op::TaylorSaliency { .. } => 23,
        Op::StructuredUpdate { .. } => 24,
        Op::Compact { .. } => 25,
        Op::Linear => 26,
        Op::RmsNorm => 27,
        Op::Rope { .. } => 28,
        Op::Attention { .. } => 29,
        Op::SiluMul => 30,
        Op::ResidualAdd => 31,
        Op::Embed => 32,
        Op::LmHead { .. } => 33,
        Op::LinearBackward => 34,
        Op::RmsNormBackward => 35,
        Op::RopeBackward { .. } => 36,
        Op::SiluMulBackward => 37,
        Op::EmbedBackward => 38,
        Op::LmHeadBackward { .. } => 39,
        Op::AttentionBackward { .. } => 40,
    }
}

/// Every family has its test on every backend, and every kind of op has a small case in a
/// tested family: what `conformance!` runs covers the whole op table.
#[test]
fn every_op_is_run_on_every_backend() {
    let tested: BTreeSet<Family> = TESTED.iter().copied().collect();
    let all: BTreeSet<Family> = Family::ALL.into_iter().collect();
    assert_eq!(tested, all, "families without a conformance test");
    assert_eq!(TESTED.len(), all.len(), "a family tested twice");
    let run: BTreeSet<usize> = small_cases()
        .iter()
        .filter(|c| tested.contains(&c.op.family()))
        .map(|c| kind(&c.op))
        .collect();
    let missing: Vec<usize> = (0..OP_KINDS).filter(|k| !run.contains(k)).collect();
    assert!(missing.is_empty(), "op kinds no backend runs: {missing:?}");
    assert!(run.iter().all(|&k| k < OP_KINDS), "OP_KINDS is too small");
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
            run_cases(&backend, &small_cases());
        }
        Err(KernelError::Unsupported(msg)) if status == "CUDA: no driver found" => {
            assert_eq!(msg, "CUDA: no driver found (libcuda could not be loaded)");
        }
        Err(e) => panic!("CUDA is present ({status}) but the backend failed: {e}"),
    }
}

/// The workgroup-memory paths of the OBS in-block step and of the selection's mask packing:
/// `wgpu::obs` and `wgpu::masks` run the subgroup ones where the adapter's subgroups all have
/// one width (lavapipe's do), so these run the others.
#[cfg(feature = "wgpu")]
mod wgpu_without_subgroups {
    use super::*;

    fn backend() -> prunebench_kernels::wgpu::WgpuBackend {
        prunebench_kernels::wgpu::WgpuBackend::new(None)
            .expect(
                "no Vulkan adapter found: install mesa-vulkan-drivers (lavapipe) or a GPU driver",
            )
            .without_subgroups()
    }

    #[test]
    fn obs() {
        run_family(&backend(), Family::Obs);
    }

    #[test]
    fn masks() {
        run_family(&backend(), Family::Masks);
    }
}

#[cfg(feature = "wgpu")]
conformance!(
    wgpu,
    prunebench_kernels::wgpu::WgpuBackend::new(None)
        .expect("no Vulkan adapter found: install mesa-vulkan-drivers (lavapipe) or a GPU driver")
);
