#!/usr/bin/env python3
"""Reference values for ftune's BERT parity test (tests/test_parity.cpp), from Hugging Face
Transformers on PyTorch.

Builds a small random BertModel (hidden 64, 2 layers, 4 heads, FFN 128, GELU, dropout off),
runs a padded batch of 3 sequences (lengths 9, 5, 2; token types 0/1), and a scalar loss
L = sum(last_hidden_state * Wh) + sum(pooler_output * Wp) with fixed random Wh, Wp. Writes
tests/reference/fixtures/bert_parity.safetensors with:
  param/<name>      every parameter, float32 (the model computes with exactly these values)
  grad/<name>       dL/d parameter, computed in float64, stored float32
  input_ids, attention_mask, token_type_ids   int32 (3, 9)
  loss_weight_hidden (3, 9, 64), loss_weight_pooled (3, 64)
  last_hidden_state (3, 9, 64), pooler_output (3, 64)   float64 results stored float32
  grad_pooled/<name>  d sum(pooler_output * Wp) / d parameter: the gradient of a loss that reads
                    position 0 only, which ftune computes with the last layer for position 0
                    alone (float64, stored float32)
and the config plus library versions in __metadata__.

Usage: python3 tests/reference/bert_parity.py   (needs torch, transformers, safetensors)
"""
import json
import pathlib

import torch
import transformers
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "bert_parity.safetensors"

CONFIG = dict(vocab_size=30, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=128, hidden_act="gelu", hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, max_position_embeddings=16, type_vocab_size=2,
              layer_norm_eps=1e-12)


def main():
    g = torch.Generator().manual_seed(20261128)
    config = BertConfig(**CONFIG, attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=True)
    # random parameters of a useful scale (HF's 0.02 init makes every layer nearly linear);
    # LayerNorm weights around 1. Rounded to float32 so both sides use exactly these values.
    params = {}
    for name, p in model.named_parameters():
        if name.endswith("LayerNorm.weight"):
            v = 1.0 + 0.2 * torch.randn(p.shape, generator=g)
        else:
            v = 0.15 * torch.randn(p.shape, generator=g)
        params[name] = v.float()
    model = model.double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name].double())
    model.train()  # dropout probabilities are 0: training mode changes nothing but is the path

    B, T = 3, 9
    lengths = [9, 5, 2]
    ids = torch.randint(1, CONFIG["vocab_size"], (B, T), generator=g, dtype=torch.int64)
    mask = torch.zeros(B, T, dtype=torch.int64)
    types = torch.zeros(B, T, dtype=torch.int64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = 0  # [PAD]
        types[b, n // 2:n] = 1  # a second segment
    # loss weights drawn in float32 (stored exactly) and used in float64
    wh = torch.randn(B, T, CONFIG["hidden_size"], generator=g).double()
    wp = torch.randn(B, CONFIG["hidden_size"], generator=g).double()

    out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    loss = (out.last_hidden_state * wh).sum() + (out.pooler_output * wp).sum()
    loss.backward()

    grads = {name: p.grad.float().contiguous() for name, p in model.named_parameters()}
    # the pooled output alone: a loss of position 0 (a [CLS] classifier's)
    model.zero_grad(set_to_none=True)
    pooled = model(input_ids=ids, attention_mask=mask, token_type_ids=types).pooler_output
    (pooled * wp).sum().backward()

    tensors = {}
    for name, p in model.named_parameters():
        tensors["param/" + name] = params[name].contiguous()
        tensors["grad/" + name] = grads[name]
        tensors["grad_pooled/" + name] = (p.grad if p.grad is not None
                                          else torch.zeros_like(p)).float().contiguous()
    tensors["input_ids"] = ids.int()
    tensors["attention_mask"] = mask.int()
    tensors["token_type_ids"] = types.int()
    tensors["loss_weight_hidden"] = wh.float()
    tensors["loss_weight_pooled"] = wp.float()
    tensors["last_hidden_state"] = out.last_hidden_state.detach().float()
    tensors["pooler_output"] = out.pooler_output.detach().float()
    meta = {"config": json.dumps(CONFIG), "torch": torch.__version__,
            "transformers": transformers.__version__, "loss": f"{loss.item():.17g}"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT), metadata=meta)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes), loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
