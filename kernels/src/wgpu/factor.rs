//! The damped inverse-Hessian factor (§6) on the device; the algorithm is described at the
//! top of factor.wgsl. Everything runs on the GPU; the host only reads back the status
//! words (failed pivot, first non-finite entry), λ and the dead-column flags at the end.

use bytemuck::{Pod, Zeroable};

use crate::error::{KernelError, Result};
use crate::ops::{check, HinvFactor};

use super::exec::{grid, Batch, Ctx, Module, Slot, Win};
use super::gemm::{Batched, Gemm, Operand, F_A_LOWER, F_B_LOWER, F_C_TRANS, F_LOWER};
use super::mem::WgpuTensor;
use crate::plan::factor::{
    block_width, cholesky_steps, inverse_levels, CholStep, PairRun, NB, NB_WIDE,
};
use crate::plan::{GemmPiece, Slabs};

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
    keep_dead: u32,
}

struct Bufs<'a> {
    small: Win<'a>,
    dvec: Win<'a>,
    stat: Win<'a>,
}

impl Bufs<'_> {
    fn slots<'a>(
        &self,
        a: Option<Win<'a>>,
        a2: Option<Win<'a>>,
        h: Option<Win<'a>>,
    ) -> [Slot<'a>; 6]
    where
        Self: 'a,
    {
        [
            Slot::from(a),
            Slot::from(a2),
            Slot::from(h),
            Slot::Win(self.small),
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
        let small = self.scratch("Cholesky block", NB_WIDE * NB_WIDE)?;
        let dvec = self.scratch("Hessian diagonal", n)?;
        let mut header = vec![0u32; 4 + n];
        header[1] = u32::MAX;
        let stat = self.upload_words("factor status", &header)?;
        {
            // Windows are whole 128-row blocks where they fit, else 64-row ones, so a diagonal
            // block never straddles two.
            let room = self.binding_room();
            let slabs = Slabs::new(n, n, room, NB_WIDE, usize::MAX)
                .or_else(|_| Slabs::new(n, n, room, NB, usize::MAX))?;
            let pass = FactorPass {
                ctx: self,
                h,
                u: &u,
                bufs: Bufs {
                    small: self.whole(&small, NB_WIDE * NB_WIDE)?,
                    dvec: self.whole(&dvec, n)?,
                    stat: self.whole(&stat, 4 + n)?,
                },
                wins: slabs
                    .bounds()
                    .iter()
                    .map(|&(r0, r1)| self.rows_win(&u.buf, n, r0, r1))
                    .collect::<Result<_>>()?,
                nb: block_width(&slabs),
                slabs,
                maxg: self.max_groups(),
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
    /// The factor's rows cut into windows of whole diagonal blocks, and a window per slab.
    slabs: Slabs,
    /// The diagonal blocks' width (plan::factor::block_width).
    nb: usize,
    wins: Vec<Win<'a>>,
    maxg: u32,
    n: usize,
    base: CholParams,
}

impl<'a> FactorPass<'a> {
    fn dispatch(
        &self,
        b: &mut Batch<'_>,
        entry: &'static str,
        p: &CholParams,
        slots: [Slot<'_>; 6],
        g: [u32; 3],
    ) -> Result<()> {
        b.dispatch(Module::Factor, entry, bytemuck::bytes_of(p), &slots, g)
    }

    /// Dead columns, λ, non-finite entries.
    fn scan(&self, b: &mut Batch<'_>) -> Result<()> {
        let n = self.n;
        for (r0, r1) in self.slabs.bounds() {
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
        for (p0, p1) in self.slabs.bounds() {
            let aw = self.ctx.rows_win(&self.u.buf, n, p0, p1)?;
            for (q0, q1) in self.slabs.bounds() {
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

    /// The window of the slab holding row `r`.
    fn win_of(&self, r: usize) -> Win<'a> {
        self.wins[self.slabs.locate(r).0]
    }

    /// An operand of a block product: stored rows from `row0` (the piece's first stored row
    /// is `row0 + first`), element (0, 0) at `origin`, leading dimension n.
    fn block(&self, row0: usize, first: usize, origin: usize) -> Operand<'a> {
        Operand::new(self.win_of(row0 + first), origin as u64, self.n)
    }

    /// One block product's piece over the factor's buffer (operands and output disjoint
    /// blocks of it, so A and B are bound read-write).
    fn record_piece(&self, b: &mut Batch<'_>, g: Gemm<'_>) -> Result<()> {
        let mut g = g;
        g.in_place = true;
        g.record(b)
    }

    fn cholesky(&self, b: &mut Batch<'_>) -> Result<()> {
        let n = self.n;
        for step in cholesky_steps(n, &self.slabs, self.nb) {
            match step {
                CholStep::Diag { k0, w } => {
                    let dw = self.ctx.rows_win(&self.u.buf, n, k0, k0 + w)?;
                    let p = CholParams {
                        a_base: dw.base(0),
                        k0: k0 as u32,
                        nb: w as u32,
                        ..self.base
                    };
                    self.dispatch(
                        b,
                        "chol_diag",
                        &p,
                        self.bufs.slots(Some(dw), None, None),
                        [1, 1, 1],
                    )?;
                }
                CholStep::Panel { k0, w, pieces } => {
                    // A21 = A21·L_kk⁻ᵀ: B(k, j) = small(j, k).
                    let r1 = k0 + w;
                    for pc in pieces {
                        let at = self.block(r1, pc.m.0, r1 * n + k0);
                        let mut g = Gemm::new(
                            "gemm_update",
                            pc.m,
                            pc.n,
                            pc.k,
                            at,
                            Operand::new(self.bufs.small, 0, NB_WIDE).t(),
                        )
                        .named("chol_panel_gemm");
                        g.c = Some(at);
                        self.record_piece(b, g)?;
                    }
                }
                CholStep::Syrk {
                    c0,
                    d0,
                    depth,
                    pieces,
                    ..
                } => {
                    for pc in pieces {
                        let mut g = Gemm::new(
                            "gemm_update",
                            pc.m,
                            pc.n,
                            pc.k,
                            self.block(c0, pc.m.0, c0 * n + d0),
                            self.block(c0, pc.n.0, c0 * n + d0).t(),
                        )
                        .named(if depth > self.nb {
                            "chol_outer_syrk"
                        } else {
                            "chol_inner_syrk"
                        });
                        g.c = Some(self.block(c0, pc.m.0, c0 * n + c0));
                        g.flags = F_LOWER;
                        g.alpha = -1.0;
                        g.beta = 1.0;
                        self.record_piece(b, g)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// X = L⁻¹ in place by doubling; the diagonal blocks are already inverted (chol_diag).
    fn invert(&self, b: &mut Batch<'_>) -> Result<()> {
        for runs in inverse_levels(self.n, &self.slabs, self.nb) {
            for run in &runs {
                self.pair_products(b, run)?;
            }
        }
        Ok(())
    }

    /// T = L21·X11 kept transposed in the pair's upper block, then X21 = −X22·T, for the
    /// run's pairs at once.
    fn pair_products(&self, b: &mut Batch<'_>, run: &PairRun) -> Result<()> {
        let n = self.n;
        let (r, s) = (run.r0, run.r0 + run.half);
        let stride = run.stride(n);
        let batch = Batched {
            count: run.count,
            stride: [stride; 3],
        };
        let beta = |pc: &GemmPiece| if pc.first { 0.0 } else { 1.0 };
        for pc in &run.t_pieces {
            let mut g = Gemm::new(
                "gemm_update",
                pc.m,
                pc.n,
                pc.k,
                self.block(s, pc.m.0, s * n + r),
                self.block(r, pc.k.0, r * n + r),
            )
            .named("trinv_t_gemm");
            g.c = Some(self.block(r, pc.n.0, r * n + s));
            g.flags = F_B_LOWER | F_C_TRANS;
            g.beta = beta(pc);
            g.batch = batch;
            self.record_piece(b, g)?;
        }
        for pc in &run.x_pieces {
            let mut g = Gemm::new(
                "gemm_update",
                pc.m,
                pc.n,
                pc.k,
                self.block(s, pc.m.0, s * n + s),
                self.block(r, pc.n.0, r * n + s).t(),
            )
            .named("trinv_x_gemm");
            g.c = Some(self.block(s, pc.m.0, s * n + r));
            g.flags = F_A_LOWER;
            g.alpha = -1.0;
            g.beta = beta(pc);
            g.batch = batch;
            self.record_piece(b, g)?;
        }
        Ok(())
    }

    /// U = J M J.
    fn reverse_out(&self, b: &mut Batch<'_>) -> Result<()> {
        let n = self.n;
        // U = J M J: row x of the top half swaps with row n-1-x.
        let half = n.div_ceil(2);
        for s in self.slabs.bounds() {
            let Some((x0, x1)) = intersect(s, (0, half)) else {
                continue;
            };
            let aw = self.ctx.rows_win(&self.u.buf, n, x0, x1)?;
            for q in self.slabs.bounds() {
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
