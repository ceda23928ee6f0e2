//! The compressed weight formats of §13 on the device: compression (sparse_pack.wgsl),
//! decompression and the product Y = X·Wᵀ (sparse_matmul.wgsl), in the layouts of
//! `formats`, so a downloaded weight equals the reference's word for word.

use bytemuck::{Pod, Zeroable};

use crate::error::{KernelError, Result};
use crate::formats::{self, PackedWeight, WeightFormat};
use crate::plan::{self, groups::DEFAULT_FILL};
use crate::tensor::Mask;

use super::exec::{grid, Ctx, Module, Slot, Win, TOKEN_BLOCKS};
use super::mem::{WgpuMask, WgpuTensor};

/// A compressed weight on the device, in the layout of [`PackedWeight`].
#[derive(Debug)]
pub struct WgpuPacked {
    pub(crate) format: WeightFormat,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) values: wgpu::Buffer,
    pub(crate) value_words: usize,
    /// 2:4 codes or bitmap kept-bits.
    pub(crate) meta: Option<wgpu::Buffer>,
    /// Bitmap row offsets.
    pub(crate) offsets: Option<wgpu::Buffer>,
    /// The bitmap row offsets on the host too: they place each row slab's window of values.
    pub(crate) host_offsets: Vec<u32>,
}

impl WgpuPacked {
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// Value and code/bit words per row (bitmap values are not per row: 0).
fn row_words(format: WeightFormat, cols: usize) -> (usize, usize) {
    match format {
        WeightFormat::Dense => (formats::dense_words_per_row(cols), 0),
        WeightFormat::TwoFour => (
            formats::two_four_value_words_per_row(cols),
            formats::two_four_code_words_per_row(cols),
        ),
        WeightFormat::Bitmap => (0, formats::bitmap_words_per_row(cols)),
    }
}

/// The most words a row occupies in any one buffer of the format (a bitmap row may keep all).
fn max_row_words(format: WeightFormat, cols: usize) -> usize {
    let (v, m) = row_words(format, cols);
    let bitmap_values = if format == WeightFormat::Bitmap {
        cols.div_ceil(2) + 1
    } else {
        0
    };
    v.max(m).max(bitmap_values).max(1)
}

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct PackParams {
    rows: u32,
    cols: u32,
    row0: u32,
    w_base: u32,
    m_base: u32,
    mwpr: u32,
    v_base: u32,
    vpr: u32,
    c_base: u32,
    cpr: u32,
    nrows: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct ReadParams {
    rows: u32,
    cols: u32,
    ntok: u32,
    x_base: u32,
    y_base: u32,
    ldy: u32,
    v_base: u32,
    vpr: u32,
    c_base: u32,
    cpr: u32,
    row0: u32,
    per_part: u32,
    part_len: u32,
}

/// Weight rows per product workgroup (sparse_matmul.wgsl's RPW).
const MATMUL_ROWS: usize = 16;

/// X values a blocked product workgroup stages per chunk (sparse_matmul.wgsl's 2048): the
/// chunk is this many over the token block columns.
const DECODE_STAGE: usize = 2048;

/// Columns per chunk of the tiled kernels (sparse_matmul.wgsl's KC).
const TILE_CHUNK: usize = 32;

const NONE: u32 = u32::MAX;

/// The product's token block for N tokens: the smallest variant holding them, at most 8.
fn token_block(n: usize) -> u32 {
    TOKEN_BLOCKS
        .iter()
        .copied()
        .find(|&t| t as usize >= n)
        .unwrap_or(TOKEN_BLOCKS[TOKEN_BLOCKS.len() - 1])
}

/// One compression on wgpu: W and its mask, cut into slabs of rows that every packed
/// buffer's window holds, and the flags where the kernels report the first value f16 cannot
/// hold and the first group that is not 2:4.
struct PackJob<'a> {
    ctx: &'a Ctx,
    w: &'a WgpuTensor,
    mask: &'a WgpuMask,
    format: WeightFormat,
    /// Values and metadata words per row, mask words per row.
    vpr: usize,
    cpr: usize,
    mwpr: usize,
    slabs: Vec<(usize, usize)>,
    flags: wgpu::Buffer,
}

impl<'a> PackJob<'a> {
    /// Windows of W and the mask over rows [r0, r1), and the parameters they give.
    fn base(&self, r0: usize, r1: usize) -> Result<(Win<'a>, Win<'a>, PackParams)> {
        let (ctx, cols, mwpr) = (self.ctx, self.w.cols, self.mwpr);
        let ww = ctx.rows_win(&self.w.buf, cols, r0, r1)?;
        let mw = ctx.rows_win(&self.mask.buf, mwpr, r0, r1)?;
        let p = PackParams {
            rows: (r1 - r0) as u32,
            cols: cols as u32,
            row0: r0 as u32,
            w_base: ww.base((r0 * cols) as u64),
            m_base: mw.base((r0 * mwpr) as u64),
            mwpr: mwpr as u32,
            vpr: self.vpr as u32,
            cpr: self.cpr as u32,
            nrows: self.w.rows as u32,
            ..Default::default()
        };
        Ok((ww, mw, p))
    }

