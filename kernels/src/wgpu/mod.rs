//! The wgpu backend: every op of the set as hand-written WGSL compute shaders (one file per
//! kernel family in `kernels/shaders/`), run through wgpu on Vulkan, Metal or DX12.
//!
//! Tensors stay on the device between ops. A tensor larger than one storage binding is bound
//! as several windows (row slabs, or flat chunks for elementwise kernels) and each kernel runs
//! once per window, so the only hard size limits are the device's buffer size and memory
//! (and, for attention, a window's K and V rows in one binding: see `forward`).

mod attention_backward;
mod backward;
mod device;
mod exec;
mod factor;
mod forward;
mod gemm;
mod grad;
mod mem;
mod obs;
mod probe;
mod recon;
mod refit;
mod score;
mod select;
mod sparse;
mod stats;
mod structured;
mod timing;

use std::sync::atomic::Ordering;
use std::time::Instant;

pub use device::{list_adapters, list_compute_adapters};
pub use mem::{WgpuMask, WgpuTensor};
pub use sparse::WgpuPacked;

use crate::compose;
use crate::error::{KernelError, Result};
use crate::formats::{PackedWeight, WeightFormat};
use crate::ops::{
    AdamStep, Backend, BackendInfo, GradNorm, HinvExplicit, HinvFactor, LoraForm, LoraGrad,
    LoraInputs, MaskPattern, ObsOutcome, ObsSelection, ReconError, Score, TaylorInputs, TimeSource,
};
use crate::tensor::{Mask, Matrix};

/// Every shader family as (file name, WGSL source), for validation without a device (each
/// variant of a file once: the product per token block, the GEMM bound read-write).
pub fn shader_sources() -> Vec<(&'static str, &'static str)> {
    exec::Module::ALL
        .iter()
        .map(|m| (m.file(), m.source()))
        .collect()
}

/// The smallest binding limit `with_binding_limit` accepts.
pub const MIN_BINDING: u64 = 8 << 10;

pub struct WgpuBackend {
    ctx: exec::Ctx,
    info: BackendInfo,
    /// Device-local memory, where the API tells it (Vulkan).
    memory: Option<u64>,
}

impl WgpuBackend {
    /// Opens a Vulkan, Metal or DX12 adapter: the first whose name contains `adapter`
    /// (case-insensitive), or with `None` the best kind available (discrete, integrated,
    /// virtual, then CPU).
    pub fn new(adapter: Option<&str>) -> Result<Self> {
        let opened = device::open(adapter)?;
        let limits = opened.device.limits();
        let info = device::describe(&opened.adapter, &limits);
        let memory = crate::adapter::device_local_memory(&opened.adapter);
        let subgroup = device::subgroup_lanes(&opened, &exec::SUBGROUP_SIZES);
        let mut ctx = exec::Ctx::new(opened.device, opened.queue, limits);
        ctx.subgroup = subgroup;
        let mut b = Self { ctx, info, memory };
        b.note_subgroups();
        Ok(b)
    }

    /// Runs without subgroup operations (the OBS in-block step and the selection's packing
    /// take their workgroup-memory paths), as on a device that has none: for comparing the
    /// two, and for testing the fallbacks on a device that has them.
    pub fn without_subgroups(mut self) -> Self {
        self.ctx.subgroup = None;
        self.note_subgroups();
        self
    }

    /// The subgroup width the subgroup paths run at (the OBS in-block step's pivot, the
    /// selection's ballots), `None` where they go through workgroup memory.
    pub fn subgroup_lanes(&self) -> Option<u32> {
        self.ctx.subgroup
    }

    /// `info().limits` says which paths run (`subgroup_lanes`, 0 for the workgroup-memory
    /// ones), so a result records it.
    fn note_subgroups(&mut self) {
        const KEY: &str = "subgroup_lanes";
        self.info.limits.retain(|(k, _)| k != KEY);
        self.info
            .limits
            .push((KEY.into(), self.ctx.subgroup.unwrap_or(0) as u64));
    }

    /// Caps storage bindings at `bytes` (below the device's limit), so the paths that split
    /// large tensors across bindings can be exercised with small ones. At least 8 KiB: the
    /// selection histogram (2048 counters) is always bound whole.
    pub fn with_binding_limit(mut self, bytes: u64) -> Self {
        self.ctx.max_binding = bytes
            .max(MIN_BINDING)
            .min(self.ctx.limits.max_storage_buffer_binding_size);
        self
    }

    /// The storage-binding size in force.
    pub fn max_binding(&self) -> u64 {
        self.ctx.max_binding
    }

    /// Test support: fills every fresh output and scratch buffer with NaN (masks with all
    /// bits set) instead of zeros, so that an entry a kernel forgets to write is caught.
    #[doc(hidden)]
    pub fn with_poisoned_outputs(self, on: bool) -> Self {
        self.ctx.poison.store(on, Ordering::Relaxed);
        self
    }

