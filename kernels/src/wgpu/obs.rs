//! SparseGPT's blocked OBS prune (§7): per column block, the adaptive unstructured mask's
//! selection (select.wgsl's block_hist and block_candidates, ended by the block's first
//! in-block dispatch; the whole-group radix select where its buffer does not fit one
//! binding), then per sub-block of at
//! most 128 columns the in-block loop (obs.wgsl) and the lazy update of every column to its
//! right (gemm.wgsl). A block wider than 128 runs as several sub-blocks with their lazy
//! updates in between, which is the same arithmetic reordered: decisions are still made per
//! block. The per-row losses are summed on the host (one f32 per row comes back).

use bytemuck::{Pod, Zeroable};

use crate::compose;
use crate::error::{KernelError, Result};
use crate::ops::{HinvFactor, ObsOutcome, ObsSelection};

use super::exec::{grid, Batch, Ctx, Module, Slot};
use super::gemm::{before, Gemm, Operand};
use super::mem::{WgpuMask, WgpuTensor};
use super::select::{GroupScratch, KeyKind, KeySource};
use crate::plan::select::block;

/// obs.wgsl's SB: columns of one in-block dispatch.
const SUB: usize = 128;
/// obs.wgsl's RB: rows per workgroup.
const ROWS_PER_GROUP: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct ObsParams {
    rows: u32,
    cols: u32,
    j1: u32,
    cnt: u32,
    w_base: u32,
    u_base: u32,
    m_base: u32,
    wpr: u32,
    err_base: u32,
    row0: u32,
    nm: u32,
    n: u32,
    m: u32,
    sel: u32,
    sel_base: u32,
    sel_clear: u32,
    lead: u32,
    b0: u32,
    b1: u32,
}

/// One OBS prune on wgpu ([`compose::ObsSteps`]): everything is recorded into one batch,
/// submitted when the loss is read back. The in-block loop takes sub-blocks of at most
/// [`SUB`] columns whose rows of U fit one binding, per slab of W's rows, each slab's lazy
/// update right after its loop (the error scratch holds one slab).
pub(crate) struct ObsRun<'c, 'a> {
    ctx: &'c Ctx,
    w: &'a WgpuTensor,
    factor: &'a HinvFactor<WgpuTensor>,
    /// The block width of the run (set by `sub_block`).
    block: usize,
    state: Option<ObsState<'c>>,
}

/// What [`ObsRun::begin`] allocates.
struct ObsState<'c> {
    batch: Batch<'c>,
    mask: WgpuMask,
    diag: wgpu::Buffer,
    loss: wgpu::Buffer,
    err: wgpu::Buffer,
    dead: wgpu::Buffer,
    slabs: Vec<(usize, usize)>,
    scratch: Option<GroupScratch>,
    block_sel: Option<BlockSel>,
}

/// SparseGPT's block selection in two dispatches, ended in the in-block kernel
/// (plan::select::block): the buffer of two halves, which half the next selecting block
/// takes, and the block whose selection the next in-block dispatch ends.
struct BlockSel {
    buf: wgpu::Buffer,
    half_words: usize,
    selected: usize,
    pending: Option<(usize, usize, usize)>,
}

impl<'c, 'a> ObsRun<'c, 'a> {
    pub fn new(ctx: &'c Ctx, w: &'a WgpuTensor, factor: &'a HinvFactor<WgpuTensor>) -> Self {
        Self {
            ctx,
            w,
            factor,
            block: 1,
            state: None,
        }
    }

    fn state(&mut self) -> &mut ObsState<'c> {
        self.state.as_mut().expect("the OBS run has begun")
    }

    /// zero_dead per slab: W's dead columns set to zero before anything reads them.
    fn zero_dead(&mut self) -> Result<()> {
        let (ctx, w) = (self.ctx, self.w);
        let cols = w.cols;
        let st = self.state();
        let (loss_w, diag_w, dead_w) = (
            ctx.whole(&st.loss, w.rows)?,
            ctx.whole(&st.diag, cols)?,
            ctx.whole(&st.dead, cols)?,
        );
        for &(r0, r1) in &st.slabs {
            let ww = ctx.rows_win(&w.buf, cols, r0, r1)?;
            let p = ObsParams {
                rows: (r1 - r0) as u32,
                cols: cols as u32,
                w_base: ww.base((r0 * cols) as u64),
                ..Default::default()
            };
            st.batch.dispatch(
                Module::Obs,
                "zero_dead",
                bytemuck::bytes_of(&p),
                &[
                    Slot::Win(ww),
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Win(loss_w),
                    Slot::Win(diag_w),
                    Slot::Win(dead_w),
                    Slot::Unused,
                ],
                [cols.div_ceil(256) as u32, (r1 - r0) as u32, 1],
            )?;
        }
        Ok(())
    }
}

