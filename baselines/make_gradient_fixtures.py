#!/usr/bin/env python3
"""Make the whole-model gradient fixtures: transformers' autograd on the committed forward
fixtures (tests/fixtures/forward/{mha,gqa}), for the Rust whole-model backward test.

Usage
-----
    VENV/bin/python baselines/make_gradient_fixtures.py [--fixtures tests/fixtures/forward]

VENV as for make_forward_fixtures.py (torch, transformers, safetensors). For each model it
loads the checkpoint as LlamaForCausalLM in float64 with that script's ``true_float64``
(RMSNorm, eager attention's softmax and RoPE in float64 too), takes the two windows ``ids``
of its reference.safetensors, and writes ``gradients.safetensors`` beside it: the gradient
of HF's causal-LM loss (labels = input_ids: the mean next-token cross entropy over both
windows' 2 x 23 predicted positions) with respect to every linear of every layer, under the
weight's HF name, stored as float32 (the test's tolerance is far above f32 rounding); and
GBLM-Pruner's statistic over the same two windows, one backward each (G = √Σ_w (100·dW_w)²,
as baselines/compute_gradients.py, in float64), under ``gblm.`` + the weight's name. The
loss is in the metadata. Seeded and single-threaded: the same versions write the same bytes.
"""

import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_forward_fixtures import next_token_loss, true_float64  # noqa: E402

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if n.split(".")[-2] in LINEARS}


def gradients(folder):
    ids = load_file(os.path.join(folder, "reference.safetensors"))["ids"]
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.double().eval()
    with true_float64(model):
        loss = next_token_loss(model(input_ids=ids).logits, ids)
        loss.backward()
        batch = linear_grads(model)
        acc = {n: torch.zeros_like(g) for n, g in batch.items()}
        for w in range(ids.shape[0]):
            model.zero_grad()
            window = ids[w : w + 1]
            next_token_loss(model(input_ids=window).logits, window).backward()
            for n, g in linear_grads(model).items():
                acc[n] += (100.0 * g) ** 2
    out = {n: g.to(torch.float32).contiguous() for n, g in batch.items()}
    out.update({f"gblm.{n}": a.sqrt().to(torch.float32).contiguous() for n, a in acc.items()})
    return out, loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", default="tests/fixtures/forward")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name in ("mha", "gqa"):
        folder = os.path.join(args.fixtures, name)
        grads, loss = gradients(folder)
        path = os.path.join(folder, "gradients.safetensors")
        save_file(grads, path, metadata={"prunebench.fixture": json.dumps({"loss": loss})})
        print(f"{path}: {len(grads)} tensors, loss {loss:.12f}, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