    /// Test support: how many ops so far had to split a tensor across several bindings.
    #[doc(hidden)]
    pub fn split_ops(&self) -> usize {
        self.ctx.splits.load(Ordering::Relaxed)
    }

    /// Profile mode: each dispatch runs in a timed pass of its own, and after a `timed` call
    /// `kernel_profile` gives the seconds spent per kernel. Costs pass overhead; for finding
    /// hot kernels, not for reported timings.
    pub fn set_profile(&self, on: bool) {
        self.ctx.profile.store(on, Ordering::Relaxed);
    }

    /// Seconds per kernel (entry point) of the last `timed` call in profile mode, largest
    /// first; empty without timestamps or profile mode.
    pub fn kernel_profile(&self) -> Vec<(String, f64)> {
        self.ctx
            .last_profile
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `timed` measures with GPU timestamps on this adapter.
    pub fn has_timestamps(&self) -> bool {
        self.ctx.timestamps
    }
}

impl Backend for WgpuBackend {
    type Tensor = WgpuTensor;
    type Mask = WgpuMask;
    type Packed = WgpuPacked;

    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn upload(&self, m: &Matrix) -> Result<WgpuTensor> {
        if m.data.len() != m.rows * m.cols {
            return Err(KernelError::Shape(format!(
                "{}x{} matrix with {} values",
                m.rows,
                m.cols,
                m.data.len()
            )));
        }
        self.ctx.upload_matrix(m)
    }

    fn download(&self, t: &WgpuTensor) -> Result<Matrix> {
        let words = self.ctx.read_words(&t.buf, t.rows * t.cols)?;
        mem::matrix_from_words(t.rows, t.cols, words)
    }

    fn upload_mask(&self, m: &Mask) -> Result<WgpuMask> {
        let m = Mask::from_bits(m.rows, m.cols, m.bits.clone())?;
        Ok(WgpuMask {
            buf: self.ctx.upload_words("mask", &m.bits)?,
            rows: m.rows,
            cols: m.cols,
        })
    }

    fn download_mask(&self, m: &WgpuMask) -> Result<Mask> {
        let words = self.ctx.read_words(&m.buf, m.rows * m.wpr())?;
        Mask::from_bits(m.rows, m.cols, words)
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<WgpuTensor> {
        let elems = rows
            .checked_mul(cols)
            .ok_or_else(|| KernelError::Shape(format!("{rows}x{cols} overflows")))?;
        Ok(WgpuTensor {
            buf: self.ctx.alloc("zeros", elems, None)?,
            rows,
            cols,
        })
    }

    fn shape(&self, t: &WgpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| KernelError::Device(format!("waiting for the device: {e}")))?;
        self.ctx.check()
    }

    /// The device-local memory on Vulkan, checked before a layer starts; elsewhere wgpu has
    /// no portable query, and allocations past the driver's budget fail as out-of-memory
    /// instead (see `adapter::instance`).
    fn memory_budget(&self) -> Option<u64> {
        self.memory
    }

    fn timed(&self, work: &mut dyn FnMut() -> Result<()>) -> Result<(f64, TimeSource)> {
        self.synchronize()?;
        if !self.ctx.timestamps {
            let t0 = Instant::now();
            work()?;
            self.synchronize()?;
            return Ok((t0.elapsed().as_secs_f64(), TimeSource::WallClock));
        }
        self.ctx.begin_timing();
        let r = work();
        let t = self.ctx.end_timing();
        r?;
        Ok((t?, TimeSource::DeviceTimestamps))
    }

    fn act_stat_update(
        &self,
        act: &mut WgpuTensor,
        seen: usize,
        x: &WgpuTensor,
        batch: usize,
    ) -> Result<()> {
        self.ctx.act_stat_update(act, seen, x, batch)
    }

    fn grad_accumulate(&self, acc: &mut WgpuTensor, g: &WgpuTensor, norm: GradNorm) -> Result<()> {
        self.ctx.grad_accumulate(acc, g, norm)
    }

    fn grad_accumulate_fused(
        &self,
        acc: &mut WgpuTensor,
        dy: &WgpuTensor,
        x: &WgpuTensor,
        norm: GradNorm,
    ) -> Result<()> {
        self.ctx.grad_accumulate_fused(acc, dy, x, norm)
    }

    fn grad_finalize(&self, acc: &WgpuTensor, norm: GradNorm) -> Result<WgpuTensor> {
        self.ctx.grad_finalize(acc, norm)
    }

    fn hessian_update(
        &self,
        h: &mut WgpuTensor,
        seen: usize,
        x: &WgpuTensor,
        batch: usize,
    ) -> Result<()> {
        self.ctx.hessian_update(h, seen, x, batch)
    }

