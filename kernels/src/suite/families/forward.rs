//! The §14 forward ops of a LLaMA decoder and its ends: the linear, RMSNorm, RoPE, causal GQA
//! attention, the SiLU-gate product, the residual add, the embedding gather and the chunked LM
//! head. Everything the suite knows of them is here: their names and parameters, their cases
//! (small odd shapes and a model's pass), their work model, their inputs, how they run on a
//! backend and how their outputs are compared with the reference's.

use serde::{Deserialize, Serialize};

use super::{not_in_family, Family};
use crate::error::Result;
use crate::ops::{nll_from_state, tolerance as tol, Backend, NO_TARGET};
use crate::rng::{heavy_tailed, heavy_tailed_positive, Rng};
use crate::suite::case::{LayerDims, ModelShapes, Op, OpCase};
use crate::suite::compare::{value_check, Check};
use crate::suite::inputs::{scaled, CaseInputs};
use crate::suite::run::{never_ran, CaseOutput};
use crate::tensor::Matrix;

const FAMILY: Family = Family::Forward;

/// The RMSNorm ε of every RMS_NORM case: LLaMA 2's and 3's `rms_norm_eps`.
pub const RMS_NORM_CASE_EPS: f64 = 1e-5;

/// The vocabulary rows of one LM-head chunk for hidden size `d`: at most 4096, and at most
/// 64 MiB of f32 (half the 128 MiB storage binding some Vulkan drivers cap at, so that a chunk
/// always binds whole): 4096 rows at d = 4096, 2048 at d = 8192; a multiple of 64 rows.
pub fn lm_head_chunk_rows(d: usize) -> usize {
    const MAX_ROWS: usize = 4096;
    const MAX_BYTES: usize = 64 << 20;
    let fit = MAX_BYTES / (4 * d.max(1)) / 64 * 64;
    fit.clamp(64, MAX_ROWS)
}

// ---- The cases ----

/// A case of `n` token rows against a `rows` x `cols` operand: the forward and backward
/// families' shape.
pub(in crate::suite) fn token_case(op: Op, n: usize, rows: usize, cols: usize) -> OpCase {
    OpCase::new(op, rows, cols).tokens(n, 1)
}

/// RoPE's or attention's case (forward or backward) over `windows` stacked windows of the
/// op's `seq` rows, each row the op's heads of `head_dim` (for attention, Q's width).
pub(in crate::suite) fn windowed(op: Op, windows: usize) -> OpCase {
    let (heads, head_dim, seq) = match op {
        Op::Rope {
            heads,
            head_dim,
            seq,
            ..
        }
        | Op::RopeBackward {
            heads,
            head_dim,
            seq,
            ..
        }
        | Op::Attention {
            heads,
            head_dim,
            seq,
            ..
        }
        | Op::AttentionBackward {
            heads,
            head_dim,
            seq,
            ..
        } => (heads, head_dim, seq),
        op => unreachable!("{op:?} is not laid out in windows of heads"),
    };
    token_case(op, windows * seq, 1, heads * head_dim)
}

fn forward(op: Op, n: usize, rows: usize, cols: usize) -> OpCase {
    token_case(op, n, rows, cols)
}

/// RoPE on `windows` stacked windows of `seq` rows of `heads` heads of `head_dim`.
fn rope(heads: usize, head_dim: usize, seq: usize, windows: usize, theta: f64) -> OpCase {
    let op = Op::Rope {
        heads,
        head_dim,
        seq,
        theta,
    };
    windowed(op, windows)
}

/// Causal attention on `windows` stacked windows of `seq` rows.
fn attention(
    (heads, kv_heads, head_dim): (usize, usize, usize),
    seq: usize,
    windows: usize,
) -> OpCase {
    let op = Op::Attention {
        heads,
        kv_heads,
        head_dim,
        seq,
    };
    windowed(op, windows)
}

fn lm_head(n: usize, vocab: usize, d: usize, chunk: usize) -> OpCase {
    forward(Op::LmHead { chunk }, n, vocab, d)
}

