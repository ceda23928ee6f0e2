//! Compiling every CubeCL kernel for CUDA without a GPU: the backend runs on a runtime whose
//! compiler is CubeCL's CUDA compiler and whose device is made up from the target's table
//! ([`server`]); each distinct kernel it is handed is turned into CUDA C++, then compiled by
//! NVRTC for the target with ptxas's resource report ([`nvrtc`]): registers, shared memory,
//! spills, and from them theoretical occupancy ([`target`]).

mod nvrtc;
mod props;
mod server;
mod storage;
mod target;

use cubecl::Runtime;
use rayon::prelude::*;
use serde::Serialize;

use super::CubeBackend;
use crate::ops::BackendInfo;
use crate::suite::{CaseInputs, OpCase};
pub use nvrtc::{parse_ptxas, Nvrtc, NvrtcMissing, Resources};
pub use server::{CompileOnlyDevice, CompileOnlyRuntime, KernelSource};
pub use target::{occupancy, target, Target, TARGETS};

/// The CubeCL backend on the compile-only runtime of `t`.
pub type CompileOnlyBackend = CubeBackend<CompileOnlyRuntime>;

/// A backend whose launches are recorded for `t` instead of run.
pub fn compile_only(t: &'static Target) -> CompileOnlyBackend {
    let client = CompileOnlyRuntime::client(&CompileOnlyDevice { version: t.version });
    let info = BackendInfo {
        backend: "cubecl-cuda-compile-only".into(),
        device: format!("{} ({})", t.name, t.gpu),
        vendor: "NVIDIA".into(),
        api: "CUDA (NVRTC only)".into(),
        driver: String::new(),
        device_type: "none".into(),
        limits: Vec::new(),
    };
    // No memory budget: nothing is allocated on a device.
    let mut b = CubeBackend::from_client(client, info, None);
    // The storage keeps no bytes above this size anyway (see `storage`).
    b.data_kept_up_to = Some(storage::KEPT_BYTES);
    b
}

/// Every distinct kernel launched so far on `t`, in first-launch order.
pub fn kernels(t: &Target) -> Vec<KernelSource> {
    server::kernels(t)
}

/// The launches on `t` since the last call, as (index into [`kernels`], cubes).
pub fn take_launches(t: &Target) -> Vec<(usize, u64)> {
    server::take_launches(t)
}

/// How many cases' inputs [`generate_inputs`] is best given at once: one per worker thread.
pub fn input_batch() -> usize {
    rayon::current_num_threads().max(1)
}

/// The inputs of `cases` at their shapes only (no kernel runs here, so no value is read; the
/// reference's statistics would be nearly all of a run's time at model sizes), generated in
/// parallel; the runs themselves stay one at a time so that each launch is counted for its
/// case.
pub fn generate_inputs(cases: &[OpCase]) -> Vec<crate::error::Result<CaseInputs>> {
    cases
        .par_iter()
        .map(CaseInputs::generate_shapes_only)
        .collect()
}

/// One kernel compiled for one target.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub name: String,
    pub variant: String,
    pub arch: String,
    pub cube_dim: [u32; 3],
    pub registers: Option<u32>,
    /// Static (ptxas) plus dynamic (CubeCL's launch) shared memory per block, bytes.
    pub shared_bytes: Option<u32>,
    /// Spill stores plus spill loads, bytes.
    pub spill_bytes: Option<u32>,
    pub spill_stores: Option<u32>,
    pub spill_loads: Option<u32>,
    pub stack_bytes: Option<u32>,
    pub occupancy: Option<f64>,
    /// "ok" or "error".
    pub status: &'static str,
    pub error: Option<String>,
    /// CubeCL's kernel id: the comptime arguments `variant` hashes.
    pub id: String,
}

impl KernelReport {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

/// Compiles every kernel in `sources` for `t` (in parallel: NVRTC takes about a second per
/// kernel, mostly parsing headers) and checks each against the target's limits.
pub fn compile_all(nvrtc: &Nvrtc, t: &Target, sources: &[KernelSource]) -> Vec<KernelReport> {
    sources
        .par_iter()
        .map(|s| compile_one(nvrtc, t, s))
        .collect()
}

fn compile_one(nvrtc: &Nvrtc, t: &Target, s: &KernelSource) -> KernelReport {
    let mut r = KernelReport {
        name: s.name.clone(),
        variant: s.variant.clone(),
        arch: t.name.to_string(),
        cube_dim: s.cube_dim,
        registers: None,
        shared_bytes: None,
        spill_bytes: None,
        spill_stores: None,
        spill_loads: None,
        stack_bytes: None,
        occupancy: None,
        status: "error",
        error: None,
        id: s.id.clone(),
    };
    let source = match &s.source {
        Ok(src) => src,
        Err(e) => {
            r.error = Some(format!("CubeCL could not generate CUDA C++: {e}"));
            return r;
        }
    };
    let res = match nvrtc.compile(source, t) {
        Ok(res) => res,
        Err(log) => {
            r.error = Some(log);
            return r;
        }
    };
    let threads: u64 = s.cube_dim.iter().map(|&d| d as u64).product();
    let shared = res.shared as u64 + s.dynamic_shared as u64;
    r.registers = Some(res.registers);
    r.shared_bytes = Some(shared.min(u32::MAX as u64) as u32);
    r.spill_stores = Some(res.spill_stores);
    r.spill_loads = Some(res.spill_loads);
    r.spill_bytes = Some(res.spill_stores + res.spill_loads);
    r.stack_bytes = Some(res.stack);
    let mut limits = Vec::new();
    if threads > t.threads_per_block as u64 {
        limits.push(format!(
            "{threads} threads per cube exceed the {} of {}",
            t.threads_per_block, t.name
        ));
    }
    if shared > t.shared_per_block as u64 {
        limits.push(format!(
            "{shared} bytes of shared memory exceed the {} per block of {}",
            t.shared_per_block, t.name
        ));
    }
    if limits.is_empty() {
        r.occupancy = Some(occupancy(t, threads as u32, res.registers, shared as u32));
        r.status = "ok";
    } else {
        r.occupancy = Some(0.0);
        r.error = Some(limits.join("; "));
    }
    r
}

/// The cubes of one op case's launches on a target, and how many waves of the target's SMs
/// they make (at one resident cube per SM: the smallest a GPU can fill).
#[derive(Clone, Debug, Serialize)]
pub struct CaseLaunches {
    pub case: String,
    pub arch: String,
    pub launches: usize,
    pub cubes_min: u64,
    pub cubes_median: u64,
    pub cubes_max: u64,
    /// Median cubes over the SM count: below 1, the case's typical launch leaves SMs idle.
    pub waves: f64,
}

impl CaseLaunches {
    pub fn new(case: &str, t: &Target, launches: &[(usize, u64)]) -> Self {
        let mut cubes: Vec<u64> = launches.iter().map(|l| l.1).collect();
        cubes.sort_unstable();
        let median = cubes.get(cubes.len() / 2).copied().unwrap_or(0);
        Self {
            case: case.to_string(),
            arch: t.name.to_string(),
            launches: cubes.len(),
            cubes_min: cubes.first().copied().unwrap_or(0),
            cubes_median: median,
            cubes_max: cubes.last().copied().unwrap_or(0),
            waves: median as f64 / t.sms as f64,
        }
    }
}
