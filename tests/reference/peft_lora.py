#!/usr/bin/env python3
"""LoRA adapters made by Hugging Face PEFT on ftune's tiny random fixtures, with the adapted
models' logits, for ftune's adapter-loading parity test (tests/test_lora.cpp); and the check that
an adapter ftune saved loads in PEFT with the same logits.

Writes tests/reference/fixtures/peft/:
  bert_seq/    adapter_model.safetensors + adapter_config.json: LoRA r 4, alpha 8, dropout 0.1
               on query, value and the attention output dense of hf_heads/seq
               (BertForSequenceClassification), bias "lora_only", the classifier saved in full
               (PEFT's SEQ_CLS default)
  llama_lm/    the same for hf_llama/untied (LlamaForCausalLM): r 4, alpha 16, rsLoRA, on q_proj,
               v_proj, gate_proj and down_proj given as a regex, bias "none"
  gpt2_lm/     the same for hf_gpt2/tied (GPT2LMHeadModel, Conv1D layers: fan_in_fan_out): r 4,
               alpha 8 on c_attn (q, k and v fused: one A, one B of 3 x 32 rows), c_proj (the
               attention's and the MLP's) and c_fc, bias "lora_only" (c_attn's fused bias)
  expected.safetensors
      bert_logits (3, 3)     the adapted classifier on hf_heads' single_* inputs
      llama_logits (2, 8, V) the adapted causal LM on causal_lm_loss's inputs
      gpt2_logits (2, 8, V)  the adapted GPT-2 on hf_gpt2's inputs
PEFT initializes B at zero (the adapted model equals the base); here every lora_B and the
classifier get random values first, so that the logits depend on every saved tensor.

Usage:
  python3 tests/reference/peft_lora.py                  regenerate the fixtures
  python3 tests/reference/peft_lora.py --roundtrip DIR  load the adapters ftune saved in
      DIR/{bert_seq,llama_lm,gpt2_lm} (ctest writes them to build/tests/peft_roundtrip) with
      PeftModel.from_pretrained on the same bases and compare the logits with expected
(needs torch, transformers, peft, safetensors)
"""
import argparse
import pathlib
import sys

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
OUT = FIXTURES / "peft"


def inputs():
    heads = load_file(FIXTURES / "hf_heads" / "expected.safetensors")
    lm = load_file(FIXTURES / "causal_lm_loss.safetensors")
    g = load_file(FIXTURES / "hf_gpt2" / "expected.safetensors")
    bert = {k: heads[f"single_{k}"] for k in ("input_ids", "attention_mask", "token_type_ids")}
    llama = {"input_ids": lm["input_ids"].long(), "attention_mask": lm["attention_mask"].long()}
    gpt2 = {"input_ids": g["input_ids"].long(), "attention_mask": g["attention_mask"].long()}
    return bert, llama, gpt2


def bases():
    bert = AutoModelForSequenceClassification.from_pretrained(FIXTURES / "hf_heads" / "seq")
    llama = AutoModelForCausalLM.from_pretrained(FIXTURES / "hf_llama" / "untied")
    gpt2 = AutoModelForCausalLM.from_pretrained(FIXTURES / "hf_gpt2" / "tied")
    return bert.eval(), llama.eval(), gpt2.eval()


def logits(model, x):
    with torch.no_grad():
        return model(**x).logits


def generate():
    torch.manual_seed(0)
    bert_in, llama_in, gpt2_in = inputs()
    bert, llama, gpt2 = bases()
    configs = {
        "bert_seq": (bert, bert_in, LoraConfig(
            task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.1,
            target_modules=["query", "value", "attention.output.dense"], bias="lora_only")),
        "llama_lm": (llama, llama_in, LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=16, use_rslora=True,
            target_modules=r".*\.(q_proj|v_proj|gate_proj|down_proj)", bias="none")),
        "gpt2_lm": (gpt2, gpt2_in, LoraConfig(
            task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, fan_in_fan_out=True,
            target_modules=["c_attn", "c_proj", "c_fc"], bias="lora_only")),
    }
    expected = {}
    for name, (base, x, config) in configs.items():
        model = get_peft_model(base, config)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n or "modules_to_save" in n or (p.requires_grad and n.endswith("bias")):
                    p.copy_(torch.randn_like(p) * 0.3)
        model.eval()
        model.save_pretrained(OUT / name)
        (OUT / name / "README.md").unlink(missing_ok=True)  # PEFT's model card template
        expected[f"{name.split('_')[0]}_logits"] = logits(model, x).contiguous()
        merged = model.merge_and_unload()
        assert torch.allclose(logits(merged, x), expected[f"{name.split('_')[0]}_logits"],
                              atol=1e-5)
    save_file(expected, OUT / "expected.safetensors")
    print("wrote", OUT)


def roundtrip(folder):
    bert_in, llama_in, gpt2_in = inputs()
    expected = load_file(OUT / "expected.safetensors")
    worst = 0.0
    for i, (name, key, x) in enumerate((("bert_seq", "bert_logits", bert_in),
                                        ("llama_lm", "llama_logits", llama_in),
                                        ("gpt2_lm", "gpt2_logits", gpt2_in))):
        base = bases()[i]
        model = PeftModel.from_pretrained(base, pathlib.Path(folder) / name).eval()
        gap = (logits(model, x) - expected[key]).abs().max().item()
        print(f"{name}: max |logit difference| {gap:.2e}")
        worst = max(worst, gap)
    if worst > 1e-5:
        sys.exit("adapters saved by ftune do not give PEFT's logits")
    print("ok: PEFT loads ftune's adapters with the same logits")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--roundtrip", metavar="DIR")
    a = p.parse_args()
    roundtrip(a.roundtrip) if a.roundtrip else generate()