    fn score(&self, w: &WgpuTensor, score: Score<'_, WgpuTensor>) -> Result<WgpuTensor> {
        self.ctx.score(w, score)
    }

    fn select_mask(&self, scores: &WgpuTensor, pattern: MaskPattern) -> Result<WgpuMask> {
        self.ctx.select_mask(scores, pattern)
    }

    fn apply_mask(&self, w: &mut WgpuTensor, mask: &WgpuMask) -> Result<()> {
        self.ctx.apply_mask(w, mask)
    }

    fn prune_scored(
        &self,
        w: &mut WgpuTensor,
        score: Score<'_, WgpuTensor>,
        pattern: MaskPattern,
    ) -> Result<WgpuMask> {
        self.ctx.prune_scored(w, score, pattern)
    }

    fn hinv_factor(&self, h: &WgpuTensor, percdamp: f64) -> Result<HinvFactor<WgpuTensor>> {
        self.ctx.hinv_factor(h, percdamp)
    }

    fn obs_prune(
        &self,
        w: &mut WgpuTensor,
        factor: &HinvFactor<WgpuTensor>,
        selection: ObsSelection<'_, WgpuMask>,
        block: usize,
    ) -> Result<ObsOutcome<WgpuMask>> {
        compose::obs_prune(obs::ObsRun::new(&self.ctx, w, factor), selection, block)
    }

    fn recon_error(
        &self,
        w: &WgpuTensor,
        pruned: &WgpuTensor,
        h: &WgpuTensor,
    ) -> Result<ReconError> {
        self.ctx.recon_error(w, pruned, h)
    }

    fn refit_base(
        &self,
        wp: Option<&WgpuTensor>,
        w: &WgpuTensor,
        h: &WgpuTensor,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        self.ctx.refit_base(wp, w, h)
    }

    fn lora_grad(&self, inp: LoraInputs<'_, WgpuTensor, WgpuMask>) -> Result<LoraGrad<WgpuTensor>> {
        self.ctx.lora_grad(inp)
    }

    fn adamw_step(
        &self,
        param: &mut WgpuTensor,
        grad: &WgpuTensor,
        m: &mut WgpuTensor,
        v: &mut WgpuTensor,
        step: AdamStep,
    ) -> Result<()> {
        self.ctx.adamw_step(param, grad, m, v, step)
    }

    fn lora_merge(
        &self,
        wp: &WgpuTensor,
        mask: &WgpuMask,
        b: &WgpuTensor,
        a: &WgpuTensor,
        form: LoraForm,
        s: f64,
    ) -> Result<WgpuTensor> {
        self.ctx.lora_merge(wp, mask, b, a, form, s)
    }

    fn row_scale(
        &self,
        w_hat: &mut WgpuTensor,
        w: &WgpuTensor,
        h: &WgpuTensor,
    ) -> Result<WgpuTensor> {
        self.ctx.row_scale(w_hat, w, h)
    }

    fn norm_system(
        &self,
        pairs: &[(&WgpuTensor, &WgpuTensor)],
        h: &WgpuTensor,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        self.ctx.norm_system(pairs, h)
    }

    fn spd_solve(&self, m: &WgpuTensor, rhs: &WgpuTensor, percdamp: f64) -> Result<WgpuTensor> {
        self.ctx.spd_solve(m, rhs, percdamp)
    }

    fn grad_sum(&self, acc: &mut WgpuTensor, dy: &WgpuTensor, x: &WgpuTensor) -> Result<()> {
        self.ctx.grad_sum(acc, dy, x)
    }

    fn hinv_explicit(&self, h: &WgpuTensor, percdamp: f64) -> Result<HinvExplicit<WgpuTensor>> {
        self.ctx.hinv_explicit(h, percdamp)
    }

    fn obs_saliency(
        &self,
        w: &WgpuTensor,
        hinv: &WgpuTensor,
        width: usize,
        groups: &[usize],
    ) -> Result<WgpuTensor> {
        self.ctx.obs_saliency(w, hinv, width, groups)
    }

    fn taylor_saliency(&self, inp: TaylorInputs<'_, WgpuTensor>) -> Result<WgpuTensor> {
        self.ctx.taylor_saliency(inp)
    }

    fn structured_update(
        &self,
        w: &mut WgpuTensor,
        hinv: &mut WgpuTensor,
        removed: &[usize],
    ) -> Result<f64> {
        compose::structured_update(&structured::Steps::new(&self.ctx), w, hinv, removed)
    }

    fn compact(
        &self,
        w: &WgpuTensor,
        rows: Option<&[usize]>,
        cols: Option<&[usize]>,
    ) -> Result<WgpuTensor> {
        compose::compact(&structured::Steps::new(&self.ctx), w, rows, cols)
    }

