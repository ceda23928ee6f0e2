//! The structured-pruning ops of §11 on the device: the plain gradient sum (the fused GEMM with
//! a C += acc epilogue), the explicit Hinv = UᵀU, the OBS and Taylor saliencies, the structured
//! OBS update and the compaction.
//!
//! Every solve with Hinv[S,S] goes through its lower Cholesky factor L and L⁻¹, on the blocked
//! kernels of [`factor`], so ε_S = ½‖W[:,S]·L⁻ᵀ‖², Y = L⁻¹·Hinv[S,:] and the update is two
//! GEMMs, as the reference states it. Gathers by index lists move the bits (u32), so the
//! compaction is exact. The host reads back the failure flags of the Cholesky (which decide an
//! error) and the summed removal loss, nothing else.
//!
//! Large operands are split as the tensors are: the k x k block, Hinv[S,:] and Y are tensors
//! with their own slabs, W is worked slab by slab (W[:,S] and Q of one slab are no larger than
//! the slab), and every GEMM's K or N is split by the slabs of the operand it walks.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, same_slabs, CubeTensor, Slabs};
use super::super::CubeBackend;
use super::copy::{copy2d, Rect};
use super::factor::{cholesky_in_place, hinv_factor, invert_lower};
use super::fill::BLOCK;
use super::gemm::{gemm, gemm_split, Batched, Gemm, Of, Product, View};
use super::reduce::{cube_sum, sum, CUBE};
use super::stats::{chunk_rows, mirror_lower, row_chunks, store_lane_total};
use crate::compose::{self, InverseFactor, Lines};
use crate::error::{KernelError, Result};
use crate::ops::{check, HinvExplicit, SegmentAxis, TaylorInputs, TaylorKind};
use crate::plan::aligned_runs;
use crate::plan::groups::group_batches;

mod saliency;
pub use saliency::{obs_saliency, taylor_saliency};

/// Cubes of one sum-of-squares launch: enough to spread a slab over the device, few enough
/// that the partials of every slab stay a short list for the final sum.
const SUMSQ_CUBES: usize = 64;

/// Row (or column) `i` of a selection: `idx[first + i]` from a list, or `first + i`.
#[cube]
fn pick(idx: &Array<u32>, first: u32, i: u32, #[comptime] listed: bool) -> u32 {
    let mut v = first + i;
    if comptime![listed] {
        v = idx[(first + i) as usize];
    }
    v
}

/// dst[d_off + i·d_ld + j] = src[(row(i) − s_row0)·s_ld + col(j)] for i < rows, j < cols, with
/// row(i) and col(j) picked from the lists or ranges (see [`pick`]). Words, not floats, so a
/// gathered value is the stored value bit for bit.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gather_kernel(
    src: &Array<u32>,
    dst: &mut Array<u32>,
    ridx: &Array<u32>,
    cidx: &Array<u32>,
    r_first: u32,
    c_first: u32,
    s_row0: u32,
    s_ld: u32,
    d_off: u32,
    d_ld: u32,
    rows: u32,
    cols: u32,
    #[comptime] by_row: bool,
    #[comptime] by_col: bool,
) {
    let idx = ABSOLUTE_POS as u32;
    if idx < rows * cols {
        let i = idx / cols;
        let j = idx % cols;
        let r = pick(ridx, r_first, i, by_row);
        let c = pick(cidx, c_first, j, by_col);
        dst[(d_off + i * d_ld + j) as usize] = src[((r - s_row0) * s_ld + c) as usize];
    }
}

/// t[(row(i) − row0)·ld + col(j)] = 0 for i < rows, j < cols (rows and columns as the gather).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn zero_kernel(
    t: &mut Array<f32>,
    ridx: &Array<u32>,
    cidx: &Array<u32>,
    r_first: u32,
    c_first: u32,
    row0: u32,
    ld: u32,
    rows: u32,
    cols: u32,
    #[comptime] by_row: bool,
    #[comptime] by_col: bool,
) {
    let idx = ABSOLUTE_POS as u32;
    if idx < rows * cols {
        let r = pick(ridx, r_first, idx / cols, by_row);
        let c = pick(cidx, c_first, idx % cols, by_col);
        t[((r - row0) * ld + c) as usize] = 0.0;
    }
}