/// The forward ops of §14 on odd shapes: one row, widths that are not multiples of 64 (37,
/// 130, 300), X past a 64-row tile, seq not a multiple of 16 (13, 37, 70), seq = 1 (every
/// position 0, attention returns V), three windows stacked, GQA with 6 heads over 3 KV heads of
/// 16, MQA, e = 128 once, a table with repeated ids, and LM heads of three chunks with the last
/// one short, of one chunk, and with rows without a target.
pub fn small_cases() -> Vec<OpCase> {
    use Op::{Embed, Linear, ResidualAdd, RmsNorm, SiluMul};
    let (llama, llama3) = (10_000.0, 500_000.0);
    vec![
        forward(Linear, 1, 13, 37),
        forward(Linear, 3, 13, 300),
        forward(Linear, 17, 1, 300),
        forward(Linear, 67, 130, 129),
        forward(RmsNorm, 1, 1, 37),
        forward(RmsNorm, 13, 1, 300),
        forward(RmsNorm, 3, 1, 4100),
        rope(6, 16, 13, 3, llama),
        rope(3, 16, 1, 4, llama),
        rope(1, 128, 37, 1, llama3),
        rope(2, 32, 70, 2, llama3),
        // Halves of 6: not whole vec4s, the one-pair-per-thread kernel.
        rope(2, 12, 5, 1, llama),
        attention((6, 3, 16), 13, 3),
        attention((6, 3, 16), 1, 4),
        attention((1, 1, 16), 1, 1),
        attention((4, 1, 32), 37, 1),
        attention((2, 2, 128), 70, 2),
        forward(SiluMul, 1, 1, 37),
        forward(SiluMul, 13, 1, 300),
        forward(SiluMul, 3, 1, 1000),
        forward(ResidualAdd, 1, 1, 37),
        forward(ResidualAdd, 13, 1, 300),
        forward(Embed, 13, 50, 37),
        forward(Embed, 1, 1000, 300),
        forward(Embed, 40, 7, 130),
        lm_head(13, 300, 37, 128),
        lm_head(5, 77, 300, 32),
        lm_head(1, 1000, 130, 1000),
        lm_head(67, 250, 64, 100),
    ]
}

/// The sizes of a model's forward pass beyond one layer's: the vocabulary (embedding table
/// and LM head) and the RoPE base.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardDims {
    pub layer: LayerDims,
    pub vocab: usize,
    pub rope_theta: f64,
}

/// The forward ops of one model's pass over one window of `seq` tokens (N = seq): the linear
/// of every distinct weight shape of the layer, RMSNorm of the hidden state, RoPE on the
/// queries and keys, causal attention, the SiLU-gate product, the residual add, the embedding
/// gather and the LM head over the whole vocabulary in chunks of [`lm_head_chunk_rows`].
pub fn forward_cases(dims: &ForwardDims, seq: usize) -> Vec<OpCase> {
    use Op::{Embed, Linear, ResidualAdd, RmsNorm, SiluMul};
    let ForwardDims {
        layer:
            LayerDims {
                hidden: d,
                intermediate: f,
                heads,
                kv_heads: g,
                head_dim: e,
            },
        vocab,
        rope_theta,
    } = *dims;
    let n = seq;
    let mut v: Vec<OpCase> = [(heads * e, d), (g * e, d), (d, heads * e), (f, d), (d, f)]
        .into_iter()
        .map(|(rows, cols)| forward(Linear, n, rows, cols))
        .collect();
    v.extend([
        forward(RmsNorm, n, 1, d),
        rope(heads, e, seq, 1, rope_theta),
        rope(g, e, seq, 1, rope_theta),
        attention((heads, g, e), seq, 1),
        forward(SiluMul, n, 1, f),
        forward(ResidualAdd, n, 1, d),
        forward(Embed, n, vocab, d),
        lm_head(n, vocab, d, lm_head_chunk_rows(d)),
    ]);
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|c| seen.insert(c.name()));
    v
}

/// At a model's shapes.
pub(in crate::suite) fn model_cases(m: &ModelShapes) -> Vec<OpCase> {
    forward_cases(&m.forward, m.tokens)
}

// ---- Names and work model ----

/// The op's name without shape, e.g. `RMS_NORM`.
pub(in crate::suite) fn op_name(op: Op) -> String {
    match op {
        Op::Linear => "LINEAR".into(),
        Op::RmsNorm => "RMS_NORM".into(),
        Op::Rope { .. } => "ROPE".into(),
        Op::Attention { .. } => "ATTENTION".into(),
        Op::SiluMul => "SILU_MUL".into(),
        Op::ResidualAdd => "RESIDUAL_ADD".into(),
        Op::Embed => "EMBED".into(),
        Op::LmHead { .. } => "LM_HEAD".into(),
        op => not_in_family(op, FAMILY),
    }
}

/// The key parameters of the canonical name.
pub(in crate::suite) fn params(case: &OpCase) -> String {
    let (r, c, t) = (case.rows, case.cols, case.tokens);
    match case.op {
        Op::Linear => format!("n={t},rows={r},cols={c}"),
        Op::RmsNorm | Op::SiluMul | Op::ResidualAdd => format!("n={t},cols={c}"),
        Op::Rope {
            heads,
            head_dim,
            seq,
            theta,
        } => format!("heads={heads},head_dim={head_dim},seq={seq},theta={theta},n={t}"),
        Op::Attention {
            heads,
            kv_heads,
            head_dim,
            seq,
        } => format!("heads={heads},kv_heads={kv_heads},head_dim={head_dim},seq={seq},n={t}"),
        Op::Embed => format!("n={t},vocab={r},cols={c}"),
        Op::LmHead { chunk } => format!("chunk={chunk},n={t},vocab={r},cols={c}"),
        op => not_in_family(op, FAMILY),
    }
}

