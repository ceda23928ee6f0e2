#!/usr/bin/env python3
"""PyTorch baseline for prunebench: the reference formulations of Wanda, GBLM-Pruner and
SparseGPT as their papers' code runs them (sort-based masks, the per-column OBS loop, the
unfused gradient square-accumulate), timed on the same shapes and written in prunebench's
results schema (prunebench.results/1), so `prunebench report` puts both side by side.

Usage:
    python3 baselines/pytorch_baseline.py --model llama-7b --tokens 2048 --out results/pytorch.json

Keys match prunebench's canonical case names, e.g. PRUNE_WANDA(pattern=row0.5,rows=4096,cols=11008).
The ceilings are what PyTorch itself reaches: a device-to-device copy, and an f32 matrix product
with TF32 off (noted in the file), which is the rate the GEMM-shaped ops are held to.

With --checkpoint DIR and --model-text FILE (or --model-ids FILE), as `prunebench bench` takes
them, it also times GBLM-Pruner's gradient loop on a whole model: the checkpoint loaded with
transformers in float32 (its default attention, TF32 off), the --samples windows of --tokens
drawn from the text with --seed as prunebench draws them (compute_gradients.py's functions),
per window one forward and backward with labels = input_ids, (100·dW)² accumulated in float32
for the seven linears of every layer, the square root at the end; --layer-repeats runs, the wall
time of each (model load excluded), as the record GRADIENTS(model=…,nsamples=…,seqlen=…,
layers=…,norm=l2) with prunebench's work model. The model stays whole on the device here, where
prunebench loads one layer at a time. On a CPU shared with other work, PyTorch's threads wait on
each other: with a busy second core the fixture model's window took 0.5-1.1 s against 17 ms, so
time on an otherwise idle machine.
"""

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

# The gradient statistic's windows and constants, shared with the script that computes it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compute_gradients import LINEARS, InputError, read_ids, window_offsets  # noqa: E402

SCHEMA = "prunebench.results/1"
GBLM_SCALE = 100.0
PERCDAMP = 0.01
BLOCK = 128

# hidden, intermediate, heads, kv_heads (head_dim = hidden / heads), as prunebench's models.
MODELS = {
    "tiny": (256, 688, 8, 4, 32),
    # The committed trained model's shapes (models/tiny-llama), timed on synthetic weights.
    "tiny-llama": (256, 688, 8, 2, 32),
    "llama-7b": (4096, 11008, 32, 32, None),
    "llama-13b": (5120, 13824, 40, 40, None),
    "llama-30b": (6656, 17920, 52, 52, None),
    "llama-65b": (8192, 22016, 64, 64, None),
    "llama2-7b": (4096, 11008, 32, 32, None),
    "llama2-13b": (5120, 13824, 40, 40, None),
    "llama2-70b": (8192, 28672, 64, 8, None),
    "llama3-8b": (4096, 14336, 32, 8, None),
}


def linears(model):
    h, i, heads, kv, head_dim = MODELS[model]
    d = head_dim or h // heads
    q, k = heads * d, kv * d
    return [
        ("q_proj", q, h, "attn_in"), ("k_proj", k, h, "attn_in"), ("v_proj", k, h, "attn_in"),
        ("o_proj", h, q, "attn_out"), ("gate_proj", i, h, "mlp_in"), ("up_proj", i, h, "mlp_in"),
        ("down_proj", h, i, "mlp_act"),
    ]


# ---- the reference formulations --------------------------------------------------------------

def act_stat(scaler_row, nsamples, inp):
    """Wanda's WrappedGPT.add_batch: a running mean of squared column norms."""
    tmp = 1
    inp = inp.t().float()
    scaler_row *= nsamples / (nsamples + tmp)
    nsamples += tmp
    scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / nsamples
    return nsamples


def hessian(H, nsamples, inp):
    """SparseGPT's add_batch."""
    tmp = 1
    inp = inp.t().float()
    H *= nsamples / (nsamples + tmp)
    nsamples += tmp
    inp = math.sqrt(2 / nsamples) * inp
    H += inp.matmul(inp.t())
    return nsamples


