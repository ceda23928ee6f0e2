//! Recording one dispatch of gemm.wgsl: operands as windows plus the global index of their
//! logical origin, the output-tile grid over the covered rows and columns.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;

use super::exec::{Batch, Module, Slot, Win};

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
        let slot = |o: &Option<Operand<'a>>| o.map_or(Slot::Unused, |o| Slot::Win(o.win));
        let (gx, gy) = self.tiles();
        batch.dispatch_as(
            self.label,
            Module::Gemm,
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
            [gx, gy, 1],
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
