//! A CubeCL runtime that compiles instead of running: its compiler is CubeCL's CUDA compiler,
//! its device properties those of the target architecture (see [`super::props`]), its buffers
//! live in host memory, and every kernel it is handed is turned into CUDA C++ and recorded with
//! its cube count, never executed. The backend's own launch code runs unchanged on it.
//!
//! Nothing a kernel would write is ever written: a read returns what the host last wrote there
//! (zeros for a fresh buffer). The host-initialised failure flags (`u32::MAX`, "no failure")
//! therefore read back as success, so every op case runs its whole launch sequence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cubecl::bytes::Bytes;
use cubecl::device::{Device, DeviceId, DeviceService, ServerUtilitiesHandle};
use cubecl::future::DynFut;
use cubecl::ir::TargetProperties;
use cubecl::prelude::*;
use cubecl::profile::ProfileDuration;
use cubecl::server::{
    Binding, ComputeServer, CopyDescriptor, IoError, KernelArguments, ProfileError, ProfilingToken,
    ServerCommunication, ServerError, ServerUtilities,
};
use cubecl::stream_id::StreamId;
use cubecl::zspace::{striding::has_pitched_row_major_strides, Shape, Strides};
use cubecl::{CubeTask, MemoryConfiguration, MemoryUsage};
use cubecl_common::backtrace::BackTrace;
use cubecl_cpp::shared::CompilationOptions;
use cubecl_runtime::allocator::PitchedMemoryLayoutPolicy;
use cubecl_runtime::id::KernelId;
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::memory_management::{
    ManagedMemoryHandle, MemoryAllocationMode, MemoryManagement, MemoryManagementOptions,
};
use cubecl_runtime::storage::ManagedResource;
use cubecl_runtime::timestamp_profiler::TimestampProfiler;

use super::storage::{HostSlice, HostStorage};
use super::target::{Target, TARGETS};
use cubecl::cuda::{CudaCompiler, CudaRuntime};

/// One distinct kernel (its CubeCL id: type, comptime arguments, cube dim, mode) and the CUDA
/// C++ CubeCL generated for it, or why it could not.
#[derive(Clone, Debug)]
pub struct KernelSource {
    /// The entry point (the `#[cube]` function's name).
    pub name: String,
    /// A short stable hash of the kernel's id without its cube dim: comptime arguments,
    /// element types, vectorisation, execution mode.
    pub variant: String,
    /// The full id, for a reader who needs to tell two variants apart.
    pub id: String,
    pub cube_dim: [u32; 3],
    /// Shared memory CubeCL launches the kernel with (its dynamic shared memory), bytes.
    pub dynamic_shared: usize,
    pub source: Result<String, String>,
}

/// What the runtime of one target has seen: every distinct kernel, and the launches since the
/// last [`take_launches`] as (index into `kernels`, cubes).
#[derive(Default)]
struct Record {
    kernels: Vec<KernelSource>,
    index: HashMap<KernelId, usize>,
    launches: Vec<(usize, u64)>,
}

static RECORDS: Mutex<Vec<(u32, Record)>> = Mutex::new(Vec::new());

fn records() -> MutexGuard<'static, Vec<(u32, Record)>> {
    // A panic elsewhere while holding the lock leaves the record usable.
    RECORDS.lock().unwrap_or_else(|e| e.into_inner())
}

fn with_record<T>(version: u32, f: impl FnOnce(&mut Record) -> T) -> T {
    let mut all = records();
    let i = match all.iter().position(|(v, _)| *v == version) {
        Some(i) => i,
        None => {
            all.push((version, Record::default()));
            all.len() - 1
        }
    };
    f(&mut all[i].1)
}

/// Every distinct kernel launched so far on `target`, in first-launch order.
pub fn kernels(target: &Target) -> Vec<KernelSource> {
    with_record(target.version, |r| r.kernels.clone())
}

/// The launches on `target` since the last call: (index into [`kernels`], cubes).
pub fn take_launches(target: &Target) -> Vec<(usize, u64)> {
    with_record(target.version, |r| std::mem::take(&mut r.launches))
}

/// The runtime: CubeCL's CUDA compiler over a server that records instead of running.
#[derive(Debug, Clone)]
pub struct CompileOnlyRuntime;

/// A target architecture, as a CubeCL device (its id's index is the compute capability).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CompileOnlyDevice {
    pub version: u32,
}

impl Default for CompileOnlyDevice {
    fn default() -> Self {
        Self {
            version: TARGETS[0].version,
        }
    }
}

impl Device for CompileOnlyDevice {
    fn from_id(id: DeviceId) -> Self {
        Self {
            version: id.index_id as u32,
        }
    }

