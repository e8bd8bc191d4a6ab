"""Decoder fine-tuning data as ids and labels (-100 where no loss is taken), computed with
Hugging Face's own tokenizer and chat-template code, for tests/test_lm_data.cpp:

- conversations (fixtures/lm/chat.jsonl: the "messages" format and TRL's conversational
  prompt-completion) in SmolLM2's chat template: the loss on each trained assistant turn, located
  as the text the conversation up to it adds to the conversation before it with the generation
  prompt (trailing whitespace left out), tokens counted by where they start (offset_mapping);
- the same conversations in ChatML with {% generation %} blocks: Transformers'
  apply_chat_template(return_assistant_tokens_mask=True);
- prompts with completions (fixtures/lm/prompt_completion.jsonl) as TRL's SFTTrainer tokenizes
  them: prompt + completion + eos as one text, the loss past the prompt's own tokens.

The tokenizer is the SmolLM2-style byte-level BPE of bpe_parity.py (fixtures/bpe/smollm.json).
Writes fixtures/lm/expected.json.

    /tmp/ref/bin/python tests/reference/lm_data.py
"""
import json
import os

from transformers import PreTrainedTokenizerFast

HERE = os.path.join(os.path.dirname(__file__), "fixtures")
GENERATION_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def read_jsonl(name):
    rows = []
    with open(os.path.join(HERE, "lm", name), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def conversation(row):
    """The messages and the index of the first one that may train."""
    if "messages" in row:
        return row["messages"], 0
    return row["prompt"] + row["completion"], len(row["prompt"])


def by_prefix(tok, msgs, first):
    text = tok.apply_chat_template(msgs, tokenize=False)
    spans = []
    for i, m in enumerate(msgs):
        if i < first or m["role"] != "assistant":
            continue
        before = tok.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)
        after = tok.apply_chat_template(msgs[:i + 1], tokenize=False)
        assert after.startswith(before) and text.startswith(after)
        spans.append((len(before), len(after.rstrip("\n "))))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [i if any(a <= s < b for a, b in spans) else -100
              for i, (s, _) in zip(enc["input_ids"], enc["offset_mapping"])]
    return {"ids": enc["input_ids"], "labels": labels}


def main():
    templates = json.load(open(os.path.join(HERE, "chat", "templates.json")))["templates"]
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(HERE, "bpe", "smollm.json"),
                                  bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>")
    chats = read_jsonl("chat.jsonl")
    out = {"smollm2_template": templates["smollm2"], "generation_template": GENERATION_CHATML,
           "prefix": [], "generation": [], "prompt_completion": []}
    tok.chat_template = templates["smollm2"]
    for row in chats:
        out["prefix"].append(by_prefix(tok, *conversation(row)))
    tok.chat_template = GENERATION_CHATML
    for row in chats:
        msgs, first = conversation(row)
        assert first == 0 or all(m["role"] != "assistant" for m in msgs[:first])
        enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        out["generation"].append({"ids": enc["input_ids"], "labels": [
            i if m else -100 for i, m in zip(enc["input_ids"], enc["assistant_masks"])]})
    for row in read_jsonl("prompt_completion.jsonl"):  # TRL's tokenization
        prompt_ids = tok(row["prompt"])["input_ids"]
        ids = tok(row["prompt"] + row["completion"] + tok.eos_token)["input_ids"]
        out["prompt_completion"].append(
            {"ids": ids, "labels": [-100] * len(prompt_ids) + ids[len(prompt_ids):]})
    with open(os.path.join(HERE, "lm", "expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
    print({k: len(v) for k, v in out.items() if isinstance(v, list)})


if __name__ == "__main__":
    main()
