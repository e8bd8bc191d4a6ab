#!/usr/bin/env python3
"""A full training step side by side: ftune (`ftune bench --mode train`) and PyTorch, same model
size, batch, sequence and threads, alternating in rounds on this machine; time per step and peak
memory (each in its own process). The step: forward in training mode (dropout on), cross-entropy,
backward, global-norm clipping to 1.0, AdamW update, gradients cleared.

With --gguf FILE the model is instead a LlamaForCausalLM of the shapes that Llama-family GGUF file
describes (SmolLM2-135M-Instruct: 30 layers of 576, 9 heads, 3 key/value heads, vocabulary
49,152), random weights on both sides, every token carrying the next-token loss (`ftune bench
--gguf`); default batch 8 x 256.

With --precision bf16 each round runs four steps: ftune in fp32 and in bf16 (`--precision
bf16`: bf16 products, fp32 sums, fp32 master weights), PyTorch in fp32 and under bf16 autocast
(`torch.autocast("cpu", torch.bfloat16)` around the forward and the loss, as its AMP recipe);
the speed-ups are ftune bf16 against ftune fp32 and against the faster PyTorch step of the round.

Usage: python3 bench/compare_train_step.py [--ftune build/bin/ftune] [--rounds 3]
       [--dims 384,12,12,1536 | --gguf FILE] [--batch 16] [--seq 128] [--threads 2]
       [--precision fp32|bf16]
(needs torch and transformers; gguf for --gguf)
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
autocast = len(sys.argv) > 9 and sys.argv[9] == "bf16"
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
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = m(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=False)
"""

PYTORCH_LM_STEP = r"""
import json, resource, sys, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(**json.loads(sys.argv[1]))
B, T, steps, threads = map(int, sys.argv[2:6])
autocast = len(sys.argv) > 6 and sys.argv[6] == "bf16"
torch.set_num_threads(threads)
torch.manual_seed(0)
m = LlamaForCausalLM(cfg).train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-5, weight_decay=0.01)
ids = torch.randint(0, cfg.vocab_size, (B, T))
mask = torch.ones(B, T, dtype=torch.long)
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = m(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=False)
"""

