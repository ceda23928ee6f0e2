//! The damped inverse-Hessian factor (§6) on the device; the algorithm is described at the
//! top of factor.wgsl. Everything runs on the GPU; the host only reads back the status
//! words (failed pivot, first non-finite entry), λ and the dead-column flags at the end.

use bytemuck::{Pod, Zeroable};

use crate::error::{KernelError, Result};
use crate::ops::{check, HinvFactor};

use super::exec::{grid, Batch, Ctx, Module, Slot, Win};
use super::gemm::{Gemm, Operand, F_B_LOWER, F_LOWER};
use super::mem::WgpuTensor;

/// The Cholesky block width (factor.wgsl's NB): a 64x64 f32 block is 16 KiB of workgroup
/// memory.
const NB: usize = 64;
/// The outer block: updates of the columns right of it are deferred and applied as one SYRK
/// of this depth, which a GPU runs near its arithmetic peak (depth 64 is memory-bound).
const OUTER: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
pub(crate) struct CholParams {
    n: u32,
    rows: u32,
    row0: u32,
    a_base: u32,
    a2_base: u32,
    h_base: u32,
    k0: u32,
    nb: u32,
    lo: u32,
    hi: u32,
    clo: u32,
    chi: u32,
    percdamp: f32,
    plo: u32,
    pld: u32,
    pcol: u32,
    keep_dead: u32,
}

struct Bufs<'a> {
    small: Win<'a>,
    panel: Win<'a>,
    dvec: Win<'a>,
    stat: Win<'a>,
}

impl Bufs<'_> {
    fn slots<'a>(
        &self,
        a: Option<Win<'a>>,
        a2: Option<Win<'a>>,
        h: Option<Win<'a>>,
    ) -> [Slot<'a>; 7]
    where
        Self: 'a,
    {
        [
            Slot::from(a),
            Slot::from(a2),
            Slot::from(h),
            Slot::Win(self.small),
            Slot::Win(self.panel),
            Slot::Win(self.dvec),
            Slot::Win(self.stat),
        ]
    }
}

/// A factorisation recorded into a batch: U = chol_upper((H + λI)⁻¹) in `u` once it has run,
/// and the status words `stat` (see factor.wgsl).
pub(crate) struct FactorRun {
    pub u: WgpuTensor,
    stat: wgpu::Buffer,
    n: usize,
}

/// The status words of a factorisation that has run.
pub(crate) struct FactorStatus {
    words: Vec<u32>,
}

impl FactorStatus {
    /// A non-finite input or a failed pivot as the error it is.
    pub fn check(&self, n: usize) -> Result<()> {
        let words = &self.words;
        if words[1] != u32::MAX {
            let i = words[1] as usize;
            return Err(KernelError::NonFinite {
                what: "Hessian".into(),
                row: i / n,
                col: i % n,
            });
        }
        if words[0] != 0 {
            return Err(KernelError::NotPositiveDefinite {
                column: words[0] as usize - 1,
            });
        }
        Ok(())
    }

    /// mean(diag(H)) (after dead columns became 1, unless they were kept).
    pub fn mean(&self) -> f32 {
        f32::from_bits(self.words[3])
    }

    pub fn damp(&self) -> f64 {
        f32::from_bits(self.words[2]) as f64
    }

    pub fn dead(&self) -> Vec<usize> {
        (0..self.words.len() - 4)
            .filter(|&j| self.words[4 + j] != 0)
            .collect()
    }
}

impl FactorRun {
    pub fn status(&self, ctx: &Ctx) -> Result<FactorStatus> {
        Ok(FactorStatus {
            words: ctx.read_words(&self.stat, 4 + self.n)?,
        })
    }
}

fn intersect(a: (usize, usize), b: (usize, usize)) -> Option<(usize, usize)> {
    let lo = a.0.max(b.0);
    let hi = a.1.min(b.1);
    (lo < hi).then_some((lo, hi))
}

impl Ctx {
    /// diag(A) of an n x n matrix into a vector (SparseGPT's diag(U)).
    pub(crate) fn diag_of(&self, a: &WgpuTensor) -> Result<wgpu::Buffer> {
        let n = a.cols;
        let d = self.scratch("diagonal", n)?;
        let dw = self.whole(&d, n)?;
        let mut b = self.batch();
        for (r0, r1) in self.row_slabs(n, n, 1, usize::MAX)? {
            let hw = self.rows_win(&a.buf, n, r0, r1)?;
            let p = CholParams {
                n: n as u32,
                rows: (r1 - r0) as u32,
                row0: r0 as u32,
                h_base: hw.base(0),
                ..Default::default()
            };
            b.dispatch(
                Module::Factor,
                "diag_extract",
                bytemuck::bytes_of(&p),
                &[
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Win(hw),
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Win(dw),
                    Slot::Unused,
                ],
                [(r1 - r0).div_ceil(256) as u32, 1, 1],
            )?;
        }
        b.submit()?;
        Ok(d)
    }

