//! The structured-pruning ops of §11 on the device. Every matrix product is a gemm.wgsl
//! dispatch (the plain-sum gradient, UᵀU, Q = W[:,S]·Uᵀ with its squared sum, Y = U·Hinv[S,:]
//! and the two downdates); gathers, zeros, the Taylor sums and the batched factors of narrow
//! groups are structured.wgsl. Solves with Hinv[S,S] go through a triangular factor of its
//! inverse: U from §6's factorisation (factor.wgsl) of the gathered block, undamped and with
//! zero diagonals kept, so that Hinv[S,S]⁻¹ = UᵀU; then Q = W[:,S]·Uᵀ and Y = U·Hinv[S,:] give
//! ε_S = ½‖Q‖², Q·Y = W[:,S]·Hinv[S,S]⁻¹·Hinv[S,:] and YᵀY = Hinv[:,S]·Hinv[S,S]⁻¹·Hinv[S,:]
//! (the reference's L⁻¹ is another such factor: the products are the same). Groups of at most
//! 64 columns are factored many at once, one workgroup each, with L⁻¹ of Hinv[S,S] = LLᵀ.

use std::cell::RefCell;

use bytemuck::{Pod, Zeroable};

use crate::compose::{self, InverseFactor, Lines};
use crate::error::{KernelError, Result};
use crate::ops::{check, HinvExplicit, SegmentAxis, TaylorInputs, TaylorKind};

use super::exec::{grid, Batch, Ctx, Module, Slot, Win};
use super::factor::FactorRun;
use super::gemm::{Batched, Gemm, Mat, Operand, Product, F_B_LOWER, F_STORE};
use super::mem::{shape, WgpuTensor};
use crate::plan::groups::{group_batches, DEFAULT_FILL};

/// The widest group factored in one workgroup (structured.wgsl's NB): a 64x64 f32 block is
/// 16 KiB of workgroup memory.
const SMALL_GROUP: usize = 64;
/// Entries per workgroup of taylor_part (structured.wgsl's CHUNK).
const CHUNK: usize = 4096;
/// Rows per workgroup of group_sumsq, and the GEMM's output tile.
const SUMSQ_ROWS: usize = 256;
const TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    row0: u32,
    src_base: u32,
    src_ld: u32,
    dst_base: u32,
    dst_ld: u32,
    ridx_on: u32,
    cidx_on: u32,
    r_off: u32,
    c_off: u32,
    aux1_base: u32,
    aux2_base: u32,
    kind: u32,
    axis: u32,
    width: u32,
    seg_lo: u32,
    nseg: u32,
    chunks: u32,
    part_off: u32,
    part_ld: u32,
    has_g: u32,
    has_f: u32,
    gscale: f32,
    fscale: f32,
    scale: f32,
    count: u32,
}

/// The storage bindings of structured.wgsl, unused where `None`.
#[derive(Default)]
struct Bind<'a> {
    src: Option<Win<'a>>,
    dst: Option<Win<'a>>,
    ridx: Option<Win<'a>>,
    cidx: Option<Win<'a>>,
    aux1: Option<Win<'a>>,
    aux2: Option<Win<'a>>,
    part: Option<Win<'a>>,
    stat: Option<Win<'a>>,
}

impl<'a> Bind<'a> {
    fn slots(&self) -> [Slot<'a>; 8] {
        [
            self.src, self.dst, self.ridx, self.cidx, self.aux1, self.aux2, self.part, self.stat,
        ]
        .map(Slot::from)
    }
}

/// Which rows or columns a gather takes.
#[derive(Clone, Copy)]
enum Pick<'a> {
    /// `len` consecutive indices from `start`.
    Range { start: usize, len: usize },
    /// A sorted list, on the host (to plan windows) and on the device.
    List(&'a [usize], &'a wgpu::Buffer),
}

impl<'a> Pick<'a> {
    fn all(len: usize) -> Self {
        Pick::Range { start: 0, len }
    }

    fn len(&self) -> usize {
        match *self {
            Pick::Range { len, .. } => len,
            Pick::List(v, _) => v.len(),
        }
    }

    /// The positions [p0, p1) of the picks whose index lies in [lo, hi).
    fn within(&self, lo: usize, hi: usize) -> (usize, usize) {
        match *self {
            Pick::Range { start, len } => {
                let end = start + len;
                (lo.clamp(start, end) - start, hi.clamp(start, end) - start)
            }
            Pick::List(v, _) => (
                v.partition_point(|&i| i < lo),
                v.partition_point(|&i| i < hi),
            ),
        }
    }
}

