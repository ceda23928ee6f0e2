"""Loads checkpoints written by `prunebench prune-model --out` with transformers and prints
their perplexity on the first windows of a text, to compare with `prunebench perplexity`.

    python baselines/check_hf_load.py --text TEXT --seqlen T --windows N DIR [DIR ...]

The perplexity is the seeds' eval_ppl on non-overlapping windows of the tokenizer.json ids of
TEXT (special tokens added, as prunebench does): exp of the mean next-token loss.
"""
import argparse
import math

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--text", required=True)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--windows", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(2)
    with open(a.text, encoding="utf-8") as f:
        text = f.read()
    for d in a.dirs:
        model = AutoModelForCausalLM.from_pretrained(
            d, dtype=torch.float32, attn_implementation="eager")
        ids = Tokenizer.from_file(f"{d}/tokenizer.json").encode(text).ids
        n = min(a.windows, len(ids) // a.seqlen)
        x = torch.tensor(ids[: n * a.seqlen]).view(n, a.seqlen)
        with torch.no_grad():
            loss = model(x, labels=x).loss.item()
        c = model.config
        print(f"{d}: intermediate {c.intermediate_size}, heads {c.num_attention_heads}, "
              f"kv heads {c.num_key_value_heads}: perplexity {math.exp(loss):.6f} "
              f"over {n} windows of {a.seqlen}")


if __name__ == "__main__":
    main()
