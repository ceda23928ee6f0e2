//! The knobs in which the GPU backends differ, behind one trait, so that each test body is
//! written once over `B: TestBackend` and instantiated per backend: how a backend is opened,
//! its test switches (a binding cap, outputs poisoned with NaN), how a split shows, and what
//! its clock and limits are called.

use prunebench_kernels::{Backend, KernelError, TimeSource};

pub trait TestBackend: Backend + Sized {
    /// `info().backend`.
    const NAME: &'static str;
    /// The `info().limits` entry holding the largest storage binding, in bytes.
    const BINDING_LIMIT: &'static str;

    /// The first adapter whose name contains `adapter` (case-insensitive), or the best one.
    fn open(adapter: Option<&str>) -> Result<Self, KernelError>;

    /// Every fresh output and scratch buffer filled with NaN (masks with all bits set), so
    /// that an entry a kernel forgets to write fails the comparison.
    fn poisoned(self) -> Self;

    /// Storage bindings capped at `bytes`, so that the paths splitting large tensors across
    /// bindings run on small ones. Do this before uploading anything.
    fn with_limit(self, bytes: u64) -> Self;

    /// Whether a `rows x cols` f32 tensor spans more than one binding. Never true of a
    /// tensor held in one; a backend that cannot hold it at all fails here.
    fn is_split(&self, rows: usize, cols: usize) -> bool;

    /// How many ops so far split a tensor across bindings, where the backend counts them.
    fn splits_seen(&self) -> Option<usize>;

    /// The clock `timed` must report on this adapter.
    fn time_source(&self) -> TimeSource;

    /// The best adapter, outputs as the kernels leave them.
    fn plain() -> Self {
        Self::open(None).unwrap_or_else(|e| {
            panic!(
                "no Vulkan adapter for {}: install mesa-vulkan-drivers (lavapipe) or a GPU \
                 driver ({e})",
                Self::NAME
            )
        })
    }

    /// The best adapter with its outputs poisoned.
    fn fresh() -> Self {
        Self::plain().poisoned()
    }

    /// `fresh` with bindings capped at `bytes`.
    fn split(bytes: u64) -> Self {
        Self::fresh().with_limit(bytes)
    }

    /// After a run under a cap: some op split a tensor, where the backend counts them (where
    /// it does not, the test checks `is_split` on its shapes first).
    fn assert_split_seen(&self) {
        if let Some(n) = self.splits_seen() {
            assert!(n > 0, "{}: no op split a tensor", Self::NAME);
        }
    }
}

#[cfg(feature = "wgpu")]
impl TestBackend for prunebench_kernels::wgpu::WgpuBackend {
    const NAME: &'static str = "wgpu";
    const BINDING_LIMIT: &'static str = "max_storage_buffer_binding_size";

    fn open(adapter: Option<&str>) -> Result<Self, KernelError> {
        Self::new(adapter)
    }

    fn poisoned(self) -> Self {
        self.with_poisoned_outputs(true)
    }

    fn with_limit(self, bytes: u64) -> Self {
        self.with_binding_limit(bytes)
    }

    /// Windows are cut per op, in rows; a tensor past the cap is never bound whole (one at
    /// the cap may be split too: a window leaves room for the alignment of its start).
    fn is_split(&self, rows: usize, cols: usize) -> bool {
        rows as u64 * cols as u64 * 4 > self.max_binding()
    }

    fn splits_seen(&self) -> Option<usize> {
        Some(self.split_ops())
    }

    fn time_source(&self) -> TimeSource {
        if self.has_timestamps() {
            TimeSource::DeviceTimestamps
        } else {
            TimeSource::WallClock
        }
    }
}

#[cfg(feature = "cubecl")]
impl TestBackend for prunebench_kernels::cube::CubeWgpuBackend {
    const NAME: &'static str = "cubecl-wgpu";
    const BINDING_LIMIT: &'static str = "max_binding_bytes";

    fn open(adapter: Option<&str>) -> Result<Self, KernelError> {
        prunebench_kernels::cube::cube_wgpu(adapter)
    }

    fn poisoned(self) -> Self {
        self.with_poisoned_outputs(true)
    }

    fn with_limit(self, bytes: u64) -> Self {
        self.with_binding_limit(bytes)
    }

    /// A tensor keeps the slabs (whole 64-row blocks) it was made with.
    fn is_split(&self, rows: usize, cols: usize) -> bool {
        let slabs = self
            .slabs(rows, cols)
            .unwrap_or_else(|e| panic!("{rows}x{cols}: {e}"));
        slabs.count() >= 2
    }

    /// No counter: the tests check `is_split` on their shapes.
    fn splits_seen(&self) -> Option<usize> {
        None
    }

    /// lavapipe and GPUs with timestamp queries time on the device.
    fn time_source(&self) -> TimeSource {
        TimeSource::DeviceTimestamps
    }
}
