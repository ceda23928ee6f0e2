//! The OBS and Taylor saliencies of §11 (a group's removal loss, and the Taylor scores'
//! segmented sums), over the gathers and the blocked factor their parent module shares.

use super::*;

/// Width-1 OBS saliency: ε_g = ½·Σ_p partial(p, g) / Hinv(c, c). A pivot that is not positive
/// and finite (the 1 x 1 Cholesky failing) records g in `fail` and scores 0.
#[cube(launch_unchecked)]
fn obs1_kernel(
    partial: &Array<f32>,
    d: &Array<f32>,
    out: &mut Array<f32>,
    fail: &mut Array<Atomic<u32>>,
    parts: u32,
    groups: u32,
) {
    let g = ABSOLUTE_POS as u32;
    if g < groups {
        let mut s = 0.0f32;
        for p in 0..parts {
            s += partial[(p * groups + g) as usize];
        }
        let h = d[g as usize];
        let mut v = 0.0f32;
        if h > 0.0 && h <= 3.4e38 {
            v = 0.5 * s / h;
        } else {
            fail[0].fetch_min(g);
        }
        out[g as usize] = v;
    }
}

/// Taylor kinds as comptime codes.
const TAYLOR1: u32 = 0;
const TAYLOR2: u32 = 1;
const TAYLOR_MIX: u32 = 2;

/// The kind's term for one weight entry, from the raw statistics and their scales (the
/// reference's `taylor_term`).
#[cube]
fn taylor_term(w: f32, gs: f32, gq: f32, gscale: f32, fscale: f32, #[comptime] kind: u32) -> f32 {
    let mut t = 0.0f32;
    if comptime![kind == TAYLOR1] {
        t = f32::abs(w * (gscale * gs));
    }
    if comptime![kind == TAYLOR2] {
        t = f32::abs(w * (fscale * gq) * w);
    }
    if comptime![kind == TAYLOR_MIX] {
        t = f32::abs(w * (gscale * gs) - 0.5 * w * (fscale * gq) * w);
    }
    t
}

/// The term of entry i of one slab (reading only the statistics the kind needs).
#[cube]
#[allow(clippy::too_many_arguments)]
fn taylor_at(
    w: &Array<f32>,
    gs: &Array<f32>,
    gq: &Array<f32>,
    i: u32,
    gscale: f32,
    fscale: f32,
    #[comptime] kind: u32,
) -> f32 {
    let mut g = 0.0f32;
    let mut f = 0.0f32;
    if comptime![kind != TAYLOR2] {
        g = gs[i as usize];
    }
    if comptime![kind != TAYLOR1] {
        f = gq[i as usize];
    }
    taylor_term(w[i as usize], g, f, gscale, fscale, kind)
}

/// Σ over one row of a slab of the Taylor term, one cube per row: part[row0 + r].
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn taylor_rows_kernel(
    w: &Array<f32>,
    gs: &Array<f32>,
    gq: &Array<f32>,
    part: &mut Array<f32>,
    rows: u32,
    cols: u32,
    row0: u32,
    gscale: f32,
    fscale: f32,
    #[comptime] kind: u32,
    #[comptime] plane: bool,
) {
    // The row is uniform per cube, so the early-out never splits a cube at its barriers.
    let r = CUBE_POS as u32;
    if r < rows {
        let mut s = 0.0f32;
        let mut c = UNIT_POS;
        while c < cols {
            s += taylor_at(w, gs, gq, r * cols + c, gscale, fscale, kind);
            c += CUBE;
        }
        let total = cube_sum(s, plane);
        if UNIT_POS == 0 {
            part[(row0 + r) as usize] = total;
        }
    }
}

/// Σ over one chunk of a slab's rows of the Taylor term per column: 32 columns x 8 row lanes
/// per cube, coalesced along the row, one partial row per chunk.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn taylor_cols_kernel(
    w: &Array<f32>,
    gs: &Array<f32>,
    gq: &Array<f32>,
    partial: &mut Array<f32>,
    rows: u32,
    cols: u32,
    chunk: u32,
    part_row0: u32,
    gscale: f32,
    fscale: f32,
    #[comptime] kind: u32,
) {
    let c = CUBE_POS_X * 32 + UNIT_POS_X;
    let (r0, r1) = chunk_rows(rows, chunk);
    let mut s = 0.0f32;
    if c < cols {
        let mut r = r0 + UNIT_POS_Y;
        while r < r1 {
            s += taylor_at(w, gs, gq, r * cols + c, gscale, fscale, kind);
            r += 8;
        }
    }
    store_lane_total(s, partial, (part_row0 + CUBE_POS_Y) * cols + c, c < cols);
}

