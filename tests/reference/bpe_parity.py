"""Byte-level BPE tokenizers trained by Hugging Face `tokenizers` on SST-2's training sentences,
and the ids `tokenizers` gives, for tests/test_bpe.cpp:

- `gpt2`: GPT-2's configuration (ByteLevel pre-tokenizer, add_prefix_space false);
- `smollm`: SmolLM2's (a Sequence of Digits(individual_digits) and ByteLevel), with ChatML's
  special tokens.

Writes tests/reference/fixtures/bpe/{gpt2,smollm}.json (tokenizer.json files) and
expected.json.gz: for each tokenizer, the ids of the hard cases below and of SST-2 dev's
sentences (read from FTUNE_DATA_DIR at test time, never stored), and the decoded text of each
hard case, and the offsets (code points, as Python's offset_mapping) of every text; for `gpt2`
also the offsets under a ByteLevel post-processor with trim_offsets (add_prefix_space true, as
GPT-2's own tokenizer.json has it).

    FTUNE_DATA_DIR=../shared/data /tmp/ref/bin/python tests/reference/bpe_parity.py
    FTUNE_DATA_DIR=../shared/data /tmp/ref/bin/python tests/reference/bpe_parity.py \
        --roundtrip build/tests/bpe_roundtrip.json   # the tokenizer.json test_bpe wrote:
        # tokenizers reads it and gives the smollm ids of expected.json.gz
"""
import csv
import gzip
import json
import os

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, "fixtures", "bpe")
DATA = os.environ.get("FTUNE_DATA_DIR", os.path.join(HERE, "..", "..", "..", "shared", "data"))

HARD = [
    "", " ", "  ", "a", "Hello world", "Hello  world", "Hello   world  ", "\n", "a\n\nb",
    "tab\there", "line\r\nbreak", "don't won't I'll we've they're she'd I'm", "DON'T 'S 'll",
    "1234567890", "3.14159 and 2,000,000", "x1y22z333", "½ ² ٣ 三", "emoji 😀🎉👍🏽 and 👨‍👩‍👧",
    "naïve café résumé", "Ελληνικά кириллица עברית العربية", "中文字符 日本語 한국어",
    "mixed漢字and latin", "   leading spaces", "trailing spaces   ", "\u00a0nbsp\u3000ideo",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", "a<|endoftext|>b",
    "punct!!! ??? ... ---", "$100 €200 £300", "e-mail: a.b@c.de, http://x.org/?q=1",
    "ZWJ\u200dand\u200bzero width", "combining e\u0301 vs \u00e9",
]


def sst2(split):
    with open(os.path.join(DATA, "sst2", f"{split}.tsv"), newline="", encoding="utf-8") as f:
        return [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def train(digits, specials):
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  byte_level]) if digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(sst2("train")[:20000], trainer)
    return tok


def roundtrip(path):
    """tokenizers reads the tokenizer.json ftune wrote and gives the expected smollm ids."""
    with gzip.open(os.path.join(OUT, "expected.json.gz"), "rt", encoding="utf-8") as f:
        want = json.load(f)
    tok = Tokenizer.from_file(path)
    texts = HARD + sst2("dev")
    got = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    same = sum(g == w for g, w in zip(got, want["smollm"]["ids"]))
    print(f"tokenizers reads {path}: {same} of {len(texts)} texts give the expected ids")
    assert same == len(texts)


def main():
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "--roundtrip":
        return roundtrip(sys.argv[2])
    os.makedirs(OUT, exist_ok=True)
    dev = sst2("dev")
    expected = {"tokenizers": tokenizers.__version__, "hard": HARD}
    for name, digits, specials in [("gpt2", False, ["<|endoftext|>"]),
                                   ("smollm", True, ["<|endoftext|>", "<|im_start|>",
                                                     "<|im_end|>"])]:
        tok = train(digits, specials)
        tok.save(os.path.join(OUT, f"{name}.json"))
        texts = HARD + dev
        enc = tok.encode_batch(texts, add_special_tokens=False)
        # decoded text of the hard cases only (the data sets' text is never stored)
        expected[name] = {"ids": [e.ids for e in enc],
                          "offsets": [[list(o) for o in e.offsets] for e in enc],
                          "decoded": [tok.decode(e.ids, skip_special_tokens=False)
                                      for e in enc[:len(HARD)]]}
        if name == "gpt2":  # with a ByteLevel post-processor that trims the offsets' spaces
            tok.post_processor = processors.ByteLevel(trim_offsets=True)
            expected["gpt2_trim_offsets"] = [[list(o) for o in e.offsets] for e in
                                             tok.encode_batch(texts, add_special_tokens=False)]
    with gzip.open(os.path.join(OUT, "expected.json.gz"), "wt", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False)
    print(OUT, len(dev), "dev sentences")


if __name__ == "__main__":
    main()
