//! Re-fitting after pruning (ALGORITHMS.md §12, PERP): a stage between a method's step and the
//! evaluation, over one input group's pruned linears, from the group's input Hessian. The
//! items run in the order given; each keeps the method's mask bit for bit.
//!
//! `norm` rescales the RMSNorm weight γ in front of the group, which scales the columns of
//! the group's inputs by c: the linears' effective weights become Ŵ·diag(c) while the written
//! ones stay Ŵ. An item after `norm` re-fits the effective weights and writes them back divided
//! by c, so that the written norm and linears together compute what was fitted.

mod closed;
mod group;
mod lora;
mod member;

pub use crate::prune::records::refit::{
    LinearRefit, NormRefit, RefitConfig, RefitItem, DEFAULT_LR, DEFAULT_STEPS,
};
pub(crate) use group::{refit_group, GroupRefit};
pub(crate) use member::{scale_columns, Member};
