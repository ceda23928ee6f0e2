//! The backward ops of §15 on the device (the linear's is `compose`'s, over the GEMM):
//! backward.wgsl's RMSNorm dx (a workgroup per row) and dγ (a two-pass column sum over blocks
//! of rows), the SiLU-gate's dg and du (elementwise) and the embedding's per-id sums over the
//! host's counting sort of the ids; RoPE's transposed rotation is the forward's kernel.
//! Nothing accumulates through atomics, so every run gives the same bits.
//!
//! Binding limits as in `forward`: x, dy, dh and dE are bound in windows of rows, the
//! elementwise operands in flat chunks; only γ, the row factors' window and the id lists must
//! fit one binding whole.

use bytemuck::{Pod, Zeroable};

use crate::error::Result;
use crate::ops::check;
use crate::plan::{self, groups::DEFAULT_FILL, id_lists};

use super::exec::{grid, Batch, Ctx, Module, Slot, Win};
use super::mem::{shape, WgpuTensor};

/// Rows per block of dγ's first pass (backward.wgsl's RB).
const RB: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    row0: u32,
    a_base: u32,
    b_base: u32,
    c_base: u32,
    d_base: u32,
    e_base: u32,
    idx_base: u32,
    tok_base: u32,
    lo: u32,
    hi: u32,
    fresh: u32,
    row_len: u32,
    eps: f32,
    parts: u32,
}

/// The storage bindings of backward.wgsl, unused where `None`.
#[derive(Default)]
struct Bind<'a> {
    in0: Option<Win<'a>>,
    in1: Option<Win<'a>>,
    in2: Option<Win<'a>>,
    dst: Option<Win<'a>>,
    aux: Option<Win<'a>>,
    ids: Option<Win<'a>>,
}

impl<'a> Bind<'a> {
    fn slots(&self) -> [Slot<'a>; 6] {
        [self.in0, self.in1, self.in2, self.dst, self.aux, self.ids].map(Slot::from)
    }
}

impl Ctx {
    fn bwd(
        &self,
        b: &mut Batch<'_>,
        entry: &'static str,
        p: &Params,
        bind: Bind<'_>,
        groups: [u32; 3],
    ) -> Result<()> {
        let slots = bind.slots();
        b.dispatch(
            Module::Backward,
            entry,
            bytemuck::bytes_of(p),
            &slots,
            groups,
        )
    }

