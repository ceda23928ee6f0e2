//! The §15 backward ops of a LLaMA decoder: the linear's dX and dW, RMSNorm's dx and dγ, RoPE's
//! transposed rotation, the SiLU-gate product's dg and du, and the embedding's per-id sums.
//! Everything the suite knows of them is here: their names and parameters, their cases (small
//! odd shapes and a model's pass), their work model, their inputs, how they run on a backend
//! and how their outputs are compared with the reference's.

use super::forward::{
    attention_operand, embed_ids, lm_head_chunk_rows, lm_head_operands, rms_norm_input,
    rope_tables, token_case, upload_row_chunks, windowed, ForwardDims, RMS_NORM_CASE_EPS,
};
use super::{not_in_family, Family};
use crate::cpu::CpuBackend;
use crate::error::Result;
use crate::ops::{tolerance as tol, Backend};
use crate::rng::{heavy_tailed, heavy_tailed_positive};
use crate::suite::case::{LayerDims, ModelShapes, Op, OpCase};
use crate::suite::compare::{value_check, Check};
use crate::suite::inputs::{scaled, CaseInputs};
use crate::suite::run::{never_ran, CaseOutput};
use crate::tensor::Matrix;

const FAMILY: Family = Family::Backward;

// ---- The cases ----

fn backward(op: Op, n: usize, rows: usize, cols: usize) -> OpCase {
    token_case(op, n, rows, cols)
}

/// RoPE's backward on `windows` stacked windows of `seq` rows of `heads` heads of `head_dim`.
fn rope(heads: usize, head_dim: usize, seq: usize, windows: usize, theta: f64) -> OpCase {
    let op = Op::RopeBackward {
        heads,
        head_dim,
        seq,
        theta,
    };
    windowed(op, windows)
}

/// Attention's backward on `windows` stacked windows of `seq` rows.
fn attention(
    (heads, kv_heads, head_dim): (usize, usize, usize),
    seq: usize,
    windows: usize,
) -> OpCase {
    let op = Op::AttentionBackward {
        heads,
        kv_heads,
        head_dim,
        seq,
    };
    windowed(op, windows)
}

fn lm_head(n: usize, vocab: usize, d: usize, chunk: usize) -> OpCase {
    backward(Op::LmHeadBackward { chunk }, n, vocab, d)
}

/// The loss's 1/(T − 1) for a window of `n` tokens (1 for a single token).
fn loss_scale(n: usize) -> f64 {
    1.0 / n.saturating_sub(1).max(1) as f64
}

/// The backward ops of §15 on the forward's odd shapes: one token, widths that are not
/// multiples of 64 (37, 130, 300), more than one 64-row tile of tokens, seq = 1 and three
/// windows for RoPE, and an embedding whose 40 tokens share 7 ids (every row of dE a sum).
pub fn small_cases() -> Vec<OpCase> {
    use Op::{EmbedBackward, LinearBackward, RmsNormBackward, SiluMulBackward};
    let (llama, llama3) = (10_000.0, 500_000.0);
    vec![
        backward(LinearBackward, 1, 13, 37),
        backward(LinearBackward, 3, 13, 300),
        backward(LinearBackward, 17, 1, 300),
        backward(LinearBackward, 67, 130, 129),
        backward(RmsNormBackward, 1, 1, 37),
        backward(RmsNormBackward, 13, 1, 300),
        backward(RmsNormBackward, 70, 1, 130),
        backward(RmsNormBackward, 3, 1, 4100),
        rope(6, 16, 13, 3, llama),
        rope(3, 16, 1, 4, llama),
        rope(1, 128, 37, 1, llama3),
        // Halves of 6: not whole vec4s, the one-pair-per-thread kernel.
        rope(2, 12, 5, 1, llama),
        backward(SiluMulBackward, 1, 1, 37),
        backward(SiluMulBackward, 13, 1, 300),
        backward(SiluMulBackward, 3, 1, 1000),
        backward(EmbedBackward, 13, 50, 37),
        backward(EmbedBackward, 1, 1000, 300),
        backward(EmbedBackward, 40, 7, 130),
        attention((6, 3, 16), 13, 3),
        attention((9, 3, 16), 37, 1),
        attention((6, 3, 16), 1, 4),
        attention((4, 1, 32), 70, 1),
        attention((2, 2, 128), 70, 2),
        lm_head(13, 300, 37, 128),
        lm_head(5, 77, 300, 32),
        lm_head(1, 1000, 130, 1000),
        lm_head(67, 250, 64, 100),
    ]
}