/// out[k] = Σ_{p < parts} Σ_{j < width} part[p·ld + k·width + j], one cube per segment.
#[cube(launch_unchecked)]
fn segment_sum_kernel(
    part: &Array<f32>,
    out: &mut Array<f32>,
    segments: u32,
    parts: u32,
    width: u32,
    ld: u32,
    #[comptime] plane: bool,
) {
    let k = CUBE_POS as u32;
    if k < segments {
        let mut s = 0.0f32;
        let mut i = UNIT_POS;
        while i < parts * width {
            s += part[((i / width) * ld + k * width + i % width) as usize];
            i += CUBE;
        }
        let total = cube_sum(s, plane);
        if UNIT_POS == 0 {
            out[k as usize] = total;
        }
    }
}

pub fn obs_saliency<R: Runtime>(
    b: &CubeBackend<R>,
    w: &CubeTensor,
    hinv: &CubeTensor,
    width: usize,
    groups: &[usize],
) -> Result<CubeTensor> {
    check::obs_saliency(w.shape(), hinv.shape(), width, groups)?;
    let ng = groups.len();
    let out = b.alloc_tensor(1, ng)?;
    if ng == 0 {
        return Ok(out);
    }
    if width == 1 {
        return obs_saliency_columns(b, w, hinv, groups, out);
    }
    // One failure slot per group, read once after every group's work is queued.
    let fail = b.scratch_from(&vec![u32::MAX; ng])?;
    // A batch's inverses X = L⁻¹ lie side by side (k·k apart) and its products Q (slab rows
    // x k, one slab at a time) likewise, each set in one binding; a batch of one reads its
    // inverse as it is, in slabs where it does not fit one binding.
    let room = (b.max_binding / 4) as usize;
    let max_count = (room / (width * width))
        .min(room / (w.slabs.slab_rows * width).max(1))
        .max(1);
    saliency_batched(b, w, hinv, (width, max_count), groups, (&fail, &out))?;
    if let Some(column) = b.read_u32(&fail, ng)?.into_iter().find(|&c| c != u32::MAX) {
        return Err(KernelError::NotPositiveDefinite {
            column: column as usize,
        });
    }
    Ok(out)
}

/// Groups in batches a fixed step apart (see [`group_batches`]): per batch each group's
/// X = L⁻¹ copied side by side (a batch of one keeps its own), then per slab of W one batched
/// GEMM of every member's Q and one launch of their sums of squares, and one of their totals.
fn saliency_batched<R: Runtime>(
    b: &CubeBackend<R>,
    w: &CubeTensor,
    hinv: &CubeTensor,
    (k, max_count): (usize, usize),
    groups: &[usize],
    (fail, out): (&Handle, &CubeTensor),
) -> Result<()> {
    let (n, ng, wslabs) = (w.cols, groups.len(), w.handles.len());
    let tiles_each = w.slabs.slab_rows.div_ceil(64) * k.div_ceil(64);
    let fill = b.fill_or_default();
    let parts_each = wslabs * SUMSQ_CUBES;
    for batch in group_batches(groups, tiles_each, fill, max_count) {
        let nb = batch.count;
        let xs = if nb > 1 {
            Some(b.scratch(nb * k * k)?)
        } else {
            None
        };
        let mut one = None;
        for z in 0..nb {
            let gi = batch.first + z;
            let x = block_inverse(
                b,
                hinv,
                Sel::Range {
                    first: groups[gi] * k,
                    len: k,
                },
                fail,
                ng,
                gi,
            )?;
            let Some(dst) = &xs else {
                one = Some(x);
                continue;
            };
            for s in 0..x.handles.len() {
                let (x0, xn) = x.slabs.range(s);
                copy2d(
                    b,
                    Rect {
                        h: &x.handles[s],
                        len: x.slab_len(s),
                        off: 0,
                        ld: k,
                    },
                    Rect {
                        h: dst,
                        len: nb * k * k,
                        off: z * k * k + x0 * k,
                        ld: k,
                    },
                    xn,
                    k,
                );
            }
        }
        // Q_z = W[:, S_z]·X_zᵀ for the whole batch in one launch per slab of W (S_z is
        // contiguous, step·k columns after S_(z-1)), its squares summed per member.
        let part = b.scratch(nb * parts_each)?;
        for s in 0..wslabs {
            let rn = w.slabs.range(s).1;
            let q = b.scratch(nb * rn.max(1) * k)?;
            if rn > 0 {
                let a = View::rows(&w.handles[s], w.slab_len(s), groups[batch.first] * k, n);
                if let Some(xs) = &xs {
                    gemm(
                        b,
                        &Gemm {
                            batch: Batched {
                                count: nb,
                                stride: [batch.step * k, k * k, rn * k],
                            },
                            ..Gemm::store(
                                rn,
                                k,
                                k,
                                a,
                                View::transposed(xs, nb * k * k, 0, k),
                                View::rows(&q, nb * rn * k, 0, k),
                            )
                        },
                    );
                } else {
                    let x = one.as_ref().expect("a batch of one keeps its inverse");
                    times_linv_t(b, a, rn, x, &q, rn * k);
                }
            }
            sumsq_batch(
                b,
                (&q, rn * k),
                (&part, s * SUMSQ_CUBES),
                (nb, rn.max(1) * k, parts_each),
            );
        }
        half_sums_into(b, (&part, parts_each, nb), (out, batch.first));
    }
    Ok(())
}

