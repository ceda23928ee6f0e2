//! Adapter choice and device creation: Vulkan, Metal or DX12 only (wgpu also offers a GL
//! adapter, which we list but never run on), every feature we can use that the adapter has,
//! and the adapter's own limits rather than WebGPU's conservative defaults, so a real GPU is
//! not capped at a 128 MiB binding.

use crate::error::{KernelError, Result};
use crate::ops::BackendInfo;

const COMPUTE_BACKENDS: wgpu::Backends = wgpu::Backends::VULKAN
    .union(wgpu::Backends::METAL)
    .union(wgpu::Backends::DX12);

/// Features used where present; none is required. Only pass-level timestamps are: the kernels
/// are written with workgroup-memory scans rather than subgroup operations, so they build on
/// adapters without SUBGROUP too (and naga does not yet accept WGSL's `enable subgroups;`).
const WANTED: wgpu::Features = wgpu::Features::TIMESTAMP_QUERY;

pub(crate) fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // Buffer creation past the driver's memory budget fails as out-of-memory instead of
    // paging or crashing (Vulkan with VK_EXT_memory_budget).
    desc.memory_budget_thresholds.for_resource_creation = Some(95);
    wgpu::Instance::new(desc)
}

fn all_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

fn device_type(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

fn preference(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

fn vendor_name(id: u32) -> String {
    match id {
        0x10de => "NVIDIA".into(),
        0x1002 => "AMD".into(),
        0x8086 => "Intel".into(),
        0x106b => "Apple".into(),
        0x13b5 => "ARM".into(),
        0x5143 => "Qualcomm".into(),
        0x10005 => "Mesa".into(),
        0 => String::new(),
        other => format!("0x{other:04x}"),
    }
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
        vendor: vendor_name(ai.vendor),
        api: format!("{:?}", ai.backend),
        driver,
        device_type: device_type(ai.device_type).into(),
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
        ],
    }
}

/// Every adapter wgpu sees, GL included, with the limits that matter here.
pub fn list_adapters() -> Vec<BackendInfo> {
    let instance = instance();
    all_adapters(&instance)
        .iter()
        .map(|a| describe(a, &a.limits()))
        .collect()
}

/// The adapters the wgpu backend can compute on (Vulkan, Metal, DX12), without probing GL,
/// which on some systems prints display warnings: what `auto` backend choice looks at.
pub fn list_compute_adapters() -> Vec<BackendInfo> {
    let instance = instance();
    pollster::block_on(instance.enumerate_adapters(COMPUTE_BACKENDS))
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
    let instance = instance();
    // Only the compute APIs are probed here (probing GL can print noise about displays);
    // the error path lists every adapter.
    let mut usable: Vec<wgpu::Adapter> =
        pollster::block_on(instance.enumerate_adapters(COMPUTE_BACKENDS));
    let seen = || {
        all_adapters(&instance)
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let adapter = match name {
        Some(want) => {
            let w = want.to_lowercase();
            usable
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&w))
                .ok_or_else(|| {
                    KernelError::Device(format!(
                        "no Vulkan, Metal or DX12 adapter matches '{want}'; adapters seen: [{}]",
                        seen()
                    ))
                })?
        }
        None => {
            usable.sort_by_key(|a| preference(a.get_info().device_type));
            usable.into_iter().next().ok_or_else(|| {
                KernelError::Device(format!(
                    "no Vulkan, Metal or DX12 adapter found; adapters seen: [{}]",
                    seen()
                ))
            })?
        }
    };
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