    /// Dense and 2:4: fixed words per row, one pass.
    fn fixed(&self) -> Result<WgpuPacked> {
        let (ctx, format, rows) = (self.ctx, self.format, self.w.rows);
        let (vpr, cpr) = (self.vpr, self.cpr);
        let values = ctx.scratch("packed values", rows * vpr)?;
        let meta = match format {
            WeightFormat::TwoFour => Some(ctx.scratch("2:4 codes", rows * cpr)?),
            _ => None,
        };
        let entry = match format {
            WeightFormat::Dense => "pack_dense",
            _ => "pack_two_four",
        };
        let flags_w = ctx.whole(&self.flags, 4)?;
        let mut b = ctx.batch();
        for &(r0, r1) in &self.slabs {
            let (ww, mw, mut p) = self.base(r0, r1)?;
            let vw = ctx.rows_win(&values, vpr, r0, r1)?;
            p.v_base = vw.base((r0 * vpr) as u64);
            let cw = match &meta {
                Some(m) => {
                    let cw = ctx.rows_win(m, cpr, r0, r1)?;
                    p.c_base = cw.base((r0 * cpr) as u64);
                    Slot::Win(cw)
                }
                None => Slot::Unused,
            };
            let slots = [
                Slot::Win(ww),
                Slot::Win(mw),
                Slot::Win(vw),
                Slot::Unused,
                cw,
                Slot::Unused,
                Slot::Win(flags_w),
            ];
            let groups = [vpr.div_ceil(256) as u32, (r1 - r0) as u32, 1];
            b.dispatch(
                Module::SparsePack,
                entry,
                bytemuck::bytes_of(&p),
                &slots,
                groups,
            )?;
        }
        b.submit()?;
        Ok(WgpuPacked {
            format,
            rows,
            cols: self.w.cols,
            values,
            value_words: rows * vpr,
            meta,
            offsets: None,
            host_offsets: Vec::new(),
        })
    }

    /// Bitmap: the bits and per-row counts, their scan into offsets (read back: the kept count
    /// sizes the values, the offsets place each slab's window), then the values scattered.
    fn bitmap(&self) -> Result<WgpuPacked> {
        let (ctx, rows, cpr) = (self.ctx, self.w.rows, self.cpr);
        let maxg = ctx.max_groups();
        let bits = ctx.scratch("bitmap bits", rows * cpr)?;
        let offsets = ctx.scratch("bitmap offsets", rows + 1)?;
        let offs_w = ctx.whole(&offsets, rows + 1)?;
        let mut b = ctx.batch();
        for &(r0, r1) in &self.slabs {
            let (_, mw, mut p) = self.base(r0, r1)?;
            let bw = ctx.rows_win(&bits, cpr, r0, r1)?;
            p.c_base = bw.base((r0 * cpr) as u64);
            let slots = [
                Slot::Unused,
                Slot::Win(mw),
                Slot::Unused,
                Slot::Unused,
                Slot::Win(bw),
                Slot::Win(offs_w),
                Slot::Unused,
            ];
            let groups = grid((r1 - r0) as u64, maxg);
            b.dispatch(
                Module::SparsePack,
                "bitmap_bits",
                bytemuck::bytes_of(&p),
                &slots,
                groups,
            )?;
        }
        let p = PackParams {
            nrows: rows as u32,
            ..Default::default()
        };
        let mut slots = [Slot::Unused; 7];
        slots[5] = Slot::Win(offs_w);
        b.dispatch(
            Module::SparsePack,
            "bitmap_scan",
            bytemuck::bytes_of(&p),
            &slots,
            [1, 1, 1],
        )?;
        b.submit()?;
        let host_offsets = ctx.read_words(&offsets, rows + 1)?;
        let value_words = formats::bitmap_value_words(host_offsets[rows] as usize);
        let values = ctx.scratch("bitmap values", value_words)?;
        let flags_w = ctx.whole(&self.flags, 4)?;
        let mut b = ctx.batch();
        // Words shared by two threads are or-ed together.
        b.clear(&values);
        for &(r0, r1) in &self.slabs {
            let (ww, _, mut p) = self.base(r0, r1)?;
            let vw = ctx.bitmap_values_win(&values, &host_offsets, r0, r1)?;
            p.v_base = vw.base(0);
            let bw = ctx.rows_win(&bits, cpr, r0, r1)?;
            p.c_base = bw.base((r0 * cpr) as u64);
            let slots = [
                Slot::Win(ww),
                Slot::Unused,
                Slot::Unused,
                Slot::Win(vw),
                Slot::Win(bw),
                Slot::Win(offs_w),
                Slot::Win(flags_w),
            ];
            let groups = grid((r1 - r0) as u64, maxg);
            let params = bytemuck::bytes_of(&p);
            b.dispatch(Module::SparsePack, "bitmap_scatter", params, &slots, groups)?;
        }
        b.submit()?;
        Ok(WgpuPacked {
            format: self.format,
            rows,
            cols: self.w.cols,
            values,
            value_words,
            meta: Some(bits),
            offsets: Some(offsets),
            host_offsets,
        })
    }

