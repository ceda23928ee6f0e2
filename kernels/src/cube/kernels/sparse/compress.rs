//! Compression of a pruned f32 weight under its mask, and decompression, in the layouts of
//! [`crate::formats`].
//!
//! - dense: one thread per 8 columns (one vec4 of packed words);
//! - 2:4: one thread per 32-column unit (8 groups: two vec4 of values and one code word);
//! - bitmap: one cube per row writes the kept bits and counts them, one cube scans the counts
//!   over rows into the offsets, and one cube per row scatters the values, each thread placing
//!   its unit's values after a cube-wide prefix sum of the units' counts.
//!
//! Validation runs in the same passes: the first kept value outside the f16 range and the
//! first 2:4 group keeping more than two go to a small flag buffer by atomic min (one slot
//! per slab, local indices), which is read back once. Value errors win, as in the reference.

use cubecl::prelude::*;

use super::super::super::storage::{arg, same_slabs, CubeMask, CubePacked, CubeTensor, Words};
use super::super::super::CubeBackend;
use super::super::fill::{fill_u32, BLOCK};
use super::super::reduce::{cube_exclusive_scan, CUBE};
use super::half::{f16_from_f32_bits, f16_to_f32_bits};
use super::{half_at, row_cube, valid_bits};
use crate::error::{KernelError, Result};
use crate::formats::{self, WeightFormat, F16_LIMIT};

