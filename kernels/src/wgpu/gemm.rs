//! Recording one dispatch of gemm.wgsl: operands as windows plus the global index of their
//! logical origin, the output-tile grid over the covered rows and columns.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::plan::groups::DEFAULT_FILL;
use crate::plan::{depth_piece_strides, depth_split, gemm_pieces, Slabs, Stored};

use super::exec::{grid, Batch, Ctx, Module, Slot, Win};

pub(crate) const F_LOWER: u32 = 1;
pub(crate) const F_MIRROR: u32 = 2;
pub(crate) const F_B_LOWER: u32 = 4;
pub(crate) const F_A_MINUS_P: u32 = 8;
pub(crate) const F_L1: u32 = 16;
pub(crate) const F_DELTA: u32 = 32;
pub(crate) const F_FINAL: u32 = 64;
pub(crate) const F_P_MASK: u32 = 128;
pub(crate) const F_MERGE_SCALE: u32 = 256;
pub(crate) const F_STORE: u32 = 512;
pub(crate) const F_A_LOWER: u32 = 1024;
pub(crate) const F_C_TRANS: u32 = 2048;
/// Set by [`Gemm::record`] where [`Gemm::quads`] allows: mainloop reads A (B) four words at a
/// time on the vec4 variant of the module.
const F_A_QUAD: u32 = 4096;
const F_B_QUAD: u32 = 8192;

const TILE: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
pub(crate) struct GemmParams {
    pub m_lo: u32,
    pub m_hi: u32,
    pub n_lo: u32,
    pub n_hi: u32,
    pub k_lo: u32,
    pub k_hi: u32,
    pub a_base: u32,
    pub lda: u32,
    pub a_trans: u32,
    pub b_base: u32,
    pub ldb: u32,
    pub b_trans: u32,
    pub c_base: u32,
    pub ldc: u32,
    pub c2_base: u32,
    pub p_base: u32,
    pub flags: u32,
    pub alpha: f32,
    pub beta: f32,
    pub part_off: u32,
    pub count: u32,
    pub ld2: u32,
    pub aux_base: u32,
    pub aux_ld: u32,
    pub rank: u32,
    pub s: f32,
    pub gscale: f32,
    pub pld: u32,
    pub za: u32,
    pub zb: u32,
    pub zc: u32,
}

/// A GEMM operand: a window, the global element index of its logical (0,0) (wrapping, so it
/// may be "negative"), its leading dimension, and whether it is stored transposed.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub win: Win<'a>,
    pub origin: u64,
    pub ld: usize,
    pub trans: bool,
}

impl<'a> Operand<'a> {
    pub fn new(win: Win<'a>, origin: u64, ld: usize) -> Self {
        Self {
            win,
            origin,
            ld,
            trans: false,
        }
    }
    pub fn t(mut self) -> Self {
        self.trans = true;
        self
    }
}

/// A logical origin before the start of the buffer, as the wrapping offset the kernels use.
pub(crate) fn before(elems: usize) -> u64 {
    0u64.wrapping_sub(elems as u64)
}

/// One GEMM-shaped dispatch; `m`, `n`, `k` are the covered ranges in logical coordinates.
#[derive(Clone, Copy)]
pub(crate) struct Gemm<'a> {
    pub entry: &'static str,
    pub m: (usize, usize),
    pub n: (usize, usize),
    pub k: (usize, usize),
    pub a: Operand<'a>,
    /// Subtracted from A in the loads (A = a − a2).
    pub a2: Option<Operand<'a>>,
    /// Bound where a2 is, but read as it is by the loads or epilogues that use it (the
    /// re-fit epilogues); exclusive with `a2`.
    pub side: Option<Operand<'a>>,
    /// Words read by the re-fit epilogues: mask bits, or f32 values as bits.
    pub aux: Option<Operand<'a>>,
    pub b: Operand<'a>,
    pub c: Option<Operand<'a>>,
    pub c2: Option<Operand<'a>>,
    pub part: Option<(Win<'a>, u32)>,
    pub flags: u32,
    pub alpha: f32,
    pub beta: f32,
    /// The LoRA rank, scale s and gradient scale s·norm (§12).
    pub rank: usize,
    pub s: f32,
    pub gscale: f32,
    /// The stride between rows of row or column partials.
    pub pld: usize,
    /// The step's name in kernel profiles.
    pub label: &'static str,
    /// `gemm_update` and `gemm_sumsq` only: this many products, the z-th with every
    /// operand's origin moved by z times its stride (elements of its own window), in one
    /// dispatch (`gemm_sumsq`'s partials `pld` apart).
    pub batch: Batched,
    /// Bind A and B read-write ([`Module::GemmInPlace`]): operands and output are disjoint
    /// blocks of one buffer.
    pub in_place: bool,
}

