//! Device storage of the CubeCL backend: matrices and masks split into row slabs so that no
//! binding exceeds the device's limit (128 MiB on some Vulkan drivers), and the helpers that
//! allocate, fill, upload and download them.
//!
//! The split depends only on (rows, cols) and the backend's slab limit, so every tensor or mask
//! of one shape has the same slabs: elementwise kernels pair slab i with slab i. Slab heights are
//! multiples of [`ROW_ALIGN`] so that a 64-row block of the Cholesky factorisation or of the
//! triangular inverse never straddles two slabs.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernels::fill;
use super::CubeBackend;
use crate::error::{KernelError, Result};
use crate::formats::{self, PackedWeight, WeightFormat};
use crate::tensor::{Mask, Matrix};

/// Slab heights are multiples of this (the Cholesky and triangular-inverse block size).
pub const ROW_ALIGN: usize = 64;

pub use crate::plan::{same_slabs, Slabs};

/// A device f32 matrix: row-major, split into row slabs (one handle each).
#[derive(Clone, Debug)]
pub struct CubeTensor {
    pub rows: usize,
    pub cols: usize,
    pub slabs: Slabs,
    pub handles: Vec<Handle>,
}

impl CubeTensor {
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Number of f32 in slab `s`.
    pub fn slab_len(&self, s: usize) -> usize {
        self.slabs.range(s).1 * self.cols
    }
}

/// A device bit-packed mask (layout of [`Mask`]), split like an f32 tensor of its shape so that
/// mask slab i holds exactly the rows of tensor slab i.
#[derive(Clone, Debug)]
pub struct CubeMask {
    pub rows: usize,
    pub cols: usize,
    pub slabs: Slabs,
    pub handles: Vec<Handle>,
}

impl CubeMask {
    pub fn words_per_row(&self) -> usize {
        Mask::words_per_row(self.cols)
    }

    /// Number of u32 words in slab `s`.
    pub fn slab_len(&self, s: usize) -> usize {
        self.slabs.range(s).1 * self.words_per_row()
    }
}

/// A device array of `len` u32 words (the buffer holds at least one word, so an empty array
/// still has a handle to bind).
#[derive(Clone, Debug)]
pub struct Words {
    pub handle: Handle,
    pub len: usize,
}

/// A compressed weight on the device: the buffers of [`PackedWeight`] in the same layout
/// (see [`crate::formats`]), each in one binding. `meta` is empty for dense, `offsets` for
/// all but bitmap.
#[derive(Clone, Debug)]
pub struct CubePacked {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    pub values: Words,
    pub meta: Words,
    pub offsets: Words,
}

impl CubePacked {
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// An ArrayArg over `len` scalars of `h` (CubeCL counts scalars, not vectors).
pub fn arg<R: Runtime>(h: &Handle, len: usize) -> ArrayArg<R> {
    // SAFETY: every caller passes the element count the handle was allocated with (or fewer);
    // kernels index below the lengths they are given.
    unsafe { ArrayArg::from_raw_parts(h.clone(), len.max(1)) }
}

/// The first `len` f32 (a multiple of 4 where it is read) of a handle as an argument of vectors
/// of 4, for kernels that read aligned quads of the same binding (at least one vector, so that
/// an unread binding is still valid).
pub fn arg_quads<R: Runtime>(h: &Handle, len: usize) -> ArrayArg<R> {
    // SAFETY: as `arg`: the length is what the handle holds, in vectors, rounded down.
    unsafe { ArrayArg::from_raw_parts(h.clone(), (len / 4).max(1)) }
}

/// Bytes of a `rows x cols` f32 array.
pub fn f32_bytes(rows: usize, cols: usize) -> u64 {
    rows as u64 * cols as u64 * 4
}

impl<R: Runtime> CubeBackend<R> {
    /// Refuses, before any allocation, work whose device memory exceeds what the budget has
    /// left beside the tensors already on the device.
    pub(crate) fn check_memory(&self, what: &str, needed: u64) -> Result<()> {
        if let Some(budget) = self.budget {
            let in_use = self
                .client
                .memory_usage()
                .map(|u| u.bytes_in_use)
                .unwrap_or(0);
            let available = budget.saturating_sub(in_use);
            if needed > available {
                return Err(KernelError::OutOfMemory {
                    what: what.to_string(),
                    needed,
                    available,
                });
            }
        }
        Ok(())
    }