/// |x| >= F16_LIMIT (or NaN) on the bits: float comparisons may assume no NaN on some
/// devices, integer ones do not.
#[cube]
fn outside_f16(x: u32, limit: u32) -> bool {
    (x & 0x7FFF_FFFFu32) >= limit
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn compress_dense_kernel<N: Size>(
    w: &Array<u32>,
    mask: &Array<u32>,
    out: &mut Array<Vector<u32, N>>,
    flags: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    mwpr: u32,
    out0: u32,
    limit: u32,
    slot: u32,
) {
    let gpr = (cols + 7u32) / 8u32;
    let i = ABSOLUTE_POS as u32;
    if i < rows * gpr {
        let r = i / gpr;
        let g = i % gpr;
        // 8 columns never straddle a mask word.
        let pruned = mask[(r * mwpr + g / 4u32) as usize] >> ((g % 4u32) * 8u32);
        let mut v = Vector::<u32, N>::new(0u32);
        #[unroll]
        for e in 0..4u32 {
            let mut word = 0u32;
            #[unroll]
            for hf in 0..2u32 {
                let j = e * 2u32 + hf;
                let c = g * 8u32 + j;
                if c < cols && ((pruned >> j) & 1u32) == 0u32 {
                    let idx = r * cols + c;
                    let x = w[idx as usize];
                    if outside_f16(x, limit) {
                        flags[slot as usize].fetch_min(idx);
                    }
                    word |= f16_from_f32_bits(x) << (16u32 * hf);
                }
            }
            v[e as usize] = word;
        }
        out[(out0 + i) as usize] = v;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn compress_two_four_kernel<N: Size>(
    w: &Array<u32>,
    mask: &Array<u32>,
    vals: &mut Array<Vector<u32, N>>,
    codes: &mut Array<u32>,
    flags: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    row0: u32,
    limit: u32,
    slot: u32,
) {
    let units = (cols + 31u32) / 32u32;
    let i = ABSOLUTE_POS as u32;
    if i < rows * units {
        let r = i / units;
        let u = i % units;
        let pruned_word = mask[(r * units + u) as usize];
        let groups = cols / 4u32;
        let mut code_word = 0u32;
        let mut hs = Array::<u32>::new(4usize);
        let mut v0 = Vector::<u32, N>::new(0u32);
        let mut v1 = Vector::<u32, N>::new(0u32);
        #[unroll]
        for g in 0..8u32 {
            let col = u * 32u32 + g * 4u32;
            let mut word = 0u32;
            let mut code = 0u32;
            // cols is a multiple of 4: a group is wholly inside the row or wholly padding.
            if col < cols {
                let pruned = (pruned_word >> (g * 4u32)) & 0xFu32;
                #[unroll]
                for q in 0..4u32 {
                    let mut h = 0u32;
                    if ((pruned >> q) & 1u32) == 0u32 {
                        let idx = r * cols + col + q;
                        let x = w[idx as usize];
                        if outside_f16(x, limit) {
                            flags[slot as usize].fetch_min(idx);
                        }
                        h = f16_from_f32_bits(x);
                    }
                    hs[q as usize] = h;
                }
                if u32::count_ones(pruned) < 2u32 {
                    flags[(slot + 1u32) as usize].fetch_min(r * groups + u * 8u32 + g);
                }
                // PyTorch's Boolean formulas (formats::two_four_indices) on the pruned flags.
                let p0 = pruned & 1u32;
                let p1 = (pruned >> 1u32) & 1u32;
                let p2 = (pruned >> 2u32) & 1u32;
                let bit0 = p0 & (1u32 - p1);
                let bit1 = p0 & p1;
                let bit2 = bit1 | p2;
                let bit3 = bit0 | p1 | (1u32 - p2);
                let i0 = bit0 | (bit1 << 1u32);
                let i1 = bit2 | (bit3 << 1u32);
                word = hs[i0 as usize] | (hs[i1 as usize] << 16u32);
                code = i0 | (i1 << 2u32);
            }
            code_word |= code << (g * 4u32);
            if comptime![g < 4] {
                v0[comptime![(g % 4) as usize]] = word;
            } else {
                v1[comptime![(g % 4) as usize]] = word;
            }
        }
        let gr = row0 + r;
        let out = gr * units * 2u32 + u * 2u32;
        vals[out as usize] = v0;
        vals[(out + 1u32) as usize] = v1;
        codes[(gr * units + u) as usize] = code_word;
    }
}

/// One cube per row: the kept bits of every unit, the value check, the row's kept count.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn bitmap_bits_kernel(
    w: &Array<u32>,
    mask: &Array<u32>,
    meta: &mut Array<u32>,
    counts: &mut Array<u32>,
    flags: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    row0: u32,
    limit: u32,
    slot: u32,
) {
    let mut sh = SharedMemory::<u32>::new(CUBE as usize);
    let r = row_cube();
    if r < rows {
        let units = (cols + 31u32) / 32u32;
        let rounds = (units + CUBE - 1u32) / CUBE;
        let mut total = 0u32;
        for round in 0..rounds {
            let u = round * CUBE + UNIT_POS;
            let mut bits = 0u32;
            if u < units {
                bits = !mask[(r * units + u) as usize] & valid_bits(u, cols);
                meta[((row0 + r) * units + u) as usize] = bits;
                let mut rest = bits;
                while rest != 0u32 {
                    let b = u32::trailing_zeros(rest);
                    rest &= rest - 1u32;
                    let idx = r * cols + u * 32u32 + b;
                    if outside_f16(w[idx as usize], limit) {
                        flags[slot as usize].fetch_min(idx);
                    }
                }
            }
            let (_, t) = cube_exclusive_scan(u32::count_ones(bits), &mut sh);
            total += t;
        }
        if UNIT_POS == 0u32 {
            counts[(row0 + r) as usize] = total;
        }
    }
}

/// One cube: offsets = the exclusive scan of the row counts, offsets[rows] the kept total,
/// which also goes to the flag buffer's last slot for the host.
#[cube(launch_unchecked)]
fn bitmap_offsets_kernel(
    counts: &Array<u32>,
    offsets: &mut Array<u32>,
    flags: &mut Array<Atomic<u32>>,
    rows: u32,
    total_slot: u32,
) {
    let mut sh = SharedMemory::<u32>::new(CUBE as usize);
    // Each thread sums a contiguous run of rows, so the scan is of 256 partial sums.
    let per = (rows + CUBE - 1u32) / CUBE;
    let lo = UNIT_POS * per;
    let mut hi = lo + per;
    if hi > rows {
        hi = rows;
    }
    let mut s = 0u32;
    let mut i = lo;
    while i < hi {
        s += counts[i as usize];
        i += 1u32;
    }
    let (ex, total) = cube_exclusive_scan(s, &mut sh);
    let mut run = ex;
    i = lo;
    while i < hi {
        offsets[i as usize] = run;
        run += counts[i as usize];
        i += 1u32;
    }
    if UNIT_POS == 0u32 {
        offsets[rows as usize] = total;
        flags[total_slot as usize].store(total);
    }
}

/// One cube per row: each thread's unit gets its first value index from a prefix sum of the
/// units' counts and writes its values. A word whose two halves come from two threads (a
/// unit's first or last value at an odd or even index) is or-ed in atomically; the others
/// are stored whole.
#[cube(launch_unchecked)]
fn bitmap_values_kernel(
    w: &Array<u32>,
    meta: &Array<u32>,
    offsets: &Array<u32>,
    vals: &mut Array<Atomic<u32>>,
    rows: u32,
    cols: u32,
    row0: u32,
) {
    let mut sh = SharedMemory::<u32>::new(CUBE as usize);
    let r = row_cube();
    if r < rows {
        let gr = row0 + r;
        let units = (cols + 31u32) / 32u32;
        let rounds = (units + CUBE - 1u32) / CUBE;
        let mut k0 = offsets[gr as usize];
        for round in 0..rounds {
            let u = round * CUBE + UNIT_POS;
            let mut bits = 0u32;
            if u < units {
                bits = meta[(gr * units + u) as usize];
            }
            let (ex, total) = cube_exclusive_scan(u32::count_ones(bits), &mut sh);
            let mut k = k0 + ex;
            let mut first = true;
            let mut cur = 0u32;
            let mut rest = bits;
            while rest != 0u32 {
                let b = u32::trailing_zeros(rest);
                rest &= rest - 1u32;
                let h = f16_from_f32_bits(w[(r * cols + u * 32u32 + b) as usize]);
                let wi = (k >> 1u32) as usize;
                if (k & 1u32) == 0u32 {
                    cur = h;
                    if rest == 0u32 {
                        vals[wi].fetch_or(h);
                    }
                } else if first {
                    vals[wi].fetch_or(h << 16u32);
                } else {
                    vals[wi].store(cur | (h << 16u32));
                }
                first = false;
                k += 1u32;
            }
            k0 += total;
        }
    }
}

#[cube(launch_unchecked)]
fn decompress_dense_kernel<N: Size>(
    vals: &Array<Vector<u32, N>>,
    out: &mut Array<u32>,
    rows: u32,
    cols: u32,
    row0: u32,
) {
    let gpr = (cols + 7u32) / 8u32;
    let i = ABSOLUTE_POS as u32;
    if i < rows * gpr {
        let r = i / gpr;
        let g = i % gpr;
        let v = vals[((row0 + r) * gpr + g) as usize];
        #[unroll]
        for e in 0..4u32 {
            #[unroll]
            for hf in 0..2u32 {
                let c = g * 8u32 + e * 2u32 + hf;
                if c < cols {
                    let h = (v[e as usize] >> (16u32 * hf)) & 0xFFFFu32;
                    out[(r * cols + c) as usize] = f16_to_f32_bits(h);
                }
            }
        }
    }
}

#[cube(launch_unchecked)]
fn decompress_two_four_kernel(
    vals: &Array<u32>,
    codes: &Array<u32>,
    out: &mut Array<u32>,
    rows: u32,
    cols: u32,
    row0: u32,
) {
    let groups = cols / 4u32;
    let units = (cols + 31u32) / 32u32;
    let i = ABSOLUTE_POS as u32;
    if i < rows * groups {
        let r = i / groups;
        let g = i % groups;
        let gr = row0 + r;
        let code = (codes[(gr * units + g / 8u32) as usize] >> ((g % 8u32) * 4u32)) & 0xFu32;
        let word = vals[(gr * units * 8u32 + g) as usize];
        let i0 = code & 3u32;
        let i1 = code >> 2u32;
        let lo = f16_to_f32_bits(word & 0xFFFFu32);
        let hi = f16_to_f32_bits(word >> 16u32);
        #[unroll]
        for q in 0..4u32 {
            // The second value wins where a code names one slot twice, as in the reference.
            let mut o = 0u32;
            if q == i0 {
                o = lo;
            }
            if q == i1 {
                o = hi;
            }
            out[(r * cols + g * 4u32 + q) as usize] = o;
        }
    }
}

#[cube(launch_unchecked)]
fn decompress_bitmap_kernel(
    vals: &Array<u32>,
    meta: &Array<u32>,
    offsets: &Array<u32>,
    out: &mut Array<u32>,
    rows: u32,
    cols: u32,
    row0: u32,
) {
    let mut sh = SharedMemory::<u32>::new(CUBE as usize);
    let r = row_cube();
    if r < rows {
        let gr = row0 + r;
        let units = (cols + 31u32) / 32u32;
        let rounds = (units + CUBE - 1u32) / CUBE;
        let mut k0 = offsets[gr as usize];
        for round in 0..rounds {
            let u = round * CUBE + UNIT_POS;
            let mut bits = 0u32;
            if u < units {
                bits = meta[(gr * units + u) as usize] & valid_bits(u, cols);
            }
            let (ex, total) = cube_exclusive_scan(u32::count_ones(bits), &mut sh);
            if u < units {
                let mut k = k0 + ex;
                for b in 0..32u32 {
                    let c = u * 32u32 + b;
                    if c < cols {
                        let mut o = 0u32;
                        if ((bits >> b) & 1u32) == 1u32 {
                            o = f16_to_f32_bits(half_at(vals, k));
                            k += 1u32;
                        }
                        out[(r * cols + c) as usize] = o;
                    }
                }
            }
            k0 += total;
        }
    }
}

/// Flag slots: 2s the first value outside f16 in slab s, 2s + 1 its first group keeping more
/// than 2 of 4 (both as local indices), and a last one for the bitmap's kept count.
struct Flags {
    words: Vec<u32>,
}

impl Flags {
    /// The reference's error for the first bad input: any value error before any 2:4 one.
    fn error(&self, w: &CubeTensor) -> Option<KernelError> {
        let slabs = w.handles.len();
        let cols = w.cols;
        for s in 0..slabs {
            let i = self.words[2 * s];
            if i != u32::MAX {
                let r0 = w.slabs.range(s).0;
                let i = i as usize;
                return Some(formats::outside_f16(r0 + i / cols, i % cols));
            }
        }
        let groups = cols / 4;
        for s in 0..slabs {
            let i = self.words[2 * s + 1];
            if i != u32::MAX {
                let r0 = w.slabs.range(s).0;
                let i = i as usize;
                return Some(formats::not_two_four(r0 + i / groups, i % groups));
            }
        }
        None
    }
}

/// An empty array (dense has no metadata, only bitmaps have offsets).
fn none<R: Runtime>(b: &CubeBackend<R>) -> Result<Words> {
    Ok(Words {
        handle: b.scratch(1)?,
        len: 0,
    })
}

/// One compression on CubeCL: W and its mask, the slabs that hold rows, and the flags where
/// the kernels report the first value f16 cannot hold and the first group that is not 2:4
/// (two words per slab, then the bitmap's kept total).
struct PackJob<'a, R: Runtime> {
    b: &'a CubeBackend<R>,
    w: &'a CubeTensor,
    mask: &'a CubeMask,
    flags: cubecl::server::Handle,
    nflags: usize,
    total_slot: usize,
    parts: Vec<(usize, (usize, usize))>,
    limit: u32,
}

impl<R: Runtime> PackJob<'_, R> {
    /// One vec4 of eight f16 per 8 columns.
    fn dense(&self, p: &mut CubePacked) -> Result<()> {
        let (b, w, mask, flags, nflags) = (self.b, self.w, self.mask, &self.flags, self.nflags);
        let (rows, cols, limit) = (w.rows, w.cols, self.limit);
        let parts = &self.parts;
        let gpr = cols.div_ceil(8);
        p.values = b.alloc_words("dense f16 values", rows * gpr * 4)?;
        for &(s, (r0, n)) in parts {
            // SAFETY: one thread per 8 columns of the slab's rows; reads its row of W and
            // mask word, writes its vec4 at the slab's rows of the output.
            unsafe {
                compress_dense_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.grid(n * gpr, BLOCK),
                    CubeDim::new_1d(BLOCK),
                    4,
                    arg(&w.handles[s], w.slab_len(s)),
                    arg(&mask.handles[s], mask.slab_len(s)),
                    arg(&p.values.handle, p.values.len),
                    arg(flags, nflags),
                    n as u32,
                    cols as u32,
                    mask.words_per_row() as u32,
                    (r0 * gpr) as u32,
                    limit,
                    (2 * s) as u32,
                );
            }
        }
        Ok(())
    }

    /// Eight value words and one code word per 32-column unit.
    fn two_four(&self, p: &mut CubePacked) -> Result<()> {
        let (b, w, mask, flags, nflags) = (self.b, self.w, self.mask, &self.flags, self.nflags);
        let (rows, cols, limit) = (w.rows, w.cols, self.limit);
        let units = formats::bitmap_words_per_row(cols);
        let parts = &self.parts;
        p.values = b.alloc_words(
            "2:4 values",
            rows * formats::two_four_value_words_per_row(cols),
        )?;
        p.meta = b.alloc_words(
            "2:4 codes",
            rows * formats::two_four_code_words_per_row(cols),
        )?;
        for &(s, (r0, n)) in parts {
            // SAFETY: one thread per 32-column unit of the slab's rows; it writes that
            // unit's 8 value words and its code word.
            unsafe {
                compress_two_four_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.grid(n * units, BLOCK),
                    CubeDim::new_1d(BLOCK),
                    4,
                    arg(&w.handles[s], w.slab_len(s)),
                    arg(&mask.handles[s], mask.slab_len(s)),
                    arg(&p.values.handle, p.values.len),
                    arg(&p.meta.handle, p.meta.len),
                    arg(flags, nflags),
                    n as u32,
                    cols as u32,
                    r0 as u32,
                    limit,
                    (2 * s) as u32,
                );
            }
        }
        Ok(())
    }

    /// The bitmap's bits, per-row counts and their scan into offsets.
    fn bitmap_bits(&self, p: &mut CubePacked) -> Result<()> {
        let (b, w, mask, flags, nflags) = (self.b, self.w, self.mask, &self.flags, self.nflags);
        let (rows, cols, limit, total_slot) = (w.rows, w.cols, self.limit, self.total_slot);
        let units = formats::bitmap_words_per_row(cols);
        let parts = &self.parts;
        p.meta = b.alloc_words("bitmap bits", rows * units)?;
        p.offsets = b.alloc_words("bitmap offsets", rows + 1)?;
        let counts = b.scratch(rows)?;
        for &(s, (r0, n)) in parts {
            // SAFETY: one cube per row of the slab; it writes the row's bit words and
            // count.
            unsafe {
                bitmap_bits_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.row_grid(n),
                    CubeDim::new_1d(CUBE),
                    arg(&w.handles[s], w.slab_len(s)),
                    arg(&mask.handles[s], mask.slab_len(s)),
                    arg(&p.meta.handle, p.meta.len),
                    arg(&counts, rows),
                    arg(flags, nflags),
                    n as u32,
                    cols as u32,
                    r0 as u32,
                    limit,
                    (2 * s) as u32,
                );
            }
        }
        // SAFETY: one cube reads the rows' counts and writes the rows + 1 offsets.
        unsafe {
            bitmap_offsets_kernel::launch_unchecked::<R>(
                &b.client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(CUBE),
                arg(&counts, rows),
                arg(&p.offsets.handle, p.offsets.len),
                arg(flags, nflags),
                rows as u32,
                total_slot as u32,
            );
        }
        Ok(())
    }

    /// The bitmap's values, once the flags' kept total has been read back.
    fn bitmap_values(&self, p: &mut CubePacked, f: &Flags) -> Result<()> {
        let (b, w, total_slot) = (self.b, self.w, self.total_slot);
        let (rows, cols) = w.shape();
        let parts = &self.parts;
        let kept = (f.words[total_slot] as usize).min(rows * cols);
        p.values = b.alloc_words("bitmap values", formats::bitmap_value_words(kept))?;
        // Values are or-ed in, and the padding stays zero.
        fill_u32(b, &p.values.handle, p.values.len, 0);
        for &(s, (r0, n)) in parts {
            // SAFETY: one cube per row of the slab; its values go to the halves
            // offsets[r]..offsets[r + 1], inside the buffer sized from the total.
            unsafe {
                bitmap_values_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.row_grid(n),
                    CubeDim::new_1d(CUBE),
                    arg(&w.handles[s], w.slab_len(s)),
                    arg(&p.meta.handle, p.meta.len),
                    arg(&p.offsets.handle, p.offsets.len),
                    arg(&p.values.handle, p.values.len),
                    n as u32,
                    cols as u32,
                    r0 as u32,
                );
            }
        }
        Ok(())
    }
}

