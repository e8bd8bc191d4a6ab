#!/usr/bin/env python3
"""FAQ search on BANKING77 (examples/faq_search.cpp) against sentence-transformers' own fine-tuning
on the same recipe, side by side in one run: the same model directory (all-MiniLM-L6-v2), the
same training pairs (faq_search writes them with --pairs-out), MultipleNegativesRankingLoss
(scale 20, cosine), one epoch, batches of 32 pairs, AdamW lr 2e-5 with no weight decay, 10%
warmup then linear decay, clipping at 1.0, texts cut at 64 tokens, --threads threads; then
InformationRetrievalEvaluator on the test messages as queries against the training messages
(relevant: the same intent), before and after.

Prints each side's MRR@10, accuracy@1, nDCG@10 and MAP@100 before and after, the training wall
time, and the ratio of the wall times.

Usage: python3 bench/compare_embeddings.py --model all-MiniLM-L6-v2 [--data ../shared/data]
           [--ftune build/bin/faq_search] [--threads 2] [--seed 0]
Needs: pip install torch sentence-transformers datasets accelerate
"""
import argparse
import csv
import json
import os
import re
import subprocess
import tempfile
import time


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def run_ftune(a, pairs_path):
    cmd = [a.ftune, "--model", a.model, "--data", a.data, "--pairs-out", pairs_path]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(a.threads))).stdout
    m = re.search(r"RESULT mrr10_before (\S+) mrr10_after (\S+) accuracy1_before (\S+) "
                  r"accuracy1_after (\S+) ndcg10_after (\S+) train_seconds (\S+)", out)
    mrr0, mrr1, acc0, acc1, ndcg1, secs = map(float, m.groups())
    map1 = float(re.findall(r"MAP@100: (\S+)", out)[-1])
    return {"mrr10": (mrr0, mrr1), "accuracy1": (acc0, acc1), "ndcg10_after": ndcg1,
            "map100_after": map1, "seconds": secs}


def run_st(a, pairs_path):
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import (
        SentenceTransformerTrainingArguments)

    torch.set_num_threads(a.threads)
    corpus = rows(os.path.join(a.data, "banking77", "train.csv"))
    queries = rows(os.path.join(a.data, "banking77", "test.csv"))
    by_intent = {}
    for i, (_, intent) in enumerate(corpus):
        by_intent.setdefault(intent, set()).add(f"c{i:05d}")
    evaluator = InformationRetrievalEvaluator(
        queries={f"q{i:05d}": t for i, (t, _) in enumerate(queries)},
        corpus={f"c{i:05d}": t for i, (t, _) in enumerate(corpus)},
        relevant_docs={f"q{i:05d}": by_intent.get(c, set()) for i, (_, c) in enumerate(queries)},
        batch_size=64, name="banking77")
    model = SentenceTransformer(a.model, device="cpu")
    model.max_seq_length = 64
    before = evaluator(model)
    with open(pairs_path, encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f]
    anchors = [p["anchor"] for p in pairs]
    positives = [p["positive"] for p in pairs]
    train = Dataset.from_dict({"anchor": list(anchors), "positive": list(positives)})
    args = SentenceTransformerTrainingArguments(
        output_dir=tempfile.mkdtemp(), num_train_epochs=1, per_device_train_batch_size=32,
        learning_rate=2e-5, warmup_ratio=0.1, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="linear", seed=a.seed, save_strategy="no", logging_steps=50,
        report_to=[], use_cpu=True, dataloader_drop_last=False)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                         loss=MultipleNegativesRankingLoss(model))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    after = evaluator(model)
    key = lambda m: f"banking77_cosine_{m}"
    return {"mrr10": (before[key("mrr@10")], after[key("mrr@10")]),
            "accuracy1": (before[key("accuracy@1")], after[key("accuracy@1")]),
            "ndcg10_after": after[key("ndcg@10")], "map100_after": after[key("map@100")],
            "seconds": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--ftune", default="build/bin/faq_search")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    pairs = os.path.join(tempfile.mkdtemp(), "pairs.jsonl")
    results = {"ftune": run_ftune(a, pairs), "sentence-transformers": run_st(a, pairs)}
    for side, r in results.items():
        print(f"{side}: MRR@10 {r['mrr10'][0]:.4f} -> {r['mrr10'][1]:.4f}, accuracy@1 "
              f"{100 * r['accuracy1'][0]:.2f}% -> {100 * r['accuracy1'][1]:.2f}%, nDCG@10 "
              f"{r['ndcg10_after']:.4f}, MAP@100 {r['map100_after']:.4f}, "
              f"training {r['seconds']:.1f} s")
    print(f"ftune trains {results['sentence-transformers']['seconds'] / results['ftune']['seconds']:.2f}x "
          "as fast")


if __name__ == "__main__":
    main()
