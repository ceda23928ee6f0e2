//! SparseGPT's blocked OBS prune (§7): per column block, the selection (select.wgsl's
//! whole-group radix select for the adaptive unstructured mask), then per sub-block of at
//! most 128 columns the in-block loop (obs.wgsl) and the lazy update of every column to its
//! right (gemm.wgsl). A block wider than 128 runs as several sub-blocks with their lazy
//! updates in between, which is the same arithmetic reordered: decisions are still made per
//! block. The per-row losses are summed on the host (one f32 per row comes back).

use bytemuck::{Pod, Zeroable};

use crate::error::{KernelError, Result};
use crate::ops::{check, unstructured_k, HinvFactor, ObsOutcome, ObsSelection};

use super::exec::{grid, Ctx, Module, Slot};
use super::gemm::{before, Gemm, Operand};
use super::mem::{WgpuMask, WgpuTensor};
use super::select::{KeyKind, KeySource};

/// obs.wgsl's SB: columns of one in-block dispatch.
const SUB: usize = 128;
/// obs.wgsl's RB: rows per workgroup.
const ROWS_PER_GROUP: usize = 16;

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
}

impl Ctx {
    pub(crate) fn obs_prune(
        &self,
        w: &mut WgpuTensor,
        factor: &HinvFactor<WgpuTensor>,
        selection: ObsSelection<'_, WgpuMask>,
        block: usize,
    ) -> Result<ObsOutcome<WgpuMask>> {
        let u = &factor.u;
        check::obs((w.rows, w.cols), (u.rows, u.cols), &selection, block)?;
        let (rows, cols) = (w.rows, w.cols);
        if let ObsSelection::Given(m) = selection {
            check::same("given mask vs W", (m.rows, m.cols), (rows, cols))?;
        }
        if let Some(&j) = factor.dead.iter().find(|&&j| j >= cols) {
            return Err(KernelError::InvalidArgument(format!(
                "dead column {j} is outside W's {cols} columns"
            )));
        }
        // Sub-blocks hold whole N:M groups, and their rows of U fit one binding (always, but
        // for artificially small binding limits).
        let width = SUB.min(self.rows_fitting(cols));
        let sub = match selection {
            ObsSelection::NM { m, .. } => width / m * m,
            _ => width,
        };
        if sub == 0 {
            return Err(KernelError::Unsupported(format!(
                "the OBS loop needs a group of M columns (at most {SUB}) whose rows of U fit one binding; {width} fit"
            )));
        }
        if sub < SUB.min(block) {
            self.split_noted(2);
        }
        let mask = self.mask(rows, cols)?;
        let wpr = mask.wpr();
        let diag = self.diag_of(u)?;
        let loss = self.alloc("OBS loss per row", rows, None)?;
        let slabs = self.row_slabs(rows, cols, 1, usize::MAX)?;
        let max_rows = slabs.iter().map(|s| s.1 - s.0).max().unwrap_or(0);
        let err = self.scratch("OBS errors", max_rows * SUB)?;
        let mut dead_flags = vec![0u32; cols];
        for &j in &factor.dead {
            dead_flags[j] = 1;
        }
        let dead = self.upload_words("dead columns", &dead_flags)?;
        let diag_w = self.whole(&diag, cols)?;
        let dead_w = self.whole(&dead, cols)?;
        let loss_w = self.whole(&loss, rows)?;
        let sc = match selection {
            ObsSelection::Unstructured(_) => Some(self.group_scratch(rows)?),
            _ => None,
        };
        let maxg = self.max_groups();

        let mut b = self.batch();
        match selection {
            ObsSelection::Given(m) => b.copy(&m.buf, &mask.buf, mask.buf.size()),
            _ => b.clear(&mask.buf),
        }
        if !factor.dead.is_empty() {
            for &(r0, r1) in &slabs {
                let ww = self.rows_win(&w.buf, cols, r0, r1)?;
                let p = ObsParams {
                    rows: (r1 - r0) as u32,
                    cols: cols as u32,
                    w_base: ww.base((r0 * cols) as u64),
                    ..Default::default()
                };
                b.dispatch(
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
                    ],
                    [cols.div_ceil(256) as u32, (r1 - r0) as u32, 1],
                )?;
            }
        }
        for i1 in (0..cols).step_by(block) {
            let i2 = (i1 + block).min(cols);
            if let (ObsSelection::Unstructured(p), Some(sc)) = (selection, &sc) {
                let ks = KeySource {
                    src: w,
                    kind: KeyKind::Obs,
                    aux: Some(&diag),
                    grad: None,
                    write_w: false,
                };
                self.select_group(
                    &mut b,
                    &ks,
                    &mask,
                    sc,
                    i1,
                    i2,
                    unstructured_k(p, rows * (i2 - i1)),
                    false,
                )?;
            }
            let (nm, n, m) = match selection {
                ObsSelection::NM { n, m } => (1, n, m),
                _ => (0, 0, 1),
            };
            for j1 in (i1..i2).step_by(sub) {
                let j2 = (j1 + sub).min(i2);
                let uw = self.rows_win(&u.buf, cols, j1, j2)?;
                for &(r0, r1) in &slabs {
                    let ww = self.rows_win(&w.buf, cols, r0, r1)?;
                    let mw = self.rows_win(&mask.buf, wpr, r0, r1)?;
                    let ew = self.rows_win(&err, SUB, 0, r1 - r0)?;
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
                    };
                    b.dispatch(
                        Module::Obs,
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
                        g.record(&mut b)?;
                    }
                }
            }
        }
        b.submit()?;
        let per_row = self.read_words(&loss, rows)?;
        let total: f64 = per_row.iter().map(|&v| f32::from_bits(v) as f64).sum();
        Ok(ObsOutcome { mask, loss: total })
    }
}