    fn to_id(&self) -> DeviceId {
        DeviceId {
            // Apart from CUDA's own devices (type 0), should both live in one process.
            type_id: 0x5eed,
            index_id: self.version as u16,
        }
    }
}

impl Runtime for CompileOnlyRuntime {
    type Compiler = CudaCompiler;
    type Server = CompileOnlyServer;
    type Device = CompileOnlyDevice;

    fn client(device: &Self::Device) -> ComputeClient<Self> {
        ComputeClient::load(device)
    }

    fn name(_client: &ComputeClient<Self>) -> &'static str {
        "cuda-compile-only"
    }

    fn require_array_lengths() -> bool {
        CudaRuntime::require_array_lengths()
    }

    fn max_cube_count() -> (u32, u32, u32) {
        CudaRuntime::max_cube_count()
    }

    fn can_read_tensor(shape: &Shape, strides: &Strides) -> bool {
        has_pitched_row_major_strides(shape, strides)
    }

    fn target_properties() -> TargetProperties {
        CudaRuntime::target_properties()
    }

    fn enumerate_devices(_: u16, _: &()) -> Vec<DeviceId> {
        TARGETS
            .iter()
            .map(|t| CompileOnlyDevice { version: t.version }.to_id())
            .collect()
    }
}

pub struct CompileOnlyServer {
    version: u32,
    options: CompilationOptions,
    utilities: Arc<ServerUtilities<Self>>,
    memory: MemoryManagement<HostStorage>,
    timestamps: TimestampProfiler,
    cursor: u64,
}

impl std::fmt::Debug for CompileOnlyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompileOnlyServer(sm_{})", self.version)
    }
}

impl DeviceService for CompileOnlyServer {
    fn init(id: DeviceId) -> Self {
        let version = CompileOnlyDevice::from_id(id).version;
        // Only `compile_only()` makes devices, from the target table.
        let target = TARGETS
            .iter()
            .find(|t| t.version == version)
            .unwrap_or(&TARGETS[0]);
        let (properties, options) = super::props::device_properties(target);
        let logger = Arc::new(ServerLogger::default());
        let memory = MemoryManagement::from_configuration(
            HostStorage::default(),
            &properties.memory,
            MemoryConfiguration::ExclusivePages,
            logger.clone(),
            MemoryManagementOptions::new("compile-only").mode(MemoryAllocationMode::Auto),
        );
        let policy = PitchedMemoryLayoutPolicy::new(properties.memory.alignment as usize);
        let utilities = ServerUtilities::new(properties, logger, (), policy);
        Self {
            version: target.version,
            options,
            utilities: Arc::new(utilities),
            memory,
            timestamps: TimestampProfiler::default(),
            cursor: 0,
        }
    }

    fn utilities(&self) -> ServerUtilitiesHandle {
        self.utilities.clone() as ServerUtilitiesHandle
    }
}

fn io(e: IoError) -> ServerError {
    ServerError::Io(e)
}

impl CompileOnlyServer {
    /// The bytes behind `binding`: `len` of them from its start.
    fn bytes(&mut self, binding: Binding, len: usize) -> Result<Vec<u8>, IoError> {
        let r =
            self.memory
                .get_resource(binding.memory, binding.offset_start, binding.offset_end)?;
        Ok(r.read(len))
    }

    fn record(&mut self, kernel: &dyn CubeTask<CudaCompiler>, mode: ExecutionMode) -> usize {
        let mut id = kernel.id();
        id.mode(mode);
        if let Some(&i) = with_record(self.version, |r| r.index.get(&id).copied()).as_ref() {
            return i;
        }
        let cube_dim = id.cube_dim;
        let stable = id.stable_format();
        // The variant names everything but the cube dim, which has its own column.
        let without_dim = stable.replace(&format!("{cube_dim:?}"), "");
        let compiled = kernel.compile(
            &mut Default::default(),
            &self.options,
            mode,
            kernel.address_type(),
        );
        let (name, dynamic_shared, source) = match compiled {
            Ok(c) => (
                c.entrypoint_name.clone(),
                c.repr.as_ref().map_or(0, |r| r.shared_memory_size()),
                Ok(c.source),
            ),
            Err(e) => (short_name(kernel.name()), 0, Err(e.to_string())),
        };
        let entry = KernelSource {
            name,
            variant: format!("{:08x}", fnv1a(without_dim.as_bytes()) as u32),
            id: stable,
            cube_dim: [cube_dim.x, cube_dim.y, cube_dim.z],
            dynamic_shared,
            source,
        };
        with_record(self.version, |r| {
            if let Some(&i) = r.index.get(&id) {
                return i;
            }
            r.kernels.push(entry);
            r.index.insert(id, r.kernels.len() - 1);
            r.kernels.len() - 1
        })
    }
}

