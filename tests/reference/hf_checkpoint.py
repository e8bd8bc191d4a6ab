#!/usr/bin/env python3
"""A tiny Hugging Face BertModel saved with save_pretrained(safe_serialization=True), and its
hidden states on a padded batch, for ftune's checkpoint-loading parity test
(tests/test_hf.cpp).

Writes tests/reference/fixtures/hf_tiny_bert/{config.json, model.safetensors} and
tests/reference/fixtures/hf_tiny_bert_expected.safetensors (input_ids, attention_mask,
token_type_ids, last_hidden_state, pooler_output in float32).

Usage: python3 tests/reference/hf_checkpoint.py   (needs torch, transformers, safetensors)
"""
import pathlib

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

OUT = pathlib.Path(__file__).resolve().parent / "fixtures"


def main():
    torch.manual_seed(7)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=24, type_vocab_size=2,
                     hidden_act="gelu", layer_norm_eps=1e-12, initializer_range=0.2)
    model = BertModel(cfg).eval()
    with torch.no_grad():  # LayerNorm parameters away from 1 / 0 so loading them matters
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(OUT / "hf_tiny_bert", safe_serialization=True)
    ids = torch.tensor([[2, 7, 9, 11, 3, 0], [2, 5, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    types = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    save_file({"input_ids": ids.int(), "attention_mask": mask.int(), "token_type_ids": types.int(),
               "last_hidden_state": out.last_hidden_state.float().contiguous(),
               "pooler_output": out.pooler_output.float().contiguous()},
              str(OUT / "hf_tiny_bert_expected.safetensors"))


if __name__ == "__main__":
    main()
