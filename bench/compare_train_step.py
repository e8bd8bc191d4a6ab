#!/usr/bin/env python3
"""A full training step side by side: ftune (`ftune bench --mode train`) and PyTorch, same model
size, batch, sequence and threads, alternating in rounds on this machine; time per step and peak
memory (each in its own process). The step: forward in training mode (dropout on), cross-entropy,
backward, global-norm clipping to 1.0, AdamW update, gradients cleared.

Usage: python3 bench/compare_train_step.py [--ftune build/bin/ftune] [--rounds 3]
       [--dims 384,12,12,1536] [--batch 16] [--seq 128] [--threads 2]
(needs torch and transformers)
"""
import argparse
import json
import statistics
import subprocess
import sys

PYTORCH_STEP = r"""
import json, resource, sys, time
import torch
from transformers import BertConfig, BertForSequenceClassification
H, L, heads, F, B, T, steps, threads = map(int, sys.argv[1:9])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = BertConfig(vocab_size=30522, hidden_size=H, num_hidden_layers=L, num_attention_heads=heads,
                 intermediate_size=F, max_position_embeddings=512, num_labels=2)
m = BertForSequenceClassification(cfg).train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-5, weight_decay=0.01)
ids = torch.randint(0, 30522, (B, T))
mask = torch.ones(B, T, dtype=torch.long)
labels = torch.randint(0, 2, (B,))
def step():
    loss = m(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=False)
for _ in range(2):
    step()
ms = []
for _ in range(steps):
    t0 = time.perf_counter()
    step()
    ms.append((time.perf_counter() - t0) * 1e3)
ms.sort()
print(json.dumps({"ms_per_step": ms[len(ms) // 2],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ftune", default="build/bin/ftune")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dims", default="384,12,12,1536")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    H, L, heads, F = map(int, args.dims.split(","))
    rows = []
    for r in range(args.rounds):
        out = subprocess.run([args.ftune, "bench", "--dims", args.dims, "--batch", str(args.batch),
                              "--seq", str(args.seq), "--mode", "train", "--steps",
                              str(args.steps), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True).stdout
        f = json.loads(out.strip().splitlines()[-1])
        out = subprocess.run([sys.executable, "-c", PYTORCH_STEP, str(H), str(L), str(heads),
                              str(F), str(args.batch), str(args.seq), str(args.steps),
                              str(args.threads)], capture_output=True, text=True, check=True).stdout
        p = json.loads(out.strip().splitlines()[-1])
        rows.append((f, p))
        print(f"round {r + 1}: ftune {f['ms_per_step']:.0f} ms ({f['percent_of_peak']:.0f}% of "
              f"peak), {f['peak_rss_mb']:.0f} MB | PyTorch {p['ms_per_step']:.0f} ms, "
              f"{p['peak_rss_mb']:.0f} MB | speed-up {p['ms_per_step'] / f['ms_per_step']:.2f}x")
    speed = [p["ms_per_step"] / f["ms_per_step"] for f, p in rows]
    print(json.dumps({
        "ftune_ms": min(f["ms_per_step"] for f, _ in rows),
        "pytorch_ms": min(p["ms_per_step"] for _, p in rows),
        "speedup_median": statistics.median(speed), "speedup_min": min(speed),
        "speedup_max": max(speed),
        "ftune_percent_of_peak": max(f["percent_of_peak"] for f, _ in rows),
        "ftune_peak_rss_mb": max(f["peak_rss_mb"] for f, _ in rows),
        "pytorch_peak_rss_mb": max(p["peak_rss_mb"] for _, p in rows),
        "cpu": rows[0][0].get("cpu", "")}))


if __name__ == "__main__":
    main()
