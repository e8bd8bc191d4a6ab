#!/usr/bin/env python3
"""Side-by-side timing of `ftune bench` against PyTorch and ONNX Runtime on this machine.

Same model (a randomly initialized BERT encoder + pooler + 2-way classifier, BERT's init), same
shapes, same thread count, interleaved in one run (these machines are shared and noisy: each
engine is run `--rounds` times in turn and its best median is kept).

  training step  (forward + backward of the cross-entropy loss, dropout on):  ftune, PyTorch
  inference      (eval mode, batch 1):                                        ftune, PyTorch,
                 ONNX Runtime (default graph optimizations, and with its BERT fusion optimizer)

Usage:
  python3 bench/compare_pytorch_onnx.py [--ftune build/bin/ftune] [--threads 2] [--rounds 3]
         [--json out.json]
Needs: pip install torch transformers onnxruntime onnx onnxscript
"""
import argparse
import json
import os
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


def run_ftune(exe, dims, mode, B, T, steps, threads):
    cmd = [exe, "bench", "--dims", f"{dims['hidden']},{dims['layers']},{dims['heads']},{dims['ffn']}",
           "--vocab", str(VOCAB), "--batch", str(B), "--seq", str(T), "--mode", mode,
           "--steps", str(steps), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["ms_per_step"]


class TorchModel:
    def __init__(self, dims, threads):
        import torch
        from transformers import BertConfig, BertForSequenceClassification
        torch.set_num_threads(threads)
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

    def time(self, mode, B, T, steps):
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ftune", default="build/bin/ftune")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    import onnxruntime
    import torch
    import transformers
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "onnxruntime": onnxruntime.__version__}
    print("versions:", versions, file=sys.stderr)

    tmp = tempfile.mkdtemp(prefix="ftune_cmp_")
    torch_models, ort_models = {}, {}
    for name in sorted({c[0] for c in CASES}):
        tm = TorchModel(MODELS[name], args.threads)
        torch_models[name] = tm
        if any(c[0] == name and c[1] == "forward" for c in CASES):
            path = os.path.join(tmp, f"{name}.onnx")
            tm.export_onnx(path)
            ort_models[name] = {"onnxruntime": OrtModel(path, args.threads)}
            try:
                fpath = fused_onnx(path, MODELS[name], os.path.join(tmp, f"{name}.fused.onnx"))
                ort_models[name]["onnxruntime (BERT fusion)"] = OrtModel(fpath, args.threads)
            except Exception as e:  # the optimizer is optional; say why it is missing
                print(f"ONNX Runtime BERT optimizer unavailable: {e}", file=sys.stderr)

    results = []
    for (name, mode, B, T, steps) in CASES:
        best, every = {}, {}
        for r in range(args.rounds):
            engines = {"ftune": lambda: run_ftune(args.ftune, MODELS[name], mode, B, T, steps,
                                                  args.threads),
                       "PyTorch": lambda: torch_models[name].time(mode, B, T, steps)}
            if mode == "forward":
                for k, om in ort_models[name].items():
                    engines[k] = (lambda om=om: om.time(B, T, steps))
            for k, fn in engines.items():
                ms = fn()
                best[k] = min(best.get(k, float("inf")), ms)
                every.setdefault(k, []).append(round(ms, 2))
                print(f"round {r} {name} {mode} {B}x{T} {k}: {ms:.2f} ms", file=sys.stderr)
        results.append({"model": name, "mode": mode, "batch": B, "seq": T, "ms": best,
                        "rounds": every})

    print("Best of the rounds' medians in ms; speed-up: ftune against the fastest other engine, "
          "in the same round (median over rounds, range in brackets):\n")
    print("| model | step | batch × seq | ftune | PyTorch | ONNX Runtime | ORT + BERT fusion | "
          "ftune speed-up |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        ms, every = r["ms"], r["rounds"]
        ratios = sorted(min(v[i] for k, v in every.items() if k != "ftune") / every["ftune"][i]
                        for i in range(len(every["ftune"])))

        def cell(k):
            return f"{ms[k]:.1f}" if k in ms else "–"
        step = "train (fwd+bwd)" if r["mode"] == "backward" else "inference"
        print(f"| {r['model']} | {step} | {r['batch']} × {r['seq']} | {cell('ftune')} | "
              f"{cell('PyTorch')} | {cell('onnxruntime')} | {cell('onnxruntime (BERT fusion)')} | "
              f"{statistics.median(ratios):.2f}× [{ratios[0]:.2f}–{ratios[-1]:.2f}] |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions, "threads": args.threads, "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    main()
