"""A deterministic character-level tokenizer for the tiny random models (no hub, no download).

One token per printable ASCII character plus newline and tab; anything else maps to `<unk>`. The
vocabulary is ~100 entries, so embedding tables stay tiny and CPU steps fast, and any English text
round-trips through encode/decode unchanged.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from datasets_spec.schema import IMAGE_TOKEN

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, IMAGE_TOKEN)
CHARACTERS = "".join(chr(c) for c in range(32, 127)) + "\n\t"

# ChatML, the same shape SmolLM2 uses, so the `chat_template` template is testable without real weights.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def char_tokenizer(
    *, chat_template: str | None = CHATML_TEMPLATE, merges: Sequence[tuple[str, str]] = ()
) -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer; the same call always gives the same vocabulary and ids.

    ``merges`` adds BPE merges (multi-character tokens), e.g. to reproduce a tokenizer whose tokens
    cross a template's segment boundary.
    """
    assert set(CHARACTERS) <= set(string.printable)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    # BPE without merges is exactly a character model with an unknown token.
    core = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), unk_token=UNK, fuse_unk=True))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=[IMAGE_TOKEN],
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok
