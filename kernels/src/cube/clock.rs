//! Device-clock timing on CubeCL's wgpu runtime.
//!
//! CubeCL 0.10's own profiler on wgpu writes its end timestamp at the end of the first compute
//! pass of the profiled region (later passes, begun after a flush or a read-back, get no
//! timestamp writes), so it undercounts any op longer than one submission of 32 launches. This
//! clock brackets the whole region instead: an empty compute pass that writes a timestamp is
//! submitted on the same queue before the work, CubeCL's pending commands are flushed after
//! it, and a second timestamp pass follows. The difference is device time from the start of
//! the first kernel to the end of the last, including any idle gaps the host leaves between
//! submissions.

use crate::error::{KernelError, Result};

pub struct WgpuClock {
    device: wgpu::Device,
    queue: wgpu::Queue,
}

impl WgpuClock {
    /// A clock on `device`, if it can write timestamps.
    pub fn new(device: wgpu::Device, queue: wgpu::Queue) -> Option<Self> {
        device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            .then_some(Self { device, queue })
    }

    fn stamp(&self, set: &wgpu::QuerySet, index: u32) {
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("prunebench timestamp"),
            });
        drop(enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("prunebench timestamp"),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: set,
                beginning_of_pass_write_index: Some(index),
                end_of_pass_write_index: None,
            }),
        }));
        self.queue.submit([enc.finish()]);
    }

    /// Seconds of device time between a timestamp before `work` and one after `flush` has
    /// submitted everything `work` enqueued. The device must be idle when this is called.
    pub fn time(
        &self,
        work: &mut dyn FnMut() -> Result<()>,
        flush: impl FnOnce() -> Result<()>,
    ) -> Result<f64> {
        let set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("prunebench timing"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        self.stamp(&set, 0);
        work()?;
        flush()?;
        self.stamp(&set, 1);
        let size = 2 * wgpu::QUERY_SIZE as u64;
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("prunebench timestamp resolve"),
            size,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("prunebench timestamp readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("prunebench timestamp resolve"),
            });
        enc.resolve_query_set(&set, 0..2, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &readback, 0, size);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        readback
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| drop(tx.send(r)));
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| KernelError::Device(format!("waiting for timestamps: {e}")))?;
        rx.recv()
            .map_err(|_| KernelError::Device("timestamp readback was dropped".into()))?
            .map_err(|e| KernelError::Device(format!("mapping timestamps: {e}")))?;
        let ticks: [u64; 2] = {
            let view = readback.slice(..).get_mapped_range();
            let t: &[u64] = bytemuck::cast_slice(&view);
            [t[0], t[1]]
        };
        readback.unmap();
        let ns =
            ticks[1].saturating_sub(ticks[0]) as f64 * self.queue.get_timestamp_period() as f64;
        Ok(ns * 1e-9)
    }
}