def grad_acc_l2(acc, g):
    """GBLM-Pruner's gradient_computation: accumulate the scaled squared gradient."""
    acc += torch.square(g * GBLM_SCALE)


def grad_fused_l2(acc, dy, x):
    """The per-sample gradient of a linear, dY^T X, then GBLM's accumulate (unfused)."""
    g = dy.t().matmul(x)
    acc += torch.square(g * GBLM_SCALE)


def score(kind, W, act, G):
    if kind == "magnitude":
        return torch.abs(W)
    wanda = torch.abs(W) * torch.sqrt(act.reshape((1, -1)))
    if kind == "wanda":
        return wanda
    return wanda + torch.abs(W) * G


def mask(metric, pattern):
    """Masks as the repositories compute them: Wanda/GBLM sort each row (unstructured) or loop
    over column groups with topk (N:M); magnitude sorts the flattened matrix."""
    W_mask = torch.zeros_like(metric, dtype=torch.bool)
    if ":" in pattern:
        n, m = (int(v) for v in pattern.split(":"))
        for ii in range(metric.shape[1]):
            if ii % m == 0:
                tmp = metric[:, ii:(ii + m)].float()
                W_mask.scatter_(1, ii + torch.topk(tmp, n, dim=1, largest=False)[1], True)
    elif pattern.startswith("row"):
        p = float(pattern[3:])
        sort_res = torch.sort(metric, dim=-1, stable=True)
        indices = sort_res[1][:, :int(metric.shape[1] * p)]
        W_mask.scatter_(1, indices, True)
    else:
        p = float(pattern[6:])
        thresh = torch.sort(metric.flatten())[0][int(metric.numel() * p)]
        W_mask = metric <= thresh
    return W_mask


def apply_mask(W, W_mask):
    W[W_mask] = 0


def hinv_factor(H):
    """SparseGPT's fasterprune preamble: dead columns, damping, Cholesky inverse, upper factor."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    damp = PERCDAMP * torch.mean(torch.diag(H))
    diag = torch.arange(H.shape[0], device=H.device)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    return H


def obs_prune(W, Hinv, sparsity, prunen=0, prunem=0, blocksize=BLOCK):
    """SparseGPT's fasterprune loop with the factor given."""
    W = W.float()
    rows, columns = W.shape
    Losses = torch.zeros(rows, device=W.device)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d ** 2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        Losses += torch.sum(Losses1, 1) / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, torch.sum(Losses).item()


def recon_error(W, Wp, H):
    dW = W - Wp
    return (dW.matmul(H) * dW).sum().item(), (W.matmul(H) * W).sum().item()


# ---- cases, inputs, timing -------------------------------------------------------------------

