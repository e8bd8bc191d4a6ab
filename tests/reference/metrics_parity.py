#!/usr/bin/env python3
"""scikit-learn's classification_report on random and edge-case predictions, for ftune's report
parity test (tests/test_train.cpp).

Writes tests/reference/fixtures/classification_reports.json: a list of
{"gold": [...], "pred": [...], "names": [...], "report": text} with
classification_report(gold, pred, labels=range(len(names)), target_names=names, digits=4,
zero_division=0); and tests/reference/fixtures/entity_reports.json: a list of
{"gold": [[tags]], "pred": [[tags]], "report": text} with seqeval's
classification_report(gold, pred, digits=4) (default mode: conlleval's chunking), on random
BIO sequences that include ill-formed ones (I- after O, type changes inside a chunk).

Usage: python3 tests/reference/metrics_parity.py   (needs scikit-learn and seqeval)
"""
import json
import pathlib
import random

from seqeval.metrics import classification_report as seqeval_report
from sklearn.metrics import classification_report

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "classification_reports.json"
OUT_ENTITIES = OUT.parent / "entity_reports.json"


def main():
    rng = random.Random(5)
    cases = []
    specs = [(["negative", "positive"], 872, 0.85), (["a", "bb", "a rather long label name"], 50, 0.5),
             ([f"intent_{i}" for i in range(10)], 300, 0.7), (["x", "y", "z", "never"], 20, 0.6)]
    for names, n, acc in specs:
        used = len(names) - (1 if names[-1] == "never" else 0)
        gold = [rng.randrange(used) for _ in range(n)]
        pred = [g if rng.random() < acc else rng.randrange(used) for g in gold]
        report = classification_report(gold, pred, labels=list(range(len(names))),
                                       target_names=names, digits=4, zero_division=0)
        cases.append({"gold": gold, "pred": pred, "names": names, "report": report})
    OUT.write_text(json.dumps(cases) + "\n")

    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
    entity_cases = []
    for sentences, flip in [(40, 0.1), (200, 0.3), (5, 0.9)]:
        gold, pred = [], []
        for _ in range(sentences):
            n = rng.randrange(1, 25)
            g = [rng.choice(tags) for _ in range(n)]
            gold.append(g)
            pred.append([rng.choice(tags) if rng.random() < flip else t for t in g])
        entity_cases.append({"gold": gold, "pred": pred,
                             "report": seqeval_report(gold, pred, digits=4, zero_division=0)})
    OUT_ENTITIES.write_text(json.dumps(entity_cases) + "\n")


if __name__ == "__main__":
    main()
