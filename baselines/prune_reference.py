#!/usr/bin/env python3
"""The seeds' whole-model pruning in PyTorch: the reference that prunebench's ``prune-model``
is compared with (reports/quality-tiny-llama.md).

Usage
-----
    VENV/bin/python baselines/prune_reference.py --checkpoint DIR \\
        --calibration-text FILE --eval-text FILE \\
        [--nsamples 128] [--seqlen 2048] [--seed 0] [--eval-windows N] \\
        [--methods dense,magnitude,wanda,gblm,sparsegpt] [--sparsities 0.5,2:4] \\
        [--gradients FILE.safetensors] [--batch 8] [--threads N] --out results.json

VENV needs torch, transformers (5.x; 4.56 or later), tokenizers and safetensors. ``gblm``
needs ``--gradients``, the dense model's gradient statistic from
``baselines/compute_gradients.py`` (the file prunebench's ``--gradients`` reads). Token ids
may be given instead of texts (``--calibration-ids``, ``--eval-ids``: a ``.json`` list, or
raw little-endian uint32 for any other name, as docs/FORMATS.md).

What it does, as the seeds (locuslab/wanda and VILA-Lab/GBLM-Pruner, ``lib/prune.py`` and
``lib/eval.py``; SparseGPT's ``fasterprune``)
-----------------------------------------------------------------------------------------
* Tokens: the text encoded with ``DIR/tokenizer.json`` through the ``tokenizers`` library with
  the tokenizer's special tokens (``add_special_tokens=True``, what ``tokenizer(text)`` does),
  truncation and padding off: the ids prunebench reads.
* Calibration: ``--nsamples`` windows of ``--seqlen`` ids at SplitMix64 offsets from
  ``--seed`` (docs/FORMATS.md; bit for bit prunebench's windows), in place of the seeds'
  random C4 windows.
* Evaluation (``eval_ppl``): ids[i*T:(i+1)*T] for i < n // T (the remainder dropped), the first
  ``--eval-windows`` of them if given; nll = the mean over every predicted position (T - 1 per
  window) of the next-token cross entropy, ppl = exp(nll).
* Every method starts from a fresh copy of the checkpoint, loaded in float32 (the seeds run
  float16 on a GPU; the bf16 weights are exact in float32).
* ``magnitude`` (``prune_magnitude``): no calibration; per linear, |W| over the whole matrix,
  the entries at or below the sorted value at index int(numel * p) pruned; 2:4 per row, the
  2 smallest of every 4 consecutive columns.
* ``wanda``, ``gblm``, ``sparsegpt`` (``prune_wanda``, ``prune_gblm``, ``prune_sparsegpt``): the
  calibration windows through the embeddings (a ``Catcher`` on layer 0 keeps the layer's
  inputs and the keyword arguments the model passes it: mask, position embeddings); then per
  decoder layer: forward hooks on its seven linears accumulate the statistics over every
  window with the layer dense (Wanda's ``scaler_row``, SparseGPT's H), the seven linears are
  pruned, and the layer is run again with the pruned weights to give the next layer's inputs.
  Wanda: |W| * sqrt(scaler_row), per output row (stable sort, the int(cols * p) lowest).
  GBLM-Pruner: |W| * sqrt(scaler_row) + |W| * |G|, per row. SparseGPT: fasterprune with
  blocksize 128 and percdamp 0.01 (dead columns, damping, the upper Cholesky factor of the
  inverse, per-block masks at or below the block's threshold, the in-block OBS updates and
  the lazy batch update). N:M as the seeds (topk of each m-column group per row; SparseGPT on
  the current weights). The formulations are baselines/pytorch_baseline.py's, which writes
  them as the repositories do.
* Windows go through a layer ``--batch`` at a time (the seeds: one); the statistics take a
  batch of b windows as b samples (their running means count windows), so the result is the
  same up to float rounding.
* After each layer is pruned its seven weights are rounded to the checkpoint's dtype (bf16
  here) before the layer is run again, as prunebench does (so the next layer is calibrated on
  the model that would be written; the seeds hold the model in float16, which rounds the
  same way); ``--keep-f32`` keeps SparseGPT's updated weights in float32 instead. Masks alone
  change nothing under the rounding.

Output
------
A prunebench results file (``prunebench.results/1``, docs/FORMATS.md "Results files") with no timing
records and one ``quality`` record per model evaluated: ``key``
``PERPLEXITY(model=..,method=..,sparsity=..,nsamples=..,seqlen=..,seed=..)`` (the dense model:
``method=dense``, no sparsity or calibration), ``method``, ``params``, ``backend`` (``pytorch``),
``device``, ``windows``, ``seqlen``, ``tokens`` (predicted positions), ``nll``, ``ppl``,
``prune_seconds`` and ``eval_seconds`` (wall clock). ``prunebench report`` reads it. Bad input
gives a one-line ``error: ...`` on stderr and exit status 2.
"""

