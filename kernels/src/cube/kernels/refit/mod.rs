//! The re-fit ops of §12 on the device. The GEMM-shaped parts run on the re-fit tiling of
//! [`tile`] (D = P ⊙ (B·A) and W − Ŵ formed in the operand loads, the loss, the gradient, the
//! row and column dots and the Hadamard product in the epilogues) or on the shared GEMM; the
//! rest are elementwise kernels here. The host reads back only the loss and the mean diagonal
//! of the damped solve, each summed on the device first.
//!
//! Every op works slab by slab: rows of W split the output, slabs of H (and of Ŵ for the
//! norm system's SYRK) split K, and each launch over a share of K adds its part (the epilogues
//! are linear in the product, past a constant term the first launch adds). The LoRA factors are
//! small and used whole (gathered into one buffer if they were ever split).

mod tile;

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::storage::{arg, same_slabs, CubeMask, CubeTensor};
use super::super::CubeBackend;
use super::copy::gather_rows;
use super::factor::hinv_factor;
use super::fill::{vector_width, BLOCK};
use super::gemm::{gemm_filling, gemm_split, Gemm, Of, Product, View};
use super::reduce::sum;
use super::score::sub;
use super::stats::mirror_lower;
use crate::error::{KernelError, Result};
use crate::ops::{check, AdamStep, LoraForm, LoraGrad, LoraInputs};
use tile::{launch, tiles, Buf, Lora, Tile};

#[cube(launch_unchecked)]
fn negate_kernel<N: Size>(w: &Array<Vector<f32, N>>, out: &mut Array<Vector<f32, N>>) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        out[i] = Vector::new(0.0) - w[i];
    }
}

/// PyTorch's AdamW without weight decay; `step` = lr / (1 − β1ᵗ), `rsb2` = 1/√(1 − β2ᵗ).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel<N: Size>(
    param: &mut Array<Vector<f32, N>>,
    grad: &Array<Vector<f32, N>>,
    m: &mut Array<Vector<f32, N>>,
    v: &mut Array<Vector<f32, N>>,
    b1: f32,
    one_b1: f32,
    b2: f32,
    one_b2: f32,
    step: f32,
    rsb2: f32,
    eps: f32,
) {
    let i = ABSOLUTE_POS;
    if i < param.len() {
        let g = grad[i];
        let mi = m[i] * Vector::new(b1) + g * Vector::new(one_b1);
        let vi = v[i] * Vector::new(b2) + g * g * Vector::new(one_b2);
        m[i] = mi;
        v[i] = vi;
        let denom = Vector::sqrt(vi) * Vector::new(rsb2) + Vector::new(eps);
        param[i] = param[i] - Vector::new(step) * mi / denom;
    }
}

/// The merged weight of one slab: 0 where the mask prunes, else W_p + s·(B·A) or W_p·(B·A).
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn merge_kernel(
    wp: &Array<f32>,
    mask: &Array<u32>,
    fb: &Array<f32>,
    fa: &Array<f32>,
    out: &mut Array<f32>,
    len: u32,
    cols: u32,
    wpr: u32,
    fb_off: u32,
    rank: u32,
    s: f32,
    #[comptime] scale_form: bool,
) {
    let idx = ABSOLUTE_POS as u32;
    if idx < len {
        let i = idx / cols;
        let j = idx % cols;
        let mut v = 0.0f32;
        if ((mask[(i * wpr + j / 32) as usize] >> (j % 32)) & 1u32) == 0u32 {
            let bo = fb_off + i * rank;
            let mut d = 0.0f32;
            for rr in 0..rank {
                d += fb[(bo + rr) as usize] * fa[(rr * cols + j) as usize];
            }
            if comptime![scale_form] {
                v = wp[idx as usize] * d;
            } else {
                v = wp[idx as usize] + s * d;
            }
        }
        out[idx as usize] = v;
    }
}

/// s_r = num/den (1 where den = 0) from the row-dot partials, `slots` (num, den) pairs per row.
#[cube(launch_unchecked)]
fn row_scales_kernel(part: &Array<f32>, s: &mut Array<f32>, rows: u32, slots: u32) {
    let r = ABSOLUTE_POS as u32;
    if r < rows {
        let mut num = 0.0f32;
        let mut den = 0.0f32;
        for q in 0..slots {
            num += part[(q * 2 * rows + 2 * r) as usize];
            den += part[(q * 2 * rows + 2 * r + 1) as usize];
        }
        let mut v = 1.0f32;
        if den != 0.0 {
            v = num / den;
        }
        s[r as usize] = v;
    }
}

/// Row i of one slab (global row row0 + i) times s[row0 + i].
#[cube(launch_unchecked)]
fn scale_rows_kernel(w: &mut Array<f32>, s: &Array<f32>, row0: u32, cols: u32, len: u32) {
    let idx = ABSOLUTE_POS as u32;
    if idx < len {
        w[idx as usize] *= s[(row0 + idx / cols) as usize];
    }
}

/// out[j] = Σ over `slots` rows of the column-dot partials.
#[cube(launch_unchecked)]
fn col_sums_kernel(part: &Array<f32>, out: &mut Array<f32>, cols: u32, slots: u32) {
    let j = ABSOLUTE_POS as u32;
    if j < cols {
        let mut v = 0.0f32;
        for q in 0..slots {
            v += part[(q * cols + j) as usize];
        }
        out[j as usize] = v;
    }
}

/// d[row0 + i] = M(row0 + i, row0 + i) for the rows of one slab.
#[cube(launch_unchecked)]
fn diag_kernel(m: &Array<f32>, d: &mut Array<f32>, row0: u32, rows: u32, n: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < rows {
        d[(row0 + i) as usize] = m[(i * n + row0 + i) as usize];
    }
}

/// One slab of M + λI.
#[cube(launch_unchecked)]
fn damp_kernel(m: &Array<f32>, out: &mut Array<f32>, row0: u32, n: u32, len: u32, lambda: f32) {
    let idx = ABSOLUTE_POS as u32;
    if idx < len {
        let mut v = m[idx as usize];
        if idx % n == row0 + idx / n {
            v += lambda;
        }
        out[idx as usize] = v;
    }
}

/// Slab `s` of `t` as a binding.
fn slab(t: &CubeTensor, s: usize) -> Buf<'_> {
    (&t.handles[s], t.slab_len(s))
}

/// All of `t` in one binding: its only slab, or its rows gathered into a scratch buffer.
fn whole<R: Runtime>(b: &CubeBackend<R>, t: &CubeTensor) -> Result<(Handle, usize)> {
    let len = t.rows * t.cols;
    if t.handles.len() == 1 {
        return Ok((t.handles[0].clone(), len.max(1)));
    }
    let h = b.scratch(len)?;
    gather_rows(b, t, 0, t.rows, &h);
    Ok((h, len))
}

fn launch_1d<R: Runtime>(b: &CubeBackend<R>, n: usize) -> (CubeCount, CubeDim) {
    (b.grid(n, BLOCK), CubeDim::new_1d(BLOCK))
}

/// C (rows x cols, slabs like X) = X·H over every slab of H, on the shared GEMM.
fn times_h<R: Runtime>(b: &CubeBackend<R>, x: &CubeTensor, h: &CubeTensor, c: &CubeTensor) {
    gemm_split(b, Product::default(), Of::rows(x), Of::rows(h), c);
}

