"""A tiny random Llama chat model as a GGUF file, for running examples/support_assistant.cpp
(and anything else that needs a chat model that reads any text) in CI without a download: a
byte-level BPE vocabulary of the 256 byte symbols (GPT-2's byte-to-unicode alphabet, no merges)
plus the ChatML control tokens <|im_start|> and <|im_end|> (eos), a ChatML chat template, and
random float32 weights.

Writes tests/reference/fixtures/gguf/tiny_chat.gguf.

    /tmp/ref/bin/pip install gguf torch transformers
    /tmp/ref/bin/python tests/reference/tiny_chat_gguf.py
"""
import os

import numpy as np
from gguf import GGUFWriter

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "gguf")
TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
            "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def byte_symbols():
    """GPT-2's printable stand-in for each byte (bytes_to_unicode), in byte order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def main():
    rng = np.random.default_rng(5)
    tokens = byte_symbols() + ["<|im_start|>", "<|im_end|>"]
    types = [1] * 256 + [3, 3]
    V, C, F, L, H, KV = len(tokens), 32, 64, 1, 2, 1
    d = C // H
    path = os.path.join(OUT, "tiny_chat.gguf")
    w = GGUFWriter(path, arch="llama")
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(C)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_dimension_count(d)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([])
    w.add_bos_token_id(V - 2)
    w.add_eos_token_id(V - 1)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)

    def normal(*shape, mean=0.0, std=0.1):
        return (mean + std * rng.standard_normal(shape)).astype(np.float32)

    w.add_tensor("token_embd.weight", normal(V, C))
    w.add_tensor("output_norm.weight", normal(C, mean=1.0))
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", normal(C, mean=1.0))
        w.add_tensor(f"blk.{i}.attn_q.weight", normal(H * d, C))
        w.add_tensor(f"blk.{i}.attn_k.weight", normal(KV * d, C))
        w.add_tensor(f"blk.{i}.attn_v.weight", normal(KV * d, C))
        w.add_tensor(f"blk.{i}.attn_output.weight", normal(C, H * d))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", normal(C, mean=1.0))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", normal(F, C))
        w.add_tensor(f"blk.{i}.ffn_up.weight", normal(F, C))
        w.add_tensor(f"blk.{i}.ffn_down.weight", normal(C, F))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