/// Bytes moved at the least (f32 tensors): each input read once, each output written once.
pub(in crate::suite) fn bytes(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    let n = case.tokens as u64;
    let f = 4u64;
    match case.op {
        // X and W read, Y written.
        Op::Linear => f * (n * c + r * c + n * r),
        // X read, Y written, γ read.
        Op::RmsNorm => f * (2 * n * c + c),
        // X read and written in place, the cos and sin tables (seq x e/2 each) read.
        Op::Rope {
            heads,
            head_dim,
            seq,
            ..
        } => f * (2 * n * (heads * head_dim) as u64 + (seq * head_dim) as u64),
        // Q read and the output written, K and V read once (a flash kernel streams them
        // through on-chip memory; the scores never reach device memory).
        Op::Attention {
            heads,
            kv_heads,
            head_dim,
            ..
        } => f * 2 * n * ((heads + kv_heads) * head_dim) as u64,
        // Gate and up read, the product written; x and y read, x written.
        Op::SiluMul | Op::ResidualAdd => f * 3 * n * c,
        // The gathered rows read and written, the ids read.
        Op::Embed => f * (2 * n * c + n),
        // W read once over its chunks; each chunk's call reads h and the targets and reads
        // and writes the [N, 3] state.
        Op::LmHead { chunk } => {
            let calls = case.rows.div_ceil(chunk.max(1)) as u64;
            f * (r * c + calls * (n * c + n + 2 * 3 * n))
        }
        op => not_in_family(op, FAMILY),
    }
}

/// Floating-point operations of the math as ALGORITHMS.md counts them.
pub(in crate::suite) fn flops(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    let n = case.tokens as u64;
    match case.op {
        Op::Linear => 2 * n * r * c,
        // Per entry a square and an add for the mean, then the two multiplies by 1/rms
        // and γ (the per-row root and division not counted).
        Op::RmsNorm => 4 * n * c,
        // Per rotated pair four multiplies and two adds: three per entry.
        Op::Rope {
            heads, head_dim, ..
        } => 3 * n * (heads * head_dim) as u64,
        // Causal, per window of seq rows: the query at position p scores p + 1 keys (q·k,
        // 2e) and sums as many rows of V (2e), so a window costs
        // 4e·Σ_{p<seq}(p + 1) = 4e·seq(seq + 1)/2 per head, and N = windows·seq rows cost
        // 4·N·(seq + 1)/2·heads·e = 2·N·(seq + 1)·heads·e. The softmax's max, exp and sum
        // (a few per score) are not counted, as in FLOP counts of attention generally.
        Op::Attention {
            heads,
            head_dim,
            seq,
            ..
        } => 2 * n * (seq as u64 + 1) * (heads * head_dim) as u64,
        // silu(g)·u = g / (1 + e^−g) · u: the exp (counted as one), add, divide, multiply.
        Op::SiluMul => 4 * n * c,
        Op::ResidualAdd => n * c,
        Op::Embed => 0,
        // The logits h·Wᵀ over the whole vocabulary, then per logit the running max, the
        // subtraction, the exp (counted as one) and the sum.
        Op::LmHead { .. } => 2 * n * c * r + 4 * n * r,
        op => not_in_family(op, FAMILY),
    }
}

/// Whether the op's cost is dominated by arithmetic rather than memory traffic.
pub(in crate::suite) fn compute_bound(case: &OpCase) -> bool {
    match case.op {
        // About N/2 flops per byte for N rows of X against an f32 weight (the weight's
        // bytes dominate), so past the f32 balance from 64 rows as the product cases; the
        // LM head the same, N/2 over (1 + N/chunk).
        Op::Linear | Op::LmHead { .. } => case.tokens >= 64,
        // (seq + 1)·heads / (4·(heads + kv_heads)) flops per byte, at least (seq + 1)/8:
        // 16 from seq = 128.
        Op::Attention { seq, .. } => seq >= 128,
        // A few flops per entry moved.
        Op::RmsNorm | Op::Rope { .. } | Op::SiluMul | Op::ResidualAdd | Op::Embed => false,
        op => not_in_family(op, FAMILY),
    }
}

// ---- Inputs ----

