//! Adapter choice and device creation: Vulkan, Metal or DX12 only (wgpu also offers a GL
//! adapter, which we list but never run on), every feature we can use that the adapter has,
//! and the adapter's own limits rather than WebGPU's conservative defaults, so a real GPU is
//! not capped at a 128 MiB binding.

use crate::adapter;
use crate::error::{KernelError, Result};
use crate::ops::BackendInfo;

/// Features used where present; none is required. Pass-level timestamps, and subgroup
/// operations, which the OBS in-block step and the selection's mask packing use where every
/// subgroup has the same width (`subgroup_lanes`). Every kernel has a path without them; naga
/// takes subgroup builtins without WGSL's `enable subgroups;`, which it does not yet accept.
const WANTED: wgpu::Features = wgpu::Features::TIMESTAMP_QUERY.union(wgpu::Features::SUBGROUP);

/// The subgroup width the subgroup paths may rely on: the device has subgroup operations
/// and all its subgroups are one of `sizes` wide (a device that picks a width per pipeline
/// within a range would not give a row exactly one subgroup).
pub(crate) fn subgroup_lanes(opened: &Opened, sizes: &[u32]) -> Option<u32> {
    let ai = opened.adapter.get_info();
    let size = ai.subgroup_min_size;
    (opened.device.features().contains(wgpu::Features::SUBGROUP)
        && size == ai.subgroup_max_size
        && sizes.contains(&size)
        && 8 * size <= opened.device.limits().max_compute_invocations_per_workgroup)
        .then_some(size)
}

/// The description of an adapter that `info()` and `list_adapters()` report.
pub(crate) fn describe(adapter: &wgpu::Adapter, limits: &wgpu::Limits) -> BackendInfo {
    let ai = adapter.get_info();
    let feats = adapter.features();
    let driver = [ai.driver.as_str(), ai.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    BackendInfo {
        backend: "wgpu".into(),
        device: ai.name.clone(),
        vendor: adapter::vendor_name(ai.vendor),
        api: format!("{:?}", ai.backend),
        driver,
        device_type: adapter::device_type(ai.device_type).into(),
        limits: vec![
            ("max_buffer_size".into(), limits.max_buffer_size),
            (
                "max_storage_buffer_binding_size".into(),
                limits.max_storage_buffer_binding_size,
            ),
            (
                "max_compute_workgroup_storage_size".into(),
                limits.max_compute_workgroup_storage_size as u64,
            ),
            (
                "max_compute_invocations_per_workgroup".into(),
                limits.max_compute_invocations_per_workgroup as u64,
            ),
            (
                "max_storage_buffers_per_shader_stage".into(),
                limits.max_storage_buffers_per_shader_stage as u64,
            ),
            ("subgroup_min_size".into(), ai.subgroup_min_size as u64),
            ("subgroup_max_size".into(), ai.subgroup_max_size as u64),
            (
                "timestamp_query".into(),
                feats.contains(wgpu::Features::TIMESTAMP_QUERY) as u64,
            ),
        ]
        .into_iter()
        .chain(adapter::device_local_memory(adapter).map(|m| ("memory_bytes".into(), m)))
        .collect(),
    }
}

/// Every adapter wgpu sees, GL included, with the limits that matter here.
pub fn list_adapters() -> Vec<BackendInfo> {
    adapter::all_adapters()
        .iter()
        .map(|a| describe(a, &a.limits()))
        .collect()
}

/// The adapters the wgpu backend can compute on (Vulkan, Metal, DX12), without probing GL,
/// which on some systems prints display warnings: what `auto` backend choice looks at.
pub fn list_compute_adapters() -> Vec<BackendInfo> {
    let instance = adapter::instance();
    adapter::compute_adapters(&instance)
        .iter()
        .map(|a| describe(a, &a.limits()))
        .collect()
}

pub(crate) struct Opened {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
}

/// Picks an adapter (by name, or the best device type) and opens a device on it.
pub(crate) fn open(name: Option<&str>) -> Result<Opened> {
    let adapter = adapter::choose(&adapter::instance(), name)?;
    let features = adapter.features() & WANTED;
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("prunebench"),
        required_features: features,
        required_limits: limits,
        memory_hints: wgpu::MemoryHints::Performance,
        ..Default::default()
    }))
    .map_err(|e| KernelError::Device(format!("cannot open {}: {e}", adapter.get_info().name)))?;
    Ok(Opened {
        adapter,
        device,
        queue,
    })
}
