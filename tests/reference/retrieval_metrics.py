#!/usr/bin/env python3
"""Retrieval metrics by sentence-transformers' InformationRetrievalEvaluator (its compute_metrics
with its default k: accuracy@1/3/5/10, precision@ and recall@1/3/5/10, MRR@10, nDCG@10, MAP@100)
on random query x corpus score matrices, for ftune's retrieval metrics test
(tests/test_retrieval.cpp).

The scores are multiples of 1/8 in [-1, 1] (exact in float32), so many tie: the evaluator ranks
ties by ascending corpus id, which the zero-padded ids make the corpus order. Some queries have
no relevant document: the evaluator leaves them out. Each case gives the evaluator every
document's score (it keeps the best first, then cuts at each k).

Writes tests/reference/fixtures/retrieval_metrics.json: a list of {"queries", "documents",
"scores" (queries x documents, row-major), "relevant" (per query, document indices),
"metrics" {name: {k: value}}}.

Usage: /tmp/ref/bin/python tests/reference/retrieval_metrics.py   (needs sentence-transformers)
"""
import json
import pathlib

import numpy as np
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "retrieval_metrics.json"


def case(rng, queries, documents, most_relevant):
    scores = rng.integers(-8, 9, size=(queries, documents)) / 8.0
    relevant = []
    for q in range(queries):
        n = int(rng.integers(0, most_relevant + 1))  # 0: a query the evaluator leaves out
        relevant.append(sorted(int(d) for d in rng.choice(documents, size=n, replace=False)))
    qid = lambda q: f"q{q:04d}"
    cid = lambda d: f"c{d:04d}"
    evaluator = InformationRetrievalEvaluator(
        queries={qid(q): f"query {q}" for q in range(queries)},
        corpus={cid(d): f"document {d}" for d in range(documents)},
        relevant_docs={qid(q): {cid(d) for d in relevant[q]} for q in range(queries)},
    )
    kept = [q for q in range(queries) if relevant[q]]
    results = [[{"corpus_id": cid(d), "score": float(scores[q, d])} for d in range(documents)]
               for q in kept]
    metrics = evaluator.compute_metrics(results)
    return {
        "queries": queries,
        "documents": documents,
        "scores": [float(x) for x in scores.reshape(-1)],
        "relevant": relevant,
        "metrics": {name: {str(k): float(v) for k, v in by_k.items()}
                    for name, by_k in metrics.items()},
    }


def main():
    rng = np.random.default_rng(20261203)
    cases = [case(rng, 30, 130, 6), case(rng, 12, 7, 3), case(rng, 25, 40, 12)]
    OUT.write_text(json.dumps(cases) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
