#!/usr/bin/env python3
"""Side-by-side timing of `ftune bench` against PyTorch and ONNX Runtime on this machine.

Same model (a randomly initialized BertForSequenceClassification with 2 labels, BERT's init),
same shapes, same thread count, interleaved in one run (these machines are shared and noisy:
each engine is run `--rounds` times in turn; the table keeps each engine's best median and the
speed-up taken within each round).

  training step  (forward + backward of the cross-entropy loss, dropout on):  ftune, PyTorch
  inference      (eval mode, batch 1, the logits):                            ftune, PyTorch,
                 ONNX Runtime (default graph optimizations, and with its BERT fusion optimizer)

ftune's inference is `ftune bench --mode forward`: the model prepared for inference as `ftune
predict` and serve::text_classifier run it. Every table names the CPU it ran on.

With --precision bf16 the runs add ftune in bf16 (`--precision bf16`: bf16 products, fp32
sums) and, for inference, ONNX Runtime's dynamic int8 quantization
(`quantize_dynamic` of the exported graph, QInt8 weights); the speed-up column is then ftune bf16 against the fastest
engine other than ftune, and another column gives ftune bf16 against ftune fp32.

Usage:
  python3 bench/compare_pytorch_onnx.py [--ftune build/bin/ftune] [--threads 1,2] [--rounds 3]
         [--cases all|inference|train] [--json out.json | --results-dir bench/results]
         [--precision fp32|bf16]
Needs: pip install torch transformers onnxruntime onnx onnxscript
"""
import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

MODELS = {
    "MiniLM-L12-H384": dict(hidden=384, layers=12, heads=12, ffn=1536),
    "BERT-base": dict(hidden=768, layers=12, heads=12, ffn=3072),
}
# (model, mode, batch, seq, steps)
CASES = [
    ("MiniLM-L12-H384", "backward", 16, 128, 5),
    ("MiniLM-L12-H384", "forward", 1, 128, 50),
    ("MiniLM-L12-H384", "forward", 1, 32, 100),
    ("BERT-base", "forward", 1, 128, 30),
]
VOCAB = 30522


