//! Device memory: the tensor and mask types, allocation with limits checked before anything
//! is created, host transfers, and the planning of bindings for tensors larger than one
//! storage binding (row slabs, or flat chunks for elementwise kernels).

use std::sync::atomic::Ordering;

use crate::error::{KernelError, Result};
use crate::plan::{self, Slabs};
use crate::tensor::{Mask, Matrix};

use super::exec::{Ctx, Win};

/// A row-major f32 matrix on the device. Its buffer is padded to whole 16-byte vec4s.
#[derive(Debug)]
pub struct WgpuTensor {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

/// A tensor's (rows, cols), as the shape checks take it.
pub(crate) fn shape(t: &WgpuTensor) -> (usize, usize) {
    (t.rows, t.cols)
}

/// A bit-packed mask on the device, in the layout of [`Mask`].
#[derive(Debug)]
pub struct WgpuMask {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl WgpuMask {
    pub(crate) fn wpr(&self) -> usize {
        Mask::words_per_row(self.cols)
    }
}

const F32_NAN_BITS: u32 = 0x7fc0_0001;

impl Ctx {
    /// A storage buffer of `elems` 4-byte words, checked against the device's limits first.
    /// `fill` is what a test's poison run puts in it (outputs and scratch); otherwise zeros.
    pub(crate) fn alloc(
        &self,
        what: &str,
        elems: usize,
        fill: Option<u32>,
    ) -> Result<wgpu::Buffer> {
        let bytes = (elems.max(4) as u64 * 4).next_multiple_of(16);
        let max = self.limits.max_buffer_size;
        if bytes > max {
            return Err(KernelError::OutOfMemory {
                what: format!("{what} ({elems} values in one buffer)"),
                needed: bytes,
                available: max,
            });
        }
        if elems as u64 >= u32::MAX as u64 {
            return Err(KernelError::OutOfMemory {
                what: format!("{what}: {elems} values exceed the kernels' 32-bit indexing"),
                needed: bytes,
                available: u32::MAX as u64 * 4,
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(KernelError::OutOfMemory {
                what: format!("{what}: {e}"),
                needed: bytes,
                available: max,
            });
        }
        if let Some(v) = fill.filter(|_| self.poison.load(Ordering::Relaxed)) {
            let words = vec![v; (bytes / 4) as usize];
            self.queue
                .write_buffer(&buf, 0, bytemuck::cast_slice(&words));
        }
        Ok(buf)
    }

    pub(crate) fn tensor(&self, what: &str, rows: usize, cols: usize) -> Result<WgpuTensor> {
        let elems = rows
            .checked_mul(cols)
            .ok_or_else(|| KernelError::Shape(format!("{rows}x{cols} overflows")))?;
        Ok(WgpuTensor {
            buf: self.alloc(what, elems, Some(F32_NAN_BITS))?,
            rows,
            cols,
        })
    }

    /// Scratch that kernels fully write before reading (poisoned in tests to prove it).
    pub(crate) fn scratch(&self, what: &str, elems: usize) -> Result<wgpu::Buffer> {
        self.alloc(what, elems, Some(F32_NAN_BITS))
    }

    pub(crate) fn mask(&self, rows: usize, cols: usize) -> Result<WgpuMask> {
        Ok(WgpuMask {
            buf: self.alloc("mask", rows * Mask::words_per_row(cols), Some(u32::MAX))?,
            rows,
            cols,
        })
    }

    pub(crate) fn upload_words(&self, what: &str, words: &[u32]) -> Result<wgpu::Buffer> {
        let buf = self.alloc(what, words.len(), None)?;
        if !words.is_empty() {
            let mut data = bytemuck::cast_slice::<u32, u8>(words).to_vec();
            data.resize(data.len().next_multiple_of(4), 0);
            self.queue.write_buffer(&buf, 0, &data);
        }
        Ok(buf)
    }

    pub(crate) fn upload_matrix(&self, m: &Matrix) -> Result<WgpuTensor> {
        let buf = self.alloc("tensor", m.data.len(), None)?;
        if !m.data.is_empty() {
            self.queue
                .write_buffer(&buf, 0, bytemuck::cast_slice(&m.data));
        }
        self.check()?;
        Ok(WgpuTensor {
            buf,
            rows: m.rows,
            cols: m.cols,
        })
    }

    /// Reads `words` 4-byte values from the start of `buf`.
    pub(crate) fn read_words(&self, buf: &wgpu::Buffer, words: usize) -> Result<Vec<u32>> {
        if words == 0 {
            return Ok(Vec::new());
        }
        let bytes = (words as u64 * 4).next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| KernelError::Device(format!("waiting for the device: {e}")))?;
        self.check()?;
        rx.recv()
            .map_err(|_| KernelError::Device("readback never completed".into()))?
            .map_err(|e| KernelError::Device(format!("mapping a readback buffer: {e}")))?;
        let out = bytemuck::cast_slice::<u8, u32>(&slice.get_mapped_range()).to_vec();
        staging.unmap();
        Ok(out)
    }

    /// A window over elements [e0, e1) of `buf`, its start aligned down as bindings require.
    pub(crate) fn win<'a>(&self, buf: &'a wgpu::Buffer, e0: u64, e1: u64) -> Result<Win<'a>> {
        // At least 16 bytes, so vec4 views of a window stay aligned.
        let align = (self.limits.min_storage_buffer_offset_alignment as u64).max(16) / 4;
        let start = e0 / align * align;
        let bytes = ((e1.max(e0 + 1) - start) * 4)
            .next_multiple_of(16)
            .min(buf.size() - start * 4);
        if bytes > self.max_binding {
            return Err(KernelError::Unsupported(format!(
                "a binding of {bytes} bytes is needed, the limit is {}",
                self.max_binding
            )));
        }
        Ok(Win { buf, start, bytes })
    }

