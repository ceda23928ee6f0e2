//! Importance scores (§4) and applying a mask (§5): elementwise kernels of score.wgsl over
//! row slabs.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::ops::{check, Score};

use super::exec::{Ctx, Module, Slot};
use super::mem::{WgpuMask, WgpuTensor};

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct ScoreParams {
    rows: u32,
    cols: u32,
    kind: u32,
    w_base: u32,
    g_base: u32,
    o_base: u32,
    m_base: u32,
    wpr: u32,
}

impl Ctx {
    /// The vec4 entry (`ENTRY4`, four columns per thread) where rows are whole vec4s from
    /// vec4-aligned bases, else the scalar one: the entry and the columns per thread.
    fn elementwise_entry(entry: &'static str, cols: usize, bases: &[u32]) -> (&'static str, usize) {
        if cols.is_multiple_of(4) && bases.iter().all(|b| b.is_multiple_of(4)) {
            (
                match entry {
                    "score" => "score4",
                    "apply_mask" => "apply_mask4",
                    _ => unreachable!("no vec4 entry for {entry}"),
                },
                4,
            )
        } else {
            (entry, 1)
        }
    }

    pub(crate) fn score(&self, w: &WgpuTensor, score: Score<'_, WgpuTensor>) -> Result<WgpuTensor> {
        check::score((w.rows, w.cols), &score, |t: &WgpuTensor| (t.rows, t.cols))?;
        let (rows, cols) = (w.rows, w.cols);
        let out = self.tensor("scores", rows, cols)?;
        let (kind, act, grad) = match score {
            Score::Magnitude => (0, None, None),
            Score::Wanda { act } => (1, Some(act), None),
            Score::Gblm { act, grad } => (2, Some(act), Some(grad)),
        };
        let act_slot = match act {
            Some(a) => Slot::Win(self.whole(&a.buf, cols)?),
            None => Slot::Unused,
        };
        let mut b = self.batch();
        for (r0, r1) in self.row_slabs(rows, cols, 1, self.max_groups() as usize)? {
            let origin = (r0 * cols) as u64;
            let ww = self.rows_win(&w.buf, cols, r0, r1)?;
            let ow = self.rows_win(&out.buf, cols, r0, r1)?;
            let mut p = ScoreParams {
                rows: (r1 - r0) as u32,
                cols: cols as u32,
                kind,
                w_base: ww.base(origin),
                o_base: ow.base(origin),
                ..Default::default()
            };
            let grad_slot = match grad {
                Some(g) => {
                    let gw = self.rows_win(&g.buf, cols, r0, r1)?;
                    p.g_base = gw.base(origin);
                    Slot::Win(gw)
                }
                None => Slot::Unused,
            };
            let (entry, per) =
                Self::elementwise_entry("score", cols, &[p.w_base, p.o_base, p.g_base]);
            b.dispatch(
                Module::Score,
                entry,
                bytemuck::bytes_of(&p),
                &[
                    Slot::Win(ww),
                    act_slot,
                    grad_slot,
                    Slot::Win(ow),
                    Slot::Unused,
                ],
                [cols.div_ceil(256 * per) as u32, (r1 - r0) as u32, 1],
            )?;
        }
        b.submit()?;
        Ok(out)
    }

    pub(crate) fn apply_mask_rec(
        &self,
        b: &mut super::exec::Batch<'_>,
        w: &WgpuTensor,
        mask: &WgpuMask,
    ) -> Result<()> {
        let (rows, cols) = (w.rows, w.cols);
        let wpr = mask.wpr();
        for (r0, r1) in self.row_slabs(rows, cols, 1, self.max_groups() as usize)? {
            let ww = self.rows_win(&w.buf, cols, r0, r1)?;
            let mw = self.rows_win(&mask.buf, wpr, r0, r1)?;
            let p = ScoreParams {
                rows: (r1 - r0) as u32,
                cols: cols as u32,
                w_base: ww.base((r0 * cols) as u64),
                m_base: mw.base((r0 * wpr) as u64),
                wpr: wpr as u32,
                ..Default::default()
            };
            let (entry, per) = Self::elementwise_entry("apply_mask", cols, &[p.w_base]);
            b.dispatch(
                Module::Score,
                entry,
                bytemuck::bytes_of(&p),
                &[
                    Slot::Win(ww),
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Unused,
                    Slot::Win(mw),
                ],
                [cols.div_ceil(256 * per) as u32, (r1 - r0) as u32, 1],
            )?;
        }
        Ok(())
    }

    pub(crate) fn apply_mask(&self, w: &mut WgpuTensor, mask: &WgpuMask) -> Result<()> {
        check::same("mask vs W", (mask.rows, mask.cols), (w.rows, w.cols))?;
        let mut b = self.batch();
        self.apply_mask_rec(&mut b, w, mask)?;
        b.submit()
    }
}
