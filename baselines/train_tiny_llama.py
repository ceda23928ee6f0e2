#!/usr/bin/env python3
"""Train a tiny LLaMA (GQA, SwiGLU, RoPE) on CPU for the pruning suite.

Usage (how to regenerate)
-------------------------
1. Corpus: install the Debian package ``python3.11-doc`` (Debian 12, Python
   3.11 documentation; any ``python3.X-doc`` with the same layout works):

       apt-get install python3.11-doc

2. Python environment (outside the repository):

       python3 -m venv VENV
       VENV/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
       VENV/bin/pip install transformers tokenizers safetensors

   (plain ``pip install torch`` also works, it only pulls a larger build).
   Tested with Python 3.11, torch 2.15, transformers 5.24, tokenizers 0.23;
   loading uses ``from_pretrained(..., dtype=...)``, so transformers 4.56 or
   later.

3. Full run (recommended settings, about one hour on 2 CPU cores):

       VENV/bin/python baselines/train_tiny_llama.py \\
           --out OUT --log OUT/train.log \\
           --hidden 256 --intermediate 688 --layers 4 --heads 8 --kv-heads 2 \\
           --vocab 4096 --batch 8 --lr 2e-3 --warmup 100 --steps 2800 --minutes 60 --seed 0

   At about 1.1-1.25 s per step (8 x 512 tokens, hidden 256) on 2
   uncontended cores, 2800 steps (about 11.5M tokens, roughly 4 passes over
   the 2.8M train tokens) fit in the hour; ``--minutes`` is only a cap.  The
   bf16 weights are 9.7 MB; with tokenizer and calibration/evaluation texts
   the deliverable is about 11.2 MB.

   Smoke run (a few minutes):

       VENV/bin/python baselines/train_tiny_llama.py --out OUT \\
           --log OUT/train.log --minutes 3 --warmup 20

Corpus and licence
------------------
Package ``python3.11-doc`` (source package ``python3.11``).  Licence, per
``/usr/share/doc/python3.11-doc/copyright``: the Python Software Foundation
License Version 2 (PSF-2.0), which covers Python "and its associated
documentation"; code examples in the documentation are additionally
dual-licensed under the Zero-Clause BSD licence (see the documentation's own
``license.rst.txt``).

Files used: the reStructuredText sources that the package ships as plain
text next to its HTML pages, i.e. the default glob

    /usr/share/doc/python3.11/html/_sources/**/*.rst.txt

(``/usr/share/doc/python3.11-doc/html`` is a link to the same folder).  They
are plain text, so no HTML stripping is needed; if a glob matching ``*.html``
is given instead, tags are stripped with ``html.parser`` (script/style
contents dropped).

Pipeline
--------
* Files are read in sorted order of their path relative to the glob's fixed
  prefix; each file is one document.  Document ``i`` (in that order) goes to
  the evaluation split if ``i % 20 == 19``, to calibration if
  ``i % 20 == 18``, otherwise to train (90/5/5 by document, independent of
  the seed).  Each split is written as ``train.txt``, ``calibration.txt``,
  ``evaluation.txt`` in ``--out``: documents joined by a blank line.
* Tokenizer: byte-level BPE (Hugging Face ``tokenizers``) trained on the train
  split, specials ``<s>`` (id 0) and ``</s>`` (id 1); saved as
  ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``
  (loadable with ``AutoTokenizer``/``PreTrainedTokenizerFast``).  Texts are
  encoded as one string per split, without special tokens.
* Model: ``LlamaForCausalLM``, untied embeddings, default RoPE.  Trained in
  float32 with AdamW on random ``--ctx``-token windows of the train tokens
  (seeded ``torch.Generator``), linear warmup then cosine decay to 10%.
  Training stops at ``--steps`` or ``--minutes``, whichever comes first; the
  schedule's progress is ``max(step/steps, elapsed/minutes)``, so a run that
  is cut by ``--minutes`` still finishes its decay (such a run depends on the
  machine's speed; give ``--minutes 0`` for a purely step-determined run).
* Save: weights in bfloat16 (``model.safetensors``), ``config.json``,
  ``generation_config.json``.  The evaluation perplexity written to
  ``training.json`` is computed from the *saved* bf16 model loaded back with
  ``LlamaForCausalLM.from_pretrained(out, dtype=float32)``: the exact token
  stream of ``evaluation.txt`` (tokenizer from ``out``, no special tokens)
  cut into the n // ctx whole non-overlapping ``--ctx`` windows (the remainder
  dropped, as the seeds' ``eval_ppl`` and ``prunebench perplexity`` cut it),
  mean next-token NLL over all predicted positions,
  exponentiated.  The unigram perplexity is over the same predicted
  positions, with probabilities from train-split token counts with add-one
  smoothing over the whole vocabulary.
* ``training.json`` holds seed, arguments, model config, steps, seconds,
  final train loss (mean of the last logging interval), eval and unigram
  perplexity, parameter count, file sizes and library versions.  The full
  run's deliverable (everything in ``--out`` except ``train.txt``, which is
  regenerable from the package) is meant to stay within 20 MB.
"""