    fn copy(&self, dst: &mut WgpuTensor, src: &WgpuTensor) -> Result<()> {
        self.ctx.copy(dst, src)
    }

    fn fma_probe(&self, t: &mut WgpuTensor, iters: u32) -> Result<()> {
        self.ctx.fma_probe(t, iters)
    }

    fn compress(
        &self,
        w: &WgpuTensor,
        mask: &WgpuMask,
        format: WeightFormat,
    ) -> Result<WgpuPacked> {
        self.ctx.compress(w, mask, format)
    }

    fn decompress(&self, p: &WgpuPacked) -> Result<WgpuTensor> {
        self.ctx.decompress(p)
    }

    fn upload_packed(&self, p: &PackedWeight) -> Result<WgpuPacked> {
        self.ctx.upload_packed(p)
    }

    fn download_packed(&self, p: &WgpuPacked) -> Result<PackedWeight> {
        self.ctx.download_packed(p)
    }

    fn sparse_matmul(&self, x: &WgpuTensor, w: &WgpuPacked) -> Result<WgpuTensor> {
        self.ctx.sparse_matmul(x, w)
    }

    fn linear(&self, x: &WgpuTensor, w: &WgpuTensor) -> Result<WgpuTensor> {
        self.ctx.linear(x, w)
    }

    fn rms_norm(&self, x: &WgpuTensor, gamma: &WgpuTensor, eps: f64) -> Result<WgpuTensor> {
        self.ctx.rms_norm(x, gamma, eps)
    }

    fn rope(&self, x: &mut WgpuTensor, cos: &WgpuTensor, sin: &WgpuTensor) -> Result<()> {
        self.ctx.rope(x, cos, sin)
    }

    fn attention(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<WgpuTensor> {
        self.ctx.attention(q, k, v, heads, kv_heads, seq)
    }

    fn silu_mul(&self, gate: &WgpuTensor, up: &WgpuTensor) -> Result<WgpuTensor> {
        self.ctx.silu_mul(gate, up)
    }

    fn residual_add(&self, x: &mut WgpuTensor, y: &WgpuTensor) -> Result<()> {
        self.ctx.residual_add(x, y)
    }

    fn embed(&self, table: &WgpuTensor, ids: &[u32]) -> Result<WgpuTensor> {
        self.ctx.embed(table, ids)
    }

    fn lm_head_chunk(
        &self,
        state: &mut WgpuTensor,
        h: &WgpuTensor,
        w_chunk: &WgpuTensor,
        offset: usize,
        targets: &[u32],
    ) -> Result<()> {
        self.ctx.lm_head_chunk(state, h, w_chunk, offset, targets)
    }

    fn lm_head_backward_chunk(
        &self,
        dh: &mut WgpuTensor,
        h: &WgpuTensor,
        w_chunk: &WgpuTensor,
        offset: usize,
        targets: &[u32],
        lse: &WgpuTensor,
        scale: f64,
    ) -> Result<WgpuTensor> {
        let steps = structured::Steps::new(&self.ctx);
        compose::lm_head_backward_chunk(&steps, dh, h, w_chunk, offset, targets, lse, scale)
    }

    fn linear_backward(
        &self,
        x: &WgpuTensor,
        w: &WgpuTensor,
        dy: &WgpuTensor,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        compose::linear_backward(&structured::Steps::new(&self.ctx), x, w, dy)
    }

    fn rms_norm_backward(
        &self,
        x: &WgpuTensor,
        gamma: &WgpuTensor,
        dy: &WgpuTensor,
        eps: f64,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        self.ctx.rms_norm_backward(x, gamma, dy, eps)
    }

    fn rope_backward(&self, dx: &mut WgpuTensor, cos: &WgpuTensor, sin: &WgpuTensor) -> Result<()> {
        self.ctx.rope_backward(dx, cos, sin)
    }

    fn silu_mul_backward(
        &self,
        gate: &WgpuTensor,
        up: &WgpuTensor,
        da: &WgpuTensor,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        self.ctx.silu_mul_backward(gate, up, da)
    }

    fn embed_backward(&self, dh: &WgpuTensor, ids: &[u32], vocab: usize) -> Result<WgpuTensor> {
        self.ctx.embed_backward(dh, ids, vocab)
    }

    fn attention_with_lse(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        let (o, lse) = self
            .ctx
            .attention_lse(q, k, v, heads, kv_heads, seq, true)?;
        Ok((o, lse.expect("asked for the log-sum-exp")))
    }

    fn attention_backward(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        o: &WgpuTensor,
        lse: &WgpuTensor,
        d_o: &WgpuTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<(WgpuTensor, WgpuTensor, WgpuTensor)> {
        self.ctx
            .attention_backward(q, k, v, o, lse, d_o, heads, kv_heads, seq)
    }
}
