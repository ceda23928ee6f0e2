//! Cube-wide reductions and scans over 256 threads (plane ops where the device has them,
//! shared memory otherwise) and the single-cube sum of a buffer.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::arg;
use super::super::CubeBackend;
use crate::error::Result;

/// Threads per cube of every kernel that reduces or scans across its cube.
pub const CUBE: u32 = 256;

/// The sum of `v` over the cube's 256 threads, returned to every thread. With `plane`, each
/// plane (warp/subgroup) reduces in registers first and only one value per plane goes through
/// shared memory; without, a shared-memory tree.
#[cube]
pub fn cube_sum(v: f32, #[comptime] plane: bool) -> f32 {
    let mut sh = SharedMemory::<f32>::new(CUBE as usize);
    let mut out = 0.0f32;
    if comptime![plane] {
        let p = plane_sum(v);
        if UNIT_POS_PLANE == 0 {
            sh[(UNIT_POS / PLANE_DIM) as usize] = p;
        }
        sync_cube();
        let planes = CUBE_DIM / PLANE_DIM;
        for q in 0..planes {
            out += sh[q as usize];
        }
        sync_cube();
    } else {
        sh[UNIT_POS as usize] = v;
        sync_cube();
        #[unroll]
        for step in 0..8u32 {
            let half = comptime![128u32 >> step];
            if UNIT_POS < half {
                sh[UNIT_POS as usize] += sh[(UNIT_POS + half) as usize];
            }
            sync_cube();
        }
        out = sh[0];
        sync_cube();
    }
    out
}

/// Exclusive prefix sum of `v` over the cube's 256 threads in thread order, and the total.
/// A Hillis-Steele scan (8 steps) in `sh`, 256 words of shared memory the caller allocates
/// once per kernel (each `SharedMemory::new` is its own allocation, even in a loop body that
/// is unrolled); scans here run once per mask word round, so simplicity wins over a
/// work-efficient scan.
#[cube]
pub fn cube_exclusive_scan(v: u32, sh: &mut SharedMemory<u32>) -> (u32, u32) {
    let t = UNIT_POS as usize;
    sh[t] = v;
    sync_cube();
    #[unroll]
    for step in 0..8u32 {
        let d = comptime![1u32 << step];
        let mut add = 0u32;
        if UNIT_POS >= d {
            add = sh[t - d as usize];
        }
        sync_cube();
        sh[t] += add;
        sync_cube();
    }
    let incl = sh[t];
    let total = sh[CUBE as usize - 1];
    sync_cube();
    (incl - v, total)
}

#[cube(launch_unchecked)]
fn sum_kernel(input: &Array<f32>, out: &mut Array<f32>, n: u32, #[comptime] plane: bool) {
    let mut s = 0.0f32;
    let mut i = UNIT_POS;
    while i < n {
        s += input[i as usize];
        i += CUBE;
    }
    let total = cube_sum(s, plane);
    if UNIT_POS == 0 {
        out[0] = total;
    }
}

/// The sum of the first `n` f32 of `h`, computed on the device and read back.
pub fn sum<R: Runtime>(b: &CubeBackend<R>, h: &Handle, n: usize) -> Result<f64> {
    let out = b.scratch(1)?;
    // SAFETY: one cube strides over the n inputs; thread 0 writes the single output.
    unsafe {
        sum_kernel::launch_unchecked::<R>(
            &b.client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(CUBE),
            arg(h, n),
            arg(&out, 1),
            n as u32,
            b.plane,
        );
    }
    Ok(b.read_f32(&out, 1)?[0] as f64)
}
