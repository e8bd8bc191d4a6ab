#!/usr/bin/env python3
"""ftune on a GPU beside PyTorch on the same GPU, in one run (issue 20's performance checks).

Cases (random weights, random ids, every token real):
  train    BERT-base (768, 12 layers, 12 heads, 3072, vocab 30522) BertForSequenceClassification,
           batch 32 x 128: forward (dropout 0.1), cross-entropy, backward, clipping to norm 1,
           AdamW (lr 2e-5, weight decay 0.01). ftune: bench_device --case train (the trainer's
           device step, fp32 master weights, bf16 products on tensor cores in bf16). PyTorch:
           eager, SDPA attention, fp32 (TF32 off, PyTorch's default) and bf16 autocast.
  latency  MiniLM-L12-H384 (384, 12, 12, 1536) batch 1 x 128 and 1 x 32, eval: ids up, logits
           down per request. ftune: bench_device --case latency (prepared weights, fp32 or bf16).
           PyTorch: eager, SDPA, inference_mode, fp32 and bf16 autocast.
  decode   a Llama causal LM of SmolLM2-135M's shape (576, 30 layers, 9 heads over 3 key/value
           heads, 1536, vocabulary 49,152, tied embeddings), greedy generation from a 32-token
           prompt, batch 1: decode tokens/s from the time of 65 new tokens less that of 1.
           ftune: bench_device --case decode (generation::generator on the twin, the key/value
           cache on the GPU). PyTorch: LlamaForCausalLM.generate (eager, SDPA, its dynamic
           cache), fp32.

Each ftune case runs first, then PyTorch's, in this one process; every time is the median of
--steps timed calls after 3 warm-up calls, each call ending when the GPU is done (ftune copies the
logits down; PyTorch calls torch.cuda.synchronize()). Prints one JSON object per case and a
table; --json writes them all.

  python3 bench/compare_cuda.py --ftune build-gpu/bench_device [--steps 20] [--json out.json]
  # on a machine without a GPU, a check of this script only (tiny sizes, reference backend):
  python3 bench/compare_cuda.py --ftune build/bin/ftune_bench_device --dry-run
"""
import argparse
import json
import statistics
import subprocess
import sys
import time

# dense bf16 and fp32 (non-tensor) peaks by NVIDIA's datasheet, TFLOP/s, by name prefix
PEAKS = {"NVIDIA H200": (989.0, 67.0), "NVIDIA H100": (989.0, 67.0), "NVIDIA A100": (312.0, 19.5)}


def ftune_case(exe, device, case, dims, vocab, batch, seq, precision, steps, new=None):
    """One bench_device run's JSON."""
    cmd = [exe, "--device", device, "--case", case, "--dims", ",".join(map(str, dims)),
           "--vocab", str(vocab), "--batch", str(batch), "--seq", str(seq),
           "--precision", precision, "--steps", str(steps)]
    if new:
        cmd += ["--new", str(new)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def torch_model(torch, transformers, dims, vocab, device):
    """A BertForSequenceClassification of these sizes with SDPA attention, on device."""
    H, L, heads, F = dims
    cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=H, num_hidden_layers=L,
                                  num_attention_heads=heads, intermediate_size=F, num_labels=2)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg).to(device)


