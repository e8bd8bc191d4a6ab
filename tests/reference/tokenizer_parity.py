#!/usr/bin/env python3
"""Reference tokenizations for ftune's tokenizer parity tests (tests/test_tokenizer.cpp), from
Hugging Face Transformers' slow BERT tokenizer (BertTokenizerLegacy in Transformers 5, the
Python BertTokenizer of earlier versions) and the fast one (Rust `tokenizers`).

Each set becomes fixtures/tokenizer_<set>.txt.gz: a JSON header line, then one line per text
with the slow tokenizer's ids ([CLS] first, [SEP] last), and the fast tokenizer's character
offsets and word ids where both agree (its ids otherwise). The data-set texts are read from
FTUNE_DATA_DIR and never copied into the fixtures; the hard cases are in the header.

Pre-split words (is_split_into_words, as token classification encodes) become
fixtures/tokenizer_words_<set>.txt.gz: ids and word ids per text.

Usage: FTUNE_DATA_DIR=../shared/data python3 tests/reference/tokenizer_parity.py
"""
import gzip
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
    # name: (vocab directory, lowercase, texts or a reader of FTUNE_DATA_DIR)
    "sst2_dev": ("bert-base-uncased", True, "sst2"),
    "conll2003_test": ("bert-base-cased", False, "conll"),
    "chnsenticorp_dev": ("bert-base-chinese", False, "chnsenticorp"),  # HF's tokenizer_config
    "financial_phrasebank": ("bert-base-uncased", True, "fpb"),
    "hard_uncased": ("bert-base-uncased", True, HARD_CASES),
    "hard_cased": ("bert-base-cased", False, HARD_CASES),
    "hard_chinese": ("bert-base-chinese", True, HARD_CASES),
}


def lines(path, encoding="utf-8"):
    """The file's lines without their LF (and a CR before it); the C++ test reads them alike."""
    text = (DATA / path).read_bytes().decode(encoding)
    out = text.split("\n")
    if out and out[-1] == "":
        out.pop()
    return [l[:-1] if l.endswith("\r") else l for l in out]


