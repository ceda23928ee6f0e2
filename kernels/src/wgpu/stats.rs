//! The calibration statistics: Wanda's activation statistic (§1, stats.wgsl) and SparseGPT's
//! Hessian (§3, a SYRK in gemm.wgsl: only tiles on or below the diagonal are computed, each
//! written to both triangles, with the running-mean rescale in the epilogue).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::ops::check;

use super::exec::{Ctx, Module, Slot};
use super::gemm::{Gemm, Operand, F_LOWER, F_MIRROR};
use super::mem::WgpuTensor;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct StatParams {
    rows: u32,
    cols: u32,
    x_base: u32,
    chunk_rows: u32,
    nchunks: u32,
    scale: f32,
    total: f32,
}

const CHUNK_ROWS: usize = 256;

impl Ctx {
    pub(crate) fn act_stat_update(
        &self,
        act: &mut WgpuTensor,
        seen: usize,
        x: &WgpuTensor,
        batch: usize,
    ) -> Result<()> {
        check::act_stat((act.rows, act.cols), (x.rows, x.cols), batch)?;
        let cols = x.cols;
        let total = (seen + batch) as f64;
        let keep = (seen as f64 / total) as f32;
        let slabs = self.row_slabs(x.rows, cols, 1, usize::MAX)?;
        let max_rows = slabs.iter().map(|s| s.1 - s.0).max().unwrap_or(0);
        let max_chunks = max_rows.div_ceil(CHUNK_ROWS).max(1);
        let part = self.scratch("column partial sums", max_chunks * cols)?;
        let part_w = self.whole(&part, max_chunks * cols)?;
        let act_w = self.whole(&act.buf, cols)?;
        let mut b = self.batch();
        for (i, &(r0, r1)) in slabs.iter().enumerate() {
            let xw = self.rows_win(&x.buf, cols, r0, r1)?;
            let nchunks = (r1 - r0).div_ceil(CHUNK_ROWS).max(1);
            let p = StatParams {
                rows: (r1 - r0) as u32,
                cols: cols as u32,
                x_base: xw.base((r0 * cols) as u64),
                chunk_rows: CHUNK_ROWS as u32,
                nchunks: nchunks as u32,
                scale: if i == 0 { keep } else { 1.0 },
                total: total as f32,
            };
            let slots = [Slot::Win(xw), Slot::Win(part_w), Slot::Win(act_w)];
            let bytes = bytemuck::bytes_of(&p);
            // Four columns per thread where X's rows are whole vec4s from an aligned base.
            let (entry, per) = if cols.is_multiple_of(4) && p.x_base.is_multiple_of(4) {
                ("colsq_partial4", 4)
            } else {
                ("colsq_partial", 1)
            };
            b.dispatch(
                Module::Stats,
                entry,
                bytes,
                &slots,
                [cols.div_ceil(64 * per) as u32, nchunks as u32, 1],
            )?;
            b.dispatch(
                Module::Stats,
                "act_finish",
                bytes,
                &slots,
                [cols.div_ceil(256) as u32, 1, 1],
            )?;
        }
        b.submit()
    }

    pub(crate) fn hessian_update(
        &self,
        h: &mut WgpuTensor,
        seen: usize,
        x: &WgpuTensor,
        batch: usize,
    ) -> Result<()> {
        check::hessian((h.rows, h.cols), (x.rows, x.cols), batch)?;
        let n = x.cols;
        let total = (seen + batch) as f64;
        let keep = (seen as f64 / total) as f32;
        let alpha = (2.0 / total) as f32;
        let x_slabs = self.row_slabs(x.rows, n, 1, usize::MAX)?;
        let h_slabs = self.row_slabs(n, n, 1, usize::MAX)?;
        let mut b = self.batch();
        for (ki, &(k0, k1)) in x_slabs.iter().enumerate() {
            let xw = self.rows_win(&x.buf, n, k0, k1)?;
            for (pi, &(p0, p1)) in h_slabs.iter().enumerate() {
                let cw = self.rows_win(&h.buf, n, p0, p1)?;
                for &(q0, q1) in &h_slabs[..=pi] {
                    let c2w = self.rows_win(&h.buf, n, q0, q1)?;
                    let mut g = Gemm::new(
                        "gemm_update",
                        (p0, p1),
                        (q0, q1),
                        (k0, k1),
                        Operand::new(xw, 0, n).t(),
                        Operand::new(xw, 0, n),
                    )
                    .named("hessian_syrk");
                    g.c = Some(Operand::new(cw, 0, n));
                    g.c2 = Some(Operand::new(c2w, 0, n));
                    g.flags = F_LOWER | F_MIRROR;
                    g.alpha = alpha;
                    // Later token windows add to what the first one rescaled.
                    g.beta = if ki == 0 { keep } else { 1.0 };
                    g.record(&mut b)?;
                }
            }
        }
        b.submit()
    }
}
