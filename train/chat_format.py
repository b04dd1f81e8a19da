"""Jinja chat templates that render exactly the prompt a run trained with, for evaluation harnesses.

lmms-eval's `llava_hf` model and VLMEvalKit prompt a LLaVA checkpoint through
``processor.apply_chat_template(messages, add_generation_prompt=True)`` with messages in the multimodal
form (``{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}``) and then
``processor(images=..., text=prompt)``, which tokenizes with the tokenizer's own special tokens. The
template written here turns such messages (or plain-string ones) into the text of this project's
conversation template, with `<image>` placed as the run placed it, so the ids the harness feeds the model
are the ids of :func:`train.templates.generation_prompt`.
"""

from __future__ import annotations

import json

from train.templates import LLAMA_2_SYSTEM, VICUNA_SYSTEM, get_template

MARK = "{#- llava-curate: renders the trained prompt -#}"
OWN = "{#- the tokenizer's own template -#}"

# Messages -> ns.msgs of {role, content: str}; `<image>` moved to the front (LLaVA) or kept in order.
_FLATTEN = """{%- set ns = namespace(msgs=[]) -%}
{%- for m in messages -%}
{%- if m['content'] is string -%}{%- set raw = m['content'] -%}
{%- else -%}{%- set p = namespace(seq=[]) -%}
{%- for c in m['content'] -%}
{%- if c['type'] == 'image' -%}{%- set p.seq = p.seq + ['<image>'] -%}
{%- elif c['type'] == 'text' -%}{%- set p.seq = p.seq + [c['text']] -%}{%- endif -%}
{%- endfor -%}{%- set raw = p.seq | join('\\n') -%}{%- endif -%}
{%- if FRONT and '<image>' in raw -%}
{%- set rest = raw | replace('<image>', '') | trim -%}
{%- set raw = (('<image>\\n' * raw.count('<image>')) + rest) | trim -%}
{%- endif -%}
{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': raw}] -%}
{%- endfor -%}
{%- set msgs = ns.msgs -%}
{%- if msgs and msgs[0]['role'] == 'system' -%}{%- set system = msgs[0]['content'] -%}
{%- set msgs = msgs[1:] -%}{%- else -%}{%- set system = DEFAULT_SYSTEM -%}{%- endif -%}
"""

# One expression per turn (no literal text between tags), so whitespace control cannot eat a space.
_BODIES = {
    "vicuna_v1": (
        "{{ system }}{% for m in msgs %}{% if m['role'] == 'user' %}"
        "{{ (' ' if loop.first else '') + 'USER: ' + m['content'] + ' ASSISTANT:' }}"
        "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    ),
    "mistral_instruct": (
        "{% for m in msgs %}{% if m['role'] == 'user' %}"
        "{{ '[INST] ' + ((system + '\\n\\n') if (loop.first and system) else '') + m['content'] "
        "+ ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
    ),
    "llama_2": (
        "{% for m in msgs %}{% if m['role'] == 'user' %}"
        "{{ ('' if loop.first else bos_token) + '[INST] ' + (('<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n') "
        "if loop.first else '') + m['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
    ),
    "plain": (
        "{% for m in msgs %}{% if loop.index0 == 0 %}{{ '<image>' if '<image>' in m['content'] else '' }}"
        "{% elif loop.index0 == 1 %}{{ m['content'] + '\\n' }}{% endif %}{% endfor %}"
    ),
}


def _literal(value: str | None) -> str:
    # JSON string syntax is a valid Jinja string literal (same escapes), and null needs `none`.
    return "none" if value is None else json.dumps(value)


def adds_bos_itself(tokenizer) -> bool:
    """Whether tokenizing with special tokens (what a processor does) already prepends BOS."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def harness_chat_template(template: str, tokenizer, *, system: str | None = None,
                          image_placement: str = "front") -> str:
    """The Jinja chat template of ``template`` (as trained, with ``system`` as the default system text).

    Templates that start with BOS write ``bos_token`` only when the tokenizer does not add it itself, so
    ``processor(text=...)`` gives exactly one.
    """
    tmpl = get_template(template)
    head = (f"{{%- set FRONT = {'true' if image_placement == 'front' else 'false'} -%}}"
            f"{{%- set DEFAULT_SYSTEM = {_literal(system or _default_system(template))} -%}}")
    bos = "{{ bos_token }}" if tmpl.add_bos and not adds_bos_itself(tokenizer) else ""
    if template == "chat_template":
        # the tokenizer's own template renders the flattened messages
        own = tokenizer.chat_template
        own = own.split(OWN, 1)[1] if own.startswith(MARK) else own  # a saved checkpoint's, unwrapped
        return (MARK + head + _FLATTEN + "{%- set messages = msgs if system is none else "
                "[{'role': 'system', 'content': system}] + msgs -%}" + OWN + own)
    return MARK + head + _FLATTEN + bos + _BODIES[template]


def _default_system(template: str) -> str | None:
    return {"vicuna_v1": VICUNA_SYSTEM, "llama_2": LLAMA_2_SYSTEM}.get(template)
