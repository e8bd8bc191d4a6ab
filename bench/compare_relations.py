#!/usr/bin/env python3
"""Relation extraction on SemEval-2010 Task 8 (examples/relations_semeval.cpp) against the same
recipe in Transformers, side by side in one run: the same checkpoint (all-MiniLM-L6-v2), the
entity markers <e1> </e1> <e2> </e2> added as special tokens with new embedding rows at the mean
of the old rows, the same head (Linear(3H -> 19) over dropout of the final hidden states of
[CLS], <e1> and <e2>; weights normal(0, 0.02), bias 0), Hugging Face's Trainer with AdamW
(lr --lr, weight decay 0.01 except biases and LayerNorm), 10% warmup then linear decay, clipping
at 1.0, batches of 32 grouped by length, --epochs epochs, texts up to 128 tokens, --threads
threads; trained on the 8,000 training sentences and scored on the 2,717 test sentences with
the official scorer's rules (tests/reference/relations.py's port of
semeval2010_task8_scorer-v1.2.pl).

Prints each side's official score (macro-F1, direction counted, Other excluded) before and after
fine-tuning, accuracy over the 19 labels, the training wall time, and their ratio.

Usage: python3 bench/compare_relations.py --model all-MiniLM-L6-v2 [--data ../shared/data]
           [--ftune build/bin/relations_semeval] [--threads 2] [--epochs 5] [--lr 1e-4]
           [--seed 42] [--max-train 8000] [--only ftune|transformers]
Needs: pip install torch transformers accelerate
"""
import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "reference"))
from relations import official  # noqa: E402  (the scorer's rules)

MARKERS = ["<e1>", "</e1>", "<e2>", "</e2>"]


def rows(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()[1:]
    return [(l.split("\t")[2], l.split("\t")[1]) for l in lines]


def run_ftune(a):
    cmd = [a.ftune, "--model", a.model, "--data", a.data, "--epochs", str(a.epochs), "--lr",
           str(a.lr), "--seed", str(a.seed), "--max-train", str(a.max_train)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(a.threads))).stdout
    print(out)
    m = re.search(r"RESULT f1_before (\S+) f1_after (\S+) accuracy_after (\S+) train_seconds (\S+)",
                  out)
    f0, f1, acc, secs = map(float, m.groups())
    return {"f1": (100 * f0, 100 * f1), "accuracy": 100 * acc, "seconds": secs}


def run_transformers(a):
    import torch
    from torch import nn
    from transformers import (AutoTokenizer, BertModel, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    torch.set_num_threads(a.threads)
    train_rows = rows(os.path.join(a.data, "semeval2010_task8", "train.tsv"))[:a.max_train]
    test_rows = rows(os.path.join(a.data, "semeval2010_task8", "test.tsv"))
    names = sorted({l for _, l in train_rows + test_rows})
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    e1, e2 = tok.convert_tokens_to_ids(["<e1>", "<e2>"])

    class RelationModel(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(a.seed)
            self.bert = BertModel.from_pretrained(a.model, add_pooling_layer=False)
            old = self.bert.embeddings.word_embeddings.weight.detach().clone()
            self.bert.resize_token_embeddings(len(tok), mean_resizing=False)
            with torch.no_grad():
                self.bert.embeddings.word_embeddings.weight[old.shape[0]:] = old.mean(0)
            cfg = self.bert.config
            self.dropout = nn.Dropout(cfg.classifier_dropout if cfg.classifier_dropout is not None
                                      else cfg.hidden_dropout_prob)
            self.classifier = nn.Linear(3 * cfg.hidden_size, len(names))
            nn.init.normal_(self.classifier.weight, std=cfg.initializer_range)
            nn.init.zeros_(self.classifier.bias)

        def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state  # (B, T, H)
            r = torch.arange(h.shape[0])
            p1 = (input_ids == e1).int().argmax(1)
            p2 = (input_ids == e2).int().argmax(1)
            logits = self.classifier(self.dropout(torch.cat([h[:, 0], h[r, p1], h[r, p2]], -1)))
            out = {"logits": logits}
            if labels is not None:
                out["loss"] = nn.functional.cross_entropy(logits, labels)
            return out

    def encode(rs):
        enc = tok([t for t, _ in rs], truncation=True, max_length=128)
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                 "token_type_ids": enc["token_type_ids"][i], "labels": names.index(l)}
                for i, (_, l) in enumerate(rs)]

    train, test = encode(train_rows), encode(test_rows)
    model = RelationModel()
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), num_train_epochs=a.epochs, per_device_train_batch_size=32,
        per_device_eval_batch_size=64, learning_rate=a.lr, weight_decay=0.01, warmup_steps=0.1,
        lr_scheduler_type="linear", max_grad_norm=1.0, train_sampling_strategy="group_by_length",
        seed=a.seed,
        save_strategy="no", logging_steps=50, report_to=[], use_cpu=True,
        dataloader_drop_last=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tok))

    collate = DataCollatorWithPadding(tok)

    def score():  # in file order (Trainer.predict may group the test set by length too)
        model.eval()
        predicted = []
        with torch.no_grad():
            for i in range(0, len(test), 64):
                batch = collate([{k: v for k, v in x.items() if k != "labels"}
                                 for x in test[i:i + 64]])
                predicted += [names[j] for j in model(**batch)["logits"].argmax(-1).tolist()]
        s = official([l for _, l in test_rows], predicted)
        return s["macro"][2], s["accuracy"]

    f0, _ = score()
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    f1, acc = score()
    return {"f1": (f0, f1), "accuracy": acc, "seconds": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--ftune", default="build/bin/relations_semeval")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-train", type=int, default=8000)
    p.add_argument("--only", choices=["ftune", "transformers"])
    a = p.parse_args()
    results = {}
    if a.only != "transformers":
        results["ftune"] = run_ftune(a)
    if a.only != "ftune":
        results["transformers"] = run_transformers(a)
    for side, r in results.items():
        print(f"{side}: official macro-F1 {r['f1'][0]:.2f} -> {r['f1'][1]:.2f}, accuracy "
              f"{r['accuracy']:.2f}%, training {r['seconds']:.1f} s", flush=True)
    if len(results) == 2:
        print(f"difference {results['ftune']['f1'][1] - results['transformers']['f1'][1]:+.2f} "
              f"points; ftune trains "
              f"{results['transformers']['seconds'] / results['ftune']['seconds']:.2f}x as fast")


if __name__ == "__main__":
    main()