    /// The slab partition of a `rows x cols` f32 array on this backend.
    pub(crate) fn slabs_for(&self, rows: usize, cols: usize) -> Result<Slabs> {
        Slabs::new(rows, cols, self.slab_limit, ROW_ALIGN, usize::MAX)
    }

    /// An uninitialised buffer of `n` f32 (or u32) for scratch use; at least one element. It is
    /// filled with NaN (all bits set) when output poisoning is on, so a kernel that leaves part
    /// of its output unwritten is caught.
    pub(crate) fn scratch(&self, n: usize) -> Result<Handle> {
        let bytes = n.max(1) as u64 * 4;
        if bytes > self.max_binding {
            return Err(KernelError::Unsupported(format!(
                "a scratch buffer of {bytes} bytes exceeds the device's largest binding ({} \
                 bytes)",
                self.max_binding
            )));
        }
        let h = self.client.empty(bytes as usize);
        if self.poison {
            fill::fill_u32(self, &h, n.max(1), u32::MAX);
        }
        Ok(h)
    }

    /// A scratch buffer holding `data`.
    pub(crate) fn scratch_from(&self, data: &[u32]) -> Result<Handle> {
        let bytes = (data.len().max(1) * 4) as u64;
        if bytes > self.max_binding {
            return Err(KernelError::Unsupported(format!(
                "a buffer of {bytes} bytes exceeds the device's largest binding"
            )));
        }
        Ok(self.device_copy(bytemuck::cast_slice(data)))
    }

    /// A device buffer holding `bytes` (at least one word); on a runtime that runs no kernel,
    /// one above `data_kept_up_to` gets its size alone: copying model-sized inputs would be
    /// nearly all of such a run.
    fn device_copy(&self, bytes: &[u8]) -> Handle {
        if bytes.is_empty() {
            return self.client.create_from_slice(&[0u8; 4]);
        }
        if self.holds_no_data(bytes.len()) {
            return self.client.empty(bytes.len());
        }
        self.client.create_from_slice(bytes)
    }

    /// A new tensor whose contents the caller's kernels will write (poisoned if asked).
    pub(crate) fn alloc_tensor(&self, rows: usize, cols: usize) -> Result<CubeTensor> {
        self.check_memory(
            &format!("a {rows}x{cols} f32 tensor"),
            f32_bytes(rows, cols),
        )?;
        let slabs = self.slabs_for(rows, cols)?;
        let handles = (0..slabs.count())
            .map(|s| {
                let n = slabs.range(s).1 * cols;
                let h = self.client.empty(n.max(1) * 4);
                if self.poison {
                    fill::fill_u32(self, &h, n.max(1), u32::MAX);
                }
                h
            })
            .collect();
        Ok(CubeTensor {
            rows,
            cols,
            slabs,
            handles,
        })
    }

    /// A new tensor filled with `value`.
    pub(crate) fn filled_tensor(&self, rows: usize, cols: usize, value: f32) -> Result<CubeTensor> {
        let t = self.alloc_tensor(rows, cols)?;
        for (s, h) in t.handles.iter().enumerate() {
            fill::fill_u32(self, h, t.slab_len(s).max(1), value.to_bits());
        }
        Ok(t)
    }