pub fn refit_base<R: Runtime>(
    b: &CubeBackend<R>,
    wp: Option<&CubeTensor>,
    w: &CubeTensor,
    h: &CubeTensor,
) -> Result<(CubeTensor, CubeTensor)> {
    let (rows, cols) = w.shape();
    check::same("Hessian vs W columns", h.shape(), (cols, cols))?;
    let delta = match wp {
        Some(p) => {
            check::same("pruned vs original W", p.shape(), w.shape())?;
            sub(b, p, w)?
        }
        None => {
            let out = b.alloc_tensor(rows, cols)?;
            let v = vector_width(cols);
            for (s, n, cubes) in b.vector_slabs(w, v) {
                // SAFETY: one thread per vector of two slabs of equal length.
                unsafe {
                    negate_kernel::launch_unchecked::<R>(
                        &b.client,
                        cubes,
                        CubeDim::new_1d(BLOCK),
                        v,
                        arg(&w.handles[s], n),
                        arg(&out.handles[s], n),
                    );
                }
            }
            out
        }
    };
    let delta_h = if cols == 0 {
        b.alloc_tensor(rows, cols)?
    } else {
        let dh = b.alloc_tensor(rows, cols)?;
        times_h(b, &delta, h, &dh);
        dh
    };
    Ok((delta, delta_h))
}

pub fn lora_grad<R: Runtime>(
    b: &CubeBackend<R>,
    inp: LoraInputs<'_, CubeTensor, CubeMask>,
) -> Result<LoraGrad<CubeTensor>> {
    let (rows, cols) = inp.wp.shape();
    let r = inp.b.cols;
    check::same("mask vs W_p", (inp.mask.rows, inp.mask.cols), (rows, cols))?;
    check::same("Δ vs W_p", inp.delta.shape(), (rows, cols))?;
    check::same("ΔH vs W_p", inp.delta_h.shape(), (rows, cols))?;
    check::same("Hessian vs W columns", inp.h.shape(), (cols, cols))?;
    check::same("B vs rows x rank", inp.b.shape(), (rows, r))?;
    check::same("A vs rank x cols", inp.a.shape(), (r, cols))?;
    same_slabs("mask vs W_p", &inp.mask.slabs, &inp.wp.slabs)?;
    same_slabs("Δ vs W_p", &inp.delta.slabs, &inp.wp.slabs)?;
    same_slabs("ΔH vs W_p", &inp.delta_h.slabs, &inp.wp.slabs)?;
    let db = b.alloc_tensor(rows, r)?;
    let da = b.alloc_tensor(r, cols)?;
    if rows == 0 || cols == 0 {
        for t in [&db, &da] {
            for (s, h) in t.handles.iter().enumerate() {
                super::fill::fill_u32(b, h, t.slab_len(s).max(1), 0);
            }
        }
        return Ok(LoraGrad { db, da, loss: 0.0 });
    }
    let (fb, fb_len) = whole(b, inp.b)?;
    let (fa, fa_len) = whole(b, inp.a)?;
    let h = inp.h;
    let wp = inp.wp;
    let wpr = inp.mask.words_per_row();
    let amode = match inp.form {
        LoraForm::Mask => tile::A_LORA_MASK,
        LoraForm::Scale => tile::A_LORA_SCALE,
    };
    // One loss partial per output tile per (W slab, H slab) launch.
    let per_launch: Vec<usize> = (0..wp.handles.len())
        .map(|s| {
            let (ty, tx) = tiles(b, wp.slabs.range(s).1, cols);
            ty * tx
        })
        .collect();
    let total: usize = per_launch.iter().sum::<usize>() * h.handles.len();
    let partials = b.scratch(total)?;
    let mut base = 0;
    for (s, &tiles_s) in per_launch.iter().enumerate() {
        let (r0, rn) = wp.slabs.range(s);
        if rn == 0 {
            continue;
        }
        // Ḡ for this slab's rows, then its shares of ∂B and ∂A.
        let g = b.scratch(rn * cols)?;
        for hs in 0..h.handles.len() {
            let (h0, hn) = h.slabs.range(hs);
            launch(
                b,
                &Tile {
                    m: rn,
                    n: cols,
                    k: hn,
                    amode,
                    a: slab(wp, s),
                    a_off: h0,
                    a_ld: cols,
                    a2: None,
                    lora: Some(Lora {
                        mask: (&inp.mask.handles[s], inp.mask.slab_len(s)),
                        wpr,
                        fb: (&fb, fb_len),
                        fb_off: r0 * r,
                        rank: r,
                        fa: (&fa, fa_len),
                        fa_ld: cols,
                        k0: h0,
                    }),
                    b: slab(h, hs),
                    b_off: 0,
                    b_ld: cols,
                    c: (&g, rn * cols),
                    c_off: 0,
                    c_ld: cols,
                    e1: Some(slab(inp.delta, s)),
                    e2: Some(slab(inp.delta_h, s)),
                    part: Some(((&partials, total), base, 0)),
                    alpha: 1.0,
                    s: inp.s as f32,
                    gscale: (inp.s * inp.norm) as f32,
                    accum: hs > 0,
                    lower: None,
                    epi: tile::E_LORA,
                },
            );
            base += tiles_s;
        }
        // ∂B[r0.., :] = Ḡ·Aᵀ, split by the slabs of ∂B. Both products are narrow (rank
        // columns or rows) and deep, so each runs over depth pieces where it would not fill.
        for (ds, lo, hi) in db.slabs.covering(r0, r0 + rn) {
            let local = lo - db.slabs.range(ds).0;
            gemm_filling(
                b,
                &Gemm::store(
                    hi - lo,
                    r,
                    cols,
                    View::rows(&g, rn * cols, (lo - r0) * cols, cols),
                    View::transposed(&fa, fa_len, 0, cols),
                    View::rows(&db.handles[ds], db.slab_len(ds), local * r, r),
                ),
            );
        }
        // ∂A += B[r0.., :]ᵀ·Ḡ, split by the slabs of ∂A.
        for ds in 0..da.handles.len() {
            let (q0, qn) = da.slabs.range(ds);
            gemm_filling(
                b,
                &Gemm {
                    beta: if r0 == 0 { None } else { Some(1.0) },
                    ..Gemm::store(
                        qn,
                        cols,
                        rn,
                        View::transposed(&fb, fb_len, r0 * r + q0, r),
                        View::rows(&g, rn * cols, 0, cols),
                        View::rows(&da.handles[ds], da.slab_len(ds), 0, cols),
                    )
                },
            );
        }
    }
    let loss = 0.5 * inp.norm * sum(b, &partials, total)?;
    Ok(LoraGrad { db, da, loss })
}