/// For each array z of a batch (grid y), `xz` apart: part[slot0 + z·pz + cube] = Σ x² over a
/// grid-strided share of its first n values.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn sumsq_kernel(
    x: &Array<f32>,
    part: &mut Array<f32>,
    n: u32,
    slot0: u32,
    xz: u32,
    pz: u32,
    #[comptime] plane: bool,
) {
    let z = CUBE_POS_Y;
    let stride = CUBE_COUNT_X * CUBE;
    let mut i = CUBE_POS_X * CUBE + UNIT_POS;
    let mut s = 0.0f32;
    while i < n {
        let v = x[(z * xz + i) as usize];
        s += v * v;
        i += stride;
    }
    let total = cube_sum(s, plane);
    if UNIT_POS == 0 {
        part[(slot0 + z * pz + CUBE_POS_X) as usize] = total;
    }
}

/// out[slot + z] = scale · Σ of the n values at z·stride, one cube per z.
#[cube(launch_unchecked)]
fn sum_into_kernel(
    input: &Array<f32>,
    out: &mut Array<f32>,
    n: u32,
    slot: u32,
    stride: u32,
    scale: f32,
    #[comptime] plane: bool,
) {
    let z = CUBE_POS_X;
    let mut s = 0.0f32;
    let mut i = UNIT_POS;
    while i < n {
        s += input[(z * stride + i) as usize];
        i += CUBE;
    }
    let total = cube_sum(s, plane);
    if UNIT_POS == 0 {
        out[(slot + z) as usize] = scale * total;
    }
}

/// d[first + i] = H(c, c) for c = cols[first + i], i < cnt, whose rows lie in this slab.
#[cube(launch_unchecked)]
fn diag_at_kernel(
    h: &Array<f32>,
    d: &mut Array<f32>,
    cidx: &Array<u32>,
    first: u32,
    cnt: u32,
    row0: u32,
    n: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < cnt {
        let c = cidx[(first + i) as usize];
        d[(first + i) as usize] = h[((c - row0) * n + c) as usize];
    }
}

/// Σ W(r, c)² over one chunk of a slab's rows for the listed columns c = cols[g]: 32 groups x
/// 8 row lanes per cube, the lanes reduced in shared memory, one partial row per chunk.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn colsumsq_at_kernel(
    w: &Array<f32>,
    cidx: &Array<u32>,
    partial: &mut Array<f32>,
    rows: u32,
    ld: u32,
    groups: u32,
    chunk: u32,
    part_row0: u32,
) {
    let g = CUBE_POS_X * 32 + UNIT_POS_X;
    let (r0, r1) = chunk_rows(rows, chunk);
    let mut s = 0.0f32;
    if g < groups {
        let c = cidx[g as usize];
        let mut r = r0 + UNIT_POS_Y;
        while r < r1 {
            let v = w[(r * ld + c) as usize];
            s += v * v;
            r += 8;
        }
    }
    let slot = (part_row0 + CUBE_POS_Y) * groups + g;
    store_lane_total(s, partial, slot, g < groups);
}

/// A choice of rows or columns: a range, or a list (on the host and uploaded) of indices.
#[derive(Clone, Copy)]
enum Sel<'a> {
    Range { first: usize, len: usize },
    List { idx: &'a [usize], dev: &'a Handle },
}

impl Sel<'_> {
    fn len(&self) -> usize {
        match *self {
            Sel::Range { len, .. } => len,
            Sel::List { idx, .. } => idx.len(),
        }
    }

    fn at(&self, i: usize) -> usize {
        match *self {
            Sel::Range { first, .. } => first + i,
            Sel::List { idx, .. } => idx[i],
        }
    }

    fn listed(&self) -> bool {
        matches!(self, Sel::List { .. })
    }

    /// The kernel's (index binding, its length, first): a list is read from its start, a range
    /// binds `spare` (never read).
    fn kernel_args<'b>(&'b self, spare: &'b Handle, i0: usize) -> (&'b Handle, usize, usize) {
        match *self {
            Sel::Range { first, .. } => (spare, 1, first + i0),
            Sel::List { idx, dev } => (dev, idx.len(), i0),
        }
    }
}

/// Entries [lo, hi) of a selection of rows as runs whose rows lie in one slab of `slabs`:
/// (slab, first entry, entry count).
fn runs(slabs: &Slabs, sel: &Sel<'_>, lo: usize, hi: usize) -> Vec<(usize, usize, usize)> {
    let mut v: Vec<(usize, usize, usize)> = Vec::new();
    for i in lo..hi {
        let s = slabs.locate(sel.at(i)).0;
        match v.last_mut() {
            Some(last) if last.0 == s && last.1 + last.2 == i => last.2 += 1,
            _ => v.push((s, i, 1)),
        }
    }
    v
}

/// Indices as a device list of u32 (each is below a tensor dimension, so it fits).
fn upload_indices<R: Runtime>(b: &CubeBackend<R>, idx: &[usize]) -> Result<Handle> {
    let words: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
    b.scratch_from(&words)
}

