//! The backward of causal GQA attention (§15) on the device, FlashAttention-2's:
//! attention_backward.wgsl's `attn_delta` (D = rowsum(dO ⊙ O)), then `attn_dkdv` (a
//! workgroup per key block and KV head owns those rows of dK and dV) and `attn_dq` (a
//! workgroup per query block and head owns those rows of dQ), each recomputing P from the
//! forward's log-sum-exp tile by tile. No seq x seq matrix and no atomics: every sum runs in a
//! fixed order.
//!
//! Binding limits: the kernels take whole windows, so the rows are bound in slabs of whole
//! windows as the forward's attention binds them; a window of Q (heads·e columns, the widest
//! operand) that does not fit one binding is refused with an error.

use bytemuck::{Pod, Zeroable};

use crate::error::{KernelError, Result};
use crate::ops::check;
use crate::plan::{self, groups::DEFAULT_FILL};

use super::exec::{grid, Batch, Ctx, Module, Slot, HEAD_DIMS};
use super::gemm::before;
use super::mem::WgpuTensor;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    rows: u32,
    row0: u32,
    q_base: u32,
    k_base: u32,
    v_base: u32,
    g_base: u32,
    l_base: u32,
    d_base: u32,
    o0_base: u32,
    o1_base: u32,
    qld: u32,
    kld: u32,
    seq: u32,
    heads: u32,
    group: u32,
    e: u32,
    blocks: u32,
    scale: f32,
    rt: u32,
    parts: u32,
    per_part: u32,
    part_len: u32,
}

impl Ctx {
    /// (dQ, dK, dV) of causal GQA attention from the forward's q, k, v, output o and
    /// log-sum-exp L [N, heads], and dO. Per slab of whole windows: D, then dK and dV, then
    /// dQ, all in one batch (each dispatch sees the previous one's writes).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_backward(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        o: &WgpuTensor,
        lse: &WgpuTensor,
        d_o: &WgpuTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<(WgpuTensor, WgpuTensor, WgpuTensor)> {
        let sh = |t: &WgpuTensor| (t.rows, t.cols);
        let e = check::attention_backward(
            sh(q),
            sh(k),
            sh(v),
            sh(o),
            sh(lse),
            sh(d_o),
            heads,
            kv_heads,
            seq,
        )?;
        let emax = *HEAD_DIMS
            .iter()
            .find(|&&m| e <= m as usize)
            .ok_or_else(|| {
                KernelError::Unsupported(format!(
                    "attention backward: head_dim {e} is larger than the {} values the WGSL \
                 kernels keep per row",
                    HEAD_DIMS[HEAD_DIMS.len() - 1]
                ))
            })?;
        let (n, qc, kc) = (q.rows, q.cols, k.cols);
        let dq = self.tensor("attention dQ", n, qc)?;
        let dk = self.tensor("attention dK", n, kc)?;
        let dv = self.tensor("attention dV", n, kc)?;
        if n == 0 {
            return Ok((dq, dk, dv));
        }
        // Every kernel reads whole windows; Q's are the widest rows (heads·e >= kv_heads·e,
        // >= heads), so slabs of whole windows that fit Q's binding fit every operand's.
        if !self.win_fits((seq * qc) as u64) {
            return Err(KernelError::Unsupported(format!(
                "attention backward: a window of {seq} rows of Q ({qc} columns, {} bytes) does \
                 not fit one storage binding of {} bytes",
                seq * qc * 4,
                self.max_binding
            )));
        }
        let delta = self.scratch("attention D", n * heads)?;
        // Query rows and keys per block, the same in every slab.
        let block = plan::attention_backward_block(n / seq, seq, kv_heads, DEFAULT_FILL);
        let base = Params {
            qld: qc as u32,
            kld: kc as u32,
            seq: seq as u32,
            heads: heads as u32,
            group: (heads / kv_heads) as u32,
            e: e as u32,
            blocks: seq.div_ceil(block) as u32,
            scale: (1.0 / (e as f64).sqrt()) as f32,
            rt: (block / 16) as u32,
            ..Default::default()
        };
        let ops = Operands {
            ins: [&q.buf, &k.buf, &v.buf, &o.buf, &d_o.buf, &lse.buf],
            outs: [&dq.buf, &dk.buf, &dv.buf],
            delta: &delta,
        };
        let mut b = self.batch();
        for (r0, r1) in self.row_slabs(n, qc, seq, usize::MAX)? {
            self.record_attention_backward(
                &mut b,
                Module::AttentionBackward(emax),
                &base,
                &ops,
                (r0, r1),
            )?;
        }
        b.submit()?;
        Ok((dq, dk, dv))
    }

