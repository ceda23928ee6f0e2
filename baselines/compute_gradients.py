#!/usr/bin/env python3
"""GBLM-Pruner's gradient statistic G for every linear of a LLaMA checkpoint.

Usage
-----
    VENV/bin/python baselines/compute_gradients.py --checkpoint DIR \\
        (--text FILE | --token-ids FILE) [--nsamples 128] [--seqlen 2048] \\
        [--seed 0] [--grad-norm l2|l1] [--threads N] --out FILE.safetensors

VENV needs torch, transformers (5.x; 4.56 or later loads with ``dtype=``),
tokenizers and safetensors. DIR is a Hugging Face folder (config.json and
model.safetensors; tokenizer.json when calibrating on --text). --text is
encoded with DIR/tokenizer.json through the tokenizers library, with special
tokens (so a bos first when the tokenizer adds one); --token-ids is a JSON list
of ints or, for a name ending in .bin, raw little-endian uint32.

What it computes, and how it matches GBLM-Pruner
------------------------------------------------
GBLM-Pruner's gradient_computation.py (github.com/VILA-Lab/GBLM-Pruner): for each
of 128 calibration windows of 2048 tokens (batch 1), one forward and backward of
the dense model with ``labels = input_ids`` (transformers' mean next-token cross
entropy over the window's T-1 predicted positions); for every nn.Linear of every
decoder layer, with ``grad = weight.grad`` cast to float32 and ``scale = 100``
(its --scale default):

    gradients_l2 += (grad * scale) ** 2      (float32)
    gradients_l1 += |grad * scale|           (float16 there)

and at the end ``gradients_l2 = sqrt(gradients_l2)`` (then saved as float16);
the l1 sums are saved as they are. prune.py's GBLM score then uses
``|W| * G`` (plus Wanda's term).

prunebench's definition (docs/ALGORITHMS.md section 2; kernels/src/ops.rs):
``GBLM_GRAD_SCALE = 100.0`` is c, and with g_s = dY_s^T X_s the gradient of
window s's loss with respect to W (rows x cols, the HF weight layout),

    GradNorm::L2:  A += (c * g_s)^2, G = sqrt(A)    (the default, as in GBLM)
    GradNorm::L1:  A += |c * g_s|,   G = A

This script is exactly that: g_s is ``weight.grad`` after ``loss.backward()`` on
window s (the loss is transformers' mean over the T-1 next-token positions, so
dY_s carries the 1/(T-1)), ``v = c * g_s`` is formed in float32 and ``v * v`` or
``|v|`` added to a float32 A, and sqrt(A) taken once after the last window.
Differences from the original, all deliberate: the model runs in float32 (the
original in float16), l1 accumulates in float32 (not float16), G is saved in
float32 (not float16), dropout is off (LLaMA has none, so train/eval mode is the
same), and windows are drawn as prunebench draws them (below), not with Python's
``random`` over C4 documents.

Calibration windows (must match the Rust side bit for bit)
----------------------------------------------------------
n = number of ids, T = seqlen (error if n < T). SplitMix64 with state = seed;
for each window: state += 0x9E3779B97F4A7C15; z = state;
z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
z ^= z >> 31 (all mod 2^64); offset = z mod (n - T + 1); window = ids[offset:offset+T].

Output
------
One safetensors file, float32: per decoder layer i the seven tensors
``model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`` and
``model.layers.{i}.mlp.{gate,up,down}_proj.weight``, each [out, in] like the
weight, holding G. Metadata: ``prunebench.gradients`` = "1", ``grad_norm``,
``nsamples``, ``seqlen``, ``seed``, ``grad_scale`` = "100". Written to a
temporary file beside --out, then renamed. Bad input gives a one-line
``error: ...`` on stderr and exit status 2.
"""

import argparse
import json
import os
import struct
import sys

GBLM_GRAD_SCALE = 100.0  # kernels/src/ops.rs GBLM_GRAD_SCALE
MASK64 = (1 << 64) - 1
LINEARS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


class InputError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    p = Parser(description="GBLM-Pruner gradient statistic G per linear of a LLaMA checkpoint.")
    p.add_argument("--checkpoint", required=True, help="Hugging Face folder")
    p.add_argument("--text", help="calibration text, encoded with the folder's tokenizer.json")
    p.add_argument("--token-ids", help="calibration ids: a JSON list of ints, or raw uint32 LE (.bin)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument(
        "--seqlen",
        type=int,
        default=None,
        help="tokens per window (default 2048, capped at max_position_embeddings)",
    )
    p.add_argument("--seed", type=int, default=0, help="window seed, a u64 (default 0)")
    p.add_argument("--grad-norm", choices=["l2", "l1"], default="l2")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's)")
    return p.parse_args(argv)


def window_offsets(n, seqlen, count, seed):
    """prunebench's calibration windows: SplitMix64 outputs mod (n - seqlen + 1)."""
    if n < seqlen:
        raise InputError(f"{n} calibration tokens are fewer than one window of {seqlen}")
    span = n - seqlen + 1
    state = seed & MASK64
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        out.append(z % span)
    return out


