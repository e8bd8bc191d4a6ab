#!/usr/bin/env python3
"""Question-answering windows and span decoding by Transformers, for ftune's parity test
(tests/test_hf_heads.cpp): ftune::qa::encode_windows against the fast tokenizer's overflowing
windows (truncation="only_second", stride), and ftune::qa::best_answers against the
question-answering pipeline's select_starts_ends / decode_spans (Transformers 5 keeps them in
pipelines/document_question_answering.py), run on the logits of the fixture
BertForQuestionAnswering (tests/reference/fixtures/hf_heads/qa).

Writes tests/reference/fixtures/qa_answers.json: per case the question, context, window options,
each window's ids, and the top answers (character offsets, text, score) over all windows; and
tests/reference/fixtures/qa_training.json: SQuAD-style examples (one answer per question), the
start/end token labels run_qa's preprocessing gives their windows, and BertForQuestionAnswering's
loss on them (eval mode, one padded batch) for ftune::train::encode_qa and the trainer's QA loss.

Usage: python3 tests/reference/qa_parity.py   (after hf_heads.py; needs torch, transformers)
"""
import json
import pathlib

import numpy as np
import torch
from transformers import AutoTokenizer, BertForQuestionAnswering
from transformers.pipelines.document_question_answering import select_starts_ends

HERE = pathlib.Path(__file__).resolve().parent
MODEL = HERE / "fixtures" / "hf_heads" / "qa"
OUT = HERE / "fixtures" / "qa_answers.json"
OUT_TRAINING = HERE / "fixtures" / "qa_training.json"
# question, context, answer text, answer_start (characters); windows of 24 tokens, stride 6
TRAINING = [
    ("Who lives in Paris?", "John lives in Paris.", "John", 0),
    ("Where is the café?", "The café is in Berlin, near the rivers.", "Berlin", 15),
    ("Where does John live?", "John lives in Paris. The cafe is in Berlin, near the river. "
     "Hello worlds, the river is great.", "the river", 49),
]


def run_qa_labels(enc, w, start_char, end_char):
    """Transformers' examples/pytorch/question-answering/run_qa.py prepare_train_features."""
    offsets = enc["offset_mapping"][w].tolist()
    seq = enc.sequence_ids(w)
    ctx_start = seq.index(1)
    ctx_end = len(seq) - 1 - seq[::-1].index(1)
    if not (offsets[ctx_start][0] <= start_char and offsets[ctx_end][1] >= end_char):
        return 0, 0
    i, j = ctx_start, ctx_end
    while i <= ctx_end and offsets[i][0] <= start_char:
        i += 1
    while offsets[j][1] >= end_char:
        j -= 1
    return i - 1, j + 1


def training(tok, model):
    out = []
    for question, context, text, start in TRAINING:
        assert context[start:start + len(text)] == text
        enc = tok(question, context, truncation="only_second", max_length=24, stride=6,
                  return_overflowing_tokens=True, return_offsets_mapping=True, padding=True,
                  return_tensors="pt")
        labels = [run_qa_labels(enc, w, start, start + len(text))
                  for w in range(enc["input_ids"].shape[0])]
        with torch.no_grad():
            loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         token_type_ids=enc["token_type_ids"],
                         start_positions=torch.tensor([l[0] for l in labels]),
                         end_positions=torch.tensor([l[1] for l in labels])).loss
        out.append({"question": question, "context": context, "answer": text,
                    "answer_start": start, "labels": labels, "loss": float(loss),
                    "padded_length": int(enc["input_ids"].shape[1])})
    OUT_TRAINING.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")

LONG = ("John lives in Paris near the river. The cafe is in Berlin. Who lives near the cafe? "
        "Hello worlds, the river is great. John is in Berlin, wasn't he? ") * 3
CASES = [
    # question, context, max_length, stride, top_k, max_answer_len, handle_impossible_answer
    ("Who lives in Paris?", "John lives in Paris.", 32, 8, 3, 15, False),
    ("Where is the café?", "The café is in Berlin, near the rivers.", 32, 8, 5, 3, False),
    ("Where is the cafe?", LONG, 32, 8, 4, 15, False),
    ("Who lives near the river?", LONG, 28, 10, 3, 5, True),
    ("Is it great?", "Hello worlds!", 32, 8, 3, 15, True),
]


def main():
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = BertForQuestionAnswering.from_pretrained(MODEL).eval()
    cases = []
    for question, context, max_length, stride, top_k, max_len, impossible in CASES:
        enc = tok(question, context, truncation="only_second", max_length=max_length,
                  stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                  padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        token_type_ids=enc["token_type_ids"])
        answers, min_null = [], 1000000
        for w in range(enc["input_ids"].shape[0]):
            seq = enc.sequence_ids(w)
            p_mask = np.array([s != 1 for s in seq], dtype=np.int64)
            p_mask[0] = 0  # [CLS], as the pipeline
            starts, ends, scores, min_null = select_starts_ends(
                out.start_logits[w:w + 1].numpy().astype(np.float64),
                out.end_logits[w:w + 1].numpy().astype(np.float64), p_mask,
                enc["attention_mask"][w:w + 1].numpy(), min_null, top_k, impossible, max_len)
            offsets = enc["offset_mapping"][w].tolist()
            for s, e, sc in zip(starts, ends, scores):
                b, f = offsets[int(s)][0], offsets[int(e)][1]
                answers.append({"score": float(sc), "start": b, "end": f, "answer": context[b:f]})
        if impossible:
            answers.append({"score": float(min_null), "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda a: -a["score"])[:top_k]
        windows = [[i for i, m in zip(ids, mask) if m]
                   for ids, mask in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist())]
        cases.append({"question": question, "context": context, "max_length": max_length,
                      "doc_stride": stride, "top_k": top_k, "max_answer_length": max_len,
                      "handle_impossible_answer": impossible, "windows": windows,
                      "answers": answers})
    OUT.write_text(json.dumps(cases, indent=1, ensure_ascii=False) + "\n")
    training(tok, model)
    print(OUT, sum(len(c["windows"]) for c in cases), "windows")


if __name__ == "__main__":
    main()
