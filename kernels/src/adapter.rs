//! What the two backends built on wgpu (the WGSL kernels and CubeCL's wgpu runtime) share
//! about adapters: the instance, which adapters they compute on, choosing one by name or by
//! kind, naming its vendor and kind, and the device-local memory behind it.

use crate::error::{KernelError, Result};

/// The APIs the kernels run on. wgpu also offers GL, which is listed but never computed on:
/// neither backend's kernels target it.
pub(crate) const COMPUTE_BACKENDS: wgpu::Backends = wgpu::Backends::VULKAN
    .union(wgpu::Backends::METAL)
    .union(wgpu::Backends::DX12);

/// An instance of the compute APIs only. GL is left out at creation, not only when adapters
/// are listed: creating a GL instance opens EGL, which probes the display stack and, on a
/// headless machine, prints "error: XDG_RUNTIME_DIR is invalid or not set" for nothing.
pub(crate) fn instance() -> wgpu::Instance {
    instance_of(COMPUTE_BACKENDS)
}

fn instance_of(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    // WGPU_BACKEND, where set, narrows the choice further.
    desc.backends &= backends;
    // Buffer creation past the driver's memory budget fails as out-of-memory instead of
    // paging or crashing (Vulkan with VK_EXT_memory_budget).
    desc.memory_budget_thresholds.for_resource_creation = Some(95);
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu sees, GL included, from an instance of its own (probing GL can print
/// display noise, so this is for the `devices` listing and error messages only).
pub(crate) fn all_adapters() -> Vec<wgpu::Adapter> {
    let instance = instance_of(wgpu::Backends::all());
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

pub(crate) fn compute_adapters(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(COMPUTE_BACKENDS))
}

/// The Vulkan, Metal or DX12 adapter whose name contains `name` (case-insensitive), or with
/// `None` the best kind present (discrete, integrated, virtual, then CPU). The error lists
/// every adapter seen, so a user can correct the name.
pub(crate) fn choose(instance: &wgpu::Instance, name: Option<&str>) -> Result<wgpu::Adapter> {
    let mut usable = compute_adapters(instance);
    let seen = || {
        all_adapters()
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match name {
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
                })
        }
        None => {
            usable.sort_by_key(|a| preference(a.get_info().device_type));
            usable.into_iter().next().ok_or_else(|| {
                KernelError::Device(format!(
                    "no Vulkan, Metal or DX12 adapter found; adapters seen: [{}]",
                    seen()
                ))
            })
        }
    }
}

/// Preference when no name is given: real GPUs before software rasterisers.
fn preference(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

pub(crate) fn device_type(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

/// The PCI vendor id as a name (AMD's CPU id too, which APUs report).
pub(crate) fn vendor_name(id: u32) -> String {
    match id {
        0x10de => "NVIDIA".into(),
        0x1002 | 0x1022 => "AMD".into(),
        0x8086 => "Intel".into(),
        0x106b => "Apple".into(),
        0x13b5 => "ARM".into(),
        0x5143 => "Qualcomm".into(),
        0x10005 => "Mesa".into(),
        0 => String::new(),
        other => format!("0x{other:04x}"),
    }
}

/// The largest device-local Vulkan memory heap behind `adapter`: what a layer's working set
/// is checked against before any work starts. None off Vulkan (wgpu has no portable query).
#[cfg(any(target_os = "linux", target_os = "windows", target_os = "android"))]
pub(crate) fn device_local_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    use ash::vk;
    // SAFETY: the hal adapter is only read (its instance and physical device handles), while
    // the wgpu adapter that owns it is alive.
    unsafe {
        let hal = adapter.as_hal::<wgpu::hal::api::Vulkan>()?;
        let props = hal
            .shared_instance()
            .raw_instance()
            .get_physical_device_memory_properties(hal.raw_physical_device());
        props
            .memory_heaps_as_slice()
            .iter()
            .filter(|h| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
            .map(|h| h.size)
            .max()
    }
}

#[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "android")))]
pub(crate) fn device_local_memory(_adapter: &wgpu::Adapter) -> Option<u64> {
    None
}