/// The case's deterministic inputs.
pub(in crate::suite) fn inputs(case: &OpCase) -> Result<CaseInputs> {
    let (r, c, s) = (case.rows, case.cols, case.seed);
    let n = case.tokens;
    let mut inp = CaseInputs::default();
    match case.op {
        Op::Linear => {
            inp.tensors = vec![
                ("x", heavy_tailed(n, c, s)),
                ("w", scaled(heavy_tailed(r, c, s + 1), 0.02)),
            ];
        }
        Op::RmsNorm => {
            inp.tensors = vec![
                ("x", rms_norm_input(n, c, s)),
                ("gamma", heavy_tailed_positive(1, c, s + 1)),
            ];
        }
        Op::Rope {
            head_dim,
            seq,
            theta,
            ..
        } => {
            let (cos, sin) = rope_tables(theta, head_dim, seq);
            inp.tensors = vec![("x", heavy_tailed(n, c, s)), ("cos", cos), ("sin", sin)];
        }
        Op::Attention {
            kv_heads, head_dim, ..
        } => {
            let kc = kv_heads * head_dim;
            inp.tensors = vec![
                ("q", attention_operand(n, c, head_dim, s)),
                ("k", attention_operand(n, kc, head_dim, s + 1)),
                ("v", heavy_tailed(n, kc, s + 2)),
            ];
        }
        Op::SiluMul => {
            inp.tensors = vec![
                ("gate", heavy_tailed(n, c, s)),
                ("up", heavy_tailed(n, c, s + 1)),
            ];
        }
        Op::ResidualAdd => {
            inp.tensors = vec![
                ("x", heavy_tailed(n, c, s)),
                ("y", heavy_tailed(n, c, s + 1)),
            ];
        }
        Op::Embed => {
            inp.token_ids = vec![("ids", embed_ids(n, r, s + 1))];
            inp.tensors = vec![("table", heavy_tailed_tall(r, c, s)?)];
        }
        Op::LmHead { chunk } => {
            let (h, w, targets) = lm_head_operands(n, r, c, chunk, s)?;
            inp.token_ids = vec![("targets", targets)];
            inp.tensors = vec![
                ("h", h),
                ("w", w),
                // Whatever the state held before: the first chunk starts it afresh.
                ("state", heavy_tailed(n, 3, s + 3)),
            ];
        }
        op => not_in_family(op, FAMILY),
    }
    Ok(inp)
}

/// RMSNorm's input: heavy-tailed rows, every third so small that ε is most of its mean
/// square, so that an ε left out or added twice moves those rows by O(1).
pub(in crate::suite) fn rms_norm_input(n: usize, c: usize, seed: u64) -> Matrix {
    let mut x = heavy_tailed(n, c, seed);
    for t in (2..n).step_by(3) {
        for v in &mut x.data[t * c..(t + 1) * c] {
            *v *= 1e-4;
        }
    }
    x
}

/// `n` seeded token ids below `vocab`: the first the table's last row (which an off-by-one
/// reads past) and the second its first.
pub(in crate::suite) fn embed_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    let mut ids: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    for (i, id) in [vocab - 1, 0].into_iter().enumerate().take(n) {
        ids[i] = id as u32;
    }
    ids
}

/// The RoPE tables cos and sin [seq, e/2] for base `theta`: entry (p, i) of position p and
/// frequency θ^(−2i/e), the angle and both functions in f64, stored as f32 (HF's
/// `rotate_half` convention, without any model's frequency scaling).
pub fn rope_tables(theta: f64, head_dim: usize, seq: usize) -> (Matrix, Matrix) {
    let half = head_dim / 2;
    let angle = |p: usize, i: usize| p as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64);
    (
        Matrix::from_fn(seq, half, |p, i| angle(p, i).cos() as f32),
        Matrix::from_fn(seq, half, |p, i| angle(p, i).sin() as f32),
    )
}

/// A heavy-tailed matrix of many rows (an embedding table, an LM head) as `heavy_tailed`
/// draws it, Student-t(3) entries with 3% of the columns 10-100x larger, but in blocks of 4096
/// rows in parallel, each block's entries from its own stream (the column scales shared): the
/// 525M values of LLaMA 3's 128256 x 4096 head take about a minute on one core. Fewer rows
/// are `heavy_tailed` itself.
fn heavy_tailed_tall(rows: usize, cols: usize, seed: u64) -> Result<Matrix> {
    use rayon::prelude::*;
    const BLOCK: usize = 4096;
    // Where only shapes are wanted, `heavy_tailed` gives zeros without a draw.
    if rows <= BLOCK || crate::rng::draws_skipped() {
        return Ok(heavy_tailed(rows, cols, seed));
    }
    let mut rng = Rng::new(seed);
    let col_scale: Vec<f64> = (0..cols)
        .map(|_| {
            if rng.uniform() < 0.03 {
                10.0 + 90.0 * rng.uniform()
            } else {
                0.5 + rng.uniform()
            }
        })
        .collect();
    let mut data = vec![0.0f32; rows * cols];
    data.par_chunks_mut(BLOCK * cols.max(1))
        .enumerate()
        .for_each(|(i, part)| {
            let mut rng = Rng::derive(seed, &[i as u64]);
            for (k, v) in part.iter_mut().enumerate() {
                let x = (rng.student_t(3) * col_scale[k % cols]) as f32;
                *v = if x == 0.0 { f32::MIN_POSITIVE } else { x };
            }
        });
    Matrix::new(rows, cols, data)
}

