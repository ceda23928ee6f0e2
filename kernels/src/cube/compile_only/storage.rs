//! Host memory standing in for device memory under CubeCL's memory management (cubecl-runtime's
//! own byte storage sits behind a feature the other runtimes do not enable).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cubecl::server::IoError;
use cubecl_runtime::storage::{ComputeStorage, StorageHandle, StorageId, StorageUtilization};

#[derive(Default)]
pub struct HostStorage {
    memory: HashMap<StorageId, Arc<Mutex<Vec<u8>>>>,
}

/// A range of one host allocation.
pub struct HostSlice {
    page: Arc<Mutex<Vec<u8>>>,
    range: StorageUtilization,
}

impl HostSlice {
    /// Copies the slice's bytes (at most `len`) into a zeroed buffer of `len`.
    pub fn read(&self, len: usize) -> Vec<u8> {
        let page = self.page.lock().unwrap_or_else(|e| e.into_inner());
        let (start, size) = (self.range.offset as usize, self.range.size as usize);
        let mut out = vec![0u8; len];
        let n = len.min(size).min(page.len().saturating_sub(start));
        out[..n].copy_from_slice(&page[start..start + n]);
        out
    }

    /// Sets the slice's bytes to zero.
    pub fn zero(&self) {
        let mut page = self.page.lock().unwrap_or_else(|e| e.into_inner());
        let start = (self.range.offset as usize).min(page.len());
        let end = (start + self.range.size as usize).min(page.len());
        page[start..end].fill(0);
    }

    /// Copies `data` to the start of the slice, as much as fits.
    pub fn write(&self, data: &[u8]) {
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