pub fn adamw_step<R: Runtime>(
    b: &CubeBackend<R>,
    param: &CubeTensor,
    grad: &CubeTensor,
    m: &CubeTensor,
    v: &CubeTensor,
    st: AdamStep,
) -> Result<()> {
    check::same("gradient vs parameter", grad.shape(), param.shape())?;
    check::same("first moment vs parameter", m.shape(), param.shape())?;
    check::same("second moment vs parameter", v.shape(), param.shape())?;
    for (what, t) in [
        ("gradient vs parameter", grad),
        ("first moment vs parameter", m),
        ("second moment vs parameter", v),
    ] {
        same_slabs(what, &t.slabs, &param.slabs)?;
    }
    let bc1 = 1.0 - st.beta1.powi(st.t as i32);
    let bc2 = 1.0 - st.beta2.powi(st.t as i32);
    let w = vector_width(param.cols);
    for (s, n, cubes) in b.vector_slabs(param, w) {
        // SAFETY: one thread per vector of four slabs of equal length.
        unsafe {
            adamw_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                CubeDim::new_1d(BLOCK),
                w,
                arg(&param.handles[s], n),
                arg(&grad.handles[s], n),
                arg(&m.handles[s], n),
                arg(&v.handles[s], n),
                st.beta1 as f32,
                (1.0 - st.beta1) as f32,
                st.beta2 as f32,
                (1.0 - st.beta2) as f32,
                (st.lr / bc1) as f32,
                (1.0 / bc2.sqrt()) as f32,
                st.eps as f32,
            );
        }
    }
    Ok(())
}

