//! The §15 backward ops of a LLaMA decoder: the linear's dX and dW, RMSNorm's dx and dγ, RoPE's
//! transposed rotation, the SiLU-gate product's dg and du, and the embedding's per-id sums.
//! Everything the suite knows of them is here: their names and parameters, their cases (small
//! odd shapes and a model's pass), their work model, their inputs, how they run on a backend
//! and how their outputs are compared with the reference's.

use super::forward::{embed_ids, rms_norm_input, rope_tables, ForwardDims, RMS_NORM_CASE_EPS};
use super::{not_in_family, Family};
use crate::error::Result;
use crate::ops::{tolerance as tol, Backend};
use crate::rng::{heavy_tailed, heavy_tailed_positive};
use crate::suite::case::{LayerDims, ModelShapes, Op, OpCase};
use crate::suite::compare::{value_check, Check};
use crate::suite::inputs::{scaled, CaseInputs};
use crate::suite::run::{never_ran, CaseOutput};

const FAMILY: Family = Family::Backward;

// ---- The cases ----

fn backward(op: Op, n: usize, rows: usize, cols: usize) -> OpCase {
    OpCase::new(op, rows, cols).tokens(n, 1)
}

/// RoPE's backward on `windows` stacked windows of `seq` rows of `heads` heads of `head_dim`.
fn rope(heads: usize, head_dim: usize, seq: usize, windows: usize, theta: f64) -> OpCase {
    let op = Op::RopeBackward {
        heads,
        head_dim,
        seq,
        theta,
    };
    backward(op, windows * seq, 1, heads * head_dim)
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
        backward(SiluMulBackward, 1, 1, 37),
        backward(SiluMulBackward, 13, 1, 300),
        backward(SiluMulBackward, 3, 1, 1000),
        backward(EmbedBackward, 13, 50, 37),
        backward(EmbedBackward, 1, 1000, 300),
        backward(EmbedBackward, 40, 7, 130),
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
        op => not_in_family(op, FAMILY),
    }
}

/// Whether the op's cost is dominated by arithmetic rather than memory traffic.
pub(in crate::suite) fn compute_bound(case: &OpCase) -> bool {
    match case.op {
        // Twice the forward's flops over about twice its bytes: N/2 flops per byte, past the
        // f32 balance from 64 rows, as the forward linear.
        Op::LinearBackward => case.tokens >= 64,
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
        op => not_in_family(op, FAMILY),
    }
    Ok(inp)
}

// ---- Running on a backend ----

/// A backward case's device tensors, by op.
// The variants are named after the `Op`s they prepare, which all end in `Backward`.
#[allow(clippy::enum_variant_names)]
pub enum Prepared<B: Backend> {
    LinearBackward {
        x: B::Tensor,
        w: B::Tensor,
        dy: B::Tensor,
        out: Option<(B::Tensor, B::Tensor)>,
    },
    RmsNormBackward {
        x: B::Tensor,
        gamma: B::Tensor,
        dy: B::Tensor,
        out: Option<(B::Tensor, B::Tensor)>,
    },
    /// In place: the benches' repeats rotate the same rows back again, which keeps their norms.
    RopeBackward {
        dx: B::Tensor,
        cos: B::Tensor,
        sin: B::Tensor,
    },
    SiluMulBackward {
        gate: B::Tensor,
        up: B::Tensor,
        da: B::Tensor,
        out: Option<(B::Tensor, B::Tensor)>,
    },
    EmbedBackward {
        dh: B::Tensor,
        ids: Vec<u32>,
        vocab: usize,
        out: Option<B::Tensor>,
    },
}

pub(in crate::suite) fn prepare<B: Backend>(
    b: &B,
    case: &OpCase,
    inp: &CaseInputs,
) -> Result<Prepared<B>> {
    let up = |name: &str| b.upload(inp.get(name));
    Ok(match case.op {
        Op::LinearBackward => Prepared::LinearBackward {
            x: up("x")?,
            w: up("w")?,
            dy: up("dy")?,
            out: None,
        },
        Op::RmsNormBackward => Prepared::RmsNormBackward {
            x: up("x")?,
            gamma: up("gamma")?,
            dy: up("dy")?,
            out: None,
        },
        Op::RopeBackward { .. } => Prepared::RopeBackward {
            dx: up("dx")?,
            cos: up("cos")?,
            sin: up("sin")?,
        },
        Op::SiluMulBackward => Prepared::SiluMulBackward {
            gate: up("gate")?,
            up: up("up")?,
            da: up("da")?,
            out: None,
        },
        Op::EmbedBackward => Prepared::EmbedBackward {
            dh: up("dh")?,
            ids: inp.token_ids("ids").to_vec(),
            vocab: case.rows,
            out: None,
        },
        op => not_in_family(op, FAMILY),
    })
}

/// Runs the op once; RoPE's backward updates its input in place.
pub(in crate::suite) fn execute<B: Backend>(b: &B, p: &mut Prepared<B>) -> Result<()> {
    match p {
        Prepared::LinearBackward { x, w, dy, out } => *out = Some(b.linear_backward(x, w, dy)?),
        Prepared::RmsNormBackward { x, gamma, dy, out } => {
            *out = Some(b.rms_norm_backward(x, gamma, dy, RMS_NORM_CASE_EPS)?)
        }
        Prepared::RopeBackward { dx, cos, sin } => b.rope_backward(dx, cos, sin)?,
        Prepared::SiluMulBackward { gate, up, da, out } => {
            *out = Some(b.silu_mul_backward(gate, up, da)?)
        }
        Prepared::EmbedBackward {
            dh,
            ids,
            vocab,
            out,
        } => *out = Some(b.embed_backward(dh, ids, *vocab)?),
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
        Prepared::LinearBackward { out, .. } => pair(("dx", "dw"), out)?,
        Prepared::RmsNormBackward { out, .. } => pair(("dx", "dgamma"), out)?,
        Prepared::SiluMulBackward { out, .. } => pair(("dgate", "dup"), out)?,
        Prepared::RopeBackward { dx, .. } => o.values.push(("dx", b.download(dx)?)),
        Prepared::EmbedBackward { out, .. } => o
            .values
            .push(("dtable", b.download(out.as_ref().ok_or_else(never_ran)?)?)),
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
        ] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
    }
}
