#!/usr/bin/env python3
"""The accuracy ONNX Runtime's dynamic int8 quantization costs a fine-tuned classifier, beside
what ftune's bf16 products cost it: the same model directory (saved by `ftune train`) evaluated
on a TSV data set (sentence<TAB>label) by

  ONNX Runtime fp32   the model exported by torch.onnx (Transformers' BertForSequenceClassification)
  ONNX Runtime int8   that graph through onnxruntime.quantization.quantize_dynamic (QInt8 weights)
  ftune fp32, bf16    `ftune eval --model DIR --data FILE [--precision bf16]`

and prints one JSON line with the four accuracies and how many predictions int8 and bf16 change.

Usage: python3 bench/int8_accuracy.py --model DIR --data ../shared/data/sst2/dev.tsv
       [--ftune build/bin/ftune] [--threads 2]
(needs torch, transformers, onnxruntime, onnx)
"""
import argparse
import csv
import json
import os
import re
import subprocess
import tempfile


def ftune_predictions(exe, model, texts, precision):
    """Labels `ftune predict` gives each text (ids by the model's label names)."""
    out = subprocess.run([exe, "predict", "--model", model, "--precision", precision,
                          "--format", "json"], input="\n".join(texts) + "\n",
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line)["label"] for line in out.strip().splitlines()]


def ftune_accuracy(exe, model, data, precision):
    out = subprocess.run([exe, "eval", "--model", model, "--data", data, "--precision", precision],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"^\s*accuracy\s+([0-9.]+)", out, re.M).group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--ftune", default="build/bin/ftune")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoTokenizer, BertForSequenceClassification

    with open(args.data, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    texts, labels = [r[0] for r in rows], [int(r[1]) for r in rows]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = BertForSequenceClassification.from_pretrained(args.model).eval()
    id2label = model.config.id2label

    tmp = tempfile.mkdtemp(prefix="ftune_int8_")
    fp32_path, int8_path = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model.int8.onnx")
    enc = tok(texts[:1], return_tensors="pt")
    torch.onnx.export(model, (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]),
                      fp32_path, input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={k: {0: "b", 1: "t"} for k in
                                    ["input_ids", "attention_mask", "token_type_ids"]})
    quantize_dynamic(fp32_path, int8_path, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

    def ort_predictions(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        out = []
        for t in texts:  # one at a time, as served (no padding effects)
            e = tok(t, return_tensors="np", truncation=True, max_length=128)
            logits = sess.run(None, {k: e[k].astype(np.int64) for k in
                                     ["input_ids", "attention_mask", "token_type_ids"]})[0]
            out.append(int(logits[0].argmax()))
        return out

    p32, p8 = ort_predictions(fp32_path), ort_predictions(int8_path)
    label_id = {v: int(k) for k, v in id2label.items()}
    f32 = [label_id[x] for x in ftune_predictions(args.ftune, args.model, texts, "fp32")]
    f16 = [label_id[x] for x in ftune_predictions(args.ftune, args.model, texts, "bf16")]

    def acc(pred):
        return sum(int(a == b) for a, b in zip(pred, labels)) / len(labels)
    print(json.dumps({
        "examples": len(labels),
        "onnxruntime_fp32": acc(p32), "onnxruntime_int8": acc(p8),
        "ftune_fp32": acc(f32), "ftune_bf16": acc(f16),
        "ftune_eval_fp32": ftune_accuracy(args.ftune, args.model, args.data, "fp32"),
        "ftune_eval_bf16": ftune_accuracy(args.ftune, args.model, args.data, "bf16"),
        "int8_changed_predictions": sum(int(a != b) for a, b in zip(p32, p8)),
        "bf16_changed_predictions": sum(int(a != b) for a, b in zip(f32, f16)),
        "ftune_vs_onnxruntime_fp32_disagree": sum(int(a != b) for a, b in zip(f32, p32))}))


if __name__ == "__main__":
    main()
