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

Also writes tests/reference/fixtures/metrics_extra.json: scikit-learn's multi-label
classification_report (micro, macro, weighted and samples averages), confusion_matrix, the
token-level report (classification_report over flattened tags), scipy's pearsonr / spearmanr
(with ties), and SQuAD exact match / F1 by torchmetrics (an implementation independent of the
official script, with SQuAD v2's rule for empty answers).

Usage: python3 tests/reference/metrics_parity.py   (needs scikit-learn, seqeval, scipy, torchmetrics)
"""
import json
import pathlib
import random

from seqeval.metrics import classification_report as seqeval_report
from sklearn.metrics import classification_report

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "classification_reports.json"
OUT_ENTITIES = OUT.parent / "entity_reports.json"
OUT_EXTRA = OUT.parent / "metrics_extra.json"


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
    extra(rng, cases, entity_cases)


def extra(rng, cases, entity_cases):
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import confusion_matrix
    from torchmetrics.functional.text.squad import squad

    out = {"multilabel": [], "confusion": [], "token": [], "correlation": [], "squad": []}
    for n, labels, density in [(50, ["sports", "politics", "tech", "never"], 0.4),
                               (200, [f"topic_{i}" for i in range(7)], 0.2), (6, ["a", "b"], 0.5)]:
        used = len(labels) - (1 if labels[-1] == "never" else 0)
        gold = [[int(c < used and rng.random() < density) for c in range(len(labels))]
                for _ in range(n)]
        pred = [[int(g if rng.random() < 0.8 else rng.random() < density) if c < used else 0
                 for c, g in enumerate(row)] for row in gold]
        gold[0] = [0] * len(labels)  # an example with no label, predicted empty too
        pred[0] = [0] * len(labels)
        report = classification_report(np.array(gold), np.array(pred), target_names=labels,
                                       digits=4, zero_division=0)
        out["multilabel"].append({"gold": gold, "pred": pred, "names": labels, "report": report})
    for c in cases:
        out["confusion"].append({"gold": c["gold"], "pred": c["pred"], "n": len(c["names"]),
                                 "matrix": confusion_matrix(c["gold"], c["pred"],
                                                            labels=list(range(len(c["names"]))))
                                 .tolist()})
    for c in entity_cases:
        flat_g = [t for s in c["gold"] for t in s]
        flat_p = [t for s in c["pred"] for t in s]
        out["token"].append({"gold": c["gold"], "pred": c["pred"],
                             "report": classification_report(flat_g, flat_p, digits=4,
                                                             zero_division=0)})
    for n, ties in [(30, False), (100, True), (5, True)]:
        x = [rng.randrange(6) if ties else rng.gauss(0, 1) for _ in range(n)]
        y = [xi * 0.5 + (rng.randrange(4) if ties else rng.gauss(0, 1)) for xi in x]
        out["correlation"].append({"x": x, "y": y, "pearson": float(pearsonr(x, y)[0]),
                                   "spearman": float(spearmanr(x, y)[0])})
    answers = [("the Eiffel Tower", ["Eiffel Tower", "the tower"]),
               ("Eiffel  tower.", ["The Eiffel Tower"]), ("in Paris, France", ["Paris"]),
               ("an apple a day", ["apple day", "a day"]), ("", [""]), ("", ["Paris"]),
               ("Paris", [""]), ("1,000 km", ["1000 km"]), ("Café Müller", ["café müller"]), ("CAFÉ ÜBER", ["café über"]),
               ("the the the", ["the"]), ("New York New York", ["New York"]),
               ("A-B (C)", ["ab c"]), ("twenty two", ["twenty-two", "22"])]
    for pred, golds in answers:
        r = squad([{"prediction_text": pred, "id": "q"}],
                  [{"answers": {"answer_start": [0] * len(golds), "text": golds}, "id": "q"}])
        out["squad"].append({"prediction": pred, "golds": golds,
                             "exact_match": float(r["exact_match"]) / 100,
                             "f1": float(r["f1"]) / 100})
    OUT_EXTRA.write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
