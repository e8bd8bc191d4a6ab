#!/usr/bin/env python3
"""The support assistant (examples/support_assistant.cpp) against Transformers' Trainer on the same
recipe, side by side in one run: SmolLM2-135M-Instruct from the same GGUF file (dequantized to
float32 on both sides), the same BANKING77 rows (row i * rows / n of train.csv and test.csv), each
a chat {user: message, assistant: intent} in the model's chat template with the loss on the reply
and its end-of-turn token only (the template's text after the generation prompt, trailing newline
left out, as ftune's train::encode learns it), AdamW (lr, no weight decay, eps 1e-8), linear decay
after 10% warmup, gradient clipping at 1.0, batches of --batch-size grouped by length (each
library its own way: ftune shuffles the length-sorted batches, Transformers' sampler keeps them
longest to shortest within each window of min(50, rows / (4 batch)) batches, four or more sweeps
an epoch; --same-batches gives Transformers ftune's batches in ftune's order),
float32, --threads threads. Then greedy replies to the test messages (at most the longest reference's
tokens + 8 new ones), scored by exact match of the trimmed text.

Prints one line per run and a summary: exact-match accuracy before and after, training wall time,
and the ratio of the wall times, for each seed.

Usage: python3 bench/compare_support_assistant.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf
           [--data ../shared/data] [--ftune build/bin/support_assistant] [--seeds 0 1 2]
           [--train 1000] [--test 300] [--epochs 1] [--lr 1e-4] [--batch-size 8] [--threads 2]
           [--skip-before] [--same-batches]   (--test 0: the whole test set)
Needs: pip install torch transformers gguf accelerate
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # smollm2_recipe


def spread(path, n):
    """n rows of a BANKING77 CSV spread evenly over it (row i * rows / n), as (text, intent)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    n = len(rows) if n == 0 or n > len(rows) else n
    return [rows[i * len(rows) // n] for i in range(n)]


def batches_file(seed):
    return f"/tmp/compare_support_assistant_batches_{seed}.txt"


def run_ftune(a, seed):
    cmd = [a.ftune, "--gguf", a.gguf, "--data", a.data, "--train", str(a.train), "--test",
           str(a.test), "--epochs", str(a.epochs), "--lr", str(a.lr), "--batch-size",
           str(a.batch_size), "--seed", str(seed)] + (["--skip-before"] if a.skip_before else []) + \
        (["--batches-out", batches_file(seed)] if a.same_batches else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    m = re.search(r"RESULT exact_match_before (\S+) exact_match_after (\S+) train_seconds (\S+)",
                  out)
    return {"before": float(m.group(1)), "after": float(m.group(2)), "seconds": float(m.group(3))}


def run_transformers(a, seed):
    import torch
    from smollm2_recipe import (encode_chat, fit, greedy, plain_checkpoint, prompt_ids,
                                read_batches)
    torch.set_num_threads(a.threads)
    tok, model, pad = plain_checkpoint(a.gguf, "/tmp/compare_support_assistant_model")
    train = [encode_chat(tok, t, c) for t, c in
             spread(os.path.join(a.data, "banking77", "train.csv"), a.train)]
    test = spread(os.path.join(a.data, "banking77", "test.csv"), a.test)
    prompts = [prompt_ids(tok, t) for t, _ in test]
    max_new = max(len(tok(c, add_special_tokens=False)["input_ids"]) for _, c in test) + 8

    def exact_match():
        replies = greedy(model, tok, pad, prompts, max_new)
        return sum(r == c.strip() for r, (_, c) in zip(replies, test)) / len(test)

    before = float("nan") if a.skip_before else exact_match()
    batches = read_batches(batches_file(seed)) if a.same_batches else None  # ftune's steps
    seconds = fit(model, pad, train, a, seed, f"/tmp/compare_support_assistant_{seed}", batches)
    return {"before": before, "after": exact_match(), "seconds": seconds}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                  "data"))
    p.add_argument("--ftune", default="build/bin/support_assistant")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-before", action="store_true",
                   help="leave out the score before fine-tuning (0 here; the untrained model "
                        "writes up to the token limit: most of the time on the whole test set)")
    p.add_argument("--same-batches", action="store_true",
                   help="Transformers trains on ftune's batches in ftune's order (written by the "
                        "example's --batches-out) instead of its own length-grouped sampler: "
                        "the two sides then differ only in their arithmetic")
    a = p.parse_args()
    runs = []
    for seed in a.seeds:
        f = run_ftune(a, seed)
        print(json.dumps({"seed": seed, "ftune": f}), flush=True)
        t = run_transformers(a, seed)
        print(json.dumps({"seed": seed, "transformers": t}), flush=True)
        runs.append((seed, f, t))
    print(f"\n{'seed':>4} {'ftune before':>13} {'after':>7} {'train s':>8} | "
          f"{'Transformers before':>19} {'after':>7} {'train s':>8} | speed-up")
    for seed, f, t in runs:
        print(f"{seed:>4} {f['before']:>13.4f} {f['after']:>7.4f} {f['seconds']:>8.1f} | "
              f"{t['before']:>19.4f} {t['after']:>7.4f} {t['seconds']:>8.1f} | "
              f"{t['seconds'] / f['seconds']:.2f}x")
    mean = lambda xs: sum(xs) / len(xs)
    print(f"mean after: ftune {mean([f['after'] for _, f, _ in runs]):.4f}, Transformers "
          f"{mean([t['after'] for _, _, t in runs]):.4f}")


if __name__ == "__main__":
    main()