    /// dx a workgroup per row (which also leaves the row's r), then dγ in two passes: the
    /// partial sums of blocks of [`RB`] rows per window of rows, then each column's partials
    /// in order. The blocks are fixed by the shape, so dγ's bits do not depend on the windows.
    pub(crate) fn rms_norm_backward(
        &self,
        x: &WgpuTensor,
        gamma: &WgpuTensor,
        dy: &WgpuTensor,
        eps: f64,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        check::rms_norm_backward(shape(x), shape(gamma), shape(dy), eps)?;
        let (n, d) = shape(x);
        let dx = self.tensor("RMSNorm backward dx", n, d)?;
        let dgamma = self.tensor("RMSNorm backward dγ", 1, d)?;
        if d == 0 {
            return Ok((dx, dgamma));
        }
        let gw = self.fwd_whole("the RMSNorm weight", &gamma.buf, d)?;
        let inv = self.scratch("RMSNorm backward row factors", n)?;
        let blocks = n.div_ceil(RB);
        let partials = self.scratch("RMSNorm backward dγ partials", blocks * d)?;
        let mut b = self.batch();
        // A window's blocks (at most its rows / RB + 2) stay within a grid's y extent.
        let max_rows = self.max_groups() as usize * RB;
        for (r0, r1) in self.row_slabs(n, d, 1, max_rows)? {
            if r0 == r1 {
                continue;
            }
            let (xw, yw) = (
                self.rows_win(&x.buf, d, r0, r1)?,
                self.rows_win(&dy.buf, d, r0, r1)?,
            );
            let iw = self.rows_win(&inv, 1, r0, r1)?;
            let base = Params {
                rows: (r1 - r0) as u32,
                cols: d as u32,
                row0: r0 as u32,
                a_base: xw.base(0),
                c_base: yw.base(0),
                ..Default::default()
            };
            let dxw = self.rows_win(&dx.buf, d, r0, r1)?;
            let parts = plan::row_parts(r1 - r0, d, DEFAULT_FILL);
            let p = Params {
                b_base: gw.base(0),
                d_base: dxw.base(0),
                e_base: iw.base(0),
                eps: eps as f32,
                parts: parts as u32,
                ..base
            };
            let bind = Bind {
                in0: Some(xw),
                in1: Some(gw),
                in2: Some(yw),
                dst: Some(dxw),
                aux: Some(iw),
                ..Default::default()
            };
            let g = grid(((r1 - r0) * parts) as u64, self.max_groups());
            // Four columns per thread where rows are whole vec4s from aligned bases.
            let entry = if [d as u32, p.a_base, p.b_base, p.c_base, p.d_base]
                .iter()
                .all(|v| v.is_multiple_of(4))
            {
                "rms_norm_backward4"
            } else {
                "rms_norm_backward"
            };
            self.bwd(&mut b, entry, &p, bind, g)?;
            let (b0, b1) = (r0 / RB, r1.div_ceil(RB));
            let pw = self.rows_win(&partials, d, b0, b1)?;
            let p = Params {
                b_base: iw.base(0),
                d_base: pw.base(0),
                ..base
            };
            let bind = Bind {
                in0: Some(xw),
                in1: Some(iw),
                in2: Some(yw),
                dst: Some(pw),
                ..Default::default()
            };
            let g = [d.div_ceil(64) as u32, (b1 - b0).div_ceil(4) as u32, 1];
            self.bwd(&mut b, "rms_gamma_partials", &p, bind, g)?;
        }
        self.record_column_sums(&mut b, &partials, blocks, &dgamma)?;
        b.submit()?;
        Ok((dx, dgamma))
    }

    /// dγ's second pass: `out` (1 x d) = the sum, in order, of the `blocks` rows of
    /// `partials`, a window of rows at a time (the first from 0, so no rows give zeros).
    fn record_column_sums(
        &self,
        b: &mut Batch<'_>,
        partials: &wgpu::Buffer,
        blocks: usize,
        out: &WgpuTensor,
    ) -> Result<()> {
        let d = out.cols;
        let ow = self.fwd_whole("RMSNorm backward dγ", &out.buf, d)?;
        let g = grid(d.div_ceil(256) as u64, self.max_groups());
        for (k0, k1) in self.row_slabs(blocks, d, 1, usize::MAX)? {
            let pw = self.rows_win(partials, d, k0, k1)?;
            let p = Params {
                rows: (k1 - k0) as u32,
                cols: d as u32,
                row0: k0 as u32,
                a_base: pw.base(0),
                d_base: ow.base(0),
                fresh: (k0 == 0) as u32,
                row_len: g[0] * 256,
                ..Default::default()
            };
            let bind = Bind {
                in0: Some(pw),
                dst: Some(ow),
                ..Default::default()
            };
            self.bwd(b, "rms_gamma_sum", &p, bind, g)?;
        }
        Ok(())
    }

    pub(crate) fn rope_backward(
        &self,
        dx: &mut WgpuTensor,
        cos: &WgpuTensor,
        sin: &WgpuTensor,
    ) -> Result<()> {
        self.rotate(dx, cos, sin, true)
    }

