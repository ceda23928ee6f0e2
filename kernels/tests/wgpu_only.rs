//! What only the wgpu backend has: the adapter list with each adapter's limits, and the
//! binding cap it reports.

#![cfg(feature = "wgpu")]

use prunebench_kernels::wgpu::{list_adapters, WgpuBackend, MIN_BINDING};
use prunebench_kernels::Backend;

fn backend() -> WgpuBackend {
    WgpuBackend::new(None)
        .expect("no Vulkan adapter found: install mesa-vulkan-drivers (lavapipe) or a GPU driver")
}

#[test]
fn adapters_are_listed_with_their_limits() {
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
}

/// The cap in force is the one asked for, never below the 8 KiB the selection histogram
/// (2048 counters, always bound whole) needs.
#[test]
fn the_binding_cap_is_the_one_asked_for() {
    assert_eq!(backend().with_binding_limit(8 << 10).max_binding(), 8 << 10);
    assert_eq!(backend().with_binding_limit(1).max_binding(), MIN_BINDING);
}

/// `info` records whether the subgroup paths run, and `without_subgroups` selects the
/// workgroup-memory ones (the conformance tests run the OBS and mask families on both).
#[test]
fn the_subgroup_paths_are_reported() {
    let lanes = |b: &WgpuBackend| {
        b.info()
            .limits
            .iter()
            .find(|(k, _)| k == "subgroup_lanes")
            .map(|&(_, v)| v)
    };
    let b = backend();
    println!(
        "{}: subgroup lanes {:?}",
        b.info().device,
        b.subgroup_lanes()
    );
    assert_eq!(lanes(&b), Some(b.subgroup_lanes().unwrap_or(0) as u64));
    let b = b.without_subgroups();
    assert_eq!(b.subgroup_lanes(), None);
    assert_eq!(lanes(&b), Some(0));
}
