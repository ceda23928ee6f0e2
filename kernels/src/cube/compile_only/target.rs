//! The GPU architectures `compile` targets: what NVRTC is told (`--gpu-architecture`), the
//! per-SM limits theoretical occupancy is computed from, and the SM count waves are counted on.
//! Figures from NVIDIA's CUDA C++ Programming Guide, "Compute capabilities" table.

use serde::Serialize;

/// One target architecture and the limits of one SM of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    /// As written on the command line and in reports: `sm_90a`, `sm_80`.
    pub name: &'static str,
    /// Compute capability x 10.
    pub version: u32,
    /// The GPU whose SM count `sms` is.
    pub gpu: &'static str,
    /// Streaming multiprocessors of `gpu`, for waves.
    pub sms: u32,
    /// 32-bit registers per SM.
    pub registers_per_sm: u32,
    /// Register allocation unit, per warp.
    pub register_granularity: u32,
    /// Most registers one thread may use.
    pub max_registers_per_thread: u32,
    /// Shared memory per SM, bytes (the carve-out's maximum).
    pub shared_per_sm: u32,
    /// Shared memory one block may use (opt-in maximum), bytes.
    pub shared_per_block: u32,
    /// Shared memory the system reserves per resident block (sm_80 and later), bytes.
    pub shared_reserved_per_block: u32,
    pub threads_per_sm: u32,
    pub threads_per_block: u32,
    pub blocks_per_sm: u32,
    /// Device memory of `gpu`, bytes (CubeCL's largest page is a quarter of it).
    pub memory_bytes: u64,
}

const KIB: u32 = 1024;

pub const TARGETS: [Target; 2] = [
    Target {
        name: "sm_90a",
        version: 90,
        gpu: "H100 SXM",
        sms: 132,
        registers_per_sm: 65536,
        register_granularity: 256,
        max_registers_per_thread: 255,
        shared_per_sm: 228 * KIB,
        shared_per_block: 227 * KIB,
        shared_reserved_per_block: KIB,
        threads_per_sm: 2048,
        threads_per_block: 1024,
        blocks_per_sm: 32,
        memory_bytes: 80 << 30,
    },
    Target {
        name: "sm_80",
        version: 80,
        gpu: "A100 SXM",
        sms: 108,
        registers_per_sm: 65536,
        register_granularity: 256,
        max_registers_per_thread: 255,
        shared_per_sm: 164 * KIB,
        shared_per_block: 163 * KIB,
        shared_reserved_per_block: KIB,
        threads_per_sm: 2048,
        threads_per_block: 1024,
        blocks_per_sm: 32,
        memory_bytes: 80 << 30,
    },
];

/// The target named `name` (`sm_90a`, `sm_80`; `sm_90` is taken as `sm_90a`, which is what
/// CubeCL's CUDA runtime compiles for on compute capability 9.0).
pub fn target(name: &str) -> Option<&'static Target> {
    let name = name.trim().to_ascii_lowercase();
    let name = if name == "sm_90" { "sm_90a" } else { &name };
    TARGETS.iter().find(|t| t.name == name)
}

/// Theoretical occupancy: resident warps per SM over the SM's maximum, for a block of
/// `threads` threads using `registers` registers per thread and `shared` bytes of shared
/// memory, as the CUDA occupancy calculator computes it. Zero when the block cannot launch.
pub fn occupancy(t: &Target, threads: u32, registers: u32, shared: u32) -> f64 {
    if threads == 0
        || threads > t.threads_per_block
        || shared > t.shared_per_block
        || registers > t.max_registers_per_thread
    {
        return 0.0;
    }
    let warps = threads.div_ceil(32);
    let max_warps = t.threads_per_sm / 32;
    let by_threads = max_warps / warps;
    let by_registers = if registers == 0 {
        u32::MAX
    } else {
        let per_warp = (registers * 32).next_multiple_of(t.register_granularity);
        (t.registers_per_sm / per_warp) / warps
    };
    let by_shared = if shared == 0 {
        u32::MAX
    } else {
        t.shared_per_sm / (shared + t.shared_reserved_per_block)
    };
    let blocks = t
        .blocks_per_sm
        .min(by_threads)
        .min(by_registers)
        .min(by_shared);
    (blocks * warps) as f64 / max_warps as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_matches_the_calculator() {
        let h100 = target("sm_90a").unwrap();
        // 256 threads, 32 registers: 8 blocks by threads, 8 by registers: full.
        assert_eq!(occupancy(h100, 256, 32, 0), 1.0);
        // 64 registers: 2048 per warp, 32 warps fit, 4 blocks of 8 warps: half.
        assert_eq!(occupancy(h100, 256, 64, 0), 0.5);
        // 40 registers round to 1280 per warp: 51 warps, 6 blocks of 8 = 48 of 64.
        assert_eq!(occupancy(h100, 256, 40, 0), 0.75);
        // 100 KiB of shared memory: 2 blocks of 228 KiB (1 KiB reserved each).
        assert_eq!(occupancy(h100, 256, 16, 100 * 1024), 0.25);
        // 32-thread blocks: the 32-block limit binds.
        assert_eq!(occupancy(h100, 32, 16, 0), 0.5);
        // Too many threads or too much shared memory: cannot launch.
        assert_eq!(occupancy(h100, 2048, 16, 0), 0.0);
        let a100 = target("sm_80").unwrap();
        assert_eq!(occupancy(a100, 256, 16, 164 * 1024), 0.0);
        assert_eq!(target("SM_90").unwrap().name, "sm_90a");
        assert!(target("sm_75").is_none());
    }
}