pub fn lora_merge<R: Runtime>(
    b: &CubeBackend<R>,
    wp: &CubeTensor,
    mask: &CubeMask,
    lb: &CubeTensor,
    la: &CubeTensor,
    form: LoraForm,
    s: f64,
) -> Result<CubeTensor> {
    let (rows, cols) = wp.shape();
    let r = lb.cols;
    check::same("mask vs W_p", (mask.rows, mask.cols), (rows, cols))?;
    check::same("B vs rows x rank", lb.shape(), (rows, r))?;
    check::same("A vs rank x cols", la.shape(), (r, cols))?;
    same_slabs("mask vs W_p", &mask.slabs, &wp.slabs)?;
    let out = b.alloc_tensor(rows, cols)?;
    if rows == 0 || cols == 0 {
        return Ok(out);
    }
    let (fb, fb_len) = whole(b, lb)?;
    let (fa, fa_len) = whole(b, la)?;
    for sl in 0..wp.handles.len() {
        let (r0, rn) = wp.slabs.range(sl);
        let len = rn * cols;
        if len == 0 {
            continue;
        }
        let (cubes, dim) = launch_1d(b, len);
        // SAFETY: one thread per element of the slab; its mask word, B row and A column exist.
        unsafe {
            merge_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                dim,
                arg(&wp.handles[sl], len),
                arg(&mask.handles[sl], mask.slab_len(sl)),
                arg(&fb, fb_len),
                arg(&fa, fa_len),
                arg(&out.handles[sl], len),
                len as u32,
                cols as u32,
                mask.words_per_row() as u32,
                (r0 * r) as u32,
                r as u32,
                s as f32,
                form == LoraForm::Scale,
            );
        }
    }
    Ok(out)
}

pub fn row_scale<R: Runtime>(
    b: &CubeBackend<R>,
    w_hat: &CubeTensor,
    w: &CubeTensor,
    h: &CubeTensor,
) -> Result<CubeTensor> {
    let (rows, cols) = w_hat.shape();
    check::same("W vs Ŵ", w.shape(), (rows, cols))?;
    check::same("Hessian vs W columns", h.shape(), (cols, cols))?;
    same_slabs("W vs Ŵ", &w.slabs, &w_hat.slabs)?;
    let scales = b.alloc_tensor(1, rows)?;
    if rows == 0 {
        return Ok(scales);
    }
    // (num, den) per row per (H slab, column tile); every W slab has the column tiles of
    // its own launch shape, so slots are reserved for the widest count.
    let col_tiles = (0..w_hat.handles.len())
        .map(|s| tiles(b, w_hat.slabs.range(s).1, cols).1)
        .max()
        .unwrap_or(0);
    let slots = h.handles.len() * col_tiles;
    let partials = b.scratch(slots * 2 * rows)?;
    if slots > 0 {
        // Slots a narrower launch leaves unwritten must read as zero.
        super::fill::fill_u32(b, &partials, slots * 2 * rows, 0);
    }
    for s in 0..w_hat.handles.len() {
        let (r0, rn) = w_hat.slabs.range(s);
        for hs in 0..h.handles.len() {
            let (h0, hn) = h.slabs.range(hs);
            launch(
                b,
                &Tile {
                    m: rn,
                    n: cols,
                    k: hn,
                    amode: tile::A_ROWS,
                    a: slab(w_hat, s),
                    a_off: h0,
                    a_ld: cols,
                    a2: None,
                    lora: None,
                    b: slab(h, hs),
                    b_off: 0,
                    b_ld: cols,
                    c: slab(w_hat, s),
                    c_off: 0,
                    c_ld: cols,
                    e1: Some(slab(w, s)),
                    e2: Some(slab(w_hat, s)),
                    part: Some((
                        (&partials, slots * 2 * rows),
                        hs * col_tiles * 2 * rows + 2 * r0,
                        2 * rows,
                    )),
                    alpha: 1.0,
                    s: 0.0,
                    gscale: 0.0,
                    accum: false,
                    lower: None,
                    epi: tile::E_ROW_DOT,
                },
            );
        }
    }
    let (cubes, dim) = launch_1d(b, rows);
    // SAFETY: one thread per row; the partials hold `slots` pairs per row.
    unsafe {
        row_scales_kernel::launch_unchecked::<R>(
            &b.client,
            cubes,
            dim,
            arg(&partials, slots * 2 * rows),
            arg(&scales.handles[0], rows),
            rows as u32,
            slots as u32,
        );
    }
    for s in 0..w_hat.handles.len() {
        let (r0, rn) = w_hat.slabs.range(s);
        let len = rn * cols;
        if len == 0 {
            continue;
        }
        let (cubes, dim) = launch_1d(b, len);
        // SAFETY: one thread per element of the slab; its row's scale exists.
        unsafe {
            scale_rows_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                dim,
                arg(&w_hat.handles[s], len),
                arg(&scales.handles[0], rows),
                r0 as u32,
                cols as u32,
                len as u32,
            );
        }
    }
    Ok(scales)
}

