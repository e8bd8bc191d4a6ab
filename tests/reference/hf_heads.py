#!/usr/bin/env python3
"""Small random Hugging Face task models saved with save_pretrained(safe_serialization=True),
with their tokenizer and their logits on a few texts (a padded batch), for ftune's task-model
parity test (tests/test_hf_heads.cpp), and the check that models saved by ftune load back into
Transformers with the same logits.

Writes tests/reference/fixtures/hf_heads/:
  seq/    BertForSequenceClassification (3 labels, hidden_act gelu)
  token/  BertForTokenClassification    (5 BIO labels, gelu_new)
  qa/     BertForQuestionAnswering      (relu)
  mlm/    BertForMaskedLM               (gelu, decoder tied to the word embeddings)
  texts.json         the texts and the question/context pairs
  expected.safetensors
      single_{input_ids,attention_mask,token_type_ids}  (3, T) the texts, padded
      pair_{input_ids,attention_mask,token_type_ids}    (2, T) the pairs, padded
      seq_logits (3, 3), token_logits (3, T, 5), mlm_logits (3, T, V) on the texts;
      qa_start_logits, qa_end_logits (2, T) on the pairs

Usage:
  python3 tests/reference/hf_heads.py                  regenerate the fixtures
  python3 tests/reference/hf_heads.py --roundtrip DIR  load the models ftune saved in DIR/{seq,
      token,qa,mlm} (ctest writes them to build/tests/hf_roundtrip) with Transformers'
      from_pretrained and AutoTokenizer, and compare their logits with the fixtures
(needs torch, transformers, safetensors)
"""
import argparse
import json
import pathlib
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoTokenizer, BertConfig, BertForMaskedLM, BertForQuestionAnswering,
                          BertForSequenceClassification, BertForTokenClassification,
                          BertTokenizer)

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "hf_heads"

TEXTS = ["John lives in Paris.", "The café was great, wasn't it?", "Hello worlds!"]
PAIRS = [["Who lives in Paris?", "John lives in Paris."],
         ["Where is the café?", "The café is in Berlin, near the rivers."]]
WORDS = ("john lives in paris the cafe was great wasn t it hello world who where is berlin near "
         "river").split()
PIECES = ["##s", "##e", "##in", "##is", "liv", "riv"]

MODELS = {
    "seq": (BertForSequenceClassification, "gelu",
            {"id2label": {0: "negative", 1: "neutral", 2: "positive"}}),
    "token": (BertForTokenClassification, "gelu_new",
              {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}}),
    "qa": (BertForQuestionAnswering, "relu", {}),
    "mlm": (BertForMaskedLM, "gelu", {}),
}


def encode(tok, texts, pairs=None):
    if pairs is None:
        return tok(texts, padding=True, return_tensors="pt")
    return tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True, return_tensors="pt")


def logits_of(name, model, single, pair):
    with torch.no_grad():
        if name == "qa":
            out = model(**pair)
            return {"qa_start_logits": out.start_logits, "qa_end_logits": out.end_logits}
        return {f"{name}_logits": model(**single).logits}


def generate():
    OUT.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,!?'") + WORDS + PIECES
    vocab_file = OUT / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    # Transformers 5 ignores vocab_file= (an empty vocabulary); vocab= takes the path
    tok = BertTokenizer(vocab=str(vocab_file), do_lower_case=True, model_max_length=32)
    assert len(tok) == len(vocab), "the tokenizer did not read the vocabulary"
    single, pair = encode(tok, TEXTS), encode(tok, None, PAIRS)
    expected = {}
    for k, v in single.items():
        expected["single_" + k] = v.int()
    for k, v in pair.items():
        expected["pair_" + k] = v.int()
    for i, (name, (cls, act, extra)) in enumerate(MODELS.items()):
        torch.manual_seed(11 + i)
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=37, max_position_embeddings=32,
                         type_vocab_size=2, hidden_act=act, initializer_range=0.2, **extra)
        model = cls(cfg).eval()
        with torch.no_grad():  # LayerNorm and biases away from 1 / 0 so that loading them matters
            for pname, p in model.named_parameters():
                if "LayerNorm" in pname or pname.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
        model.save_pretrained(OUT / name, safe_serialization=True)
        tok.save_pretrained(OUT / name)
        for k, v in logits_of(name, model, single, pair).items():
            expected[k] = v.float().contiguous()
    vocab_file.unlink()
    save_file(expected, str(OUT / "expected.safetensors"))
    (OUT / "texts.json").write_text(json.dumps({"texts": TEXTS, "pairs": PAIRS}, indent=1,
                                               ensure_ascii=False) + "\n")


def roundtrip(saved_dir):
    saved_dir = pathlib.Path(saved_dir)
    expected = load_file(str(OUT / "expected.safetensors"))
    worst = 0.0
    for name, (cls, _, _) in MODELS.items():
        model, info = cls.from_pretrained(saved_dir / name, output_loading_info=True)
        model.eval()
        problems = {k: v for k, v in info.items() if v}
        assert not problems, f"{name}: Transformers reports {problems}"
        tok = AutoTokenizer.from_pretrained(saved_dir / name)
        single, pair = encode(tok, TEXTS), encode(tok, None, PAIRS)
        assert torch.equal(single["input_ids"].int(), expected["single_input_ids"]), name
        assert torch.equal(pair["input_ids"].int(), expected["pair_input_ids"]), name
        assert torch.equal(pair["token_type_ids"].int(), expected["pair_token_type_ids"]), name
        for k, v in logits_of(name, model, single, pair).items():
            d = (v - expected[k]).abs().max().item()
            print(f"{name}: {type(model).__name__} {k} max |diff| {d:.3g}")
            worst = max(worst, d)
    print(f"largest difference {worst:.3g}")
    return 0 if worst <= 1e-5 else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--roundtrip", metavar="DIR")
    args = ap.parse_args()
    sys.exit(roundtrip(args.roundtrip) if args.roundtrip else generate())