    pub(crate) fn hinv_factor(
        &self,
        h: &WgpuTensor,
        percdamp: f64,
    ) -> Result<HinvFactor<WgpuTensor>> {
        check::same("Hessian", (h.rows, h.cols), (h.cols, h.cols))?;
        if !(percdamp >= 0.0 && percdamp.is_finite()) {
            return Err(KernelError::InvalidArgument(format!(
                "percdamp {percdamp} must be a finite non-negative number"
            )));
        }
        let n = h.cols;
        if n == 0 {
            return Ok(HinvFactor {
                u: self.tensor("inverse-Hessian factor", n, n)?,
                dead: vec![],
                damp: 0.0,
            });
        }
        let mut b = self.batch();
        let run = self.record_factor(&mut b, h, percdamp, false)?;
        b.submit()?;
        let status = run.status(self)?;
        status.check(n)?;
        Ok(HinvFactor {
            dead: status.dead(),
            damp: status.damp(),
            u: run.u,
        })
    }

    /// Records the §6 factorisation of the square `h` (n >= 1) into `b`. With `keep_dead`
    /// zero diagonal entries are not replaced by 1, so the factor is that of the plain
    /// (H + λI)⁻¹; percdamp is taken as it is. The steps are [`FactorPass`]'s.
    pub(crate) fn record_factor(
        &self,
        b: &mut Batch<'_>,
        h: &WgpuTensor,
        percdamp: f64,
        keep_dead: bool,
    ) -> Result<FactorRun> {
        let n = h.cols;
        let u = self.tensor("inverse-Hessian factor", n, n)?;
        let small = self.scratch("Cholesky block", NB * NB)?;
        // The outer block narrows (down to one block) if its panel would not fit a binding.
        let outer = (OUTER.min(self.rows_fitting(n) / NB * NB)).max(NB);
        let panel_len = n * outer;
        let panel = self.scratch("Cholesky panel", panel_len)?;
        let dvec = self.scratch("Hessian diagonal", n)?;
        let temp = self.scratch("inverse block row", NB * n)?;
        let mut header = vec![0u32; 4 + n];
        header[1] = u32::MAX;
        let stat = self.upload_words("factor status", &header)?;
        {
            let pass = FactorPass {
                ctx: self,
                h,
                u: &u,
                bufs: Bufs {
                    small: self.whole(&small, NB * NB)?,
                    panel: self.whole(&panel, panel_len)?,
                    dvec: self.whole(&dvec, n)?,
                    stat: self.whole(&stat, 4 + n)?,
                },
                temp: self.whole(&temp, NB * n)?,
                // Windows are whole 64-row blocks, so a diagonal block never straddles two.
                slabs: self.row_slabs(n, n, NB, usize::MAX)?,
                maxg: self.max_groups(),
                outer,
                n,
                base: CholParams {
                    n: n as u32,
                    percdamp: percdamp as f32,
                    keep_dead: keep_dead as u32,
                    ..Default::default()
                },
            };
            pass.scan(b)?;
            pass.copy_in(b)?;
            pass.cholesky(b)?;
            pass.invert(b)?;
            pass.reverse_out(b)?;
        }
        Ok(FactorRun { u, stat, n })
    }
}

/// One factorisation being recorded: its buffers and windows, and its steps in order.
struct FactorPass<'a> {
    ctx: &'a Ctx,
    h: &'a WgpuTensor,
    /// A = J (H + λI) J, factored and inverted in place, then U.
    u: &'a WgpuTensor,
    bufs: Bufs<'a>,
    /// A 64-row block row of L⁻¹ under construction.
    temp: Win<'a>,
    slabs: Vec<(usize, usize)>,
    maxg: u32,
    /// Columns of an outer block of the Cholesky (a multiple of NB).
    outer: usize,
    n: usize,
    base: CholParams,
}

