//! Backend names, availability, and running one generic job on whichever backend the user
//! chose (the op trait has associated types, so each backend is a separate instantiation).

use anyhow::{bail, Result};

use prunebench_kernels::cpu::CpuBackend;
use prunebench_kernels::Backend;

/// A piece of work generic over the backend.
pub trait BackendJob {
    type Output;
    fn run<B: Backend>(self, backend: &B) -> Result<Self::Output>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Cpu,
    Wgpu,
    CubeWgpu,
    CubeCuda,
}

impl Choice {
    pub fn name(&self) -> &'static str {
        match self {
            Choice::Cpu => "cpu",
            Choice::Wgpu => "wgpu",
            Choice::CubeWgpu => "cubecl-wgpu",
            Choice::CubeCuda => "cubecl-cuda",
        }
    }

    fn compiled_in(&self) -> Option<&'static str> {
        match self {
            Choice::Cpu => None,
            Choice::Wgpu if cfg!(feature = "wgpu") => None,
            Choice::Wgpu => Some("built without the `wgpu` feature"),
            Choice::CubeWgpu if cfg!(feature = "cubecl") => None,
            Choice::CubeWgpu => Some("built without the `cubecl` feature"),
            Choice::CubeCuda if cfg!(feature = "cuda") => None,
            Choice::CubeCuda => {
                Some("built without the `cuda` feature (cargo build --release --features cuda)")
            }
        }
    }
}

const ALL: [Choice; 4] = [
    Choice::Cpu,
    Choice::Wgpu,
    Choice::CubeWgpu,
    Choice::CubeCuda,
];

/// Resolves `auto` and checks the name: a GPU if one is present (CUDA through CubeCL, else a
/// hardware adapter through wgpu), else the CPU reference.
pub fn resolve(name: &str) -> Result<Choice> {
    let name = name.trim().to_ascii_lowercase();
    if name == "auto" {
        return Ok(auto());
    }
    let Some(choice) = ALL.into_iter().find(|c| c.name() == name) else {
        bail!(
            "unknown backend '{name}': expected auto, {}",
            ALL.map(|c| c.name()).join(", ")
        );
    };
    if let Some(why) = choice.compiled_in() {
        bail!("backend {}: {why}", choice.name());
    }
    Ok(choice)
}

fn auto() -> Choice {
    #[cfg(feature = "cuda")]
    if prunebench_kernels::cube::cuda_driver_present() {
        return Choice::CubeCuda;
    }
    #[cfg(feature = "wgpu")]
    if prunebench_kernels::wgpu::list_compute_adapters()
        .iter()
        .any(is_hardware)
    {
        return Choice::Wgpu;
    }
    Choice::Cpu
}

/// A real GPU, not a software rasteriser such as lavapipe.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
pub fn is_hardware(info: &prunebench_kernels::BackendInfo) -> bool {
    matches!(
        info.device_type.as_str(),
        "discrete" | "integrated" | "virtual"
    )
}

/// Builds the chosen backend and runs `job` on it.
pub fn dispatch<J: BackendJob>(choice: Choice, adapter: Option<&str>, job: J) -> Result<J::Output> {
    match choice {
        Choice::Cpu => {
            if adapter.is_some() {
                bail!("--adapter applies to the wgpu backends, not to cpu");
            }
            job.run(&CpuBackend::new())
        }
        #[cfg(feature = "wgpu")]
        Choice::Wgpu => job.run(&prunebench_kernels::wgpu::WgpuBackend::new(adapter)?),
        #[cfg(feature = "cubecl")]
        Choice::CubeWgpu => job.run(&prunebench_kernels::cube::cube_wgpu(adapter)?),
        #[cfg(feature = "cuda")]
        Choice::CubeCuda => {
            let index = match adapter {
                None => 0,
                Some(a) => a.parse().map_err(|_| {
                    anyhow::anyhow!("--adapter for cubecl-cuda is a device index, got '{a}'")
                })?,
            };
            job.run(&prunebench_kernels::cube::cube_cuda(index)?)
        }
        #[allow(unreachable_patterns)]
        other => bail!("backend {} is not compiled in", other.name()),
    }
}
