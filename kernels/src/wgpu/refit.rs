//! The re-fit ops of §12 on the device. The GEMM-shaped work runs through gemm.wgsl with
//! epilogues of its own: Δ·H writes Δ from the same pass; the LoRA gradient forms D = P ⊙ (B·A)
//! in the A-operand loads (never stored), and its epilogue turns ΔH + s·D·H into Ḡ in place
//! with one partial loss per workgroup; the row scales and the norm system's right-hand side
//! reduce their products with W into row or column partials, so Ŵ·H and (W − Ŵ)·H are never
//! stored; the norm system's matrix is a SYRK whose last pass takes the Hadamard product with
//! H. refit.wgsl holds AdamW and the small passes over the partials. The damped solve goes
//! through the §6 factor U ((M + λI)⁻¹ = UᵀU) and two GEMV-shaped products with it. The host
//! only reads back the loss and the factor's status words.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::ops::{check, AdamStep, LoraForm, LoraGrad, LoraInputs};

use super::exec::{grid, Batch, Ctx, Module, Slot, Win};
use super::gemm::{
    reduce_parts, Gemm, Mat, Operand, Product, F_B_LOWER, F_DELTA, F_FINAL, F_LOWER, F_MERGE_SCALE,
    F_P_MASK,
};
use super::mem::{shape, WgpuMask, WgpuTensor};

/// The GEMM's output tile (gemm.wgsl's TM and TN).
const TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct RefitParams {
    n: u32,
    dst_base: u32,
    src_base: u32,
    src2_base: u32,
    m_base: u32,
    v_base: u32,
    row_len: u32,
    cols: u32,
    parts: u32,
    pld: u32,
    row0: u32,
    accumulate: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    omb1: f32,
    omb2: f32,
    eps: f32,
    bc1: f32,
    bc2: f32,
}

impl Ctx {
    /// A tensor of zeros (not poisoned: its zeros are the result).
    fn zero_tensor(&self, what: &str, rows: usize, cols: usize) -> Result<WgpuTensor> {
        Ok(WgpuTensor {
            buf: self.alloc(what, rows * cols, None)?,
            rows,
            cols,
        })
    }