impl compose::ObsSteps for ObsRun<'_, '_> {
    type Mask = WgpuMask;

    fn shapes(&self) -> ((usize, usize), (usize, usize)) {
        let u = &self.factor.u;
        ((self.w.rows, self.w.cols), (u.rows, u.cols))
    }

    fn dead(&self) -> &[usize] {
        &self.factor.dead
    }

    fn mask_shape(m: &WgpuMask) -> (usize, usize) {
        (m.rows, m.cols)
    }

    fn sub_block(&mut self, block: usize, sel: &ObsSelection<'_, WgpuMask>) -> Result<usize> {
        // Sub-blocks hold whole N:M groups, and their rows of U fit one binding (always, but
        // for artificially small binding limits).
        let width = SUB.min(self.ctx.rows_fitting(self.w.cols));
        let sub = match *sel {
            ObsSelection::NM { m, .. } => width / m * m,
            _ => width,
        };
        if sub == 0 {
            return Err(KernelError::Unsupported(format!(
                "the OBS loop needs a group of M columns (at most {SUB}) whose rows of U fit one binding; {width} fit"
            )));
        }
        if sub < SUB.min(block) {
            self.ctx.split_noted(2);
        }
        self.block = block;
        Ok(sub)
    }

    fn begin(&mut self, sel: &ObsSelection<'_, WgpuMask>) -> Result<()> {
        let (ctx, (rows, cols)) = (self.ctx, (self.w.rows, self.w.cols));
        let mask = ctx.mask(rows, cols)?;
        let slabs = ctx.row_slabs(rows, cols, 1, usize::MAX)?;
        let max_rows = slabs.iter().map(|s| s.1 - s.0).max().unwrap_or(0);
        let mut dead_flags = vec![0u32; cols];
        for &j in &self.factor.dead {
            dead_flags[j] = 1;
        }
        let mut batch = ctx.batch();
        match *sel {
            ObsSelection::Given(m) => batch.copy(&m.buf, &mask.buf, mask.buf.size()),
            _ => batch.clear(&mask.buf),
        }
        // Two dispatches per block where both halves fit one binding; otherwise (bindings
        // capped far below the device's) the five of the whole-group selection.
        let block_sel = match sel {
            ObsSelection::Unstructured(_) => {
                let half_words = block::half_words(rows * self.block.min(cols).max(1));
                if ctx.win_fits(2 * half_words as u64) {
                    let buf = ctx.alloc("OBS block selection", 2 * half_words, None)?;
                    batch.clear(&buf);
                    Some(BlockSel {
                        buf,
                        half_words,
                        selected: 0,
                        pending: None,
                    })
                } else {
                    None
                }
            }
            _ => None,
        };
        self.state = Some(ObsState {
            batch,
            mask,
            diag: ctx.diag_of(&self.factor.u)?,
            loss: ctx.alloc("OBS loss per row", rows, None)?,
            err: ctx.scratch("OBS errors", max_rows * SUB)?,
            dead: ctx.upload_words("dead columns", &dead_flags)?,
            slabs,
            scratch: match sel {
                ObsSelection::Unstructured(_) if block_sel.is_none() => {
                    Some(ctx.group_scratch(rows, cols)?)
                }
                _ => None,
            },
            block_sel,
        });
        if !self.factor.dead.is_empty() {
            self.zero_dead()?;
        }
        Ok(())
    }

    fn block(&mut self, _i1: usize, _i2: usize) -> Result<()> {
        // U is read in place, a window of its rows per sub-block.
        Ok(())
    }

    fn select(&mut self, i1: usize, i2: usize, k: usize) -> Result<()> {
        let (ctx, w) = (self.ctx, self.w);
        let st = self.state();
        let ks = KeySource {
            src: w,
            kind: KeyKind::Obs,
            aux: Some(&st.diag),
            grad: None,
            write_w: false,
        };
        if let Some(bs) = st.block_sel.as_mut() {
            // k = 0 prunes nothing: the block's bits stay as cleared.
            if k > 0 {
                let half = (bs.selected % 2) * bs.half_words;
                let buf = (&bs.buf, 2 * bs.half_words);
                ctx.select_block(&mut st.batch, &ks, &st.mask, buf, half, (i1, i2), k)?;
                bs.selected += 1;
                bs.pending = Some((i1, i2, half));
            }
            return Ok(());
        }
        let sc = st.scratch.as_ref().expect("unstructured scratch");
        ctx.select_group(&mut st.batch, &ks, &st.mask, sc, i1, i2, k, false)
    }