    /// Records D, then dK and dV, then dQ for rows [r0, r1) (whole windows), each operand
    /// bound as the window of those rows.
    fn record_attention_backward<'a>(
        &self,
        b: &mut Batch<'_>,
        m: Module,
        base: &Params,
        ops: &Operands<'a>,
        (r0, r1): (usize, usize),
    ) -> Result<()> {
        let (qc, kc, heads) = (base.qld as usize, base.kld as usize, base.heads as usize);
        let rw = |buf: &'a wgpu::Buffer, cols: usize| self.rows_win(buf, cols, r0, r1);
        let [q, k, v, o, d_o, lse] = ops.ins;
        let (qw, kw, vw, ow, gw) = (rw(q, qc)?, rw(k, kc)?, rw(v, kc)?, rw(o, qc)?, rw(d_o, qc)?);
        let (lw, dw) = (rw(lse, heads)?, rw(ops.delta, heads)?);
        let [dq, dk, dv] = ops.outs;
        let (dqw, dkw, dvw) = (rw(dq, qc)?, rw(dk, kc)?, rw(dv, kc)?);
        let windows = (r1 - r0) / base.seq as usize;
        let p = Params {
            row0: r0 as u32,
            q_base: qw.base(0),
            k_base: kw.base(0),
            v_base: vw.base(0),
            g_base: gw.base(0),
            l_base: lw.base(0),
            d_base: dw.base(0),
            ..*base
        };
        // The dK/dV launch's workgroups, and the parts each group of query heads is split
        // over (with their partials of dK and dV) where those fall short of the fill.
        let inner = windows * base.blocks as usize * (heads / base.group as usize);
        let (parts, per_part) =
            plan::attention_group_parts(inner, base.group as usize, DEFAULT_FILL);
        let split = if parts > 1 {
            let len = parts * (r1 - r0) * kc;
            Some([
                self.scratch("attention dK partials", len)?,
                self.scratch("attention dV partials", len)?,
            ])
        } else {
            None
        };
        let slots = |a, o0, o1| {
            let w = Slot::Win;
            [a, w(kw), w(vw), w(gw), w(lw), w(dw), o0, o1]
        };
        let run = |b: &mut Batch<'_>, entry, p: &Params, s: [Slot<'_>; 8], wgs: usize| {
            let groups = grid(wgs as u64, self.max_groups());
            b.dispatch(m, entry, bytemuck::bytes_of(p), &s, groups)
        };
        // D: an invocation per (row, head), O bound where the tile kernels bind Q.
        let pd = Params {
            rows: (r1 - r0) as u32,
            q_base: ow.base(0),
            ..p
        };
        let s = slots(Slot::Win(ow), Slot::Unused, Slot::Unused);
        run(b, "attn_delta", &pd, s, ((r1 - r0) * heads).div_ceil(256))?;
        // dK and dV: a workgroup per (window, key block, KV head), times the parts each group
        // of query heads is split over where that falls short of the fill: the parts' sums go
        // to partials of dK and dV, added into them in part order after.
        let pk = Params {
            rows: (inner * parts) as u32,
            parts: parts as u32,
            per_part: per_part as u32,
            ..p
        };
        if let Some([dk_parts, dv_parts]) = &split {
            let rows = r1 - r0;
            let len = parts * rows * kc;
            let (pkw, pvw) = (self.whole(dk_parts, len)?, self.whole(dv_parts, len)?);
            // Partial z's row r0 at z·rows·kc: the partials' logical origin r0·kc before
            // their start.
            let origin = before(r0 * kc);
            let pk = Params {
                o0_base: pkw.base(origin),
                o1_base: pvw.base(origin),
                part_len: (rows * kc) as u32,
                ..pk
            };
            let s = slots(Slot::Win(qw), Slot::Win(pkw), Slot::Win(pvw));
            run(b, "attn_dkdv", &pk, s, inner * parts)?;
            for (pw, ow) in [(pkw, dkw), (pvw, dvw)] {
                let out = (ow, ow.base((r0 * kc) as u64), kc);
                self.record_sum_parts(b, "attn_dkdv", (pw, parts), out, (rows, kc), 0.0)?;
            }
        } else {
            let pk = Params {
                o0_base: dkw.base(0),
                o1_base: dvw.base(0),
                ..pk
            };
            let s = slots(Slot::Win(qw), Slot::Win(dkw), Slot::Win(dvw));
            run(b, "attn_dkdv", &pk, s, inner)?;
        }
        // dQ: a workgroup per (window, query block, head).
        let wgs = windows * base.blocks as usize * heads;
        let pq = Params {
            rows: wgs as u32,
            o0_base: dqw.base(0),
            ..p
        };
        run(
            b,
            "attn_dq",
            &pq,
            slots(Slot::Win(qw), Slot::Win(dqw), Slot::Unused),
            wgs,
        )
    }
}

/// The buffers of one backward: q, k, v, o, dO and L; dQ, dK and dV; and D's scratch.
struct Operands<'a> {
    ins: [&'a wgpu::Buffer; 6],
    outs: [&'a wgpu::Buffer; 3],
    delta: &'a wgpu::Buffer,
}
