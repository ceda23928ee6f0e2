//! Host memory standing in for device memory under CubeCL's memory management (cubecl-runtime's
//! own byte storage sits behind a feature the other runtimes do not enable).
//!
//! No kernel runs here, so the contents of a buffer matter only where the host reads back
//! what it wrote itself: status words, flags, a dynamic cube count, all small. A binding
//! larger than [`KEPT_BYTES`] is therefore kept by its size alone: writes to it are dropped
//! and it reads back as zeros, and its pages (allocated zeroed, so lazily) are never touched.
//! At model shapes, copying model-sized buffers would otherwise be nearly all of a run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cubecl::server::IoError;
use cubecl_runtime::storage::{ComputeStorage, StorageHandle, StorageId, StorageUtilization};

#[derive(Default)]
pub struct HostStorage {
    memory: HashMap<StorageId, Arc<Mutex<Vec<u8>>>>,
}

/// The largest binding whose bytes are kept (1 MiB).
pub const KEPT_BYTES: u64 = 1 << 20;

/// A range of one host allocation.
pub struct HostSlice {
    page: Arc<Mutex<Vec<u8>>>,
    range: StorageUtilization,
}

impl HostSlice {
    /// Whether the slice's bytes are kept (see the module's note).
    fn kept(&self) -> bool {
        self.range.size <= KEPT_BYTES
    }

    /// Copies the slice's bytes (at most `len`) into a zeroed buffer of `len`; zeros for a
    /// slice whose bytes are not kept.
    pub fn read(&self, len: usize) -> Vec<u8> {
        if !self.kept() {
            return vec![0u8; len];
        }
        let page = self.page.lock().unwrap_or_else(|e| e.into_inner());
        let (start, size) = (self.range.offset as usize, self.range.size as usize);
        let mut out = vec![0u8; len];
        let n = len.min(size).min(page.len().saturating_sub(start));
        out[..n].copy_from_slice(&page[start..start + n]);
        out
    }

    /// Sets the slice's bytes to zero.
    pub fn zero(&self) {
        if !self.kept() {
            return;
        }
        let mut page = self.page.lock().unwrap_or_else(|e| e.into_inner());
        let start = (self.range.offset as usize).min(page.len());
        let end = (start + self.range.size as usize).min(page.len());
        page[start..end].fill(0);
    }

    /// Copies `data` to the start of the slice, as much as fits (nothing where the slice's
    /// bytes are not kept).
    pub fn write(&self, data: &[u8]) {
        if !self.kept() {
            return;
        }
        let mut page = self.page.lock().unwrap_or_else(|e| e.into_inner());
        let (start, size) = (self.range.offset as usize, self.range.size as usize);
        let n = data.len().min(size).min(page.len().saturating_sub(start));
        page[start..start + n].copy_from_slice(&data[..n]);
    }
}

impl ComputeStorage for HostStorage {
    type Resource = HostSlice;

    fn alignment(&self) -> usize {
        // CUDA's pitch alignment, so layouts match what the GPU would get.
        512
    }

    fn get(&mut self, handle: &StorageHandle) -> HostSlice {
        HostSlice {
            page: self.memory[&handle.id].clone(),
            range: handle.utilization.clone(),
        }
    }

    fn alloc(&mut self, size: u64) -> Result<StorageHandle, IoError> {
        let id = StorageId::new();
        self.memory
            .insert(id, Arc::new(Mutex::new(vec![0u8; size as usize])));
        Ok(StorageHandle {
            id,
            utilization: StorageUtilization { offset: 0, size },
        })
    }

    fn dealloc(&mut self, id: StorageId) {
        self.memory.remove(&id);
    }

    fn flush(&mut self) {}
}