/// A batch of equally shaped products laid out at fixed strides (see [`Gemm::batch`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batched {
    pub count: usize,
    pub stride: [usize; 3],
}

impl Default for Batched {
    fn default() -> Self {
        Self {
            count: 1,
            stride: [0; 3],
        }
    }
}

impl<'a> Gemm<'a> {
    pub fn new(
        entry: &'static str,
        m: (usize, usize),
        n: (usize, usize),
        k: (usize, usize),
        a: Operand<'a>,
        b: Operand<'a>,
    ) -> Self {
        Self {
            entry,
            m,
            n,
            k,
            a,
            a2: None,
            side: None,
            aux: None,
            b,
            c: None,
            c2: None,
            part: None,
            flags: 0,
            alpha: 1.0,
            beta: 0.0,
            rank: 0,
            s: 0.0,
            gscale: 0.0,
            pld: 0,
            label: entry,
            batch: Batched::default(),
            in_place: false,
        }
    }

    pub fn named(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }

    /// Workgroups this dispatch launches (one per 64x64 output tile).
    pub fn tiles(&self) -> (u32, u32) {
        let w = (self.n.1 - self.n.0) as u32;
        let h = (self.m.1 - self.m.0) as u32;
        (w.div_ceil(TILE), h.div_ceil(TILE))
    }

    /// Whether mainloop may read A and B four words at a time, each quad one aligned vec4
    /// inside the operand's stored row: its origin in the window, leading dimension and batch
    /// stride multiples of 4, and so the first coordinate along the stored row of every tile
    /// (k for A by rows and a transposed B, where a lower-triangular B starts a tile's k at
    /// its first column; m for a transposed A; n for B by rows). A − a2 stays scalar.
    pub fn quads(&self) -> (bool, bool) {
        let aligned = |o: &Operand<'_>, stride: usize| {
            o.win.base(o.origin).is_multiple_of(4)
                && o.ld.is_multiple_of(4)
                && (self.batch.count == 1 || stride.is_multiple_of(4))
        };
        let k_first = self.k.0.is_multiple_of(4)
            && (self.flags & F_B_LOWER == 0 || self.n.0.is_multiple_of(4));
        let a = self.a2.is_none()
            && aligned(&self.a, self.batch.stride[0])
            && if self.a.trans {
                self.m.0.is_multiple_of(4)
            } else {
                k_first
            };
        let b = aligned(&self.b, self.batch.stride[1])
            && if self.b.trans {
                k_first
            } else {
                self.n.0.is_multiple_of(4)
            };
        (a, b)
    }

    pub fn record(&self, batch: &mut Batch<'_>) -> Result<()> {
        if self.m.1 <= self.m.0 || self.n.1 <= self.n.0 {
            return Ok(());
        }
        let mut p = GemmParams {
            m_lo: self.m.0 as u32,
            m_hi: self.m.1 as u32,
            n_lo: self.n.0 as u32,
            n_hi: self.n.1 as u32,
            k_lo: self.k.0 as u32,
            k_hi: self.k.1 as u32,
            a_base: self.a.win.base(self.a.origin),
            lda: self.a.ld as u32,
            a_trans: self.a.trans as u32,
            b_base: self.b.win.base(self.b.origin),
            ldb: self.b.ld as u32,
            b_trans: self.b.trans as u32,
            flags: self.flags,
            alpha: self.alpha,
            beta: self.beta,
            rank: self.rank as u32,
            s: self.s,
            gscale: self.gscale,
            pld: self.pld as u32,
            za: self.batch.stride[0] as u32,
            zb: self.batch.stride[1] as u32,
            zc: self.batch.stride[2] as u32,
            ..Default::default()
        };
        if let Some(c) = &self.c {
            p.c_base = c.win.base(c.origin);
            p.ldc = c.ld as u32;
        }
        if let Some(c2) = &self.c2 {
            p.c2_base = c2.win.base(c2.origin);
        }
        assert!(
            self.a2.is_none() || self.side.is_none(),
            "{}: a2 and side share a binding",
            self.label
        );
        if let Some(a2) = &self.a2 {
            p.p_base = a2.win.base(a2.origin);
            p.ld2 = a2.ld as u32;
            p.flags |= F_A_MINUS_P;
        }
        if let Some(sd) = &self.side {
            p.p_base = sd.win.base(sd.origin);
            p.ld2 = sd.ld as u32;
        }
        if let Some(x) = &self.aux {
            p.aux_base = x.win.base(x.origin);
            p.aux_ld = x.ld as u32;
        }
        if let Some((_, off)) = self.part {
            p.part_off = off;
        }
        let (a_quad, b_quad) = self.quads();
        if a_quad {
            p.flags |= F_A_QUAD;
        }
        if b_quad {
            p.flags |= F_B_QUAD;
        }
        let slot = |o: &Option<Operand<'a>>| o.map_or(Slot::Unused, |o| Slot::Win(o.win));
        let (gx, gy) = self.tiles();
        assert!(
            self.batch.count == 1 || matches!(self.entry, "gemm_update" | "gemm_sumsq"),
            "{}: only gemm_update and gemm_sumsq run batches",
            self.label
        );
        batch.dispatch_as(
            self.label,
            match (self.in_place, a_quad || b_quad) {
                (false, false) => Module::Gemm,
                (true, false) => Module::GemmInPlace,
                (false, true) => Module::GemmVec4,
                (true, true) => Module::GemmInPlaceVec4,
            },
            self.entry,
            bytemuck::bytes_of(&p),
            &[
                Slot::Win(self.a.win),
                slot(&self.a2.or(self.side)),
                Slot::Win(self.b.win),
                slot(&self.c),
                slot(&self.c2),
                self.part.map_or(Slot::Unused, |(w, _)| Slot::Win(w)),
                slot(&self.aux),
            ],
            [gx, gy, self.batch.count as u32],
        )
    }
}

