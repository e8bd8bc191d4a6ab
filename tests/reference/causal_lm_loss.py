"""The causal-LM training loss with prompt masking, as Transformers computes it: for the tiny random
Llama (tied and untied head) and GPT-2 (tied) checkpoints of llama_heads.py and gpt2_heads.py, a
right-padded batch whose labels are the input ids with the prompt tokens and the padding set to
-100; `model(input_ids, attention_mask, labels=labels).loss` (the labels shifted by one inside,
cross-entropy averaged over the counted tokens) and its gradient for every parameter, in float32.
For tests/test_causal_lm.cpp.

Writes tests/reference/fixtures/causal_lm_loss.safetensors.

    /tmp/ref/bin/python tests/reference/causal_lm_loss.py
"""
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
IDS = torch.tensor([[1, 17, 8, 25, 3, 39, 12, 40], [1, 9, 30, 22, 5, 2, 0, 0]])
MASK = torch.tensor([[1] * 8, [1, 1, 1, 1, 1, 1, 0, 0]])
PROMPT = [4, 3]  # prompt tokens of each row: no loss on them


def labels():
    y = IDS.clone()
    for r, n in enumerate(PROMPT):
        y[r, :n] = -100
    y[MASK == 0] = -100
    return y


def main():
    out = {"input_ids": IDS.to(torch.int32), "attention_mask": MASK.to(torch.int32),
           "labels": labels().to(torch.int32)}
    for name, folder in [("llama_tied", "hf_llama/tied"), ("llama_untied", "hf_llama/untied"),
                         ("gpt2_tied", "hf_gpt2/tied")]:
        model = AutoModelForCausalLM.from_pretrained(os.path.join(HERE, folder),
                                                     dtype=torch.float32,
                                                     attn_implementation="eager")
        model.eval()  # no dropout (the checkpoints have none), gradients still on
        loss = model(input_ids=IDS, attention_mask=MASK, labels=labels()).loss
        loss.backward()
        out[f"{name}.loss"] = loss.detach().reshape(1)
        for pname, p in model.named_parameters():
            if p.grad is not None:
                out[f"{name}.grad.{pname}"] = p.grad.contiguous()
        print(name, float(loss))
    save_file(out, os.path.join(HERE, "causal_lm_loss.safetensors"),
              metadata={"torch": torch.__version__, "transformers": transformers.__version__})


if __name__ == "__main__":
    main()
