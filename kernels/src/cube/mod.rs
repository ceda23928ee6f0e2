//! The CubeCL backend: every op of ALGORITHMS.md §1-§9 as `#[cube]` kernels, generic over
//! `cubecl::Runtime`, run on CubeCL's wgpu runtime (`cubecl-wgpu`: Vulkan, Metal, DX12) and on
//! CUDA (`cubecl-cuda`, with the `cuda` feature).
//!
//! The compressed weight formats of §13 are stored in the host layout of [`crate::formats`]
//! ([`CubePacked`]), converted to and from f16 in integer arithmetic inside the kernels.
//!
//! Everything runs on the device; the host only orchestrates launches, does scalar arithmetic
//! on launch parameters (k = floor(p·n), the running-mean factors, λ = percdamp·sum/n from a
//! device-side sum of the diagonal) and reads back the handful of values the trait returns or
//! that decide an error: the dead-column flags of §6, the Cholesky failure flag and the first
//! non-finite index, the OBS loss, the traces of §9 and the structured removal loss of §11 (each
//! summed on the device first).
//! Tensors larger than the device's largest binding are split into row slabs (see
//! [`storage`]), and every kernel works slab by slab.

mod clock;
#[cfg(feature = "cuda")]
pub mod compile_only;
mod device;
mod kernels;
mod storage;

use cubecl::prelude::*;

use crate::compose;
use crate::error::{KernelError, Result};
use crate::formats::{PackedWeight, WeightFormat};
use crate::ops::{
    Backend, BackendInfo, GradNorm, HinvExplicit, HinvFactor, MaskPattern, ObsOutcome,
    ObsSelection, ReconError, Score, TaylorInputs, TimeSource,
};
use crate::tensor::{Mask, Matrix};
pub use kernels::gemm::tile_shape as gemm_tile;
use kernels::{
    attention_backward, backward, factor, forward, grad, obs, recon, score, select, sparse, stats,
    structured,
};
pub use storage::{CubeMask, CubePacked, CubeTensor, Slabs, Words, ROW_ALIGN};

/// Slabs stay below 2 GiB even where the runtime would allow larger pages, so every element
/// index inside a binding fits the kernels' 32-bit address arithmetic.
const MAX_SLAB_BYTES: u64 = 1 << 31;

/// A CubeCL backend over runtime `R`.
pub struct CubeBackend<R: Runtime> {
    pub(crate) client: ComputeClient<R>,
    info: BackendInfo,
    /// Device memory the backend may use, where known.
    pub(crate) budget: Option<u64>,
    /// Largest slab of a tensor, in bytes (the binding limit unless lowered for testing).
    pub(crate) slab_limit: u64,
    /// The device's largest binding, in bytes: the bound for scratch buffers.
    pub(crate) max_binding: u64,
    /// Whether plane (warp/subgroup) operations are available: reductions use them then.
    pub(crate) plane: bool,
    /// The plane width where plane operations are available and every plane is that wide:
    /// the OBS in-block step then gives a row one plane and shares its pivot by a shuffle.
    pub(crate) plane_lanes: Option<u32>,
    /// Two waves of the device's multiprocessors where it reports them (0 where not): a GEMM
    /// launch that 128-wide tiles would leave below this takes 64 x 64 tiles.
    pub(crate) fill_cubes: usize,
    /// Shared memory per cube, in bytes.
    pub(crate) max_shared: usize,
    /// The device's largest cube count per grid dimension (x, y, z).
    pub(crate) max_cube_count: (u32, u32, u32),
    /// Fill every newly allocated output and scratch buffer with NaN (all bits set).
    pub(crate) poison: bool,
    /// The device clock on wgpu (see [`clock`]); None where CubeCL's profiler is used.
    clock: Option<clock::WgpuClock>,
    /// On a runtime that runs no kernel (the compile-only one), buffers above this many bytes
    /// hold no data: uploads to them are not copied, and they read back as zeros without a
    /// copy. The host reads back only what it wrote itself or small status words there.
    pub(crate) data_kept_up_to: Option<u64>,
}

