"""Sequence classification on a decoder, as Transformers computes it: the tiny random Llama and
GPT-2 checkpoints of llama_heads.py and gpt2_heads.py loaded as LlamaForSequenceClassification /
GPT2ForSequenceClassification (a new bias-free "score" layer read at each sequence's last
non-padding token), on a batch with a right-padded and a left-padded row. For each case: the score
weight Transformers initialized, the logits, `model(..., labels=...).loss` (cross-entropy for
single-label, BCE-with-logits for multi-label, MSE for regression) and its gradient for every
parameter, in float32. For tests/test_causal_lm.cpp.

Writes tests/reference/fixtures/decoder_classification.safetensors.

    /tmp/ref/bin/python tests/reference/decoder_classification.py
"""
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
# row 0 full, row 1 right-padded, row 2 left-padded (pad id 0 appears nowhere else)
IDS = torch.tensor([[1, 17, 8, 25, 3, 39, 12, 40], [1, 9, 30, 22, 5, 2, 0, 0],
                    [0, 0, 0, 1, 44, 7, 19, 6]])
MASK = (IDS != 0).to(torch.int64)
CASES = [  # name, checkpoint, problem type, labels
    ("llama_single", "hf_llama/tied", "single_label_classification",
     torch.tensor([2, 0, 1])),
    ("llama_regression", "hf_llama/untied", "regression",
     torch.tensor([[0.5], [-1.25], [2.0]])),
    ("gpt2_multi", "hf_gpt2/tied", "multi_label_classification",
     torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])),
]


def main():
    out = {"input_ids": IDS.to(torch.int32), "attention_mask": MASK.to(torch.int32)}
    for name, folder, problem, labels in CASES:
        torch.manual_seed(7)
        model = AutoModelForSequenceClassification.from_pretrained(
            os.path.join(HERE, folder), num_labels=labels.shape[-1] if labels.dim() == 2 else 3,
            problem_type=problem, pad_token_id=0, dtype=torch.float32,
            attn_implementation="eager")
        model.eval()  # no dropout (the checkpoints have none), gradients still on
        r = model(input_ids=IDS, attention_mask=MASK, labels=labels)
        r.loss.backward()
        out[f"{name}.score"] = model.score.weight.detach().contiguous()
        out[f"{name}.logits"] = r.logits.detach().contiguous()
        out[f"{name}.labels"] = labels.to(torch.float32).contiguous()
        out[f"{name}.loss"] = r.loss.detach().reshape(1)
        for pname, p in model.named_parameters():
            if p.grad is not None:
                out[f"{name}.grad.{pname}"] = p.grad.contiguous()
        print(name, float(r.loss))
    save_file(out, os.path.join(HERE, "decoder_classification.safetensors"),
              metadata={"torch": torch.__version__, "transformers": transformers.__version__})


if __name__ == "__main__":
    main()
