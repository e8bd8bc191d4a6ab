"""Greedy generation by Transformers' generate on the random tiny LlamaForCausalLM models of
llama_heads.py (tests/reference/fixtures/hf_llama/{tied,untied}), for tests/test_generation.cpp:
one prompt alone, two prompts of different lengths in one left-padded batch, and one with a
repetition penalty. Writes tests/reference/fixtures/hf_llama/generate.json, and for the
command-line test (tools/CMakeLists.txt: `ftune generate` on the untied model) a tokenizer of
the model's 48 ids, one letter each and "</s>" (id 2) as eos, the first prompt as text and
Transformers' greedy continuation of it as text: fixtures/hf_llama/cli/.

    /tmp/ref/bin/python tests/reference/llama_generate.py
"""
import json
import os

import torch
import transformers
from transformers import LlamaForCausalLM

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "hf_llama")
PROMPTS = [[1, 17, 8, 25, 3, 39, 12, 40], [1, 9, 30]]
NEW = 20


def greedy(model, prompts, **kw):
    """Greedy continuations of prompts, left-padded with 0 into one batch; eos (2) stops."""
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                         eos_token_id=2, pad_token_id=0, **kw)
    rows = []
    for r in out[:, L:].tolist():
        rows.append(r[:r.index(2)] if 2 in r else r)  # the stop token and padding after it
    return rows


def main():
    out = {"transformers": transformers.__version__, "prompts": PROMPTS, "max_new_tokens": NEW}
    for name in ["tied", "untied"]:
        model = LlamaForCausalLM.from_pretrained(os.path.join(HERE, name)).eval()
        out[name] = {
            "alone": [greedy(model, [p])[0] for p in PROMPTS],
            "batch": greedy(model, PROMPTS),
            "penalty": greedy(model, [PROMPTS[0]], repetition_penalty=1.5)[0],
        }
    with open(os.path.join(HERE, "generate.json"), "w") as f:
        json.dump(out, f, indent=1)
    # the command-line test's tokenizer: id i is letter i, except 2, the eos token "</s>"
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuv"
    text = lambda ids: "".join(letters[i] for i in ids)
    vocab = {letters[i]: i for i in range(48) if i != 2}
    vocab["</s>"] = 2
    cli = os.path.join(HERE, "cli")
    os.makedirs(cli, exist_ok=True)
    with open(os.path.join(cli, "tokenizer.json"), "w") as f:
        json.dump({"version": "1.0", "added_tokens": [
            {"id": 2, "content": "</s>", "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                              "trim_offsets": True, "use_regex": True},
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": []}}, f)
    with open(os.path.join(cli, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "</s>", "pad_token": "</s>"}, f)
    with open(os.path.join(cli, "prompt.txt"), "w") as f:
        f.write(text(PROMPTS[0]))
    with open(os.path.join(cli, "expected.txt"), "w") as f:
        f.write(text(out["untied"]["alone"][0]) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
