//! GBLM-Pruner's gradient accumulator (§2): the elementwise update given g (grad.wgsl, vec4
//! per thread), its finalisation, and the fused update from dY and X (gemm.wgsl's gradient
//! epilogue: g = dYᵀX is formed tile by tile in registers and only its square or absolute
//! value reaches memory).

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::ops::{check, GradNorm, GBLM_GRAD_SCALE};

use super::exec::{grid, Batch, Ctx, Module, Slot};
use super::gemm::{before, Gemm, Operand, F_L1};
use super::mem::WgpuTensor;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct GradParams {
    n4: u32,
    dst_base: u32,
    src_base: u32,
    scale: f32,
    l1: u32,
    row_len: u32,
}

impl Ctx {
    /// dst[d0..d0+n] op= src[s0..s0+n] with `entry` of grad.wgsl; d0 and s0 multiples of 4.
    fn grad_elementwise(
        &self,
        b: &mut Batch<'_>,
        entry: &'static str,
        (dst, d0): (&wgpu::Buffer, usize),
        (src, s0): (&wgpu::Buffer, usize),
        n: usize,
        norm: GradNorm,
    ) -> Result<()> {
        for (e0, e1) in self.flat_chunks(n) {
            let dw = self.win(dst, (d0 + e0) as u64, (d0 + e1) as u64)?;
            let sw = self.win(src, (s0 + e0) as u64, (s0 + e1) as u64)?;
            let n4 = (e1 - e0).div_ceil(4);
            let g = grid(n4.div_ceil(256) as u64, self.max_groups());
            let p = GradParams {
                n4: n4 as u32,
                dst_base: dw.base((d0 + e0) as u64) / 4,
                src_base: sw.base((s0 + e0) as u64) / 4,
                scale: GBLM_GRAD_SCALE,
                l1: (norm == GradNorm::L1) as u32,
                row_len: g[0] * 256,
            };
            b.dispatch(
                Module::Grad,
                entry,
                bytemuck::bytes_of(&p),
                &[Slot::Win(dw), Slot::Win(sw)],
                g,
            )?;
        }
        Ok(())
    }

    pub(crate) fn grad_accumulate(
        &self,
        acc: &mut WgpuTensor,
        g: &WgpuTensor,
        norm: GradNorm,
    ) -> Result<()> {
        check::same(
            "gradient accumulator vs g",
            (acc.rows, acc.cols),
            (g.rows, g.cols),
        )?;
        let mut b = self.batch();
        self.grad_elementwise(
            &mut b,
            "grad_acc",
            (&acc.buf, 0),
            (&g.buf, 0),
            acc.rows * acc.cols,
            norm,
        )?;
        b.submit()
    }

    pub(crate) fn grad_finalize(&self, acc: &WgpuTensor, norm: GradNorm) -> Result<WgpuTensor> {
        let out = self.tensor("finalised gradient", acc.rows, acc.cols)?;
        let mut b = self.batch();
        match norm {
            GradNorm::L2 => self.grad_elementwise(
                &mut b,
                "grad_sqrt",
                (&out.buf, 0),
                (&acc.buf, 0),
                acc.rows * acc.cols,
                norm,
            )?,
            GradNorm::L1 => b.copy(&acc.buf, &out.buf, acc.buf.size()),
        }
        b.submit()?;
        Ok(out)
    }

    /// The plain GEMM dYᵀ·X for the output rows [r0, r1) over the tokens [t0, t1), each
    /// operand a window of those tokens; the caller sets C and beta.
    pub(crate) fn token_window_gemm<'a>(
        &self,
        name: &'static str,
        (r0, r1): (usize, usize),
        (t0, t1): (usize, usize),
        dy: &'a WgpuTensor,
        x: &'a WgpuTensor,
    ) -> Result<Gemm<'a>> {
        let (rows, cols) = (dy.cols, x.cols);
        let dyw = self.rows_win(&dy.buf, rows, t0, t1)?;
        let xw = self.rows_win(&x.buf, cols, t0, t1)?;
        Ok(Gemm::new(
            "gemm_update",
            (r0, r1),
            (0, cols),
            (t0, t1),
            Operand::new(dyw, 0, rows).t(),
            Operand::new(xw, 0, cols),
        )
        .named(name))
    }

    fn fits_binding(&self, elems: usize) -> bool {
        self.win_fits(elems as u64)
    }

    pub(crate) fn grad_accumulate_fused(
        &self,
        acc: &mut WgpuTensor,
        dy: &WgpuTensor,
        x: &WgpuTensor,
        norm: GradNorm,
    ) -> Result<()> {
        check::fused_grad((acc.rows, acc.cols), (dy.rows, dy.cols), (x.rows, x.cols))?;
        let (t, rows, cols) = (x.rows, dy.cols, x.cols);
        let flags = if norm == GradNorm::L1 { F_L1 } else { 0 };
        let mut b = self.batch();
        if self.fits_binding(t * rows) && self.fits_binding(t * cols) {
            let dyw = self.whole(&dy.buf, t * rows)?;
            let xw = self.whole(&x.buf, t * cols)?;
            for (r0, r1) in self.row_slabs(rows, cols, 1, usize::MAX)? {
                let cw = self.rows_win(&acc.buf, cols, r0, r1)?;
                let mut g = Gemm::new(
                    "gemm_grad",
                    (r0, r1),
                    (0, cols),
                    (0, t),
                    Operand::new(dyw, 0, rows).t(),
                    Operand::new(xw, 0, cols),
                )
                .named("grad_fused");
                g.c = Some(Operand::new(cw, 0, cols));
                g.flags = flags;
                g.alpha = GBLM_GRAD_SCALE;
                g.record(&mut b)?;
            }
            return b.submit();
        }
        // The calibration batch does not fit one binding, so no workgroup can see all of its
        // tokens: g is summed over token windows into a scratch slab of rows, then folded in
        // by the elementwise kernel. Slabs start on whole vec4s for its windows.
        let align = 4 / gcd(cols, 4);
        let slabs = self.row_slabs(rows, cols, align, usize::MAX)?;
        let t_slabs = self.row_slabs(t, rows.max(cols), 1, usize::MAX)?;
        let max_rows = slabs.iter().map(|s| s.1 - s.0).max().unwrap_or(0);
        let gbuf = self.scratch("gradient slab", max_rows * cols)?;
        for (r0, r1) in slabs {
            let gw = self.rows_win(&gbuf, cols, 0, r1 - r0)?;
            for (ti, &(t0, t1)) in t_slabs.iter().enumerate() {
                let mut g =
                    self.token_window_gemm("grad_fallback_gemm", (r0, r1), (t0, t1), dy, x)?;
                g.c = Some(Operand::new(gw, before(r0 * cols), cols));
                g.beta = if ti == 0 { 0.0 } else { 1.0 };
                g.record(&mut b)?;
            }
            self.grad_elementwise(
                &mut b,
                "grad_acc",
                (&acc.buf, r0 * cols),
                (&gbuf, 0),
                (r1 - r0) * cols,
                norm,
            )?;
        }
        b.submit()
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}