/// dst = src[rows, cols] for a dst of shape rows.len() x cols.len() (any slabs on both).
fn gather<R: Runtime>(
    b: &CubeBackend<R>,
    src: &CubeTensor,
    rows: Sel<'_>,
    cols: Sel<'_>,
    dst: &CubeTensor,
) -> Result<()> {
    let nc = cols.len();
    if nc == 0 {
        return Ok(());
    }
    // A range binds this in place of a list: never the output, which a read-only binding of
    // the same buffer would conflict with.
    let spare = b.scratch_from(&[0])?;
    for ds in 0..dst.handles.len() {
        let (d0, dn) = dst.slabs.range(ds);
        for (ss, i0, cnt) in runs(&src.slabs, &rows, d0, d0 + dn) {
            let (rh, rlen, r_first) = rows.kernel_args(&spare, i0);
            let (ch, clen, c_first) = cols.kernel_args(&spare, 0);
            // SAFETY: rows [i0, i0+cnt) of the selection lie in source slab ss and in
            // destination slab ds; columns are below src.cols; one thread per element.
            unsafe {
                gather_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.grid(cnt * nc, BLOCK),
                    CubeDim::new_1d(BLOCK),
                    arg(&src.handles[ss], src.slab_len(ss)),
                    arg(&dst.handles[ds], dst.slab_len(ds)),
                    arg(rh, rlen),
                    arg(ch, clen),
                    r_first as u32,
                    c_first as u32,
                    src.slabs.range(ss).0 as u32,
                    src.cols as u32,
                    ((i0 - d0) * nc) as u32,
                    nc as u32,
                    cnt as u32,
                    nc as u32,
                    rows.listed(),
                    cols.listed(),
                );
            }
        }
    }
    Ok(())
}

/// t[rows, cols] = 0 (any slabs).
fn zero<R: Runtime>(
    b: &CubeBackend<R>,
    t: &CubeTensor,
    rows: Sel<'_>,
    cols: Sel<'_>,
) -> Result<()> {
    let nc = cols.len();
    if nc == 0 {
        return Ok(());
    }
    let spare = b.scratch_from(&[0])?;
    for (s, i0, cnt) in runs(&t.slabs, &rows, 0, rows.len()) {
        let (rh, rlen, r_first) = rows.kernel_args(&spare, i0);
        let (ch, clen, c_first) = cols.kernel_args(&spare, 0);
        // SAFETY: rows [i0, i0+cnt) of the selection lie in slab s, columns below t.cols.
        unsafe {
            zero_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(cnt * nc, BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(&t.handles[s], t.slab_len(s)),
                arg(rh, rlen),
                arg(ch, clen),
                r_first as u32,
                c_first as u32,
                t.slabs.range(s).0 as u32,
                t.cols as u32,
                cnt as u32,
                nc as u32,
                rows.listed(),
                cols.listed(),
            );
        }
    }
    Ok(())
}

/// part[slot0 .. slot0 + SUMSQ_CUBES] = partial sums of squares of the first n values of x.
fn sumsq<R: Runtime>(b: &CubeBackend<R>, x: &Handle, n: usize, part: &Handle, slot0: usize) {
    sumsq_batch(b, (x, n), (part, slot0), (1, 0, 0));
}

/// For z < count: part[slot0 + z·pz ..][..SUMSQ_CUBES] = partial sums of squares of the n
/// values of x at z·xz.
fn sumsq_batch<R: Runtime>(
    b: &CubeBackend<R>,
    (x, n): (&Handle, usize),
    (part, slot0): (&Handle, usize),
    (count, xz, pz): (usize, usize, usize),
) {
    // SAFETY: SUMSQ_CUBES cubes per array stride over its n values and write their own slots,
    // which the caller's partials buffer holds.
    unsafe {
        sumsq_kernel::launch_unchecked::<R>(
            &b.client,
            CubeCount::Static(SUMSQ_CUBES as u32, count as u32, 1),
            CubeDim::new_1d(CUBE),
            arg(x, (count - 1) * xz + n),
            arg(part, slot0 + (count - 1) * pz + SUMSQ_CUBES),
            n as u32,
            slot0 as u32,
            xz as u32,
            pz as u32,
            b.plane,
        );
    }
}