/// out[first + z] = ½·Σ of the `each` partials at z·each of `part`, for z < count: the
/// removal losses of `count` groups from their partial sums of squares.
fn half_sums_into<R: Runtime>(
    b: &CubeBackend<R>,
    (part, each, count): (&Handle, usize, usize),
    (out, first): (&CubeTensor, usize),
) {
    // SAFETY: one cube per group reads its `each` partials inside the count·each buffer and
    // writes its slot of the output, which holds first + count.
    unsafe {
        sum_into_kernel::launch_unchecked::<R>(
            &b.client,
            CubeCount::Static(count as u32, 1, 1),
            CubeDim::new_1d(CUBE),
            arg(part, count * each),
            arg(&out.handles[0], out.cols),
            each as u32,
            first as u32,
            each as u32,
            0.5,
            b.plane,
        );
    }
}

/// Width 1: ε_c = ½‖W[:,c]‖² / Hinv[c,c] for every listed column at once (a 1 x 1 Cholesky is
/// its square root, so this is the general formula).
fn obs_saliency_columns<R: Runtime>(
    b: &CubeBackend<R>,
    w: &CubeTensor,
    hinv: &CubeTensor,
    groups: &[usize],
    out: CubeTensor,
) -> Result<CubeTensor> {
    let (ng, n) = (groups.len(), w.cols);
    let cols = upload_indices(b, groups)?;
    let sel = Sel::List {
        idx: groups,
        dev: &cols,
    };
    let d = b.scratch(ng)?;
    for (s, i0, cnt) in runs(&hinv.slabs, &sel, 0, ng) {
        // SAFETY: listed columns [i0, i0+cnt) have their diagonal rows in slab s.
        unsafe {
            diag_at_kernel::launch_unchecked::<R>(
                &b.client,
                b.grid(cnt, BLOCK),
                CubeDim::new_1d(BLOCK),
                arg(&hinv.handles[s], hinv.slab_len(s)),
                arg(&d, ng),
                arg(&cols, ng),
                i0 as u32,
                cnt as u32,
                hinv.slabs.range(s).0 as u32,
                n as u32,
            );
        }
    }
    // Row chunks as the activation statistic cuts them: parallel, with few partials.
    let (chunk, chunks, parts) = row_chunks(w, ng, b.fill_cubes);
    let partial = b.scratch(parts.max(1) * ng)?;
    let mut row0 = 0;
    for (s, &slab_chunks) in chunks.iter().enumerate() {
        let rn = w.slabs.range(s).1;
        if rn == 0 {
            continue;
        }
        // SAFETY: each cube reads rows of its chunk below rn at the listed columns (below n)
        // and writes one partial row inside the parts x ng buffer.
        unsafe {
            colsumsq_at_kernel::launch_unchecked::<R>(
                &b.client,
                CubeCount::Static(ng.div_ceil(32) as u32, slab_chunks as u32, 1),
                CubeDim::new_2d(32, 8),
                arg(&w.handles[s], w.slab_len(s)),
                arg(&cols, ng),
                arg(&partial, parts.max(1) * ng),
                rn as u32,
                n as u32,
                ng as u32,
                chunk as u32,
                row0 as u32,
            );
        }
        row0 += slab_chunks;
    }
    let fail = b.scratch_from(&[u32::MAX])?;
    // SAFETY: one thread per group, reading its partials column and diagonal entry.
    unsafe {
        obs1_kernel::launch_unchecked::<R>(
            &b.client,
            b.grid(ng, BLOCK),
            CubeDim::new_1d(BLOCK),
            arg(&partial, parts.max(1) * ng),
            arg(&d, ng),
            arg(&out.handles[0], ng),
            arg(&fail, 1),
            parts as u32,
            ng as u32,
        );
    }
    if b.read_u32(&fail, 1)?[0] != u32::MAX {
        // The 1 x 1 block's only column.
        return Err(KernelError::NotPositiveDefinite { column: 0 });
    }
    Ok(out)
}

