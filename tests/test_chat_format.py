"""Saved checkpoints prompt harnesses exactly as trained: `processor.apply_chat_template` + `processor(...)`
(lmms-eval's llava_hf path) give the ids of the training prompt, for every template."""

from __future__ import annotations

import dataclasses

import pytest
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from train.model import build_llava, save_bundle
from train.templates import TEMPLATES, generation_prompt, tokenize_conversation

QUESTION = "Question: Which is a mammal?\nOptions: (A) whale (B) shark"
CONV = [{"from": "human", "value": f"{QUESTION}\n<image>"}, {"from": "gpt", "value": "The answer is A."},
        {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "It breathes air."}]


@pytest.fixture(scope="module")
def bundles():
    return {llm: build_llava(llm, "tiny-clip", seed=0) for llm in ("tiny-llama", "tiny-llama2-vocab")}


CASES = [(t, "tiny-llama") for t in sorted(TEMPLATES)] + [(t, "tiny-llama2-vocab") for t in
                                                           ("vicuna_v1", "llama_2", "mistral_instruct")]


@pytest.mark.parametrize(("template", "llm"), CASES)
def test_processor_renders_the_trained_prompt(bundles, tmp_path, template, llm):
    bundle = dataclasses.replace(bundles[llm], template=template)
    out = save_bundle(bundle, tmp_path / "model")
    processor = AutoProcessor.from_pretrained(out)
    system = bundle.llm_preset.system_prompt
    n = bundle.num_image_tokens
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(images=image, text=text)["input_ids"][0]
    assert list(ids) == generation_prompt(CONV[0]["value"], bundle.tokenizer, template, num_image_tokens=n,
                                          system=system)
    # text only, and a whole conversation through the saved tokenizer
    plain = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Hi?"}]}],
                                          add_generation_prompt=True)
    assert list(processor(text=plain)["input_ids"][0]) == generation_prompt(
        "Hi?", bundle.tokenizer, template, num_image_tokens=n, system=system)
    tokenizer = AutoTokenizer.from_pretrained(out)
    roles = {"human": "user", "gpt": "assistant"}
    full = tokenizer.apply_chat_template([{"role": roles[t["from"]], "content": t["value"]} for t in CONV],
                                         tokenize=False)
    trained = tokenize_conversation(CONV, bundle.tokenizer, template, num_image_tokens=n, max_length=4096,
                                    system=system)
    assert list(processor(images=image, text=full)["input_ids"][0]) == trained.input_ids


def test_keep_placement_and_resaving_render_the_same(bundles, tmp_path):
    bundle = dataclasses.replace(bundles["tiny-llama"], template="chat_template", image_placement="keep")
    first = save_bundle(bundle, tmp_path / "a")
    again = dataclasses.replace(bundle, tokenizer=AutoTokenizer.from_pretrained(first))
    second = save_bundle(again, tmp_path / "b")
    a, b = (AutoProcessor.from_pretrained(p).chat_template for p in (first, second))
    assert a == b
    messages = [{"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image"}]}]
    text = AutoProcessor.from_pretrained(first).apply_chat_template(messages, add_generation_prompt=True)
    assert f"{QUESTION}\n<image>" in text