pub fn compress<R: Runtime>(
    b: &CubeBackend<R>,
    w: &CubeTensor,
    mask: &CubeMask,
    format: WeightFormat,
) -> Result<CubePacked> {
    formats::check_compress(w.shape(), (mask.rows, mask.cols), format)?;
    same_slabs("mask vs W", &w.slabs, &mask.slabs)?;
    let (rows, cols) = w.shape();
    if rows as u64 * cols as u64 > u32::MAX as u64 {
        return Err(KernelError::Unsupported(format!(
            "a {rows}x{cols} weight has more entries than 32-bit value indices address"
        )));
    }
    let slabs = w.handles.len();
    let nflags = 2 * slabs + 1;
    let job = PackJob {
        b,
        w,
        mask,
        flags: b.scratch_from(&vec![u32::MAX; nflags])?,
        nflags,
        total_slot: 2 * slabs,
        parts: (0..slabs)
            .map(|s| (s, w.slabs.range(s)))
            .filter(|&(_, (_, n))| n > 0)
            .collect(),
        limit: F16_LIMIT.to_bits(),
    };
    let mut p = CubePacked {
        format,
        rows,
        cols,
        values: none(b)?,
        meta: none(b)?,
        offsets: none(b)?,
    };
    match format {
        WeightFormat::Dense => job.dense(&mut p)?,
        WeightFormat::TwoFour => job.two_four(&mut p)?,
        WeightFormat::Bitmap => job.bitmap_bits(&mut p)?,
    }
    let f = Flags {
        words: b.read_u32(&job.flags, nflags)?,
    };
    if let Some(e) = f.error(w) {
        return Err(e);
    }
    if format == WeightFormat::Bitmap {
        job.bitmap_values(&mut p, &f)?;
    }
    Ok(p)
}

