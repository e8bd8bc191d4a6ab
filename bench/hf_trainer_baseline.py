#!/usr/bin/env python3
"""The Hugging Face baseline of the results table in docs/parity.md: the same fine-tuning recipe as
`ftune train` run with Transformers' Trainer in PyTorch on this machine.

For one task it fine-tunes a checkpoint (AutoModelFor{Sequence,Token}Classification with a new
head), times the training loop, evaluates on the test/dev file and prints one JSON line:
  {"task", "framework": "transformers", "metric", "value", "train_s", "total_s", ...}

The recipe mirrors `ftune train`'s flags: AdamW (torch), linear schedule with warmup ratio, weight
decay on all but biases and LayerNorm weights, gradient clipping 1.0, length-grouped batches with
dynamic padding, dropout on, the first N training rows (as run_glue's --max_train_samples), and
the final weights (no best-model reloading). NER labels go on each word's first wordpiece, the
other pieces are ignored; words cut off by --max-length are predicted O, as ftune does.

Parameter-efficient methods (--peft), as `ftune train --peft`: "lora" wraps the model with
Hugging Face PEFT's get_peft_model(LoraConfig(task_type=SEQ_CLS or TOKEN_CLS, r, lora_alpha,
lora_dropout, target_modules)), which trains the adapters and the classifier; "bitfit" trains
the biases and the classifier; "head" the classifier alone. The JSON line adds the trainable and
all parameter counts and the process's peak resident memory.

Batch order (--batch-order): "buckets" (default) is ftune's: each epoch a permutation, sorted by
length within windows of 50 batches, cut into batches, and the batches shuffled. "transformers"
is Trainer's group_by_length (LengthGroupedSampler), which does not shuffle the batches: each
window is trained longest to shortest, so consecutive batches have similar lengths and, where
length goes with the label (ChnSentiCorp), similar labels.

  python3 bench/hf_trainer_baseline.py --task sst2 --model DIR --data ../shared/data \
      --epochs 1 --lr 1e-4 --batch-size 32 --max-train-examples 20000

Needs torch, transformers, scikit-learn and seqeval (see tests/reference/README.md).
"""
import argparse
import csv
import json
import os
import time

TASKS = {
    # task: (train file, evaluation file, text column, label column, metric)
    "sst2": ("sst2/train.tsv", "sst2/dev.tsv", "sentence", "label", "accuracy"),
    "banking77": ("banking77/train.csv", "banking77/test.csv", "text", "category", "accuracy"),
    "chnsenticorp": ("chnsenticorp/train.tsv", "chnsenticorp/test.tsv", "text_a", "label",
                     "accuracy"),
    "conll2003": ("conll2003/train.txt", "conll2003/test.txt", None, None, "entity_f1"),
}


def read_table(path, text_col, label_col):
    """Rows (text, label) of a TSV/CSV file with a header, as ftune's read_table reads it."""
    delim = "\t" if path.endswith(".tsv") else ","
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t"
                                   else csv.QUOTE_MINIMAL))
    return [(r[text_col], r[label_col].strip()) for r in rows]  # ChnSentiCorp: a "    0"


def read_conll(path):
    """Sentences (words, tags) of a CoNLL file: token first, tag last, -DOCSTART- skipped."""
    sents, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("-DOCSTART-"):
                if words:
                    sents.append((words, tags))
                words, tags = [], []
                continue
            cols = line.split()
            words.append(cols[0])
            tags.append(cols[-1])
    if words:
        sents.append((words, tags))
    return sents