    fn columns(
        &mut self,
        _i1: usize,
        (j1, j2): (usize, usize),
        nm: Option<(usize, usize)>,
    ) -> Result<()> {
        let (ctx, w, u) = (self.ctx, self.w, &self.factor.u);
        let (rows, cols) = (w.rows, w.cols);
        let maxg = ctx.max_groups();
        let st = self.state();
        let wpr = st.mask.wpr();
        let (nm, n, m) = nm.map_or((0, 0, 1), |(n, m)| (1, n, m));
        let uw = ctx.rows_win(&u.buf, cols, j1, j2)?;
        let (loss_w, diag_w, dead_w) = (
            ctx.whole(&st.loss, rows)?,
            ctx.whole(&st.diag, cols)?,
            ctx.whole(&st.dead, cols)?,
        );
        // The first sub-block of a block whose selection is pending ends it.
        let ending = st
            .block_sel
            .as_mut()
            .and_then(|bs| bs.pending.take().map(|p| (p, bs.half_words)));
        let sel_w = match st.block_sel.as_ref() {
            Some(bs) => Slot::Win(ctx.whole(&bs.buf, 2 * bs.half_words)?),
            None => Slot::Unused,
        };
        for (slab, &(r0, r1)) in st.slabs.iter().enumerate() {
            let ww = ctx.rows_win(&w.buf, cols, r0, r1)?;
            let mw = ctx.rows_win(&st.mask.buf, wpr, r0, r1)?;
            let ew = ctx.rows_win(&st.err, SUB, 0, r1 - r0)?;
            let sel = match ending {
                Some(((b0, b1, half), hw)) => {
                    debug_assert_eq!(b0, j1, "a block's selection ends in its first sub-block");
                    (1, half, hw - half, b0, b1)
                }
                None => (0, 0, 0, 0, 0),
            };
            let p = ObsParams {
                rows: (r1 - r0) as u32,
                cols: cols as u32,
                j1: j1 as u32,
                cnt: (j2 - j1) as u32,
                w_base: ww.base((r0 * cols) as u64),
                u_base: uw.base(0),
                m_base: mw.base((r0 * wpr) as u64),
                wpr: wpr as u32,
                err_base: ew.base(0),
                row0: r0 as u32,
                nm,
                n: n as u32,
                m: m as u32,
                sel: sel.0,
                sel_base: sel.1 as u32,
                sel_clear: sel.2 as u32,
                lead: (slab == 0) as u32,
                b0: sel.3 as u32,
                b1: sel.4 as u32,
            };
            st.batch.dispatch(
                ctx.obs_module(),
                "obs_block",
                bytemuck::bytes_of(&p),
                &[
                    Slot::Win(ww),
                    Slot::Win(uw),
                    Slot::Win(mw),
                    Slot::Win(ew),
                    Slot::Win(loss_w),
                    Slot::Win(diag_w),
                    Slot::Win(dead_w),
                    sel_w,
                ],
                grid((r1 - r0).div_ceil(ROWS_PER_GROUP) as u64, maxg),
            )?;
            if j2 < cols {
                // W[r0:r1, j2:] -= Err1 · U[j1:j2, j2:], logical (i, j) = W(i, j2 + j).
                let mut g = Gemm::new(
                    "gemm_update",
                    (r0, r1),
                    (0, cols - j2),
                    (0, j2 - j1),
                    Operand::new(ew, before(r0 * SUB), SUB),
                    Operand::new(uw, (j1 * cols + j2) as u64, cols),
                )
                .named("obs_lazy_update");
                g.c = Some(Operand::new(ww, j2 as u64, cols));
                g.alpha = -1.0;
                g.beta = 1.0;
                g.record(&mut st.batch)?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<ObsOutcome<WgpuMask>> {
        let rows = self.w.rows;
        let st = self.state.take().expect("the OBS run has begun");
        st.batch.submit()?;
        let per_row = self.ctx.read_words(&st.loss, rows)?;
        let total: f64 = per_row.iter().map(|&v| f32::from_bits(v) as f64).sum();
        Ok(ObsOutcome {
            mask: st.mask,
            loss: total,
        })
    }
}
