#!/usr/bin/env python3
"""Hugging Face's fast BERT tokenizer (Rust `tokenizers`, one thread) on SST-2's training
sentences, beside `ftune_bench_tokenizer` in the same run: characters per second. With --bpe
TOKENIZER.json, the same for a byte-level BPE tokenizer (ids, and ids with offsets); --smollm2
FILE.gguf writes SmolLM2's (Transformers' conversion of the GGUF's, with SmolLM2's Digits +
ByteLevel pre-tokenizer) and uses it.

Usage: FTUNE_DATA_DIR=../shared/data python3 bench/compare_tokenizers.py [--ftune build/bin/ftune_bench_tokenizer]
           [--bpe TOKENIZER.json | --smollm2 SmolLM2-135M-Instruct.Q4_1.gguf]
Needs: pip install tokenizers (--smollm2: transformers gguf too)
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
    ap.add_argument("--bpe", help="a byte-level BPE tokenizer.json")
    ap.add_argument("--smollm2", help="SmolLM2's GGUF: its tokenizer as the BPE one")
    args = ap.parse_args()
    if args.smollm2:
        args.bpe = write_smollm2(args.smollm2)
    if args.bpe:
        return compare_bpe(args)
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


def write_smollm2(gguf):
    """SmolLM2's tokenizer.json (see the docstring), in a temporary file; its path."""
    import tempfile

    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer
    folder, name = os.path.split(os.path.abspath(gguf))
    t = AutoTokenizer.from_pretrained(folder, gguf_file=name).backend_tokenizer
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    path = os.path.join(tempfile.mkdtemp(), "tokenizer.json")
    t.save(path)
    return path


def compare_bpe(args):
    from tokenizers import Tokenizer
    lines = (DATA / "sst2" / "train.tsv").read_text(encoding="utf-8").split("\n")[1:]
    texts = [l.split("\t", 1)[0] for l in lines if l]
    chars = sum(len(t) for t in texts)
    tok = Tokenizer.from_file(args.bpe)
    for r in range(args.rounds):
        best = float("inf")
        for _ in range(3):  # one by one; encode computes the offsets too
            t0 = time.perf_counter()
            for t in texts:
                tok.encode(t, add_special_tokens=False)
            best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        tok.encode_batch(texts, add_special_tokens=False)  # batch API, one thread
        batch = time.perf_counter() - t0
        out = subprocess.run([args.ftune, "--data", str(DATA), "--bpe", args.bpe,
                              "--benchmark_filter=bpe"], capture_output=True, text=True,
                             check=True).stdout
        rates = []
        for m in re.finditer(r"chars_per_s=([0-9.]+)([kMG]?)/s", out):
            rates.append(float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2)])
        ids, offsets = rates
        faster = max(chars / best, chars / batch)
        print(f"round {r}: tokenizers encode {chars / best / 1e6:.2f} M chars/s, encode_batch "
              f"{chars / batch / 1e6:.2f} M chars/s; ftune ids {ids / 1e6:.2f} M chars/s "
              f"({ids / faster:.2f}x the faster), ids with offsets {offsets / 1e6:.2f} M chars/s "
              f"({offsets / faster:.2f}x)")


if __name__ == "__main__":
    main()
