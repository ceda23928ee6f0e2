//! GPU time from timestamp queries: while a timing scope is open every compute pass an op
//! records gets a begin and an end timestamp; the scope's time is the sum over its passes
//! (device busy time, without the host's gaps between submissions). In profile mode each
//! dispatch gets a pass of its own, and the time is also broken down by kernel.

use crate::error::{KernelError, Result};

use super::exec::Ctx;

/// wgpu allows at most this many queries in one set.
const QUERIES_PER_SET: u32 = 4096;

pub(crate) struct Timing {
    sets: Vec<wgpu::QuerySet>,
    used: u32,
    /// The kernel of each pass, in profile mode.
    labels: Vec<&'static str>,
}

impl Timing {
    pub fn new() -> Self {
        Self {
            sets: Vec::new(),
            used: 0,
            labels: Vec::new(),
        }
    }

    /// The query set and first of two indices for the next pass, which runs `label`.
    pub fn next_pass(
        &mut self,
        device: &wgpu::Device,
        label: &'static str,
    ) -> (wgpu::QuerySet, u32) {
        self.labels.push(label);
        if self.sets.is_empty() || self.used + 2 > QUERIES_PER_SET {
            self.sets
                .push(device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("pass timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: QUERIES_PER_SET,
                }));
            self.used = 0;
        }
        let i = self.used;
        self.used += 2;
        (self.sets.last().expect("a set exists").clone(), i)
    }
}

impl Ctx {
    /// Opens a timing scope; passes recorded until `end_timing` are timed.
    pub fn begin_timing(&self) {
        *self.timing.lock().unwrap_or_else(|p| p.into_inner()) = Some(Timing::new());
    }

    /// Closes the scope and returns the summed pass time in seconds. Waits for the device.
    pub fn end_timing(&self) -> Result<f64> {
        let t = self
            .timing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| KernelError::Device("no timing scope open".into()))?;
        let period = self.queue.get_timestamp_period() as f64;
        let mut ticks = 0u64;
        let mut per_pass = Vec::with_capacity(t.labels.len());
        let n_sets = t.sets.len();
        for (si, qs) in t.sets.iter().enumerate() {
            let count = if si + 1 == n_sets {
                t.used
            } else {
                QUERIES_PER_SET
            };
            if count == 0 {
                continue;
            }
            let bytes = count as u64 * 8;
            let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.resolve_query_set(qs, 0..count, &resolve, 0);
            self.queue.submit([enc.finish()]);
            let words = self.read_words(&resolve, count as usize * 2)?;
            for pair in words.chunks_exact(4) {
                let begin = pair[0] as u64 | (pair[1] as u64) << 32;
                let end = pair[2] as u64 | (pair[3] as u64) << 32;
                ticks += end.saturating_sub(begin);
                per_pass.push(end.saturating_sub(begin));
            }
        }
        if self.profile.load(std::sync::atomic::Ordering::Relaxed) {
            let mut by_kernel: Vec<(String, f64)> = Vec::new();
            for (label, t) in t.labels.iter().zip(per_pass) {
                let secs = t as f64 * period * 1e-9;
                match by_kernel.iter_mut().find(|(l, _)| l == label) {
                    Some(e) => e.1 += secs,
                    None => by_kernel.push((label.to_string(), secs)),
                }
            }
            by_kernel.sort_by(|a, b| b.1.total_cmp(&a.1));
            *self.last_profile.lock().unwrap_or_else(|p| p.into_inner()) = by_kernel;
        }
        Ok(ticks as f64 * period * 1e-9)
    }
}
