"""A tiny GPT-2 model as a GGUF file, laid out as llama.cpp's convert_hf_to_gguf.py writes GPT-2
(architecture "gpt2"; llama.cpp's tensor names; the Conv1D weights transposed to (out, in), with
c_attn's q, k and v kept fused as attn_qkv; output.weight written as a copy of token_embd, as
llama.cpp does for GPT-2's tied head; F32 and Q8_0 tensors; a byte-level BPE tokenizer trained by
`tokenizers` on SST-2 sentences in the metadata), checked by loading it back with Transformers
(from_pretrained with gguf_file=...), and the logits Transformers computes from the file. For
tests/test_gguf.cpp.

Writes tests/reference/fixtures/gguf/tiny_gpt2.gguf, tiny_gpt2_expected.safetensors, and
tiny_gpt2_prompt.txt with tiny_gpt2_expected.txt (Transformers' greedy continuation of the
prompt, for the CLI test of `ftune generate` on the file).

    /tmp/ref/bin/pip install gguf torch transformers tokenizers
    /tmp/ref/bin/python tests/reference/gpt2_gguf.py
"""
import json
import os

import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, quants
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, "fixtures", "gguf")


def tokenizer_vocab():
    """The GPT-2-configured byte-level BPE tokenizer of the BPE fixtures (bpe_parity.py): its
    tokens in id order and its merges."""
    with open(os.path.join(HERE, "fixtures", "bpe", "gpt2.json"), encoding="utf-8") as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return tokens, merges


def main():
    torch.manual_seed(5)
    tokens, merges = tokenizer_vocab()
    # n_positions 1024 (Transformers maps the file's context_length to n_ctx, not n_positions)
    cfg = GPT2Config(vocab_size=len(tokens), n_embd=32, n_layer=2, n_head=4, n_positions=1024,
                     n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight")
                      or name.endswith("ln_f.weight") else 0.0, 0.1)
    path = os.path.join(OUT, "tiny_gpt2.gguf")
    w = GGUFWriter(path, arch="gpt2")
    w.add_name("tiny-gpt2")
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.n_positions)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(4 * cfg.n_embd)
    w.add_head_count(cfg.n_head)
    w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    w.add_file_type(7)  # mostly Q8_0
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])  # 3: control
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
             "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    tensors = []
    for name, p in model.transformer.named_parameters():
        v = p.detach().numpy().astype(np.float32)
        if name == "wte.weight":
            tensors += [("token_embd.weight", v), ("output.weight", v)]
            continue
        if name == "wpe.weight":
            tensors.append(("position_embd.weight", v))
            continue
        if name.startswith("ln_f."):
            tensors.append(("output_norm." + name.split(".")[1], v))
            continue
        layer, rest = name.split(".", 2)[1:]
        key, kind = rest.rsplit(".", 1)
        if kind == "weight" and key in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            v = np.ascontiguousarray(v.T)  # Conv1D (in, out) -> (out, in), as llama.cpp
        tensors.append((f"blk.{layer}.{names[key]}.{kind}", v))
    for gname, v in tensors:
        if v.ndim == 2 and v.shape[1] % 32 == 0:
            raw = quants.quantize(v, Q.Q8_0)  # matrices as Q8_0
            w.add_tensor(gname, raw, raw_shape=raw.shape, raw_dtype=Q.Q8_0)
        else:
            w.add_tensor(gname, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Transformers reads the file back (dequantized, transposed back): its logits
    back = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="tiny_gpt2.gguf",
                                                dtype=torch.float32).eval()
    assert back.config.model_type == "gpt2"
    c0 = back.transformer.h[0].attn.c_attn.weight.detach()
    orig = model.transformer.h[0].attn.c_attn.weight.detach()
    assert (c0 - orig).abs().max() < 0.01, "the layout does not round-trip"
    ids = torch.tensor([[0, 5, 9, 33, 60, 200, 17, 40], [7, 7, 8, 90, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        out = back(input_ids=ids, attention_mask=mask)
    save_file({"input_ids": ids.to(torch.int32), "attention_mask": mask.to(torch.int32),
               "logits": out.logits.contiguous()},
              os.path.join(OUT, "tiny_gpt2_expected.safetensors"),
              metadata={"torch": torch.__version__, "transformers": transformers.__version__})
    # `ftune generate --model tiny_gpt2.gguf --prompt ... --temperature 0`: Transformers' greedy
    # continuation of the prompt, as text (stopped by eos, id 0, or after 12 new tokens)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(HERE, "fixtures", "bpe", "gpt2.json"))
    prompt = "the movie is a gripping , funny"
    pids = tok.encode(prompt).ids
    with torch.no_grad():
        gen = back.generate(torch.tensor([pids]), max_new_tokens=12, do_sample=False,
                            eos_token_id=0, pad_token_id=0)
    new_ids = gen[0, len(pids):].tolist()
    if 0 in new_ids:
        new_ids = new_ids[:new_ids.index(0)]
    with open(os.path.join(OUT, "tiny_gpt2_prompt.txt"), "w", encoding="utf-8") as f:
        f.write(prompt)
    with open(os.path.join(OUT, "tiny_gpt2_expected.txt"), "w", encoding="utf-8") as f:
        f.write(tok.decode(new_ids, skip_special_tokens=False) + "\n")
    print(path, os.path.getsize(path), "bytes; greedy ids", new_ids)


if __name__ == "__main__":
    main()
