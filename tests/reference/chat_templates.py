"""Chat templates rendered by Transformers (render_jinja_template, what apply_chat_template runs:
Jinja2 with trim_blocks, lstrip_blocks, loop controls, the {% generation %} tag; the special
tokens passed as variables), for tests/test_chat_template.cpp. The templates are SmolLM2's (as
its GGUF holds it), a plain ChatML, GPT-2's plain format (each message's text and eos_token),
Llama 2's, Llama 3's, Zephyr's, Mistral's (roles other than user and assistant raise) and one
that exercises the rest of what ftune's interpreter runs. Each is rendered for every
conversation below, with and without the generation prompt; an exception is recorded as such.

Writes tests/reference/fixtures/chat/templates.json.

    /tmp/ref/bin/python tests/reference/chat_templates.py
"""
import json
import os

import jinja2
import transformers
from transformers.utils.chat_template_utils import render_jinja_template

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "chat", "templates.json")

TEMPLATES = {
    "smollm2": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "gpt2": "{% for message in messages %}{{ message.content }}{{ eos_token }}{% endfor %}",
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    "mistral": "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
    "kitchen_sink": """{#- a comment -#}
{%- set ns = namespace(found=false, n=0, roles=[]) -%}
{%- for m in messages -%}
    {%- if m.role == 'system' %}{% set ns.found = true %}{% endif -%}
    {%- set ns.n = ns.n + 1 -%}
    {%- set ns.roles = ns.roles + [m['role']] -%}
{%- endfor -%}
{%- if not ns.found -%}
<|system|>default, {{ ns.n }} message{{ 's' if ns.n != 1 else '' }}: {{ ns.roles | join(',') }}{{ '\\n' }}
{%- endif %}
{% for m in messages[::-1] if m.role != 'tool' -%}
    [{{ loop.index }}/{{ loop.length }}{{ ' first' if loop.first }}] {{ m.role | upper }} {{ m.content | length }}:
    {%- if m.role == 'assistant' %}{% generation %} {{ m.content | trim }}{% endgeneration %}
    {%- else %} {{ m.content.strip() | replace('\\n', ' ') }}{% endif %}
    {% if m.content.startswith('Hi') %}(greeting){% elif 'joke' in m.content.lower() %}(joke){% endif %}
    {{- ' (' ~ loop.revindex0 ~ ' left)' if not loop.last else '' }}
    {%- if loop.index is even %} even{% endif %}
{% else %}
(empty)
{% endfor %}
{%- if tools is not none %}{{ tools | tojson }}{{ '\\n' }}{{ tools[0]['function'] | tojson(indent=2) }}{% endif -%}
{%- set words = (messages | last)['content'].split() -%}
{{ words | length }} {{ words[-1] if words else '-' }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 2 * 3 + 1 }} {{ 7 / 2 }} {{ [1, 2] + [3] }} {{ 'ab' * 2 }} {{ none }} {{ true }}
{%- for k, v in {'b': 1, 'a': [2, 'x']}.items() %} {{ k }}={{ v }}{% endfor %}
{%- for i in range(3) %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% if i == 2 %}{% break %}{% endif %}{% endfor %}
{% if add_generation_prompt -%}
>>> {% endif %}""",
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello! How are you?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke\nabout cats."},
     {"role": "assistant",
      "content": "  Why did the cat sit on the computer? To keep an eye on the mouse.  "}],
    [{"role": "system", "content": "Système: ünïcödé 😀 {{ not a tag }} {% neither %}"},
     {"role": "user", "content": "quotes ' \" and \\ backslash\ttab"},
     {"role": "assistant", "content": "ok"}],
    [{"role": "user", "content": "Hi"}, {"role": "user", "content": "again"}],
]

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}}]


def main():
    cases = []
    for name, template in TEMPLATES.items():
        for ci, conv in enumerate(CONVERSATIONS):
            for gen in (False, True):
                for tools in ([None, TOOLS] if name == "kitchen_sink" else [None]):
                    case = {"template": name, "conversation": ci, "add_generation_prompt": gen,
                            "tools": tools}
                    try:
                        text, spans = render_jinja_template(
                            [conv], tools=tools, chat_template=template,
                            return_assistant_tokens_mask=True, add_generation_prompt=gen,
                            bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>")
                        text = text[0]
                        # spans of the {% generation %} blocks, in bytes of the UTF-8 text
                        b = lambda i: len(text[:i].encode("utf-8"))
                        case["text"] = text
                        case["generation"] = [[b(s), b(e)] for s, e in spans[0]]
                    except jinja2.exceptions.TemplateError as e:
                        case["error"] = str(e)
                    cases.append(case)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "jinja2": jinja2.__version__,
                   "templates": TEMPLATES, "conversations": CONVERSATIONS, "cases": cases}, f,
                  ensure_ascii=False, indent=1)
    print(OUT, len(cases), "cases,", sum("error" in c for c in cases), "raise")


if __name__ == "__main__":
    main()
