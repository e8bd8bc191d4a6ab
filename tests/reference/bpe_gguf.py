"""The `smollm` tokenizer of bpe_parity.py as GGUF metadata, written as llama.cpp's converter
writes a SmolLM2 tokenizer (tokenizer.ggml.model "gpt2", .pre "smollm", tokens by id, merges,
token types: 3 for the special tokens), with no tensors. For tests/test_bpe.cpp, which checks
that it tokenizes as `tokenizers` does (the ids of bpe_parity.py's expected.json.gz).

    /tmp/ref/bin/python tests/reference/bpe_gguf.py
"""
import json
import os

from gguf import GGUFWriter

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "bpe")


def main():
    with open(os.path.join(OUT, "smollm.json"), encoding="utf-8") as f:
        j = json.load(f)
    vocab = j["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {t["content"] for t in j["added_tokens"] if t.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    w = GGUFWriter(os.path.join(OUT, "smollm.gguf"), arch="llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])
    w.add_token_merges(merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(os.path.join(OUT, "smollm.gguf"))


if __name__ == "__main__":
    main()