    /// A new mask with every bit clear.
    pub(crate) fn empty_mask(&self, rows: usize, cols: usize) -> Result<CubeMask> {
        let m = self.alloc_mask(rows, cols)?;
        for (s, h) in m.handles.iter().enumerate() {
            fill::fill_u32(self, h, m.slab_len(s).max(1), 0);
        }
        Ok(m)
    }

    /// A new mask whose words the caller's kernels will all write (poisoned if asked).
    pub(crate) fn alloc_mask(&self, rows: usize, cols: usize) -> Result<CubeMask> {
        let slabs = self.slabs_for(rows, cols)?;
        let wpr = Mask::words_per_row(cols);
        let handles = (0..slabs.count())
            .map(|s| {
                let n = slabs.range(s).1 * wpr;
                let h = self.client.empty(n.max(1) * 4);
                if self.poison {
                    fill::fill_u32(self, &h, n.max(1), u32::MAX);
                }
                h
            })
            .collect();
        Ok(CubeMask {
            rows,
            cols,
            slabs,
            handles,
        })
    }

    pub(crate) fn upload_matrix(&self, m: &Matrix) -> Result<CubeTensor> {
        self.check_memory(
            &format!("a {}x{} f32 tensor", m.rows, m.cols),
            f32_bytes(m.rows, m.cols),
        )?;
        let slabs = self.slabs_for(m.rows, m.cols)?;
        let handles = (0..slabs.count())
            .map(|s| {
                let (r0, n) = slabs.range(s);
                self.device_copy(bytemuck::cast_slice(
                    &m.data[r0 * m.cols..(r0 + n) * m.cols],
                ))
            })
            .collect();
        Ok(CubeTensor {
            rows: m.rows,
            cols: m.cols,
            slabs,
            handles,
        })
    }

    /// Whether buffers of `bytes` hold no data on this runtime (see `data_kept_up_to`).
    fn holds_no_data(&self, bytes: usize) -> bool {
        matches!(self.data_kept_up_to, Some(kept) if bytes as u64 > kept)
    }

    /// Reads `len` u32 from the device.
    pub(crate) fn read_u32(&self, h: &Handle, len: usize) -> Result<Vec<u32>> {
        if self.holds_no_data(len * 4) {
            // Zeroed pages the allocator hands out untouched.
            return Ok(vec![0; len]);
        }
        let bytes = self
            .client
            .read_one(h.clone())
            .map_err(|e| KernelError::Device(format!("reading a buffer back: {e:?}")))?;
        let words: &[u32] = bytemuck::cast_slice(&bytes[..len * 4]);
        Ok(words.to_vec())
    }

    pub(crate) fn read_f32(&self, h: &Handle, len: usize) -> Result<Vec<f32>> {
        Ok(self
            .read_u32(h, len)?
            .into_iter()
            .map(f32::from_bits)
            .collect())
    }

    pub(crate) fn download_matrix(&self, t: &CubeTensor) -> Result<Matrix> {
        if self.holds_no_data(t.rows * t.cols * 4) {
            return Ok(Matrix::zeros(t.rows, t.cols));
        }
        let mut data = Vec::with_capacity(t.rows * t.cols);
        for (s, h) in t.handles.iter().enumerate() {
            data.extend(self.read_f32(h, t.slab_len(s))?);
        }
        Matrix::new(t.rows, t.cols, data)
    }

    pub(crate) fn upload_packed_mask(&self, m: &Mask) -> Result<CubeMask> {
        let slabs = self.slabs_for(m.rows, m.cols)?;
        let wpr = Mask::words_per_row(m.cols);
        let handles = (0..slabs.count())
            .map(|s| {
                let (r0, n) = slabs.range(s);
                self.device_copy(bytemuck::cast_slice(&m.bits[r0 * wpr..(r0 + n) * wpr]))
            })
            .collect();
        Ok(CubeMask {
            rows: m.rows,
            cols: m.cols,
            slabs,
            handles,
        })
    }