    /// The kernels' reports as the reference's errors: it reports the first bad value before
    /// any 2:4 group.
    fn check_flags(&self) -> Result<()> {
        let cols = self.w.cols;
        let f = self.ctx.read_words(&self.flags, 2)?;
        if f[0] != NONE {
            let i = f[0] as usize;
            return Err(formats::outside_f16(i / cols, i % cols));
        }
        if f[1] != NONE {
            let i = f[1] as usize;
            return Err(formats::not_two_four(i / (cols / 4), i % (cols / 4)));
        }
        Ok(())
    }
}

impl Ctx {
    pub(crate) fn compress(
        &self,
        w: &WgpuTensor,
        mask: &WgpuMask,
        format: WeightFormat,
    ) -> Result<WgpuPacked> {
        formats::check_compress((w.rows, w.cols), (mask.rows, mask.cols), format)?;
        let (rows, cols) = (w.rows, w.cols);
        let (vpr, cpr) = row_words(format, cols);
        let width = cols.max(max_row_words(format, cols));
        let job = PackJob {
            ctx: self,
            w,
            mask,
            format,
            vpr,
            cpr,
            mwpr: Mask::words_per_row(cols),
            slabs: self.row_slabs(rows, width, 1, self.max_groups() as usize)?,
            flags: self.upload_words("compression flags", &[NONE; 4])?,
        };
        let packed = match format {
            WeightFormat::Dense | WeightFormat::TwoFour => job.fixed()?,
            WeightFormat::Bitmap => job.bitmap()?,
        };
        job.check_flags()?;
        Ok(packed)
    }