/// The backward ops of one model's pass over one window of `seq` tokens: the linear of every
/// distinct weight shape, RMSNorm of the hidden state, RoPE on the queries and keys, the
/// SiLU-gate product and the embedding.
pub fn backward_cases(dims: &ForwardDims, seq: usize) -> Vec<OpCase> {
    use Op::{EmbedBackward, LinearBackward, RmsNormBackward, SiluMulBackward};
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
        .map(|(rows, cols)| backward(LinearBackward, n, rows, cols))
        .collect();
    v.extend([
        backward(RmsNormBackward, n, 1, d),
        rope(heads, e, seq, 1, rope_theta),
        rope(g, e, seq, 1, rope_theta),
        backward(SiluMulBackward, n, 1, f),
        backward(EmbedBackward, n, vocab, d),
        attention((heads, g, e), seq, 1),
        lm_head(n, vocab, d, lm_head_chunk_rows(d)),
    ]);
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|c| seen.insert(c.name()));
    v
}

/// At a model's shapes.
pub(in crate::suite) fn model_cases(m: &ModelShapes) -> Vec<OpCase> {
    backward_cases(&m.forward, m.tokens)
}

// ---- Names and work model ----

/// The op's name without shape, e.g. `RMS_NORM_BACKWARD`.
pub(in crate::suite) fn op_name(op: Op) -> String {
    match op {
        Op::LinearBackward => "LINEAR_BACKWARD".into(),
        Op::RmsNormBackward => "RMS_NORM_BACKWARD".into(),
        Op::RopeBackward { .. } => "ROPE_BACKWARD".into(),
        Op::SiluMulBackward => "SILU_MUL_BACKWARD".into(),
        Op::EmbedBackward => "EMBED_BACKWARD".into(),
        Op::AttentionBackward { .. } => "ATTENTION_BACKWARD".into(),
        Op::LmHeadBackward { .. } => "LM_HEAD_BACKWARD".into(),
        op => not_in_family(op, FAMILY),
    }
}

/// The key parameters of the canonical name.
pub(in crate::suite) fn params(case: &OpCase) -> String {
    let (r, c, t) = (case.rows, case.cols, case.tokens);
    match case.op {
        Op::LinearBackward => format!("n={t},rows={r},cols={c}"),
        Op::RmsNormBackward | Op::SiluMulBackward => format!("n={t},cols={c}"),
        Op::RopeBackward {
            heads,
            head_dim,
            seq,
            theta,
        } => format!("heads={heads},head_dim={head_dim},seq={seq},theta={theta},n={t}"),
        Op::EmbedBackward => format!("n={t},vocab={r},cols={c}"),
        Op::AttentionBackward {
            heads,
            kv_heads,
            head_dim,
            seq,
        } => format!("heads={heads},kv_heads={kv_heads},head_dim={head_dim},seq={seq},n={t}"),
        Op::LmHeadBackward { chunk } => format!("chunk={chunk},n={t},vocab={r},cols={c}"),
        op => not_in_family(op, FAMILY),
    }
}

/// Bytes moved at the least (f32 tensors): each input read once, each output written once.
pub(in crate::suite) fn bytes(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    let n = case.tokens as u64;
    let f = 4u64;
    match case.op {
        // X, W and dY read; dX and dW written.
        Op::LinearBackward => f * (2 * n * c + 2 * r * c + n * r),
        // x and dy read, dx written; γ read and dγ written.
        Op::RmsNormBackward => f * (3 * n * c + 2 * c),
        // dx read and written in place, the cos and sin tables read.
        Op::RopeBackward {
            heads,
            head_dim,
            seq,
            ..
        } => f * (2 * n * (heads * head_dim) as u64 + (seq * head_dim) as u64),
        // g, u and da read; dg and du written.
        Op::SiluMulBackward => f * 5 * n * c,
        // dh and the ids read, the whole table of gradients written.
        Op::EmbedBackward => f * (n * c + n + r * c),
        // Q, O and dO read and dQ written; K and V read, dK and dV written (one pass owns dQ,
        // another dK and dV: each reads Q, K, V, dO and L once more than this minimum).
        Op::AttentionBackward {
            heads,
            kv_heads,
            head_dim,
            ..
        } => f * n * (4 * heads + 4 * kv_heads) as u64 * head_dim as u64 + f * n * heads as u64,
        // W read and dW written once over the chunks; each chunk's call reads h, the targets
        // and lse, and reads and writes dh (the chunk's logits are the composite's scratch,
        // which a fused kernel would not need).
        Op::LmHeadBackward { chunk } => {
            let calls = case.rows.div_ceil(chunk.max(1)) as u64;
            f * (2 * r * c + calls * (3 * n * c + 2 * n))
        }
        op => not_in_family(op, FAMILY),
    }
}

