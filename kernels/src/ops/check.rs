//! Shape checks shared by every backend, so they all reject the same inputs the same way.

use super::*;

pub fn same(what: &str, a: (usize, usize), b: (usize, usize)) -> Result<()> {
    if a != b {
        return Err(KernelError::Shape(format!(
            "{what}: {}x{} vs {}x{}",
            a.0, a.1, b.0, b.1
        )));
    }
    Ok(())
}

pub fn act_stat(act: (usize, usize), x: (usize, usize), batch: usize) -> Result<()> {
    same("activation statistic vs X columns", act, (1, x.1))?;
    batch_tokens(x, batch)
}

pub fn hessian(h: (usize, usize), x: (usize, usize), batch: usize) -> Result<()> {
    same("Hessian vs X columns", h, (x.1, x.1))?;
    batch_tokens(x, batch)
}

fn batch_tokens(x: (usize, usize), batch: usize) -> Result<()> {
    if batch == 0 || !x.0.is_multiple_of(batch) {
        return Err(KernelError::Shape(format!(
            "X has {} token rows, not a whole number per sample for a batch of {batch}",
            x.0
        )));
    }
    Ok(())
}

pub fn fused_grad(acc: (usize, usize), dy: (usize, usize), x: (usize, usize)) -> Result<()> {
    if dy.0 != x.0 {
        return Err(KernelError::Shape(format!(
            "dY has {} tokens but X has {}",
            dy.0, x.0
        )));
    }
    same("gradient accumulator vs dYᵀX", acc, (dy.1, x.1))
}

pub fn score<T>(
    w: (usize, usize),
    score: &Score<'_, T>,
    shape: impl Fn(&T) -> (usize, usize),
) -> Result<()> {
    match score {
        Score::Magnitude => Ok(()),
        Score::Wanda { act } => same("activation statistic vs W columns", shape(act), (1, w.1)),
        Score::Gblm { act, grad } => {
            same("activation statistic vs W columns", shape(act), (1, w.1))?;
            same("gradient statistic vs W", shape(grad), w)
        }
    }
}

pub fn pattern(p: &MaskPattern, cols: usize) -> Result<()> {
    match *p {
        MaskPattern::Unstructured { sparsity, .. } => Sparsity::Unstructured(sparsity).validate(),
        MaskPattern::NM { n, m } => {
            let s = Sparsity::NM { n, m };
            s.validate()?;
            s.check_shape(cols)
        }
    }
}

/// §12 `refit_base`: H is cols x cols, W_p (when given) has W's shape.
pub fn refit_base(wp: Option<(usize, usize)>, w: (usize, usize), h: (usize, usize)) -> Result<()> {
    same("Hessian vs W columns", h, (w.1, w.1))?;
    if let Some(p) = wp {
        same("pruned vs original W", p, w)?;
    }
    Ok(())
}

/// §12 `lora_grad`: every operand against W_p (rows x cols); the rank is B's column
/// count. Returns (rows, cols, rank).
pub fn lora(
    wp: (usize, usize),
    mask: (usize, usize),
    delta: (usize, usize),
    delta_h: (usize, usize),
    h: (usize, usize),
    b: (usize, usize),
    a: (usize, usize),
) -> Result<(usize, usize, usize)> {
    let (rows, cols) = wp;
    let r = b.1;
    same("mask vs W_p", mask, (rows, cols))?;
    same("Δ vs W_p", delta, (rows, cols))?;
    same("ΔH vs W_p", delta_h, (rows, cols))?;
    same("Hessian vs W columns", h, (cols, cols))?;
    same("B vs rows x rank", b, (rows, r))?;
    same("A vs rank x cols", a, (r, cols))?;
    Ok((rows, cols, r))
}

/// §12 `adamw_step`: gradient and moments have the parameter's shape.
pub fn adamw(
    param: (usize, usize),
    grad: (usize, usize),
    m: (usize, usize),
    v: (usize, usize),
) -> Result<()> {
    same("gradient vs parameter", grad, param)?;
    same("first moment vs parameter", m, param)?;
    same("second moment vs parameter", v, param)
}

