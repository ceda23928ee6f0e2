//! What every step of a layer run shares: the backend-independent configuration, where
//! errors happened, and the progress count.

use prunebench_kernels::Matrix;
use prunebench_models::config::{InputGroup, LinearSpec};

use super::records::{Progress, PruneConfig};

pub(crate) struct LayerCx<'a> {
    pub layer: usize,
    pub cfg: &'a PruneConfig,
}

impl LayerCx<'_> {
    /// "layer N what", the prefix of every error raised inside the layer.
    pub fn at(&self, what: &str) -> String {
        format!("layer {} {what}", self.layer)
    }
}

/// Counts units of work (calibration samples per group, then linears) for the progress bar.
pub(crate) struct Ticker<'a> {
    done: u64,
    total: u64,
    progress: &'a dyn Fn(Progress<'_>),
}

impl<'a> Ticker<'a> {
    pub fn new(total: u64, progress: &'a dyn Fn(Progress<'_>)) -> Self {
        Self {
            done: 0,
            total,
            progress,
        }
    }

    pub fn tick(&mut self, what: &str) {
        self.done += 1;
        (self.progress)(Progress {
            what,
            done: self.done,
            total: self.total,
        })
    }

    /// Counts `units` that needed no work (statistics read ready-made) without a tick.
    pub fn skip(&mut self, units: u64) {
        self.done += units;
    }
}

/// The layer's input groups in the order their first linear appears.
pub(crate) fn ordered_groups(linears: &[(LinearSpec, Matrix)]) -> Vec<InputGroup> {
    let mut groups: Vec<InputGroup> = Vec::new();
    for (l, _) in linears {
        if !groups.contains(&l.input) {
            groups.push(l.input);
        }
    }
    groups
}