import argparse
import datetime
import json
import math
import os
import struct
import subprocess
import sys
import time

SCHEMA = "prunebench.results/1"
MASK64 = (1 << 64) - 1
METHODS = ["dense", "magnitude", "wanda", "gblm", "sparsegpt"]
BLOCKSIZE = 128


class InputError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    p = Parser(description="The seeds' whole-model pruning in PyTorch, perplexity as eval_ppl.")
    p.add_argument("--checkpoint", required=True, help="Hugging Face LLaMA folder")
    p.add_argument("--calibration-text", help="calibration text (tokenized with DIR/tokenizer.json)")
    p.add_argument("--calibration-ids", help="calibration token ids instead (.json list or raw u32)")
    p.add_argument("--eval-text", help="evaluation text")
    p.add_argument("--eval-ids", help="evaluation token ids instead")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="tokens per window (default min(2048, max_position_embeddings))")
    p.add_argument("--seed", type=int, default=0, help="calibration window seed, a u64")
    p.add_argument("--eval-windows", type=int, default=None,
                   help="evaluate only the first N windows (default: all)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma list of dense, magnitude, wanda, gblm, sparsegpt (default: all)")
    p.add_argument("--sparsities", default="0.5,2:4", help="comma list of fractions and N:M")
    p.add_argument("--gradients", help="GBLM's gradients (baselines/compute_gradients.py)")
    p.add_argument("--batch", type=int, default=8, help="windows per forward (default 8)")
    p.add_argument("--keep-f32", action="store_true",
                   help="do not round pruned weights to the checkpoint's dtype")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", required=True, help="results JSON to write")
    return p.parse_args(argv)


# ---- token ids and windows (docs/FORMATS.md) ------------------------------------------------

def read_ids(text_path, ids_path, checkpoint, what):
    if (text_path is None) == (ids_path is None):
        raise InputError(f"give the {what} as a text or as token ids (exactly one)")
    if text_path is not None:
        tok_path = os.path.join(checkpoint, "tokenizer.json")
        if not os.path.isfile(tok_path):
            raise InputError(f"a text needs {tok_path}, which does not exist (give token ids)")
        try:
            with open(text_path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read {text_path}: {e}")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tok_path)
        tok.no_truncation()
        tok.no_padding()
        return tok.encode(text, add_special_tokens=True).ids
    try:
        with open(ids_path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"cannot read {ids_path}: {e}")
    if ids_path.lower().endswith(".json"):
        try:
            ids = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{ids_path}: not JSON ({e})")
        if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2 ** 32 for i in ids):
            raise InputError(f"{ids_path}: expected a JSON list of integers from 0 to 2^32 - 1")
    else:
        if len(raw) % 4:
            raise InputError(f"{ids_path}: {len(raw)} bytes is not a whole number of u32 ids")
        ids = list(struct.unpack(f"<{len(raw) // 4}I", raw))
    if not ids:
        raise InputError(f"{ids_path}: no token ids")
    return ids


def calibration_windows(ids, nsamples, seqlen, seed):
    """prunebench's windows: SplitMix64 from the seed, offset = output mod (n - T + 1)."""
    n = len(ids)
    if n < seqlen:
        raise InputError(f"the text has {n} tokens, fewer than one window of {seqlen}")
    state, windows = seed & MASK64, []
    for _ in range(nsamples):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        off = z % (n - seqlen + 1)
        windows.append(ids[off:off + seqlen])
    return windows


