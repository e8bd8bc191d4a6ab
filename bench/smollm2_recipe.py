"""The Transformers side of ftune's SmolLM2 chat fine-tuning comparisons
(compare_support_assistant.py, compare_summarize_dialogues.py): the same recipe as ftune's
train::encode, trainer and train::evaluate_generation, written once.

- plain_checkpoint: SmolLM2-135M-Instruct from the GGUF file dequantized to float32 and saved as a
  plain checkpoint (Trainer refuses to train a model it still marks as quantized).
- encode_chat: a chat {user, assistant} in the model's chat template with the loss on the reply
  and its end-of-turn token only (the template's text after the generation prompt, trailing
  newline left out), cut to its first max_length tokens (as TRL truncates).
- fit: AdamW (lr, no weight decay, eps 1e-8), linear decay after 10% warmup, gradient clipping
  at 1.0, batches grouped by length, float32, padding to the longest in the batch; or, given
  batches (each step's row indices, as ftune's examples write them with --batches-out), exactly
  those batches in that order.
- greedy: replies to prompts sorted by length in batches of 8 with left padding, at most max_new
  new tokens, whitespace trimmed.
"""
import json
import os
import time

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments,
                          set_seed)


def plain_checkpoint(gguf, folder):
    """The GGUF's model and tokenizer dequantized to float32 in folder (made once)."""
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        where, name = os.path.split(os.path.abspath(gguf))
        AutoTokenizer.from_pretrained(where, gguf_file=name).save_pretrained(folder)
        m = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
        m.hf_quantizer = None  # dequantized on load: float32 tensors
        m.save_pretrained(folder)
        del m
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
        config.pop("quantization_config", None)  # the weights saved are plain float32
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return tok, model, pad


def prompt_ids(tok, user, max_length=None):
    """The user's message with the generation prompt, as ids (its last max_length tokens)."""
    ids = tok.apply_chat_template([{"role": "user", "content": user}],
                                  add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    return ids[-max_length:] if max_length else ids


def encode_chat(tok, user, reply, max_length=None):
    """Ids and labels of {user, assistant: reply}: the loss on the reply and its end of turn."""
    prompt = tok.apply_chat_template([{"role": "user", "content": user}],
                                     add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template([{"role": "user", "content": user},
                                    {"role": "assistant", "content": reply}], tokenize=False)
    end = len(full.rstrip("\n "))
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    labels = [i if len(prompt) <= s < end else -100
              for i, (s, _) in zip(enc["input_ids"], enc["offset_mapping"])]
    ids = enc["input_ids"]
    if max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def read_batches(path):
    """The batches an ftune example wrote with --batches-out: a list of row-index lists."""
    with open(path) as f:
        return [[int(i) for i in line.split()] for line in f if line.strip()]


class _Steps:
    """A batch sampler giving epoch e's batches on its e-th pass (batches: all epochs' steps)."""

    def __init__(self, batches, epochs):
        self.per_epoch = len(batches) // epochs
        self.batches, self.epoch = batches, 0

    def __len__(self):
        return self.per_epoch

    def __iter__(self):
        first = self.epoch * self.per_epoch
        self.epoch += 1
        return iter(self.batches[first:first + self.per_epoch])


def fit(model, pad, rows, a, seed, output_dir, batches=None):
    """Trains model on encoded rows with the recipe above; returns the wall time in seconds.
    batches: every step's row indices in order (all epochs), instead of Trainer's own order."""
    def collate(batch):
        n = max(len(r["input_ids"]) for r in batch)
        ids = [r["input_ids"] + [pad] * (n - len(r["input_ids"])) for r in batch]
        labels = [r["labels"] + [-100] * (n - len(r["labels"])) for r in batch]
        mask = [[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in batch]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}

    set_seed(seed)
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=a.batch_size, learning_rate=a.lr,
        num_train_epochs=a.epochs, lr_scheduler_type="linear", warmup_steps=0.1,
        weight_decay=0.0, max_grad_norm=1.0, adam_epsilon=1e-8, seed=seed,
        train_sampling_strategy="group_by_length", logging_steps=50, save_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False)
    if batches is None:
        trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    else:
        from torch.utils.data import DataLoader
        if len(batches) % a.epochs:
            raise ValueError(f"{len(batches)} batches do not split into {a.epochs} epochs")
        steps = _Steps(batches, a.epochs)

        class SameBatches(Trainer):
            def get_train_dataloader(self):
                return DataLoader(rows, batch_sampler=steps, collate_fn=collate, num_workers=0)

        trainer = SameBatches(model=model, args=args, train_dataset=rows, data_collator=collate)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def greedy(model, tok, pad, prompts, max_new, batch=8):
    """Greedy replies (trimmed) to prompts (lists of ids), in the prompts' order."""
    model.eval()
    tok.padding_side = "left"
    replies = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with torch.no_grad():
        for k in range(0, len(order), batch):
            idx = order[k:k + batch]
            enc = tok.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt")
            out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=pad)
            for j, i in enumerate(idx):
                replies[i] = tok.decode(out[j, enc["input_ids"].shape[1]:],
                                        skip_special_tokens=True).strip()
    return replies