/// Q (m x k, contiguous with leading dimension k) = A·Xᵀ for the lower triangular X = L⁻¹
/// (k x k, any slabs) and A (m x k) given as a view: N is split by the slabs of X, and K stops
/// at each slab's last row since X(j, l) = 0 for l > j.
fn times_linv_t<R: Runtime>(
    b: &CubeBackend<R>,
    a: View<'_>,
    m: usize,
    x: &CubeTensor,
    q: &Handle,
    q_len: usize,
) {
    let k = x.cols;
    for s in 0..x.handles.len() {
        let (x0, xn) = x.slabs.range(s);
        if xn == 0 {
            continue;
        }
        gemm(
            b,
            &Gemm::store(
                m,
                xn,
                x0 + xn,
                a,
                View::transposed(&x.handles[s], x.slab_len(s), 0, k),
                View::rows(q, q_len, x0, k),
            ),
        );
    }
}

/// The gathered block Hinv[S,S] factored in place, and X = L⁻¹. A failing pivot is recorded
/// in `fail[slot]`.
fn block_inverse<R: Runtime>(
    b: &CubeBackend<R>,
    hinv: &CubeTensor,
    s: Sel<'_>,
    fail: &Handle,
    fail_len: usize,
    slot: usize,
) -> Result<CubeTensor> {
    let k = s.len();
    let a = b.alloc_tensor(k, k)?;
    gather(b, hinv, s, s, &a)?;
    cholesky_in_place(b, &a, fail, fail_len, slot)?;
    invert_lower(b, &a)
}

pub fn grad_sum<R: Runtime>(
    b: &CubeBackend<R>,
    acc: &CubeTensor,
    dy: &CubeTensor,
    x: &CubeTensor,
) -> Result<()> {
    check::fused_grad(acc.shape(), dy.shape(), x.shape())?;
    let (rows, cols, tokens) = (dy.cols, x.cols, x.rows);
    if tokens == 0 {
        return Ok(());
    }
    // A plain sum is linear in the product, so unlike the squared accumulations every share
    // of the tokens (one per pair of dY and X slabs) adds straight into A: g is never stored.
    let segs = aligned_runs(&dy.slabs, &x.slabs, tokens);
    for s in 0..acc.handles.len() {
        let (r0, rn) = acc.slabs.range(s);
        if rn == 0 {
            continue;
        }
        for &(_, len, sa, la, sb, lb) in &segs {
            gemm(
                b,
                &Gemm {
                    beta: Some(1.0),
                    ..Gemm::store(
                        rn,
                        cols,
                        len,
                        View::transposed(&dy.handles[sa], dy.slab_len(sa), la * rows + r0, rows),
                        View::rows(&x.handles[sb], x.slab_len(sb), lb * cols, cols),
                        View::rows(&acc.handles[s], acc.slab_len(s), 0, cols),
                    )
                },
            );
        }
    }
    Ok(())
}

pub fn hinv_explicit<R: Runtime>(
    b: &CubeBackend<R>,
    h: &CubeTensor,
    percdamp: f64,
) -> Result<HinvExplicit<CubeTensor>> {
    let f = hinv_factor(b, h, percdamp)?;
    let n = f.u.cols;
    let hinv = b.alloc_tensor(n, n)?;
    let u = &f.u;
    // Hinv = UᵀU on the lower triangle (SYRK), then mirrored: slab rows [h0, h0+hn) of Hinv
    // are columns of U, so K (rows of U) runs over U's slabs, up to the slab's last row since
    // U(l, i) = 0 for l > i.
    for hs in 0..hinv.handles.len() {
        let (h0, hn) = hinv.slabs.range(hs);
        if hn == 0 {
            continue;
        }
        for us in 0..u.handles.len() {
            let (u0, un) = u.slabs.range(us);
            if un == 0 || u0 >= h0 + hn {
                continue;
            }
            gemm(
                b,
                &Gemm {
                    beta: if us == 0 { None } else { Some(1.0) },
                    lower: Some(h0 as i64),
                    ..Gemm::store(
                        hn,
                        h0 + hn,
                        un.min(h0 + hn - u0),
                        View::transposed(&u.handles[us], u.slab_len(us), h0, n),
                        View::rows(&u.handles[us], u.slab_len(us), 0, n),
                        View::rows(&hinv.handles[hs], hinv.slab_len(hs), 0, n),
                    )
                },
            );
        }
    }
    mirror_lower(b, &hinv);
    Ok(HinvExplicit {
        hinv,
        dead: f.dead,
        damp: f.damp,
    })
}

/// The composites' primitives ([`crate::compose::Steps`]) on CubeCL: launches are queued on
/// the client's stream in order, so there is nothing to submit.
pub struct Steps<'a, R: Runtime> {
    b: &'a CubeBackend<R>,
}