/// An LM-head case's h [n, d], W [vocab, d] and targets: h as the final RMSNorm leaves it
/// (unit RMS per row); W scaled so that the logits have a standard deviation of a few units,
/// as a trained model's (their Student-t tails reach tens: some rows' softmax is nearly
/// one-hot).
pub(in crate::suite) fn lm_head_operands(
    n: usize,
    vocab: usize,
    d: usize,
    chunk: usize,
    seed: u64,
) -> Result<(Matrix, Matrix, Vec<u32>)> {
    let h = unit_rms_rows(heavy_tailed(n, d, seed));
    let w = heavy_tailed_tall(vocab, d, seed + 1)?;
    let k = (LOGIT_STD / logit_std(&h, &w)) as f32;
    Ok((h, scaled(w, k), lm_head_targets(n, vocab, chunk, seed + 2)))
}

/// The standard deviation an LM-head case's logits are scaled to (a trained LLaMA's are of a
/// few units).
const LOGIT_STD: f64 = 3.0;

/// The standard deviation of h·Wᵀ over up to 16 rows of h and 512 rows of W, in f64.
fn logit_std(h: &Matrix, w: &Matrix) -> f64 {
    let logits: Vec<f64> = (0..h.rows.min(16))
        .flat_map(|t| {
            (0..w.rows.min(512)).map(move |j| {
                h.row(t)
                    .iter()
                    .zip(w.row(j))
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
            })
        })
        .collect();
    let n = logits.len().max(1) as f64;
    let mean = logits.iter().sum::<f64>() / n;
    let var = logits.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
    var.sqrt().max(f64::MIN_POSITIVE)
}

/// Each row scaled to a root mean square of 1.
fn unit_rms_rows(mut m: Matrix) -> Matrix {
    let c = m.cols.max(1);
    for row in m.data.chunks_mut(c) {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / c as f64;
        let k = (1.0 / ms.sqrt()) as f32;
        for v in row {
            *v *= k;
        }
    }
    m
}

/// Queries or keys whose scores q·k/√e spread over a few units, as a trained model's: each
/// head's slice of a heavy-tailed row scaled to a root mean square of √2. The scores then have
/// a standard deviation of 1 to 2 on the cases' shapes, and the largest softmax weight of a
/// query over ten or more keys is mostly between 0.1 and 0.8: neither uniform nor one-hot.
pub(in crate::suite) fn attention_operand(
    rows: usize,
    cols: usize,
    head_dim: usize,
    seed: u64,
) -> Matrix {
    let mut m = heavy_tailed(rows, cols, seed);
    let target = std::f64::consts::SQRT_2;
    for head in m.data.chunks_mut(head_dim.max(1)) {
        let ms = head.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / head.len() as f64;
        let k = (target / ms.sqrt()) as f32;
        for v in head {
            *v *= k;
        }
    }
    m
}

/// Seeded next-token targets in 0..vocab: the first rows name the vocabulary's last entry
/// (in the last, short chunk), the last of the first chunk and the first of the second, so
/// that both sides of a chunk boundary are read; every fifth row has no target (`NO_TARGET`,
/// as a window's last position).
fn lm_head_targets(rows: usize, vocab: usize, chunk: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    let mut t: Vec<u32> = (0..rows)
        .map(|i| {
            if i % 5 == 4 {
                NO_TARGET
            } else {
                rng.below(vocab) as u32
            }
        })
        .collect();
    let mut edges = vec![vocab - 1];
    if chunk < vocab {
        edges.extend([chunk - 1, chunk]);
    }
    for (i, e) in edges.into_iter().enumerate().take(rows.min(4)) {
        t[i] = e as u32;
    }
    t
}

// ---- Running on a backend ----