def eval_windows(ids, seqlen, limit):
    n = len(ids) // seqlen
    if n == 0:
        raise InputError(f"the text has {len(ids)} tokens, fewer than one window of {seqlen}")
    if limit is not None:
        n = min(n, max(limit, 1))
    return [ids[i * seqlen:(i + 1) * seqlen] for i in range(n)]


# ---- the model -----------------------------------------------------------------------------

def load_model(checkpoint):
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.config.use_cache = False
    model.eval()
    return model


def checkpoint_dtype(checkpoint):
    """The dtype the checkpoint stores its decoder linears in (from config.json)."""
    import torch

    with open(os.path.join(checkpoint, "config.json")) as f:
        cfg = json.load(f)
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(name, torch.float32)


def layer_linears(layer):
    import torch.nn as nn

    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


class Stop(Exception):
    pass


def layer0_inputs(model, windows, batch):
    """The seeds' prepare_calibration_input: layer 0's inputs and keyword arguments, per batch."""
    import torch

    layers = model.model.layers
    captured = []

    class Catcher(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x, *args, **kwargs):
            captured.append((x.detach().clone(), kwargs))
            raise Stop

    layers[0] = Catcher(layers[0])
    try:
        with torch.no_grad():
            for i in range(0, len(windows), batch):
                x = torch.tensor(windows[i:i + batch], dtype=torch.long)
                try:
                    model(input_ids=x)
                except Stop:
                    pass
    finally:
        layers[0] = layers[0].module
    return captured


def run_layer(layer, batches):
    import torch

    out = []
    with torch.no_grad():
        for x, kw in batches:
            y = layer(x, **kw)
            out.append((y[0] if isinstance(y, tuple) else y, kw))
    return out


class Stats:
    """Wanda's scaler_row and SparseGPT's H over a linear's inputs, a window a sample."""

    def __init__(self, cols, hessian):
        import torch

        self.n = 0
        self.act = torch.zeros(cols, dtype=torch.float32)
        self.H = torch.zeros(cols, cols, dtype=torch.float32) if hessian else None

    def add(self, inp):
        b = inp.shape[0] if inp.dim() == 3 else 1
        x = inp.reshape(-1, inp.shape[-1]).t().float()
        self.act *= self.n / (self.n + b)
        if self.H is not None:
            self.H *= self.n / (self.n + b)
        self.n += b
        self.act += (x.norm(p=2, dim=1) ** 2) / self.n
        if self.H is not None:
            z = math.sqrt(2 / self.n) * x
            self.H += z.matmul(z.t())


def pattern_of(method, sparsity):
    """pytorch_baseline.mask's pattern string for the method's comparison group."""
    if ":" in sparsity:
        return sparsity
    return ("matrix" if method == "magnitude" else "row") + sparsity


def nm_of(sparsity):
    if ":" in sparsity:
        n, m = (int(v) for v in sparsity.split(":"))
        return n, m
    return 0, 0


def fasterprune(W, H, sparsity, pb):
    """SparseGPT's fasterprune (blocksize 128, percdamp 0.01) on a float32 copy of W."""
    W = W.clone().float()
    H = H.clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = pb.hinv_factor(H)
    prunen, prunem = nm_of(sparsity)
    p = 0.0 if prunen else float(sparsity)
    W, loss = pb.obs_prune(W, Hinv, p, prunen, prunem, blocksize=BLOCKSIZE)
    return W, loss


def prune_linear(method, sparsity, W, stats, G, pb):
    import torch

    if method == "sparsegpt":
        return fasterprune(W, stats.H, sparsity, pb)[0]
    act = stats.act if stats is not None else None
    metric = pb.score(method, W, act, G)
    mask = pb.mask(metric.float(), pattern_of(method, sparsity))
    out = W.clone()
    out[mask] = 0
    return out if out.dtype == torch.float32 else out.float()


def round_to(W, dtype):
    import torch

    return W if dtype == torch.float32 else W.to(dtype).float()


