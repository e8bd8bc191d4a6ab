#!/usr/bin/env python3
"""References for relation extraction (tests/test_relations.cpp):

1. SemEval-2010 Task 8's official scores for several gold/predicted label lists, computed by the
   steps of the task's scorer (semeval2010_task8_scorer-v1.2.pl, "(9+1)-way evaluation with
   directionality taken into account"): a confusion matrix over relation types with a WRONG_DIR
   row for right type / wrong direction, precision = diagonal / (column sum + WRONG_DIR of the
   type), recall = diagonal / gold count, F1 per type, macro averages over the gold types other
   than Other, micro averages from the summed counts; all in percent, as the scorer prints them.
   The cases: the real test labels with predictions drawn around them (right, wrong direction,
   another type, Other), a small hand-made case, a case where a type is never predicted, one
   where a type appears only among the predictions, and one without Other.
   -> fixtures/relations/scores.json

2. Transformers' tokenization with entity markers added as special tokens
   (add_special_tokens({"additional_special_tokens": ["<e1>", "</e1>", "<e2>", "</e2>"]})) under
   bert-base-uncased's vocabulary ($FTUNE_DATA_DIR/bert-base-uncased/vocab.txt): the ids of the
   first 300 SemEval test sentences (read from $FTUNE_DATA_DIR at test time, never stored) and of
   hard cases (markers inside words, upper case, next to [CLS], after non-ASCII text), and under
   a second set of added tokens that start with a letter and with a non-ASCII character.
   -> fixtures/relations/tokens.json

3. The relation head on a tiny random BertModel: markers added to the tokenizer, the token table
   grown by 4 rows set to the mean of the old rows, logits = Linear(3H -> L)([h_cls; h_<e1>;
   h_<e2>]) (hidden states at [CLS] and the two opening markers), the mean cross-entropy of 3
   labelled sentences and the gradients of the classifier, the whole token table and one layer's
   query weight. Float32, dropout off.
   -> fixtures/relations/tiny/ (save_pretrained of the base model and its tokenizer, before the
      markers), fixtures/relations/tiny_marked_tokenizer/ (the tokenizer after them: Transformers
      5 writes tokenizer.json and extra_special_tokens), fixtures/relations/tiny_expected.safetensors

Usage: FTUNE_DATA_DIR=../shared/data python3 tests/reference/relations.py     regenerate
       python3 tests/reference/relations.py --roundtrip DIR   Transformers loads the relation
           model ftune saved (ctest leaves it in build/tests/hf_roundtrip/relations): its
           tokenizer must give the fixture's ids (markers as added special tokens), BertModel
           must load every encoder weight, and with the saved classifier the logits must equal
           the fixture's within 1e-5
(needs torch, transformers, safetensors)
"""
import argparse
import json
import os
import pathlib
import random
import re
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "relations"
DATA = pathlib.Path(os.environ.get("FTUNE_DATA_DIR", "../shared/data"))
MARKERS = ["<e1>", "</e1>", "<e2>", "</e2>"]


# ---------------------------------------------------------------- 1. the official scorer's steps
def no_dir(label):
    return re.sub(r"\(e[12],e[12]\)$", "", label)


def official(gold, predicted):
    """The scorer's evaluate() for its (9+1)-way with-direction confusion matrix."""
    conf = {}            # conf[proposed][answer]
    proposed_count = {}  # allLabels10wayWithDirProposed
    answer_count = {}    # allLabels10wayAnswer
    for g, p in zip(gold, predicted):
        gn, pn = no_dir(g), no_dir(p)
        if p == g:
            key = pn
        elif pn == gn:
            key = "WRONG_DIR"
        else:
            key = pn
        conf.setdefault(key, {}).setdefault(gn, 0)
        conf[key][gn] += 1
        proposed_count[key] = proposed_count.get(key, 0) + 1
        answer_count[gn] = answer_count.get(gn, 0) + 1
    types, correct_all = [], 0
    macro_p = macro_r = macro_f = 0.0
    micro_c = micro_p = micro_a = 0
    for t in sorted(answer_count):
        wrong_dir = conf.get("WRONG_DIR", {}).get(t, 0)
        diag = conf.get(t, {}).get(t, 0)
        correct_all += diag
        prop = proposed_count.get(t, 0)
        P = 0.0 if prop == 0 else 100.0 * diag / (prop + wrong_dir)
        R = 0.0 if answer_count[t] == 0 else 100.0 * diag / answer_count[t]
        F = 0.0 if P + R == 0 else 2 * P * R / (P + R)
        types.append({"type": t, "correct": diag, "proposed": prop, "wrong_direction": wrong_dir,
                      "gold": answer_count[t], "P": P, "R": R, "F1": F})
        if t != "Other":
            macro_p += P
            macro_r += R
            macro_f += F
            micro_c += diag
            micro_p += prop + wrong_dir
            micro_a += answer_count[t]
    n = len([t for t in answer_count if t != "Other"])
    micro_P = 0.0 if micro_p == 0 else 100.0 * micro_c / micro_p
    micro_R = 0.0 if micro_a == 0 else 100.0 * micro_c / micro_a
    micro_F = 0.0 if micro_P + micro_R == 0 else 2 * micro_P * micro_R / (micro_P + micro_R)
    return {"types": types, "micro": [micro_P, micro_R, micro_F],
            "macro": [macro_p / n, macro_r / n, macro_f / n] if n else [0.0, 0.0, 0.0],
            "accuracy": 100.0 * correct_all / len(gold)}