fn taylor_kind(k: TaylorKind) -> u32 {
    match k {
        TaylorKind::Taylor1 => 0,
        TaylorKind::Taylor2 => 1,
        TaylorKind::TaylorMix => 2,
    }
}

impl Ctx {
    fn structured(
        &self,
        b: &mut Batch<'_>,
        entry: &'static str,
        p: &Params,
        bind: Bind<'_>,
        groups: [u32; 3],
    ) -> Result<()> {
        b.dispatch(
            Module::Structured,
            entry,
            bytemuck::bytes_of(p),
            &bind.slots(),
            groups,
        )
    }

    /// An index list as u32 words on the device (the checks keep every index below 2³²).
    fn index_list(&self, idx: &[usize]) -> Result<wgpu::Buffer> {
        let words: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        self.upload_words("index list", &words)
    }

    fn pick_win<'a>(&self, p: &Pick<'a>) -> Result<Option<Win<'a>>> {
        match *p {
            Pick::Range { .. } => Ok(None),
            Pick::List(v, buf) => Ok(Some(self.whole(buf, v.len())?)),
        }
    }

    /// Records dst = src[rows, cols] for a `src_shape` source (dst is rows.len() x
    /// cols.len(), from row `dst_row0` of its buffer): per window of source rows, the output
    /// rows they feed, in windows of their own.
    fn record_gather(
        &self,
        b: &mut Batch<'_>,
        src: &wgpu::Buffer,
        (src_rows, src_cols): (usize, usize),
        rows: Pick<'_>,
        cols: Pick<'_>,
        (dst, dst_row0): (&wgpu::Buffer, usize),
    ) -> Result<()> {
        let nc = cols.len();
        if rows.len() == 0 || nc == 0 {
            return Ok(());
        }
        let (ridx, cidx) = (self.pick_win(&rows)?, self.pick_win(&cols)?);
        let offset = |p: &Pick<'_>| match *p {
            Pick::Range { start, .. } => start as u32,
            Pick::List(..) => 0,
        };
        let max_rows = self.max_groups() as usize * 4;
        for (s0, s1) in self.row_slabs(src_rows, src_cols, 1, usize::MAX)? {
            let (p0, p1) = rows.within(s0, s1);
            if p0 == p1 {
                continue;
            }
            let sw = self.rows_win(src, src_cols, s0, s1)?;
            for (d0, d1) in self.row_slabs(p1 - p0, nc, 1, max_rows)? {
                let (d0, d1) = (p0 + d0, p0 + d1);
                let dw = self.rows_win(dst, nc, dst_row0 + d0, dst_row0 + d1)?;
                let p = Params {
                    rows: (d1 - d0) as u32,
                    cols: nc as u32,
                    row0: d0 as u32,
                    src_base: sw.base(0),
                    src_ld: src_cols as u32,
                    dst_base: dw.base((dst_row0 * nc) as u64),
                    dst_ld: nc as u32,
                    ridx_on: ridx.is_some() as u32,
                    cidx_on: cidx.is_some() as u32,
                    r_off: offset(&rows),
                    c_off: offset(&cols),
                    ..Default::default()
                };
                let bind = Bind {
                    src: Some(sw),
                    dst: Some(dw),
                    ridx,
                    cidx,
                    ..Default::default()
                };
                let g = [nc.div_ceil(64) as u32, (d1 - d0).div_ceil(4) as u32, 1];
                self.structured(b, "gather", &p, bind, g)?;
            }
        }
        Ok(())
    }

    /// Records M[:, idx] = 0 for the `shape` matrix M (idx on the device, `k` entries).
    fn record_zero_cols(
        &self,
        b: &mut Batch<'_>,
        m: &wgpu::Buffer,
        (rows, cols): (usize, usize),
        idx: &wgpu::Buffer,
        k: usize,
    ) -> Result<()> {
        let cw = self.whole(idx, k)?;
        let max_rows = self.max_groups() as usize * 4;
        for (r0, r1) in self.row_slabs(rows, cols, 1, max_rows)? {
            if r0 == r1 {
                continue;
            }
            let mw = self.rows_win(m, cols, r0, r1)?;
            let idx = Bind {
                cidx: Some(cw),
                ..Default::default()
            };
            self.record_zero(b, "zero_cols", mw, cols, (r0, r1 - r0, k), idx)?;
        }
        Ok(())
    }

    /// Records M[idx, :] = 0 for the `shape` matrix M (idx sorted, also on the device).
    fn record_zero_rows(
        &self,
        b: &mut Batch<'_>,
        m: &wgpu::Buffer,
        (rows, cols): (usize, usize),
        idx: &[usize],
        buf: &wgpu::Buffer,
    ) -> Result<()> {
        let rw = self.whole(buf, idx.len())?;
        let pick = Pick::List(idx, buf);
        for (r0, r1) in self.row_slabs(rows, cols, 1, usize::MAX)? {
            let (p0, p1) = pick.within(r0, r1);
            if p0 == p1 {
                continue;
            }
            let mw = self.rows_win(m, cols, r0, r1)?;
            let idx = Bind {
                ridx: Some(rw),
                ..Default::default()
            };
            self.record_zero(b, "zero_rows", mw, cols, (p0, p1 - p0, cols), idx)?;
        }
        Ok(())
    }

    /// Records one `zero_cols` or `zero_rows` dispatch over `rows` x `cols` threads from
    /// logical row (or list entry) `row0`, into the window `mw` of a matrix with `ld` columns;
    /// `idx` binds the index list.
    fn record_zero(
        &self,
        b: &mut Batch<'_>,
        entry: &'static str,
        mw: Win<'_>,
        ld: usize,
        (row0, rows, cols): (usize, usize, usize),
        idx: Bind<'_>,
    ) -> Result<()> {
        let p = Params {
            rows: rows as u32,
            cols: cols as u32,
            row0: row0 as u32,
            dst_base: mw.base(0),
            dst_ld: ld as u32,
            ..Default::default()
        };
        let bind = Bind {
            dst: Some(mw),
            ..idx
        };
        let g = [cols.div_ceil(64) as u32, rows.div_ceil(4) as u32, 1];
        self.structured(b, entry, &p, bind, g)
    }

    /// Records the gather of Hinv[S,S] and its factor U (undamped, zero diagonals kept).
    fn record_block_factor(
        &self,
        b: &mut Batch<'_>,
        hinv: &WgpuTensor,
        s: Pick<'_>,
    ) -> Result<FactorRun> {
        let k = s.len();
        let block = self.tensor("inverse-Hessian block", k, k)?;
        self.record_gather(b, &hinv.buf, shape(hinv), s, s, (&block.buf, 0))?;
        self.record_factor(b, &block, 0.0, true)
    }

    /// Records out[s] = scale · Σ_c part(s, c) for the `nseg` x `count` partials in `part`,
    /// in windows of its rows; `origin` is the element of `out`'s buffer where out[0] lies.
    fn record_seg_reduce(
        &self,
        b: &mut Batch<'_>,
        part: &wgpu::Buffer,
        nseg: usize,
        count: usize,
        (out, origin): (Win<'_>, u64),
        scale: f32,
    ) -> Result<()> {
        for (p0, p1) in self.row_slabs(nseg, count.max(1), 1, usize::MAX)? {
            let pw = self.rows_win(part, count.max(1), p0, p1)?;
            let p = Params {
                seg_lo: p0 as u32,
                nseg: (p1 - p0) as u32,
                part_off: pw.base(0),
                part_ld: count as u32,
                count: count as u32,
                scale,
                dst_base: out.base(origin),
                ..Default::default()
            };
            let bind = Bind {
                dst: Some(out),
                part: Some(pw),
                ..Default::default()
            };
            let g = grid((p1 - p0) as u64, self.max_groups());
            self.structured(b, "seg_reduce", &p, bind, g)?;
        }
        Ok(())
    }

    /// §11: A ← A + dYᵀX. The plain sum is linear in the tokens, so (unlike §2's squared
    /// epilogue) a batch too large for one binding just adds its token windows one by one.
    pub(crate) fn grad_sum(
        &self,
        acc: &mut WgpuTensor,
        dy: &WgpuTensor,
        x: &WgpuTensor,
    ) -> Result<()> {
        check::fused_grad(shape(acc), shape(dy), shape(x))?;
        let (t, rows, cols) = (x.rows, dy.cols, x.cols);
        if t == 0 {
            return Ok(());
        }
        let t_slabs = self.row_slabs(t, rows.max(cols), 1, usize::MAX)?;
        let mut b = self.batch();
        for (r0, r1) in self.row_slabs(rows, cols, 1, usize::MAX)? {
            let cw = self.rows_win(&acc.buf, cols, r0, r1)?;
            for &(t0, t1) in &t_slabs {
                let mut g = self.token_window_gemm("grad_sum", (r0, r1), (t0, t1), dy, x)?;
                g.c = Some(Operand::new(cw, 0, cols));
                g.beta = 1.0;
                g.record(&mut b)?;
            }
        }
        b.submit()
    }

    /// §11: Hinv = UᵀU from §6's factor, a GEMM per window of output rows summed over
    /// windows of U's rows. Every entry and its mirror sum the same products in the same
    /// order, so the result is exactly symmetric, as the reference's.
    pub(crate) fn hinv_explicit(
        &self,
        h: &WgpuTensor,
        percdamp: f64,
    ) -> Result<HinvExplicit<WgpuTensor>> {
        let f = self.hinv_factor(h, percdamp)?;
        let n = h.cols;
        let hinv = self.tensor("inverse Hessian", n, n)?;
        if n > 0 {
            let slabs = self.row_slabs(n, n, 1, usize::MAX)?;
            let mut b = self.batch();
            for &(r0, r1) in &slabs {
                let cw = self.rows_win(&hinv.buf, n, r0, r1)?;
                // U is upper triangular: its rows from r1 on add only zeros to rows below r1.
                for (ki, &(k0, k1)) in slabs.iter().take_while(|s| s.0 < r1).enumerate() {
                    let uw = self.rows_win(&f.u.buf, n, k0, k1)?;
                    let mut g = Gemm::new(
                        "gemm_update",
                        (r0, r1),
                        (0, n),
                        (k0, k1),
                        Operand::new(uw, 0, n).t(),
                        Operand::new(uw, 0, n),
                    )
                    .named("hinv_explicit");
                    g.c = Some(Operand::new(cw, 0, n));
                    g.beta = if ki == 0 { 0.0 } else { 1.0 };
                    g.record(&mut b)?;
                }
            }
            b.submit()?;
        }
        Ok(HinvExplicit {
            hinv,
            dead: f.dead,
            damp: f.damp,
        })
    }

    /// §11 `obs` saliency of the listed groups of `width` consumer columns.
    pub(crate) fn obs_saliency(
        &self,
        w: &WgpuTensor,
        hinv: &WgpuTensor,
        width: usize,
        groups: &[usize],
    ) -> Result<WgpuTensor> {
        check::obs_saliency(shape(w), shape(hinv), width, groups)?;
        let out = self.tensor("OBS saliency", 1, groups.len())?;
        if groups.is_empty() {
            return Ok(out);
        }
        // The narrow path reads a group's rows of Hinv and writes its L⁻¹ in single bindings;
        // where a binding holds less, the wide path's blocked factor splits them.
        let narrow_fits =
            self.win_fits((width * w.cols) as u64) && self.win_fits((width * width) as u64);
        if width <= SMALL_GROUP && narrow_fits {
            // Every group's L⁻¹ of a batch sits in one binding: as many groups as fit.
            let per = (self.max_binding / (4 * (width * width) as u64)).max(1) as usize;
            let mut at = 0;
            for batch in groups.chunks(per) {
                self.saliency_narrow(w, hinv, width, batch, (&out, at))?;
                at += batch.len();
            }
        } else {
            self.saliency_wide(w, hinv, width, groups, &out)?;
        }
        Ok(out)
    }

    /// Groups of at most 64 columns: group_factor writes every group's L⁻¹ at once, then
    /// group_sumsq squares W[r,S]·L⁻ᵀ a row per thread (no GEMM tile would be filled).
    fn saliency_narrow(
        &self,
        w: &WgpuTensor,
        hinv: &WgpuTensor,
        k: usize,
        groups: &[usize],
        (out, at): (&WgpuTensor, usize),
    ) -> Result<()> {
        let (rows, n, ng) = (w.rows, w.cols, groups.len());
        let gbuf = self.index_list(groups)?;
        let linv = self.scratch("group factors", ng * k * k)?;
        let stat = self.upload_words("factor status", &[u32::MAX])?;
        let (gw, lw, sw) = (
            self.whole(&gbuf, ng)?,
            self.whole(&linv, ng * k * k)?,
            self.whole(&stat, 1)?,
        );
        let mut b = self.batch();
        // Windows of whole groups of rows, so that no block straddles two.
        for (r0, r1) in self.row_slabs(n, n, k, usize::MAX)? {
            let hw = self.rows_win(&hinv.buf, n, r0, r1)?;
            let p = Params {
                rows: (r1 - r0) as u32,
                cols: k as u32,
                row0: r0 as u32,
                src_base: hw.base(0),
                src_ld: n as u32,
                nseg: ng as u32,
                ..Default::default()
            };
            let bind = Bind {
                src: Some(hw),
                dst: Some(lw),
                ridx: Some(gw),
                stat: Some(sw),
                ..Default::default()
            };
            self.structured(
                &mut b,
                "group_factor",
                &p,
                bind,
                grid(ng as u64, self.max_groups()),
            )?;
        }
        let wslabs = self.row_slabs(rows, n, 1, usize::MAX)?;
        let total: usize = wslabs
            .iter()
            .map(|s| (s.1 - s.0).div_ceil(SUMSQ_ROWS))
            .sum();
        let part = self.scratch("saliency partials", ng * total.max(1))?;
        let mut off = 0;
        for &(r0, r1) in &wslabs {
            let blocks = (r1 - r0).div_ceil(SUMSQ_ROWS);
            if blocks == 0 {
                continue;
            }
            let ww = self.rows_win(&w.buf, n, r0, r1)?;
            for (p0, p1) in self.row_slabs(ng, total, 1, usize::MAX)? {
                let pw = self.rows_win(&part, total, p0, p1)?;
                let p = Params {
                    rows: (r1 - r0) as u32,
                    cols: k as u32,
                    row0: r0 as u32,
                    src_base: ww.base(0),
                    src_ld: n as u32,
                    aux1_base: lw.base(0),
                    seg_lo: p0 as u32,
                    nseg: (p1 - p0) as u32,
                    chunks: blocks as u32,
                    part_off: pw.base(off as u64),
                    part_ld: total as u32,
                    ..Default::default()
                };
                let bind = Bind {
                    src: Some(ww),
                    ridx: Some(gw),
                    aux1: Some(lw),
                    part: Some(pw),
                    ..Default::default()
                };
                let g = grid(((p1 - p0) * blocks) as u64, self.max_groups());
                self.structured(&mut b, "group_sumsq", &p, bind, g)?;
            }
            off += blocks;
        }
        let ow = self.win(&out.buf, at as u64, (at + ng) as u64)?;
        self.record_seg_reduce(&mut b, &part, ng, total, (ow, at as u64), 0.5)?;
        b.submit()?;
        let failed = self.read_words(&stat, 1)?[0];
        if failed != u32::MAX {
            return Err(KernelError::NotPositiveDefinite {
                column: failed as usize % k,
            });
        }
        Ok(())
    }

    /// Wider groups: per group the blocked §6 factorisation of the gathered Hinv[S,S], copied
    /// beside its batch's others; per batch of groups a fixed step apart
    /// ([`group_batches`]), one GEMM per window of W's rows for every member's
    /// Q = W[:,S]·Uᵀ, whose epilogue keeps only partial sums of Q².
    fn saliency_wide(
        &self,
        w: &WgpuTensor,
        hinv: &WgpuTensor,
        k: usize,
        groups: &[usize],
        out: &WgpuTensor,
    ) -> Result<()> {
        let (rows, n, ng) = (w.rows, w.cols, groups.len());
        let wslabs = self.row_slabs(rows, n, 1, usize::MAX)?;
        let tiles: Vec<usize> = wslabs
            .iter()
            .map(|s| (s.1 - s.0).div_ceil(TILE) * k.div_ceil(TILE))
            .collect();
        let total: usize = tiles.iter().sum();
        let part = self.scratch("saliency partials", ng * total.max(1))?;
        let pslabs = self.row_slabs(ng, total.max(1), 1, usize::MAX)?;
        // A batch's factors lie side by side in one binding; a batch stays within one window
        // of the partials' rows.
        let max_count = (self.max_binding / (4 * (k * k) as u64)).max(1) as usize;
        let tiles_each = tiles.iter().copied().max().unwrap_or(1);
        let mut runs = Vec::with_capacity(ng);
        let mut b = self.batch();
        for &(p0, p1) in &pslabs {
            let pw = self.rows_win(&part, total.max(1), p0, p1)?;
            for batch in group_batches(&groups[p0..p1], tiles_each, DEFAULT_FILL, max_count) {
                let (first, nb) = (p0 + batch.first, batch.count);
                // A batch of one reads its factor where it is.
                let us = (nb > 1)
                    .then(|| self.scratch("group factors", nb * k * k))
                    .transpose()?;
                for z in 0..nb {
                    let s = Pick::Range {
                        start: groups[first + z] * k,
                        len: k,
                    };
                    let run = self.record_block_factor(&mut b, hinv, s)?;
                    if let Some(us) = &us {
                        let all = Pick::Range { start: 0, len: k };
                        self.record_gather(&mut b, &run.u.buf, (k, k), all, all, (us, z * k))?;
                    }
                    runs.push(run);
                }
                let u = match &us {
                    Some(us) => us,
                    None => &runs.last().expect("a batch has a member").u.buf,
                };
                let uw = self.whole(u, nb * k * k)?;
                let mut off = first * total;
                for (&(r0, r1), &t) in wslabs.iter().zip(&tiles) {
                    let ww = self.rows_win(&w.buf, n, r0, r1)?;
                    let mut gm = Gemm::new(
                        "gemm_sumsq",
                        (r0, r1),
                        (0, k),
                        (0, k),
                        Operand::new(ww, (groups[first] * k) as u64, n),
                        Operand::new(uw, 0, k).t(),
                    )
                    .named("obs_saliency");
                    // B(kk, j) = U(j, kk) is 0 for kk < j.
                    gm.flags = F_B_LOWER;
                    gm.part = Some((pw, pw.base(off as u64)));
                    gm.batch = Batched {
                        count: nb,
                        stride: [batch.step * k, k * k, 0],
                    };
                    gm.pld = total;
                    gm.record(&mut b)?;
                    off += t;
                }
            }
        }
        let ow = self.whole(&out.buf, ng)?;
        self.record_seg_reduce(&mut b, &part, ng, total, (ow, 0), 0.5)?;
        b.submit()?;
        for run in &runs {
            run.status(self)?.check(k)?;
        }
        Ok(())
    }

    /// §11 Taylor saliency: per window of W's rows, a partial sum per (segment, chunk of its
    /// entries in the window), then one sum per segment.
    pub(crate) fn taylor_saliency(&self, inp: TaylorInputs<'_, WgpuTensor>) -> Result<WgpuTensor> {
        let nseg = check::taylor(&inp, shape)?;
        let (rows, cols) = shape(inp.w);
        let width = inp.width;
        let out = self.tensor("Taylor saliency", 1, nseg)?;
        if nseg == 0 {
            return Ok(out);
        }
        // Only the statistics the kind reads are bound (the reference ignores the others).
        let g = inp.grad_sum.filter(|_| inp.kind.needs_mean_grad());
        let f = inp.grad_sq.filter(|_| inp.kind.needs_fisher());
        let slabs = self.row_slabs(rows, cols, 1, usize::MAX)?;
        // Per window: its segments [k0, k1), chunks per segment, first partial column.
        let mut plan = Vec::with_capacity(slabs.len());
        let mut total = 0;
        for &(r0, r1) in &slabs {
            let (k0, k1, most) = match inp.axis {
                SegmentAxis::Rows => (r0 / width, r1.div_ceil(width), width.min(r1 - r0) * cols),
                SegmentAxis::Cols => (0, nseg, (r1 - r0) * width),
            };
            let chunks = most.div_ceil(CHUNK).max(1);
            plan.push((r0, r1, k0, k1, chunks, total));
            total += chunks;
        }
        // Rows segments leave the partials of the windows they miss unwritten: zeros.
        let part = self.scratch("Taylor partials", nseg * total)?;
        let pslabs = self.row_slabs(nseg, total, 1, usize::MAX)?;
        let mut b = self.batch();
        b.clear(&part);
        for &(r0, r1, k0, k1, chunks, off) in &plan {
            let ww = self.rows_win(&inp.w.buf, cols, r0, r1)?;
            let gw = g.map(|t| self.rows_win(&t.buf, cols, r0, r1)).transpose()?;
            let fw = f.map(|t| self.rows_win(&t.buf, cols, r0, r1)).transpose()?;
            for &(p0, p1) in &pslabs {
                let (s0, s1) = (k0.max(p0), k1.min(p1));
                if s0 >= s1 {
                    continue;
                }
                let pw = self.rows_win(&part, total, p0, p1)?;
                let p = Params {
                    rows: (r1 - r0) as u32,
                    row0: r0 as u32,
                    src_base: ww.base(0),
                    src_ld: cols as u32,
                    aux1_base: gw.map_or(0, |w| w.base(0)),
                    aux2_base: fw.map_or(0, |w| w.base(0)),
                    kind: taylor_kind(inp.kind),
                    axis: (inp.axis == SegmentAxis::Cols) as u32,
                    width: width as u32,
                    seg_lo: s0 as u32,
                    nseg: (s1 - s0) as u32,
                    chunks: chunks as u32,
                    part_off: pw.base(off as u64),
                    part_ld: total as u32,
                    has_g: gw.is_some() as u32,
                    has_f: fw.is_some() as u32,
                    gscale: inp.grad_scale as f32,
                    fscale: inp.fisher_scale as f32,
                    ..Default::default()
                };
                let bind = Bind {
                    src: Some(ww),
                    aux1: gw,
                    aux2: fw,
                    part: Some(pw),
                    ..Default::default()
                };
                let wgs = grid(((s1 - s0) * chunks) as u64, self.max_groups());
                self.structured(&mut b, "taylor_part", &p, bind, wgs)?;
            }
        }
        let ow = self.whole(&out.buf, nseg)?;
        self.record_seg_reduce(&mut b, &part, nseg, total, (ow, 0), 1.0)?;
        b.submit()?;
        Ok(out)
    }
}

