"""A tiny Llama model as a GGUF file, laid out as llama.cpp's convert_hf_to_gguf.py writes it
(llama.cpp's tensor names; q_proj and k_proj rows permuted into llama.cpp's rotary layout;
F32 and Q8_0 tensors), checked by loading it back with Transformers (from_pretrained with
gguf_file=..., which undoes the permutation), and the hidden states Transformers computes from
it. For tests/test_gguf.cpp.

Writes tests/reference/fixtures/gguf/tiny_llama.gguf and tiny_llama_expected.safetensors.

    /tmp/ref/bin/pip install gguf torch transformers
    /tmp/ref/bin/python tests/reference/llama_gguf.py
"""
import os
import tempfile

import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, quants
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "gguf")


def permute(w, n_head):
    """llama.cpp's layout of a rotary projection: in each head, row j*d/2 + i moves to 2i + j."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def main():
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                      rope_theta=10000.0, max_position_embeddings=128, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0 if p.dim() == 2 else 1.0, 0.1)
    path = os.path.join(OUT, "tiny_llama.gguf")
    w = GGUFWriter(path, arch="llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(7)  # mostly Q8_0
    # a minimal byte-level BPE vocabulary, so that readers which want a tokenizer find one
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    w.add_token_types([1] * cfg.vocab_size)
    w.add_token_merges(["t 1"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
             "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, p in model.model.named_parameters():
        v = p.detach().numpy().astype(np.float32)
        if name == "embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "norm.weight":
            gname = "output_norm.weight"
        else:
            layer, rest = name.split(".", 2)[1:]
            key = rest.rsplit(".", 1)[0]
            gname = f"blk.{layer}.{names[key]}.weight"
            if key == "self_attn.q_proj":
                v = permute(v, cfg.num_attention_heads)
            elif key == "self_attn.k_proj":
                v = permute(v, cfg.num_key_value_heads)
        if v.ndim == 2 and v.shape[1] % 32 == 0:  # matrices as Q8_0, as llama.cpp's q8_0 files
            raw = quants.quantize(v, Q.Q8_0)
            w.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=Q.Q8_0)
        else:
            w.add_tensor(gname, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Transformers reads the file back (dequantized, rows un-permuted): its hidden states
    back = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="tiny_llama.gguf",
                                                dtype=torch.float32).eval()
    q0 = back.model.layers[0].self_attn.q_proj.weight.detach()
    orig = model.model.layers[0].self_attn.q_proj.weight.detach()
    assert (q0 - orig).abs().max() < 0.01, "the permutation does not round-trip"
    ids = torch.tensor([[1, 5, 9, 33, 60, 2, 17, 40], [1, 7, 7, 8, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        out = back(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    save_file({"input_ids": ids.to(torch.int32), "attention_mask": mask.to(torch.int32),
               "hidden": out.hidden_states[-1].contiguous(), "logits": out.logits.contiguous()},
              os.path.join(OUT, "tiny_llama_expected.safetensors"),
              metadata={"torch": torch.__version__, "transformers": transformers.__version__})
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