    /// Elementwise over flat chunks of the five operands.
    pub(crate) fn silu_mul_backward(
        &self,
        gate: &WgpuTensor,
        up: &WgpuTensor,
        da: &WgpuTensor,
    ) -> Result<(WgpuTensor, WgpuTensor)> {
        check::silu_mul_backward(shape(gate), shape(up), shape(da))?;
        let (rows, cols) = shape(gate);
        let dg = self.tensor("SiLU-gate backward dg", rows, cols)?;
        let du = self.tensor("SiLU-gate backward du", rows, cols)?;
        let n = rows * cols;
        if n == 0 {
            return Ok((dg, du));
        }
        let mut b = self.batch();
        for (e0, e1) in self.flat_chunks(n) {
            let (o, o1) = (e0 as u64, e1 as u64);
            let (gw, uw, aw) = (
                self.win(&gate.buf, o, o1)?,
                self.win(&up.buf, o, o1)?,
                self.win(&da.buf, o, o1)?,
            );
            let (dgw, duw) = (self.win(&dg.buf, o, o1)?, self.win(&du.buf, o, o1)?);
            // A vec4 per invocation (backward.wgsl's silu_mul_backward).
            let g = grid((e1 - e0).div_ceil(1024) as u64, self.max_groups());
            let p = Params {
                rows: (e1 - e0) as u32,
                a_base: gw.base(o),
                b_base: uw.base(o),
                c_base: aw.base(o),
                d_base: dgw.base(o),
                e_base: duw.base(o),
                row_len: g[0] * 256,
                ..Default::default()
            };
            let bind = Bind {
                in0: Some(gw),
                in1: Some(uw),
                in2: Some(aw),
                dst: Some(dgw),
                aux: Some(duw),
                ..Default::default()
            };
            self.bwd(&mut b, "silu_mul_backward", &p, bind, g)?;
        }
        b.submit()?;
        Ok((dg, du))
    }

    /// dE a window of vocabulary rows at a time, a thread per entry summing its id's rows of
    /// dh as the host's counting sort lists them. dh is read in windows of rows, in order:
    /// the first writes every entry (0 for ids never seen), later ones add theirs where a
    /// token of the vocabulary window lies in them, so the sums run in token order.
    pub(crate) fn embed_backward(
        &self,
        dh: &WgpuTensor,
        ids: &[u32],
        vocab: usize,
    ) -> Result<WgpuTensor> {
        check::embed_backward(shape(dh), ids, vocab)?;
        let (n, d) = shape(dh);
        let de = self.tensor("embedding gradients", vocab, d)?;
        if vocab == 0 || d == 0 {
            return Ok(de);
        }
        let lists = id_lists(ids, vocab);
        let lb = self.upload_words("token lists by id", &lists)?;
        let lw = self.fwd_whole("the token lists by id", &lb, lists.len())?;
        let positions = &lists[vocab + 1..];
        let dh_wins = self.row_slabs(n, d, 1, usize::MAX)?;
        let mut b = self.batch();
        for (v0, v1) in self.row_slabs(vocab, d, 1, self.max_groups() as usize * 4)? {
            let ow = self.rows_win(&de.buf, d, v0, v1)?;
            let mine = &positions[lists[v0] as usize..lists[v1] as usize];
            for (i, &(h0, h1)) in dh_wins.iter().enumerate() {
                if i > 0 && !mine.iter().any(|&t| (h0..h1).contains(&(t as usize))) {
                    continue;
                }
                let hw = self.rows_win(&dh.buf, d, h0, h1)?;
                let p = Params {
                    rows: (v1 - v0) as u32,
                    cols: d as u32,
                    row0: v0 as u32,
                    a_base: hw.base(0),
                    d_base: ow.base(0),
                    idx_base: lw.base(0),
                    tok_base: lw.base(vocab as u64 + 1),
                    lo: h0 as u32,
                    hi: h1 as u32,
                    fresh: (i == 0) as u32,
                    ..Default::default()
                };
                let bind = Bind {
                    in0: Some(hw),
                    dst: Some(ow),
                    ids: Some(lw),
                    ..Default::default()
                };
                let g = [d.div_ceil(64) as u32, (v1 - v0).div_ceil(4) as u32, 1];
                self.bwd(&mut b, "embed_backward", &p, bind, g)?;
            }
        }
        b.submit()?;
        Ok(de)
    }
}
