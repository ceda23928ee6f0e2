//! The LLaMA forward ops of §14 on the device. The linear X·Wᵀ and the LM head's logits are
//! gemm.wgsl's `gemm_update` with W read transposed; the rest is forward.wgsl: RMSNorm (a
//! workgroup per row), RoPE (in place), the causal GQA attention (an online softmax over tiles
//! of keys, never a seq x seq matrix), the elementwise SiLU-gate product and residual add, the
//! embedding gather and the LM head's fold of a chunk of logits into the running state.
//!
//! Binding limits: every matrix is bound in windows of whole rows (elementwise ops in flat
//! chunks), so the only tensors that must fit one binding whole are the small ones: RMSNorm's
//! γ, RoPE's tables, the token ids and targets. Attention binds several whole windows of
//! `seq` rows at once where they fit; otherwise one window at a time, its queries (and the
//! output) in slabs of rows and the window's K and V rows up to the slab's last query. A head's
//! columns are not contiguous in a row, so a binding per KV head would span as many bytes as
//! all of them: a window whose K (kv_heads·e columns, seq rows) exceeds one binding is refused
//! with an error instead (LLaMA-2-70B's 4096 x 1024 K window is 16 MiB; the usual limit is
//! 128 MiB).

use bytemuck::{Pod, Zeroable};

use crate::error::{KernelError, Result};
use crate::ops::check;
use crate::plan::{self, groups::DEFAULT_FILL};

use super::exec::{grid, Batch, Ctx, Module, Slot, Win, HEAD_DIMS};
use super::gemm::{Mat, Product};
use super::mem::{shape, WgpuTensor};

/// The variant the kernels other than attention run from (they are the same in all).
const PLAIN: Module = Module::Forward(256);

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    row0: u32,
    a_base: u32,
    a_ld: u32,
    b_base: u32,
    b_ld: u32,
    c_base: u32,
    d_base: u32,
    d_ld: u32,
    idx_base: u32,
    seq: u32,
    heads: u32,
    group: u32,
    e: u32,
    lo: u32,
    hi: u32,
    fresh: u32,
    row_len: u32,
    scale: f32,
    eps: f32,
    q_start: u32,
    q_stop: u32,
    transpose: u32,
    l_base: u32,
    l_on: u32,
    parts: u32,
    rpu: u32,
}

/// The storage bindings of forward.wgsl, unused where `None`.
#[derive(Default)]
struct Bind<'a> {
    in0: Option<Win<'a>>,
    in1: Option<Win<'a>>,
    in2: Option<Win<'a>>,
    dst: Option<Win<'a>>,
    ids: Option<Win<'a>>,
    lse: Option<Win<'a>>,
}

impl<'a> Bind<'a> {
    fn slots(&self) -> [Slot<'a>; 6] {
        [self.in0, self.in1, self.in2, self.dst, self.ids, self.lse].map(Slot::from)
    }
}

impl Ctx {
    fn fwd(
        &self,
        b: &mut Batch<'_>,
        m: Module,
        entry: &'static str,
        p: &Params,
        bind: Bind<'_>,
        groups: [u32; 3],
    ) -> Result<()> {
        b.dispatch(m, entry, bytemuck::bytes_of(p), &bind.slots(), groups)
    }

