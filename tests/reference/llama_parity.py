"""A random tiny Hugging Face LlamaModel (grouped-query attention, rotary positions, RMSNorm,
SwiGLU): its parameters, a padded batch, last_hidden_state, and the gradient of sum(h * R) for a
fixed R, for every parameter, computed in float64 with eager attention (RMSNorm and the rotary
angles kept in float64: hf_float64.py). For
tests/test_blocks.cpp's decoder parity test.

Writes tests/reference/fixtures/llama_parity.safetensors (float64; ids and mask as int32).

    /tmp/ref/bin/python tests/reference/llama_parity.py
"""
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaModel

import hf_float64

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "llama_parity.safetensors")


def main():
    hf_float64.patch()
    torch.manual_seed(11)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                      rope_theta=500.0, max_position_embeddings=64, attention_bias=False,
                      mlp_bias=False, hidden_act="silu", attn_implementation="eager")
    model = LlamaModel(cfg).to(torch.float64)
    with torch.no_grad():  # weights larger than the default init, so that every path matters
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
            else:
                p.normal_(1.0, 0.2)
    ids = torch.tensor([[3, 17, 8, 25, 1, 39, 12], [5, 9, 30, 2, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]])
    h = model(input_ids=ids, attention_mask=mask).last_hidden_state
    r = torch.randn(h.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    (h * r).sum().backward()
    out = {"input_ids": ids.to(torch.int32), "attention_mask": mask.to(torch.int32),
           "hidden": h.detach(), "r": r}
    for name, p in model.named_parameters():
        out["param." + name] = p.detach().clone()
        out["grad." + name] = p.grad.detach().clone()
    save_file(out, OUT, metadata={"torch": torch.__version__,
                                  "transformers": transformers.__version__,
                                  "config": cfg.to_json_string(use_diff=False)})
    print(OUT, len(out), "tensors")


if __name__ == "__main__":
    main()