/// §12 `lora_merge`: the mask has W_p's shape, B is rows x r, A is r x cols. Returns
/// (rows, cols, rank).
pub fn lora_merge(
    wp: (usize, usize),
    mask: (usize, usize),
    b: (usize, usize),
    a: (usize, usize),
) -> Result<(usize, usize, usize)> {
    let (rows, cols) = wp;
    let r = b.1;
    same("mask vs W_p", mask, (rows, cols))?;
    same("B vs rows x rank", b, (rows, r))?;
    same("A vs rank x cols", a, (r, cols))?;
    Ok((rows, cols, r))
}

/// §12 `row_scale`: W has Ŵ's shape, H is cols x cols.
pub fn row_scale(w_hat: (usize, usize), w: (usize, usize), h: (usize, usize)) -> Result<()> {
    same("W vs Ŵ", w, w_hat)?;
    same("Hessian vs W columns", h, (w_hat.1, w_hat.1))
}

/// §12 `norm_system`: H is square.
pub fn norm_hessian(h: (usize, usize)) -> Result<()> {
    same("Hessian", h, (h.1, h.1))
}

/// §12 `norm_system`: one (Ŵ, W) pair against the Hessian's `cols`.
pub fn norm_pair(cols: usize, w_hat: (usize, usize), w: (usize, usize)) -> Result<()> {
    same("Ŵ vs Hessian columns", w_hat, (w_hat.0, cols))?;
    same("W vs Ŵ", w, w_hat)
}

/// `spd_solve`: a square system and a 1 x n right-hand side. Returns n.
pub fn spd_solve(m: (usize, usize), rhs: (usize, usize)) -> Result<usize> {
    let n = m.0;
    same("system", m, (n, n))?;
    same("right-hand side", rhs, (1, n))?;
    Ok(n)
}

/// `obs_saliency`: W's columns and Hinv agree, the groups fit. Returns the group count.
pub fn obs_saliency(
    w: (usize, usize),
    hinv: (usize, usize),
    width: usize,
    groups: &[usize],
) -> Result<usize> {
    same("inverse Hessian vs W columns", hinv, (w.1, w.1))?;
    let n = segments(w.1, width, "columns")?;
    if let Some(&g) = groups.iter().find(|&&g| g >= n) {
        return Err(KernelError::InvalidArgument(format!(
            "group {g} is past the {n} groups of width {width}"
        )));
    }
    Ok(n)
}

/// `len` split into segments of `width`: their count.
pub fn segments(len: usize, width: usize, what: &str) -> Result<usize> {
    if width == 0 || !len.is_multiple_of(width) {
        return Err(KernelError::InvalidArgument(format!(
            "{len} {what} do not split into groups of width {width}"
        )));
    }
    Ok(len / width)
}

/// `taylor_saliency`: the statistics the kind reads are there with W's shape. Returns the
/// segment count.
pub fn taylor<T>(inp: &TaylorInputs<'_, T>, shape: impl Fn(&T) -> (usize, usize)) -> Result<usize> {
    let w = shape(inp.w);
    for (need, stat, what) in [
        (inp.kind.needs_mean_grad(), inp.grad_sum, "gradient sum"),
        (
            inp.kind.needs_fisher(),
            inp.grad_sq,
            "squared-gradient accumulator",
        ),
    ] {
        match stat {
            Some(t) => same(what, shape(t), w)?,
            None if need => {
                return Err(KernelError::InvalidArgument(format!(
                    "{} saliency needs the {what}",
                    inp.kind.name()
                )))
            }
            None => {}
        }
    }
    match inp.axis {
        SegmentAxis::Rows => segments(w.0, inp.width, "rows"),
        SegmentAxis::Cols => segments(w.1, inp.width, "columns"),
    }
}

/// `structured_update`: shapes agree; S is sorted, distinct, inside W and not everything.
pub fn structured_update(w: (usize, usize), hinv: (usize, usize), removed: &[usize]) -> Result<()> {
    same("inverse Hessian vs W columns", hinv, (w.1, w.1))?;
    indices(removed, w.1, "removed column")?;
    if removed.is_empty() {
        return Err(KernelError::InvalidArgument("no columns to remove".into()));
    }
    Ok(())
}

/// Indices sorted ascending, distinct, each below `len`.
pub fn indices(idx: &[usize], len: usize, what: &str) -> Result<()> {
    if let Some(&i) = idx.iter().find(|&&i| i >= len) {
        return Err(KernelError::InvalidArgument(format!(
            "{what} {i} is past the {len} there are"
        )));
    }
    if idx.windows(2).any(|p| p[0] >= p[1]) {
        return Err(KernelError::InvalidArgument(format!(
            "{what}s must be sorted and distinct"
        )));
    }
    Ok(())
}

