#!/usr/bin/env python3
"""ROUGE-1, ROUGE-2 and ROUGE-L by Google's rouge-score package (rouge_scorer.RougeScorer,
use_stemmer=False, its default tokenizer) on edge cases and on random pairs of real sentences
from SST-2 and DialogSum when the data directory is given, for ftune's metrics test
(tests/test_train.cpp).

Writes tests/reference/fixtures/rouge.json: a list of {"reference", "prediction", "rouge1",
"rouge2", "rougeL"}, each score [precision, recall, fmeasure]. Also
tests/reference/fixtures/rouge_multi.json: made-up summaries in DialogSum's style, three
references a case against a prediction mixing pieces of them, each with
RougeScorer.score_multi's scores ("best": per metric the reference with the highest F-measure)
and the F-measures against each reference averaged over the three ("mean"), as ftune's
generation report scores several references.

Usage: /tmp/ref/bin/python tests/reference/rouge_parity.py   (needs rouge-score)
"""
import json
import pathlib
import random

from rouge_score import rouge_scorer

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "rouge.json"
OUT_MULTI = OUT.parent / "rouge_multi.json"

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
    # three made-up references a case, in DialogSum's style, from one pool of words (so that they
    # overlap the prediction by different amounts), and a prediction mixing them
    pool = ("#Person1# #Person2# asks tells books a room for two nights the station way to "
            "shop opens on Sunday morning and is open hours about price rose 3.5% wants "
            "help find walk blocks turn left, doctor's check-up. Mr. Smith smoke quit").split()
    multi = []
    for _ in range(24):
        refs = [" ".join(rng.choice(pool) for _ in range(rng.randrange(4, 20))) for _ in range(3)]
        words = rng.choice(refs).split() + [rng.choice(pool) for _ in range(rng.randrange(0, 8))]
        pred = " ".join(w for w in words if rng.random() < 0.75)
        best = scorer.score_multi(refs, pred)
        each = [scorer.score(t, pred) for t in refs]
        mean = {k: sum(e[k].fmeasure for e in each) / len(each) for k in best}
        multi.append({"references": refs, "prediction": pred,
                      "best": {k: [v.precision, v.recall, v.fmeasure] for k, v in best.items()},
                      "mean": mean})
    # a tie: both references give ROUGE-1 F 2/3 with different precision and recall (the first
    # one's, P 1 R 0.5, is score_multi's, as numpy's argmax takes the first maximum)
    for refs, pred in ((["a b c d", "a"], "a b"), (["a", "a b c d"], "a b")):
        best = scorer.score_multi(refs, pred)
        each = [scorer.score(t, pred) for t in refs]
        multi.append({"references": refs, "prediction": pred,
                      "best": {k: [v.precision, v.recall, v.fmeasure] for k, v in best.items()},
                      "mean": {k: sum(e[k].fmeasure for e in each) / len(each) for k in best}})
    OUT_MULTI.write_text(json.dumps(multi, indent=1, ensure_ascii=False) + "\n")
    print(len(multi), "predictions against three references")


if __name__ == "__main__":
    main()