/// CubeCL's wgpu runtime (Vulkan, Metal, DX12).
pub type CubeWgpuBackend = CubeBackend<cubecl::wgpu::WgpuRuntime>;

/// CubeCL's CUDA runtime.
#[cfg(feature = "cuda")]
pub type CubeCudaBackend = CubeBackend<cubecl::cuda::CudaRuntime>;

/// The CubeCL backend on CubeCL's wgpu runtime. With `Some(name)`, the first Vulkan, Metal or
/// DX12 adapter whose name contains `name` (case-insensitive); with `None`, the best adapter
/// (discrete, integrated, virtual, then CPU). `info().device` names the adapter used.
pub fn cube_wgpu(adapter: Option<&str>) -> Result<CubeWgpuBackend> {
    let opened = device::wgpu_device(adapter)?;
    let client = cubecl::wgpu::WgpuRuntime::client(&opened.device);
    let mut b = CubeBackend::from_client(client, opened.info, opened.budget);
    b.clock = clock::WgpuClock::new(opened.wgpu.0, opened.wgpu.1);
    Ok(b)
}

/// The CubeCL backend on CUDA device `device_index`. Looks for the driver (and NVRTC) first, so
/// a machine without them gets one clear `Unsupported` error instead of a panic.
#[cfg(feature = "cuda")]
pub fn cube_cuda(device_index: usize) -> Result<CubeCudaBackend> {
    let (info, memory) = device::cuda::probe(device_index)?;
    let client = cubecl::cuda::CudaRuntime::client(&cubecl::cuda::CudaDevice::new(device_index));
    Ok(CubeBackend::from_client(client, info, Some(memory)))
}

/// Whether a CUDA driver with at least one device (and NVRTC) can be used, without creating a
/// CubeCL client.
#[cfg(feature = "cuda")]
pub fn cuda_driver_present() -> bool {
    device::cuda::probe(0).is_ok()
}

/// One line per CUDA device (name, driver, compute capability, memory), or why there is none.
#[cfg(feature = "cuda")]
pub fn cuda_status() -> String {
    device::cuda::status()
}

impl<R: Runtime> CubeBackend<R> {
    fn from_client(client: ComputeClient<R>, mut info: BackendInfo, budget: Option<u64>) -> Self {
        let props = client.properties();
        let hw = &props.hardware;
        let max_cube_count = hw.max_cube_count;
        let max_binding = props.memory.max_page_size.min(MAX_SLAB_BYTES);
        let max_shared = hw.max_shared_memory_size;
        let fill_cubes = hw
            .num_streaming_multiprocessors
            .map_or(0, |sms| 2 * sms as usize);
        let plane = client
            .features()
            .plane
            .contains(cubecl::features::Plane::Ops);
        info.limits.extend([
            ("max_binding_bytes".to_string(), max_binding),
            (
                "max_shared_memory_bytes".to_string(),
                hw.max_shared_memory_size as u64,
            ),
            (
                "max_units_per_cube".to_string(),
                hw.max_units_per_cube as u64,
            ),
            ("max_cube_count_x".to_string(), hw.max_cube_count.0 as u64),
            ("plane_size_min".to_string(), hw.plane_size_min as u64),
            ("plane_size_max".to_string(), hw.plane_size_max as u64),
            ("plane_ops".to_string(), plane as u64),
        ]);
        let plane_lanes =
            (plane && hw.plane_size_min == hw.plane_size_max).then_some(hw.plane_size_max);
        if let Some(b) = budget {
            if !info.limits.iter().any(|(k, _)| k == "memory_bytes") {
                info.limits.push(("memory_bytes".to_string(), b));
            }
        }
        Self {
            client,
            info,
            budget,
            slab_limit: max_binding,
            max_binding,
            plane,
            plane_lanes,
            fill_cubes,
            max_shared,
            max_cube_count,
            poison: false,
            clock: None,
            data_kept_up_to: None,
        }
    }