import argparse
import glob
import html.parser
import json
import logging
import math
import os
import platform
import random
import sys
import time

DEFAULT_GLOB = "/usr/share/doc/python3.11/html/_sources/**/*.rst.txt"
SPECIALS = ["<s>", "</s>"]


class _TextExtractor(html.parser.HTMLParser):
    """Collect the text of an HTML page, dropping script and style bodies."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in ("p", "div", "li", "pre", "h1", "h2", "h3", "h4", "tr", "dt", "dd"):
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def html_to_text(src):
    p = _TextExtractor()
    p.feed(src)
    p.close()
    lines = [ln.rstrip() for ln in "".join(p.parts).splitlines()]
    out, blank = [], False
    for ln in lines:
        if ln.strip():
            out.append(ln)
            blank = False
        elif not blank:
            out.append("")
            blank = True
    return "\n".join(out).strip()


def glob_root(pattern):
    """Fixed (wildcard-free) directory prefix of a glob pattern."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    root = os.sep.join(fixed)
    return root if os.path.isdir(root) else os.path.dirname(root)


def load_documents(pattern):
    root = glob_root(pattern)
    paths = [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    paths.sort(key=lambda p: os.path.relpath(p, root))
    docs = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if p.endswith((".html", ".htm")):
            text = html_to_text(text)
        text = text.replace("\r\n", "\n").strip()
        if text:
            docs.append((os.path.relpath(p, root), text))
    return docs


def split_documents(docs):
    splits = {"train": [], "calibration": [], "evaluation": []}
    for i, (_, text) in enumerate(docs):
        r = i % 20
        key = "evaluation" if r == 19 else "calibration" if r == 18 else "train"
        splits[key].append(text)
    return {k: "\n\n".join(v) + "\n" for k, v in splits.items()}


def train_tokenizer(train_text, vocab_size, out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Feed paragraphs so the trainer can parallelise; merges never cross
    # pre-token boundaries, so this matches training on the whole string.
    paragraphs = [p for p in train_text.split("\n\n") if p]
    tok.train_from_iterator(paragraphs, trainer=trainer, length=len(paragraphs))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", model_max_length=10**9
    )
    fast.save_pretrained(out)
    # Portable across transformers 4.x and 5.x: name the generic fast class
    # and write the special-tokens map that older versions look for.
    cfg_path = os.path.join(out, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": SPECIALS[0], "eos_token": SPECIALS[1]}, f, indent=2)
        f.write("\n")
    return fast


def encode(tokenizer, text):
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def eval_windows(ids, ctx, max_windows=0):
    # Whole windows only, the remainder dropped: the seeds' eval_ppl (and prunebench's
    # perplexity). Before this, a trailing partial window of at least 2 tokens was kept; the
    # committed models/tiny-llama/training.json was made that way (models/tiny-llama/README.md).
    wins = [ids[s:s + ctx] for s in range(0, len(ids) - ctx + 1, ctx)]
    if max_windows > 0:
        wins = wins[:max_windows]
    return wins


def eval_perplexity(model, ids, ctx, batch, max_windows=0):
    """exp(mean NLL) over all predicted positions of non-overlapping windows."""
    import torch
    import torch.nn.functional as F

    model.eval()
    wins = eval_windows(ids, ctx, max_windows)
    nll, count = 0.0, 0
    with torch.no_grad():
        groups = [torch.stack(wins[i:i + batch]) for i in range(0, len(wins), batch)]
        for x in groups:
            logits = model(input_ids=x).logits.float()
            lp = F.log_softmax(logits[:, :-1], dim=-1)
            tgt = x[:, 1:]
            nll -= lp.gather(-1, tgt.unsqueeze(-1)).double().sum().item()
            count += tgt.numel()
    return math.exp(nll / count), count


def unigram_perplexity(train_ids, eval_ids, vocab_size, ctx, max_windows=0):
    import torch

    counts = torch.bincount(train_ids, minlength=vocab_size).double()
    logp = torch.log((counts + 1.0) / (counts.sum() + vocab_size))
    tgts = torch.cat([w[1:] for w in eval_windows(eval_ids, ctx, max_windows)])
    return math.exp(-logp[tgts].mean().item()), tgts.numel()


def lr_at(progress, step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = min(max(progress, 0.0), 1.0)
    return args.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))


def dir_size(path, exclude=()):
    total = 0
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full) and name not in exclude:
            total += os.path.getsize(full)
    return total


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=DEFAULT_GLOB,
                    help="glob of corpus files, recursive ** allowed (default: %(default)s)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--log", default=None, help="log file (default: OUT/train.log)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=688)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512, help="window length = max positions")
    ap.add_argument("--batch", type=int, default=8, help="windows per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=2800, help="max optimizer steps")
    ap.add_argument("--minutes", type=float, default=60.0,
                    help="wall-clock training budget; 0 = no limit")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--eval-windows", type=int, default=0,
                    help="use only the first N evaluation windows (0 = all)")
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log_path = args.log or os.path.join(args.out, "train.log")
    log = logging.getLogger("train_tiny_llama")
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for h in (logging.StreamHandler(sys.stdout), logging.FileHandler(log_path, mode="w")):
        h.setFormatter(fmt)
        log.addHandler(h)

    import torch
    import tokenizers
    import transformers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    log.info("args %s", json.dumps(vars(args), sort_keys=True))

    # 1. corpus and splits
    t0 = time.time()
    docs = load_documents(args.corpus)
    if not docs:
        raise SystemExit(f"no corpus files match {args.corpus!r}")
    splits = split_documents(docs)
    for name, text in splits.items():
        with open(os.path.join(args.out, name + ".txt"), "w", encoding="utf-8") as f:
            f.write(text)
    log.info("corpus: %d documents, %d chars; split chars %s", len(docs),
             sum(len(t) for _, t in docs), {k: len(v) for k, v in splits.items()})

    # 2. tokenizer
    tokenizer = train_tokenizer(splits["train"], args.vocab, args.out)
    vocab_size = len(tokenizer)
    train_ids = encode(tokenizer, splits["train"])
    eval_ids = encode(tokenizer, splits["evaluation"])
    calib_ids = encode(tokenizer, splits["calibration"])
    log.info("tokenizer: vocab %d; tokens train %d calibration %d evaluation %d (%.1fs)",
             vocab_size, len(train_ids), len(calib_ids), len(eval_ids), time.time() - t0)

    # 3. model
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        hidden_act="silu",
        max_position_embeddings=args.ctx,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=True,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %d parameters (%.2f MB in bf16)", n_params, 2 * n_params / 1e6)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(args.seed)
    n_starts = len(train_ids) - args.ctx
    budget = args.minutes * 60.0
    model.train()
    step, interval_loss, interval_n, last_loss = 0, 0.0, 0, float("nan")
    t_train = time.time()
    while step < args.steps:
        elapsed = time.time() - t_train
        if budget > 0 and elapsed >= budget:
            break
        progress = max(step / args.steps, elapsed / budget if budget > 0 else 0.0)
        lr = lr_at(progress, step, args)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, n_starts + 1, (args.batch,), generator=gen)
        x = torch.stack([train_ids[s:s + args.ctx] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        step += 1
        interval_loss += loss.item()
        interval_n += 1
        if step % args.log_every == 0 or step == args.steps:
            last_loss = interval_loss / interval_n
            el = time.time() - t_train
            log.info("step %d loss %.4f lr %.2e elapsed %.1fs (%.3f s/step)",
                     step, last_loss, lr, el, el / step)
            interval_loss, interval_n = 0.0, 0
    if interval_n:
        last_loss = interval_loss / interval_n
    train_seconds = time.time() - t_train
    log.info("trained %d steps in %.1fs (%.3f s/step), final train loss %.4f",
             step, train_seconds, train_seconds / max(step, 1), last_loss)

    # 4. save in bf16, then evaluate the saved model
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True)
    del model, opt
    saved = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32)
    t_eval = time.time()
    eval_ppl, n_eval = eval_perplexity(saved, eval_ids, args.ctx, args.eval_batch,
                                       args.eval_windows)
    uni_ppl, _ = unigram_perplexity(train_ids, eval_ids, vocab_size, args.ctx,
                                    args.eval_windows)
    log.info("eval (saved bf16 weights): ppl %.4f over %d tokens (%.1fs); unigram ppl %.4f",
             eval_ppl, n_eval, time.time() - t_eval, uni_ppl)

    sizes = {n: os.path.getsize(os.path.join(args.out, n))
             for n in sorted(os.listdir(args.out))
             if os.path.isfile(os.path.join(args.out, n))}
    result = {
        "seed": args.seed,
        "args": vars(args),
        "config": config.to_dict(),
        "parameters": n_params,
        "steps": step,
        "seconds": round(train_seconds, 2),
        "seconds_per_step": round(train_seconds / max(step, 1), 4),
        "final_train_loss": last_loss,
        "eval_ppl": eval_ppl,
        "eval_tokens": n_eval,
        "unigram_ppl": uni_ppl,
        "eval_definition": "saved bf16 weights loaded as float32; the whole non-overlapping "
                           f"{args.ctx}-token windows of evaluation.txt, the remainder dropped "
                           "(no special tokens); mean NLL of all predicted positions",
        "tokens": {"train": len(train_ids), "calibration": len(calib_ids),
                   "evaluation": len(eval_ids)},
        "corpus": {"glob": args.corpus, "documents": len(docs)},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
    }
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    ship = dir_size(args.out, exclude=("train.txt",))
    total = dir_size(args.out)
    log.info("output %s: %.2f MB without train.txt (target <= 20 MB), %.2f MB in all",
             args.out, ship / 1e6, total / 1e6)
    for n in sorted(os.listdir(args.out)):
        full = os.path.join(args.out, n)
        if os.path.isfile(full):
            log.info("  %-26s %10d bytes", n, os.path.getsize(full))


if __name__ == "__main__":
    main()