pub fn norm_system<R: Runtime>(
    b: &CubeBackend<R>,
    pairs: &[(&CubeTensor, &CubeTensor)],
    h: &CubeTensor,
) -> Result<(CubeTensor, CubeTensor)> {
    let cols = h.cols;
    check::same("Hessian", h.shape(), (cols, cols))?;
    for (w_hat, w) in pairs {
        check::same("Ŵ vs Hessian columns", w_hat.shape(), (w_hat.rows, cols))?;
        check::same("W vs Ŵ", w.shape(), w_hat.shape())?;
        same_slabs("W vs Ŵ", &w.slabs, &w_hat.slabs)?;
    }
    let m = b.alloc_tensor(cols, cols)?;
    same_slabs("norm system vs Hessian", &m.slabs, &h.slabs)?;
    let rhs = b.alloc_tensor(1, cols)?;
    if cols == 0 {
        return Ok((m, rhs));
    }
    if pairs.is_empty() {
        for (s, hd) in m.handles.iter().enumerate() {
            super::fill::fill_u32(b, hd, m.slab_len(s).max(1), 0);
        }
    }
    // Σ ŴᵀŴ ⊙ H on the lower triangle, K over the slabs of every Ŵ, then mirrored.
    let mut first = true;
    for (w_hat, _) in pairs {
        for s in 0..w_hat.handles.len() {
            let kn = w_hat.slabs.range(s).1;
            for ms in 0..m.handles.len() {
                let (m0, mn) = m.slabs.range(ms);
                launch(
                    b,
                    &Tile {
                        m: mn,
                        n: m0 + mn,
                        k: kn,
                        amode: tile::A_TRANS,
                        a: slab(w_hat, s),
                        a_off: m0,
                        a_ld: cols,
                        a2: None,
                        lora: None,
                        b: slab(w_hat, s),
                        b_off: 0,
                        b_ld: cols,
                        c: slab(&m, ms),
                        c_off: 0,
                        c_ld: cols,
                        e1: Some(slab(h, ms)),
                        e2: None,
                        part: None,
                        alpha: 1.0,
                        s: 0.0,
                        gscale: 0.0,
                        accum: !first,
                        lower: Some(m0 as i64),
                        epi: tile::E_HADAMARD,
                    },
                );
            }
            first = false;
        }
    }
    if !pairs.is_empty() {
        mirror_lower(b, &m);
    }
    // Column sums of Ŵ ⊙ ((W − Ŵ)·H): one row of partials per row tile of every launch.
    let mut launches = Vec::new();
    let mut slots = 0;
    for (l, (w_hat, _)) in pairs.iter().enumerate() {
        for s in 0..w_hat.handles.len() {
            let rn = w_hat.slabs.range(s).1;
            for hs in 0..h.handles.len() {
                launches.push((l, s, hs, slots));
                slots += tiles(b, rn, cols).0;
            }
        }
    }
    let partials = b.scratch(slots * cols)?;
    for (l, s, hs, base) in launches {
        let (w_hat, w) = pairs[l];
        let rn = w_hat.slabs.range(s).1;
        let (h0, hn) = h.slabs.range(hs);
        launch(
            b,
            &Tile {
                m: rn,
                n: cols,
                k: hn,
                amode: tile::A_DIFF,
                a: slab(w, s),
                a_off: h0,
                a_ld: cols,
                a2: Some(slab(w_hat, s)),
                lora: None,
                b: slab(h, hs),
                b_off: 0,
                b_ld: cols,
                c: slab(w_hat, s),
                c_off: 0,
                c_ld: cols,
                e1: Some(slab(w_hat, s)),
                e2: None,
                part: Some(((&partials, slots * cols), base * cols, cols)),
                alpha: 1.0,
                s: 0.0,
                gscale: 0.0,
                accum: false,
                lower: None,
                epi: tile::E_COL_DOT,
            },
        );
    }
    let (cubes, dim) = launch_1d(b, cols);
    // SAFETY: one thread per column; the partials hold `slots` rows of `cols`.
    unsafe {
        col_sums_kernel::launch_unchecked::<R>(
            &b.client,
            cubes,
            dim,
            arg(&partials, slots * cols),
            arg(&rhs.handles[0], cols),
            cols as u32,
            slots as u32,
        );
    }
    Ok((m, rhs))
}

