//! The device properties and compiler options CubeCL's CUDA runtime would set up for a GPU of
//! the target architecture (`CudaServer::init` in cubecl-cuda 0.10, which asks the driver):
//! kernels read these while they are defined (plane operations, atomics, shared memory), so
//! the source generated here is the source a GPU of that architecture would compile.
//! Keep in step with cubecl-cuda when CubeCL is upgraded.

use cubecl::ir::features::{AtomicUsage, Plane, Tma, TypeUsage};
use cubecl::ir::{
    BarrierLevel, DeviceProperties, ElemType, FloatKind, HardwareProperties,
    MemoryDeviceProperties, OpaqueType, SemanticType, StorageType, Type, VectorSize,
};
use cubecl::profile::TimingMethod;
use cubecl_cpp::cuda::arch::CudaArchitecture;
use cubecl_cpp::cuda::mma::CudaWmmaCompiler;
use cubecl_cpp::shared::{
    register_mma_features, register_scaled_mma_features, register_wmma_features,
    CompilationOptions, CppSupportedFeatures,
};
use cubecl_cpp::{register_supported_types, DialectWmmaCompiler};

use super::target::Target;

/// cudarc's CUDA version at build time (cubecl-cuda gates `fast_tanh` on it the same way).
const CUDA_VERSION: u32 = cudarc::driver::sys::CUDA_VERSION;

/// What `CudaServer::init` queries from the driver, from the target's table instead.
pub fn device_properties(t: &Target) -> (DeviceProperties, CompilationOptions) {
    let version = t.version;
    let arch = CudaArchitecture { version };
    let wmma = CudaWmmaCompiler::supported_wmma_combinations(&arch);
    let mma = CudaWmmaCompiler::supported_mma_combinations(&arch);
    let scaled_mma = CudaWmmaCompiler::supported_scaled_mma_combinations(&arch);
    let warp_size = 32;
    let mut options = CompilationOptions {
        warp_size,
        supports_features: CppSupportedFeatures {
            fast_math: true,
            ..Default::default()
        },
    };
    let memory = MemoryDeviceProperties {
        max_page_size: t.memory_bytes / 4,
        alignment: 512,
    };
    let hardware = HardwareProperties {
        load_width: 128,
        plane_size_min: warp_size,
        plane_size_max: warp_size,
        max_bindings: cubecl::cuda::CUDA_MAX_BINDINGS,
        max_shared_memory_size: t.shared_per_block as usize,
        max_cube_count: (i32::MAX as u32, u16::MAX as u32, u16::MAX as u32),
        max_units_per_cube: t.threads_per_block,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: Some(t.sms),
        num_tensor_cores: match version {
            70 | 75 => Some(8),
            80 | 86 | 89 | 90 => Some(4),
            _ => None,
        },
        min_tensor_cores_dim: (!wmma.is_empty()).then_some(8),
        num_cpu_cores: None,
        max_vector_size: VectorSize::MAX,
    };
    let mut p = DeviceProperties::new(Default::default(), memory, hardware, TimingMethod::System);
    register_supported_types(&mut p);
    p.register_type_usage(ElemType::Float(FloatKind::TF32), TypeUsage::Conversion);
    let atomic =
        |kind, width| Type::new(StorageType::Atomic(ElemType::Float(kind))).with_vector_size(width);
    if version >= 60 {
        p.register_atomic_type_usage(
            atomic(FloatKind::F64, 1),
            AtomicUsage::Add | AtomicUsage::LoadStore,
        );
    }
    if version >= 70 {
        for width in [1, 2] {
            p.register_atomic_type_usage(
                atomic(FloatKind::F16, width),
                AtomicUsage::Add | AtomicUsage::LoadStore,
            );
        }
        p.register_semantic_type(SemanticType::Pipeline);
        p.register_type_usage(OpaqueType::Barrier(BarrierLevel::Unit), TypeUsage::Buffer);
        p.register_type_usage(OpaqueType::Barrier(BarrierLevel::Cube), TypeUsage::Buffer);
        p.features.plane.insert(Plane::Sync);
        options.supports_features.grid_constants = true;
    }
    if version >= 75 {
        for kind in [FloatKind::F16, FloatKind::BF16] {
            p.features
                .matmul
                .ldmatrix
                .insert(ElemType::Float(kind).into());
        }
        options.supports_features.fast_tanh = CUDA_VERSION >= 12080;
    }
    if version >= 80 {
        p.features.copy_async = true;
    }
    if version >= 89 {
        for kind in [FloatKind::E4M3, FloatKind::E5M2] {
            p.register_type_usage(
                ElemType::Float(kind),
                TypeUsage::Conversion | TypeUsage::Buffer,
            );
        }
    }
    if version >= 90 {
        p.features.tma.insert(Tma::Base);
        p.register_semantic_type(SemanticType::TensorMap);
        p.features.cube_cluster = true;
        options.supports_features.clusters = true;
        options.supports_features.elect_sync = true;
        for kind in [FloatKind::F16, FloatKind::BF16] {
            p.features
                .matmul
                .stmatrix
                .insert(ElemType::Float(kind).into());
        }
        for width in [2, 4] {
            p.register_atomic_type_usage(
                atomic(FloatKind::F32, width),
                AtomicUsage::LoadStore | AtomicUsage::Add,
            );
        }
    }
    p.features.memory_reinterpret = true;
    p.features.alignment = true;
    p.features.plane.insert(Plane::Ops);
    p.features.plane.insert(Plane::NonUniformControlFlow);
    register_wmma_features(wmma, &mut p);
    register_mma_features(mma, &mut p);
    register_scaled_mma_features(scaled_mma, &mut p);
    (p, options)
}
