#!/usr/bin/env python3
"""Entities of Transformers' token-classification pipeline (aggregation_strategy "first": a
word takes its first piece's label and score; neighbouring words of one type join into an
entity scored by their mean) from the small BertForTokenClassification of
tests/reference/fixtures/hf_heads/token, for serve::token_tagger's test (tests/test_hf_heads.cpp).

Writes tests/reference/fixtures/hf_heads/token_entities.json:
  [{"text": ..., "entities": [{"entity_group", "score", "word", "start", "end"}...]}...]
(the random model tags many words: every entity type and boundary case occurs).

Usage: python3 tests/reference/ner_pipeline.py   (needs torch, transformers)
"""
import json
import pathlib

from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

DIR = pathlib.Path(__file__).resolve().parent / "fixtures" / "hf_heads"
TEXTS = ["John lives in Paris.", "The café was great, wasn't it?", "Hello worlds!",
         "where is berlin near the river ? john lives near paris", "  is  ", "Berlin"]


def main():
    model = AutoModelForTokenClassification.from_pretrained(DIR / "token").eval()
    tok = AutoTokenizer.from_pretrained(DIR / "token")
    ner = pipeline("token-classification", model=model, tokenizer=tok,
                   aggregation_strategy="first", device="cpu")
    out = []
    for text in TEXTS:
        entities = [{"entity_group": e["entity_group"], "score": float(e["score"]),
                     "word": e["word"], "start": int(e["start"]), "end": int(e["end"])}
                    for e in ner(text)]
        out.append({"text": text, "entities": entities})
    (DIR / "token_entities.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    for o in out:
        print(o["text"], [(e["entity_group"], e["start"], e["end"]) for e in o["entities"]])


if __name__ == "__main__":
    main()