/// Floating-point operations of the math as ALGORITHMS.md counts them.
pub(in crate::suite) fn flops(case: &OpCase) -> u64 {
    let (r, c) = (case.rows as u64, case.cols as u64);
    let n = case.tokens as u64;
    match case.op {
        // dY·W and dYᵀ·X.
        Op::LinearBackward => 4 * n * r * c,
        // Per entry: the square and add of the mean square, g = γ·dy, the multiply and add of
        // Σ g·x, dx = r·g − k·x (three), and dγ += dy·x·r (three).
        Op::RmsNormBackward => 11 * n * c,
        // As the forward rotation: three per entry.
        Op::RopeBackward {
            heads, head_dim, ..
        } => 3 * n * (heads * head_dim) as u64,
        // σ(g) (exp counted as one, add, divide), silu and du (two), and dg's five.
        Op::SiluMulBackward => 10 * n * c,
        // One add per entry of dh.
        Op::EmbedBackward => n * c,
        // Causal, per head and window as the forward counts it (2·N·(seq + 1)·heads·e for
        // each of q·kᵀ and P·V): the backward's five products (the recomputed S, dP = dO·Vᵀ,
        // dV += Pᵀ·dO, dQ += dS·K, dK += dSᵀ·Q), 5·N·(seq + 1)·heads·e.
        Op::AttentionBackward {
            heads,
            head_dim,
            seq,
            ..
        } => 5 * n * (seq as u64 + 1) * (heads * head_dim) as u64,
        // The logits, dh += dlogits·W and dW = dlogitsᵀ·h, and per logit the exp, the
        // subtraction of lse, the target's one and the scale.
        Op::LmHeadBackward { .. } => 6 * n * c * r + 4 * n * r,
        op => not_in_family(op, FAMILY),
    }
}

/// Whether the op's cost is dominated by arithmetic rather than memory traffic.
pub(in crate::suite) fn compute_bound(case: &OpCase) -> bool {
    match case.op {
        // Twice the forward's flops over about twice its bytes: N/2 flops per byte, past the
        // f32 balance from 64 rows, as the forward linear.
        Op::LinearBackward | Op::LmHeadBackward { .. } => case.tokens >= 64,
        // As the forward's: 2.5 times its flops over about twice its bytes.
        Op::AttentionBackward { seq, .. } => seq >= 128,
        // A few flops per entry moved.
        Op::RmsNormBackward | Op::RopeBackward { .. } | Op::SiluMulBackward | Op::EmbedBackward => {
            false
        }
        op => not_in_family(op, FAMILY),
    }
}

// ---- Inputs ----

