"""Rotary position embeddings as Transformers' Llama applies them (LlamaRotaryEmbedding +
apply_rotary_pos_emb, rotate_half pairing), for tests/test_primitives.cpp.

Writes tests/reference/fixtures/rope.safetensors: q (rows = 7 positions, 3 heads x 16) before and
after the rotation in float32 (Transformers' code: float32 angles) and float64 (angles in float64,
hf_float64.py), the positions, and rope_theta = 100000 (SmolLM2's).

    /tmp/ref/bin/python tests/reference/rope_parity.py
"""
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

import hf_float64

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "rope.safetensors")


def main():
    hf_float64.patch()  # float64: angles in float64 (float32: Transformers' own float32 angles)
    heads, d = 3, 16
    cfg = LlamaConfig(hidden_size=heads * d, num_attention_heads=heads, rope_theta=100000.0,
                      max_position_embeddings=8192)
    positions = torch.tensor([[0, 1, 2, 5, 100, 4095, 8191]])
    g = torch.Generator().manual_seed(7)
    out = {"positions": positions[0].to(torch.int32)}
    for dtype, name in [(torch.float32, "f32"), (torch.float64, "f64")]:
        rope = LlamaRotaryEmbedding(cfg).to(dtype)
        q = torch.randn(1, heads, positions.shape[1], d, generator=g, dtype=torch.float64).to(dtype)
        cos, sin = rope(q, positions)
        q_rot, _ = apply_rotary_pos_emb(q, q, cos, sin)
        # as ftune lays it out: (rows, heads * d)
        out[f"q_{name}"] = q[0].transpose(0, 1).reshape(positions.shape[1], heads * d).contiguous()
        out[f"rotated_{name}"] = (
            q_rot[0].transpose(0, 1).reshape(positions.shape[1], heads * d).contiguous())
    save_file(out, OUT, metadata={"torch": torch.__version__,
                                  "transformers": transformers.__version__,
                                  "rope_theta": "100000"})
    print(OUT)


if __name__ == "__main__":
    main()
