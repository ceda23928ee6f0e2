//! Mask selection (§5) and the fused prune: radix select per row, whole-group radix select
//! (magnitude over the matrix; SparseGPT's per-block selection where its own two dispatches'
//! buffer does not fit one binding), SparseGPT's block selection, N:M in one pass.
//! See select.wgsl for the kernels.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::ops::{check, unstructured_k, MaskGroup, MaskPattern, Score};
use crate::plan;

use super::exec::{grid, Batch, Ctx, Slot};
use super::mem::{WgpuMask, WgpuTensor};

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct SelParams {
    rows: u32,
    cols: u32,
    c0: u32,
    c1: u32,
    kind: u32,
    s_base: u32,
    g_base: u32,
    m_base: u32,
    wpr: u32,
    k: u32,
    m: u32,
    shift: u32,
    chunk0: u32,
    full_words: u32,
    write_w: u32,
    nelem: u32,
    chunk_rows: u32,
    chunk: u32,
    digit_pass: u32,
    lead: u32,
    sel_base: u32,
    row0: u32,
}

/// Entries per workgroup of a histogram pass over `nelem` (a multiple of 256), and how many
/// workgroups: `plan::select::hist_groups` at its default fill (WGSL has no device count of
/// compute units), each workgroup taking every so many chunks.
fn hist_plan(nelem: usize) -> (usize, usize) {
    let groups = plan::select::hist_groups(nelem, plan::select::HIST_FILL);
    let chunk = nelem.div_ceil(groups).next_multiple_of(256).max(256);
    (chunk, nelem.div_ceil(chunk).max(1))
}

/// How keys are made from the source values (select.wgsl's `key`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// The values as they are (a score matrix).
    Raw = 0,
    Magnitude = 1,
    Wanda = 2,
    Gblm = 3,
    /// SparseGPT's w²/d², with d = diag(U) in `aux`.
    Obs = 4,
}

/// Where the keys come from: the source matrix and, by kind, a column vector and a second
/// matrix of the same shape.
pub(crate) struct KeySource<'a> {
    pub src: &'a WgpuTensor,
    pub kind: KeyKind,
    pub aux: Option<&'a wgpu::Buffer>,
    pub grad: Option<&'a WgpuTensor>,
    /// Zero the pruned source entries (the fused prune).
    pub write_w: bool,
}

/// Scratch of the whole-group selection: a global histogram per digit pass (one buffer each,
/// so that each binds in 8 KiB), the decided digits (select.wgsl's `state`), the tie count of
/// each chunk of rows.
pub(crate) struct GroupScratch {
    hists: [wgpu::Buffer; 3],
    state: wgpu::Buffer,
    ties: wgpu::Buffer,
    chunks: usize,
}

const DIGIT_SHIFTS: [u32; 3] = [21, 10, 0];
const BINS: usize = 2048;
const STATE_WORDS: usize = 8;

impl Ctx {
    /// For selections over groups of `rows` rows of a `cols`-column source (any columns of
    /// it: a window's chunks are at most its rows, and the chunks of all windows at most
    /// `MAX_CHUNKS` and one more per window).
    pub(crate) fn group_scratch(&self, rows: usize, cols: usize) -> Result<GroupScratch> {
        let windows = self.row_slabs(rows, cols, 1, usize::MAX)?.len();
        let chunks = rows.min(plan::select::MAX_CHUNKS + windows).max(1);
        let hist = || self.alloc("selection histogram", BINS, None);
        Ok(GroupScratch {
            hists: [hist()?, hist()?, hist()?],
            state: self.alloc("selection state", STATE_WORDS, None)?,
            ties: self.scratch("selection tie counts", chunks)?,
            chunks,
        })
    }