impl<'a> FactorPass<'a> {
    fn dispatch(
        &self,
        b: &mut Batch<'_>,
        entry: &'static str,
        p: &CholParams,
        slots: [Slot<'_>; 7],
        g: [u32; 3],
    ) -> Result<()> {
        b.dispatch(Module::Factor, entry, bytemuck::bytes_of(p), &slots, g)
    }

    /// Dead columns, λ, non-finite entries.
    fn scan(&self, b: &mut Batch<'_>) -> Result<()> {
        let n = self.n;
        for &(r0, r1) in &self.slabs {
            let hw = self.ctx.rows_win(&self.h.buf, n, r0, r1)?;
            let p = CholParams {
                rows: (r1 - r0) as u32,
                row0: r0 as u32,
                h_base: hw.base(0),
                ..self.base
            };
            self.dispatch(
                b,
                "diag_extract",
                &p,
                self.bufs.slots(None, None, Some(hw)),
                [(r1 - r0).div_ceil(256) as u32, 1, 1],
            )?;
            self.dispatch(
                b,
                "nonfinite_scan",
                &p,
                self.bufs.slots(None, None, Some(hw)),
                grid(((r1 - r0) * n).div_ceil(4096) as u64, self.maxg),
            )?;
        }
        self.dispatch(
            b,
            "damp_stats",
            &self.base,
            self.bufs.slots(None, None, None),
            [1, 1, 1],
        )?;

        Ok(())
    }

    /// A = J (H + λI) J, lower triangle, from H's lower triangle.
    fn copy_in(&self, b: &mut Batch<'_>) -> Result<()> {
        let n = self.n;
        // A = J (H + λI) J, lower triangle, from H's lower triangle: A rows [p0, p1) read H
        // rows n-1-y for the columns y whose mirror row lies in the H window [q0, q1).
        for &(p0, p1) in &self.slabs {
            let aw = self.ctx.rows_win(&self.u.buf, n, p0, p1)?;
            for &(q0, q1) in &self.slabs {
                let (y0, y1) = (n - q1, n - q0);
                let hw = self.ctx.rows_win(&self.h.buf, n, q0, q1)?;
                let p = CholParams {
                    a_base: aw.base(0),
                    h_base: hw.base(0),
                    lo: p0 as u32,
                    hi: p1 as u32,
                    clo: y0 as u32,
                    chi: y1 as u32,
                    ..self.base
                };
                let g = [
                    (y1 - y0).div_ceil(32) as u32,
                    (p1 - p0).div_ceil(32) as u32,
                    1,
                ];
                self.dispatch(
                    b,
                    "copy_in",
                    &p,
                    self.bufs.slots(Some(aw), None, Some(hw)),
                    g,
                )?;
            }
        }
        Ok(())
    }

    /// A(c0 + i, c0 + j) −= Σ_k P(c0 + i, k) P(c0 + j, k) for j below `cols_to − c0`, lower
    /// triangle: the panel's update of the trailing rows from c0.
    fn syrk(
        &self,
        b: &mut Batch<'_>,
        c0: usize,
        cols_to: usize,
        pcol: usize,
        depth: usize,
        o0: usize,
    ) -> Result<()> {
        let (n, outer) = (self.n, self.outer);
        for &s in &self.slabs {
            let Some((r0, r1)) = intersect(s, (c0, n)) else {
                continue;
            };
            let aw = self.ctx.rows_win(&self.u.buf, n, r0, r1)?;
            let panel_op = Operand::new(self.bufs.panel, ((c0 - o0) * outer + pcol) as u64, outer);
            let mut g = Gemm::new(
                "gemm_update",
                (r0 - c0, r1 - c0),
                (0, (r1 - c0).min(cols_to - c0)),
                (0, depth),
                panel_op,
                panel_op.t(),
            )
            .named(if depth > NB {
                "chol_outer_syrk"
            } else {
                "chol_inner_syrk"
            });
            g.c = Some(Operand::new(aw, (c0 * n + c0) as u64, n));
            g.flags = F_LOWER;
            g.alpha = -1.0;
            g.beta = 1.0;
            g.record(b)?;
        }
        Ok(())
    }

    /// Blocked right-looking Cholesky of A in place, in outer blocks [o0, o1) of 64-column
    /// blocks: updates inside the outer block are applied at once, those right of it once per
    /// outer block from its panel (rows from o0, stride `outer`).
    fn cholesky(&self, b: &mut Batch<'_>) -> Result<()> {
        let n = self.n;
        for o0 in (0..n).step_by(self.outer) {
            let o1 = (o0 + self.outer).min(n);
            for k0 in (o0..o1).step_by(NB) {
                let k1 = (k0 + NB).min(n);
                let dw = self.ctx.rows_win(&self.u.buf, n, k0, k1)?;
                let p = CholParams {
                    a_base: dw.base(0),
                    k0: k0 as u32,
                    nb: (k1 - k0) as u32,
                    plo: o0 as u32,
                    pld: self.outer as u32,
                    pcol: (k0 - o0) as u32,
                    ..self.base
                };
                self.dispatch(
                    b,
                    "chol_diag",
                    &p,
                    self.bufs.slots(Some(dw), None, None),
                    [1, 1, 1],
                )?;
                if k1 == n {
                    break;
                }
                for &s in &self.slabs {
                    let Some((r0, r1)) = intersect(s, (k1, n)) else {
                        continue;
                    };
                    let aw = self.ctx.rows_win(&self.u.buf, n, r0, r1)?;
                    let pp = CholParams {
                        rows: (r1 - r0) as u32,
                        row0: r0 as u32,
                        a_base: aw.base(0),
                        ..p
                    };
                    self.dispatch(
                        b,
                        "chol_panel",
                        &pp,
                        self.bufs.slots(Some(aw), None, None),
                        grid((r1 - r0).div_ceil(64) as u64, self.maxg),
                    )?;
                }
                if k1 < o1 {
                    self.syrk(b, k1, o1, k0 - o0, k1 - k0, o0)?;
                }
            }
            if o1 < n {
                self.syrk(b, o1, n, 0, o1 - o0, o0)?;
            }
        }
        Ok(())
    }

    /// M = L⁻¹ in place, a block row at a time.
    fn invert(&self, b: &mut Batch<'_>) -> Result<()> {
        let n = self.n;
        // M = L⁻¹ in place, a block row at a time: M_ii = L_ii⁻¹, then
        // M[i, :i] = -M_ii (L[i, :i] M[:i, :i]).
        for i0 in (0..n).step_by(NB) {
            let i1 = (i0 + NB).min(n);
            let rw = self.ctx.rows_win(&self.u.buf, n, i0, i1)?;
            let p = CholParams {
                a_base: rw.base(0),
                k0: i0 as u32,
                nb: (i1 - i0) as u32,
                ..self.base
            };
            self.dispatch(
                b,
                "trinv_diag",
                &p,
                self.bufs.slots(Some(rw), None, None),
                [1, 1, 1],
            )?;
            if i0 == 0 {
                continue;
            }
            let mut first = true;
            for &s in &self.slabs {
                let Some((k_lo, k_hi)) = intersect(s, (0, i0)) else {
                    continue;
                };
                let kw = self.ctx.rows_win(&self.u.buf, n, k_lo, k_hi)?;
                // Logical rows 0..nb are A rows i0..; columns and k are A's own.
                let mut g = Gemm::new(
                    "gemm_update",
                    (0, i1 - i0),
                    (0, i0),
                    (k_lo, k_hi),
                    Operand::new(rw, (i0 * n) as u64, n),
                    Operand::new(kw, 0, n),
                )
                .named("trinv_row_gemm");
                g.c = Some(Operand::new(self.temp, 0, n));
                g.flags = F_B_LOWER;
                g.beta = if first { 0.0 } else { 1.0 };
                g.record(b)?;
                first = false;
            }
            let mut g = Gemm::new(
                "gemm_update",
                (0, i1 - i0),
                (0, i0),
                (0, i1 - i0),
                Operand::new(self.bufs.small, 0, NB),
                Operand::new(self.temp, 0, n),
            )
            .named("trinv_scale_gemm");
            g.c = Some(Operand::new(rw, (i0 * n) as u64, n));
            g.alpha = -1.0;
            g.record(b)?;
        }
        Ok(())
    }

    /// U = J M J.
    fn reverse_out(&self, b: &mut Batch<'_>) -> Result<()> {
        let n = self.n;
        // U = J M J: row x of the top half swaps with row n-1-x.
        let half = n.div_ceil(2);
        for &s in &self.slabs {
            let Some((x0, x1)) = intersect(s, (0, half)) else {
                continue;
            };
            let aw = self.ctx.rows_win(&self.u.buf, n, x0, x1)?;
            for &q in &self.slabs {
                // Rows x whose mirror n-1-x lies in q.
                let Some((y0, y1)) = intersect((x0, x1), (n - q.1, n - q.0)) else {
                    continue;
                };
                let a2w = self.ctx.rows_win(&self.u.buf, n, q.0, q.1)?;
                let p = CholParams {
                    a_base: aw.base(0),
                    a2_base: a2w.base(0),
                    lo: y0 as u32,
                    hi: y1 as u32,
                    ..self.base
                };
                self.dispatch(
                    b,
                    "reverse_out",
                    &p,
                    self.bufs.slots(Some(aw), Some(a2w), None),
                    [n.div_ceil(256) as u32, (y1 - y0) as u32, 1],
                )?;
            }
        }
        Ok(())
    }
}