    /// A small operand (table, id list) bound whole, or an error naming it.
    pub(super) fn fwd_whole<'a>(
        &self,
        what: &str,
        buf: &'a wgpu::Buffer,
        elems: usize,
    ) -> Result<Win<'a>> {
        self.whole(buf, elems).map_err(|_| {
            KernelError::Unsupported(format!(
                "{what} ({elems} values) must fit one storage binding of {} bytes",
                self.max_binding
            ))
        })
    }

    /// Records Y = X·Wᵀ into `y` (x.rows x w.rows): windows of X's rows with Y's, each against
    /// every window of W's rows.
    fn record_xwt(
        &self,
        b: &mut Batch<'_>,
        x: &WgpuTensor,
        w: &WgpuTensor,
        y: &wgpu::Buffer,
        label: &'static str,
    ) -> Result<()> {
        let (xm, wm) = (Mat::of(x), Mat::of(w));
        self.record_gemm_split(
            b,
            Product::store(label),
            xm,
            wm.t(),
            Mat::new(y, x.rows, w.rows),
        )
    }

    pub(crate) fn linear(&self, x: &WgpuTensor, w: &WgpuTensor) -> Result<WgpuTensor> {
        check::linear(shape(x), shape(w))?;
        let y = self.tensor("linear output", x.rows, w.rows)?;
        let mut b = self.batch();
        self.record_xwt(&mut b, x, w, &y.buf, "linear")?;
        b.submit()?;
        Ok(y)
    }

    pub(crate) fn rms_norm(
        &self,
        x: &WgpuTensor,
        gamma: &WgpuTensor,
        eps: f64,
    ) -> Result<WgpuTensor> {
        check::rms_norm(shape(x), shape(gamma), eps)?;
        let (n, d) = shape(x);
        let y = self.tensor("RMSNorm output", n, d)?;
        if n == 0 || d == 0 {
            return Ok(y);
        }
        let gw = self.fwd_whole("the RMSNorm weight", &gamma.buf, d)?;
        let mut b = self.batch();
        for (r0, r1) in self.row_slabs(n, d, 1, usize::MAX)? {
            let xw = self.rows_win(&x.buf, d, r0, r1)?;
            let yw = self.rows_win(&y.buf, d, r0, r1)?;
            let parts = plan::row_parts(r1 - r0, d, DEFAULT_FILL);
            let p = Params {
                rows: (r1 - r0) as u32,
                cols: d as u32,
                row0: r0 as u32,
                a_base: xw.base(0),
                b_base: gw.base(0),
                d_base: yw.base(0),
                eps: eps as f32,
                parts: parts as u32,
                ..Default::default()
            };
            let bind = Bind {
                in0: Some(xw),
                in1: Some(gw),
                dst: Some(yw),
                ..Default::default()
            };
            let g = grid(((r1 - r0) * parts) as u64, self.max_groups());
            // Four columns per thread where rows are whole vec4s from aligned bases.
            let entry = if [d as u32, p.a_base, p.b_base, p.d_base]
                .iter()
                .all(|v| v.is_multiple_of(4))
            {
                "rms_norm4"
            } else {
                "rms_norm"
            };
            self.fwd(&mut b, PLAIN, entry, &p, bind, g)?;
        }
        b.submit()?;
        Ok(y)
    }

    pub(crate) fn rope(
        &self,
        x: &mut WgpuTensor,
        cos: &WgpuTensor,
        sin: &WgpuTensor,
    ) -> Result<()> {
        self.rotate(x, cos, sin, false)
    }

    /// RoPE's rotation in place, or with `transpose` its inverse (the backward pass): the
    /// same kernel with the sine negated.
    pub(super) fn rotate(
        &self,
        x: &mut WgpuTensor,
        cos: &WgpuTensor,
        sin: &WgpuTensor,
        transpose: bool,
    ) -> Result<()> {
        let (seq, e) = check::rope(shape(x), shape(cos), shape(sin))?;
        let (n, cols) = shape(x);
        if n == 0 {
            return Ok(());
        }
        let half = e / 2;
        let cw = self.fwd_whole("the RoPE cos table", &cos.buf, seq * half)?;
        let sw = self.fwd_whole("the RoPE sin table", &sin.buf, seq * half)?;
        let max_rows = self.max_groups() as usize * 4;
        let mut b = self.batch();
        for (r0, r1) in self.row_slabs(n, cols, 1, max_rows)? {
            let xw = self.rows_win(&x.buf, cols, r0, r1)?;
            let p = Params {
                rows: (r1 - r0) as u32,
                cols: cols as u32,
                row0: r0 as u32,
                b_base: cw.base(0),
                c_base: sw.base(0),
                d_base: xw.base(0),
                seq: seq as u32,
                e: e as u32,
                transpose: transpose as u32,
                ..Default::default()
            };
            let bind = Bind {
                in1: Some(cw),
                in2: Some(sw),
                dst: Some(xw),
                ..Default::default()
            };
            // Four pairs per invocation where a head's halves are whole vec4s from aligned
            // bases (every LLaMA head_dim).
            let wide = [half as u32, cols as u32, p.b_base, p.c_base, p.d_base]
                .iter()
                .all(|v| v.is_multiple_of(4));
            let (entry, pairs) = if wide { ("rope4", 4) } else { ("rope", 1) };
            let g = [
                (cols / 2).div_ceil(64 * pairs) as u32,
                (r1 - r0).div_ceil(4) as u32,
                1,
            ];
            self.fwd(&mut b, PLAIN, entry, &p, bind, g)?;
        }
        b.submit()
    }

    pub(crate) fn attention(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
    ) -> Result<WgpuTensor> {
        Ok(self.attention_lse(q, k, v, heads, kv_heads, seq, false)?.0)
    }

    /// The attention output and, when `with_lse`, L [N, heads]: each row's and head's
    /// log-sum-exp of its scaled scores, written by the same kernel from its running max and
    /// sum (the plain forward skips that store).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_lse(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
        with_lse: bool,
    ) -> Result<(WgpuTensor, Option<WgpuTensor>)> {
        let e = check::attention(shape(q), shape(k), shape(v), heads, kv_heads, seq)?;
        let emax = *HEAD_DIMS.iter().find(|&&m| e <= m as usize).ok_or_else(|| {
            KernelError::Unsupported(format!(
                "attention: head_dim {e} is larger than the {} values the WGSL kernel keeps per query",
                HEAD_DIMS[HEAD_DIMS.len() - 1]
            ))
        })?;
        let (n, qc, kc) = (q.rows, q.cols, k.cols);
        let out = self.tensor("attention output", n, qc)?;
        let lse = with_lse
            .then(|| self.tensor("attention log-sum-exp", n, heads))
            .transpose()?;
        if n == 0 {
            return Ok((out, lse));
        }
        // A window's keys must fit one binding (see the module's comment).
        if !self.win_fits((seq * kc) as u64) {
            return Err(KernelError::Unsupported(format!(
                "attention: a window of {seq} rows of K and V ({kc} columns, {} bytes) does not \
                 fit one storage binding of {} bytes",
                seq * kc * 4,
                self.max_binding
            )));
        }
        // Query rows per workgroup, the same in every dispatch.
        let bq = plan::attention_query_rows(n / seq, seq, heads, e, DEFAULT_FILL);
        let base = Params {
            a_ld: qc as u32,
            b_ld: kc as u32,
            d_ld: qc as u32,
            seq: seq as u32,
            heads: heads as u32,
            group: (heads / kv_heads) as u32,
            e: e as u32,
            scale: (1.0 / (e as f64).sqrt()) as f32,
            rpu: (bq / 16) as u32,
            ..Default::default()
        };
        // Dispatches of (first row, query positions [a, b) of each window, windows, and the
        // rows bound of Q and the output, of K and V).
        let mut runs = Vec::new();
        if self.win_fits((seq * qc) as u64) {
            for (r0, r1) in self.row_slabs(n, qc, seq, usize::MAX)? {
                runs.push((r0, (0, seq), (r1 - r0) / seq, (r0, r1), (r0, r1)));
            }
        } else {
            // Each window alone, its queries in slabs of rows (whole tiles where they fit).
            let align = if self.rows_fitting(qc) >= bq { bq } else { 1 };
            let q_slabs = self.row_slabs(seq, qc, align, usize::MAX)?;
            for w0 in (0..n).step_by(seq) {
                for &(a, b) in &q_slabs {
                    runs.push((w0, (a, b), 1, (w0 + a, w0 + b), (w0, w0 + b)));
                }
            }
        }
        let mut b = self.batch();
        for (r0, (a, stop), windows, (q0, q1), (k0, k1)) in runs {
            let qw = self.rows_win(&q.buf, qc, q0, q1)?;
            let kw = self.rows_win(&k.buf, kc, k0, k1)?;
            let vw = self.rows_win(&v.buf, kc, k0, k1)?;
            let ow = self.rows_win(&out.buf, qc, q0, q1)?;
            // L has fewer columns than Q (heads <= heads·e), so Q's rows fit its binding too.
            let lw = lse
                .as_ref()
                .map(|l| self.rows_win(&l.buf, heads, q0, q1))
                .transpose()?;
            let wgs = windows * (stop - a).div_ceil(bq) * heads;
            let p = Params {
                rows: wgs as u32,
                row0: r0 as u32,
                a_base: qw.base(0),
                b_base: kw.base(0),
                c_base: vw.base(0),
                d_base: ow.base(0),
                q_start: a as u32,
                q_stop: stop as u32,
                l_base: lw.map_or(0, |w| w.base(0)),
                l_on: lw.is_some() as u32,
                ..base
            };
            let bind = Bind {
                in0: Some(qw),
                in1: Some(kw),
                in2: Some(vw),
                dst: Some(ow),
                lse: lw,
                ..Default::default()
            };
            let g = grid(wgs as u64, self.max_groups());
            self.fwd(&mut b, Module::Forward(emax), "attention", &p, bind, g)?;
        }
        b.submit()?;
        Ok((out, lse))
    }

    /// Records `entry` over the n elements of `dst` (and `a`, `b`, of the same length), chunk
    /// by chunk.
    fn record_elementwise(
        &self,
        b: &mut Batch<'_>,
        entry: &'static str,
        dst: &wgpu::Buffer,
        (a, bsrc): (&wgpu::Buffer, Option<&wgpu::Buffer>),
        n: usize,
    ) -> Result<()> {
        for (e0, e1) in self.flat_chunks(n) {
            let (o0, o1) = (e0 as u64, e1 as u64);
            let dw = self.win(dst, o0, o1)?;
            let aw = self.win(a, o0, o1)?;
            let bw = bsrc.map(|s| self.win(s, o0, o1)).transpose()?;
            // A vec4 per invocation (forward.wgsl's elementwise kernels).
            let g = grid((e1 - e0).div_ceil(1024) as u64, self.max_groups());
            let p = Params {
                rows: (e1 - e0) as u32,
                a_base: aw.base(o0),
                b_base: bw.map_or(0, |w| w.base(o0)),
                d_base: dw.base(o0),
                row_len: g[0] * 256,
                ..Default::default()
            };
            debug_assert!([p.a_base, p.b_base, p.d_base]
                .iter()
                .all(|b| b.is_multiple_of(4)));
            let bind = Bind {
                in0: Some(aw),
                in1: bw,
                dst: Some(dw),
                ..Default::default()
            };
            self.fwd(b, PLAIN, entry, &p, bind, g)?;
        }
        Ok(())
    }

    pub(crate) fn silu_mul(&self, gate: &WgpuTensor, up: &WgpuTensor) -> Result<WgpuTensor> {
        check::same("SiLU-gate product: up vs gate", shape(up), shape(gate))?;
        let y = self.tensor("SiLU-gate product", gate.rows, gate.cols)?;
        let mut b = self.batch();
        let n = gate.rows * gate.cols;
        self.record_elementwise(&mut b, "silu_mul", &y.buf, (&gate.buf, Some(&up.buf)), n)?;
        b.submit()?;
        Ok(y)
    }

    pub(crate) fn residual_add(&self, x: &mut WgpuTensor, y: &WgpuTensor) -> Result<()> {
        check::same("residual add", shape(x), shape(y))?;
        let mut b = self.batch();
        let n = x.rows * x.cols;
        self.record_elementwise(&mut b, "residual_add", &x.buf, (&y.buf, None), n)?;
        b.submit()
    }

    pub(crate) fn embed(&self, table: &WgpuTensor, ids: &[u32]) -> Result<WgpuTensor> {
        check::ids(ids, table.rows)?;
        let (n, d) = (ids.len(), table.cols);
        let out = self.tensor("embeddings", n, d)?;
        if n == 0 || d == 0 {
            return Ok(out);
        }
        let idb = self.upload_words("token ids", ids)?;
        let iw = self.fwd_whole("the token ids", &idb, n)?;
        let out_slabs = self.row_slabs(n, d, 1, self.max_groups() as usize * 4)?;
        let mut b = self.batch();
        // Per window of the table's rows, the output windows with an id inside it.
        for (t0, t1) in self.row_slabs(table.rows, d, 1, usize::MAX)? {
            let tw = self.rows_win(&table.buf, d, t0, t1)?;
            for &(o0, o1) in &out_slabs {
                let inside = |&id: &u32| (t0..t1).contains(&(id as usize));
                if !ids[o0..o1].iter().any(inside) {
                    continue;
                }
                let ow = self.rows_win(&out.buf, d, o0, o1)?;
                let p = Params {
                    rows: (o1 - o0) as u32,
                    cols: d as u32,
                    row0: o0 as u32,
                    a_base: tw.base(0),
                    d_base: ow.base(0),
                    idx_base: iw.base(0),
                    lo: t0 as u32,
                    hi: t1 as u32,
                    ..Default::default()
                };
                let bind = Bind {
                    in0: Some(tw),
                    dst: Some(ow),
                    ids: Some(iw),
                    ..Default::default()
                };
                let g = [d.div_ceil(64) as u32, (o1 - o0).div_ceil(4) as u32, 1];
                self.fwd(&mut b, PLAIN, "embed", &p, bind, g)?;
            }
        }
        b.submit()?;
        Ok(out)
    }

    /// The logits h·w_chunkᵀ go to a scratch [N, chunk] through the GEMM (the caller sizes
    /// the chunk; it is windowed by rows like any matrix), then `lm_fold` takes one workgroup
    /// per row.
    pub(crate) fn lm_head_chunk(
        &self,
        state: &mut WgpuTensor,
        h: &WgpuTensor,
        w_chunk: &WgpuTensor,
        offset: usize,
        targets: &[u32],
    ) -> Result<()> {
        check::lm_head(
            shape(state),
            shape(h),
            shape(w_chunk),
            offset,
            targets.len(),
        )?;
        let (n, v) = (h.rows, w_chunk.rows);
        if n == 0 {
            return Ok(());
        }
        let elems = n
            .checked_mul(v)
            .ok_or_else(|| KernelError::Shape(format!("{n}x{v} logits overflow")))?;
        let logits = self.scratch("LM-head logits", elems)?;
        let tb = self.upload_words("next-token targets", targets)?;
        let tw = self.fwd_whole("the next-token targets", &tb, n)?;
        // The check bounds offset + v by NO_TARGET = u32::MAX: both ends fit u32.
        let (lo, hi) = (offset, offset + v);
        let mut b = self.batch();
        self.record_xwt(&mut b, h, w_chunk, &logits, "lm_head_logits")?;
        for (r0, r1) in self.row_slabs(n, v.max(3), 1, usize::MAX)? {
            let lw = self.rows_win(&logits, v, r0, r1)?;
            let sw = self.rows_win(&state.buf, 3, r0, r1)?;
            let p = Params {
                rows: (r1 - r0) as u32,
                cols: v as u32,
                row0: r0 as u32,
                a_base: lw.base(0),
                d_base: sw.base(0),
                idx_base: tw.base(0),
                lo: lo as u32,
                hi: hi as u32,
                fresh: (offset == 0) as u32,
                ..Default::default()
            };
            let bind = Bind {
                in0: Some(lw),
                dst: Some(sw),
                ids: Some(tw),
                ..Default::default()
            };
            let g = grid((r1 - r0) as u64, self.max_groups());
            self.fwd(&mut b, PLAIN, "lm_fold", &p, bind, g)?;
        }
        b.submit()
    }

    /// Records the LM head's dlogits in place of a chunk's logits [N, v] (see
    /// `compose::Steps::loss_gradient`): `lse` [N, 1] and the targets bound whole, the logits
    /// in windows of rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record_loss_gradient(
        &self,
        b: &mut Batch<'_>,
        logits: &WgpuTensor,
        lse: &WgpuTensor,
        targets: &wgpu::Buffer,
        offset: usize,
        scale: f64,
    ) -> Result<()> {
        let (n, v) = shape(logits);
        if n == 0 || v == 0 {
            return Ok(());
        }
        let lw = self.fwd_whole("the per-row log-sum-exp", &lse.buf, n)?;
        let tw = self.fwd_whole("the next-token targets", targets, n)?;
        let max_rows = self.max_groups() as usize * 4;
        for (r0, r1) in self.row_slabs(n, v, 1, max_rows)? {
            let dw = self.rows_win(&logits.buf, v, r0, r1)?;
            let p = Params {
                rows: (r1 - r0) as u32,
                cols: v as u32,
                row0: r0 as u32,
                b_base: lw.base(0),
                d_base: dw.base(0),
                idx_base: tw.base(0),
                // The check bounds offset + v by NO_TARGET = u32::MAX.
                lo: offset as u32,
                scale: scale as f32,
                ..Default::default()
            };
            let bind = Bind {
                in1: Some(lw),
                dst: Some(dw),
                ids: Some(tw),
                ..Default::default()
            };
            let g = [v.div_ceil(64) as u32, (r1 - r0).div_ceil(4) as u32, 1];
            self.fwd(b, PLAIN, "lm_loss_grad", &p, bind, g)?;
        }
        Ok(())
    }
}