def read_texts(kind):
    if kind == "sst2":  # sentence<TAB>label, after a header
        return [l.split("\t", 1)[0] for l in lines("sst2/dev.tsv")[1:]]
    if kind == "chnsenticorp":  # label<TAB>text_a, after a header
        return [l.split("\t", 1)[1] for l in lines("chnsenticorp/dev.tsv")[1:]]
    if kind == "fpb":  # sentence@label, Latin-1
        return [l.rsplit("@", 1)[0]
                for l in lines("financial_phrasebank/Sentences_AllAgree.txt", "latin-1")]
    if kind == "conll":  # the first column of each sentence joined by spaces, no -DOCSTART-
        out, cur = [], []
        for l in lines("conll2003/test.txt"):
            if not l.strip():
                if cur:
                    out.append(" ".join(cur))
                cur = []
            elif not l.startswith("-DOCSTART-"):
                cur.append(l.split(" ")[0])
        if cur:
            out.append(" ".join(cur))
        return out
    raise ValueError(kind)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (vocab_dir, lower, texts) in SETS.items():
        vocab = str(DATA / vocab_dir / "vocab.txt")
        slow = BertTokenizerLegacy(vocab, do_lower_case=lower)
        fast = BertTokenizer(vocab, do_lower_case=lower)
        hard = not isinstance(texts, str)
        if not hard:
            texts = read_texts(texts)
        differ = 0
        meta = {"set": name, "vocab": vocab_dir, "lowercase": lower, "count": len(texts),
                "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "python_unicode": unicodedata.unidata_version}
        if hard:
            meta["texts"] = texts
        # one line per text: ids<TAB>offsets (b:e ...)<TAB>word ids<TAB>fast ids; offsets and word
        # ids come from the fast tokenizer when its ids equal the slow one's, else "-" and the
        # fast ids follow
        rows = [json.dumps(meta, ensure_ascii=False)]
        for text in texts:
            ids = slow(text)["input_ids"]
            enc = fast(text, return_offsets_mapping=True)
            cols = [" ".join(map(str, ids))]
            if enc["input_ids"] == ids:
                cols.append(" ".join(f"{b}:{e}" for b, e in enc["offset_mapping"]))
                cols.append(" ".join("-1" if w is None else str(w) for w in enc.word_ids()))
                cols.append("")
            else:
                cols += ["-", "-", " ".join(map(str, enc["input_ids"]))]
                differ += 1
            rows.append("\t".join(cols))
        path = OUT / f"tokenizer_{name}.txt.gz"
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(("\n".join(rows) + "\n").encode("utf-8"))
        print(f"{path.name}: {len(texts)} texts, {differ} where slow and fast differ, "
              f"{path.stat().st_size} bytes", file=sys.stderr)


def tokenizer_json_fixture():
    """A small tokenizer.json (the first 4,000 bert-base-cased tokens, lowercase off, accents
    stripped) saved by `tokenizers`, and its ids for SST-2 dev: tests reading tokenizer.json."""
    from tokenizers import BertWordPieceTokenizer, Tokenizer
    vocab = (DATA / "bert-base-cased" / "vocab.txt").read_text(encoding="utf-8").split("\n")[:4000]
    small = OUT / "tokenizer_json_vocab.tmp"
    small.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertWordPieceTokenizer(str(small), lowercase=False, strip_accents=True)
    small.unlink()
    path = OUT / "tokenizer_small.json"
    tok.save(str(path))
    loaded = Tokenizer.from_file(str(path))
    rows = [json.dumps({"set": "sst2_dev", "tokenizer_json": path.name})]
    for text in read_texts("sst2"):
        rows.append(" ".join(map(str, loaded.encode(text).ids)))
    out = OUT / "tokenizer_json_sst2_dev.txt.gz"
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(("\n".join(rows) + "\n").encode("utf-8"))
    print(f"{path.name} ({path.stat().st_size} bytes), {out.name}", file=sys.stderr)


def bert_words(text):
    """The whitespace-separated words of text, whitespace as BERT's basic tokenizer defines it
    (space, tab, CR, LF, category Zs): what `ftune predict` tags one by one on a NER model."""
    words, cur = [], ""
    for c in text:
        if c in " \t\n\r" or unicodedata.category(c) == "Zs":
            if cur:
                words.append(cur)
            cur = ""
        else:
            cur += c
    if cur:
        words.append(cur)
    return words


WORD_SETS = {  # name: (vocab directory, lowercase, texts or a reader of FTUNE_DATA_DIR)
    "conll2003_test": ("bert-base-cased", False, "conll"),
    "hard_cased": ("bert-base-cased", False, HARD_CASES),
    "hard_uncased": ("bert-base-uncased", True, HARD_CASES),
}


def words_fixtures():
    """Pre-split words (Transformers' is_split_into_words=True): fixtures/tokenizer_words_<set>
    .txt.gz, a JSON header line then one line per text: the slow tokenizer's ids ([CLS] first,
    [SEP] last) and the fast tokenizer's word id of each position (-1 for the specials), or "-"
    where the fast tokenizer's ids differ."""
    for name, (vocab_dir, lower, texts) in WORD_SETS.items():
        vocab = str(DATA / vocab_dir / "vocab.txt")
        slow = BertTokenizerLegacy(vocab, do_lower_case=lower)
        fast = BertTokenizer(vocab, do_lower_case=lower)
        hard = not isinstance(texts, str)
        if not hard:
            texts = read_texts(texts)
        meta = {"set": name, "vocab": vocab_dir, "lowercase": lower, "count": len(texts),
                "split": "BERT whitespace", "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__}
        if hard:
            meta["texts"] = texts
        rows = [json.dumps(meta, ensure_ascii=False)]
        differ = 0
        for text in texts:
            words = bert_words(text)
            enc = fast(words, is_split_into_words=True)
            ids = slow(words, is_split_into_words=True)["input_ids"] if words else slow("")[
                "input_ids"]
            if enc["input_ids"] == ids:
                word_ids = " ".join("-1" if w is None else str(w) for w in enc.word_ids())
            else:  # as in main(): the slow tokenizer's ids, no word ids to compare
                word_ids, differ = "-", differ + 1
            rows.append(" ".join(map(str, ids)) + "\t" + word_ids)
        path = OUT / f"tokenizer_words_{name}.txt.gz"
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(("\n".join(rows) + "\n").encode("utf-8"))
        print(f"{path.name}: {len(texts)} texts, {differ} where slow and fast differ, "
              f"{path.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    tokenizer_json_fixture()
    main()
    words_fixtures()