/// The composites' primitives ([`crate::compose::Steps`]) on wgpu: everything is recorded
/// into one batch, submitted where a value is read back (the block factor's status, a sum of
/// squares) and at the end; index lists are kept until then.
pub(crate) struct Steps<'c> {
    ctx: &'c Ctx,
    batch: RefCell<Option<Batch<'c>>>,
    lists: RefCell<Vec<wgpu::Buffer>>,
}

impl<'c> Steps<'c> {
    pub fn new(ctx: &'c Ctx) -> Self {
        Self {
            ctx,
            batch: RefCell::new(None),
            lists: RefCell::new(Vec::new()),
        }
    }

    fn record<T>(&self, f: impl FnOnce(&mut Batch<'c>) -> Result<T>) -> Result<T> {
        let mut slot = self.batch.borrow_mut();
        f(slot.get_or_insert_with(|| self.ctx.batch()))
    }

    /// An index list on the device, kept until the batch that reads it is submitted.
    fn list(&self, idx: &[usize]) -> Result<wgpu::Buffer> {
        let buf = self.ctx.index_list(idx)?;
        self.lists.borrow_mut().push(buf.clone());
        Ok(buf)
    }

    fn pick<'a>(&self, lines: Lines<'a>, buf: Option<&'a wgpu::Buffer>) -> Pick<'a> {
        match (lines, buf) {
            (Lines::List(v), Some(b)) => Pick::List(v, b),
            _ => Pick::all(lines.len()),
        }
    }

    fn list_of(&self, lines: Lines<'_>) -> Result<Option<wgpu::Buffer>> {
        match lines {
            Lines::List(v) if !v.is_empty() => self.list(v).map(Some),
            _ => Ok(None),
        }
    }
}

fn mat<'a>(o: &compose::Operand<'a, WgpuTensor>) -> Mat<'a> {
    let m = Mat::of(o.t);
    if o.trans {
        m.t()
    } else {
        m
    }
}

