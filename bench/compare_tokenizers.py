#!/usr/bin/env python3
"""Hugging Face's fast BERT tokenizer (Rust `tokenizers`, one thread) on SST-2's training
sentences, beside `ftune_bench_tokenizer` in the same run: characters per second.

Usage: FTUNE_DATA_DIR=../shared/data python3 bench/compare_tokenizers.py [--ftune build/bin/ftune_bench_tokenizer]
Needs: pip install tokenizers
"""
import argparse
import os
import pathlib
import re
import subprocess
import time

os.environ["RAYON_NUM_THREADS"] = "1"  # one thread, before tokenizers is imported
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import BertWordPieceTokenizer  # noqa: E402

DATA = pathlib.Path(os.environ.get("FTUNE_DATA_DIR", "../shared/data"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ftune", default="build/bin/ftune_bench_tokenizer")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    lines = (DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").split("\n")[1:]
    texts = [l.split("\t", 1)[0] for l in lines if l]
    chars = sum(len(t) for t in texts)
    tok = BertWordPieceTokenizer(str(DATA / "bert-base-uncased" / "vocab.txt"), lowercase=True)
    for r in range(args.rounds):
        best = float("inf")
        for _ in range(3):  # encode one by one, as ftune's benchmark does
            t0 = time.perf_counter()
            for t in texts:
                tok.encode(t)
            best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        tok.encode_batch(texts)  # batch API, one thread
        batch = time.perf_counter() - t0
        out = subprocess.run([args.ftune, "--data", str(DATA)], capture_output=True, text=True,
                             check=True).stdout
        m = re.search(r"chars_per_s=([0-9.]+)([kMG]?)/s", out)
        scale = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
        ftune_cps = float(m.group(1)) * scale
        print(f"round {r}: tokenizers encode {chars / best / 1e6:.2f} M chars/s, encode_batch "
              f"{chars / batch / 1e6:.2f} M chars/s; ftune {ftune_cps / 1e6:.2f} M chars/s "
              f"({ftune_cps / max(chars / best, chars / batch):.2f}x the faster)")


if __name__ == "__main__":
    main()