    /// Windows and bases of the source rows [r0, r1) (and of `grad`, `mask`).
    fn sel_slots<'a>(
        &self,
        ks: &KeySource<'a>,
        mask: &'a WgpuMask,
        r0: usize,
        r1: usize,
        p: &mut SelParams,
    ) -> Result<[Slot<'a>; 3]> {
        let cols = ks.src.cols;
        let wpr = mask.wpr();
        let sw = self.rows_win(&ks.src.buf, cols, r0, r1)?;
        let mw = self.rows_win(&mask.buf, wpr, r0, r1)?;
        p.rows = (r1 - r0) as u32;
        p.cols = cols as u32;
        p.kind = ks.kind as u32;
        p.s_base = sw.base((r0 * cols) as u64);
        p.m_base = mw.base((r0 * wpr) as u64);
        p.wpr = wpr as u32;
        p.write_w = ks.write_w as u32;
        let grad = match ks.grad {
            Some(g) => {
                let gw = self.rows_win(&g.buf, cols, r0, r1)?;
                p.g_base = gw.base((r0 * cols) as u64);
                Slot::Win(gw)
            }
            None => Slot::Unused,
        };
        Ok([Slot::Win(sw), grad, Slot::Win(mw)])
    }

    fn aux_slot<'a>(&self, ks: &KeySource<'a>) -> Result<Slot<'a>> {
        Ok(match ks.aux {
            Some(a) => Slot::Win(self.whole(a, ks.src.cols)?),
            None => Slot::Unused,
        })
    }

    /// Per row: the k lowest keys of every row, one workgroup per row.
    pub(crate) fn select_rows(
        &self,
        b: &mut Batch<'_>,
        ks: &KeySource<'_>,
        mask: &WgpuMask,
        k: usize,
    ) -> Result<()> {
        let aux = self.aux_slot(ks)?;
        let cols = ks.src.cols;
        for (r0, r1) in self.row_slabs(ks.src.rows, cols, 1, usize::MAX)? {
            let mut p = SelParams {
                c1: cols as u32,
                k: k as u32,
                full_words: 1,
                ..Default::default()
            };
            let [s, g, m] = self.sel_slots(ks, mask, r0, r1, &mut p)?;
            let g2 = grid((r1 - r0) as u64, self.max_groups());
            b.dispatch(
                self.select_module(),
                "row_select",
                bytemuck::bytes_of(&p),
                &[s, aux, g, m, Slot::Unused, Slot::Unused, Slot::Unused],
                g2,
            )?;
        }
        Ok(())
    }

    /// N:M: the n lowest keys of every m consecutive columns of each row.
    pub(crate) fn select_nm(
        &self,
        b: &mut Batch<'_>,
        ks: &KeySource<'_>,
        mask: &WgpuMask,
        n: usize,
        m: usize,
    ) -> Result<()> {
        let aux = self.aux_slot(ks)?;
        let cols = ks.src.cols;
        for (r0, r1) in self.row_slabs(ks.src.rows, cols, 1, self.max_groups() as usize)? {
            let mut p = SelParams {
                c1: cols as u32,
                k: n as u32,
                m: m as u32,
                full_words: 1,
                ..Default::default()
            };
            let [s, g, mk] = self.sel_slots(ks, mask, r0, r1, &mut p)?;
            b.dispatch(
                self.select_module(),
                "nm_select",
                bytemuck::bytes_of(&p),
                &[s, aux, g, mk, Slot::Unused, Slot::Unused, Slot::Unused],
                [cols.div_ceil(256) as u32, (r1 - r0) as u32, 1],
            )?;
        }
        Ok(())
    }

    /// The k lowest keys of the block rows x [c0, c1) as one group, ties to the lower linear
    /// index within the block. `full_words` writes whole mask words (a fresh mask over all
    /// columns); otherwise only the bits of [c0, c1) change. Three histogram passes, the
    /// chunks' tie counts and the write, each a grid (select.wgsl).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn select_group(
        &self,
        b: &mut Batch<'_>,
        ks: &KeySource<'_>,
        mask: &WgpuMask,
        sc: &GroupScratch,
        c0: usize,
        c1: usize,
        k: usize,
        full_words: bool,
    ) -> Result<()> {
        let aux = self.aux_slot(ks)?;
        let rows = ks.src.rows;
        let cols = ks.src.cols;
        let width = c1 - c0;
        let slabs = self.row_slabs(rows, cols, 1, usize::MAX)?;
        let per = plan::select::chunk_rows(rows, width);
        let windows = plan::select::window_chunks(&slabs, per);
        let chunks: usize = windows.iter().map(|w| w.count).sum();
        assert!(
            chunks <= sc.chunks,
            "the selection scratch was made for this shape"
        );
        let hist =
            |p: usize| -> Result<Slot<'_>> { Ok(Slot::Win(self.whole(&sc.hists[p], BINS)?)) };
        let state = Slot::Win(self.whole(&sc.state, STATE_WORDS)?);
        let ties = Slot::Win(self.whole(&sc.ties, sc.chunks)?);
        let base = SelParams {
            c0: c0 as u32,
            c1: c1 as u32,
            k: k as u32,
            full_words: full_words as u32,
            chunk_rows: per as u32,
            ..Default::default()
        };
        // Bindings 5 and 7 by entry point: the pass's histogram and the previous one
        // (hist_pass), the last histogram and the tie counts (chunk_ties), the tie counts
        // (chunk_write).
        let one = |b: &mut Batch<'_>,
                   entry: &'static str,
                   p: &SelParams,
                   groups: [u32; 3],
                   s: [Slot<'_>; 3],
                   (h, w): (Slot<'_>, Slot<'_>)| {
            b.dispatch(
                self.select_module(),
                entry,
                bytemuck::bytes_of(p),
                &[s[0], aux, s[1], s[2], h, state, w],
                groups,
            )
        };
        // With k = 0 nothing is counted: the cleared state's slot 3 (T = 0, no ties) prunes
        // nothing, whatever the (unwritten) tie counts.
        for h in &sc.hists {
            b.clear(h);
        }
        b.clear(&sc.state);
        let maxg = self.max_groups();
        if k > 0 {
            for (pass, shift) in DIGIT_SHIFTS.into_iter().enumerate() {
                for (i, &(r0, r1)) in slabs.iter().enumerate() {
                    let mut p = SelParams {
                        shift,
                        digit_pass: pass as u32,
                        lead: (i == 0) as u32,
                        ..base
                    };
                    let s = self.sel_slots(ks, mask, r0, r1, &mut p)?;
                    let nelem = (r1 - r0) * width;
                    p.nelem = nelem as u32;
                    let (chunk, groups) = hist_plan(nelem);
                    p.chunk = chunk as u32;
                    let prev = match pass {
                        0 => Slot::Unused,
                        _ => hist(pass - 1)?,
                    };
                    one(
                        b,
                        "hist_pass",
                        &p,
                        grid(groups as u64, maxg),
                        s,
                        (hist(pass)?, prev),
                    )?;
                }
            }
            for (i, w) in windows.iter().enumerate() {
                let mut p = SelParams {
                    chunk0: w.first as u32,
                    lead: (i == 0) as u32,
                    ..base
                };
                let s = self.sel_slots(ks, mask, w.r0, w.r1, &mut p)?;
                let bind = (hist(2)?, ties);
                one(b, "chunk_ties", &p, grid(w.count as u64, maxg), s, bind)?;
            }
        }
        for w in &windows {
            let mut p = SelParams {
                chunk0: w.first as u32,
                ..base
            };
            let s = self.sel_slots(ks, mask, w.r0, w.r1, &mut p)?;
            let bind = (Slot::Unused, ties);
            one(b, "chunk_write", &p, grid(w.count as u64, maxg), s, bind)?;
        }
        Ok(())
    }

    /// SparseGPT's block selection, its two dispatches per window of rows (select.wgsl's
    /// block_hist and block_candidates) into the half of `sel` at `half` (cleared); obs.wgsl's
    /// obs_block ends it. The k >= 1 lowest keys of rows x [c0, c1).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn select_block(
        &self,
        b: &mut Batch<'_>,
        ks: &KeySource<'_>,
        mask: &WgpuMask,
        sel: (&wgpu::Buffer, usize),
        half: usize,
        (c0, c1): (usize, usize),
        k: usize,
    ) -> Result<()> {
        let aux = self.aux_slot(ks)?;
        let (rows, cols) = (ks.src.rows, ks.src.cols);
        let width = c1 - c0;
        let sel_slot = Slot::Win(self.whole(sel.0, sel.1)?);
        let maxg = self.max_groups();
        let slabs = self.row_slabs(rows, cols, 1, usize::MAX)?;
        for entry in ["block_hist", "block_candidates"] {
            for (i, &(r0, r1)) in slabs.iter().enumerate() {
                let nelem = (r1 - r0) * width;
                let mut p = SelParams {
                    c0: c0 as u32,
                    c1: c1 as u32,
                    k: k as u32,
                    nelem: nelem as u32,
                    lead: (i == 0) as u32,
                    sel_base: half as u32,
                    row0: r0 as u32,
                    ..Default::default()
                };
                let [s, g, m] = self.sel_slots(ks, mask, r0, r1, &mut p)?;
                let (_, groups) = hist_plan(nelem);
                b.dispatch(
                    self.select_module(),
                    entry,
                    bytemuck::bytes_of(&p),
                    &[s, aux, g, m, sel_slot, Slot::Unused, Slot::Unused],
                    grid(groups as u64, maxg),
                )?;
            }
        }
        Ok(())
    }

    pub(crate) fn select_mask(
        &self,
        scores: &WgpuTensor,
        pattern: MaskPattern,
    ) -> Result<WgpuMask> {
        check::pattern(&pattern, scores.cols)?;
        let mask = self.mask(scores.rows, scores.cols)?;
        let ks = KeySource {
            src: scores,
            kind: KeyKind::Raw,
            aux: None,
            grad: None,
            write_w: false,
        };
        self.select_into(&ks, &mask, pattern)?;
        Ok(mask)
    }

    fn select_into(&self, ks: &KeySource<'_>, mask: &WgpuMask, pattern: MaskPattern) -> Result<()> {
        let (rows, cols) = (ks.src.rows, ks.src.cols);
        let mut b = self.batch();
        match pattern {
            MaskPattern::Unstructured {
                sparsity,
                group: MaskGroup::PerRow,
            } => self.select_rows(&mut b, ks, mask, unstructured_k(sparsity, cols))?,
            MaskPattern::Unstructured {
                sparsity,
                group: MaskGroup::Matrix,
            } => {
                let sc = self.group_scratch(rows, cols)?;
                self.select_group(
                    &mut b,
                    ks,
                    mask,
                    &sc,
                    0,
                    cols,
                    unstructured_k(sparsity, rows * cols),
                    true,
                )?;
                return b.submit();
            }
            MaskPattern::NM { n, m } => self.select_nm(&mut b, ks, mask, n, m)?,
        }
        b.submit()
    }

    /// Score, select and apply fused: the keys are the scores computed on the fly from W
    /// (never stored) and the selecting kernel zeroes the pruned weights itself.
    pub(crate) fn prune_scored(
        &self,
        w: &mut WgpuTensor,
        score: Score<'_, WgpuTensor>,
        pattern: MaskPattern,
    ) -> Result<WgpuMask> {
        check::score((w.rows, w.cols), &score, |t: &WgpuTensor| (t.rows, t.cols))?;
        check::pattern(&pattern, w.cols)?;
        let mask = self.mask(w.rows, w.cols)?;
        let (kind, aux, grad) = match score {
            Score::Magnitude => (KeyKind::Magnitude, None, None),
            Score::Wanda { act } => (KeyKind::Wanda, Some(&act.buf), None),
            Score::Gblm { act, grad } => (KeyKind::Gblm, Some(&act.buf), Some(grad)),
        };
        // N:M zeroes in place only when no group straddles two workgroups' columns (then a
        // neighbour could still be reading the weight); otherwise select, then apply.
        let in_place = match pattern {
            MaskPattern::NM { m, .. } => 256 % m == 0,
            _ => true,
        };
        let ks = KeySource {
            src: w,
            kind,
            aux,
            grad,
            write_w: in_place,
        };
        self.select_into(&ks, &mask, pattern)?;
        if !in_place {
            self.apply_mask(w, &mask)?;
        }
        Ok(mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shaders_block_selection_layout_is_the_plans() {
        use crate::plan::select::block;
        let select = include_str!("../../shaders/select.wgsl");
        let obs = include_str!("../../shaders/obs.wgsl");
        let words = [
            ("SEL_FINE", block::FINE, true, false),
            ("SEL_COUNT", block::COUNT, true, true),
            ("SEL_DIGIT", block::DIGIT, true, true),
            ("SEL_RANK", block::RANK, true, true),
            ("SEL_CAND", block::CAND, true, true),
            ("SEL_HIST_WORDS", block::CLEARED, false, true),
        ];
        for (name, value, in_select, in_obs) in words {
            let decl = format!("const {name}: u32 = {value}u;");
            assert_eq!(select.contains(&decl), in_select, "select.wgsl: {decl}");
            assert_eq!(obs.contains(&decl), in_obs, "obs.wgsl: {decl}");
        }
    }

    #[test]
    fn histogram_chunks_cover_the_entries_in_the_planned_workgroups() {
        for nelem in [1, 255, 256, 4097, 65536, 128 * 4096, 4096 * 11008] {
            let (chunk, groups) = hist_plan(nelem);
            assert!(chunk.is_multiple_of(256) && chunk * groups >= nelem);
            assert!(groups <= plan::select::hist_groups(nelem, plan::select::HIST_FILL));
        }
        // A 4096 x 128 OBS block: 256 workgroups of 2048 (it was 128 of 4096).
        assert_eq!(hist_plan(4096 * 128), (2048, 256));
    }
}
