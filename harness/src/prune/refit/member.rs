//! What every re-fit item works on: one linear's state, and the column scale a `norm` re-fit
//! puts in front of it.

use prunebench_kernels::{Backend, Matrix};
use prunebench_models::config::LinearSpec;

use crate::prune::stages::Stages;

/// One linear's state through the re-fit: the written-space weight Ŵ on the device and its
/// explicit mask.
pub(crate) struct Member<'t, B: Backend> {
    pub spec: &'t LinearSpec,
    pub original: &'t B::Tensor,
    pub pruned: &'t mut B::Tensor,
    pub mask: &'t B::Mask,
    pub stages: &'t mut Stages,
}

/// W·diag(c), or W·diag(1/c) with `divide`.
pub(crate) fn scale_columns(w: &mut Matrix, c: &[f32], divide: bool) {
    let cols = w.cols;
    for row in w.data.chunks_mut(cols.max(1)) {
        for (v, s) in row.iter_mut().zip(c) {
            if divide {
                *v /= s;
            } else {
                *v *= s;
            }
        }
    }
}