/// `a::b::C<T>` → `C`: the kernel's type without its path and generics.
fn short_name(type_name: &str) -> String {
    let base = type_name.split('<').next().unwrap_or(type_name);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// FNV-1a: a stable hash across runs and platforms (std's hasher is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

impl ComputeServer for CompileOnlyServer {
    type Kernel = Box<dyn CubeTask<CudaCompiler>>;
    type Info = ();
    type MemoryLayoutPolicy = PitchedMemoryLayoutPolicy;
    type Storage = HostStorage;

    fn initialize_memory(&mut self, memory: ManagedMemoryHandle, size: u64, _: StreamId) {
        self.cursor += 1;
        // Host memory: an allocation fails only when the process runs out, as it would anyway.
        let reserved = self.memory.reserve(size).expect("host allocation");
        let binding = memory.clone().binding();
        self.memory
            .bind(reserved, memory, self.cursor)
            .expect("binding a fresh reservation");
        // Pages are reused: without this a buffer would read back an earlier one's bytes (a
        // mask with bits past its last column, say), where the device would have written.
        self.memory
            .get_resource(binding, None, None)
            .expect("a bound handle")
            .zero();
    }

    fn logger(&self) -> Arc<ServerLogger> {
        self.utilities.logger.clone()
    }

    fn utilities(&self) -> Arc<ServerUtilities<Self>> {
        self.utilities.clone()
    }

    fn read(
        &mut self,
        descriptors: Vec<CopyDescriptor>,
        _: StreamId,
    ) -> DynFut<Result<Vec<Bytes>, ServerError>> {
        let out: Result<Vec<Bytes>, ServerError> = descriptors
            .into_iter()
            .map(|d| {
                let len = d.shape.iter().product::<usize>() * d.elem_size;
                self.bytes(d.handle, len)
                    .map(Bytes::from_bytes_vec)
                    .map_err(io)
            })
            .collect();
        Box::pin(async move { out })
    }

    fn write(&mut self, descriptors: Vec<(CopyDescriptor, Bytes)>, _: StreamId) {
        for (d, data) in descriptors {
            let b = d.handle;
            // Writes only come from the client's own uploads of handles it just made.
            self.memory
                .get_resource(b.memory, b.offset_start, b.offset_end)
                .expect("a live handle")
                .write(&data);
        }
    }

    fn sync(&mut self, _: StreamId) -> DynFut<Result<(), ServerError>> {
        Box::pin(async { Ok(()) })
    }

    fn get_resource(
        &mut self,
        _binding: Binding,
        _: StreamId,
    ) -> Result<ManagedResource<HostSlice>, ServerError> {
        Err(io(IoError::UnsupportedIoOperation {
            backtrace: BackTrace::capture(),
        }))
    }

    unsafe fn launch(
        &mut self,
        kernel: Self::Kernel,
        count: CubeCount,
        _bindings: KernelArguments,
        mode: ExecutionMode,
        _: StreamId,
    ) {
        let cubes = match count {
            CubeCount::Static(x, y, z) => x as u64 * y as u64 * z as u64,
            // The count the host last wrote there: what the kernel that fills it would compute
            // is not known here.
            CubeCount::Dynamic(binding) => match self.bytes(binding, 12) {
                Ok(b) => b
                    .chunks(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64)
                    .product(),
                Err(_) => 0,
            },
        };
        let i = self.record(kernel.as_ref(), mode);
        with_record(self.version, |r| r.launches.push((i, cubes)));
    }

    fn flush(&mut self, _: StreamId) -> Result<(), ServerError> {
        Ok(())
    }

    fn memory_usage(&mut self, _: StreamId) -> Result<MemoryUsage, ServerError> {
        Ok(self.memory.memory_usage())
    }

    fn memory_cleanup(&mut self, _: StreamId) {
        self.memory.cleanup(true);
    }

    fn start_profile(&mut self, _: StreamId) -> Result<ProfilingToken, ServerError> {
        Ok(self.timestamps.start())
    }

    fn end_profile(
        &mut self,
        _: StreamId,
        token: ProfilingToken,
    ) -> Result<ProfileDuration, ProfileError> {
        self.timestamps.stop(token)
    }

    fn allocation_mode(&mut self, mode: MemoryAllocationMode, _: StreamId) {
        self.memory.mode(mode);
    }
}

impl ServerCommunication for CompileOnlyServer {
    const SERVER_COMM_ENABLED: bool = false;
}
