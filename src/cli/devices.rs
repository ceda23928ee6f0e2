//! `prunebench devices`: every backend compiled in and the adapters each can see.

use std::process::ExitCode;

use anyhow::Result;

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::{Backend, BackendInfo};

#[cfg_attr(not(any(feature = "wgpu", feature = "cubecl")), allow(dead_code))]
fn print_info(i: &BackendInfo) {
    println!(
        "  {} [{}] type {}, vendor {}, driver {}",
        i.device,
        i.api,
        i.device_type,
        if i.vendor.is_empty() { "-" } else { &i.vendor },
        if i.driver.is_empty() { "-" } else { &i.driver }
    );
    if !i.limits.is_empty() {
        let limits: Vec<String> = i.limits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("    {}", limits.join(", "));
    }
}

pub fn run() -> Result<ExitCode> {
    println!("cpu: {}", CpuBackend::new().info().device);
    #[cfg(feature = "wgpu")]
    {
        let adapters = prunebench_kernels::wgpu::list_adapters();
        println!("wgpu: {} adapter(s)", adapters.len());
        for a in &adapters {
            print_info(a);
        }
    }
    #[cfg(not(feature = "wgpu"))]
    println!("wgpu: not compiled in (build with --features wgpu)");
    #[cfg(feature = "cubecl")]
    match prunebench_kernels::cube::cube_wgpu(None) {
        Ok(b) => {
            println!("cubecl-wgpu:");
            print_info(b.info());
        }
        Err(e) => println!("cubecl-wgpu: {e}"),
    }
    #[cfg(not(feature = "cubecl"))]
    println!("cubecl-wgpu: not compiled in (build with --features cubecl)");
    #[cfg(feature = "cuda")]
    println!("cubecl-cuda: {}", prunebench_kernels::cube::cuda_status());
    #[cfg(not(feature = "cuda"))]
    println!("cubecl-cuda: CUDA not compiled in (build with --features cuda)");
    println!(
        "auto picks: {}",
        super::backends::resolve("auto").map_or_else(|e| e.to_string(), |c| c.name().to_string())
    );
    Ok(ExitCode::SUCCESS)
}