/// A forward case's device tensors, by op.
pub enum Prepared<B: Backend> {
    Linear {
        x: B::Tensor,
        w: B::Tensor,
        out: Option<B::Tensor>,
    },
    RmsNorm {
        x: B::Tensor,
        gamma: B::Tensor,
        out: Option<B::Tensor>,
    },
    /// In place: the benches' repeats rotate the same rows again, which keeps their norms.
    Rope {
        x: B::Tensor,
        cos: B::Tensor,
        sin: B::Tensor,
    },
    Attention {
        q: B::Tensor,
        k: B::Tensor,
        v: B::Tensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
        out: Option<B::Tensor>,
    },
    SiluMul {
        gate: B::Tensor,
        up: B::Tensor,
        out: Option<B::Tensor>,
    },
    /// In place: the benches' repeats add y again.
    ResidualAdd { x: B::Tensor, y: B::Tensor },
    Embed {
        table: B::Tensor,
        ids: Vec<u32>,
        out: Option<B::Tensor>,
    },
    /// Every chunk of W in its own tensor, run through `lm_head_chunk` in order; the first
    /// starts the state afresh, so each run (the benches' repeats too) computes it whole.
    LmHead {
        state: B::Tensor,
        h: B::Tensor,
        chunks: Vec<B::Tensor>,
        chunk: usize,
        targets: Vec<u32>,
        ran: bool,
    },
}

pub(in crate::suite) fn prepare<B: Backend>(
    b: &B,
    case: &OpCase,
    inp: &CaseInputs,
) -> Result<Prepared<B>> {
    let up = |name: &str| b.upload(inp.get(name));
    Ok(match case.op {
        Op::Linear => Prepared::Linear {
            x: up("x")?,
            w: up("w")?,
            out: None,
        },
        Op::RmsNorm => Prepared::RmsNorm {
            x: up("x")?,
            gamma: up("gamma")?,
            out: None,
        },
        Op::Rope { .. } => Prepared::Rope {
            x: up("x")?,
            cos: up("cos")?,
            sin: up("sin")?,
        },
        Op::Attention {
            heads,
            kv_heads,
            seq,
            ..
        } => Prepared::Attention {
            q: up("q")?,
            k: up("k")?,
            v: up("v")?,
            heads,
            kv_heads,
            seq,
            out: None,
        },
        Op::SiluMul => Prepared::SiluMul {
            gate: up("gate")?,
            up: up("up")?,
            out: None,
        },
        Op::ResidualAdd => Prepared::ResidualAdd {
            x: up("x")?,
            y: up("y")?,
        },
        Op::Embed => Prepared::Embed {
            table: up("table")?,
            ids: inp.token_ids("ids").to_vec(),
            out: None,
        },
        Op::LmHead { chunk } => Prepared::LmHead {
            state: up("state")?,
            h: up("h")?,
            chunks: upload_row_chunks(b, inp.get("w"), chunk)?,
            chunk,
            targets: inp.token_ids("targets").to_vec(),
            ran: false,
        },
        op => not_in_family(op, FAMILY),
    })
}

/// Rows [i·chunk, (i + 1)·chunk) of `w` as tensor i, the last one short where `chunk` does not
/// divide the rows; each copied on the host only while it is uploaded.
pub(in crate::suite) fn upload_row_chunks<B: Backend>(
    b: &B,
    w: &Matrix,
    chunk: usize,
) -> Result<Vec<B::Tensor>> {
    if chunk == 0 {
        return Err(crate::error::KernelError::InvalidArgument(
            "an LM-head case needs chunks of at least one row".into(),
        ));
    }
    (0..w.rows)
        .step_by(chunk)
        .map(|r0| {
            let r1 = (r0 + chunk).min(w.rows);
            let part = Matrix::new(r1 - r0, w.cols, w.data[r0 * w.cols..r1 * w.cols].to_vec())?;
            b.upload(&part)
        })
        .collect()
}

/// Runs the op once; RoPE and the residual add update their input in place.
pub(in crate::suite) fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::Linear { x, w, out } => {
            *out = Some(b.linear(x, w)?);
            Ok(())
        }
        Prepared::RmsNorm { x, gamma, out } => {
            *out = Some(b.rms_norm(x, gamma, RMS_NORM_CASE_EPS)?);
            Ok(())
        }
        Prepared::Rope { x, cos, sin } => b.rope(x, cos, sin),
        Prepared::Attention {
            q,
            k,
            v,
            heads,
            kv_heads,
            seq,
            out,
        } => {
            *out = Some(b.attention(q, k, v, *heads, *kv_heads, *seq)?);
            Ok(())
        }
        Prepared::SiluMul { gate, up, out } => {
            *out = Some(b.silu_mul(gate, up)?);
            Ok(())
        }
        Prepared::ResidualAdd { x, y } => b.residual_add(x, y),
        Prepared::Embed { table, ids, out } => {
            *out = Some(b.embed(table, ids)?);
            Ok(())
        }
        Prepared::LmHead {
            state,
            h,
            chunks,
            chunk,
            targets,
            ran,
        } => {
            for (i, w) in chunks.iter().enumerate() {
                b.lm_head_chunk(state, h, w, i * *chunk, targets)?;
            }
            *ran = true;
            Ok(())
        }
    }
}

