//! The ceiling probes (probe.wgsl): a vec4 device copy and independent FMA chains, over flat
//! chunks that each fit one binding.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::ops::{check, FMA_PROBE_ADD, FMA_PROBE_MUL};

use super::exec::{grid, Ctx, Module, Slot};
use super::mem::WgpuTensor;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct ProbeParams {
    n4: u32,
    dst_base: u32,
    src_base: u32,
    iters: u32,
    row_len: u32,
    mul: f32,
    add: f32,
    pad: u32,
}

impl Ctx {
    /// Runs `entry` over the whole of `dst` (and `src`, same length) chunk by chunk.
    fn probe(
        &self,
        entry: &'static str,
        dst: &WgpuTensor,
        src: Option<&WgpuTensor>,
        iters: u32,
    ) -> Result<()> {
        let n = dst.rows * dst.cols;
        let mut b = self.batch();
        for (e0, e1) in self.flat_chunks(n) {
            let dw = self.win(&dst.buf, e0 as u64, e1 as u64)?;
            let sw = match src {
                Some(s) => Some(self.win(&s.buf, e0 as u64, e1 as u64)?),
                None => None,
            };
            let n4 = (e1 - e0).div_ceil(4);
            let g = grid(n4.div_ceil(256) as u64, self.max_groups());
            let p = ProbeParams {
                n4: n4 as u32,
                dst_base: dw.base(e0 as u64) / 4,
                src_base: sw.as_ref().map_or(0, |w| w.base(e0 as u64) / 4),
                iters,
                row_len: g[0] * 256,
                mul: FMA_PROBE_MUL,
                add: FMA_PROBE_ADD,
                pad: 0,
            };
            let src_slot = Slot::from(sw);
            b.dispatch(
                Module::Probe,
                entry,
                bytemuck::bytes_of(&p),
                &[Slot::Win(dw), src_slot],
                g,
            )?;
        }
        b.submit()
    }

    pub(crate) fn copy(&self, dst: &mut WgpuTensor, src: &WgpuTensor) -> Result<()> {
        check::same(
            "copy destination vs source",
            (dst.rows, dst.cols),
            (src.rows, src.cols),
        )?;
        self.probe("copy4", dst, Some(src), 0)
    }

    pub(crate) fn fma_probe(&self, t: &mut WgpuTensor, iters: u32) -> Result<()> {
        self.probe("fma_chains", t, None, iters)
    }
}
