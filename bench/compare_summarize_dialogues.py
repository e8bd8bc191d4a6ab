#!/usr/bin/env python3
"""Dialogue summarization (examples/summarize_dialogues.cpp) against Transformers' Trainer on the
same recipe, side by side in one run: SmolLM2-135M-Instruct from the same GGUF file (dequantized
to float32 on both sides), the same DialogSum dialogues (row i * rows / n of the train and test
files), each a chat {user: the instruction, a blank line and the dialogue, assistant: the
summary} in the model's chat template with the loss on the summary and its end-of-turn token,
cut to its first --max-length tokens; AdamW (lr, no weight decay, eps 1e-8), linear decay after
10% warmup, gradient clipping at 1.0, batches of --batch-size grouped by length, float32,
--threads threads (bench/smollm2_recipe.py). Then greedy summaries of the test dialogues (at
most the longest first reference's tokens + 8 new ones), scored by Google's rouge-score
(RougeScorer, no stemming) against the three references of each test dialogue: the F-measures
against each averaged over the three, and the best of the three per metric (score_multi).

Prints one JSON line per side and seed, then a table of ROUGE-1/2/L before and after, training
wall time, and the ratio of the wall times.

Usage: python3 bench/compare_summarize_dialogues.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf
           [--data ../shared/data] [--ftune build/bin/summarize_dialogues] [--seeds 0]
           [--train 1000] [--test 100] [--epochs 1] [--lr 1e-4] [--batch-size 8]
           [--max-length 1024] [--threads 2] [--before both|ftune|none]   (--test 0: all 500)
           [--ftune-result FILE]   (ftune's side from an earlier run's output, not run again)
           [--same-batches]   (Transformers trains on ftune's batches in ftune's order)
Needs: pip install torch transformers gguf accelerate rouge-score
"""
import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # smollm2_recipe

INSTRUCTION = "Summarize the following dialogue in one or two sentences."  # as data::summary_chats