fn product_of(p: compose::Product) -> Product {
    Product {
        alpha: p.alpha,
        beta: p.beta.unwrap_or(0.0),
        flags: if p.b_lower { F_B_LOWER } else { 0 },
        label: p.label,
    }
}

impl compose::Steps for Steps<'_> {
    type Tensor = WgpuTensor;

    fn shape(t: &WgpuTensor) -> (usize, usize) {
        shape(t)
    }

    fn alloc(&self, what: &'static str, rows: usize, cols: usize) -> Result<WgpuTensor> {
        self.ctx.tensor(what, rows, cols)
    }

    fn gather(
        &self,
        src: &WgpuTensor,
        rows: Lines<'_>,
        cols: Lines<'_>,
        dst: &WgpuTensor,
    ) -> Result<()> {
        let (rb, cb) = (self.list_of(rows)?, self.list_of(cols)?);
        let (rp, cp) = (self.pick(rows, rb.as_ref()), self.pick(cols, cb.as_ref()));
        self.record(|b| {
            self.ctx
                .record_gather(b, &src.buf, shape(src), rp, cp, (&dst.buf, 0))
        })
    }

    fn zero_columns(&self, t: &WgpuTensor, cols: &[usize]) -> Result<()> {
        if cols.is_empty() {
            return Ok(());
        }
        let buf = self.list(cols)?;
        self.record(|b| {
            self.ctx
                .record_zero_cols(b, &t.buf, shape(t), &buf, cols.len())
        })
    }

    fn zero_rows(&self, t: &WgpuTensor, rows: &[usize]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let buf = self.list(rows)?;
        self.record(|b| self.ctx.record_zero_rows(b, &t.buf, shape(t), rows, &buf))
    }

    fn product(
        &self,
        p: compose::Product,
        a: compose::Operand<'_, WgpuTensor>,
        bm: compose::Operand<'_, WgpuTensor>,
        c: &WgpuTensor,
    ) -> Result<()> {
        self.record(|b| {
            self.ctx
                .record_gemm_split(b, product_of(p), mat(&a), mat(&bm), Mat::of(c))
        })
    }

    /// gemm_sumsq per window of A's and C's rows, B bound whole: the squares are summed in
    /// the product's epilogue (one partial per tile) and the partials in one more dispatch.
    fn product_sum_squares(
        &self,
        p: compose::Product,
        a: &WgpuTensor,
        bm: compose::Operand<'_, WgpuTensor>,
        c: &WgpuTensor,
    ) -> Result<f64> {
        let ctx = self.ctx;
        let (rows, depth, width) = (a.rows, a.cols, c.cols);
        let bw = ctx.whole(&bm.t.buf, bm.t.rows * bm.t.cols)?;
        let slabs = ctx.row_slabs(rows, depth.max(width), 1, usize::MAX)?;
        let tiles: usize = slabs
            .iter()
            .map(|s| (s.1 - s.0).div_ceil(TILE) * width.div_ceil(TILE))
            .sum();
        let part = ctx.scratch("sum-of-squares partials", tiles.max(1))?;
        let total = ctx.scratch("sum of squares", 1)?;
        let pw = ctx.whole(&part, tiles.max(1))?;
        let tw = ctx.whole(&total, 1)?;
        self.record(|b| {
            let mut off = 0;
            for &(r0, r1) in &slabs {
                let aw = ctx.rows_win(&a.buf, depth, r0, r1)?;
                let cw = ctx.rows_win(&c.buf, width, r0, r1)?;
                let bo = Operand::new(bw, 0, bm.t.cols);
                let mut g = Gemm::new(
                    "gemm_sumsq",
                    (r0, r1),
                    (0, width),
                    (0, depth),
                    Operand::new(aw, 0, depth),
                    if bm.trans { bo.t() } else { bo },
                )
                .named(p.label);
                g.flags = product_of(p).flags | F_STORE;
                g.alpha = p.alpha;
                g.c = Some(Operand::new(cw, 0, width));
                g.part = Some((pw, off as u32));
                off += g.tiles().0 as usize * g.tiles().1 as usize;
                g.record(b)?;
            }
            ctx.record_seg_reduce(b, &part, 1, tiles, (tw, 0), 1.0)
        })?;
        self.submit()?;
        Ok(f32::from_bits(ctx.read_words(&total, 1)?[0]) as f64)
    }

    /// U from §6's factorisation of the gathered block, undamped and with zero diagonals
    /// kept (Hinv[S,S]⁻¹ = UᵀU, U upper triangular).
    fn inverse_factor(&self, hinv: &WgpuTensor, s: &[usize]) -> Result<InverseFactor<WgpuTensor>> {
        let buf = self.list(s)?;
        let run = self.record(|b| self.ctx.record_block_factor(b, hinv, Pick::List(s, &buf)))?;
        self.submit()?;
        run.status(self.ctx)?.check(s.len())?;
        Ok(InverseFactor {
            x: run.u,
            upper: true,
        })
    }

    fn loss_gradient(
        &self,
        logits: &WgpuTensor,
        lse: &WgpuTensor,
        targets: &[u32],
        offset: usize,
        scale: f64,
    ) -> Result<()> {
        let buf = self.ctx.upload_words("next-token targets", targets)?;
        self.lists.borrow_mut().push(buf.clone());
        self.record(|b| {
            self.ctx
                .record_loss_gradient(b, logits, lse, &buf, offset, scale)
        })
    }

    fn submit(&self) -> Result<()> {
        if let Some(b) = self.batch.borrow_mut().take() {
            b.submit()?;
        }
        self.lists.borrow_mut().clear();
        Ok(())
    }
}
