//! Finding the device: the wgpu adapter CubeCL's wgpu runtime runs on (chosen here, by name
//! if asked, so the user knows which one ran), its memory budget, and on CUDA a check that the
//! driver can be loaded before CubeCL is asked for a client (CubeCL would otherwise panic on
//! its device thread).

use std::sync::Mutex;

use cubecl::wgpu::{RuntimeOptions, WgpuDevice, WgpuSetup};

use crate::adapter;
use crate::error::{KernelError, Result};
use crate::ops::BackendInfo;

/// One wgpu device per adapter per process, shared by every backend made for it, so kernels
/// compile once and concurrent users queue on one device thread.
struct Opened {
    key: String,
    device: WgpuDevice,
    info: BackendInfo,
    budget: Option<u64>,
    wgpu: (wgpu::Device, wgpu::Queue),
}

/// What opening an adapter gives a backend.
pub struct WgpuOpened {
    pub device: WgpuDevice,
    pub info: BackendInfo,
    pub budget: Option<u64>,
    /// The wgpu device and queue under CubeCL's, for the timestamp clock.
    pub wgpu: (wgpu::Device, wgpu::Queue),
}

static OPENED: Mutex<Vec<Opened>> = Mutex::new(Vec::new());

/// The wgpu device for the adapter whose name contains `name` (case-insensitive), or the best
/// adapter (discrete, integrated, virtual, then CPU) when `name` is None. OpenGL adapters are
/// not considered: CubeCL's compute path targets Vulkan, Metal and DX12.
pub fn wgpu_device(name: Option<&str>) -> Result<WgpuOpened> {
    let instance = adapter::instance();
    let adapter = adapter::choose(&instance, name)?;
    let ai = adapter.get_info();
    let key = format!("{:?}/{}/{}", ai.backend, ai.name, ai.device);
    let mut opened = OPENED
        .lock()
        .map_err(|_| KernelError::Device("the device registry was poisoned".into()))?;
    if let Some(o) = opened.iter().find(|o| o.key == key) {
        return Ok(WgpuOpened {
            device: o.device.clone(),
            info: o.info.clone(),
            budget: o.budget,
            wgpu: o.wgpu.clone(),
        });
    }
    let budget = adapter::device_local_memory(&adapter);
    // The same request CubeCL makes for its own adapters: every feature the adapter has (less
    // mappable primary buffers) and its full limits.
    let (device, queue) = pollster::block_on(
        adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("prunebench-cubecl"),
            required_features: adapter
                .features()
                .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
            required_limits: adapter.limits(),
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            trace: wgpu::Trace::Off,
            // SAFETY: the same experimental features CubeCL enables for the devices it creates.
            experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
        }),
    )
    .map_err(|e| KernelError::Device(format!("requesting a device on '{}': {e}", ai.name)))?;
    let info = BackendInfo {
        backend: "cubecl-wgpu".into(),
        device: ai.name.clone(),
        vendor: adapter::vendor_name(ai.vendor),
        api: format!("{:?}", ai.backend),
        driver: format!("{} {}", ai.driver, ai.driver_info)
            .trim()
            .to_string(),
        device_type: adapter::device_type(ai.device_type).into(),
        limits: Vec::new(),
    };
    let handles = (device.clone(), queue.clone());
    let setup = WgpuSetup {
        instance,
        adapter,
        device,
        queue,
        backend: ai.backend,
    };
    let wd = cubecl::wgpu::init_device(setup, RuntimeOptions::default());
    opened.push(Opened {
        key,
        device: wd.clone(),
        info: info.clone(),
        budget,
        wgpu: handles.clone(),
    });
    Ok(WgpuOpened {
        device: wd,
        info,
        budget,
        wgpu: handles,
    })
}

#[cfg(feature = "cuda")]
pub mod cuda {
    //! The CUDA driver, looked for before CubeCL's CUDA runtime is touched.

    use cudarc::driver::result::device;
    use cudarc::driver::sys::CUdevice_attribute as Attr;

    use crate::error::{KernelError, Result};
    use crate::ops::BackendInfo;

    pub const NO_DRIVER: &str = "CUDA: no driver found (libcuda could not be loaded)";

    /// What the driver says about device `index`: (info, total memory in bytes).
    pub fn probe(index: usize) -> Result<(BackendInfo, u64)> {
        // SAFETY: only tries to dlopen the driver library; nothing is called through it yet.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(KernelError::Unsupported(NO_DRIVER.into()));
        }
        let fail = |what: &str, e: cudarc::driver::DriverError| {
            KernelError::Unsupported(format!("CUDA: {what}: {e:?}"))
        };
        cudarc::driver::result::init().map_err(|e| fail("driver initialisation failed", e))?;
        let count = device::get_count().map_err(|e| fail("counting devices", e))? as usize;
        if index >= count {
            return Err(KernelError::Unsupported(format!(
                "CUDA: no device {index} (the driver lists {count})"
            )));
        }
        // SAFETY: only tries to dlopen NVRTC, which CubeCL needs to compile its kernels.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(KernelError::Unsupported(
                "CUDA: NVRTC not found (libnvrtc could not be loaded); CubeCL compiles its \
                 kernels with it"
                    .into(),
            ));
        }
        let dev = device::get(index as i32).map_err(|e| fail("opening the device", e))?;
        let name = device::get_name(dev).map_err(|e| fail("reading the device name", e))?;
        // SAFETY: attribute and memory queries on a device handle the driver just returned.
        let (major, minor, mem, driver) = unsafe {
            let major =
                device::get_attribute(dev, Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                    .map_err(|e| fail("reading the compute capability", e))?;
            let minor =
                device::get_attribute(dev, Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
                    .map_err(|e| fail("reading the compute capability", e))?;
            let mem = device::total_mem(dev).map_err(|e| fail("reading the memory size", e))?;
            let mut v = 0i32;
            cudarc::driver::sys::cuDriverGetVersion(&mut v);
            (major, minor, mem as u64, v)
        };
        let info = BackendInfo {
            backend: "cubecl-cuda".into(),
            device: name,
            vendor: "NVIDIA".into(),
            api: "CUDA".into(),
            driver: format!(
                "CUDA driver {}.{}, compute capability {major}.{minor}",
                driver / 1000,
                (driver % 1000) / 10
            ),
            device_type: "discrete".into(),
            limits: vec![
                ("compute_capability".into(), (major * 10 + minor) as u64),
                ("memory_bytes".into(), mem),
            ],
        };
        Ok((info, mem))
    }

    /// One line for a `devices` listing.
    pub fn status() -> String {
        // SAFETY: as in `probe`.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return "CUDA: no driver found".into();
        }
        if let Err(e) = cudarc::driver::result::init() {
            return format!("CUDA: driver initialisation failed ({e:?})");
        }
        let count = match device::get_count() {
            Ok(c) => c as usize,
            Err(e) => return format!("CUDA: counting devices failed ({e:?})"),
        };
        if count == 0 {
            return "CUDA: driver loaded, no device".into();
        }
        (0..count)
            .map(|i| match probe(i) {
                Ok((info, mem)) => format!(
                    "CUDA device {i}: {} ({}, {:.1} GiB)",
                    info.device,
                    info.driver,
                    mem as f64 / (1u64 << 30) as f64
                ),
                Err(e) => format!("CUDA device {i}: {e}"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