def prune_model(model, method, sparsity, calib, batch, grads, dtype, pb, log):
    """The seeds' loop (magnitude: no calibration, every linear on its own)."""
    import torch

    layers = model.model.layers
    if method == "magnitude":
        with torch.no_grad():
            for layer in layers:
                for lin in layer_linears(layer).values():
                    lin.weight.data = round_to(
                        prune_linear(method, sparsity, lin.weight.data, None, None, pb), dtype)
        return
    batches = layer0_inputs(model, calib, batch)
    for i, layer in enumerate(layers):
        t0 = time.time()
        linears = layer_linears(layer)
        stats = {name: Stats(lin.in_features, method == "sparsegpt") for name, lin in linears.items()}
        hooks = [lin.register_forward_hook(
            lambda _m, inp, _out, s=stats[name]: s.add(inp[0].data))
            for name, lin in linears.items()]
        try:
            run_layer(layer, batches)
        finally:
            for h in hooks:
                h.remove()
        with torch.no_grad():
            for name, lin in linears.items():
                G = None
                if method == "gblm":
                    G = grads[f"model.layers.{i}.{name}.weight"].float().abs()
                lin.weight.data = round_to(
                    prune_linear(method, sparsity, lin.weight.data, stats[name], G, pb), dtype)
        del stats
        batches = run_layer(layer, batches)
        log(f"  layer {i}: pruned in {time.time() - t0:.1f} s")


def perplexity(model, windows, batch):
    import torch
    import torch.nn.functional as F

    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = torch.tensor(windows[i:i + batch], dtype=torch.long)
            logits = model(input_ids=x).logits
            v = logits.shape[-1]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, v).float(),
                                   x[:, 1:].reshape(-1), reduction="sum")
            nll += float(loss.double())
            count += x[:, 1:].numel()
    return nll / count, count


def sparsity_fraction(model):
    total = zeros = 0
    for layer in model.model.layers:
        for lin in layer_linears(layer).values():
            total += lin.weight.numel()
            zeros += int((lin.weight == 0).sum())
    return zeros / max(total, 1)


# ---- the run -------------------------------------------------------------------------------

def git_commit(path):
    try:
        r = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                           text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def check_sparsity_arg(s):
    if ":" in s:
        try:
            n, m = (int(v) for v in s.split(":"))
        except ValueError:
            raise InputError(f"sparsity {s!r} is not N:M")
        if not 0 < n < m:
            raise InputError(f"sparsity {s}: N:M needs 0 < N < M")
        return s
    try:
        p = float(s)
    except ValueError:
        raise InputError(f"sparsity {s!r} is neither a fraction nor N:M")
    if not 0 <= p < 1:
        raise InputError(f"sparsity {s} is outside [0, 1)")
    return s


