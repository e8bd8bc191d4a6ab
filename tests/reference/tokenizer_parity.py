#!/usr/bin/env python3
"""Reference tokenizations for ftune's tokenizer parity tests (tests/test_tokenizer.cpp), from
Hugging Face Transformers' slow BERT tokenizer (BertTokenizerLegacy in Transformers 5, the
Python BertTokenizer of earlier versions) and the fast one (Rust `tokenizers`).

For every input text it writes one JSON line:
  {"ids": [...]}                         slow tokenizer ids, [CLS] first and [SEP] last
  "offsets": [[b, e], ...], "words": [...]   from the fast tokenizer (character offsets into the
                                         text, word ids; null for special tokens), when both agree
  "fast": [...]                          the fast tokenizer's ids where they differ from the slow
The data-set texts are read from FTUNE_DATA_DIR (never copied into the fixtures); the hard cases
are written out with their expected values.

Usage: FTUNE_DATA_DIR=../shared/data python3 tests/reference/tokenizer_parity.py
"""
import csv
import json
import os
import pathlib
import sys
import unicodedata

import tokenizers
import transformers
from transformers import BertTokenizer
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "fixtures"
DATA = pathlib.Path(os.environ.get("FTUNE_DATA_DIR", HERE.parent.parent.parent / "shared" / "data"))

HARD_CASES = [
    "", " ", "\t\n", "Hello, World!", "HELLO world", "naïve café résumé", "Ångström Øresund",
    "e\u0301 versus \u00e9", "A\u030a", "ﬁ ligature ﬂow", "Ｆｕｌｌ－ｗｉｄｔｈ ＡＢＣ １２３",
    "emoji 👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷 ❤️", "control\u0007chars\u0000here\u001b[0m",
    "zero\u200bwidth\u200djoiner", "soft\u00adhyphen", "bidi \u202eevil\u202c text",
    "non\u00a0breaking\u2003em\u3000ideographic space", "한국어 문장입니다", "العربية نص",
    "देवनागरी लिपि", "ภาษาไทย", "ひらがな カタカナ", "漢字と日本語", "中文句子，标点！",
    "𠀀𠀁 extension B 𪜀", "ΣΊΣΥΦΟΣ ΟΔΟΣ", "İstanbul ıi", "Straße STRASSE", "Ǆemal ǅ ǆ",
    "x" * 99, "y" * 100, "z" * 101, "w" * 150, "v" * 200, "u" * 201, "q" * 250,
    "https://example.com/path?q=1&r=two#frag", "user@example.org", "$12.50 (approx.) 3/4",
    "[CLS] [SEP] [MASK] [PAD] [UNK]", "a[MASK]b", "[mask] [Cls]", "don't won't I'm",
    "unaffable unbelievable", "tab\tseparated\tvalues", "line\r\nbreaks\rhere",
    "\ufeffbyte order mark", "replacement \ufffd char", "private \ue000 use",
    "math ∑∫√ ≤≥ ±×÷", "currency €£¥₹", "quotes “smart” ‘single’ «guillemets»",
    "dashes – — ‒ ―", "ellipsis… and・middle dot", "Ⅻ roman numeral ⅻ", "superscript x² H₂O",
    "Ω ohm sign", "K kelvin sign", "ǲ title case", "Ḁḁ ẞ", "combining̀ ̀ marks ̸",
]

SETS = {
    # name: (vocab directory, lowercase, list of texts)
    "sst2_dev": ("bert-base-uncased", True, None),
    "hard_uncased": ("bert-base-uncased", True, HARD_CASES),
    "hard_cased": ("bert-base-cased", False, HARD_CASES),
    "hard_chinese": ("bert-base-chinese", True, HARD_CASES),
}


def sst2_dev():
    with open(DATA / "sst2" / "dev.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (vocab_dir, lower, texts) in SETS.items():
        vocab = str(DATA / vocab_dir / "vocab.txt")
        slow = BertTokenizerLegacy(vocab, do_lower_case=lower)
        fast = BertTokenizer(vocab, do_lower_case=lower)
        if texts is None:
            texts = {"sst2_dev": sst2_dev}[name]()
        differ = 0
        path = OUT / f"tokenizer_{name}.jsonl"
        with open(path, "w", encoding="utf-8") as out:
            meta = {"set": name, "vocab": vocab_dir, "lowercase": lower, "count": len(texts),
                    "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                    "python_unicode": unicodedata.unidata_version}
            if texts is HARD_CASES:
                meta["texts"] = texts
            out.write(json.dumps(meta, ensure_ascii=False) + "\n")
            for text in texts:
                ids = slow(text)["input_ids"]
                enc = fast(text, return_offsets_mapping=True)
                rec = {"ids": ids}
                if enc["input_ids"] == ids:
                    rec["offsets"] = [list(o) for o in enc["offset_mapping"]]
                    rec["words"] = enc.word_ids()
                else:
                    rec["fast"] = enc["input_ids"]
                    differ += 1
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        print(f"{path.name}: {len(texts)} texts, {differ} where slow and fast differ",
              file=sys.stderr)


if __name__ == "__main__":
    main()