/// The forward op's inputs as its family draws them, and a heavy-tailed incoming gradient.
pub(in crate::suite) fn inputs(case: &OpCase) -> Result<CaseInputs> {
    let (r, c, s) = (case.rows, case.cols, case.seed);
    let n = case.tokens;
    let mut inp = CaseInputs::default();
    match case.op {
        Op::LinearBackward => {
            inp.tensors = vec![
                ("x", heavy_tailed(n, c, s)),
                ("w", scaled(heavy_tailed(r, c, s + 1), 0.02)),
                ("dy", heavy_tailed(n, r, s + 2)),
            ];
        }
        Op::RmsNormBackward => {
            inp.tensors = vec![
                ("x", rms_norm_input(n, c, s)),
                ("gamma", heavy_tailed_positive(1, c, s + 1)),
                ("dy", heavy_tailed(n, c, s + 2)),
            ];
        }
        Op::RopeBackward {
            head_dim,
            seq,
            theta,
            ..
        } => {
            let (cos, sin) = rope_tables(theta, head_dim, seq);
            inp.tensors = vec![("dx", heavy_tailed(n, c, s)), ("cos", cos), ("sin", sin)];
        }
        Op::SiluMulBackward => {
            inp.tensors = vec![
                ("gate", heavy_tailed(n, c, s)),
                ("up", heavy_tailed(n, c, s + 1)),
                ("da", heavy_tailed(n, c, s + 2)),
            ];
        }
        Op::EmbedBackward => {
            inp.token_ids = vec![("ids", embed_ids(n, r, s + 1))];
            inp.tensors = vec![("dh", heavy_tailed(n, c, s))];
        }
        Op::AttentionBackward {
            heads,
            kv_heads,
            head_dim,
            seq,
        } => {
            let kc = kv_heads * head_dim;
            let q = attention_operand(n, c, head_dim, s);
            let k = attention_operand(n, kc, head_dim, s + 1);
            let v = heavy_tailed(n, kc, s + 2);
            // O and L as the reference's forward computes them (in f64, stored as f32), so
            // every backend differentiates the same forward.
            let up = |m: &Matrix| CpuBackend::new().upload(m);
            let (o, lse) = CpuBackend::new().attention_with_lse(
                &up(&q)?,
                &up(&k)?,
                &up(&v)?,
                heads,
                kv_heads,
                seq,
            )?;
            let cpu = CpuBackend::new();
            inp.tensors = vec![
                ("q", q),
                ("k", k),
                ("v", v),
                ("o", cpu.download(&o)?),
                ("lse", cpu.download(&lse)?),
                ("do", heavy_tailed(n, c, s + 3)),
            ];
        }
        Op::LmHeadBackward { chunk } => {
            let (h, w, targets) = lm_head_operands(n, r, c, chunk, s)?;
            let lse = log_sum_exp(&h, &w);
            inp.token_ids = vec![("targets", targets)];
            inp.tensors = vec![
                ("h", h),
                ("w", w),
                ("lse", lse),
                // What the layers above added before: the head's dh adds to it.
                ("dh", heavy_tailed(n, c, s + 3)),
            ];
        }
        op => not_in_family(op, FAMILY),
    }
    Ok(inp)
}

