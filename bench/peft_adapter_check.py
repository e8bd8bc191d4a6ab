#!/usr/bin/env python3
"""Loads a LoRA adapter that `ftune train --peft lora` saved into Hugging Face PEFT
(PeftModel.from_pretrained on the base model) and compares its logits on a TSV file's texts with
the ones `ftune predict --adapter` printed for the same texts (--format logits, one line each).
Prints one JSON line: the largest absolute logit difference, the accuracy of PEFT's predictions
and how many predictions the two sides share.

  ftune predict --model BASE --adapter DIR --format logits < texts > ftune_logits.txt
  python3 bench/peft_adapter_check.py --model BASE --adapter DIR --data dev.tsv \
      --ftune-logits ftune_logits.txt

Needs torch, transformers and peft (see tests/reference/README.md).
"""
import argparse
import csv
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="the base model directory")
    ap.add_argument("--adapter", required=True, help="ftune's adapter directory")
    ap.add_argument("--data", required=True, help="TSV with a header: text, label")
    ap.add_argument("--ftune-logits", required=True)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with open(f"{args.adapter}/ftune_task.json") as f:
        id2label = {int(k): v for k, v in json.load(f)["id2label"].items()}
    with open(args.data, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    texts, gold = [r[0] for r in rows], [r[1].strip() for r in rows]
    with open(args.ftune_logits) as f:
        theirs = torch.tensor([[float(x) for x in line.split()] for line in f])
    if len(theirs) != len(texts):
        raise SystemExit(f"{args.ftune_logits}: {len(theirs)} lines for {len(texts)} texts")

    tok = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(id2label), id2label=id2label,
        label2id={v: k for k, v in id2label.items()})
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    mine = []
    with torch.no_grad():
        for a in range(0, len(texts), 64):
            enc = tok(texts[a:a + 64], truncation=True, max_length=args.max_length,
                      padding=True, return_tensors="pt")
            mine.append(model(**enc).logits)
    mine = torch.cat(mine)
    pred = mine.argmax(-1).tolist()
    print(json.dumps({
        "texts": len(texts),
        "max_abs_logit_diff": float((mine - theirs).abs().max()),
        "peft_accuracy": round(sum(id2label[p] == g for p, g in zip(pred, gold)) / len(gold), 4),
        "same_predictions": int((mine.argmax(-1) == theirs.argmax(-1)).sum()),
    }))


if __name__ == "__main__":
    main()