/// Records `reduce_parts`: the `tiles` per-workgroup partial sums in `parts` added into element
/// `slot` of `result` (the second pass of the reducing epilogues, as WGSL has no f32 atomics).
pub(crate) fn reduce_parts(
    b: &mut Batch<'_>,
    result: Win<'_>,
    slot: u64,
    parts: Win<'_>,
    tiles: usize,
) -> Result<()> {
    let p = GemmParams {
        c_base: result.base(slot),
        count: tiles as u32,
        ..Default::default()
    };
    b.dispatch(
        Module::Gemm,
        "reduce_parts",
        bytemuck::bytes_of(&p),
        &[
            Slot::Unused,
            Slot::Unused,
            Slot::Unused,
            Slot::Win(result),
            Slot::Unused,
            Slot::Win(parts),
            Slot::Unused,
        ],
        [1, 1, 1],
    )
}

/// A whole row-major matrix in one buffer as an operand of [`Ctx::record_gemm_split`], or its
/// transpose.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub buf: &'a wgpu::Buffer,
    pub rows: usize,
    pub cols: usize,
    pub trans: bool,
}

impl<'a> Mat<'a> {
    pub fn new(buf: &'a wgpu::Buffer, rows: usize, cols: usize) -> Self {
        Self {
            buf,
            rows,
            cols,
            trans: false,
        }
    }
    pub fn of(t: &'a super::mem::WgpuTensor) -> Self {
        Self::new(&t.buf, t.rows, t.cols)
    }
    pub fn t(mut self) -> Self {
        self.trans = true;
        self
    }
}

/// What a split product computes beyond its operands: C = alpha·A·B (+ beta·C), and the
/// triangle flags (`F_LOWER`, `F_B_LOWER`), which hold in the product's own coordinates, so
/// every piece keeps them as they are.
#[derive(Clone, Copy)]
pub(crate) struct Product {
    pub alpha: f32,
    /// 0 leaves C unread.
    pub beta: f32,
    pub flags: u32,
    pub label: &'static str,
}

impl Product {
    /// C = A·B, C not read.
    pub fn store(label: &'static str) -> Self {
        Self {
            alpha: 1.0,
            beta: 0.0,
            flags: 0,
            label,
        }
    }
}

impl Ctx {
    /// The binding-sized cut of a matrix's rows: what one window may hold.
    fn window_slabs(&self, m: &Mat<'_>) -> Result<Slabs> {
        Slabs::new(m.rows, m.cols, self.binding_room(), 1, usize::MAX)
    }

