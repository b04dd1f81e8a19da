"""Conversation templates: masking, image-token expansion, mismatch and overlong detection, prompts."""

from __future__ import annotations

import pytest

from datasets_spec.errors import UserError
from train.templates import (
    IGNORE_INDEX,
    TEMPLATES,
    generation_prompt,
    get_template,
    stop_token_ids,
    tokenize_conversation,
)
from train.tokenizers import char_tokenizer

N_IMG = 5
CONV = [
    {"from": "human", "value": "What colour is the ball?\n<image>"},
    {"from": "gpt", "value": "The answer is B."},
    {"from": "human", "value": "Are you sure?"},
    {"from": "gpt", "value": "Yes, it is red."},
]
REPLIES = ["The answer is B.", "Yes, it is red."]

# What each template must leave unmasked for one reply, written out independently of the templates.
EXPECTED_TARGET = {
    "vicuna_v1": lambda r: f" {r}</s>",
    "mistral_instruct": lambda r: f" {r}</s>",
    "llama_2": lambda r: f" {r} </s>",
    "plain": lambda r: f"{r}\n",
    "chat_template": lambda r: f"{r}<|im_end|>",
}


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def target_spans(tokenizer, sample) -> list[str]:
    """Decode each maximal run of unmasked labels."""
    spans, run = [], []
    for label in sample.labels:
        if label == IGNORE_INDEX:
            if run:
                spans.append(tokenizer.decode(run))
            run = []
        else:
            run.append(label)
    if run:
        spans.append(tokenizer.decode(run))
    return spans


def test_every_template_has_an_expectation():
    assert set(EXPECTED_TARGET) == set(TEMPLATES)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_unmasked_labels_are_exactly_the_assistant_turns(tok, name):
    sample = tokenize_conversation(CONV, tok, name, num_image_tokens=N_IMG, max_length=1000)
    assert not sample.mismatch and not sample.overlong
    replies = REPLIES[:1] if name == "plain" else REPLIES  # plain (stage 1) uses the first exchange only
    assert target_spans(tok, sample) == [EXPECTED_TARGET[name](r) for r in replies]
    # labels equal input ids wherever they are not masked
    for tid, label in zip(sample.input_ids, sample.labels, strict=True):
        assert label in (IGNORE_INDEX, tid)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_image_token_expands_to_patch_count(tok, name):
    image_id = tok.convert_tokens_to_ids("<image>")
    sample = tokenize_conversation(CONV, tok, name, num_image_tokens=N_IMG, max_length=1000)
    positions = [i for i, t in enumerate(sample.input_ids) if t == image_id]
    assert len(positions) == N_IMG
    assert positions == list(range(positions[0], positions[0] + N_IMG))  # one contiguous group
    assert all(sample.labels[i] == IGNORE_INDEX for i in positions)


def test_full_text_is_the_llava_vicuna_prompt(tok):
    sample = tokenize_conversation(CONV, tok, "vicuna_v1", num_image_tokens=1, max_length=1000)
    system = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
              "helpful, detailed, and polite answers to the user's questions.")
    # LLaVA's preprocess_multimodal moves <image> to the front of the turn, followed by a newline.
    expected = (f"<s>{system} USER: <image>\nWhat colour is the ball? ASSISTANT: The answer is B.</s>"
                "USER: Are you sure? ASSISTANT: Yes, it is red.</s>")
    assert tok.decode(sample.input_ids) == expected
    kept = tokenize_conversation(CONV, tok, "vicuna_v1", num_image_tokens=1, max_length=1000,
                                 image_placement="keep")
    assert tok.decode(kept.input_ids) == expected.replace("<image>\nWhat colour is the ball?",
                                                          "What colour is the ball?\n<image>")


@pytest.mark.parametrize("system", [None, "Be brief."])
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_generation_prompt_is_the_training_prefix(tok, name, system):
    conv = CONV[:2]
    sample = tokenize_conversation(conv, tok, name, num_image_tokens=N_IMG, max_length=1000, system=system)
    first_target = next(i for i, lab in enumerate(sample.labels) if lab != IGNORE_INDEX)
    prompt = generation_prompt(conv[0]["value"], tok, name, num_image_tokens=N_IMG, system=system)
    assert prompt == sample.input_ids[:first_target]


def test_system_prompt_replaces_the_default_unless_the_conversation_has_one(tok):
    def text(conv, system):
        sample = tokenize_conversation(
            conv, tok, "vicuna_v1", num_image_tokens=1, max_length=1000, system=system
        )
        return tok.decode(sample.input_ids)

    assert text(CONV[:2], "Be brief.").startswith("<s>Be brief. USER: <image>\nWhat colour")
    own = [{"from": "system", "value": "Own words."}, *CONV[:2]]
    assert text(own, "Be brief.").startswith("<s>Own words. USER:")
    assert text(CONV[:2], None).startswith("<s>A chat between a curious user")


def test_text_only_sample_has_no_image_tokens(tok):
    conv = [{"from": "human", "value": "Which is a noun?"}, {"from": "gpt", "value": "dog"}]
    sample = tokenize_conversation(conv, tok, "mistral_instruct", num_image_tokens=N_IMG, max_length=100)
    assert tok.convert_tokens_to_ids("<image>") not in sample.input_ids
    assert target_spans(tok, sample) == [" dog</s>"]


def test_boundary_crossing_token_is_a_mismatch():
    # ": " as one token crosses vicuna's "ASSISTANT:" | " reply" boundary.
    merged = char_tokenizer(merges=[(":", " ")])
    sample = tokenize_conversation(CONV, merged, "vicuna_v1", num_image_tokens=N_IMG, max_length=1000)
    assert sample.mismatch
    # the same tokenizer lines up with ChatML, whose boundaries are "\n" and special tokens
    ok = tokenize_conversation(CONV, merged, "chat_template", num_image_tokens=N_IMG, max_length=1000)
    assert not ok.mismatch


def test_overlong_is_flagged_and_never_truncated(tok):
    def run(max_length):
        return tokenize_conversation(CONV, tok, "vicuna_v1", num_image_tokens=N_IMG, max_length=max_length)

    full = run(10_000)
    short, exact = run(len(full.input_ids) - 1), run(len(full.input_ids))
    assert short.overlong and not exact.overlong and not full.overlong
    assert short.input_ids == full.input_ids  # the image tokens and answers stay whole


def test_broken_turn_order_raises(tok):
    with pytest.raises(ValueError):
        tokenize_conversation([{"from": "gpt", "value": "x"}], tok, "vicuna_v1", num_image_tokens=1,
                              max_length=50)


def test_unknown_template_lists_the_valid_ones():
    with pytest.raises(UserError) as exc:
        get_template("alpaca")
    for name in TEMPLATES:
        assert name in str(exc.value)


def test_chat_template_without_one_is_a_user_error():
    bare = char_tokenizer(chat_template=None)
    with pytest.raises(UserError, match="no chat template"):
        tokenize_conversation(CONV, bare, "chat_template", num_image_tokens=1, max_length=500)


def test_stop_tokens_end_the_reply(tok):
    assert stop_token_ids(tok, "vicuna_v1") == [tok.eos_token_id]
    assert stop_token_ids(tok, "plain")[0] == tok.convert_tokens_to_ids("\n")
    # the ChatML end token is "<|im_end|>": with characters, its last piece ">" comes first
    assert stop_token_ids(tok, "chat_template")[0] == tok.convert_tokens_to_ids(">")
