"""Makes the two small tokenizer.json files models/tests/text.rs loads, and prints the ids the
Python `tokenizers` library gives for the test's texts (hard-coded there).

One of each kind LLaMA uses: byte-level BPE with LLaMA-3's pre-tokenizer regex
(`llama3_style.json`), and SentencePiece-style BPE with byte fallback laid out as LLaMA-1/2's
tokenizer.json is (`llama2_style.json`). Trained on a few sentences, so the vocabularies are
small; what matters is that Rust and Python load and apply the same file identically.

    python3 models/tests/data/make_tokenizers.py models/tests/data
"""
import json
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pruning removes weights; perplexity measures what is lost.",
    "Wanda scores |W| times the norm of the input activation, 50% sparsity.",
    "SparseGPT updates the remaining weights with the inverse Hessian.",
    "In 2023, LLaMA-2 7B reached 5.12 on WikiText-2; don't forget the BOS token!",
    "  Multiple   spaces\tand tabs\nand new lines\n\n= Heading =\n",
] * 20

TEXTS = [
    "The quick brown fox.",
    "In 2024, LLaMA-3 8B: we'll prune 50% (don't panic) -- 12345 tokens.",
    " = Valkyria Chronicles III = \n\n Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 ) \n",
    "emoji 🦙 and  double  spaces\tand tabs",
]

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def llama3_style():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", bos)],
        ),
    ])
    return tok


def llama2_style():
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)],
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0",
        pair="<s>:0 $A:0 <s>:1 $B:1",
        special_tokens=[("<s>", tok.token_to_id("<s>"))],
    )
    # Byte-fallback tokens are ordinary vocabulary in LLaMA's file, not added tokens.
    v = json.loads(tok.to_str())
    v["added_tokens"] = [t for t in v["added_tokens"] if t["content"] in ("<unk>", "<s>", "</s>")]
    return Tokenizer.from_str(json.dumps(v))


def main():
    out = Path(sys.argv[1])
    for name, tok in [("llama3_style.json", llama3_style()), ("llama2_style.json", llama2_style())]:
        tok.save(str(out / name))
        tok = Tokenizer.from_file(str(out / name))
        print(name)
        for t in TEXTS:
            print("   ", tok.encode(t, add_special_tokens=True).ids)


if __name__ == "__main__":
    main()
