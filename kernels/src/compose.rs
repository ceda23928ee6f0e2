//! Composite ops written once for both GPU backends, over the primitives each backend maps
//! to its own storage and kernels ([`Steps`]): gathers and zeros by index lists, products of
//! whole tensors (split across bindings by [`crate::plan::gemm_pieces`] inside each backend),
//! a product with a sum-of-squares epilogue, and the triangular factor of a gathered block's
//! inverse. What a composite does, in which order, and what it refuses is decided here;
//! fused kernels (the OBS loop, the LoRA epilogues, compression) stay per backend.

use crate::error::{KernelError, Result};
use crate::ops::{check, unstructured_k, ObsOutcome, ObsSelection};

/// Rows or columns of a tensor: all `n` of them, or a sorted list of distinct indices.
#[derive(Clone, Copy, Debug)]
pub enum Lines<'a> {
    All(usize),
    List(&'a [usize]),
}

impl Lines<'_> {
    pub fn len(&self) -> usize {
        match *self {
            Lines::All(n) => n,
            Lines::List(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A whole tensor as a product's operand, or its transpose.
pub struct Operand<'a, T> {
    pub t: &'a T,
    pub trans: bool,
}

impl<'a, T> Operand<'a, T> {
    pub fn of(t: &'a T) -> Self {
        Self { t, trans: false }
    }

    pub fn transposed(t: &'a T) -> Self {
        Self { t, trans: true }
    }
}

/// C = alpha·op(A)·op(B) (+ beta·C when `beta` is set); `b_lower`: op(B) is lower triangular,
/// so a backend may skip its zero half. `label` names the launches in timings and errors.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub alpha: f32,
    pub beta: Option<f32>,
    pub b_lower: bool,
    pub label: &'static str,
}

impl Product {
    /// C = A·B, C not read.
    pub fn store(label: &'static str) -> Self {
        Self {
            alpha: 1.0,
            beta: None,
            b_lower: false,
            label,
        }
    }

    /// C ← C − A·B.
    pub fn downdate(label: &'static str) -> Self {
        Self {
            alpha: -1.0,
            beta: Some(1.0),
            ..Self::store(label)
        }
    }
}

/// A triangular X with (Hinv[S,S])⁻¹ = XᵀX; which triangle depends on the backend's factor
/// route (the products below are the same either way).
pub struct InverseFactor<T> {
    pub x: T,
    pub upper: bool,
}

/// What a backend provides for the composites. Work may be queued and run later; it runs,
/// in the order given, no later than the next call that returns a value read from the
/// device, or [`Steps::submit`]. A composite that returns early with an error leaves queued
/// work unsubmitted, so nothing it queued changes a tensor.
pub trait Steps {
    type Tensor;

    fn shape(t: &Self::Tensor) -> (usize, usize);
    fn alloc(&self, what: &'static str, rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// dst = src[rows, cols], bit for bit.
    fn gather(
        &self,
        src: &Self::Tensor,
        rows: Lines<'_>,
        cols: Lines<'_>,
        dst: &Self::Tensor,
    ) -> Result<()>;
    /// t[:, cols] = 0.
    fn zero_columns(&self, t: &Self::Tensor, cols: &[usize]) -> Result<()>;
    /// t[rows, :] = 0.
    fn zero_rows(&self, t: &Self::Tensor, rows: &[usize]) -> Result<()>;
    fn product(
        &self,
        p: Product,
        a: Operand<'_, Self::Tensor>,
        b: Operand<'_, Self::Tensor>,
        c: &Self::Tensor,
    ) -> Result<()>;
    /// C = A·op(B) (`p.beta` unset) and Σ C², read back; A is not transposed.
    fn product_sum_squares(
        &self,
        p: Product,
        a: &Self::Tensor,
        b: Operand<'_, Self::Tensor>,
        c: &Self::Tensor,
    ) -> Result<f64>;
    /// X for the block Hinv[S,S] (its factor's failure is the error, before anything changed).
    fn inverse_factor(
        &self,
        hinv: &Self::Tensor,
        s: &[usize],
    ) -> Result<InverseFactor<Self::Tensor>>;
    /// The LM head's dlogits in place of a chunk's logits (`Backend::lm_head_backward_chunk`):
    /// scale·(exp(l − lse_t) − [offset + v = targets[t]]), zero for rows without a target.
    fn loss_gradient(
        &self,
        logits: &Self::Tensor,
        lse: &Self::Tensor,
        targets: &[u32],
        offset: usize,
        scale: f64,
    ) -> Result<()>;
    /// Runs what is queued.
    fn submit(&self) -> Result<()>;
}

/// §11 compensation for the removed columns S (see `Backend::structured_update`): with X from
/// [`Steps::inverse_factor`], Y = X·Hinv[S,:] and Q = W[:,S]·Xᵀ give ε_S = ½‖Q‖²,
/// W ← W − Q·Y and Hinv ← Hinv − YᵀY; then what the algebra makes zero is set to zero, not
/// left as a rounding residue. The factor runs (and is checked) first, so W and Hinv stay as
/// they were when Hinv[S,S] is not positive definite.
pub fn structured_update<S: Steps>(
    steps: &S,
    w: &S::Tensor,
    hinv: &S::Tensor,
    removed: &[usize],
) -> Result<f64> {
    let (rows, n) = S::shape(w);
    check::structured_update((rows, n), S::shape(hinv), removed)?;
    let k = removed.len();
    let s = Lines::List(removed);
    let f = steps.inverse_factor(hinv, removed)?;

    let ws = steps.alloc("removed weight columns", rows, k)?;
    steps.gather(w, Lines::All(rows), s, &ws)?;
    let hs = steps.alloc("removed inverse-Hessian rows", k, n)?;
    steps.gather(hinv, s, Lines::All(n), &hs)?;
    let y = steps.alloc("Y = X·Hinv[S,:]", k, n)?;
    let of = Operand::of;
    steps.product(Product::store("structured_y"), of(&f.x), of(&hs), &y)?;
    let q = steps.alloc("Q = W[:,S]·Xᵀ", rows, k)?;
    let q_product = Product {
        // Xᵀ is lower triangular when X is upper.
        b_lower: f.upper,
        ..Product::store("structured_q")
    };
    let sum_sq = steps.product_sum_squares(q_product, &ws, Operand::transposed(&f.x), &q)?;

    // Both downdates take the same products in the same order for (i, j) and (j, i), so a
    // symmetric Hinv stays exactly symmetric.
    steps.product(Product::downdate("structured_w"), of(&q), of(&y), w)?;
    let yt = Operand::transposed(&y);
    steps.product(Product::downdate("structured_hinv"), yt, of(&y), hinv)?;
    steps.zero_columns(w, removed)?;
    steps.zero_columns(hinv, removed)?;
    steps.zero_rows(hinv, removed)?;
    steps.submit()?;
    Ok(0.5 * sum_sq)
}

/// §11 compaction: the kept rows and columns of W (all where `None`), gathered.
pub fn compact<S: Steps>(
    steps: &S,
    w: &S::Tensor,
    rows: Option<&[usize]>,
    cols: Option<&[usize]>,
) -> Result<S::Tensor> {
    let (r, c) = S::shape(w);
    let (nr, nc) = check::compact((r, c), rows, cols)?;
    let out = steps.alloc("compacted weight", nr, nc)?;
    let row_lines = rows.map_or(Lines::All(r), Lines::List);
    let col_lines = cols.map_or(Lines::All(c), Lines::List);
    steps.gather(w, row_lines, col_lines, &out)?;
    steps.submit()?;
    Ok(out)
}

/// SparseGPT's blocked OBS prune (§7) as a backend runs it: the state of one prune (the
/// weights, the factor, the output mask, the backend's scratch), stepped by [`obs_prune`].
pub trait ObsSteps: Sized {
    type Mask;

    /// The shapes of W and U.
    fn shapes(&self) -> ((usize, usize), (usize, usize));
    fn dead(&self) -> &[usize];
    fn mask_shape(m: &Self::Mask) -> (usize, usize);
    /// The columns one in-block launch takes in blocks of `block`: at most `block` and whole
    /// N:M groups; the backend's refusal where it can hold none (checked before any work).
    fn sub_block(&mut self, block: usize, sel: &ObsSelection<'_, Self::Mask>) -> Result<usize>;
    /// The output mask (the given one copied, else empty) and W's dead columns zeroed.
    fn begin(&mut self, sel: &ObsSelection<'_, Self::Mask>) -> Result<()>;
    /// Block [i1, i2) starts: whatever of U the backend stages for it.
    fn block(&mut self, i1: usize, i2: usize) -> Result<()>;
    /// The unstructured choice for block [i1, i2): its `k` lowest W²/diag(U)².
    fn select(&mut self, i1: usize, i2: usize, k: usize) -> Result<()>;
    /// The in-block loop over columns [j1, j2) of block [i1, ..) (N:M decisions as it goes
    /// under `nm`), then W[:, j2:] −= Err·U[j1:j2, j2:].
    fn columns(&mut self, i1: usize, j: (usize, usize), nm: Option<(usize, usize)>) -> Result<()>;
    /// The mask and the summed loss, after everything queued has run.
    fn finish(self) -> Result<ObsOutcome<Self::Mask>>;
}

/// §7's blocked loop, the same on every backend: per column block the selection (adaptive
/// unstructured), then per sub-block the in-block loop and the lazy update of every column to
/// its right. A block wider than the backend's sub-block runs as several with their lazy
/// updates in between, which is the same arithmetic reordered: decisions are still per block.
pub fn obs_prune<S: ObsSteps>(
    mut steps: S,
    selection: ObsSelection<'_, S::Mask>,
    block: usize,
) -> Result<ObsOutcome<S::Mask>> {
    let (w, u) = steps.shapes();
    let (rows, cols) = w;
    check::obs(w, u, &selection, block)?;
    if let ObsSelection::Given(m) = selection {
        check::same("given mask vs W", S::mask_shape(m), w)?;
    }
    if let Some(&j) = steps.dead().iter().find(|&&j| j >= cols) {
        return Err(KernelError::InvalidArgument(format!(
            "dead column {j} is outside W's {cols} columns"
        )));
    }
    let sub = steps.sub_block(block, &selection)?;
    steps.begin(&selection)?;
    if rows == 0 || cols == 0 {
        return steps.finish();
    }
    let nm = match selection {
        ObsSelection::NM { n, m } => Some((n, m)),
        _ => None,
    };
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        steps.block(i1, i2)?;
        if let ObsSelection::Unstructured(p) = selection {
            steps.select(i1, i2, unstructured_k(p, rows * (i2 - i1)))?;
        }
        for j1 in (i1..i2).step_by(sub) {
            steps.columns(i1, (j1, (j1 + sub).min(i2)), nm)?;
        }
    }
    steps.finish()
}

/// §15 linear backward for Y = X·Wᵀ: dX = dY·W and dW = dYᵀ·X, two products of whole tensors
/// (the GEMM core, split across bindings by the plan).
pub fn linear_backward<S: Steps>(
    steps: &S,
    x: &S::Tensor,
    w: &S::Tensor,
    dy: &S::Tensor,
) -> Result<(S::Tensor, S::Tensor)> {
    let (x_shape, w_shape) = (S::shape(x), S::shape(w));
    check::linear_backward(x_shape, w_shape, S::shape(dy))?;
    let ((n, cols), rows) = (x_shape, w_shape.0);
    let dx = steps.alloc("dX", n, cols)?;
    let dw = steps.alloc("dW", rows, cols)?;
    if n > 0 && rows > 0 && cols > 0 {
        let of = Operand::of;
        steps.product(Product::store("linear_backward_dx"), of(dy), of(w), &dx)?;
        let dyt = Operand::transposed(dy);
        steps.product(Product::store("linear_backward_dw"), dyt, of(x), &dw)?;
    } else {
        // An empty product still defines its output: zeros.
        steps.zero_rows(&dx, &(0..n).collect::<Vec<_>>())?;
        steps.zero_rows(&dw, &(0..rows).collect::<Vec<_>>())?;
    }
    steps.submit()?;
    Ok((dx, dw))
}

/// §15 the LM head's backward for one vocabulary chunk (`Backend::lm_head_backward_chunk`): the
/// chunk's logits h·Wᵀ, turned into dlogits in place, then dh += dlogits·W and
/// dW = dlogitsᵀ·h; only this chunk's logits are ever in memory.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_backward_chunk<S: Steps>(
    steps: &S,
    dh: &S::Tensor,
    h: &S::Tensor,
    w_chunk: &S::Tensor,
    offset: usize,
    targets: &[u32],
    lse: &S::Tensor,
    scale: f64,
) -> Result<S::Tensor> {
    let ((n, d), v) = (S::shape(h), S::shape(w_chunk).0);
    check::lm_head_backward(
        S::shape(dh),
        (n, d),
        S::shape(w_chunk),
        offset,
        targets.len(),
        S::shape(lse),
    )?;
    let dw = steps.alloc("LM-head chunk dW", v, d)?;
    if n == 0 || d == 0 || v == 0 {
        steps.zero_rows(&dw, &(0..v).collect::<Vec<_>>())?;
        steps.submit()?;
        return Ok(dw);
    }
    let of = Operand::of;
    let logits = steps.alloc("LM-head chunk logits", n, v)?;
    let logits_product = Product::store("lm_head_backward_logits");
    steps.product(logits_product, of(h), Operand::transposed(w_chunk), &logits)?;
    steps.loss_gradient(&logits, lse, targets, offset, scale)?;
    let accumulate = Product {
        beta: Some(1.0),
        ..Product::store("lm_head_backward_dh")
    };
    steps.product(accumulate, of(&logits), of(w_chunk), dh)?;
    let dw_product = Product::store("lm_head_backward_dw");
    steps.product(dw_product, Operand::transposed(&logits), of(h), &dw)?;
    steps.submit()?;
    Ok(dw)
}
