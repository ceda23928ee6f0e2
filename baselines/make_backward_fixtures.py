#!/usr/bin/env python3
"""Make the backward-op fixture: PyTorch autograd's gradients of the §15 ops in float64, for
the reference's test (tests/backward_autograd.rs).

Usage
-----
    VENV/bin/python baselines/make_backward_fixtures.py [--out tests/fixtures/backward/ops.safetensors]

VENV needs torch, transformers and safetensors (tested with torch 2.15, transformers 5.25,
safetensors 0.8). Seeded and single-threaded: re-running it with the same versions writes
the same bytes.

Each op's forward is transformers' own where it has one that stays in float64:
``apply_rotary_pos_emb`` (rotate_half), the SiLU of ``ACT2FN`` as LlamaMLP applies it
(``act(gate) * up``), ``F.linear``, ``F.embedding`` and the loss of LlamaForCausalLM
(``F.cross_entropy`` over the shifted labels, mean over the T − 1 predicted positions).
LlamaRMSNorm and ``eager_attention_forward`` cast to float32 inside (the norm's input, the
softmax), so their steps are written out here in float64, term for term as transformers
writes them (attention with its own ``repeat_kv`` for the KV groups and an additive causal
mask). The incoming gradient dY is a seeded normal draw; the
gradients are autograd's of sum(dY * forward(inputs)).

Tensors written (float64; ids as int64), prefixed by op:
``linear.{x,w,dy,dx,dw}``, ``rms_norm.{x,gamma,dy,dx,dgamma}`` (eps in the metadata),
``rope.{cos,sin,dy,dx}`` (tables [seq, e/2], rows [windows·seq, heads·e]; heads and seq in
the metadata), ``silu_mul.{gate,up,da,dgate,dup}``, ``embed.{ids,dh,dtable}`` (vocab in the
metadata), ``lm_head.{h,w,ids,lse,dh,dw}`` (one window; the loss in the metadata),
``attention.{q,k,v,do,o,lse,dq,dk,dv}`` (rows [windows·seq, heads·e]; three KV groups of
three query heads; heads, kv_heads and seq in the metadata).
"""

import argparse
import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

SEED = 0
RMS_EPS = 1e-5
ROPE_THETA = 10000.0


