//! What only the CubeCL backend has: tensors cut into slabs of whole 64-row blocks, fixed when
//! a tensor is made (the shared tests' split cases cut where their comments say).

#![cfg(feature = "cubecl")]

use prunebench_kernels::cube::{cube_wgpu, CubeWgpuBackend};

fn backend() -> CubeWgpuBackend {
    cube_wgpu(None).expect(
        "no Vulkan adapter for CubeCL: install mesa-vulkan-drivers (lavapipe) or a GPU driver",
    )
}

/// The slabs `forward_ops`' attention across bindings relies on, at 64 rows of 96 columns:
/// Q of three windows of 37 in 64-row slabs, so the second window crosses a boundary and
/// the third starts inside the second slab and 74 rows into K's only one; at two windows of
/// 100, K's slabs of 128 rows cut the second window too.
#[test]
fn attention_windows_cross_the_slabs_meant() {
    let b = backend().with_binding_limit(64 * 96 * 4);
    assert_eq!(b.slabs(111, 96).unwrap().slab_rows, 64);
    assert_eq!(b.slabs(111, 48).unwrap().count(), 1);
    assert_eq!(b.slabs(200, 48).unwrap().slab_rows, 128);
}