/// Each row's log-sum-exp of h·Wᵀ over the whole vocabulary, in f64 from the f32 inputs, as
/// the forward's state leaves it (m + ln s).
fn log_sum_exp(h: &Matrix, w: &Matrix) -> Matrix {
    use rayon::prelude::*;
    // Where only shapes are wanted: 2·n·vocab·d flops in f64 that no kernel would read.
    if crate::suite::inputs::shapes_only() {
        return Matrix::zeros(h.rows, 1);
    }
    let lse: Vec<f32> = (0..h.rows)
        .into_par_iter()
        .map(|t| {
            let logits: Vec<f64> = (0..w.rows)
                .map(|v| {
                    h.row(t)
                        .iter()
                        .zip(w.row(v))
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            (m + logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln()) as f32
        })
        .collect();
    Matrix::from_fn(h.rows, 1, |t, _| lse[t])
}

// ---- Running on a backend ----

/// A backward case's device tensors, by op.
pub enum Prepared<B: Backend> {
    Linear {
        x: B::Tensor,
        w: B::Tensor,
        dy: B::Tensor,
        out: Option<(B::Tensor, B::Tensor)>,
    },
    RmsNorm {
        x: B::Tensor,
        gamma: B::Tensor,
        dy: B::Tensor,
        out: Option<(B::Tensor, B::Tensor)>,
    },
    /// In place: the benches' repeats rotate the same rows back again, which keeps their norms.
    Rope {
        dx: B::Tensor,
        cos: B::Tensor,
        sin: B::Tensor,
    },
    SiluMul {
        gate: B::Tensor,
        up: B::Tensor,
        da: B::Tensor,
        out: Option<(B::Tensor, B::Tensor)>,
    },
    Embed {
        dh: B::Tensor,
        ids: Vec<u32>,
        vocab: usize,
        out: Option<B::Tensor>,
    },
    Attention {
        q: B::Tensor,
        k: B::Tensor,
        v: B::Tensor,
        o: B::Tensor,
        lse: B::Tensor,
        d_o: B::Tensor,
        heads: usize,
        kv_heads: usize,
        seq: usize,
        out: Option<(B::Tensor, B::Tensor, B::Tensor)>,
    },
    /// Every chunk of W in its own tensor, run in order; dh accumulates (the benches' repeats
    /// add to it again), and each run replaces the chunks' dW.
    LmHead {
        dh: B::Tensor,
        h: B::Tensor,
        chunks: Vec<B::Tensor>,
        chunk: usize,
        targets: Vec<u32>,
        lse: B::Tensor,
        scale: f64,
        out: Option<Vec<B::Tensor>>,
    },
}

pub(in crate::suite) fn prepare<B: Backend>(
    b: &B,
    case: &OpCase,
    inp: &CaseInputs,
) -> Result<Prepared<B>> {
    let up = |name: &str| b.upload(inp.get(name));
    Ok(match case.op {
        Op::LinearBackward => Prepared::Linear {
            x: up("x")?,
            w: up("w")?,
            dy: up("dy")?,
            out: None,
        },
        Op::RmsNormBackward => Prepared::RmsNorm {
            x: up("x")?,
            gamma: up("gamma")?,
            dy: up("dy")?,
            out: None,
        },
        Op::RopeBackward { .. } => Prepared::Rope {
            dx: up("dx")?,
            cos: up("cos")?,
            sin: up("sin")?,
        },
        Op::SiluMulBackward => Prepared::SiluMul {
            gate: up("gate")?,
            up: up("up")?,
            da: up("da")?,
            out: None,
        },
        Op::EmbedBackward => Prepared::Embed {
            dh: up("dh")?,
            ids: inp.token_ids("ids").to_vec(),
            vocab: case.rows,
            out: None,
        },
        Op::AttentionBackward {
            heads,
            kv_heads,
            seq,
            ..
        } => Prepared::Attention {
            q: up("q")?,
            k: up("k")?,
            v: up("v")?,
            o: up("o")?,
            lse: up("lse")?,
            d_o: up("do")?,
            heads,
            kv_heads,
            seq,
            out: None,
        },
        Op::LmHeadBackward { chunk } => Prepared::LmHead {
            dh: up("dh")?,
            h: up("h")?,
            chunks: upload_row_chunks(b, inp.get("w"), chunk)?,
            chunk,
            targets: inp.token_ids("targets").to_vec(),
            lse: up("lse")?,
            scale: loss_scale(case.tokens),
            out: None,
        },
        op => not_in_family(op, FAMILY),
    })
}

/// Runs the op once; RoPE's backward updates its input in place.
pub(in crate::suite) fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::Linear { x, w, dy, out } => *out = Some(b.linear_backward(x, w, dy)?),
        Prepared::RmsNorm { x, gamma, dy, out } => {
            *out = Some(b.rms_norm_backward(x, gamma, dy, RMS_NORM_CASE_EPS)?)
        }
        Prepared::Rope { dx, cos, sin } => b.rope_backward(dx, cos, sin)?,
        Prepared::SiluMul { gate, up, da, out } => *out = Some(b.silu_mul_backward(gate, up, da)?),
        Prepared::Embed {
            dh,
            ids,
            vocab,
            out,
        } => *out = Some(b.embed_backward(dh, ids, *vocab)?),
        Prepared::Attention {
            q,
            k,
            v,
            o,
            lse,
            d_o,
            heads,
            kv_heads,
            seq,
            out,
        } => {
            let (heads, kv_heads, seq) = (*heads, *kv_heads, *seq);
            *out = Some(b.attention_backward(q, k, v, o, lse, d_o, heads, kv_heads, seq)?)
        }
        Prepared::LmHead {
            dh,
            h,
            chunks,
            chunk,
            targets,
            lse,
            scale,
            out,
        } => {
            let mut dws = Vec::with_capacity(chunks.len());
            for (i, w) in chunks.iter().enumerate() {
                let offset = i * *chunk;
                dws.push(b.lm_head_backward_chunk(dh, h, w, offset, targets, lse, *scale)?);
            }
            *out = Some(dws);
        }
    }
    Ok(())
}