def read_test_labels():
    rows = (DATA / "semeval2010_task8" / "test.tsv").read_text().splitlines()[1:]
    return [r.split("\t")[1] for r in rows]


def score_cases():
    labels = [l.strip() for l in (DATA / "semeval2010_task8" / "relations.txt").read_text().split()]
    rng = random.Random(8)
    gold = read_test_labels()
    predicted = []
    for g in gold:  # mostly right; some wrong direction, another type, or Other
        r = rng.random()
        if r < 0.80:
            predicted.append(g)
        elif r < 0.86 and g != "Other":
            predicted.append(g.replace("(e1,e2)", "(x)").replace("(e2,e1)", "(e1,e2)")
                             .replace("(x)", "(e2,e1)"))
        elif r < 0.95:
            predicted.append(rng.choice(labels))
        else:
            predicted.append("Other")
    small_gold = ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Other", "Message-Topic(e1,e2)",
                  "Cause-Effect(e1,e2)", "Other", "Member-Collection(e2,e1)"]
    small_pred = ["Cause-Effect(e1,e2)", "Cause-Effect(e1,e2)", "Message-Topic(e1,e2)",
                  "Message-Topic(e1,e2)", "Other", "Other", "Member-Collection(e1,e2)"]
    never_gold = ["Product-Producer(e1,e2)", "Entity-Origin(e2,e1)", "Other", "Entity-Origin(e1,e2)"]
    never_pred = ["Other", "Entity-Origin(e2,e1)", "Other", "Entity-Origin(e2,e1)"]
    only_pred_gold = ["Cause-Effect(e1,e2)", "Other", "Other"]
    only_pred_pred = ["Cause-Effect(e1,e2)", "Instrument-Agency(e2,e1)", "Content-Container(e1,e2)"]
    no_other_gold = ["Cause-Effect(e1,e2)", "Component-Whole(e2,e1)", "Component-Whole(e1,e2)"]
    no_other_pred = ["Component-Whole(e1,e2)", "Component-Whole(e2,e1)", "Component-Whole(e1,e2)"]
    cases = []
    for name, g, p in [("test_set_drawn", gold, predicted), ("small", small_gold, small_pred),
                       ("type_never_predicted", never_gold, never_pred),
                       ("type_only_predicted", only_pred_gold, only_pred_pred),
                       ("no_other", no_other_gold, no_other_pred)]:
        case = {"name": name, "expected": official(g, p)}
        if name == "test_set_drawn":  # gold: test.tsv's labels; predictions by relations.txt index
            case["predicted_ids"] = [labels.index(x) for x in p]
        else:
            case["gold"], case["predicted"] = g, p
        cases.append(case)
    return cases


# ------------------------------------------------------------------------------- 2. tokenization
HARD = [
    "The <e1>author</e1> of a keygen uses a <e2>disassembler</e2>.",
    "A<e1>B</e1>c<e2>d</e2>e",
    "<E1>upper</E1> case is not a marker <e1>lower</e1>",
    "[CLS]<e1>x</e1>[SEP]<e2>y</e2>",
    "café <e1>naïve</e1> über <e2>Straße</e2> 東京",
    "<e1><e2></e2></e1> nested and empty",
    "< e1 > spaced is not a marker",
    "<e1>multi word entity</e1> and <e2>another one</e2>",
]
OTHER_TOKENS = ["xyzzy", "ñandu", "<e1>"]
OTHER_TEXTS = ["axyzzyb xyzzy XYZZY", "el ñandu corre; elñandu", "mañana<e1>xyzzyñandu"]


def token_cases():
    vocab = DATA / "bert-base-uncased" / "vocab.txt"
    tok = BertTokenizer(vocab=str(vocab), do_lower_case=True)
    n = tok.add_special_tokens({"additional_special_tokens": MARKERS})
    assert n == 4 and len(tok) == 30526, (n, len(tok))
    rows = (DATA / "semeval2010_task8" / "test.tsv").read_text().splitlines()[1:301]
    texts = [r.split("\t")[2] for r in rows]
    other = BertTokenizer(vocab=str(vocab), do_lower_case=True)
    other.add_special_tokens({"additional_special_tokens": OTHER_TOKENS})
    return {"markers": MARKERS, "vocab_size": len(tok),
            "test_ids": [tok(t)["input_ids"] for t in texts],
            "hard": [{"text": t, "ids": tok(t)["input_ids"]} for t in HARD],
            "other_tokens": OTHER_TOKENS, "other_vocab_size": len(other),
            "other": [{"text": t, "ids": other(t)["input_ids"]} for t in OTHER_TEXTS]}