def shuffled_buckets(lengths, batch_size, seed):
    """A torch Sampler with ftune's batch order (batching.hpp batch_order); the last, partial
    batch stays last so that the DataLoader cuts the same batches."""
    import torch

    class Sampler(torch.utils.data.Sampler):
        def __init__(self):
            self.g = torch.Generator().manual_seed(seed)

        def __len__(self):
            return len(lengths)

        def __iter__(self):  # a new order each epoch
            n, window = len(lengths), 50 * batch_size
            idx = torch.randperm(n, generator=self.g).tolist()
            idx = [i for a in range(0, n, window)
                   for i in sorted(idx[a:a + window], key=lambda i: -lengths[i])]  # stable
            batches = [idx[a:a + batch_size] for a in range(0, n, batch_size)]
            partial = batches.pop() if len(batches[-1]) < batch_size else None
            order = torch.randperm(len(batches), generator=self.g).tolist()
            batches = [batches[k] for k in order] + ([partial] if partial else [])
            return iter([i for b in batches for i in b])

    return Sampler()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", required=True, choices=sorted(TASKS))
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=os.environ.get("FTUNE_DATA_DIR", "../shared/data"))
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-train-examples", type=int, default=0)
    ap.add_argument("--warmup-ratio", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--batch-order", choices=["buckets", "transformers"], default="buckets",
                    help="buckets: ftune's (shuffled length buckets); transformers: Trainer's "
                         "group_by_length")
    ap.add_argument("--peft", choices=["none", "lora", "bitfit", "head"], default="none")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=8)
    ap.add_argument("--lora-dropout", type=float, default=0.0)
    ap.add_argument("--lora-targets", default="query,value")
    ap.add_argument("--save-adapter", default="", help="lora: save the trained adapter here")
    ap.add_argument("--out", default="/tmp/ftune_hf_baseline")
    args = ap.parse_args()

    t_start = time.perf_counter()
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification,
                              AutoTokenizer, DataCollatorForTokenClassification,
                              DataCollatorWithPadding, Trainer, TrainingArguments)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_file, eval_file, text_col, label_col, metric = TASKS[args.task]
    tok = AutoTokenizer.from_pretrained(args.model)
    ner = args.task == "conll2003"

    if ner:
        train = read_conll(os.path.join(args.data, train_file))
        test = read_conll(os.path.join(args.data, eval_file))
        if args.max_train_examples:
            train = train[:args.max_train_examples]
        names = sorted({t for _, ts in train + test for t in ts})
    else:
        train = read_table(os.path.join(args.data, train_file), text_col, label_col)
        test = read_table(os.path.join(args.data, eval_file), text_col, label_col)
        if args.max_train_examples:
            train = train[:args.max_train_examples]
        names = sorted({l for _, l in train + test})
    index = {n: i for i, n in enumerate(names)}

    word_ids = []  # NER: the word of each wordpiece, per sentence

    def encode(data):
        out = []
        for text, label in data:
            if ner:
                enc = tok(text, is_split_into_words=True, truncation=True,
                          max_length=args.max_length)
                word_ids.append(enc.word_ids())
                labels, prev = [], None
                for w in enc.word_ids():
                    labels.append(-100 if w is None or w == prev else index[label[w]])
                    prev = w
                enc["labels"] = labels
            else:
                enc = tok(text, truncation=True, max_length=args.max_length)
                enc["labels"] = index[label]
            out.append(dict(enc))
        return out

    train_enc = encode(train)
    word_ids.clear()
    test_enc = encode(test)
    from transformers import set_seed
    set_seed(args.seed)  # the new head's initial weights (Trainer seeds only after this), as run_glue
    cls = AutoModelForTokenClassification if ner else AutoModelForSequenceClassification
    model = cls.from_pretrained(args.model, num_labels=len(names),
                                id2label=dict(enumerate(names)), label2id=index)
    if args.peft == "lora":
        from peft import LoraConfig, TaskType, get_peft_model
        model = get_peft_model(model, LoraConfig(
            task_type=TaskType.TOKEN_CLS if ner else TaskType.SEQ_CLS, r=args.lora_r,
            lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
            target_modules=args.lora_targets.split(",")))
    elif args.peft in ("bitfit", "head"):
        for n, p in model.named_parameters():
            p.requires_grad = n.startswith("classifier.") or (
                args.peft == "bitfit" and n.endswith(".bias"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    targs = TrainingArguments(
        output_dir=args.out, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64, learning_rate=args.lr, num_train_epochs=args.epochs,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_ratio,
        lr_scheduler_type="linear", max_grad_norm=1.0, seed=args.seed, train_sampling_strategy="group_by_length",
        logging_steps=50, save_strategy="no", eval_strategy="no", report_to=[],
        dataloader_num_workers=0, use_cpu=True, disable_tqdm=True)
    collator = (DataCollatorForTokenClassification(tok) if ner else DataCollatorWithPadding(tok))
    class BaselineTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            if args.batch_order == "transformers":
                return super()._get_train_sampler(train_dataset)
            return shuffled_buckets([len(e["input_ids"]) for e in train_enc], args.batch_size,
                                    args.seed)

    trainer = BaselineTrainer(model=model, args=targs, train_dataset=train_enc,
                              data_collator=collator)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    if args.save_adapter:
        model.save_pretrained(args.save_adapter)

    # Transformers 5 groups evaluation batches by length too (a shuffled order): predict in order
    trainer.args.train_sampling_strategy = "sequential"
    pred = trainer.predict(test_enc)
    if ner:
        from seqeval.metrics import f1_score
        gold, guess = [], []
        for (words, tags), ids, logits in zip(test, word_ids, pred.predictions):
            out, prev = ["O"] * len(words), None
            for w, p in zip(ids, logits.argmax(-1)):
                if w is not None and w != prev:
                    out[w] = names[p]
                prev = w
            gold.append(tags)
            guess.append(out)
        value = f1_score(gold, guess)
    else:
        value = float((pred.predictions.argmax(-1) == np.array([e["labels"] for e in test_enc]))
                      .mean())
    print(json.dumps({"task": args.task, "framework": "transformers", "seed": args.seed,
                      "batch_order": args.batch_order, "metric": metric,
                      "value": round(float(value), 4), "train_s": round(train_s, 1),
                      "total_s": round(time.perf_counter() - t_start, 1),
                      "train_examples": len(train), "test_examples": len(test),
                      "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                      "peft": args.peft, "trainable_params": trainable, "all_params": total,
                      "peak_rss_mb": round(__import__("resource").getrusage(
                          __import__("resource").RUSAGE_SELF).ru_maxrss / 1024),
                      "torch": torch.__version__,
                      "transformers": __import__("transformers").__version__}))


if __name__ == "__main__":
    main()
