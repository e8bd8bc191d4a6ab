#!/usr/bin/env python3
"""The losses of sentence-embedding fine-tuning by sentence-transformers, on given embeddings:
MultipleNegativesRankingLoss (its defaults: cos_sim x 20, query-to-document, one softmax; anchors,
their positives and optional hard negatives, in-batch negatives) and CosineSimilarityLoss (MSE
between cos(u, v) and a score), through their compute_loss_from_embeddings in float64, with the
gradients torch's autograd gives for every embedding; for tests/test_retrieval.cpp.

Writes tests/reference/fixtures/embedding_losses.json: {"mnrl": [{"scale", "anchors",
"candidates" (lists of rows: the positives, then each set of hard negatives), "loss",
"d_anchors", "d_candidates"}], "cosine": [{"u", "v", "labels", "loss", "d_u", "d_v"}]}.

Usage: /tmp/ref/bin/python tests/reference/embedding_losses.py   (needs sentence-transformers)
"""
import json
import pathlib

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling
from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss, MultipleNegativesRankingLoss

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "embedding_losses.json"


def rows(t):
    return t.detach().tolist()


def main():
    torch.manual_seed(20261203)
    # the losses need a model object; compute_loss_from_embeddings never calls it
    model = SentenceTransformer(modules=[Pooling(8, pooling_mode="mean")])
    mnrl = []
    for batch, dim, negatives, scale in [(5, 8, 0, 20.0), (4, 6, 2, 20.0), (6, 8, 1, 7.5)]:
        anchors = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
        docs = [torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
                for _ in range(1 + negatives)]
        with torch.no_grad():  # a positive close to its anchor, as after some training
            docs[0] += 0.8 * anchors
        loss = MultipleNegativesRankingLoss(model, scale=scale).compute_loss_from_embeddings(
            [anchors] + docs, torch.arange(batch))
        loss.backward()
        mnrl.append({"scale": scale, "anchors": rows(anchors),
                     "candidates": sum((rows(d) for d in docs), []), "loss": loss.item(),
                     "d_anchors": rows(anchors.grad),
                     "d_candidates": sum((rows(d.grad) for d in docs), [])})
    cosine = []
    for batch, dim in [(5, 8), (3, 4)]:
        u = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
        v = torch.randn(batch, dim, dtype=torch.float64, requires_grad=True)
        labels = torch.rand(batch, dtype=torch.float64)
        loss = CosineSimilarityLoss(model).compute_loss_from_embeddings([u, v], labels)
        loss.backward()
        cosine.append({"u": rows(u), "v": rows(v), "labels": labels.tolist(), "loss": loss.item(),
                       "d_u": rows(u.grad), "d_v": rows(v.grad)})
    OUT.write_text(json.dumps({"mnrl": mnrl, "cosine": cosine}) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