# ------------------------------------------------------------------------ 3. the head on a tiny BERT
WORDS = ("the author of a keygen uses disassembler to look at raw code child was wrapped into "
         "cradle by cord").split()
SENTENCES = ["The <e1>author</e1> of a keygen uses a <e2>disassembler</e2>.",
             "The <e1>child</e1> was wrapped into the <e2>cradle</e2> by a cord.",
             "<e2>Code</e2> uses the <e1>cord</e1>"]
LABELS = ["Other", "Instrument-Agency(e2,e1)", "Instrument-Agency(e1,e2)"]
GOLD = [2, 0, 1]


def tiny_model():
    dest = OUT / "tiny"
    dest.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS + ["##s", "##er"]
    (dest / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(vocab=str(dest / "vocab.txt"), do_lower_case=True, model_max_length=32)
    torch.manual_seed(5)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=32,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     initializer_range=0.2)
    model = BertModel(cfg, add_pooling_layer=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    # the markers: special tokens, 4 new rows at the mean of the old ones
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    tok.save_pretrained(OUT / "tiny_marked_tokenizer")  # tokenizer.json with the added tokens
    old = model.embeddings.word_embeddings.weight.detach().clone()
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[len(vocab):] = old.mean(0)
    e1, e2 = tok.convert_tokens_to_ids(["<e1>", "<e2>"])
    classifier = torch.nn.Linear(3 * cfg.hidden_size, len(LABELS))
    with torch.no_grad():
        classifier.weight.copy_(0.3 * torch.randn_like(classifier.weight))
        classifier.bias.copy_(0.1 * torch.randn_like(classifier.bias))
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    model.train()  # dropout is 0: train mode only to match ftune's training forward
    h = model(**batch).last_hidden_state  # (B, T, H)
    ids = batch["input_ids"]
    rows = torch.arange(ids.shape[0])
    p1 = (ids == e1).int().argmax(1)
    p2 = (ids == e2).int().argmax(1)
    features = torch.cat([h[:, 0], h[rows, p1], h[rows, p2]], dim=-1)
    logits = classifier(features)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(GOLD))
    loss.backward()
    q = model.encoder.layer[1].attention.self.query.weight
    expected = {
        "input_ids": ids.int(), "attention_mask": batch["attention_mask"].int(),
        "token_type_ids": batch["token_type_ids"].int(), "labels": torch.tensor(GOLD).int(),
        "word_embeddings": model.embeddings.word_embeddings.weight.detach().clone(),
        "classifier.weight": classifier.weight.detach().clone(),
        "classifier.bias": classifier.bias.detach().clone(),
        "logits": logits.detach().clone(), "loss": loss.detach().reshape(1),
        "grad.classifier.weight": classifier.weight.grad, "grad.classifier.bias": classifier.bias.grad,
        "grad.word_embeddings": model.embeddings.word_embeddings.weight.grad,
        "grad.layer1.query.weight": q.grad,
    }
    save_file({k: v.contiguous() for k, v in expected.items()}, str(OUT / "tiny_expected.safetensors"),
              metadata={"torch": torch.__version__, "labels": json.dumps(LABELS),
                        "sentences": json.dumps(SENTENCES)})


def roundtrip(saved):
    saved = pathlib.Path(saved)
    expected = load_file(str(OUT / "tiny_expected.safetensors"))
    tok = AutoTokenizer.from_pretrained(saved)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"].int(), expected["input_ids"]), "token ids differ"
    model, info = BertModel.from_pretrained(saved, add_pooling_layer=False,
                                            output_loading_info=True)  # the head needs no pooler
    assert not info["missing_keys"], info["missing_keys"]
    weights = load_file(str(saved / "model.safetensors"))
    classifier = torch.nn.Linear(weights["classifier.weight"].shape[1],
                                 weights["classifier.weight"].shape[0])
    with torch.no_grad():
        classifier.weight.copy_(weights["classifier.weight"])
        classifier.bias.copy_(weights["classifier.bias"])
        h = model.eval()(**batch).last_hidden_state
        ids = batch["input_ids"]
        rows = torch.arange(ids.shape[0])
        e1, e2 = tok.convert_tokens_to_ids(["<e1>", "<e2>"])
        p1, p2 = (ids == e1).int().argmax(1), (ids == e2).int().argmax(1)
        logits = classifier(torch.cat([h[:, 0], h[rows, p1], h[rows, p2]], dim=-1))
    d = (logits - expected["logits"]).abs().max().item()
    markers = json.loads((saved / "config.json").read_text()).get("entity_markers")
    print(f"{type(tok).__name__}: {len(tok)} tokens, markers {markers}; logits max |diff| {d:.3g}")
    return 0 if d <= 1e-5 and markers == MARKERS else 1


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = score_cases()
    (OUT / "scores.json").write_text(json.dumps(cases) + "\n")
    (OUT / "tokens.json").write_text(json.dumps(token_cases(), ensure_ascii=False) + "\n")
    tiny_model()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--roundtrip", metavar="DIR")
    args = ap.parse_args()
    sys.exit(roundtrip(args.roundtrip) if args.roundtrip else main())