def read_ids(args, checkpoint):
    if (args.text is None) == (args.token_ids is None):
        raise InputError("give exactly one of --text and --token-ids")
    if args.text is not None:
        tok_path = os.path.join(checkpoint, "tokenizer.json")
        if not os.path.isfile(tok_path):
            raise InputError(f"--text needs {tok_path}, which does not exist (or give --token-ids)")
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"cannot read --text {args.text}: {e}")
        from tokenizers import Tokenizer

        return Tokenizer.from_file(tok_path).encode(text, add_special_tokens=True).ids
    path = args.token_ids
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise InputError(f"cannot read --token-ids {path}: {e}")
    if path.endswith(".bin"):
        if len(raw) % 4:
            raise InputError(f"{path}: {len(raw)} bytes is not a whole number of uint32 ids")
        return list(struct.unpack(f"<{len(raw) // 4}I", raw))
    try:
        ids = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not JSON ({e}); raw uint32 files must end in .bin")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InputError(f"{path}: expected a JSON list of ints")
    return ids


def check_out(out, checkpoint):
    out_abs = os.path.realpath(out)
    ckpt_abs = os.path.realpath(checkpoint)
    if os.path.isdir(out_abs):
        raise InputError(f"--out {out} is a directory")
    if os.path.exists(out_abs) and os.path.commonpath([out_abs, ckpt_abs]) == ckpt_abs:
        raise InputError(f"--out {out} already exists inside the checkpoint folder; refusing to overwrite it")
    parent = os.path.dirname(out_abs)
    if not os.path.isdir(parent):
        raise InputError(f"--out folder {parent} does not exist")


def save_safetensors(tensors, path, metadata):
    """safetensors.torch.save_file to a temporary file beside path, header keys sorted (the
    library writes metadata in hash-map order), then renamed onto path."""
    import safetensors.torch

    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            raw = f.read()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.dumps(json.loads(raw[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
        header += b" " * (-len(header) % 8)
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header + raw[8 + n :])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run(args):
    checkpoint = args.checkpoint
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise InputError(f"--checkpoint {checkpoint} has no config.json")
    if args.nsamples < 1:
        raise InputError(f"--nsamples must be at least 1, got {args.nsamples}")
    if not 0 <= args.seed <= MASK64:
        raise InputError(f"--seed must be a u64, got {args.seed}")
    check_out(args.out, checkpoint)
    with open(os.path.join(checkpoint, "config.json")) as f:
        config = json.load(f)
    max_pos = config.get("max_position_embeddings")
    vocab = config.get("vocab_size")
    if not isinstance(max_pos, int) or not isinstance(vocab, int):
        raise InputError(f"{checkpoint}/config.json lacks max_position_embeddings or vocab_size")
    if args.seqlen is None:
        seqlen = min(2048, max_pos)
    else:
        seqlen = args.seqlen
        if seqlen > max_pos:
            raise InputError(f"--seqlen {seqlen} is above max_position_embeddings {max_pos}")
    if seqlen < 2:
        raise InputError(f"--seqlen must be at least 2 (one next-token target), got {seqlen}")

    ids = read_ids(args, checkpoint)
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise InputError(f"{len(bad)} ids outside the vocabulary [0, {vocab}), first {bad[0]}")
    offsets = window_offsets(len(ids), seqlen, args.nsamples, args.seed)

    import torch
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager")
    model.eval()  # LLaMA has no dropout: the same as GBLM's model.train()
    try:
        layers = model.model.layers
        linears = {
            f"model.layers.{i}.{name}.weight": layer.get_submodule(name).weight
            for i, layer in enumerate(layers)
            for name in LINEARS
        }
    except AttributeError as e:
        raise InputError(f"{checkpoint} is not a LLaMA-layout model ({e})")
    for p in model.parameters():
        p.requires_grad_(False)
    for w in linears.values():
        w.requires_grad_(True)
    acc = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in linears.items()}
    c = torch.tensor(GBLM_GRAD_SCALE, dtype=torch.float32)

    ids_t = torch.tensor(ids, dtype=torch.int64)
    for s, off in enumerate(offsets):
        x = ids_t[off : off + seqlen].unsqueeze(0)
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        with torch.no_grad():
            for name, w in linears.items():
                v = w.grad.to(torch.float32) * c
                acc[name] += v * v if args.grad_norm == "l2" else v.abs()
                w.grad = None
        print(f"window {s + 1}/{len(offsets)} offset {off} loss {out.loss.item():.4f}", file=sys.stderr)
    if args.grad_norm == "l2":
        for name in acc:
            acc[name] = acc[name].sqrt()
    meta = {
        "prunebench.gradients": "1",
        "grad_norm": args.grad_norm,
        "nsamples": str(args.nsamples),
        "seqlen": str(seqlen),
        "seed": str(args.seed),
        "grad_scale": f"{GBLM_GRAD_SCALE:g}",
    }
    save_safetensors({k: v.contiguous() for k, v in acc.items()}, args.out, meta)
    print(f"wrote {args.out}: {len(acc)} tensors, {len(ids)} ids, {len(offsets)} windows of {seqlen}")


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