    /// A device array of `n` words for a compressed weight's buffer `what`, checked against
    /// the binding limit and the memory budget (poisoned if asked; kernels write every word).
    pub(crate) fn alloc_words(&self, what: &str, n: usize) -> Result<Words> {
        self.check_memory(what, n as u64 * 4)?;
        if n as u64 * 4 > self.max_binding {
            return Err(KernelError::Unsupported(format!(
                "{what}: {n} words exceed the device's largest binding ({} bytes)",
                self.max_binding
            )));
        }
        Ok(Words {
            handle: self.scratch(n)?,
            len: n,
        })
    }

    fn upload_words(&self, what: &str, data: &[u32]) -> Result<Words> {
        self.check_memory(what, data.len() as u64 * 4)?;
        Ok(Words {
            handle: self.scratch_from(data)?,
            len: data.len(),
        })
    }

    fn download_words(&self, w: &Words) -> Result<Vec<u32>> {
        if w.len == 0 {
            return Ok(Vec::new());
        }
        self.read_u32(&w.handle, w.len)
    }

    /// Uploads a compressed weight after checking its buffer sizes and, for a bitmap, that
    /// every row's offsets span as many values as its bits keep (kernels trust both).
    pub(crate) fn upload_packed_weight(&self, p: &PackedWeight) -> Result<CubePacked> {
        p.check_layout()?;
        if p.format == WeightFormat::Bitmap {
            check_bitmap_offsets(p)?;
        }
        Ok(CubePacked {
            format: p.format,
            rows: p.rows,
            cols: p.cols,
            values: self.upload_words("compressed values", &p.values)?,
            meta: self.upload_words("compressed metadata", &p.meta)?,
            offsets: self.upload_words("bitmap offsets", &p.offsets)?,
        })
    }

    pub(crate) fn download_packed_weight(&self, p: &CubePacked) -> Result<PackedWeight> {
        Ok(PackedWeight {
            format: p.format,
            rows: p.rows,
            cols: p.cols,
            values: self.download_words(&p.values)?,
            meta: self.download_words(&p.meta)?,
            offsets: self.download_words(&p.offsets)?,
        })
    }

    pub(crate) fn download_packed_mask(&self, m: &CubeMask) -> Result<Mask> {
        if self.holds_no_data(m.rows * m.words_per_row() * 4) {
            return Ok(Mask::empty(m.rows, m.cols));
        }
        let mut bits = Vec::with_capacity(m.rows * m.words_per_row());
        for (s, h) in m.handles.iter().enumerate() {
            bits.extend(self.read_u32(h, m.slab_len(s))?);
        }
        Mask::from_bits(m.rows, m.cols, bits)
    }
}

/// A bitmap whose offsets disagree with its bits is refused (with the reference
/// decompression's error where it has one; bits past the last column do not count, as there),
/// and so is one whose rows are not stored one after another.
fn check_bitmap_offsets(p: &PackedWeight) -> Result<()> {
    let bpr = formats::bitmap_words_per_row(p.cols);
    let tail = p.cols % 32;
    let mut k = 0u64;
    for r in 0..p.rows {
        let row = &p.meta[r * bpr..(r + 1) * bpr];
        let kept: u64 = row
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let w = if i + 1 == bpr && tail != 0 {
                    w & ((1u32 << tail) - 1)
                } else {
                    w
                };
                w.count_ones() as u64
            })
            .sum();
        let (lo, hi) = (p.offsets[r] as u64, p.offsets[r + 1] as u64);
        if lo != k {
            return Err(KernelError::InvalidArgument(format!(
                "bitmap row {r}: its values start at {lo}, the rows before it end at {k}"
            )));
        }
        if hi < lo || hi - lo != kept {
            return Err(KernelError::InvalidArgument(format!(
                "bitmap row {r}: its bits count {kept} kept values, its offsets {}",
                hi as i64 - lo as i64
            )));
        }
        k = hi;
    }
    Ok(())
}