/// `compact`: the kept indices are valid and leave something. Returns the new shape.
pub fn compact(
    w: (usize, usize),
    rows: Option<&[usize]>,
    cols: Option<&[usize]>,
) -> Result<(usize, usize)> {
    let mut shape = w;
    if let Some(r) = rows {
        indices(r, w.0, "kept row")?;
        shape.0 = r.len();
    }
    if let Some(c) = cols {
        indices(c, w.1, "kept column")?;
        shape.1 = c.len();
    }
    if shape.0 == 0 || shape.1 == 0 {
        return Err(KernelError::InvalidArgument(format!(
            "compaction of a {}x{} weight keeps nothing",
            w.0, w.1
        )));
    }
    Ok(shape)
}

pub fn obs<M>(
    w: (usize, usize),
    u: (usize, usize),
    sel: &ObsSelection<'_, M>,
    block: usize,
) -> Result<()> {
    same("Hessian factor vs W columns", u, (w.1, w.1))?;
    if block == 0 {
        return Err(KernelError::InvalidArgument("OBS block size is 0".into()));
    }
    match *sel {
        ObsSelection::Unstructured(p) => Sparsity::Unstructured(p).validate(),
        ObsSelection::NM { n, m } => {
            let s = Sparsity::NM { n, m };
            s.validate()?;
            s.check_shape(w.1)?;
            if !block.is_multiple_of(m) {
                return Err(KernelError::InvalidArgument(format!(
                    "OBS block size {block} is not a multiple of M = {m}"
                )));
            }
            Ok(())
        }
        ObsSelection::Given(_) => Ok(()),
    }
}

/// §14 linear: X [N, cols] against W [rows, cols].
pub fn linear(x: (usize, usize), w: (usize, usize)) -> Result<()> {
    if x.1 != w.1 {
        return Err(KernelError::Shape(format!(
            "linear: X is {}x{} but W is {}x{} (columns must agree)",
            x.0, x.1, w.0, w.1
        )));
    }
    Ok(())
}

pub fn rms_norm(x: (usize, usize), gamma: (usize, usize), eps: f64) -> Result<()> {
    same("RMSNorm weight vs X columns", gamma, (1, x.1))?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(KernelError::InvalidArgument(format!(
            "RMSNorm eps {eps} is not a finite number >= 0"
        )));
    }
    Ok(())
}

/// Returns (seq, head_dim).
pub fn rope(x: (usize, usize), cos: (usize, usize), sin: (usize, usize)) -> Result<(usize, usize)> {
    same("RoPE sin vs cos table", sin, cos)?;
    let (seq, e) = (cos.0, 2 * cos.1);
    if seq == 0 || e == 0 || !x.1.is_multiple_of(e) {
        return Err(KernelError::Shape(format!(
            "RoPE: tables {}x{} (head_dim {e}) do not fit rows of {} columns",
            cos.0, cos.1, x.1
        )));
    }
    window_rows(x.0, seq, "RoPE")?;
    Ok((seq, e))
}

fn window_rows(rows: usize, seq: usize, what: &str) -> Result<()> {
    if seq == 0 || !rows.is_multiple_of(seq) {
        return Err(KernelError::Shape(format!(
            "{what}: {rows} rows are not whole windows of {seq}"
        )));
    }
    Ok(())
}

/// Returns head_dim.
pub fn attention(
    q: (usize, usize),
    k: (usize, usize),
    v: (usize, usize),
    heads: usize,
    kv_heads: usize,
    seq: usize,
) -> Result<usize> {
    same("attention V vs K", v, k)?;
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(KernelError::InvalidArgument(format!(
            "attention: {heads} query heads are not a multiple of {kv_heads} KV heads"
        )));
    }
    if !q.1.is_multiple_of(heads) || q.1 == 0 {
        return Err(KernelError::Shape(format!(
            "attention: Q has {} columns, not {heads} heads' worth",
            q.1
        )));
    }
    let e = q.1 / heads;
    if k.1 != kv_heads * e || k.0 != q.0 {
        return Err(KernelError::Shape(format!(
            "attention: K is {}x{}, expected {}x{} ({kv_heads} KV heads of {e})",
            k.0,
            k.1,
            q.0,
            kv_heads * e
        )));
    }
    window_rows(q.0, seq, "attention")?;
    Ok(e)
}