# the timing both steps share: 2 warm-up steps, then the median of `steps`, and the peak RSS
TIMING = r"""
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
PYTORCH_STEP += TIMING
PYTORCH_LM_STEP += TIMING


def llama_config(path):
    """Transformers' LlamaConfig fields of a Llama-family GGUF file (as ftune reads it)."""
    from gguf import GGUFReader
    r = GGUFReader(path)

    def field(key, default=None):
        f = r.fields.get(key)
        return default if f is None else f.parts[f.data[0]].tolist()[0]
    vocab = next(t.shape for t in r.tensors if t.name == "token_embd.weight")[-1]
    heads = int(field("llama.attention.head_count"))
    return {"vocab_size": int(vocab), "hidden_size": int(field("llama.embedding_length")),
            "intermediate_size": int(field("llama.feed_forward_length")),
            "num_hidden_layers": int(field("llama.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(field("llama.attention.head_count_kv", heads)),
            "rms_norm_eps": float(field("llama.attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(field("llama.rope.freq_base", 10000.0)),
            "max_position_embeddings": int(field("llama.context_length", 2048)),
            "tie_word_embeddings": not any(t.name == "output.weight" for t in r.tensors),
            "attn_implementation": "sdpa"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ftune", default="build/bin/ftune")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dims", default="384,12,12,1536")
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    if args.batch is None:
        args.batch = 8 if args.gguf else 16
    if args.seq is None:
        args.seq = 256 if args.gguf else 128
    H, L, heads, F = map(int, args.dims.split(","))
    model = ["--gguf", args.gguf] if args.gguf else ["--dims", args.dims]
    pytorch = ([PYTORCH_LM_STEP, json.dumps(llama_config(args.gguf))] if args.gguf else
               [PYTORCH_STEP, str(H), str(L), str(heads), str(F)])
    if args.precision == "bf16":
        return compare_bf16(args, model, pytorch)
    rows = []
    for r in range(args.rounds):
        out = subprocess.run([args.ftune, "bench", *model, "--batch", str(args.batch),
                              "--seq", str(args.seq), "--mode", "train", "--steps",
                              str(args.steps), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True).stdout
        f = json.loads(out.strip().splitlines()[-1])
        out = subprocess.run([sys.executable, "-c", *pytorch, str(args.batch), str(args.seq),
                              str(args.steps), str(args.threads)],
                             capture_output=True, text=True, check=True).stdout
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


def compare_bf16(args, model, pytorch):
    """Rounds of ftune fp32, ftune bf16, PyTorch fp32 and PyTorch bf16 autocast."""
    def ftune(precision):
        out = subprocess.run([args.ftune, "bench", *model, "--batch", str(args.batch),
                              "--seq", str(args.seq), "--mode", "train", "--steps",
                              str(args.steps), "--threads", str(args.threads),
                              "--precision", precision],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    def torch_step(precision):
        out = subprocess.run([sys.executable, "-c", *pytorch, str(args.batch), str(args.seq),
                              str(args.steps), str(args.threads), precision],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])
    rows = []
    for r in range(args.rounds):
        f32, f16, p32, p16 = ftune("fp32"), ftune("bf16"), torch_step("fp32"), torch_step("bf16")
        best = min(p32["ms_per_step"], p16["ms_per_step"])
        rows.append((f32, f16, p32, p16))
        print(f"round {r + 1}: ftune fp32 {f32['ms_per_step']:.0f} ms "
              f"({f32['percent_of_peak']:.0f}% of fp32 peak), bf16 {f16['ms_per_step']:.0f} ms "
              f"({f16['percent_of_peak']:.0f}% of bf16 peak {f16['peak_gflops']:.0f} GFLOP/s), "
              f"{f16['peak_rss_mb']:.0f} MB | PyTorch fp32 {p32['ms_per_step']:.0f} ms, "
              f"autocast {p16['ms_per_step']:.0f} ms | bf16 vs fp32 "
              f"{f32['ms_per_step'] / f16['ms_per_step']:.2f}x, vs faster PyTorch "
              f"{best / f16['ms_per_step']:.2f}x")
    own = [a["ms_per_step"] / b["ms_per_step"] for a, b, _, _ in rows]
    vs = [min(c["ms_per_step"], d["ms_per_step"]) / b["ms_per_step"] for _, b, c, d in rows]
    print(json.dumps({
        "ftune_fp32_ms": [a["ms_per_step"] for a, _, _, _ in rows],
        "ftune_bf16_ms": [b["ms_per_step"] for _, b, _, _ in rows],
        "pytorch_fp32_ms": [c["ms_per_step"] for _, _, c, _ in rows],
        "pytorch_autocast_ms": [d["ms_per_step"] for _, _, _, d in rows],
        "bf16_vs_fp32_median": statistics.median(own), "bf16_vs_fp32_min": min(own),
        "bf16_vs_fp32_max": max(own),
        "vs_faster_pytorch_median": statistics.median(vs), "vs_faster_pytorch_min": min(vs),
        "vs_faster_pytorch_max": max(vs),
        "bf16_peak_gflops": rows[0][1]["peak_gflops"],
        "bf16_percent_of_peak": [b["percent_of_peak"] for _, b, _, _ in rows],
        "ftune_bf16_peak_rss_mb": max(b["peak_rss_mb"] for _, b, _, _ in rows),
        "ftune_fp32_peak_rss_mb": max(a["peak_rss_mb"] for a, _, _, _ in rows),
        "pytorch_fp32_peak_rss_mb": max(c["peak_rss_mb"] for _, _, c, _ in rows),
        "pytorch_autocast_peak_rss_mb": max(d["peak_rss_mb"] for _, _, _, d in rows),
        "cpu": rows[0][0].get("cpu", "")}))


if __name__ == "__main__":
    main()
