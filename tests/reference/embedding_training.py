#!/usr/bin/env python3
"""One step of sentence-embedding fine-tuning by sentence-transformers on the small random model of
tests/reference/sentence_embeddings.py (fixtures/sentence/model: BertModel, mean pooling,
Normalize), for tests/test_embedding_training.cpp: the loss and the gradient of every encoder
weight for a batch of (anchor, positive) pairs and of (anchor, positive, hard negative)
triplets under MultipleNegativesRankingLoss, and of scored pairs under CosineSimilarityLoss, in
eval mode (no dropout: ftune's and torch's dropout masks differ), each text column encoded as
sentence-transformers encodes it (its own padded forward, max_seq_length 12).

Writes tests/reference/fixtures/embedding_training.safetensors: for each case ("pairs",
"triplets": (anchor, positive, negative), "scored"), "<case>.loss" (1) and "<case>.<HF name>" the
gradient of each encoder weight (float32); the texts and scores are the ANCHORS, POSITIVES,
NEGATIVES and SCORES below, which the test repeats.

Usage: /tmp/ref/bin/python tests/reference/embedding_training.py   (needs sentence-transformers)
"""
import pathlib

import torch
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import (CosineSimilarityLoss,
                                                               MultipleNegativesRankingLoss)

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
OUT = FIXTURES / "embedding_training.safetensors"

ANCHORS = ["the cat sat on the mat", "a dog runs", "john lives in berlin", "where is the river ?",
           "great film", "the plot is thin and the jokes fall flat"]
POSITIVES = ["a cat on a mat", "the dog is running", "john's home is berlin", "find the river",
             "a great movie", "thin plot , flat jokes"]
SCORES = [0.9, 0.2, 0.7, 0.0, 1.0, 0.4]
NEGATIVES = ["the mat", "a cat runs", "berlin is big", "the river is cold", "a bad film",
             "the jokes were great"]


def step(model, loss, columns, labels, name, tensors):
    """The loss and every encoder gradient of one batch, into tensors["<name>.<HF name>"]."""
    model.zero_grad()
    features = [model.preprocess(c) for c in columns]
    value = loss(features, labels)
    value.backward()
    for param, p in model[0].auto_model.named_parameters():
        if p.grad is not None:
            tensors[f"{name}.{param}"] = p.grad.detach().to(torch.float32).contiguous()
    tensors[f"{name}.loss"] = torch.tensor([value.item()], dtype=torch.float32)


def main():
    torch.manual_seed(0)
    model = SentenceTransformer(str(FIXTURES / "sentence" / "model"), device="cpu")
    model.eval()  # no dropout
    tensors = {}
    mnrl = MultipleNegativesRankingLoss(model)
    step(model, mnrl, [ANCHORS, POSITIVES], torch.zeros(len(ANCHORS)), "pairs", tensors)
    step(model, mnrl, [ANCHORS[:4], POSITIVES[:4], NEGATIVES[:4]], torch.zeros(4), "triplets",
         tensors)
    step(model, CosineSimilarityLoss(model), [ANCHORS, POSITIVES], torch.tensor(SCORES),
         "scored", tensors)
    save_file(tensors, str(OUT))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
