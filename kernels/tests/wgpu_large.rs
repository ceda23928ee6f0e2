//! A check on LLaMA-sized shapes (ignored by default: minutes on a software adapter): every
//! op cut from the linear shapes alone (`Family::model_cases`) for one 4096 x 4096 linear, against the CPU reference, with the
//! backend's time for each. Run with
//! `cargo test -p prunebench-kernels --features wgpu --test wgpu_large -- --ignored --nocapture`;
//! `PRUNEBENCH_OPS=HESSIAN,OBS_` restricts it to ops whose names start with those prefixes,
//! `PRUNEBENCH_SHAPE=4096x11008` changes the shape, `PRUNEBENCH_PROFILE=1` adds the time per
//! kernel (each dispatch then runs in a pass of its own).

#![cfg(feature = "wgpu")]

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::suite::{
    execute, prepare, verify_case, CaseInputs, Family, ForwardDims, LayerDims, ModelShapes, Outcome,
};
use prunebench_kernels::wgpu::WgpuBackend;
use prunebench_kernels::Backend;

#[test]
#[ignore = "minutes on a software adapter; run on purpose"]
fn llama_shapes_against_the_reference() {
    let b = WgpuBackend::new(None).expect("no Vulkan adapter found");
    let reference = CpuBackend::new();
    let shape = std::env::var("PRUNEBENCH_SHAPE").unwrap_or_else(|_| "4096x4096".into());
    let (r, c) = shape.split_once('x').expect("shape as ROWSxCOLS");
    let shape = (r.parse().unwrap(), c.parse().unwrap());
    let filter: Vec<String> = std::env::var("PRUNEBENCH_OPS")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    println!(
        "device: {} ({}, {})",
        b.info().device,
        b.info().api,
        b.info().driver
    );
    let profile = std::env::var("PRUNEBENCH_PROFILE").is_ok_and(|v| v == "1");
    let mut failed = Vec::new();
    // The families whose model cases are cut from the linear shapes alone; the layer's and
    // the forward pass's sizes (LLaMA-7B's) are not read by them.
    let layer = LayerDims {
        hidden: 4096,
        intermediate: 11008,
        heads: 32,
        kv_heads: 32,
        head_dim: 128,
    };
    let shapes = ModelShapes {
        linears: vec![shape],
        layer,
        forward: ForwardDims {
            layer,
            vocab: 32000,
            rope_theta: 10000.0,
        },
        tokens: 128,
    };
    let per_linear = [
        Family::Stats,
        Family::Masks,
        Family::Obs,
        Family::Sparse,
        Family::Refit,
    ];
    for case in per_linear.into_iter().flat_map(|f| f.model_cases(&shapes)) {
        if !filter.is_empty()
            && !filter
                .iter()
                .any(|f| case.op_name().starts_with(f.as_str()))
        {
            continue;
        }
        let r = verify_case(&b, &reference, &case);
        let inputs = CaseInputs::generate(&case).expect("inputs");
        let mut p = prepare(&b, &case, &inputs).expect("prepare");
        let (secs, source) = b.timed(&mut || execute(&b, &mut p)).expect("timed run");
        let kernels = if profile {
            let mut p = prepare(&b, &case, &inputs).expect("prepare");
            b.set_profile(true);
            b.timed(&mut || execute(&b, &mut p)).expect("profiled run");
            b.set_profile(false);
            b.kernel_profile()
                .iter()
                .map(|(k, s)| format!("{k} {s:.3}s"))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            String::new()
        };
        let rate = if case.compute_bound() {
            format!("{:8.1} GFLOP/s", case.flops() as f64 / secs / 1e9)
        } else {
            format!("{:8.2} GB/s", case.bytes() as f64 / secs / 1e9)
        };
        let figures: Vec<String> = r
            .checks
            .iter()
            .map(|c| format!("{} {}={:.2e}", c.what, c.metric, c.error))
            .collect();
        println!(
            "{:<58} {:?} {:9.4} s ({source:?}) {rate}  {}",
            r.case,
            r.outcome,
            secs,
            figures.join(", ")
        );
        if profile {
            println!("    kernels: {kernels}");
        }
        if r.outcome != Outcome::Pass {
            failed.push(r.case);
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}