    /// The operand over the window of the stored rows a piece reads: rows `r` of the operand,
    /// or its columns `cl` when it is read transposed.
    fn operand_window<'m>(
        &self,
        m: &Mat<'m>,
        r: (usize, usize),
        cl: (usize, usize),
    ) -> Result<Operand<'m>> {
        let (s0, s1) = if m.trans { cl } else { r };
        let o = Operand::new(self.rows_win(m.buf, m.cols, s0, s1)?, 0, m.cols);
        Ok(if m.trans { o.t() } else { o })
    }

    /// Records C (op)= alpha·op(A)·op(B) (+ beta·C) over whole matrices of any size: one
    /// `gemm_update` per piece of the shared plan ([`gemm_pieces`]), each operand bound as
    /// the window of the rows the piece reads, later depth pieces accumulating onto the first;
    /// a product in one piece through [`Ctx::record_filling`].
    pub(crate) fn record_gemm_split(
        &self,
        b: &mut Batch<'_>,
        p: Product,
        a: Mat<'_>,
        bm: Mat<'_>,
        c: Mat<'_>,
    ) -> Result<()> {
        let k = if a.trans { a.rows } else { a.cols };
        let (sa, sb, sc) = (
            self.window_slabs(&a)?,
            self.window_slabs(&bm)?,
            self.window_slabs(&c)?,
        );
        let stored = |m: &Mat<'_>, s| Stored {
            slabs: s,
            trans: m.trans,
        };
        let pieces = gemm_pieces(c.rows, c.cols, k, stored(&a, &sa), stored(&bm, &sb), &sc);
        self.split_noted(pieces.len());
        // One piece is the whole product: in one dispatch, or split over its depth where its
        // tiles fall short of the fill.
        let single = pieces.len() == 1;
        for pc in pieces {
            let mut g = Gemm::new(
                "gemm_update",
                pc.m,
                pc.n,
                pc.k,
                self.operand_window(&a, pc.m, pc.k)?,
                self.operand_window(&bm, pc.k, pc.n)?,
            )
            .named(p.label);
            g.c = Some(self.operand_window(&c, pc.m, pc.n)?);
            g.alpha = p.alpha;
            g.beta = if pc.first { p.beta } else { 1.0 };
            g.flags = p.flags;
            if single {
                self.record_filling(b, &g)?;
            } else {
                g.record(b)?;
            }
        }
        Ok(())
    }

    /// Records `g`, a plain `gemm_update` (C = alpha·A·B + beta·C, no triangle, flag or
    /// batch), as [`depth_split`]'s equal depth pieces where its 64 x 64 tiles fall short of
    /// the fill and the partials fit one window: one dispatch batched over the pieces, piece z
    /// reading depths z·kp.. of A and B (their origins moved along the depth) and storing
    /// alpha·A·B into its own partial, then `sum_depth_parts` adding the partials into C in
    /// piece order (+ beta·C). Anything else is recorded as it is.
    pub(crate) fn record_filling(&self, b: &mut Batch<'_>, g: &Gemm<'_>) -> Result<()> {
        let (m, n, k) = (g.m.1 - g.m.0, g.n.1 - g.n.0, g.k.1 - g.k.0);
        let c = match g.c {
            Some(c) if !c.trans => c,
            _ => return g.record(b),
        };
        let plain = g.entry == "gemm_update"
            && g.flags == 0
            && g.batch.count == 1
            && !g.in_place
            && g.a2.is_none()
            && g.side.is_none()
            && g.aux.is_none()
            && g.c2.is_none()
            && g.part.is_none();
        let splits = if plain {
            depth_split(m, n, k, DEFAULT_FILL)
        } else {
            1
        };
        if splits < 2 || !self.win_fits((splits * m * n) as u64) {
            return g.record(b);
        }
        let kp = k / splits;
        let parts = self.scratch("depth-split partial products", splits * m * n)?;
        let pw = self.whole(&parts, splits * m * n)?;
        let pieces = Gemm {
            k: (g.k.0, g.k.0 + kp),
            // Partial z's (m0, n0) at z·m·n: its logical origin m0·n + n0 before the start.
            c: Some(Operand::new(pw, before(g.m.0 * n + g.n.0), n)),
            beta: 0.0,
            batch: Batched {
                count: splits,
                stride: depth_piece_strides(kp, (g.a.trans, g.a.ld), (g.b.trans, g.b.ld), m * n),
            },
            ..*g
        };
        pieces.record(b)?;
        let c_base = c
            .win
            .base(c.origin)
            .wrapping_add((g.m.0 * c.ld + g.n.0) as u32);
        self.record_sum_parts(
            b,
            g.label,
            (pw, splits),
            (c.win, c_base, c.ld),
            (m, n),
            g.beta,
        )
    }

    /// Records `sum_depth_parts`: C (m x n from element `c_base` of window `c`, leading
    /// dimension `ldc`) = the sum, in order, of the `count` partials of m·n values at the
    /// start of `parts` (+ beta·C where beta is not 0).
    pub(crate) fn record_sum_parts(
        &self,
        b: &mut Batch<'_>,
        label: &'static str,
        (parts, count): (Win<'_>, usize),
        (c, c_base, ldc): (Win<'_>, u32, usize),
        (m, n): (usize, usize),
        beta: f32,
    ) -> Result<()> {
        let sum = GemmParams {
            m_hi: m as u32,
            n_hi: n as u32,
            c_base,
            ldc: ldc as u32,
            beta,
            count: count as u32,
            pld: (m * n) as u32,
            ..Default::default()
        };
        b.dispatch_as(
            label,
            Module::Gemm,
            "sum_depth_parts",
            bytemuck::bytes_of(&sum),
            &[
                Slot::Unused,
                Slot::Unused,
                Slot::Unused,
                Slot::Win(c),
                Slot::Unused,
                Slot::Win(parts),
                Slot::Unused,
            ],
            grid((m * n).div_ceil(256) as u64, self.max_groups()),
        )
    }
}
