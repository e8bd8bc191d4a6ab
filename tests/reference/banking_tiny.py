#!/usr/bin/env python3
"""The accuracy reference of ftune's training engine: a small random BERT fine-tuned in PyTorch
on 1,000 BANKING77 training rows of 10 intents, tested on all their test rows
(tests/test_train.cpp runs the same recipe with ftune and must land within 3 points).

Writes tests/reference/fixtures/banking_tiny/ (a BertForSequenceClassification with random
weights, saved by save_pretrained, and a vocab.txt cut down to the word pieces of the selected
rows: tokenizing with it gives the same pieces as the full bert-base-uncased vocabulary) and
tests/reference/fixtures/banking_tiny_reference.json (the recipe, the rows chosen, and PyTorch's
test accuracy for each seed).

Rows: the 10 first intents in sorted order; the first 100 training rows of each in file order;
every test row of those intents.
Recipe: max_length 64, batch 16, 8 epochs, AdamW lr 1e-3, weight decay 0.01 (not biases and
LayerNorm weights), linear schedule with 10% warmup, gradient clipping at 1.0, dropout 0.1,
shuffled each epoch; accuracy of the final model.

Usage: FTUNE_DATA_DIR=../shared/data python3 tests/reference/banking_tiny.py
(needs torch, transformers, safetensors)
"""
import csv
import json
import math
import os
import pathlib
import time

import torch
from transformers import (BertConfig, BertForSequenceClassification, BertTokenizer,
                          get_linear_schedule_with_warmup)

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "banking_tiny"
DATA = pathlib.Path(os.environ.get("FTUNE_DATA_DIR", HERE.parents[2] / "shared" / "data"))
RECIPE = {"max_length": 64, "batch_size": 16, "epochs": 8, "lr": 1e-3, "weight_decay": 0.01,
          "warmup_ratio": 0.1, "max_grad_norm": 1.0, "intents": 10, "rows_per_intent": 100}
SEEDS = list(range(24))  # tiny random models vary by several points from seed to seed: compare means


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def main():
    train_all, test_all = rows(DATA / "banking77" / "train.csv"), rows(DATA / "banking77" / "test.csv")
    intents = sorted({c for _, c in train_all})[:RECIPE["intents"]]
    train, per = [], {c: 0 for c in intents}
    for t, c in train_all:
        if c in per and per[c] < RECIPE["rows_per_intent"]:
            train.append((t, c))
            per[c] += 1
    test = [(t, c) for t, c in test_all if c in intents]

    full = BertTokenizer(vocab=str(DATA / "bert-base-uncased" / "vocab.txt"), do_lower_case=True)
    assert len(full) == 30522
    used = set(full.all_special_ids)
    for t, _ in train + test:
        used.update(full(t, truncation=True, max_length=RECIPE["max_length"])["input_ids"])
    vocab = [tok for tok, i in sorted(full.get_vocab().items(), key=lambda kv: kv[1]) if i in used]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(vocab=str(OUT / "vocab.txt"), do_lower_case=True,
                        model_max_length=RECIPE["max_length"])
    assert len(tok) == len(vocab)
    for t, _ in train[:50]:  # the cut vocabulary gives the same pieces
        assert tok.tokenize(t) == full.tokenize(t)

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=128, max_position_embeddings=64,
                     id2label=dict(enumerate(intents)), label2id={c: i for i, c in enumerate(intents)})
    init = BertForSequenceClassification(cfg)
    init.save_pretrained(OUT, safe_serialization=True)
    tok.save_pretrained(OUT)
    (OUT / "vocab.txt").write_text("\n".join(vocab) + "\n")  # keep vocab.txt beside tokenizer.json

    label = {c: i for i, c in enumerate(intents)}

    def encode(data):
        enc = tok([t for t, _ in data], truncation=True, max_length=RECIPE["max_length"])
        return [(enc["input_ids"][i], label[c]) for i, (_, c) in enumerate(data)]

    tr, te = encode(train), encode(test)

    def batches(data, order):
        bs = RECIPE["batch_size"]
        for a in range(0, len(order), bs):
            idx = order[a:a + bs]
            T = max(len(data[i][0]) for i in idx)
            ids = torch.zeros(len(idx), T, dtype=torch.long)
            mask = torch.zeros(len(idx), T, dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, :len(data[i][0])] = torch.tensor(data[i][0])
                mask[r, :len(data[i][0])] = 1
            yield ids, mask, torch.tensor([data[i][1] for i in idx])

    accuracies, seconds = [], []
    torch.set_num_threads(2)
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = BertForSequenceClassification.from_pretrained(OUT)
        no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
        decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": RECIPE["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=RECIPE["lr"])
        steps = math.ceil(len(tr) / RECIPE["batch_size"]) * RECIPE["epochs"]
        sched = get_linear_schedule_with_warmup(opt, math.ceil(RECIPE["warmup_ratio"] * steps), steps)
        t0 = time.perf_counter()
        for _ in range(RECIPE["epochs"]):
            model.train()
            for ids, mask, y in batches(tr, torch.randperm(len(tr)).tolist()):
                loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["max_grad_norm"])
                opt.step()
                sched.step()
                opt.zero_grad()
        seconds.append(time.perf_counter() - t0)
        model.eval()
        correct = 0
        with torch.no_grad():
            for ids, mask, y in batches(te, list(range(len(te)))):
                correct += int((model(input_ids=ids, attention_mask=mask).logits.argmax(-1) == y).sum())
        accuracies.append(correct / len(te))
        print(f"seed {seed}: test accuracy {accuracies[-1]:.4f} ({seconds[-1]:.1f} s)")
    ref = {"recipe": RECIPE, "intents": intents, "train_rows": len(train), "test_rows": len(test),
           "seeds": SEEDS, "pytorch_accuracy": accuracies,
           "pytorch_mean_accuracy": sum(accuracies) / len(accuracies),
           "pytorch_seconds": seconds, "torch": torch.__version__}
    (HERE / "fixtures" / "banking_tiny_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"mean {ref['pytorch_mean_accuracy']:.4f} over {len(test)} test rows")


if __name__ == "__main__":
    main()
