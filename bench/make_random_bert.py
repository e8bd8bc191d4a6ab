#!/usr/bin/env python3
"""A randomly initialized BERT in Hugging Face layout, for a language with no pretrained
checkpoint reachable from this machine (ChnSentiCorp in the results of docs/parity.md: bert-base-chinese cannot
be downloaded here, and all-MiniLM-L6-v2's English vocabulary maps 63% of Chinese characters to
[UNK]). ftune and Transformers then fine-tune the same initial weights with the same recipe.

  python3 bench/make_random_bert.py --vocab ../shared/data/bert-base-chinese/vocab.txt \
      --out /tmp/bert-random-chinese [--hidden 256 --layers 4 --heads 4 --intermediate 1024]

Writes config.json, model.safetensors (BertModel, Transformers' initialization with --seed),
vocab.txt and tokenizer_config.json (do_lower_case false, as bert-base-chinese).
"""
import argparse
import pathlib
import shutil

import torch
from transformers import BertConfig, BertModel, BertTokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=1024)
    ap.add_argument("--lowercase", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = sum(1 for _ in open(args.vocab, encoding="utf-8"))
    torch.manual_seed(args.seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                     num_attention_heads=args.heads, intermediate_size=args.intermediate,
                     max_position_embeddings=512)
    BertModel(cfg).save_pretrained(out)
    shutil.copy(args.vocab, out / "vocab.txt")
    tok = BertTokenizer(vocab=str(out / "vocab.txt"), do_lower_case=args.lowercase)
    tok.save_pretrained(out)
    shutil.copy(args.vocab, out / "vocab.txt")  # save_pretrained may not write it (Transformers 5)
    print(out)


if __name__ == "__main__":
    main()