def work(op, r, c, t):
    """Bytes and flops, the same work model as prunebench's (f32, 1-bit masks)."""
    f, mask_b = 4, r * ((c + 31) // 32) * 4
    table = {
        "ACT_STAT": (f * (t * c + 2 * c), 2 * t * c),
        "HESSIAN": (f * (t * c + 2 * c * c), 2 * t * c * c),
        "GRAD_ACC_L2": (f * 3 * r * c, 3 * r * c),
        "GRAD_FUSED_L2": (f * (t * (r + c) + 2 * r * c), 2 * r * c * t + 3 * r * c),
        "SCORE_MAGNITUDE": (f * 2 * r * c, 0),
        "SCORE_WANDA": (f * (2 * r * c + c), r * c),
        "SCORE_GBLM": (f * (3 * r * c + c), 3 * r * c),
        "MASK": (f * r * c + mask_b, 0),
        "APPLY_MASK": (f * 2 * r * c + mask_b, 0),
        "PRUNE_MAGNITUDE": (f * 2 * r * c + mask_b, 0),
        "PRUNE_WANDA": (f * (2 * r * c + c) + mask_b, r * c),
        "PRUNE_GBLM": (f * (2 * r * c + c + r * c) + mask_b, 3 * r * c),
        "HINV_FACTOR": (f * 2 * c * c, 4 * c * c * c // 3),
        "OBS_UNSTRUCTURED": (f * (2 * r * c + c * c) + mask_b, r * c * c + r * BLOCK * c),
        "OBS_NM": (f * (2 * r * c + c * c) + mask_b, r * c * c + r * BLOCK * c),
        "RECON_ERROR": (f * (2 * r * c + c * c), 4 * r * c * c),
    }
    return table[op]


COMPUTE_BOUND = {"HESSIAN", "GRAD_FUSED_L2", "HINV_FACTOR", "OBS_UNSTRUCTURED", "OBS_NM", "RECON_ERROR"}


def cases(shapes, tokens):
    """The model cases of prunebench's table (model_cases), in its order and with its names."""
    out = []
    for c in sorted({c for _, c in shapes}):
        out.append(("ACT_STAT", f"ACT_STAT(cols={c},tokens={tokens},batch=1)", 1, c, {}))
        out.append(("HESSIAN", f"HESSIAN(cols={c},tokens={tokens},batch=1)", 1, c, {}))
        out.append(("HINV_FACTOR", f"HINV_FACTOR(cols={c})", 1, c, {}))
    for r, c in shapes:
        rc = f"rows={r},cols={c}"
        out.append(("GRAD_ACC_L2", f"GRAD_ACC_L2({rc})", r, c, {}))
        out.append(("GRAD_FUSED_L2", f"GRAD_FUSED_L2({rc},tokens={tokens})", r, c, {}))
        for k in ("magnitude", "wanda", "gblm"):
            out.append((f"SCORE_{k.upper()}", f"SCORE_{k.upper()}({rc})", r, c, {"kind": k}))
        for p in ("row0.5", "matrix0.5", "2:4"):
            out.append(("MASK", f"MASK(pattern={p},{rc})", r, c, {"pattern": p}))
        out.append(("APPLY_MASK", f"APPLY_MASK({rc})", r, c, {}))
        out.append(("PRUNE_MAGNITUDE", f"PRUNE_MAGNITUDE(pattern=matrix0.5,{rc})", r, c,
                    {"kind": "magnitude", "pattern": "matrix0.5"}))
        for k in ("wanda", "gblm"):
            for p in ("row0.5", "2:4"):
                out.append((f"PRUNE_{k.upper()}", f"PRUNE_{k.upper()}(pattern={p},{rc})", r, c,
                            {"kind": k, "pattern": p}))
        out.append(("OBS_UNSTRUCTURED", f"OBS_UNSTRUCTURED(p=0.5,{rc},block={BLOCK})", r, c, {"n": 0}))
        out.append(("OBS_NM", f"OBS_NM(pattern=2:4,{rc},block={BLOCK})", r, c, {"n": 2, "m": 4}))
        out.append(("RECON_ERROR", f"RECON_ERROR({rc})", r, c, {}))
    return out


def heavy(rows, cols, dev, gen):
    """Heavy-tailed data with a few large columns, as prunebench's inputs."""
    x = torch.randn(rows, cols, device=dev, generator=gen)
    scale = torch.ones(cols, device=dev)
    k = max(1, cols // 50)
    scale[torch.randperm(cols, device=dev, generator=gen)[:k]] = 30.0
    return x * scale


def spd(cols, tokens, dev, gen):
    x = heavy(max(tokens, 8), cols, dev, gen)
    return 2.0 / x.shape[0] * x.t().matmul(x)


def make_inputs(op, r, c, t, extra, dev, gen):
    """A closure running the op once on fresh device inputs."""
    if op == "ACT_STAT":
        a, x = torch.rand(c, device=dev, generator=gen), heavy(t, c, dev, gen)
        return lambda: act_stat(a, 3, x)
    if op == "HESSIAN":
        H, x = spd(c, t, dev, gen), heavy(t, c, dev, gen)
        return lambda: hessian(H, 2, x)
    if op == "GRAD_ACC_L2":
        acc, g = torch.rand(r, c, device=dev, generator=gen), 1e-3 * heavy(r, c, dev, gen)
        return lambda: grad_acc_l2(acc, g)
    if op == "GRAD_FUSED_L2":
        acc = torch.rand(r, c, device=dev, generator=gen)
        dy, x = 1e-3 * heavy(t, r, dev, gen), heavy(t, c, dev, gen)
        return lambda: grad_fused_l2(acc, dy, x)
    W = 0.02 * heavy(r, c, dev, gen)
    act, G = torch.rand(c, device=dev, generator=gen), 1e-2 * torch.rand(r, c, device=dev, generator=gen)
    if op.startswith("SCORE_"):
        return lambda: score(extra["kind"], W, act, G)
    if op == "MASK":
        s = torch.abs(W)
        return lambda: mask(s, extra["pattern"])
    if op == "APPLY_MASK":
        m = torch.rand(r, c, device=dev, generator=gen) < 0.5
        return lambda: apply_mask(W, m)
    if op.startswith("PRUNE_"):
        return lambda: apply_mask(W, mask(score(extra["kind"], W, act, G), extra["pattern"]))
    if op == "HINV_FACTOR":
        H = spd(c, t, dev, gen)
        return lambda: hinv_factor(H)
    if op.startswith("OBS_"):
        Hinv = hinv_factor(spd(c, t, dev, gen))
        return lambda: obs_prune(W, Hinv, 0.5, extra.get("n", 0), extra.get("m", 0))
    if op == "RECON_ERROR":
        H = spd(c, t, dev, gen)
        Wp = W * (torch.rand(r, c, device=dev, generator=gen) < 0.5)
        return lambda: recon_error(W, Wp, H)
    raise ValueError(op)


class Timer:
    """CUDA events on a GPU, the wall clock with synchronisation elsewhere."""

    def __init__(self, dev):
        self.cuda = dev.type == "cuda"
        self.source = "device_timestamps" if self.cuda else "wall_clock"

    def time(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def timed(timer, fns, warmup, repeats):
    times = []
    for i in range(warmup + repeats):
        t = timer.time(fns[i % len(fns)])
        if i >= warmup:
            times.append(t)
    return times


def record(key, op, params, dev_name, times, b, f, bound, ceilings, source, kind="op", stages=None):
    med = statistics.median(times) if times else None
    rec = {
        "key": key, "kind": kind, "op": op, "params": params, "backend": "pytorch",
        "device": dev_name, "status": "unverified",
        "detail": "reference formulation of the method's own code",
        "median_s": med, "min_s": min(times) if times else None, "max_s": max(times) if times else None,
        "repeats": len(times), "time_source": source, "bytes": b, "flops": f,
        "gbps": None, "tflops": None, "bound": bound, "peak_fraction": None, "checks": [],
        "stages": stages or {},
    }
    if med:
        rec["gbps"], rec["tflops"] = b / med / 1e9, f / med / 1e12
        peak = ceilings["copy_gbps"] if bound == "memory" else ceilings["fma_tflops"]
        if peak:
            rec["peak_fraction"] = (rec["gbps"] if bound == "memory" else rec["tflops"]) / peak
    return rec


def params_of(key):
    inner = key[key.index("(") + 1:-1]
    return dict(kv.split("=", 1) for kv in inner.split(","))


def ceilings(dev, timer, warmup, repeats, large):
    n = (1 << 28) if large else (1 << 24)  # f32 elements: 1 GiB on a GPU
    src, dst = torch.randn(n, device=dev), torch.empty(n, device=dev)
    t = statistics.median(timed(timer, [lambda: dst.copy_(src)], warmup, repeats))
    s = 8192 if large else 1024
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    a, b = torch.randn(s, s, device=dev), torch.randn(s, s, device=dev)
    tg = statistics.median(timed(timer, [lambda: a.matmul(b)], warmup, repeats))
    del src, dst, a, b
    return {
        "copy_gbps": 2 * 4 * n / t / 1e9, "copy_bytes": 2 * 4 * n,
        "fma_tflops": 2 * s ** 3 / tg / 1e12, "fma_flops": 2 * s ** 3,
        "notes": [f"fma_tflops is PyTorch's f32 matrix product {s}x{s}x{s} with TF32 off"],
    }


def layer_run(model, method, sparsity, samples, tokens, dev, gen):
    """A whole layer as the repositories prune it; returns the time of each stage."""
    stages = {}

    def stage(name, fn):
        t0 = time.perf_counter()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
        return out

    groups = {}
    for name, r, c, g in linears(model):
        groups.setdefault(g, []).append((name, r, c))
    for g, members in groups.items():
        c = members[0][2]
        xs = [heavy(tokens, c, dev, gen) for _ in range(samples)]
        Ws = {n: 0.02 * torch.randn(r, c, device=dev, generator=gen) for n, r, _ in members}
        if method == "sparsegpt":
            H = torch.zeros(c, c, device=dev)
            n = 0
            for x in xs:
                n = stage("hessian", lambda: hessian(H, n, x))
            Hinv = stage("hinv_factor", lambda: hinv_factor(H))
            for name, _, _ in members:
                nm = (2, 4) if sparsity == "2:4" else (0, 0)
                stage("obs_prune", lambda: obs_prune(Ws[name], Hinv, 0.5, *nm))
            continue
        act = torch.zeros(c, device=dev)
        if method in ("wanda", "gblm"):
            n = 0
            for x in xs:
                n = stage("act_stat", lambda: act_stat(act, n, x))
        for name, r, _ in members:
            G = None
            if method == "gblm":
                acc = torch.zeros(r, c, device=dev)
                for x in xs:
                    dy = 1e-3 * torch.randn(tokens, r, device=dev, generator=gen)
                    stage("grad_accumulate", lambda: grad_fused_l2(acc, dy, x))
                G = stage("grad_finalize", lambda: torch.sqrt(acc))
            pattern = sparsity if sparsity == "2:4" else ("matrix0.5" if method == "magnitude" else "row0.5")
            W = Ws[name]
            stage("prune_scored", lambda: apply_mask(W, mask(score(method, W, act, G), pattern)))
    return stages


# ---- GBLM's gradient loop on a whole model ---------------------------------------------------

def gradients_work(config, windows, seq):
    """Bytes and flops of the statistic, prunebench's work model (harness/src/bench.rs,
    gradients_work), computed the same way so the two records' rates compare. Per window, with
    P the parameters of a layer's seven linears, D = heads * head_dim, V * H the LM head:
    linears 2PT forward + 2PT recomputed + 4PT backward (dX and dW) per layer; attention
    A = 2T(T+1)D forward, A recomputed, 2.5A backward per layer; the head 2VHT forward and 4VHT
    backward (logits again, dX; no dW). Bytes: f32 weights per pass (linears three times, the
    head twice) and each linear's f32 accumulator read and written once per window."""
    h, i = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    d = config.get("head_dim") or h // heads
    layers, vocab = config["num_hidden_layers"], config["vocab_size"]
    p = 2 * heads * d * h + 2 * kv * d * h + 3 * i * h
    t, head = seq, vocab * h
    attn = 2 * t * (t + 1) * heads * d
    flops = layers * (8 * p * t + 9 * attn // 2) + 6 * head * t
    nbytes = 4 * (3 * p * layers + 2 * head) + 2 * 4 * p * layers
    return nbytes * windows, flops * windows


def gradients_inputs(a):
    """The GRADIENTS record's config.json, ids and window offsets, checked before any work
    (an InputError says what is wrong)."""
    from types import SimpleNamespace

    ckpt = a.checkpoint
    if (a.model_text is None) == (a.model_ids is None):
        raise InputError("the GRADIENTS record needs exactly one of --model-text and --model-ids")
    if not os.path.isfile(os.path.join(ckpt, "config.json")):
        raise InputError(f"--checkpoint {ckpt} has no config.json")
    for flag, path in (("--model-text", a.model_text), ("--model-ids", a.model_ids)):
        if path is not None and not os.path.isfile(path):
            raise InputError(f"{flag} {path} is not a file")
    if a.model_text is not None and not os.path.isfile(os.path.join(ckpt, "tokenizer.json")):
        raise InputError(f"--model-text needs {ckpt}/tokenizer.json (or give --model-ids)")
    if not 0 <= a.seed < 1 << 64:
        raise InputError(f"--seed must be a u64, got {a.seed}")
    with open(os.path.join(ckpt, "config.json")) as f:
        config = json.load(f)
    seq, nsamples = a.tokens, a.samples
    if nsamples < 1 or seq < 2:
        raise InputError(f"the GRADIENTS record needs --samples >= 1 and --tokens >= 2 (a next-token target), got {nsamples} and {seq}")
    if seq > config.get("max_position_embeddings", seq):
        raise InputError(f"--tokens {seq} is above max_position_embeddings {config['max_position_embeddings']}")
    ids = read_ids(SimpleNamespace(text=a.model_text, token_ids=a.model_ids), ckpt)
    vocab = config["vocab_size"]
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise InputError(f"{len(bad)} ids outside the vocabulary [0, {vocab}), first {bad[0]}")
    return config, ids, window_offsets(len(ids), seq, nsamples, a.seed)


def gradients_record(a, inputs, dev, dev_name, ceil):
    """Times GBLM-Pruner's loop on the windows of gradients_inputs; the GRADIENTS record."""
    config, ids, offsets = inputs
    ckpt, seq, nsamples = a.checkpoint, a.tokens, a.samples
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).to(dev)
    model.eval()  # LLaMA has no dropout: the same as GBLM's model.train()
    for q in model.parameters():
        q.requires_grad_(False)
    weights = [layer.get_submodule(n).weight for layer in model.model.layers for n in LINEARS]
    for w in weights:
        w.requires_grad_(True)
    ids_t = torch.tensor(ids, dtype=torch.int64, device=dev)
    windows = [ids_t[o:o + seq].unsqueeze(0) for o in offsets]

    def run(windows):
        acc = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
        # Summed on the device: reading each window's loss would synchronise every window.
        loss_sum = torch.zeros((), device=dev)
        for x in windows:
            out = model(input_ids=x, labels=x, use_cache=False)
            out.loss.backward()
            with torch.no_grad():
                for s, w in zip(acc, weights):
                    s += torch.square(w.grad.float() * GBLM_SCALE)
                    w.grad = None
            loss_sum += out.loss.detach()
        for s in acc:
            s.sqrt_()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return loss_sum.item() / len(windows)

    # No untimed run, as prunebench's record has none: the median of the runs is the figure.
    times = []
    for _ in range(max(1, a.layer_repeats)):
        t0 = time.perf_counter()
        loss = run(windows)
        times.append(time.perf_counter() - t0)
    name = os.path.basename(os.path.realpath(ckpt))
    layers = config["num_hidden_layers"]
    key = f"GRADIENTS(model={name},nsamples={nsamples},seqlen={seq},layers={layers},norm=l2)"
    params = {"model": name, "nsamples": str(nsamples), "seqlen": str(seq), "layers": str(layers), "norm": "l2"}
    b, f = gradients_work(config, nsamples, seq)
    rec = record(key, "GRADIENTS", params, dev_name, times, b, f, "compute", ceil, "wall_clock", kind="model")
    rec["detail"] = ("wall time of GBLM-Pruner's loop over every window (forward, backward, "
                     "accumulation; the model resident, its load excluded)")
    print(f"{key:<70} {rec['median_s']:.4f} s (mean loss {loss:.4f})", file=sys.stderr)
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", choices=sorted(MODELS))
    ap.add_argument("--tokens", type=int, default=256, help="calibration tokens per sample")
    ap.add_argument("--samples", type=int, default=16, help="calibration samples for layers")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--input-sets", type=int, default=3)
    ap.add_argument("--layer-repeats", type=int, default=3)
    ap.add_argument("--ops", default="", help="only cases whose name contains this")
    ap.add_argument("--skip-ops", default="", help="comma list of op names not to run (e.g. MASK for very slow N:M loops)")
    ap.add_argument("--methods", default="all", help="layer methods: all, none, or a list")
    ap.add_argument("--checkpoint", help="a Hugging Face LLaMA folder: the GRADIENTS record on it")
    ap.add_argument("--model-text", help="the GRADIENTS record's windows: a text, tokenized with the checkpoint's tokenizer.json")
    ap.add_argument("--model-ids", help="the same with token ids (a JSON list, or raw uint32 LE in a .bin)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the GRADIENTS record's window offsets")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    whole = a.model_text is not None or a.model_ids is not None
    if whole and a.checkpoint is None:
        ap.error("--model-text/--model-ids time the --checkpoint model: give --checkpoint DIR")
    if a.checkpoint is not None and not whole:
        ap.error("--checkpoint is for the GRADIENTS record: give --model-text or --model-ids")
    grad_inputs = None
    if whole:
        try:
            grad_inputs = gradients_inputs(a)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    dev = torch.device(a.device)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0)
    timer = Timer(dev)
    if dev.type == "cuda":
        dev_name = torch.cuda.get_device_name(dev)
        api = f"CUDA {torch.version.cuda}"
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except Exception:  # the driver version is metadata; its absence is not an error
            driver = ""
        dtype = "discrete"
    else:
        dev_name, api, driver, dtype = f"CPU ({torch.get_num_threads()} threads)", "host", "", "cpu"
    ceil = ceilings(dev, timer, a.warmup, a.repeats, dev.type == "cuda")
    print(f"{dev_name}: copy {ceil['copy_gbps']:.1f} GB/s, f32 GEMM {ceil['fma_tflops']:.2f} TFLOP/s", file=sys.stderr)

    shapes = sorted({(r, c) for _, r, c, _ in linears(a.model)})
    skip = {s.strip().upper() for s in a.skip_ops.split(",") if s.strip()}
    records = []
    for op, key, r, c, extra in cases(shapes, a.tokens):
        if a.ops.upper() not in key or op in skip:
            continue
        try:
            fns = [make_inputs(op, r, c, a.tokens, extra, dev, gen) for _ in range(max(1, a.input_sets))]
            times = timed(timer, fns, a.warmup, a.repeats)
            status = None
        except torch.OutOfMemoryError as e:
            times, status = [], ("unsupported", str(e).splitlines()[0])
        b, f = work(op, r, c, a.tokens)
        rec = record(key, op, params_of(key), dev_name, times, b, f,
                     "compute" if op in COMPUTE_BOUND else "memory", ceil, timer.source)
        if status:
            rec["status"], rec["detail"] = status
        print(f"{key:<70} {rec['median_s'] or 0:.6f} s", file=sys.stderr)
        records.append(rec)
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    methods = ["magnitude", "wanda", "gblm", "sparsegpt"] if a.methods == "all" else \
        ([] if a.methods == "none" else a.methods.split(","))
    for method in methods:
        for sparsity in ("0.5", "2:4"):
            runs = [layer_run(a.model, method, sparsity, a.samples, a.tokens, dev, gen)
                    for _ in range(max(1, a.layer_repeats))]
            totals = [sum(s.values()) for s in runs]
            stages = {k: statistics.median([s.get(k, 0.0) for s in runs]) for k in runs[0]}
            key = f"LAYER(model={a.model},method={method},sparsity={sparsity},samples={a.samples},tokens={a.tokens},linears=all)"
            params = {"model": a.model, "method": method, "sparsity": sparsity, "samples": str(a.samples),
                      "tokens": str(a.tokens), "linears": "all"}
            rec = record(key, f"LAYER_{method.upper()}", params, dev_name, totals, 0, 0, "compute", ceil,
                         "wall_clock", kind="layer", stages=stages)
            rec["detail"] = "time of the pruning stages (statistics included); see `stages`"
            print(f"{key:<70} {rec['median_s']:.4f} s", file=sys.stderr)
            records.append(rec)

    if grad_inputs is not None:
        records.append(gradients_record(a, grad_inputs, dev, dev_name, ceil))

    out = {
        "schema": SCHEMA,
        "tool": {"name": "pytorch", "version": torch.__version__, "git_commit": "",
                 "command": " ".join(["python3", os.path.basename(sys.argv[0])] + sys.argv[1:])},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": {"backend": "pytorch", "device": dev_name, "vendor": "", "api": api, "driver": driver,
                   "device_type": dtype, "limits": []},
        "ceilings": ceil,
        "timing": {"warmup": a.warmup, "repeats": a.repeats, "input_sets": a.input_sets, "source": timer.source},
        "records": records,
    }
    tmp = a.out + f".partial-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, a.out)
    print(f"results written to {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