pub fn decompress<R: Runtime>(b: &CubeBackend<R>, p: &CubePacked) -> Result<CubeTensor> {
    let (rows, cols) = p.shape();
    let out = b.alloc_tensor(rows, cols)?;
    for s in 0..out.handles.len() {
        let (r0, n) = out.slabs.range(s);
        if n == 0 || cols == 0 {
            continue;
        }
        let o = arg(&out.handles[s], out.slab_len(s));
        let (vals, meta, offs) = (
            arg(&p.values.handle, p.values.len),
            arg(&p.meta.handle, p.meta.len),
            arg(&p.offsets.handle, p.offsets.len),
        );
        // SAFETY: every thread writes entries of the slab's rows it owns and reads the packed
        // rows r0.. of buffers whose sizes were checked against the layout.
        unsafe {
            match p.format {
                WeightFormat::Dense => decompress_dense_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.grid(n * cols.div_ceil(8), BLOCK),
                    CubeDim::new_1d(BLOCK),
                    4,
                    vals,
                    o,
                    n as u32,
                    cols as u32,
                    r0 as u32,
                ),
                WeightFormat::TwoFour => decompress_two_four_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.grid(n * (cols / 4), BLOCK),
                    CubeDim::new_1d(BLOCK),
                    vals,
                    meta,
                    o,
                    n as u32,
                    cols as u32,
                    r0 as u32,
                ),
                WeightFormat::Bitmap => decompress_bitmap_kernel::launch_unchecked::<R>(
                    &b.client,
                    b.row_grid(n),
                    CubeDim::new_1d(CUBE),
                    vals,
                    meta,
                    offs,
                    o,
                    n as u32,
                    cols as u32,
                    r0 as u32,
                ),
            }
        }
    }
    Ok(out)
}
