"""Random tiny GPT2LMHeadModel models (LM head tied and untied) saved by Transformers'
save_pretrained, with their logits on a padded batch and the gradient of sum(logits * R) for a
fixed R, for every parameter, in float32 with Transformers' own code (eager attention); and
greedy generation by Transformers' generate (alone, a left-padded batch, a repetition penalty).
For tests/test_hf_gpt2.cpp.

Writes tests/reference/fixtures/hf_gpt2/{tied,untied}/ (config.json, model.safetensors),
tests/reference/fixtures/hf_gpt2/expected.safetensors and generate.json.

    /tmp/ref/bin/python tests/reference/gpt2_heads.py
    /tmp/ref/bin/python tests/reference/gpt2_heads.py --roundtrip DIR   # DIR/{tied,untied} as
        ftune saved them: Transformers loads them and must give the same logits
"""
import argparse
import json
import os

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "hf_gpt2")
IDS = torch.tensor([[1, 17, 8, 25, 3, 39, 12, 40], [1, 9, 30, 2, 0, 0, 0, 0]])
MASK = torch.tensor([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]])
PROMPTS = [[1, 17, 8, 25, 3, 39, 12, 40], [1, 9, 30]]
NEW = 20


def make(tied, seed):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=48, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                     layer_norm_epsilon=1e-5, activation_function="gelu_new",
                     tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     attn_implementation="eager")
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if ("ln_" in name and name.endswith("weight")) else 0.0, 0.15)
    return model.eval()


def greedy(model, prompts, **kw):
    """Greedy continuations of prompts, left-padded with 0 into one batch; eos (2) stops."""
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                         eos_token_id=2, pad_token_id=0, **kw)
    return [r[:r.index(2)] if 2 in r else r for r in out[:, L:].tolist()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--roundtrip")
    a = ap.parse_args()
    if a.roundtrip:
        want = load_file(os.path.join(OUT, "expected.safetensors"))
        for name in ["tied", "untied"]:
            m = GPT2LMHeadModel.from_pretrained(os.path.join(a.roundtrip, name)).eval()
            with torch.no_grad():
                logits = m(input_ids=IDS, attention_mask=MASK).logits
            diff = (logits - want[f"{name}.logits"]).abs().max().item()
            print(f"{name}: Transformers loads ftune's directory; max |logit diff| {diff:.3g}")
            assert diff < 1e-5
        return
    out = {"input_ids": IDS.to(torch.int32), "attention_mask": MASK.to(torch.int32)}
    gen = {"transformers": transformers.__version__, "prompts": PROMPTS, "max_new_tokens": NEW}
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
                out[f"{name}.grad.{pname}"] = p.grad.detach().clone().contiguous()
        gen[name] = {"alone": [greedy(model, [p])[0] for p in PROMPTS],
                     "batch": greedy(model, PROMPTS),
                     "penalty": greedy(model, [PROMPTS[0]], repetition_penalty=1.5)[0]}
    save_file(out, os.path.join(OUT, "expected.safetensors"),
              metadata={"torch": torch.__version__, "transformers": transformers.__version__})
    with open(os.path.join(OUT, "generate.json"), "w") as f:
        json.dump(gen, f, indent=1)
    print(OUT, json.dumps(gen))


if __name__ == "__main__":
    main()