pub fn taylor_saliency<R: Runtime>(
    b: &CubeBackend<R>,
    inp: TaylorInputs<'_, CubeTensor>,
) -> Result<CubeTensor> {
    let segments = check::taylor(&inp, |t: &CubeTensor| t.shape())?;
    let w = inp.w;
    for (t, what) in [
        (inp.grad_sum, "gradient sum"),
        (inp.grad_sq, "squared gradients"),
    ] {
        if let Some(t) = t {
            same_slabs(&format!("Taylor saliency ({what})"), &w.slabs, &t.slabs)?;
        }
    }
    let kind = match inp.kind {
        TaylorKind::Taylor1 => TAYLOR1,
        TaylorKind::Taylor2 => TAYLOR2,
        TaylorKind::TaylorMix => TAYLOR_MIX,
    };
    let (rows, cols) = w.shape();
    if segments == 0 || cols == 0 {
        // Segments without entries sum to 0.
        return b.filled_tensor(1, segments, 0.0);
    }
    let out = b.alloc_tensor(1, segments)?;
    let (gscale, fscale) = (inp.grad_scale as f32, inp.fisher_scale as f32);
    // A statistic the kind does not read binds W (never read).
    let stat = |t: Option<&CubeTensor>, s: usize| t.unwrap_or(w).handles[s].clone();
    // Partial sums (per row, or per row chunk and column) of the term, then one cube per
    // segment: no float atomics, and the same order of additions on every run.
    let (part, parts, ld) = match inp.axis {
        SegmentAxis::Rows => {
            let part = b.scratch(rows)?;
            for s in 0..w.handles.len() {
                let (r0, rn) = w.slabs.range(s);
                if rn == 0 {
                    continue;
                }
                let len = w.slab_len(s);
                // SAFETY: one cube per row of the slab, each thread striding over its columns;
                // writes entry r0 + r of the rows-long partials.
                unsafe {
                    taylor_rows_kernel::launch_unchecked::<R>(
                        &b.client,
                        b.grid(rn, 1),
                        CubeDim::new_1d(CUBE),
                        arg(&w.handles[s], len),
                        arg(&stat(inp.grad_sum, s), len),
                        arg(&stat(inp.grad_sq, s), len),
                        arg(&part, rows),
                        rn as u32,
                        cols as u32,
                        r0 as u32,
                        gscale,
                        fscale,
                        kind,
                        b.plane,
                    );
                }
            }
            (part, 1, 0)
        }
        SegmentAxis::Cols => {
            let (chunk, chunks, parts) = row_chunks(w, cols, b.fill_cubes);
            let part = b.scratch(parts.max(1) * cols)?;
            let mut row0 = 0;
            for (s, &slab_chunks) in chunks.iter().enumerate() {
                let rn = w.slabs.range(s).1;
                if rn == 0 {
                    continue;
                }
                let len = w.slab_len(s);
                // SAFETY: each cube reads rows of its chunk below rn and columns below cols of
                // this slab, and writes one partial row inside the parts x cols buffer.
                unsafe {
                    taylor_cols_kernel::launch_unchecked::<R>(
                        &b.client,
                        CubeCount::Static(cols.div_ceil(32) as u32, slab_chunks as u32, 1),
                        CubeDim::new_2d(32, 8),
                        arg(&w.handles[s], len),
                        arg(&stat(inp.grad_sum, s), len),
                        arg(&stat(inp.grad_sq, s), len),
                        arg(&part, parts.max(1) * cols),
                        rn as u32,
                        cols as u32,
                        chunk as u32,
                        row0 as u32,
                        gscale,
                        fscale,
                        kind,
                    );
                }
                row0 += slab_chunks;
            }
            (part, parts, cols)
        }
    };
    let part_len = match inp.axis {
        SegmentAxis::Rows => rows,
        SegmentAxis::Cols => parts.max(1) * cols,
    };
    // SAFETY: one cube per segment reads its width entries of each partial row.
    unsafe {
        segment_sum_kernel::launch_unchecked::<R>(
            &b.client,
            b.grid(segments, 1),
            CubeDim::new_1d(CUBE),
            arg(&part, part_len),
            arg(&out.handles[0], segments),
            segments as u32,
            parts as u32,
            inp.width as u32,
            ld as u32,
            b.plane,
        );
    }
    Ok(out)
}