impl<'a, R: Runtime> Steps<'a, R> {
    pub fn new(b: &'a CubeBackend<R>) -> Self {
        Self { b }
    }

    /// A choice of lines as [`Sel`], with its list uploaded into `dev`.
    fn sel<'s>(&self, lines: Lines<'s>, dev: &'s mut Option<Handle>) -> Result<Sel<'s>> {
        Ok(match lines {
            Lines::All(len) => Sel::Range { first: 0, len },
            Lines::List(idx) => Sel::List {
                idx,
                dev: dev.insert(upload_indices(self.b, idx)?),
            },
        })
    }
}

fn of<'a>(o: &compose::Operand<'a, CubeTensor>) -> Of<'a> {
    if o.trans {
        Of::transposed(o.t)
    } else {
        Of::rows(o.t)
    }
}

impl<R: Runtime> compose::Steps for Steps<'_, R> {
    type Tensor = CubeTensor;

    fn shape(t: &CubeTensor) -> (usize, usize) {
        t.shape()
    }

    fn alloc(&self, _what: &'static str, rows: usize, cols: usize) -> Result<CubeTensor> {
        self.b.alloc_tensor(rows, cols)
    }

    fn gather(
        &self,
        src: &CubeTensor,
        rows: Lines<'_>,
        cols: Lines<'_>,
        dst: &CubeTensor,
    ) -> Result<()> {
        let (mut rd, mut cd) = (None, None);
        let (rs, cs) = (self.sel(rows, &mut rd)?, self.sel(cols, &mut cd)?);
        gather(self.b, src, rs, cs, dst)
    }

    fn zero_columns(&self, t: &CubeTensor, cols: &[usize]) -> Result<()> {
        let mut dev = None;
        let cs = self.sel(Lines::List(cols), &mut dev)?;
        zero(
            self.b,
            t,
            Sel::Range {
                first: 0,
                len: t.rows,
            },
            cs,
        )
    }

    fn zero_rows(&self, t: &CubeTensor, rows: &[usize]) -> Result<()> {
        let mut dev = None;
        let rs = self.sel(Lines::List(rows), &mut dev)?;
        zero(
            self.b,
            t,
            rs,
            Sel::Range {
                first: 0,
                len: t.cols,
            },
        )
    }

    fn product(
        &self,
        p: compose::Product,
        a: compose::Operand<'_, CubeTensor>,
        bm: compose::Operand<'_, CubeTensor>,
        c: &CubeTensor,
    ) -> Result<()> {
        let product = Product {
            alpha: p.alpha,
            beta: p.beta,
            lower: None,
            b_lower: p.b_lower.then_some(0),
        };
        gemm_split(self.b, product, of(&a), of(&bm), c);
        Ok(())
    }

    /// The product, then a grid-strided sum of squares per slab of C and one sum of the
    /// partials.
    fn product_sum_squares(
        &self,
        p: compose::Product,
        a: &CubeTensor,
        bm: compose::Operand<'_, CubeTensor>,
        c: &CubeTensor,
    ) -> Result<f64> {
        self.product(p, compose::Operand::of(a), bm, c)?;
        let part = self.b.scratch(c.handles.len() * SUMSQ_CUBES)?;
        for s in 0..c.handles.len() {
            let (_, rn) = c.slabs.range(s);
            sumsq(self.b, &c.handles[s], rn * c.cols, &part, s * SUMSQ_CUBES);
        }
        sum(self.b, &part, c.handles.len() * SUMSQ_CUBES)
    }

    /// X = L⁻¹ for the lower Cholesky factor L of the gathered block (X lower triangular).
    fn inverse_factor(&self, hinv: &CubeTensor, s: &[usize]) -> Result<InverseFactor<CubeTensor>> {
        let mut dev = None;
        let sel = self.sel(Lines::List(s), &mut dev)?;
        let fail = self.b.scratch_from(&[u32::MAX])?;
        let x = block_inverse(self.b, hinv, sel, &fail, 1, 0)?;
        let failed = self.b.read_u32(&fail, 1)?[0];
        if failed != u32::MAX {
            return Err(KernelError::NotPositiveDefinite {
                column: failed as usize,
            });
        }
        Ok(InverseFactor { x, upper: false })
    }

    fn loss_gradient(
        &self,
        logits: &CubeTensor,
        lse: &CubeTensor,
        targets: &[u32],
        offset: usize,
        scale: f64,
    ) -> Result<()> {
        super::forward::loss_gradient(self.b, logits, lse, targets, offset, scale)
    }

    fn submit(&self) -> Result<()> {
        Ok(())
    }
}