def timed(torch, fn, steps, device):
    """Median and all times (ms) of fn, each call synchronized, after 3 warm-up calls."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
    for _ in range(3):
        fn()
    sync()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), ts


def torch_train(torch, transformers, dims, vocab, batch, seq, precision, steps, device):
    model = torch_model(torch, transformers, dims, vocab, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    mask = torch.ones(batch, seq, dtype=torch.long, device=device)
    labels = torch.randint(0, 2, (batch,), generator=g).to(device)

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16,
                            enabled=precision == "bf16"):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    m, ts = timed(torch, step, steps, device)
    return m, ts, model.config._attn_implementation


def torch_latency(torch, transformers, dims, vocab, batch, seq, precision, steps, device):
    model = torch_model(torch, transformers, dims, vocab, device)
    model.eval()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)

    def call():
        with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16,
                                                    enabled=precision == "bf16"):
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        return logits.float().cpu()
    m, ts = timed(torch, call, steps, device)
    return m, ts, model.config._attn_implementation


def torch_decode(torch, transformers, seq, new, steps, device):
    """Prefill and decode times (ms, medians) of LlamaForCausalLM.generate, greedy, batch 1."""
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                   num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, max_position_embeddings=8192,
                                   rope_theta=100000.0, rms_norm_eps=1e-5,
                                   tie_word_embeddings=True)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(device).eval()
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 49000, (1, seq), generator=g).to(device)

    def run(n):
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, pad_token_id=0)
        assert out.shape[1] == seq + n
    one, _ = timed(torch, lambda: run(1), steps, device)
    total, _ = timed(torch, lambda: run(1 + new), steps, device)
    return one, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ftune", required=True, help="bench_device built with the CUDA backend")
    ap.add_argument("--steps", type=int, default=20, help="timed calls per case")
    ap.add_argument("--json", help="write every case's results here")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes, ftune on the reference backend, PyTorch on the CPU")
    args = ap.parse_args()
    import torch
    import transformers

    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    fdevice = "reference" if dry else "cuda:0"
    if not dry and not torch.cuda.is_available():
        sys.exit("compare_cuda.py: PyTorch sees no GPU (use --dry-run to check this script)")
    gpu = torch.cuda.get_device_name(0) if not dry else "cpu (dry run)"
    peak16, peak32 = next((v for k, v in PEAKS.items() if gpu.startswith(k)), (None, None))
    bert_base, minilm = (768, 12, 12, 3072), (384, 12, 12, 1536)
    vocab = 30522
    cases = [("train", bert_base, 32, 128, p) for p in ("fp32", "bf16")]
    cases += [("latency", minilm, 1, t, p) for t in (128, 32) for p in ("fp32", "bf16")]
    if dry:
        cases = [(c, (64, 2, 4, 128), min(b, 4), 16, p) for c, _, b, _, p in cases[::2]]
        vocab = 500
    steps = 3 if dry else args.steps
    results = []
    # decode first: a SmolLM2-135M-shaped decoder (the dry run keeps its shape, fewer tokens)
    new, prompt = (4, 8) if dry else (64, 32)
    f = ftune_case(args.ftune, fdevice, "decode", (0, 0, 0, 0), 0, 1, prompt, "fp32",
                   min(steps, 5), new)
    p_one, p_total = torch_decode(torch, transformers, prompt, new, min(steps, 5), device)
    r = {"case": "decode", "model": "SmolLM2-135M shape, random weights", "prompt": prompt,
         "new_tokens": new, "precision": "fp32", "gpu": gpu,
         "ftune_prefill_ms": f["prefill_ms"], "ftune_total_ms": f["total_ms"],
         "ftune_tokens_per_s": f["decode_tokens_per_s"], "pytorch_prefill_ms": p_one,
         "pytorch_total_ms": p_total, "pytorch_tokens_per_s": new / ((p_total - p_one) * 1e-3),
         "steps": min(steps, 5), "torch": torch.__version__,
         "transformers": transformers.__version__}
    r["speedup"] = r["ftune_tokens_per_s"] / r["pytorch_tokens_per_s"]
    print(json.dumps(r), flush=True)
    decode = r
    for case, dims, batch, seq, prec in cases:
        f = ftune_case(args.ftune, fdevice, case, dims, vocab, batch, seq, prec, steps)
        fn = torch_train if case == "train" else torch_latency
        t_ms, t_all, attn = fn(torch, transformers, dims, vocab, batch, seq, prec, steps, device)
        flops = f["tflops"] * f["median_ms"]  # TFLOP/s x ms: the same count for both
        r = {"case": case, "dims": list(dims), "batch": batch, "seq": seq, "precision": prec,
             "gpu": gpu, "ftune_ms": f["median_ms"], "ftune_min_ms": f["min_ms"],
             "ftune_max_ms": f["max_ms"], "pytorch_ms": t_ms, "pytorch_min_ms": min(t_all),
             "pytorch_max_ms": max(t_all), "pytorch_attention": attn,
             "speedup": t_ms / f["median_ms"], "ftune_tflops": f["tflops"],
             "pytorch_tflops": flops / t_ms, "steps": steps, "torch": torch.__version__,
             "transformers": transformers.__version__}
        peak = peak16 if prec == "bf16" else peak32
        if peak:
            r["peak_tflops"] = peak
            r["ftune_percent_of_peak"] = 100 * f["tflops"] / peak
        if case == "train":
            r["ftune_sequences_per_s"] = f["sequences_per_s"]
            r["pytorch_sequences_per_s"] = batch / (t_ms * 1e-3)
        print(json.dumps(r), flush=True)
        results.append(r)
    print(f"\n{gpu}, torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"{'case':<34} {'ftune ms':>10} {'PyTorch ms':>11} {'speed-up':>9} {'ftune TF/s':>11}")
    for r in results:
        name = f"{r['case']} {r['batch']}x{r['seq']} {r['precision']} d{r['dims'][0]}"
        print(f"{name:<34} {r['ftune_ms']:>10.3f} {r['pytorch_ms']:>11.3f} "
              f"{r['speedup']:>8.2f}x {r['ftune_tflops']:>11.1f}")
    print(f"decode, SmolLM2-135M shape, {decode['prompt']}-token prompt: ftune "
          f"{decode['ftune_tokens_per_s']:.1f} tokens/s, PyTorch "
          f"{decode['pytorch_tokens_per_s']:.1f} ({decode['speedup']:.2f}x)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results + [decode], fh, indent=1)


if __name__ == "__main__":
    main()
