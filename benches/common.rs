//! What the criterion benches share: which backends are present and chosen, and which model's
//! shapes to run, from environment variables (criterion owns the command line):
//!   PRUNEBENCH_BENCH_MODEL     model shapes (default tiny; llama-7b, llama2-70b, llama3-8b on GPUs)
//!   PRUNEBENCH_BENCH_TOKENS    calibration tokens per sample (default 64)
//!   PRUNEBENCH_BENCH_SAMPLES   calibration samples for layer benches (default 4)
//!   PRUNEBENCH_BENCH_BACKENDS  comma list of cpu, wgpu, cubecl-wgpu, cubecl-cuda (default: all present)
//!   PRUNEBENCH_BENCH_OPS       only cases whose name contains this

#![allow(dead_code)]

use std::time::Duration;

use prunebench_kernels::Backend;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn env_usize(name: &str, default: usize) -> usize {
    env_or(name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a whole number"))
}

/// Short windows: the default shapes must finish in minutes even on a software rasteriser.
pub fn config() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

/// The model whose shapes the benches run, and the calibration tokens per sample.
pub fn model_and_tokens() -> (prunebench_models::ModelConfig, usize) {
    let name = env_or("PRUNEBENCH_BENCH_MODEL", "tiny");
    let model = prunebench_models::config::lookup(&name)
        .unwrap_or_else(|e| panic!("PRUNEBENCH_BENCH_MODEL: {e}"));
    (model, env_usize("PRUNEBENCH_BENCH_TOKENS", 64))
}

pub fn wanted(backend: &str) -> bool {
    match std::env::var("PRUNEBENCH_BENCH_BACKENDS") {
        Ok(list) => list.split(',').any(|b| b.trim() == backend),
        Err(_) => true,
    }
}

/// Calls `visit` once per backend that is compiled in, chosen and present.
pub trait Visit {
    fn visit<B: Backend>(&mut self, backend: &B);
}

pub fn for_each_backend(v: &mut impl Visit) {
    if wanted("cpu") {
        v.visit(&prunebench_kernels::cpu::CpuBackend::new());
    }
    #[cfg(feature = "wgpu")]
    if wanted("wgpu") {
        match prunebench_kernels::wgpu::WgpuBackend::new(None) {
            Ok(b) => v.visit(&b),
            Err(e) => eprintln!("wgpu: skipped, {e}"),
        }
    }
    #[cfg(feature = "cubecl")]
    if wanted("cubecl-wgpu") {
        match prunebench_kernels::cube::cube_wgpu(None) {
            Ok(b) => v.visit(&b),
            Err(e) => eprintln!("cubecl-wgpu: skipped, {e}"),
        }
    }
    #[cfg(feature = "cuda")]
    if wanted("cubecl-cuda") {
        match prunebench_kernels::cube::cube_cuda(0) {
            Ok(b) => v.visit(&b),
            Err(e) => eprintln!("cubecl-cuda: skipped, {e}"),
        }
    }
}

/// Sums the backend's own timings (device timestamps where it has them) of `iters` runs.
pub fn device_time<B: Backend>(
    b: &B,
    iters: u64,
    mut run: impl FnMut(u64) -> prunebench_kernels::error::Result<()>,
) -> Duration {
    let mut total = 0.0;
    for i in 0..iters {
        let (t, _) = b.timed(&mut || run(i)).expect("benchmarked op failed");
        total += t;
    }
    Duration::from_secs_f64(total)
}