def median_ms(fn, steps, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


LAST_FTUNE = {}  # the last `ftune bench` JSON line (its CPU description, packing counters)


def run_ftune(exe, dims, mode, B, T, steps, threads, precision="fp32"):
    cmd = [exe, "bench", "--dims", f"{dims['hidden']},{dims['layers']},{dims['heads']},{dims['ffn']}",
           "--vocab", str(VOCAB), "--batch", str(B), "--seq", str(T), "--mode", mode,
           "--steps", str(steps), "--threads", str(threads), "--precision", precision]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    LAST_FTUNE.clear()
    LAST_FTUNE.update(json.loads(out.strip().splitlines()[-1]))
    if mode == "forward" and LAST_FTUNE.get("gemm_packs_per_step", 0) != 0:
        sys.exit("ftune bench packed weights during the timed inference steps: "
                 "the benchmark does not time the served path")
    return LAST_FTUNE["ms_per_step"]


def cpu_model_name():
    """The CPU as /proc/cpuinfo names it, with its family and model numbers."""
    name, fam, model = platform.processor() or "unknown CPU", "?", "?"
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = re.search(r"^model name\s*:\s*(.+)$", info, re.M).group(1).strip()
        fam = re.search(r"^cpu family\s*:\s*(\d+)$", info, re.M).group(1)
        model = re.search(r"^model\s*:\s*(\d+)$", info, re.M).group(1)
    except (OSError, AttributeError):
        pass
    return f"{name} (family {fam}, model {model})", f"{name}-family{fam}-model{model}"


class TorchModel:
    def __init__(self, dims, threads):
        import torch
        from transformers import BertConfig, BertForSequenceClassification
        self.threads = threads
        torch.manual_seed(0)
        self.torch = torch
        cfg = BertConfig(vocab_size=VOCAB, hidden_size=dims["hidden"],
                         num_hidden_layers=dims["layers"], num_attention_heads=dims["heads"],
                         intermediate_size=dims["ffn"], num_labels=2)
        self.model = BertForSequenceClassification(cfg)

    def inputs(self, B, T):
        g = self.torch.Generator().manual_seed(1)
        ids = self.torch.randint(0, VOCAB, (B, T), generator=g)
        mask = self.torch.ones(B, T, dtype=self.torch.int64)
        labels = self.torch.randint(0, 2, (B,), generator=g)
        return ids, mask, labels

    def time(self, mode, B, T, steps, threads):
        self.torch.set_num_threads(threads)
        ids, mask, labels = self.inputs(B, T)
        m = self.model
        if mode == "backward":
            m.train()

            def step():
                m.zero_grad(set_to_none=False)
                m(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            return median_ms(step, steps, warmup=2)
        m.eval()

        def fwd():
            with self.torch.inference_mode():
                m(input_ids=ids, attention_mask=mask)
        return median_ms(fwd, steps)

    def export_onnx(self, path):
        torch = self.torch
        m = self.model.eval()
        ids, mask, _ = self.inputs(1, 32)

        class Wrap(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
        axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                "logits": {0: "batch"}}
        torch.onnx.export(Wrap(m), (ids, mask), path, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)


class OrtModel:
    def __init__(self, path, threads):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    def time(self, B, T, steps):
        import numpy as np
        rng = np.random.default_rng(1)
        feed = {"input_ids": rng.integers(0, VOCAB, (B, T), dtype=np.int64),
                "attention_mask": np.ones((B, T), dtype=np.int64)}
        return median_ms(lambda: self.sess.run(None, feed), steps)


def fused_onnx(path, dims, out):
    """ONNX Runtime's own BERT graph optimizer (attention / LayerNorm / GELU fusion)."""
    from onnxruntime.transformers.optimizer import optimize_model
    opt = optimize_model(path, model_type="bert", num_heads=dims["heads"],
                         hidden_size=dims["hidden"])
    opt.save_model_to_file(out)
    return out


def int8_onnx(path, out):
    """ONNX Runtime's dynamic int8 quantization (weights QInt8, activations quantized per call)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(path, out, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ftune", default="build/bin/ftune")
    ap.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", choices=["all", "inference", "train"], default="all")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--results-dir", help="write <dir>/<cpu>.json (one file per CPU model)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    bf16 = args.precision == "bf16"
    import onnxruntime
    import torch
    import transformers
    threads = [int(t) for t in args.threads.split(",")]
    cpu, slug = cpu_model_name()
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "onnxruntime": onnxruntime.__version__}
    print("versions:", versions, "cpu:", cpu, file=sys.stderr)
    cases = [c for c in CASES if args.cases == "all" or (c[1] == "forward") == (args.cases == "inference")]
    # the training step at the largest thread count; inference at every thread count
    runs = [(c, th) for c in cases for th in (threads if c[1] == "forward" else [max(threads)])]

    tmp = tempfile.mkdtemp(prefix="ftune_cmp_")
    torch_models, ort_paths = {}, {}
    for name in sorted({c[0] for c in cases}):
        tm = TorchModel(MODELS[name], max(threads))
        torch_models[name] = tm
        if any(c[0] == name and c[1] == "forward" for c in cases):
            path = os.path.join(tmp, f"{name}.onnx")
            tm.export_onnx(path)
            ort_paths[name] = {"onnxruntime": path}
            try:
                ort_paths[name]["onnxruntime (BERT fusion)"] = fused_onnx(
                    path, MODELS[name], os.path.join(tmp, f"{name}.fused.onnx"))
            except Exception as e:  # the optimizer is optional; say why it is missing
                print(f"ONNX Runtime BERT optimizer unavailable: {e}", file=sys.stderr)
            if bf16:  # the exported graph quantized (the fused one has contrib operators)
                ort_paths[name]["onnxruntime int8"] = int8_onnx(
                    path, os.path.join(tmp, f"{name}.int8.onnx"))

    results, ftune_cpu = [], ""
    for ((name, mode, B, T, steps), th) in runs:
        best, every = {}, {}
        sessions = {k: OrtModel(p, th) for k, p in ort_paths.get(name, {}).items()} \
            if mode == "forward" else {}
        for r in range(args.rounds):
            engines = {"ftune": lambda: run_ftune(args.ftune, MODELS[name], mode, B, T, steps, th),
                       "PyTorch": lambda: torch_models[name].time(mode, B, T, steps, th)}
            if bf16:
                engines["ftune bf16"] = lambda: run_ftune(args.ftune, MODELS[name], mode, B, T,
                                                          steps, th, "bf16")
            for k, om in sessions.items():
                engines[k] = (lambda om=om: om.time(B, T, steps))
            for k, fn in engines.items():
                ms = fn()
                if k == "ftune":
                    ftune_cpu = LAST_FTUNE.get("cpu", "")
                best[k] = min(best.get(k, float("inf")), ms)
                every.setdefault(k, []).append(round(ms, 2))
                print(f"round {r} {name} {mode} {B}x{T} {th} threads {k}: {ms:.2f} ms",
                      file=sys.stderr)
        ours = "ftune bf16" if bf16 else "ftune"
        ratios = sorted(min(v[i] for k, v in every.items() if not k.startswith("ftune")) /
                        every[ours][i] for i in range(len(every[ours])))
        r = {"model": name, "mode": mode, "batch": B, "seq": T, "threads": th,
             "ms": best, "rounds": every, "speedup_median": statistics.median(ratios),
             "speedup_range": [ratios[0], ratios[-1]]}
        if bf16:
            own = sorted(every["ftune"][i] / every["ftune bf16"][i]
                         for i in range(len(every["ftune"])))
            r["bf16_vs_fp32_median"], r["bf16_vs_fp32_range"] = statistics.median(own), \
                [own[0], own[-1]]
        results.append(r)

    print(f"CPU: {cpu}; ftune sees: {ftune_cpu}")
    print("Best of the rounds' medians in ms; speed-up: ftune against the fastest other engine, "
          "in the same round (median over rounds, range in brackets):\n")
    extra = " ftune bf16 | ORT int8 |" if bf16 else ""
    print("| model | step | batch × seq | threads | ftune |" + extra + " PyTorch | ONNX Runtime | "
          "ORT + BERT fusion | ftune speed-up |" + (" bf16 / fp32 |" if bf16 else ""))
    print("|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if bf16 else ""))
    for r in results:
        ms = r["ms"]

        def cell(k):
            return f"{ms[k]:.1f}" if k in ms else "–"
        step = "train (fwd+bwd)" if r["mode"] == "backward" else "inference"
        lo, hi = r["speedup_range"]
        more = f" {cell('ftune bf16')} | {cell('onnxruntime int8')} |" if bf16 else ""
        own = ""
        if bf16:
            a, b = r["bf16_vs_fp32_range"]
            own = f" {r['bf16_vs_fp32_median']:.2f}× [{a:.2f}–{b:.2f}] |"
        print(f"| {r['model']} | {step} | {r['batch']} × {r['seq']} | {r['threads']} | "
              f"{cell('ftune')} |{more} {cell('PyTorch')} | {cell('onnxruntime')} | "
              f"{cell('onnxruntime (BERT fusion)')} | {r['speedup_median']:.2f}× "
              f"[{lo:.2f}–{hi:.2f}] |{own}")
    out = {"cpu": cpu, "ftune_cpu": ftune_cpu, "versions": versions, "rounds": args.rounds,
           "date": time.strftime("%Y-%m-%d"), "results": results}
    paths = [args.json] if args.json else []
    if args.results_dir:
        os.makedirs(args.results_dir, exist_ok=True)
        paths.append(os.path.join(args.results_dir,
                                  re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-") + ".json"))
    for path in paths:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
