#!/usr/bin/env python3
"""A small random sentence-transformers model (BertModel + Pooling + Normalize, saved by
SentenceTransformer.save) and its embeddings of a few texts, for ftune's sentence-embedding
parity test (tests/test_embeddings.cpp): every pooling mode of sentence-transformers' Pooling
module, alone and concatenated, on the same encoder outputs, and encode() of the saved model
(mean pooling, normalized, inputs cut to max_seq_length 12).

Writes tests/reference/fixtures/sentence/:
  model/                   the saved model (modules.json, 1_Pooling/, 2_Normalize/,
                           sentence_bert_config.json, config.json, model.safetensors, tokenizer)
  texts.json               the texts
  expected.safetensors     encode (N, 32): the saved model's encode();
                           <mode> (N, 32) for each pooling mode, not normalized;
                           cls+mean (N, 64): the two concatenated

Usage: python3 tests/reference/sentence_embeddings.py   (needs torch, transformers,
sentence-transformers, safetensors)
"""
import json
import pathlib
import shutil
import tempfile

import torch
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Normalize, Pooling, Transformer
from transformers import BertConfig, BertModel, BertTokenizer

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "sentence"

TEXTS = ["John lives in Paris.", "The café was great, wasn't it?", "Hello worlds!",
         "where is the river near berlin ? john lives near the river in paris , the cafe is great",
         "is"]
WORDS = ("john lives in paris the cafe was great wasn t it hello world who where is berlin near "
         "river").split()
PIECES = ["##s", "##e", "##in", "##is", "liv", "riv"]
MODES = ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,!?'") + WORDS + PIECES
        vocab_file = pathlib.Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n")
        tok = BertTokenizer(vocab=str(vocab_file), do_lower_case=True, model_max_length=32)
        assert len(tok) == len(vocab), "the tokenizer did not read the vocabulary"
        torch.manual_seed(21)
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=37, max_position_embeddings=32,
                         type_vocab_size=2, hidden_act="gelu", initializer_range=0.2)
        bert = BertModel(cfg).eval()
        with torch.no_grad():  # LayerNorm and biases away from 1 / 0 so that loading them matters
            for name, p in bert.named_parameters():
                if "LayerNorm" in name or name.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
        base = pathlib.Path(tmp) / "base"
        bert.save_pretrained(base, safe_serialization=True)
        tok.save_pretrained(base)
        encoder = Transformer(str(base), max_seq_length=12)
        model = SentenceTransformer(modules=[encoder, Pooling(32, "mean"), Normalize()]).eval()
        model.save(str(OUT / "model"))
        (OUT / "model" / "README.md").unlink()  # the generated model card
        expected = {"encode": torch.tensor(model.encode(TEXTS, batch_size=8))}
        for modes in [[m] for m in MODES] + [["cls", "mean"]]:
            st = SentenceTransformer(modules=[encoder, Pooling(32, tuple(modes))]).eval()
            expected["+".join(modes)] = torch.tensor(st.encode(TEXTS, batch_size=8))
    reloaded = SentenceTransformer(str(OUT / "model"))
    again = torch.tensor(reloaded.encode(TEXTS, batch_size=8))
    assert torch.allclose(again, expected["encode"], atol=1e-6), "the saved model encodes otherwise"
    save_file({k: v.float().contiguous() for k, v in expected.items()},
              str(OUT / "expected.safetensors"))
    (OUT / "texts.json").write_text(json.dumps({"texts": TEXTS}, indent=1, ensure_ascii=False) + "\n")
    for p in sorted(OUT.rglob("*")):
        print(p.relative_to(OUT), p.stat().st_size if p.is_file() else "")


if __name__ == "__main__":
    main()