    /// The cubes a launch should make to fill the device twice: two waves of its
    /// multiprocessors where it reports them, else the shared plan's default.
    pub(crate) fn fill_or_default(&self) -> usize {
        if self.fill_cubes > 0 {
            self.fill_cubes
        } else {
            crate::plan::groups::DEFAULT_FILL
        }
    }

    /// Splits tensors into slabs of at most `bytes` (never above the device's binding limit):
    /// the large-tensor path, exercised on small tensors. Tensors made before the change keep
    /// their slabs, so do this before uploading anything.
    pub fn with_binding_limit(mut self, bytes: u64) -> Self {
        self.slab_limit = bytes.clamp(4 * ROW_ALIGN as u64, self.max_binding);
        self
    }

    /// Fills every output and scratch buffer with NaN (all bits set) when it is allocated, so
    /// that any element a kernel fails to write shows up in the result.
    pub fn with_poisoned_outputs(mut self, on: bool) -> Self {
        self.poison = on;
        self
    }

    pub fn client(&self) -> &ComputeClient<R> {
        &self.client
    }

    /// The row partition this backend gives a `rows x cols` tensor.
    pub fn slabs(&self, rows: usize, cols: usize) -> Result<Slabs> {
        self.slabs_for(rows, cols)
    }
}

/// Lets a borrowed, non-`Send` closure cross into CubeCL's profiler.
struct AssertSend<'a>(&'a mut dyn FnMut() -> Result<()>);

// SAFETY: `ComputeClient::profile` blocks the calling thread until the closure has run on the
// device thread (like a scoped thread), so the borrow stays valid and is never used by two
// threads at once; the closure only drives this backend, whose client is thread-safe.
unsafe impl Send for AssertSend<'_> {}

impl AssertSend<'_> {
    fn run(self) -> Result<()> {
        (self.0)()
    }
}

impl<R: Runtime> Backend for CubeBackend<R> {
    type Tensor = CubeTensor;
    type Mask = CubeMask;
    type Packed = CubePacked;

    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn upload(&self, m: &Matrix) -> Result<CubeTensor> {
        self.upload_matrix(m)
    }

    fn download(&self, t: &CubeTensor) -> Result<Matrix> {
        self.download_matrix(t)
    }

    fn upload_mask(&self, m: &Mask) -> Result<CubeMask> {
        self.upload_packed_mask(m)
    }