pub(in crate::suite) fn collect<B: Backend>(b: &B, p: &Prepared<B>) -> Result<CaseOutput> {
    let mut o = CaseOutput::default();
    match p {
        Prepared::Linear { out, .. }
        | Prepared::RmsNorm { out, .. }
        | Prepared::Attention { out, .. }
        | Prepared::SiluMul { out, .. }
        | Prepared::Embed { out, .. } => {
            o.values
                .push(("y", b.download(out.as_ref().ok_or_else(never_ran)?)?));
        }
        Prepared::Rope { x, .. } | Prepared::ResidualAdd { x, .. } => {
            o.values.push(("x", b.download(x)?))
        }
        Prepared::LmHead { state, ran, .. } => {
            if !*ran {
                return Err(never_ran());
            }
            o.values.push(("state", b.download(state)?));
        }
    }
    Ok(o)
}

// ---- Comparison ----

/// The checks of one case: reference output `want`, backend output `got`.
pub(in crate::suite) fn compare(
    case: &OpCase,
    _inputs: &CaseInputs,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    match case.op {
        Op::Linear | Op::Attention { .. } => vec![value_check("y", want, got, tol::FORWARD_GEMM)],
        Op::RmsNorm | Op::SiluMul => vec![value_check("y", want, got, tol::FORWARD_ELEMENTWISE)],
        Op::Rope { .. } | Op::ResidualAdd => {
            vec![value_check("x", want, got, tol::FORWARD_ELEMENTWISE)]
        }
        // A gather of f32 rows is exact.
        Op::Embed => vec![value_check("y", want, got, 0.0)],
        Op::LmHead { .. } => vec![nll_check(want, got)],
        op => not_in_family(op, FAMILY),
    }
}

/// The LM head's per-row loss m + ln s − z from both states: the largest |Δnll| / max(1, |nll|)
/// over the rows (rows without a target included: their nll is the log-sum-exp alone).
fn nll_check(want: &CaseOutput, got: &CaseOutput) -> Check {
    let e = match (want.value("state"), got.value("state")) {
        (Some(a), Some(b)) if a.shape() == b.shape() => nll_from_state(a)
            .iter()
            .zip(nll_from_state(b))
            .map(|(&w, g)| (g - w).abs() / w.abs().max(1.0))
            .fold(0.0, |m: f64, e| {
                if e.is_nan() || m.is_nan() {
                    f64::NAN
                } else {
                    m.max(e)
                }
            }),
        _ => f64::INFINITY,
    };
    Check::new("nll", "max_relative", e, tol::NLL_REL)
}

#[cfg(test)]
mod tests {
    use super::super::llama::{LLAMA2_70B, LLAMA3_8B, LLAMA_7B};
    use super::*;

    #[test]
    fn forward_cases_follow_the_model_and_fit_a_binding() {
        let names = |d: &ForwardDims| -> Vec<String> {
            forward_cases(d, 2048).iter().map(|c| c.name()).collect()
        };
        let llama3 = ForwardDims {
            layer: LLAMA3_8B,
            vocab: 128_256,
            rope_theta: 500_000.0,
        };
        let gqa = names(&llama3);
        for want in [
            "LINEAR(n=2048,rows=4096,cols=4096)",
            "LINEAR(n=2048,rows=1024,cols=4096)",
            "LINEAR(n=2048,rows=14336,cols=4096)",
            "LINEAR(n=2048,rows=4096,cols=14336)",
            "RMS_NORM(n=2048,cols=4096)",
            "ROPE(heads=32,head_dim=128,seq=2048,theta=500000,n=2048)",
            "ROPE(heads=8,head_dim=128,seq=2048,theta=500000,n=2048)",
            "ATTENTION(heads=32,kv_heads=8,head_dim=128,seq=2048,n=2048)",
            "SILU_MUL(n=2048,cols=14336)",
            "RESIDUAL_ADD(n=2048,cols=4096)",
            "EMBED(n=2048,vocab=128256,cols=4096)",
            "LM_HEAD(chunk=4096,n=2048,vocab=128256,cols=4096)",
        ] {
            assert!(
                gqa.contains(&want.to_string()),
                "{want} missing from {gqa:#?}"
            );
        }
        // Multi-head attention: q and k have as many heads, one RoPE case.
        let mha = names(&ForwardDims {
            layer: LLAMA_7B,
            vocab: 32_000,
            rope_theta: 10_000.0,
        });
        assert_eq!(mha.iter().filter(|n| n.starts_with("ROPE")).count(), 1);
        assert!(mha.contains(&"EMBED(n=2048,vocab=32000,cols=4096)".to_string()));
        assert!(mha.contains(&"LM_HEAD(chunk=4096,n=2048,vocab=32000,cols=4096)".to_string()));
        // At d = 8192 a chunk of 4096 rows would be 128 MiB, over what a binding holds.
        assert_eq!(lm_head_chunk_rows(8192), 2048);
        assert_eq!(lm_head_chunk_rows(256), 4096);
        // Every LM-head chunk binds whole with room to spare, and at LLaMA-7B and LLaMA-3-8B
        // sizes every activation of the 2048-token cases does too (up to 2048 x 14336 f32 =
        // 112 MiB). The weights past 128 MiB (the FFN's, the embedding table) and LLaMA-2-70B's
        // FFN activations do not: the backends window those.
        const BINDING: u64 = 128 << 20;
        for d in [LLAMA_7B, LLAMA3_8B, LLAMA2_70B] {
            let dims = ForwardDims {
                layer: d,
                vocab: 128_256,
                rope_theta: 10_000.0,
            };
            for c in forward_cases(&dims, 2048) {
                let activation = 4 * (c.tokens * c.cols.max(c.rows)) as u64;
                match c.op {
                    Op::LmHead { chunk } => {
                        assert!(4 * (chunk * c.cols) as u64 <= BINDING / 2, "{}", c.name());
                    }
                    Op::Embed => {}
                    _ if d != LLAMA2_70B => assert!(activation < BINDING, "{}", c.name()),
                    _ => {}
                }
            }
        }
    }

