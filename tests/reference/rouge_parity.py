#!/usr/bin/env python3
"""ROUGE-1, ROUGE-2 and ROUGE-L by Google's rouge-score package (rouge_scorer.RougeScorer,
use_stemmer=False, its default tokenizer) on edge cases and on random pairs of real sentences
from SST-2 and DialogSum when the data directory is given, for ftune's metrics test
(tests/test_train.cpp).

Writes tests/reference/fixtures/rouge.json: a list of {"reference", "prediction", "rouge1",
"rouge2", "rougeL"}, each score [precision, recall, fmeasure].

Usage: /tmp/ref/bin/python tests/reference/rouge_parity.py   (needs rouge-score)
"""
import json
import pathlib
import random

from rouge_score import rouge_scorer

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "rouge.json"

EDGE = [
    ("card_arrival", "card_arrival"),
    ("card_arrival", "card arrival"),
    ("", "anything"),
    ("anything", ""),
    ("!!!", "..."),
    ("The cat sat on the mat.", "the cat the cat sat"),
    ("a a a b", "a b a a a"),
    ("Price rose 3.5% to $12,000 in Q3-2024", "price rose 3 5 to 12 000"),
    ("Café crème, naïve façade", "cafe creme naive facade"),
    ("İstanbul and the KELVIN sign \u212a", "i stanbul kelvin k"),
    ("tab\tseparated\nlines  here", "TAB separated LINES"),
    ("北京 is 很 big", "is big"),
]


def main():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    pairs = list(EDGE)
    data = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
    rng = random.Random(3)
    sst = data / "sst2" / "dev.tsv"
    if sst.exists():
        lines = [l.split("\t")[0] for l in sst.read_text().splitlines()[1:]]
        for _ in range(20):
            a, b = rng.sample(lines, 2)
            words = a.split()
            c = " ".join(w for w in words if rng.random() < 0.7) + " " + " ".join(b.split()[:3])
            pairs.append((a, c))
    out = []
    for ref, pred in pairs:
        s = scorer.score(ref, pred)
        out.append({"reference": ref, "prediction": pred,
                    **{k: [v.precision, v.recall, v.fmeasure] for k, v in s.items()}})
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(len(out), "pairs")


if __name__ == "__main__":
    main()