pub fn spd_solve<R: Runtime>(
    b: &CubeBackend<R>,
    m: &CubeTensor,
    rhs: &CubeTensor,
    percdamp: f64,
) -> Result<CubeTensor> {
    let n = m.rows;
    check::same("system", m.shape(), (n, n))?;
    check::same("right-hand side", rhs.shape(), (1, n))?;
    if n == 0 {
        return b.alloc_tensor(1, 0);
    }
    let d = b.scratch(n)?;
    for s in 0..m.handles.len() {
        let (r0, rn) = m.slabs.range(s);
        let (cubes, dim) = launch_1d(b, rn);
        // SAFETY: one thread per row of the slab, reading its diagonal element.
        unsafe {
            diag_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                dim,
                arg(&m.handles[s], m.slab_len(s)),
                arg(&d, n),
                r0 as u32,
                rn as u32,
                n as u32,
            );
        }
    }
    let mean = sum(b, &d, n)? / n as f64;
    if mean == 0.0 {
        return b.filled_tensor(1, n, 0.0);
    }
    // M + λI, then the §6 factor U of its inverse (no further damping): x = Uᵀ(U·rhs).
    let damped = b.alloc_tensor(n, n)?;
    let lambda = (percdamp * mean) as f32;
    for s in 0..m.handles.len() {
        let (r0, rn) = m.slabs.range(s);
        let len = rn * n;
        let (cubes, dim) = launch_1d(b, len);
        // SAFETY: one thread per element of two slabs of equal length.
        unsafe {
            damp_kernel::launch_unchecked::<R>(
                &b.client,
                cubes,
                dim,
                arg(&m.handles[s], len),
                arg(&damped.handles[s], len),
                r0 as u32,
                n as u32,
                len as u32,
                lambda,
            );
        }
    }
    let f = hinv_factor(b, &damped, 0.0)?;
    if let Some(&column) = f.dead.first() {
        // A zero pivot of M + λI itself (λ = 0 on a zero diagonal): not positive definite.
        return Err(KernelError::NotPositiveDefinite { column });
    }
    let u = f.u;
    // y = rhs·Uᵀ (Uᵀ lower triangular: U(j, k) = 0 for k < j), then x = y·U.
    let y = b.alloc_tensor(1, n)?;
    let lower_b = Product {
        b_lower: Some(0),
        ..Product::default()
    };
    gemm_split(b, lower_b, Of::rows(rhs), Of::transposed(&u), &y);
    let x = b.alloc_tensor(1, n)?;
    gemm_split(b, Product::default(), Of::rows(&y), Of::rows(&u), &x);
    Ok(x)
}
