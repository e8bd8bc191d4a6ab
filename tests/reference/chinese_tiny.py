#!/usr/bin/env python3
"""A tiny random Chinese BERT for the test of examples/chinese_sentiment.cpp (no Chinese
checkpoint is small enough to commit): bert-base-chinese's vocabulary cut down to the special
tokens and the word pieces (untruncated) of the first 300 training, 100 dev and 100 test reviews of
ChnSentiCorp (tokenizing those rows with it gives the same pieces as the full vocabulary),
hidden size 32, 2 layers, do_lower_case false as bert-base-chinese.

Writes tests/reference/fixtures/chinese_tiny/ (BertModel saved by save_pretrained, vocab.txt,
tokenizer_config.json).

Usage: FTUNE_DATA_DIR=../shared/data python3 tests/reference/chinese_tiny.py
(needs torch, transformers)
"""
import csv
import os
import pathlib

import torch
from transformers import BertConfig, BertModel, BertTokenizer

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "chinese_tiny"
DATA = pathlib.Path(os.environ.get("FTUNE_DATA_DIR", HERE.parents[2] / "shared" / "data"))
MAX_LENGTH = 128


def texts(name, n):
    with open(DATA / "chnsenticorp" / name, newline="", encoding="utf-8") as f:
        return [r["text_a"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:n]


def main():
    rows = texts("train.tsv", 300) + texts("dev.tsv", 100) + texts("test.tsv", 100)
    full = BertTokenizer(vocab=str(DATA / "bert-base-chinese" / "vocab.txt"), do_lower_case=False)
    assert len(full) == 21128
    used = set(full.all_special_ids)
    for t in rows:
        used.update(full(t)["input_ids"])
    vocab = [tok for tok, i in sorted(full.get_vocab().items(), key=lambda kv: kv[1]) if i in used]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizer(vocab=str(OUT / "vocab.txt"), do_lower_case=False,
                        model_max_length=MAX_LENGTH)
    for t in rows[:50]:
        assert tok.tokenize(t) == full.tokenize(t)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=MAX_LENGTH)
    BertModel(cfg).save_pretrained(OUT, safe_serialization=True)
    tok.save_pretrained(OUT)
    (OUT / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (OUT / "tokenizer.json").unlink(missing_ok=True)  # vocab.txt + tokenizer_config.json suffice
    print(OUT, len(vocab), "tokens")


if __name__ == "__main__":
    main()