    /// The window of rows [r0, r1) of a row-major matrix with `cols` columns.
    pub(crate) fn rows_win<'a>(
        &self,
        buf: &'a wgpu::Buffer,
        cols: usize,
        r0: usize,
        r1: usize,
    ) -> Result<Win<'a>> {
        self.win(buf, (r0 * cols) as u64, (r1 * cols) as u64)
    }

    /// The whole buffer of `elems` values as one window (vectors, small scratch).
    pub(crate) fn whole<'a>(&self, buf: &'a wgpu::Buffer, elems: usize) -> Result<Win<'a>> {
        self.win(buf, 0, elems as u64)
    }

    /// Whether `elems` values fit one binding wherever they start.
    pub(crate) fn win_fits(&self, elems: u64) -> bool {
        elems * 4 <= self.binding_room()
    }

    /// Bytes a window may cover, leaving room for the alignment of its start.
    pub(crate) fn binding_room(&self) -> u64 {
        self.max_binding
            .saturating_sub(self.limits.min_storage_buffer_offset_alignment.max(16) as u64 + 16)
    }

    /// How many rows of `cols` values one binding holds.
    pub(crate) fn rows_fitting(&self, cols: usize) -> usize {
        (self.binding_room() / (cols.max(1) * 4) as u64) as usize
    }

    /// Row ranges of a `rows x cols` matrix, each fitting one binding (the shared plan's
    /// [`Slabs`]): each a multiple of `align` rows (but the last), at most `max_rows` rows.
    pub(crate) fn row_slabs(
        &self,
        rows: usize,
        cols: usize,
        align: usize,
        max_rows: usize,
    ) -> Result<Vec<(usize, usize)>> {
        let v = Slabs::new(rows, cols, self.binding_room(), align, max_rows)?.bounds();
        self.split_noted(v.len());
        Ok(v)
    }

    /// Flat element ranges of `n` values, each fitting one binding, boundaries on 64 values
    /// (so vec4 windows stay aligned).
    pub(crate) fn flat_chunks(&self, n: usize) -> Vec<(usize, usize)> {
        let v = plan::flat_chunks(n, self.binding_room(), 64);
        self.split_noted(v.len());
        v
    }
}

pub(crate) fn matrix_from_words(rows: usize, cols: usize, words: Vec<u32>) -> Result<Matrix> {
    let mut data: Vec<f32> = bytemuck::cast_slice(&words).to_vec();
    data.truncate(rows * cols);
    Matrix::new(rows, cols, data)
}
