"""Random tiny LlamaForCausalLM models (grouped-query attention; LM head tied and untied) saved
by Transformers' save_pretrained, with their logits on a padded batch and the gradient of
sum(logits * R) for a fixed R, for every parameter, in float32 with Transformers' own code (sdpa
attention, float32 RMSNorm and rotary angles). For tests/test_hf_llama.cpp.

Writes tests/reference/fixtures/hf_llama/{tied,untied}/ (config.json, model.safetensors) and
tests/reference/fixtures/hf_llama/expected.safetensors.

    /tmp/ref/bin/python tests/reference/llama_heads.py
    /tmp/ref/bin/python tests/reference/llama_heads.py --roundtrip DIR   # DIR/{tied,untied} as
        ftune saved them: Transformers loads them and must give the same logits
    /tmp/ref/bin/python tests/reference/llama_heads.py --tokenizer DIR   # a directory whose
        tokenizer ftune saved (build/tests/hf_llama_tokenizer_saved, by test_hf_llama): Transformers'
        AutoTokenizer loads it with its special tokens and chat template
"""
import argparse
import os

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "hf_llama")
IDS = torch.tensor([[1, 17, 8, 25, 3, 39, 12, 40], [1, 9, 30, 2, 0, 0, 0, 0]])
MASK = torch.tensor([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]])


def make(tied, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                      rope_theta=10000.0, max_position_embeddings=64, tie_word_embeddings=tied,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0 if p.dim() == 2 else 1.0, 0.15)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--roundtrip")
    ap.add_argument("--tokenizer")
    a = ap.parse_args()
    if a.tokenizer:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(a.tokenizer)
        ids = tok("<s>abba</s>ab", add_special_tokens=False)["input_ids"]
        print(f"Transformers loads ftune's tokenizer: ids {ids}, bos {tok.bos_token}, "
              f"eos {tok.eos_token}, pad {tok.pad_token}, chat template {tok.chat_template!r}")
        assert ids == [1, 5, 4, 3, 2, 5]
        assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
        assert tok.chat_template == "{{ old }}"
        return
    if a.roundtrip:
        want = load_file(os.path.join(OUT, "expected.safetensors"))
        for name in ["tied", "untied"]:
            m = LlamaForCausalLM.from_pretrained(os.path.join(a.roundtrip, name)).eval()
            with torch.no_grad():
                logits = m(input_ids=IDS, attention_mask=MASK).logits
            diff = (logits - want[f"{name}.logits"]).abs().max().item()
            print(f"{name}: Transformers loads ftune's directory; max |logit diff| {diff:.3g}")
            assert diff < 1e-5
        return
    out = {"input_ids": IDS.to(torch.int32), "attention_mask": MASK.to(torch.int32)}
    for name, tied, seed in [("tied", True, 1), ("untied", False, 2)]:
        model = make(tied, seed)
        model.save_pretrained(os.path.join(OUT, name))
        logits = model(input_ids=IDS, attention_mask=MASK).logits
        r = torch.randn(logits.shape, generator=torch.Generator().manual_seed(seed))
        (logits * r).sum().backward()
        out[f"{name}.logits"] = logits.detach().contiguous()
        out[f"{name}.r"] = r
        for pname, p in model.named_parameters():
            if p.grad is not None:
                out[f"{name}.grad.{pname}"] = p.grad.detach().clone()
    save_file(out, os.path.join(OUT, "expected.safetensors"),
              metadata={"torch": torch.__version__, "transformers": transformers.__version__})
    print(OUT)


if __name__ == "__main__":
    main()
