#!/usr/bin/env python3
"""Generation speed, side by side in one run: ftune (build/bin/ftune_bench_generate), Transformers'
generate (PyTorch, float32, the GGUF dequantized as Transformers loads it) and llama.cpp (through
llama-cpp-python, on the GGUF as it is, Q4_1) on SmolLM2-135M-Instruct: batch 1, greedy, a
prompt of --prompt-tokens tokens. Prefill = time to the first new token; decode = new tokens per
second after it (generations of 1 and 1 + N tokens, best of --rounds; the end-of-sequence token
is suppressed so every run makes N tokens). All with --threads threads.

Usage: python3 bench/compare_generate.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf
           [--ftune build/bin/ftune_bench_generate] [--threads 2] [--rounds 3]
           [--prompt-tokens 128] [--new-tokens 64]
Needs: pip install torch transformers gguf; llama-cpp-python (optional: reported as missing)
"""
import argparse
import json
import os
import subprocess
import time


def prompt_ids(n):
    """The prompt ftune's benchmark uses: ordinary token ids 100 .. 40,000."""
    return [100 + (i * 7919) % 39900 for i in range(n)]


def best_of(rounds, fn):
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def transformers_speed(a):
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(a.threads)
    folder, name = os.path.split(os.path.abspath(a.gguf))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                 dtype=torch.float32).eval()
    ids = torch.tensor([prompt_ids(a.prompt_tokens)])
    eos = model.generation_config.eos_token_id

    def gen(n):
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 pad_token_id=eos)
        assert out.shape[1] == ids.shape[1] + n
    gen(2)  # warm-up
    first = best_of(a.rounds, lambda: gen(1))
    whole = best_of(a.rounds, lambda: gen(1 + a.new_tokens))
    return first, a.new_tokens / (whole - first)


def llama_cpp_speed(a):
    try:
        import numpy as np
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=a.gguf, n_threads=a.threads, n_threads_batch=a.threads,
                n_ctx=a.prompt_tokens + a.new_tokens + 8, n_batch=512, verbose=False)
    ids = prompt_ids(a.prompt_tokens)
    eos = llm.token_eos()

    def gen(n):  # greedy over llama.cpp's own logits, eos suppressed
        llm.reset()
        llm.eval(ids)
        for _ in range(n - 1):
            logits = np.array(llm.scores[llm.n_tokens - 1])
            logits[eos] = -np.inf
            llm.eval([int(logits.argmax())])
    gen(2)
    first = best_of(a.rounds, lambda: gen(1))
    whole = best_of(a.rounds, lambda: gen(1 + a.new_tokens))
    import llama_cpp
    return first, a.new_tokens / (whole - first), llama_cpp.__version__


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ftune", default="build/bin/ftune_bench_generate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    a = ap.parse_args()
    ours = json.loads(subprocess.run(
        [a.ftune, "--gguf", a.gguf, "--threads", str(a.threads), "--rounds", str(a.rounds),
         "--prompt-tokens", str(a.prompt_tokens), "--new-tokens", str(a.new_tokens)],
        capture_output=True, text=True, check=True).stdout)
    hf_first, hf_tps = transformers_speed(a)
    lc = llama_cpp_speed(a)
    print(f"SmolLM2-135M, batch 1, {a.threads} threads, prompt {a.prompt_tokens} tokens, "
          f"{a.new_tokens} new tokens, best of {a.rounds}")
    print("| engine | weights | prefill (ms) | decode (tokens/s) | ftune's decode speed-up |")
    print("|---|---|---:|---:|---:|")
    print(f"| ftune | float32 | {ours['prefill_ms']:.0f} | {ours['decode_tokens_per_s']:.1f} | – |")
    print(f"| Transformers generate | float32 | {hf_first * 1e3:.0f} | {hf_tps:.1f} | "
          f"{ours['decode_tokens_per_s'] / hf_tps:.2f}x |")
    if lc:
        print(f"| llama.cpp {lc[2]} | Q4_1 (as in the file) | {lc[0] * 1e3:.0f} | {lc[1]:.1f} | "
              f"{ours['decode_tokens_per_s'] / lc[1]:.2f}x |")
    else:
        print("| llama.cpp | – | not installed (pip install llama-cpp-python) | | |")
    print(f"ftune decode moves {ours['decode_gb_per_s']:.1f} GB/s of weights "
          f"({ours['weights_gb_per_token']:.3f} GB per token) against a STREAM triad of "
          f"{ours['triad_gb_per_s']:.1f} GB/s; prefill speed-up over Transformers "
          f"{hf_first * 1e3 / ours['prefill_ms']:.2f}x")


if __name__ == "__main__":
    main()