def spread(path, n):
    """n rows of a DialogSum JSON-lines file spread evenly over it, as (dialogue, [summaries])."""
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(l) for l in f if l.strip()]
    n = len(rows) if n == 0 or n > len(rows) else n
    out = []
    for i in range(n):
        r = rows[i * len(rows) // n]
        refs = [r["summary"]] if "summary" in r else []
        while f"summary{len(refs) + 1}" in r:  # summary1, summary2, ... (DialogSum test: 3)
            refs.append(r[f"summary{len(refs) + 1}"])
        out.append((r["dialogue"], refs))
    return out


def rouge(predictions, references):
    """Mean over cases of the three F-measures: against each reference averaged, and the best."""
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    keys = ["rouge1", "rouge2", "rougeL"]
    mean, best = [0.0] * 3, [0.0] * 3
    for pred, refs in zip(predictions, references):
        refs = [r.strip() for r in refs]
        each = [scorer.score(r, pred) for r in refs]
        multi = scorer.score_multi(refs, pred)
        for k, key in enumerate(keys):
            mean[k] += sum(e[key].fmeasure for e in each) / len(each) / len(predictions)
            best[k] += multi[key].fmeasure / len(predictions)
    return {"mean": mean, "best": best}


def batches_file(seed):
    return f"/tmp/compare_summarize_dialogues_batches_{seed}.txt"


def run_ftune(a, seed):
    cmd = [a.ftune, "--gguf", a.gguf, "--data", a.data, "--train", str(a.train), "--test",
           str(a.test), "--epochs", str(a.epochs), "--lr", str(a.lr), "--batch-size",
           str(a.batch_size), "--seed", str(seed), "--max-length", str(a.max_length)] + \
        (["--skip-before"] if a.before == "none" else []) + \
        (["--batches-out", batches_file(seed)] if a.same_batches else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    num = r"(\S+) (\S+) (\S+)"
    m = re.search(rf"RESULT rouge_mean_before {num} rouge_mean_after {num} rouge_best_after "
                  rf"{num} train_seconds (\S+)", out)
    g = [float(x) for x in m.groups()]
    return {"before": {"mean": g[0:3]}, "after": {"mean": g[3:6], "best": g[6:9]},
            "seconds": g[9], "example": out[out.find("summary: "):].split("\n")[0]}


def run_transformers(a, seed):
    import torch
    from smollm2_recipe import (encode_chat, fit, greedy, plain_checkpoint, prompt_ids,
                                read_batches)
    torch.set_num_threads(a.threads)
    tok, model, pad = plain_checkpoint(a.gguf, "/tmp/compare_summarize_dialogues_model")
    user = lambda d: f"{INSTRUCTION}\n\n{d}"
    dialogsum = os.path.join(a.data, "dialogsum")
    train = [encode_chat(tok, user(d), refs[0], a.max_length)
             for d, refs in spread(os.path.join(dialogsum, "dialogsum.train.jsonl"), a.train)]
    test = spread(os.path.join(dialogsum, "dialogsum.test.jsonl"), a.test)
    prompts = [prompt_ids(tok, user(d), a.max_length) for d, _ in test]
    max_new = min(max(len(tok(refs[0], add_special_tokens=False)["input_ids"])
                      for _, refs in test) + 8, 256)
    score = lambda: rouge(greedy(model, tok, pad, prompts, max_new), [r for _, r in test])
    before = score() if a.before == "both" else {"mean": [float("nan")] * 3}
    batches = read_batches(batches_file(seed)) if a.same_batches else None  # ftune's steps
    seconds = fit(model, pad, train, a, seed, f"/tmp/compare_summarize_dialogues_{seed}", batches)
    return {"before": before, "after": score(), "seconds": seconds}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", required=True)
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                                  "data"))
    p.add_argument("--ftune", default="build/bin/summarize_dialogues")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=100)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--before", choices=["both", "ftune", "none"], default="both",
                   help="which sides score the model before fine-tuning (the same weights on "
                        "both; the untrained model writes up to the token limit, slow in "
                        "Transformers' generate)")
    p.add_argument("--ftune-result", metavar="FILE",
                   help="instead of running ftune, read its side from the JSON lines "
                        "{\"seed\": S, \"ftune\": {...}} an earlier run of this script printed "
                        "with the same settings (the wall times then come from two runs)")
    p.add_argument("--same-batches", action="store_true",
                   help="Transformers trains on ftune's batches in ftune's order (the example's "
                        "--batches-out) instead of its own length-grouped sampler")
    a = p.parse_args()
    if a.same_batches and a.ftune_result:
        p.error("--same-batches needs ftune run here (it writes the batches)")
    earlier = {}
    if a.ftune_result:
        with open(a.ftune_result, encoding="utf-8") as f:
            for line in f:
                if line.startswith("{") and '"ftune"' in line:
                    r = json.loads(line)
                    earlier[r["seed"]] = r["ftune"]
    runs = []
    for seed in a.seeds:
        f = earlier[seed] if a.ftune_result else run_ftune(a, seed)
        print(json.dumps({"seed": seed, "ftune": f}), flush=True)
        t = run_transformers(a, seed)
        print(json.dumps({"seed": seed, "transformers": t}), flush=True)
        runs.append((seed, f, t))
    pct = lambda xs: " / ".join(f"{100 * x:.2f}" for x in xs)
    print(f"\nROUGE-1 / ROUGE-2 / ROUGE-L F-measures (%), each averaged over a dialogue's three "
          f"references, then over {a.test or 500} test dialogues; best-of-three in brackets")
    for seed, f, t in runs:
        for name, r in (("ftune", f), ("Transformers", t)):
            print(f"seed {seed} {name:>12}: before {pct(r['before']['mean'])}, after "
                  f"{pct(r['after']['mean'])} [{pct(r['after']['best'])}], "
                  f"train {r['seconds']:.1f} s")
        print(f"seed {seed} speed-up {t['seconds'] / f['seconds']:.2f}x, ROUGE-L after "
              f"ftune - Transformers {100 * (f['after']['mean'][2] - t['after']['mean'][2]):+.2f}")


if __name__ == "__main__":
    main()