def run(args):
    ckpt = args.checkpoint
    cfg_path = os.path.join(ckpt, "config.json")
    if not os.path.isfile(cfg_path):
        raise InputError(f"--checkpoint {ckpt} has no config.json")
    with open(cfg_path) as f:
        config = json.load(f)
    max_pos = config.get("max_position_embeddings", 2048)
    seqlen = args.seqlen if args.seqlen is not None else min(2048, max_pos)
    if not 2 <= seqlen <= max_pos:
        raise InputError(f"--seqlen {seqlen} must be from 2 to max_position_embeddings {max_pos}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise InputError(f"unknown method {m!r} (one of {', '.join(METHODS)})")
    sparsities = [check_sparsity_arg(s.strip()) for s in args.sparsities.split(",") if s.strip()]
    if "gblm" in methods and not args.gradients:
        raise InputError("gblm needs --gradients FILE (baselines/compute_gradients.py)")
    if args.nsamples < 1 or args.batch < 1:
        raise InputError("--nsamples and --batch must be at least 1")
    if not 0 <= args.seed <= MASK64:
        raise InputError(f"--seed must be a u64, got {args.seed}")
    if os.path.isdir(args.out):
        raise InputError(f"--out {args.out} is a directory")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise InputError(f"--out folder {out_dir} does not exist")

    vocab = config.get("vocab_size")
    pruning = [m for m in methods if m != "dense"]
    calib = None
    if pruning:
        ids = read_ids(args.calibration_text, args.calibration_ids, ckpt, "calibration text")
        if vocab is not None and max(ids) >= vocab:
            raise InputError(f"calibration id {max(ids)} is not below vocab_size {vocab}")
        calib = calibration_windows(ids, args.nsamples, seqlen, args.seed)
        calib_name = os.path.basename(args.calibration_text or args.calibration_ids)
    ids = read_ids(args.eval_text, args.eval_ids, ckpt, "evaluation text")
    if vocab is not None and max(ids) >= vocab:
        raise InputError(f"evaluation id {max(ids)} is not below vocab_size {vocab}")
    evals = eval_windows(ids, seqlen, args.eval_windows)
    eval_name = os.path.basename(args.eval_text or args.eval_ids)

    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import pytorch_baseline as pb

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = torch.float32 if args.keep_f32 else checkpoint_dtype(ckpt)
    grads = None
    if "gblm" in methods:
        from safetensors.torch import load_file

        grads = load_file(args.gradients)
    device = f"CPU ({torch.get_num_threads()} threads)"
    model_name = os.path.basename(os.path.normpath(ckpt))

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    runs = [("dense", None)] if "dense" in methods else []
    runs += [(m, s) for m in pruning for s in sparsities]
    quality = []
    for method, sparsity in runs:
        model = load_model(ckpt)
        params = {"model": model_name, "method": method, "evaluation": eval_name,
                  "eval_windows": str(len(evals)), "seqlen": str(seqlen)}
        t0 = time.time()
        prune_s = None
        if method != "dense":
            log(f"{method} {sparsity}: pruning")
            prune_model(model, method, sparsity, calib, args.batch, grads, dtype, pb, log)
            prune_s = time.time() - t0
            params.update({"sparsity": sparsity, "refit": "none"})
            if method != "magnitude":
                params.update({"nsamples": str(args.nsamples), "seed": str(args.seed),
                               "calibration": calib_name})
            if method == "gblm":
                params["gradients"] = os.path.basename(args.gradients)
        t1 = time.time()
        nll, count = perplexity(model, evals, args.batch)
        eval_s = time.time() - t1
        keys = ["model", "method", "sparsity", "nsamples", "seqlen", "seed"]
        key = "PERPLEXITY(" + ",".join(f"{k}={params[k]}" for k in keys if k in params) + ")"
        rec = {
            "key": key, "method": method, "params": params, "backend": "pytorch",
            "device": device, "windows": len(evals), "seqlen": seqlen, "tokens": count,
            "nll": nll, "ppl": math.exp(nll), "sparsity_achieved": sparsity_fraction(model),
            "prune_seconds": prune_s, "eval_seconds": eval_s,
            "detail": "the seeds' formulation in PyTorch (baselines/prune_reference.py); "
                      + ("weights rounded to the checkpoint dtype after each layer"
                         if dtype != torch.float32 else "weights kept in float32"),
        }
        quality.append(rec)
        log(f"{key}: ppl {rec['ppl']:.4f} (nll {nll:.6f}) over {len(evals)} windows of {seqlen}; "
            f"prune {prune_s or 0:.1f} s, eval {eval_s:.1f} s")
        del model

    import tokenizers
    import transformers

    out = {
        "schema": SCHEMA,
        "tool": {"name": "pytorch-reference",
                 "version": f"torch {torch.__version__}, transformers {transformers.__version__}, "
                            f"tokenizers {tokenizers.__version__}",
                 "git_commit": git_commit(os.path.dirname(os.path.abspath(__file__))),
                 "command": " ".join(["python3", "baselines/prune_reference.py"] + sys.argv[1:])},
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": {"backend": "pytorch", "device": device, "vendor": "", "api": "host",
                   "driver": "", "device_type": "cpu", "limits": []},
        "ceilings": {"copy_gbps": None, "copy_bytes": 0, "fma_tflops": None, "fma_flops": 0,
                     "notes": ["a quality run: no ceilings measured"]},
        "timing": {"warmup": 0, "repeats": 0, "input_sets": 0, "source": "wall_clock"},
        "records": [],
        "quality": quality,
    }
    tmp = os.path.join(out_dir, f".{os.path.basename(args.out)}.partial-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    log(f"results written to {args.out}")


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