pub fn ids(ids: &[u32], vocab: usize) -> Result<()> {
    if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        return Err(KernelError::InvalidArgument(format!(
            "token id {id} at position {i} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(())
}

/// §15 linear backward: X [N, cols], W [rows, cols], dY [N, rows].
pub fn linear_backward(x: (usize, usize), w: (usize, usize), dy: (usize, usize)) -> Result<()> {
    linear(x, w)?;
    same("linear backward: dY vs X·Wᵀ", dy, (x.0, w.0))
}

/// §15 RMSNorm backward: the forward's checks, and dy shaped as x.
pub fn rms_norm_backward(
    x: (usize, usize),
    gamma: (usize, usize),
    dy: (usize, usize),
    eps: f64,
) -> Result<()> {
    rms_norm(x, gamma, eps)?;
    same("RMSNorm backward: dy vs x", dy, x)
}

/// §15 SiLU-gate backward: gate, up and da of one shape.
pub fn silu_mul_backward(
    gate: (usize, usize),
    up: (usize, usize),
    da: (usize, usize),
) -> Result<()> {
    same("SiLU-gate backward: up vs gate", up, gate)?;
    same("SiLU-gate backward: da vs gate", da, gate)
}

/// §15 embedding backward: one id per row of dh, each inside the vocabulary.
pub fn embed_backward(dh: (usize, usize), ids: &[u32], vocab: usize) -> Result<()> {
    same(
        "embedding backward: dh rows vs ids",
        (dh.0, 1),
        (ids.len(), 1),
    )?;
    self::ids(ids, vocab)
}

/// §15 attention backward: the forward's shapes, o and dO shaped as q, L [N, heads].
/// Returns head_dim.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: (usize, usize),
    k: (usize, usize),
    v: (usize, usize),
    o: (usize, usize),
    lse: (usize, usize),
    d_o: (usize, usize),
    heads: usize,
    kv_heads: usize,
    seq: usize,
) -> Result<usize> {
    let e = attention(q, k, v, heads, kv_heads, seq)?;
    same("attention backward: O vs Q", o, q)?;
    same("attention backward: dO vs Q", d_o, q)?;
    same("attention backward: L vs rows x heads", lse, (q.0, heads))?;
    Ok(e)
}

/// §15 LM-head backward: dh shaped as h, the chunk and targets as the forward's, lse [N, 1].
pub fn lm_head_backward(
    dh: (usize, usize),
    h: (usize, usize),
    w: (usize, usize),
    offset: usize,
    targets: usize,
    lse: (usize, usize),
) -> Result<()> {
    lm_head((h.0, 3), h, w, offset, targets)?;
    same("LM-head backward: dh vs h", dh, h)?;
    same("LM-head backward: lse vs rows of h", lse, (h.0, 1))
}

pub fn lm_head(
    state: (usize, usize),
    h: (usize, usize),
    w: (usize, usize),
    offset: usize,
    targets: usize,
) -> Result<()> {
    linear(h, w)?;
    same("LM-head state vs rows", state, (h.0, 3))?;
    if targets != h.0 {
        return Err(KernelError::Shape(format!(
            "LM head: {targets} targets for {} rows",
            h.0
        )));
    }
    // Token ids are u32 with NO_TARGET = u32::MAX marking rows without one, so every
    // vocabulary row a chunk holds must have an id below it.
    match offset.checked_add(w.0) {
        Some(end) if end <= NO_TARGET as usize => Ok(()),
        _ => Err(KernelError::InvalidArgument(format!(
            "LM head: vocabulary rows {offset}..{} do not fit 32-bit token ids",
            offset.saturating_add(w.0)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk whose last vocabulary row would need the id NO_TARGET (or past it) is refused
    /// by the one check every backend calls; one that ends just below it is accepted.
    #[test]
    fn lm_head_chunks_must_fit_32_bit_token_ids() {
        let last = NO_TARGET as usize;
        assert!(lm_head((2, 3), (2, 8), (4, 8), last - 4, 2).is_ok());
        for offset in [last - 3, last, usize::MAX - 1] {
            let e = lm_head((2, 3), (2, 8), (4, 8), offset, 2).unwrap_err();
            assert!(e.to_string().contains("32-bit token ids"), "{e}");
        }
    }
}