    #[test]
    fn small_forward_cases_pass_the_shape_checks() {
        let cases = small_cases();
        let mut short_last_chunk = 0;
        for c in &cases {
            match c.op {
                Op::Rope {
                    heads,
                    head_dim,
                    seq,
                    ..
                } => {
                    let table = (seq, head_dim / 2);
                    let got = crate::ops::check::rope((c.tokens, c.cols), table, table).unwrap();
                    assert_eq!((got, heads * head_dim), ((seq, head_dim), c.cols));
                }
                Op::Attention {
                    heads,
                    kv_heads,
                    head_dim,
                    seq,
                } => {
                    let kv = (c.tokens, kv_heads * head_dim);
                    let q = (c.tokens, c.cols);
                    let e = crate::ops::check::attention(q, kv, kv, heads, kv_heads, seq).unwrap();
                    assert_eq!(e, head_dim);
                }
                Op::LmHead { chunk } if c.rows > chunk && c.rows % chunk != 0 => {
                    short_last_chunk += 1;
                }
                _ => {}
            }
        }
        assert!(short_last_chunk >= 2);
        let names: Vec<String> = cases.iter().map(|c| c.name()).collect();
        for want in [
            "ATTENTION(heads=6,kv_heads=3,head_dim=16,seq=13,n=39)",
            "ATTENTION(heads=6,kv_heads=3,head_dim=16,seq=1,n=4)",
            "ATTENTION(heads=2,kv_heads=2,head_dim=128,seq=70,n=140)",
            "LM_HEAD(chunk=128,n=13,vocab=300,cols=37)",
            "LINEAR(n=1,rows=13,cols=37)",
        ] {
            assert!(names.contains(&want.to_string()), "{want}");
        }
    }

    #[test]
    fn forward_work_model() {
        // Attention against the count it stands for: at position p a query scores p + 1 keys
        // (2e each) and sums as many rows of V (2e each), per head.
        let a = attention((6, 3, 16), 13, 3);
        let per_window: u64 = (0..13u64).map(|p| 4 * 16 * (p + 1) * 6).sum();
        assert_eq!(a.flops(), 3 * per_window);
        assert_eq!(a.bytes(), 4 * 2 * 39 * (6 + 3) * 16);
        assert!(!a.compute_bound());
        assert!(attention((32, 8, 128), 2048, 1).compute_bound());
        // Three chunk calls (128, 128, 44 rows), each reading h and the targets and reading and
        // writing the state; W read once.
        let h = lm_head(13, 300, 37, 128);
        assert_eq!(h.bytes(), 4 * (300 * 37 + 3 * (13 * 37 + 13 + 6 * 13)));
        assert_eq!(h.flops(), 2 * 13 * 37 * 300 + 4 * 13 * 300);
        let l = forward(Op::Linear, 3, 13, 300);
        assert_eq!(l.flops(), 2 * 3 * 13 * 300);
        assert_eq!(l.bytes(), 4 * (3 * 300 + 13 * 300 + 3 * 13));
        let e = forward(Op::Embed, 40, 7, 130);
        assert_eq!((e.flops(), e.bytes()), (0, 4 * (2 * 40 * 130 + 40)));
    }
}