def grads(fn, inputs, dy):
    """Autograd's gradients of sum(dy * fn(*inputs)) for every input."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    (fn(*leaves) * dy).sum().backward()
    return [t.grad for t in leaves]


def rms_norm(x, gamma):
    # LlamaRMSNorm.forward without its float32 cast.
    variance = x.pow(2).mean(-1, keepdim=True)
    return gamma * (x * torch.rsqrt(variance + RMS_EPS))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/backward/ops.safetensors")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    f64 = torch.float64
    out, meta = {}, {}

    # Linear Y = X·Wᵀ: 5 tokens, W 7 x 9.
    x, w, dy = torch.randn(5, 9, dtype=f64), torch.randn(7, 9, dtype=f64), torch.randn(5, 7, dtype=f64)
    dx, dw = grads(F.linear, [x, w], dy)
    out.update({"linear.x": x, "linear.w": w, "linear.dy": dy, "linear.dx": dx, "linear.dw": dw})

    # RMSNorm of 4 tokens of 13, the last row tiny (ε dominates its mean square).
    x = torch.randn(4, 13, dtype=f64)
    x[3] *= 1e-3
    gamma, dy = 1.0 + 0.1 * torch.randn(13, dtype=f64), torch.randn(4, 13, dtype=f64)
    dx, dgamma = grads(rms_norm, [x, gamma], dy)
    out.update({"rms_norm.x": x, "rms_norm.gamma": gamma.reshape(1, 13), "rms_norm.dy": dy,
                "rms_norm.dx": dx, "rms_norm.dgamma": dgamma.reshape(1, 13)})
    meta["rms_norm.eps"] = RMS_EPS

    # RoPE on two windows of 5 positions, 3 heads of 8 (rows [windows·seq, heads·e]).
    windows, seq, heads, e = 2, 5, 3, 8
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, e, 2, dtype=f64) / e)
    freqs = torch.outer(torch.arange(seq, dtype=f64), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()

    def rope(rows):
        q = rows.reshape(windows, seq, heads, e).transpose(1, 2)
        rotated, _ = apply_rotary_pos_emb(q, q, cos[None], sin[None])
        return rotated.transpose(1, 2).reshape(windows * seq, heads * e)

    x, dy = torch.randn(windows * seq, heads * e, dtype=f64), torch.randn(windows * seq, heads * e, dtype=f64)
    (dx,) = grads(rope, [x], dy)
    out.update({"rope.cos": freqs.cos(), "rope.sin": freqs.sin(), "rope.dy": dy, "rope.dx": dx})
    meta["rope.heads"], meta["rope.seq"] = heads, seq

    # SiLU-gate product as LlamaMLP: act(gate) * up.
    act = ACT2FN["silu"]
    gate, up, da = (torch.randn(4, 11, dtype=f64) for _ in range(3))
    dgate, dup = grads(lambda g, u: act(g) * u, [gate, up], da)
    out.update({"silu_mul.gate": gate, "silu_mul.up": up, "silu_mul.da": da,
                "silu_mul.dgate": dgate, "silu_mul.dup": dup})

    # Embedding: 12 tokens over a vocabulary of 9 (repeats; some ids unused).
    vocab, d = 9, 6
    ids = torch.tensor([8, 0, 3, 3, 8, 1, 0, 3, 5, 8, 2, 0])
    table, dh = torch.randn(vocab, d, dtype=f64), torch.randn(len(ids), d, dtype=f64)
    (dtable,) = grads(lambda t: F.embedding(ids, t), [table], dh)
    out.update({"embed.ids": ids, "embed.dh": dh, "embed.dtable": dtable})
    meta["embed.vocab"] = vocab

    # LM head with the loss of LlamaForCausalLM on one window of 6 tokens, vocabulary 13.
    t, d, vocab = 6, 8, 13
    h, w = torch.randn(t, d, dtype=f64), torch.randn(vocab, d, dtype=f64)
    ids = torch.randint(0, vocab, (t,))
    hl, wl = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    logits = hl @ wl.T
    loss = F.cross_entropy(logits[:-1], ids[1:])
    loss.backward()
    out.update({"lm_head.h": h, "lm_head.w": w, "lm_head.ids": ids,
                "lm_head.lse": torch.logsumexp(logits.detach(), dim=-1, keepdim=True),
                "lm_head.dh": hl.grad, "lm_head.dw": wl.grad})
    meta["lm_head.loss"] = loss.item()

    # Causal GQA attention: two windows of 7 positions, 9 query heads over 3 KV heads of 4.
    windows, seq, heads, kv_heads, e = 2, 7, 9, 3, 4
    r = heads // kv_heads
    mask = torch.full((seq, seq), torch.finfo(f64).min, dtype=f64).triu(1)

    def split(rows, nh):
        return rows.reshape(windows, seq, nh, e).transpose(1, 2)

    def attention(q, k, v):
        # eager_attention_forward's steps, its float32 softmax in float64.
        ks, vs = repeat_kv(split(k, kv_heads), r), repeat_kv(split(v, kv_heads), r)
        scores = torch.matmul(split(q, heads), ks.transpose(2, 3)) * e ** -0.5 + mask
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, vs).transpose(1, 2).reshape(windows * seq, heads * e)
        lse = torch.logsumexp(scores, dim=-1).transpose(1, 2).reshape(windows * seq, heads)
        return out, lse

    q = torch.randn(windows * seq, heads * e, dtype=f64)
    k = torch.randn(windows * seq, kv_heads * e, dtype=f64)
    v = torch.randn(windows * seq, kv_heads * e, dtype=f64)
    d_o = torch.randn(windows * seq, heads * e, dtype=f64)
    o, lse = attention(q, k, v)
    dq, dk, dv = grads(lambda *a: attention(*a)[0], [q, k, v], d_o)
    out.update({"attention.q": q, "attention.k": k, "attention.v": v, "attention.do": d_o,
                "attention.o": o, "attention.lse": lse, "attention.dq": dq,
                "attention.dk": dk, "attention.dv": dv})
    meta["attention.heads"], meta["attention.kv_heads"], meta["attention.seq"] = heads, kv_heads, seq

    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, args.out, metadata={"prunebench.fixture": json.dumps(meta, sort_keys=True)})
    print(f"wrote {len(out)} tensors to {args.out}")


if __name__ == "__main__":
    main()