    fn download_mask(&self, m: &CubeMask) -> Result<Mask> {
        self.download_packed_mask(m)
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<CubeTensor> {
        self.filled_tensor(rows, cols, 0.0)
    }

    fn shape(&self, t: &CubeTensor) -> (usize, usize) {
        t.shape()
    }

    fn synchronize(&self) -> Result<()> {
        cubecl::future::block_on(self.client.sync())
            .map_err(|e| KernelError::Device(format!("waiting for the device: {e:?}")))
    }

    fn memory_budget(&self) -> Option<u64> {
        self.budget
    }

    /// Times `work` on the device's clock where there is one: on wgpu, timestamps bracketing
    /// every submission of the work (see [`clock`]; CubeCL 0.10's wgpu profiler stops at the
    /// first compute pass); elsewhere CubeCL's profiler, which says whether it used device
    /// events or the host clock around a drained device (CubeCL 0.10's CUDA runtime does the
    /// latter), and that is what is reported.
    fn timed(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<(f64, TimeSource)> {
        self.synchronize()?;
        if let Some(clock) = &self.clock {
            let secs = clock.time(work, || {
                self.client
                    .flush()
                    .map_err(|e| KernelError::Device(format!("flushing: {e:?}")))
            })?;
            return Ok((secs, TimeSource::DeviceTimestamps));
        }
        let job = AssertSend(work);
        let (result, duration) = self
            .client
            .profile(move || job.run(), "prunebench")
            .map_err(|e| KernelError::Device(format!("profiling: {e:?}")))?;
        result?;
        let source = match duration.timing_method() {
            cubecl::profile::TimingMethod::Device => TimeSource::DeviceTimestamps,
            cubecl::profile::TimingMethod::System => TimeSource::WallClock,
        };
        let ticks = cubecl::future::block_on(duration.resolve());
        Ok((ticks.duration().as_secs_f64(), source))
    }

    fn act_stat_update(
        &self,
        act: &mut CubeTensor,
        seen: usize,
        x: &CubeTensor,
        batch: usize,
    ) -> Result<()> {
        stats::act_stat_update(self, act, seen, x, batch)
    }

    fn grad_accumulate(&self, acc: &mut CubeTensor, g: &CubeTensor, norm: GradNorm) -> Result<()> {
        grad::grad_accumulate(self, acc, g, norm)
    }

    fn grad_accumulate_fused(
        &self,
        acc: &mut CubeTensor,
        dy: &CubeTensor,
        x: &CubeTensor,
        norm: GradNorm,
    ) -> Result<()> {
        grad::grad_accumulate_fused(self, acc, dy, x, norm)
    }

    fn grad_finalize(&self, acc: &CubeTensor, norm: GradNorm) -> Result<CubeTensor> {
        grad::grad_finalize(self, acc, norm)
    }

    fn hessian_update(
        &self,
        h: &mut CubeTensor,
        seen: usize,
        x: &CubeTensor,
        batch: usize,
    ) -> Result<()> {
        stats::hessian_update(self, h, seen, x, batch)
    }

    fn score(&self, w: &CubeTensor, score: Score<'_, CubeTensor>) -> Result<CubeTensor> {
        score::score(self, w, score)
    }

    fn select_mask(&self, scores: &CubeTensor, pattern: MaskPattern) -> Result<CubeMask> {
        select::select_mask(self, scores, pattern)
    }

    fn apply_mask(&self, w: &mut CubeTensor, mask: &CubeMask) -> Result<()> {
        score::apply_mask(self, w, mask)
    }

    /// Per-row and N:M patterns: one kernel scores, selects and zeroes (scores are never
    /// stored). Whole-matrix selection needs every score before any row can be decided, so it
    /// runs score, select and apply one after another.
    fn prune_scored(
        &self,
        w: &mut CubeTensor,
        score: Score<'_, CubeTensor>,
        pattern: MaskPattern,
    ) -> Result<CubeMask> {
        select::prune_scored(self, w, score, pattern)
    }

    fn hinv_factor(&self, h: &CubeTensor, percdamp: f64) -> Result<HinvFactor<CubeTensor>> {
        factor::hinv_factor(self, h, percdamp)
    }

    fn obs_prune(
        &self,
        w: &mut CubeTensor,
        factor: &HinvFactor<CubeTensor>,
        selection: ObsSelection<'_, CubeMask>,
        block: usize,
    ) -> Result<ObsOutcome<CubeMask>> {
        compose::obs_prune(obs::ObsRun::new(self, w, factor), selection, block)
    }

    fn recon_error(
        &self,
        w: &CubeTensor,
        pruned: &CubeTensor,
        h: &CubeTensor,
    ) -> Result<ReconError> {
        recon::recon_error(self, w, pruned, h)
    }

    // §12, the re-fit ops: see [`kernels::refit`].
    fn refit_base(
        &self,
        wp: Option<&CubeTensor>,
        w: &CubeTensor,
        h: &CubeTensor,
    ) -> Result<(CubeTensor, CubeTensor)> {
        kernels::refit::refit_base(self, wp, w, h)
    }

    fn lora_grad(
        &self,
        inp: crate::ops::LoraInputs<'_, CubeTensor, CubeMask>,
    ) -> Result<crate::ops::LoraGrad<CubeTensor>> {
        kernels::refit::lora_grad(self, inp)
    }

    fn adamw_step(
        &self,
        param: &mut CubeTensor,
        grad: &CubeTensor,
        m: &mut CubeTensor,
        v: &mut CubeTensor,
        step: crate::ops::AdamStep,
    ) -> Result<()> {
        kernels::refit::adamw_step(self, param, grad, m, v, step)
    }

    fn lora_merge(
        &self,
        wp: &CubeTensor,
        mask: &CubeMask,
        b: &CubeTensor,
        a: &CubeTensor,
        form: crate::ops::LoraForm,
        s: f64,
    ) -> Result<CubeTensor> {
        kernels::refit::lora_merge(self, wp, mask, b, a, form, s)
    }

    fn row_scale(
        &self,
        w_hat: &mut CubeTensor,
        w: &CubeTensor,
        h: &CubeTensor,
    ) -> Result<CubeTensor> {
        kernels::refit::row_scale(self, w_hat, w, h)
    }

    fn norm_system(
        &self,
        pairs: &[(&CubeTensor, &CubeTensor)],
        h: &CubeTensor,
    ) -> Result<(CubeTensor, CubeTensor)> {
        kernels::refit::norm_system(self, pairs, h)
    }

    fn spd_solve(&self, m: &CubeTensor, rhs: &CubeTensor, percdamp: f64) -> Result<CubeTensor> {
        kernels::refit::spd_solve(self, m, rhs, percdamp)
    }

    // §11, the structured-pruning ops: see [`kernels::structured`].
    fn grad_sum(&self, acc: &mut CubeTensor, dy: &CubeTensor, x: &CubeTensor) -> Result<()> {
        structured::grad_sum(self, acc, dy, x)
    }

    fn hinv_explicit(&self, h: &CubeTensor, percdamp: f64) -> Result<HinvExplicit<CubeTensor>> {
        structured::hinv_explicit(self, h, percdamp)
    }

    fn obs_saliency(
        &self,
        w: &CubeTensor,
        hinv: &CubeTensor,
        width: usize,
        groups: &[usize],
    ) -> Result<CubeTensor> {
        structured::obs_saliency(self, w, hinv, width, groups)
    }

    fn taylor_saliency(&self, inp: TaylorInputs<'_, CubeTensor>) -> Result<CubeTensor> {
        structured::taylor_saliency(self, inp)
    }

    fn structured_update(
        &self,
        w: &mut CubeTensor,
        hinv: &mut CubeTensor,
        removed: &[usize],
    ) -> Result<f64> {
        compose::structured_update(&structured::Steps::new(self), w, hinv, removed)
    }

    fn compact(
        &self,
        w: &CubeTensor,
        rows: Option<&[usize]>,
        cols: Option<&[usize]>,
    ) -> Result<CubeTensor> {
        compose::compact(&structured::Steps::new(self), w, rows, cols)
    }

    fn copy(&self, dst: &mut CubeTensor, src: &CubeTensor) -> Result<()> {
        kernels::probe::copy(self, dst, src)
    }

    fn fma_probe(&self, t: &mut CubeTensor, iters: u32) -> Result<()> {
        kernels::probe::fma_probe(self, t, iters)
    }

    fn compress(
        &self,
        w: &CubeTensor,
        mask: &CubeMask,
        format: WeightFormat,
    ) -> Result<CubePacked> {
        sparse::compress::compress(self, w, mask, format)
    }

    fn decompress(&self, p: &CubePacked) -> Result<CubeTensor> {
        sparse::compress::decompress(self, p)
    }

    fn upload_packed(&self, p: &PackedWeight) -> Result<CubePacked> {
        self.upload_packed_weight(p)
    }

    fn download_packed(&self, p: &CubePacked) -> Result<PackedWeight> {
        self.download_packed_weight(p)
    }

    fn sparse_matmul(&self, x: &CubeTensor, w: &CubePacked) -> Result<CubeTensor> {
        sparse::matmul::sparse_matmul(self, x, w)
    }

    // §14, the LLaMA forward ops: see [`kernels::forward`].
    fn linear(&self, x: &CubeTensor, w: &CubeTensor) -> Result<CubeTensor> {
        forward::linear(self, x, w)
    }

    fn rms_norm(&self, x: &CubeTensor, gamma: &CubeTensor, eps: f64) -> Result<CubeTensor> {
        forward::rms_norm(self, x, gamma, eps)
    }

    fn rope(&self, x: &mut CubeTensor, cos: &CubeTensor, sin: &CubeTensor) -> Result<()> {
        forward::rope(self, x, cos, sin)
    }

    fn attention(
        &self,
        q: &CubeTensor,
        k: &CubeTensor,
        v: &CubeTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<CubeTensor> {
        forward::attention(self, q, k, v, heads, kv_heads, seq)
    }

    fn silu_mul(&self, gate: &CubeTensor, up: &CubeTensor) -> Result<CubeTensor> {
        forward::silu_mul(self, gate, up)
    }

    fn residual_add(&self, x: &mut CubeTensor, y: &CubeTensor) -> Result<()> {
        forward::residual_add(self, x, y)
    }

    fn embed(&self, table: &CubeTensor, ids: &[u32]) -> Result<CubeTensor> {
        forward::embed(self, table, ids)
    }

    fn lm_head_chunk(
        &self,
        state: &mut CubeTensor,
        h: &CubeTensor,
        w_chunk: &CubeTensor,
        offset: usize,
        targets: &[u32],
    ) -> Result<()> {
        forward::lm_head_chunk(self, state, h, w_chunk, offset, targets)
    }

    fn lm_head_backward_chunk(
        &self,
        dh: &mut CubeTensor,
        h: &CubeTensor,
        w_chunk: &CubeTensor,
        offset: usize,
        targets: &[u32],
        lse: &CubeTensor,
        scale: f64,
    ) -> Result<CubeTensor> {
        let steps = structured::Steps::new(self);
        compose::lm_head_backward_chunk(&steps, dh, h, w_chunk, offset, targets, lse, scale)
    }

    fn linear_backward(
        &self,
        x: &CubeTensor,
        w: &CubeTensor,
        dy: &CubeTensor,
    ) -> Result<(CubeTensor, CubeTensor)> {
        compose::linear_backward(&structured::Steps::new(self), x, w, dy)
    }

    fn rms_norm_backward(
        &self,
        x: &CubeTensor,
        gamma: &CubeTensor,
        dy: &CubeTensor,
        eps: f64,
    ) -> Result<(CubeTensor, CubeTensor)> {
        backward::rms_norm_backward(self, x, gamma, dy, eps)
    }

    fn rope_backward(&self, dx: &mut CubeTensor, cos: &CubeTensor, sin: &CubeTensor) -> Result<()> {
        backward::rope_backward(self, dx, cos, sin)
    }

    fn silu_mul_backward(
        &self,
        gate: &CubeTensor,
        up: &CubeTensor,
        da: &CubeTensor,
    ) -> Result<(CubeTensor, CubeTensor)> {
        backward::silu_mul_backward(self, gate, up, da)
    }

    fn embed_backward(&self, dh: &CubeTensor, ids: &[u32], vocab: usize) -> Result<CubeTensor> {
        backward::embed_backward(self, dh, ids, vocab)
    }

    fn attention_with_lse(
        &self,
        q: &CubeTensor,
        k: &CubeTensor,
        v: &CubeTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<(CubeTensor, CubeTensor)> {
        let (o, lse) = forward::attention_lse(self, q, k, v, heads, kv_heads, seq, true)?;
        Ok((o, lse.expect("asked for the log-sum-exp")))
    }

    fn attention_backward(
        &self,
        q: &CubeTensor,
        k: &CubeTensor,
        v: &CubeTensor,
        o: &CubeTensor,
        lse: &CubeTensor,
        d_o: &CubeTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<(CubeTensor, CubeTensor, CubeTensor)> {
        attention_backward::attention_backward(self, q, k, v, o, lse, d_o, heads, kv_heads, seq)
    }
}
