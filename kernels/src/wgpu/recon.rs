//! Reconstruction error (§9): tr(ΔW H ΔWᵀ) and tr(W H Wᵀ) as GEMMs (D·H tile by tile) whose
//! epilogue multiplies by D and reduces, so D·H is never stored; ΔW = W − Ŵ is formed in the
//! operand loads. Partial sums per workgroup are added by one more kernel.

use crate::error::Result;
use crate::ops::{check, ReconError};

use super::exec::Ctx;
use super::gemm::{reduce_parts, Gemm, Operand};
use super::mem::WgpuTensor;

impl Ctx {
    pub(crate) fn recon_error(
        &self,
        w: &WgpuTensor,
        pruned: &WgpuTensor,
        h: &WgpuTensor,
    ) -> Result<ReconError> {
        check::same(
            "pruned vs original W",
            (pruned.rows, pruned.cols),
            (w.rows, w.cols),
        )?;
        check::same("Hessian vs W columns", (h.rows, h.cols), (w.cols, w.cols))?;
        let (rows, cols) = (w.rows, w.cols);
        if rows == 0 || cols == 0 {
            return Ok(ReconError { num: 0.0, den: 0.0 });
        }
        let w_slabs = self.row_slabs(rows, cols, 1, usize::MAX)?;
        let h_slabs = self.row_slabs(cols, cols, 1, usize::MAX)?;
        let tiles: usize = w_slabs
            .iter()
            .map(|s| (s.1 - s.0).div_ceil(64) * cols.div_ceil(64))
            .sum::<usize>()
            * h_slabs.len();
        let result = self.scratch("traces", 2)?;
        let result_w = self.whole(&result, 2)?;
        let mut b = self.batch();
        for (slot, minus) in [(0u64, true), (1u64, false)] {
            let parts = self.scratch("partial traces", tiles)?;
            let pw = self.whole(&parts, tiles)?;
            let mut off = 0u32;
            for &(r0, r1) in &w_slabs {
                let ww = self.rows_win(&w.buf, cols, r0, r1)?;
                let qw = self.rows_win(&pruned.buf, cols, r0, r1)?;
                for &(k0, k1) in &h_slabs {
                    let hw = self.rows_win(&h.buf, cols, k0, k1)?;
                    let mut g = Gemm::new(
                        "gemm_recon",
                        (r0, r1),
                        (0, cols),
                        (k0, k1),
                        Operand::new(ww, 0, cols),
                        Operand::new(hw, 0, cols),
                    )
                    .named("recon_trace");
                    if minus {
                        g.a2 = Some(Operand::new(qw, 0, cols));
                    }
                    g.part = Some((pw, off));
                    g.record(&mut b)?;
                    let (gx, gy) = g.tiles();
                    off += gx * gy;
                }
            }
            reduce_parts(&mut b, result_w, slot, pw, tiles)?;
        }
        b.submit()?;
        let v = self.read_words(&result, 2)?;
        Ok(ReconError {
            num: f32::from_bits(v[0]) as f64,
            den: f32::from_bits(v[1]) as f64,
        })
    }
}