    fn refit_dispatch(
        &self,
        b: &mut Batch<'_>,
        entry: &'static str,
        p: &RefitParams,
        slots: [Slot<'_>; 7],
        groups: [u32; 3],
    ) -> Result<()> {
        b.dispatch(Module::Refit, entry, bytemuck::bytes_of(p), &slots, groups)
    }

    pub(crate) fn refit_base(
        &self,
        wp: Option<&WgpuTensor>,
        w: &WgpuTensor,
        h: &WgpuTensor,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        check::refit_base(wp.map(shape), shape(w), shape(h))?;
        let (rows, cols) = shape(w);
        let delta = self.tensor("Δ", rows, cols)?;
        let delta_h = self.tensor("ΔH", rows, cols)?;
        if rows == 0 || cols == 0 {
            return Ok((delta, delta_h));
        }
        let w_slabs = self.row_slabs(rows, cols, 1, usize::MAX)?;
        let h_slabs = self.row_slabs(cols, cols, 1, usize::MAX)?;
        let mut b = self.batch();
        for &(r0, r1) in &w_slabs {
            let ww = self.rows_win(&w.buf, cols, r0, r1)?;
            let pw = wp
                .map(|p| self.rows_win(&p.buf, cols, r0, r1))
                .transpose()?;
            let cw = self.rows_win(&delta_h.buf, cols, r0, r1)?;
            let c2w = self.rows_win(&delta.buf, cols, r0, r1)?;
            for (ki, &(k0, k1)) in h_slabs.iter().enumerate() {
                let hw = self.rows_win(&h.buf, cols, k0, k1)?;
                // Δ = W_p − W in the loads, or −W as alpha = −1 on W.
                let (a, alpha) = match pw {
                    Some(pw) => (pw, 1.0),
                    None => (ww, -1.0),
                };
                let mut g = Gemm::new(
                    "gemm_delta",
                    (r0, r1),
                    (0, cols),
                    (k0, k1),
                    Operand::new(a, 0, cols),
                    Operand::new(hw, 0, cols),
                )
                .named("refit_base");
                if pw.is_some() {
                    g.a2 = Some(Operand::new(ww, 0, cols));
                }
                g.c = Some(Operand::new(cw, 0, cols));
                g.c2 = Some(Operand::new(c2w, 0, cols));
                g.alpha = alpha;
                if ki == 0 {
                    g.flags = F_DELTA;
                } else {
                    g.beta = 1.0;
                }
                g.record(&mut b)?;
            }
        }
        b.submit()?;
        Ok((delta, delta_h))
    }

    pub(crate) fn lora_grad(
        &self,
        inp: LoraInputs<'_, WgpuTensor, WgpuMask>,
    ) -> Result<LoraGrad<WgpuTensor>> {
        let (rows, cols, r) = check::lora(
            shape(inp.wp),
            (inp.mask.rows, inp.mask.cols),
            shape(inp.delta),
            shape(inp.delta_h),
            shape(inp.h),
            shape(inp.b),
            shape(inp.a),
        )?;
        if rows == 0 || cols == 0 {
            return Ok(LoraGrad {
                db: self.zero_tensor("∂B", rows, r)?,
                da: self.zero_tensor("∂A", r, cols)?,
                loss: 0.0,
            });
        }
        let db = self.tensor("∂B", rows, r)?;
        let da = self.tensor("∂A", r, cols)?;
        // Ḡ starts as ΔH; the LoRA pass adds s·D·H and turns it into Ḡ in place.
        let g = self.tensor("masked gradient", rows, cols)?;
        let slabs = self.row_slabs(rows, cols, 1, usize::MAX)?;
        let h_slabs = self.row_slabs(cols, cols, 1, usize::MAX)?;
        let tiles: usize = slabs
            .iter()
            .map(|s| (s.1 - s.0).div_ceil(TILE) * cols.div_ceil(TILE))
            .sum();
        let parts = self.scratch("partial losses", tiles)?;
        let parts_w = self.whole(&parts, tiles)?;
        let result = self.scratch("loss", 1)?;
        let result_w = self.whole(&result, 1)?;
        let a_w = self.whole(&inp.a.buf, r * cols)?;
        let da_w = self.whole(&da.buf, r * cols)?;
        let (s, norm) = (inp.s, inp.norm);
        let wpr = inp.mask.wpr();
        let mut b = self.batch();
        b.copy(
            &inp.delta_h.buf,
            &g.buf,
            g.buf.size().min(inp.delta_h.buf.size()),
        );
        let mut off = 0u32;
        for &(r0, r1) in &slabs {
            let bw = self.rows_win(&inp.b.buf, r, r0, r1)?;
            let gw = self.rows_win(&g.buf, cols, r0, r1)?;
            let dw = self.rows_win(&inp.delta.buf, cols, r0, r1)?;
            let (pw, pld, form_flag) = match inp.form {
                LoraForm::Mask => (self.rows_win(&inp.mask.buf, wpr, r0, r1)?, wpr, F_P_MASK),
                LoraForm::Scale => (self.rows_win(&inp.wp.buf, cols, r0, r1)?, cols, 0),
            };
            for (ki, &(k0, k1)) in h_slabs.iter().enumerate() {
                let last = ki + 1 == h_slabs.len();
                let hw = self.rows_win(&inp.h.buf, cols, k0, k1)?;
                let mut gm = Gemm::new(
                    "gemm_lora",
                    (r0, r1),
                    (0, cols),
                    (k0, k1),
                    Operand::new(bw, 0, r),
                    Operand::new(hw, 0, cols),
                )
                .named("lora_dh");
                gm.side = Some(Operand::new(a_w, 0, cols));
                gm.aux = Some(Operand::new(pw, 0, pld));
                gm.c = Some(Operand::new(gw, 0, cols));
                gm.c2 = Some(Operand::new(dw, 0, cols));
                gm.rank = r;
                gm.alpha = s as f32;
                gm.s = s as f32;
                gm.gscale = (s * norm) as f32;
                gm.flags = form_flag;
                if last {
                    gm.flags |= F_FINAL;
                    gm.part = Some((parts_w, off));
                }
                gm.record(&mut b)?;
                if last {
                    let (gx, gy) = gm.tiles();
                    off += gx * gy;
                }
            }
        }
        reduce_parts(&mut b, result_w, 0, parts_w, tiles)?;
        // ∂B = Ḡ·Aᵀ per slab of rows; ∂A = Bᵀ·Ḡ summed over the slabs. Both are narrow (rank
        // columns or rows) and deep, so each runs over depth pieces where it would not fill.
        for (si, &(r0, r1)) in slabs.iter().enumerate() {
            let gw = self.rows_win(&g.buf, cols, r0, r1)?;
            let bw = self.rows_win(&inp.b.buf, r, r0, r1)?;
            let dbw = self.rows_win(&db.buf, r, r0, r1)?;
            let mut gm = Gemm::new(
                "gemm_update",
                (r0, r1),
                (0, r),
                (0, cols),
                Operand::new(gw, 0, cols),
                Operand::new(a_w, 0, cols).t(),
            )
            .named("lora_db");
            gm.c = Some(Operand::new(dbw, 0, r));
            self.record_filling(&mut b, &gm)?;
            let mut gm = Gemm::new(
                "gemm_update",
                (0, r),
                (0, cols),
                (r0, r1),
                Operand::new(bw, 0, r).t(),
                Operand::new(gw, 0, cols),
            )
            .named("lora_da");
            gm.c = Some(Operand::new(da_w, 0, cols));
            gm.beta = if si == 0 { 0.0 } else { 1.0 };
            self.record_filling(&mut b, &gm)?;
        }
        b.submit()?;
        let v = self.read_words(&result, 1)?;
        Ok(LoraGrad {
            db,
            da,
            loss: 0.5 * norm * f32::from_bits(v[0]) as f64,
        })
    }

    pub(crate) fn adamw_step(
        &self,
        param: &mut WgpuTensor,
        grad: &WgpuTensor,
        m: &mut WgpuTensor,
        v: &mut WgpuTensor,
        st: AdamStep,
    ) -> Result<()> {
        check::adamw(shape(param), shape(grad), shape(m), shape(v))?;
        let n = param.rows * param.cols;
        if n == 0 {
            return Ok(());
        }
        let bc1 = 1.0 - st.beta1.powi(st.t as i32);
        let bc2 = 1.0 - st.beta2.powi(st.t as i32);
        let base = RefitParams {
            lr: st.lr as f32,
            beta1: st.beta1 as f32,
            beta2: st.beta2 as f32,
            omb1: (1.0 - st.beta1) as f32,
            omb2: (1.0 - st.beta2) as f32,
            eps: st.eps as f32,
            bc1: bc1 as f32,
            bc2: bc2 as f32,
            ..Default::default()
        };
        let maxg = self.max_groups();
        let mut b = self.batch();
        for (e0, e1) in self.flat_chunks(n) {
            let (e0w, e1w) = (e0 as u64, e1 as u64);
            let pw = self.win(&param.buf, e0w, e1w)?;
            let gw = self.win(&grad.buf, e0w, e1w)?;
            let mw = self.win(&m.buf, e0w, e1w)?;
            let vw = self.win(&v.buf, e0w, e1w)?;
            let vec4_base = |w: &Win<'_>| w.base(e0 as u64) / 4;
            let n4 = (e1 - e0).div_ceil(4);
            let g = grid(n4.div_ceil(256) as u64, maxg);
            let p = RefitParams {
                n: n4 as u32,
                dst_base: vec4_base(&pw),
                src_base: vec4_base(&gw),
                m_base: vec4_base(&mw),
                v_base: vec4_base(&vw),
                row_len: g[0] * 256,
                ..base
            };
            self.refit_dispatch(
                &mut b,
                "adamw",
                &p,
                [
                    Slot::Win(pw),
                    Slot::Win(gw),
                    Slot::Win(mw),
                    Slot::Win(vw),
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Unused,
                ],
                g,
            )?;
        }
        b.submit()
    }

    pub(crate) fn lora_merge(
        &self,
        wp: &WgpuTensor,
        mask: &WgpuMask,
        lb: &WgpuTensor,
        la: &WgpuTensor,
        form: LoraForm,
        s: f64,
    ) -> Result<WgpuTensor> {
        let (rows, cols, r) =
            check::lora_merge(shape(wp), (mask.rows, mask.cols), shape(lb), shape(la))?;
        let out = self.tensor("merged weight", rows, cols)?;
        if rows == 0 || cols == 0 {
            return Ok(out);
        }
        let wpr = mask.wpr();
        let a_w = self.whole(&la.buf, r * cols)?;
        let mut b = self.batch();
        for (r0, r1) in self.row_slabs(rows, cols, 1, usize::MAX)? {
            let mut g = Gemm::new(
                "gemm_merge",
                (r0, r1),
                (0, cols),
                (0, r),
                Operand::new(self.rows_win(&lb.buf, r, r0, r1)?, 0, r),
                Operand::new(a_w, 0, cols),
            )
            .named("lora_merge");
            g.side = Some(Operand::new(self.rows_win(&wp.buf, cols, r0, r1)?, 0, cols));
            g.aux = Some(Operand::new(self.rows_win(&mask.buf, wpr, r0, r1)?, 0, wpr));
            g.c = Some(Operand::new(
                self.rows_win(&out.buf, cols, r0, r1)?,
                0,
                cols,
            ));
            g.s = s as f32;
            if form == LoraForm::Scale {
                g.flags = F_MERGE_SCALE;
            }
            g.record(&mut b)?;
        }
        b.submit()?;
        Ok(out)
    }

    pub(crate) fn row_scale(
        &self,
        w_hat: &mut WgpuTensor,
        w: &WgpuTensor,
        h: &WgpuTensor,
    ) -> Result<WgpuTensor> {
        check::row_scale(shape(w_hat), shape(w), shape(h))?;
        let (rows, cols) = shape(w_hat);
        let scales = self.tensor("row scales", 1, rows)?;
        if rows == 0 {
            return Ok(scales);
        }
        let slabs = self.row_slabs(rows, cols, 1, usize::MAX)?;
        let h_slabs = self.row_slabs(cols, cols, 1, usize::MAX)?;
        let col_tiles = cols.div_ceil(TILE);
        let max_rows = slabs.iter().map(|s| s.1 - s.0).max().unwrap_or(0);
        let part_len = col_tiles * max_rows;
        let num = self.scratch("row-scale numerators", part_len)?;
        let den = self.scratch("row-scale denominators", part_len)?;
        let (num_w, den_w) = (self.whole(&num, part_len)?, self.whole(&den, part_len)?);
        let s_w = self.whole(&scales.buf, rows)?;
        let maxg = self.max_groups();
        let mut b = self.batch();
        for &(r0, r1) in &slabs {
            let n_rows = r1 - r0;
            let wh = self.rows_win(&w_hat.buf, cols, r0, r1)?;
            let ww = self.rows_win(&w.buf, cols, r0, r1)?;
            for (ki, &(k0, k1)) in h_slabs.iter().enumerate() {
                let hw = self.rows_win(&h.buf, cols, k0, k1)?;
                let mut g = Gemm::new(
                    "gemm_rowdot",
                    (r0, r1),
                    (0, cols),
                    (k0, k1),
                    Operand::new(wh, 0, cols),
                    Operand::new(hw, 0, cols),
                )
                .named("row_scale_dots");
                g.side = Some(Operand::new(ww, 0, cols));
                g.part = Some((num_w, 0));
                g.c = Some(Operand::new(den_w, 0, 0));
                g.pld = n_rows;
                g.beta = if ki == 0 { 0.0 } else { 1.0 };
                g.record(&mut b)?;
            }
            let p = RefitParams {
                n: n_rows as u32,
                dst_base: s_w.base(0),
                src_base: num_w.base(0),
                src2_base: den_w.base(0),
                parts: col_tiles as u32,
                pld: n_rows as u32,
                row0: r0 as u32,
                ..Default::default()
            };
            self.refit_dispatch(
                &mut b,
                "rowscale_solve",
                &p,
                [
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Win(s_w),
                    Slot::Win(num_w),
                    Slot::Win(den_w),
                ],
                [n_rows.div_ceil(256) as u32, 1, 1],
            )?;
            let elems = n_rows * cols;
            let g = grid(elems.div_ceil(256) as u64, maxg);
            let p = RefitParams {
                n: elems as u32,
                dst_base: wh.base((r0 * cols) as u64),
                src_base: s_w.base(0),
                row_len: g[0] * 256,
                cols: cols as u32,
                row0: r0 as u32,
                ..Default::default()
            };
            self.refit_dispatch(
                &mut b,
                "row_apply",
                &p,
                [
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Win(wh),
                    Slot::Win(s_w),
                    Slot::Unused,
                ],
                g,
            )?;
        }
        b.submit()?;
        Ok(scales)
    }

    pub(crate) fn norm_system(
        &self,
        pairs: &[(&WgpuTensor, &WgpuTensor)],
        h: &WgpuTensor,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        check::norm_hessian(shape(h))?;
        let cols = h.cols;
        for (w_hat, w) in pairs {
            check::norm_pair(cols, shape(w_hat), shape(w))?;
        }
        // Pairs without rows add nothing.
        let pairs: Vec<_> = pairs.iter().filter(|p| p.0.rows > 0).collect();
        if pairs.is_empty() || cols == 0 {
            return Ok((
                self.zero_tensor("norm system", cols, cols)?,
                self.zero_tensor("norm right-hand side", 1, cols)?,
            ));
        }
        let m = self.tensor("norm system", cols, cols)?;
        let rhs = self.tensor("norm right-hand side", 1, cols)?;
        let h_slabs = self.row_slabs(cols, cols, 1, usize::MAX)?;
        let mut row_slabs = Vec::new();
        for (l, (w_hat, _)) in pairs.iter().enumerate() {
            for s in self.row_slabs(w_hat.rows, cols, 1, usize::MAX)? {
                row_slabs.push((l, s));
            }
        }
        let mut b = self.batch();

        // Σ_l Ŵ_lᵀŴ_l into the lower triangle, accumulated over every slab of rows of every
        // pair; the last one takes the product with H and fills the upper triangle.
        for (wi, &(l, (k0, k1))) in row_slabs.iter().enumerate() {
            let last = wi + 1 == row_slabs.len();
            let xw = self.rows_win(&pairs[l].0.buf, cols, k0, k1)?;
            for (pi, &(p0, p1)) in h_slabs.iter().enumerate() {
                let cw = self.rows_win(&m.buf, cols, p0, p1)?;
                for &(q0, q1) in &h_slabs[..=pi] {
                    let mut g = Gemm::new(
                        "gemm_gram",
                        (p0, p1),
                        (q0, q1),
                        (k0, k1),
                        Operand::new(xw, 0, cols).t(),
                        Operand::new(xw, 0, cols),
                    )
                    .named("norm_gram");
                    g.c = Some(Operand::new(cw, 0, cols));
                    g.flags = F_LOWER;
                    g.beta = if wi == 0 { 0.0 } else { 1.0 };
                    if last {
                        g.flags |= F_FINAL;
                        g.c2 = Some(Operand::new(self.rows_win(&m.buf, cols, q0, q1)?, 0, cols));
                        g.side = Some(Operand::new(self.rows_win(&h.buf, cols, p0, p1)?, 0, cols));
                        g.aux = Some(Operand::new(self.rows_win(&h.buf, cols, q0, q1)?, 0, cols));
                    }
                    g.record(&mut b)?;
                }
            }
        }

        // Σ_l colsum(Ŵ_l ⊙ (W_l − Ŵ_l)·H): per slab of rows, column partials per row tile
        // (summed over H's windows), then added into rhs.
        let max_tiles = row_slabs
            .iter()
            .map(|(_, s)| (s.1 - s.0).div_ceil(TILE))
            .max()
            .unwrap_or(0);
        let parts = self.scratch("right-hand side partials", max_tiles * cols)?;
        let parts_w = self.whole(&parts, max_tiles * cols)?;
        let rhs_w = self.whole(&rhs.buf, cols)?;
        for (wi, &(l, (r0, r1))) in row_slabs.iter().enumerate() {
            let (w_hat, w) = pairs[l];
            let ww = self.rows_win(&w.buf, cols, r0, r1)?;
            let whw = self.rows_win(&w_hat.buf, cols, r0, r1)?;
            for (ki, &(k0, k1)) in h_slabs.iter().enumerate() {
                let hw = self.rows_win(&h.buf, cols, k0, k1)?;
                let mut g = Gemm::new(
                    "gemm_coldot",
                    (r0, r1),
                    (0, cols),
                    (k0, k1),
                    Operand::new(ww, 0, cols),
                    Operand::new(hw, 0, cols),
                )
                .named("norm_rhs");
                g.a2 = Some(Operand::new(whw, 0, cols));
                g.part = Some((parts_w, 0));
                g.pld = cols;
                g.beta = if ki == 0 { 0.0 } else { 1.0 };
                g.record(&mut b)?;
            }
            let p = RefitParams {
                n: cols as u32,
                dst_base: rhs_w.base(0),
                src_base: parts_w.base(0),
                parts: (r1 - r0).div_ceil(TILE) as u32,
                pld: cols as u32,
                accumulate: (wi > 0) as u32,
                ..Default::default()
            };
            self.refit_dispatch(
                &mut b,
                "colsum",
                &p,
                [
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Win(rhs_w),
                    Slot::Win(parts_w),
                    Slot::Unused,
                ],
                [cols.div_ceil(256) as u32, 1, 1],
            )?;
        }
        b.submit()?;
        Ok((m, rhs))
    }

    pub(crate) fn spd_solve(
        &self,
        m: &WgpuTensor,
        rhs: &WgpuTensor,
        percdamp: f64,
    ) -> Result<WgpuTensor> {
        let n = check::spd_solve(shape(m), shape(rhs))?;
        if n == 0 {
            return self.zero_tensor("solution", 1, 0);
        }
        let x = self.tensor("solution", 1, n)?;
        let y = self.scratch("half-way solution", n)?;
        let mut b = self.batch();
        // U with (M + λI)⁻¹ = UᵀU, dead columns left as they are.
        let run = self.record_factor(&mut b, m, percdamp, true)?;
        // y = rhs·Uᵀ (y_j = Σ_{k >= j} U(j,k) rhs_k: Uᵀ lower triangular), then x = y·U.
        let (u, ym) = (Mat::of(&run.u), Mat::new(&y, 1, n));
        let solve_ut = Product {
            flags: F_B_LOWER,
            ..Product::store("solve_ut")
        };
        self.record_gemm_split(&mut b, solve_ut, Mat::of(rhs), u.t(), ym)?;
        self.record_gemm_split(&mut b, Product::store("solve_u"), ym, u, Mat::of(&x))?;
        b.submit()?;
        let status = run.status(self)?;
        if status.mean() == 0.0 {
            return self.zero_tensor("solution", 1, n);
        }
        status.check(n)?;
        Ok(x)
    }
}