pub(in crate::suite) fn collect<B: Backend>(b: &B, p: &Prepared<B>) -> Result<CaseOutput> {
    let mut o = CaseOutput::default();
    let mut pair = |names: (&'static str, &'static str), out: &Option<(B::Tensor, B::Tensor)>| {
        let (first, second) = out.as_ref().ok_or_else(never_ran)?;
        o.values.push((names.0, b.download(first)?));
        o.values.push((names.1, b.download(second)?));
        Result::Ok(())
    };
    match p {
        Prepared::Linear { out, .. } => pair(("dx", "dw"), out)?,
        Prepared::RmsNorm { out, .. } => pair(("dx", "dgamma"), out)?,
        Prepared::SiluMul { out, .. } => pair(("dgate", "dup"), out)?,
        Prepared::Rope { dx, .. } => o.values.push(("dx", b.download(dx)?)),
        Prepared::Embed { out, .. } => o
            .values
            .push(("dtable", b.download(out.as_ref().ok_or_else(never_ran)?)?)),
        Prepared::Attention { out, .. } => {
            let (dq, dk, dv) = out.as_ref().ok_or_else(never_ran)?;
            o.values.push(("dq", b.download(dq)?));
            o.values.push(("dk", b.download(dk)?));
            o.values.push(("dv", b.download(dv)?));
        }
        Prepared::LmHead { dh, out, .. } => {
            let dws = out.as_ref().ok_or_else(never_ran)?;
            o.values.push(("dh", b.download(dh)?));
            o.values.push(("dw", stack_rows(b, dws)?));
        }
    }
    Ok(o)
}

/// The chunks' dW downloaded and stacked into the head's [vocab, d].
fn stack_rows<B: Backend>(b: &B, parts: &[B::Tensor]) -> Result<Matrix> {
    let mut rows = 0;
    let mut data = Vec::new();
    let mut cols = 0;
    for p in parts {
        let m = b.download(p)?;
        rows += m.rows;
        cols = m.cols;
        data.extend_from_slice(&m.data);
    }
    Matrix::new(rows, cols, data)
}

// ---- Comparison ----

/// The checks of one case: reference output `want`, backend output `got`.
pub(in crate::suite) fn compare(
    case: &OpCase,
    _inputs: &CaseInputs,
    want: &CaseOutput,
    got: &CaseOutput,
) -> Vec<Check> {
    let check = |name, tol| value_check(name, want, got, tol);
    match case.op {
        Op::LinearBackward => vec![
            check("dx", tol::BACKWARD_GEMM),
            check("dw", tol::BACKWARD_GEMM),
        ],
        Op::RmsNormBackward => vec![
            check("dx", tol::BACKWARD_ELEMENTWISE),
            check("dgamma", tol::BACKWARD_GEMM),
        ],
        Op::RopeBackward { .. } => vec![check("dx", tol::BACKWARD_ELEMENTWISE)],
        Op::SiluMulBackward => vec![
            check("dgate", tol::BACKWARD_ELEMENTWISE),
            check("dup", tol::BACKWARD_ELEMENTWISE),
        ],
        Op::EmbedBackward => vec![check("dtable", tol::BACKWARD_ELEMENTWISE)],
        Op::AttentionBackward { .. } => vec![
            check("dq", tol::BACKWARD_GEMM),
            check("dk", tol::BACKWARD_GEMM),
            check("dv", tol::BACKWARD_GEMM),
        ],
        Op::LmHeadBackward { .. } => {
            vec![
                check("dh", tol::BACKWARD_GEMM),
                check("dw", tol::BACKWARD_GEMM),
            ]
        }
        op => not_in_family(op, FAMILY),
    }
}

#[cfg(test)]
mod tests {
    use super::super::llama::LLAMA3_8B;
    use super::*;

    #[test]
    fn backward_cases_follow_the_model() {
        let dims = ForwardDims {
            layer: LLAMA3_8B,
            vocab: 128_256,
            rope_theta: 500_000.0,
        };
        let names: Vec<String> = backward_cases(&dims, 2048)
            .iter()
            .map(|c| c.name())
            .collect();
        for want in [
            "LINEAR_BACKWARD(n=2048,rows=4096,cols=4096)",
            "LINEAR_BACKWARD(n=2048,rows=1024,cols=4096)",
            "LINEAR_BACKWARD(n=2048,rows=4096,cols=14336)",
            "RMS_NORM_BACKWARD(n=2048,cols=4096)",
            "ROPE_BACKWARD(heads=8,head_dim=128,seq=2048,theta=500000,n=2048)",
            "SILU_MUL_BACKWARD(n=2048,cols=14336)",
            "EMBED_BACKWARD(n=2048,vocab=128256,cols=4096)",
            "ATTENTION_BACKWARD(heads=32,kv_heads=8,head_dim=128,seq=2048,n=2048)",
            "LM_HEAD_BACKWARD(chunk=4096,n=2048,vocab=128256,cols=4096)",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }
}
