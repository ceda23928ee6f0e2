//! Per-stage device time, summed over the calls of each stage in the order stages first ran.

use prunebench_kernels::Backend;

use super::records::{Purpose, StageTime};

#[derive(Default)]
pub(crate) struct Stages(pub Vec<StageTime>);

impl Stages {
    /// Runs `work` under the backend's timer and adds its time to `stage`.
    pub fn time<B: Backend>(
        &mut self,
        b: &B,
        stage: &str,
        purpose: Purpose,
        work: &mut dyn FnMut() -> prunebench_kernels::error::Result<()>,
    ) -> prunebench_kernels::error::Result<()> {
        let (seconds, source) = b.timed(work)?;
        match self.0.iter_mut().find(|s| s.stage == stage) {
            Some(s) => {
                s.seconds += seconds;
                s.calls += 1;
            }
            None => self.0.push(StageTime {
                stage: stage.into(),
                purpose,
                seconds,
                calls: 1,
                source,
            }),
        }
        Ok(())
    }
}