    /// The window of bitmap values holding rows [r0, r1).
    fn bitmap_values_win<'a>(
        &self,
        values: &'a wgpu::Buffer,
        offsets: &[u32],
        r0: usize,
        r1: usize,
    ) -> Result<Win<'a>> {
        let (k0, k1) = (offsets[r0] as u64, offsets[r1] as u64);
        self.win(values, k0 / 2, k1.div_ceil(2))
    }

    /// Windows of the packed buffers over rows [r0, r1), with their bases set in `p`.
    fn packed_slots<'a>(
        &self,
        w: &'a WgpuPacked,
        r0: usize,
        r1: usize,
        p: &mut ReadParams,
    ) -> Result<[Slot<'a>; 4]> {
        let (vpr, cpr) = row_words(w.format, w.cols);
        p.rows = (r1 - r0) as u32;
        p.cols = w.cols as u32;
        p.vpr = vpr as u32;
        p.cpr = cpr as u32;
        p.row0 = r0 as u32;
        let vw = match w.format {
            WeightFormat::Bitmap => {
                let vw = self.bitmap_values_win(&w.values, &w.host_offsets, r0, r1)?;
                p.v_base = vw.base(0);
                vw
            }
            _ => {
                let vw = self.rows_win(&w.values, vpr, r0, r1)?;
                p.v_base = vw.base((r0 * vpr) as u64);
                vw
            }
        };
        let meta = match &w.meta {
            Some(m) => {
                let cw = self.rows_win(m, cpr, r0, r1)?;
                p.c_base = cw.base((r0 * cpr) as u64);
                Slot::Win(cw)
            }
            None => Slot::Unused,
        };
        let offsets = match &w.offsets {
            Some(o) => Slot::Win(self.whole(o, w.rows + 1)?),
            None => Slot::Unused,
        };
        // Dense and 2:4 read their values as vec4s, the bitmap's (unaligned rows) as words.
        let (v4, v1) = match w.format {
            WeightFormat::Bitmap => (Slot::Unused, Slot::Win(vw)),
            _ => (Slot::Win(vw), Slot::Win(vw)),
        };
        Ok([v4, v1, meta, offsets])
    }

    pub(crate) fn decompress(&self, w: &WgpuPacked) -> Result<WgpuTensor> {
        let (rows, cols) = (w.rows, w.cols);
        let out = self.tensor("decompressed weight", rows, cols)?;
        let per_row = cols.max(max_row_words(w.format, cols));
        let maxg = self.max_groups();
        let mut b = self.batch();
        for (r0, r1) in self.row_slabs(rows, per_row, 1, self.max_groups() as usize)? {
            let mut p = ReadParams {
                ldy: cols as u32,
                ..Default::default()
            };
            let [_, v1, meta, offsets] = self.packed_slots(w, r0, r1, &mut p)?;
            let ow = self.rows_win(&out.buf, cols, r0, r1)?;
            p.y_base = ow.base((r0 * cols) as u64);
            let (entry, groups) = match w.format {
                WeightFormat::Dense => ("unpack_dense", [cols.div_ceil(256) as u32, p.rows, 1]),
                WeightFormat::TwoFour => {
                    ("unpack_two_four", [cols.div_ceil(256) as u32, p.rows, 1])
                }
                WeightFormat::Bitmap => ("unpack_bitmap", grid((r1 - r0) as u64, maxg)),
            };
            b.dispatch(
                Module::SparseMatmul(8),
                entry,
                bytemuck::bytes_of(&p),
                &[Slot::Unused, Slot::Unused, v1, meta, offsets, Slot::Win(ow)],
                groups,
            )?;
        }
        b.submit()?;
        Ok(out)
    }

    pub(crate) fn sparse_matmul(&self, x: &WgpuTensor, w: &WgpuPacked) -> Result<WgpuTensor> {
        formats::check_matmul((x.rows, x.cols), (w.rows, w.cols))?;
        let (n, rows, cols) = (x.rows, w.rows, w.cols);
        let tiled = plan::sparse_tiled(n);
        // Tokens and weight rows per workgroup, and the module.
        let (tb, wg_rows, module) = if tiled {
            // The tiled kernels are in every token-block variant of the module.
            let variant = TOKEN_BLOCKS[TOKEN_BLOCKS.len() - 1];
            (
                plan::SPARSE_TILE_TOKENS,
                plan::SPARSE_TILE_ROWS,
                Module::SparseMatmul(variant),
            )
        } else {
            let tb = token_block(n);
            (tb as usize, MATMUL_ROWS, Module::SparseMatmul(tb))
        };
        let y = self.tensor("product", n, rows)?;
        let max_blocks = self.max_groups() as usize;
        // Token windows hold whole rows of X and of Y.
        let tokens = self.row_slabs(n, cols.max(rows), 1, max_blocks * tb)?;
        let weights =
            self.row_slabs(rows, max_row_words(w.format, cols), 1, max_blocks * wg_rows)?;
        let entry = match (w.format, tiled) {
            (WeightFormat::Dense, false) => "matmul_dense",
            (WeightFormat::TwoFour, false) => "matmul_two_four",
            (WeightFormat::Bitmap, false) => "matmul_bitmap",
            (WeightFormat::Dense, true) => "tiled_dense",
            (WeightFormat::TwoFour, true) => "tiled_two_four",
            (WeightFormat::Bitmap, true) => "tiled_bitmap",
        };
        let mut b = self.batch();
        for &(t0, t1) in &tokens {
            let xw = self.rows_win(&x.buf, cols, t0, t1)?;
            let yw = self.rows_win(&y.buf, rows, t0, t1)?;
            for &(r0, r1) in &weights {
                let (nt, nr) = (t1 - t0, r1 - r0);
                let groups = nr.div_ceil(wg_rows) * nt.div_ceil(tb);
                let part_len = nt * nr;
                // The staged chunk: a bit or code word's 32 columns in the tiled kernels.
                let chunk = if tiled { TILE_CHUNK } else { DECODE_STAGE / tb };
                let (parts, per_part, scratch) =
                    self.column_split(groups, cols, chunk, part_len)?;
                let out = match &scratch {
                    Some(buf) => self.whole(buf, parts * part_len)?,
                    None => yw,
                };
                let mut p = ReadParams {
                    ntok: nt as u32,
                    x_base: xw.base((t0 * cols) as u64),
                    y_base: yw.base((t0 * rows + r0) as u64),
                    ldy: rows as u32,
                    per_part: per_part as u32,
                    part_len: part_len as u32,
                    ..Default::default()
                };
                if scratch.is_some() {
                    (p.y_base, p.ldy) = (0, nr as u32);
                }
                let [v4, v1, meta, offsets] = self.packed_slots(w, r0, r1, &mut p)?;
                // The blocked dense and 2:4 kernels read their values as vec4s; the tiled ones,
                // which gather single values, and the bitmap kernels as words.
                let v1 = if w.format == WeightFormat::Bitmap || tiled {
                    v1
                } else {
                    Slot::Unused
                };
                b.dispatch(
                    module,
                    entry,
                    bytemuck::bytes_of(&p),
                    &[Slot::Win(xw), v4, v1, meta, offsets, Slot::Win(out)],
                    [
                        nr.div_ceil(wg_rows) as u32,
                        nt.div_ceil(tb) as u32,
                        parts as u32,
                    ],
                )?;
                if scratch.is_some() {
                    let y_at = (yw, yw.base((t0 * rows + r0) as u64), rows);
                    self.record_sum_parts(&mut b, entry, (out, parts), y_at, (nt, nr), 0.0)?;
                }
            }
        }
        b.submit()?;
        Ok(y)
    }

    /// How a product launch of `groups` workgroups over `cols` columns staged in chunks of
    /// `chunk` splits its columns ([`plan::column_parts`]): (parts, chunks per part, the
    /// scratch holding the parts' partial outputs of `part_len` values each). One part
    /// covering every chunk where the workgroups fill the device already or the scratch
    /// would not fit one binding.
    fn column_split(
        &self,
        groups: usize,
        cols: usize,
        chunk: usize,
        part_len: usize,
    ) -> Result<(usize, usize, Option<wgpu::Buffer>)> {
        let (parts, per_part) = plan::column_parts(groups, cols, chunk, DEFAULT_FILL);
        if parts > 1 && self.win_fits((parts * part_len) as u64) {
            let buf = self.scratch("column-split partial products", parts * part_len)?;
            return Ok((parts, per_part, Some(buf)));
        }
        Ok((1, cols.div_ceil(chunk).max(1), None))
    }

    pub(crate) fn upload_packed(&self, p: &PackedWeight) -> Result<WgpuPacked> {
        p.check_layout()?;
        if p.format == WeightFormat::Bitmap {
            check_bitmap_rows(p)?;
        }
        let optional = |what: &str, words: &[u32]| -> Result<Option<wgpu::Buffer>> {
            Ok(if words.is_empty() {
                None
            } else {
                Some(self.upload_words(what, words)?)
            })
        };
        let packed = WgpuPacked {
            format: p.format,
            rows: p.rows,
            cols: p.cols,
            values: self.upload_words("packed values", &p.values)?,
            value_words: p.values.len(),
            meta: optional("packed codes or bits", &p.meta)?,
            offsets: optional("bitmap offsets", &p.offsets)?,
            host_offsets: p.offsets.clone(),
        };
        self.check()?;
        Ok(packed)
    }

    pub(crate) fn download_packed(&self, w: &WgpuPacked) -> Result<PackedWeight> {
        let (_, cpr) = row_words(w.format, w.cols);
        let read = |b: &Option<wgpu::Buffer>, words: usize| -> Result<Vec<u32>> {
            match b {
                Some(b) => self.read_words(b, words),
                None => Ok(Vec::new()),
            }
        };
        Ok(PackedWeight {
            format: w.format,
            rows: w.rows,
            cols: w.cols,
            values: self.read_words(&w.values, w.value_words)?,
            meta: read(&w.meta, w.rows * cpr)?,
            offsets: read(&w.offsets, w.rows + 1)?,
        })
    }
}

/// Each bitmap row's bits must count the values its offsets give it (as the reference's
/// decompression checks), or a kernel would read another row's values.
fn check_bitmap_rows(p: &PackedWeight) -> Result<()> {
    let bpr = formats::bitmap_words_per_row(p.cols);
    let tail = match p.cols % 32 {
        0 => u32::MAX,
        n => (1u32 << n) - 1,
    };
    for r in 0..p.rows {
        let words = &p.meta[r * bpr..(r + 1) * bpr];
        let kept: u32 = words
            .iter()
            .enumerate()
            .map(|(i, w)| if i + 1 == bpr { w & tail } else { *w }.count_ones())
            .sum();
        let (o0, o1) = (p.offsets[r], p.offsets[r + 1]);
        if o1 < o0 || o1 - o0 != kept {
            return Err(KernelError::InvalidArgument(format!(
                "bitmap row {r}: its bits count {kept} kept values, its offsets {}",
                o1 as i64 - o0 as i64
            )));
        }
    }
    Ok(())
}
