"""Evaluating in another prompt format than training (LLaVA-1.5 asks CQM-A, answer directly)."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from datasets_spec.errors import UserError
from train.evaluate import SINGLE_PRED_PROMPT, evaluate_bundle, question_text

ROW = {
    "sample_id": "7",
    "question": "Which animal is a mammal?",
    "context": "Look at the picture.",
    "choices": ["cat", "trout"],
    "answer": 0,
    "lecture": "Mammals have fur.",
    "solution": "A cat has fur.",
    "image": "test/7/image.png",
    "conversations": [
        {"from": "human", "value": "training prompt\n<image>"},
        {"from": "gpt", "value": "The answer is A."},
    ],
}


def test_training_prompt_is_the_default():
    assert question_text(ROW) == "training prompt\n<image>"
    assert question_text(ROW, "Say A.") == "training prompt\n<image>\nSay A."


def test_cqm_a_with_the_answer_directly_line_as_llava_1_5_asks_it():
    # LLaVA's conversion: Context first, "N/A" for an empty hint, options "(A) x (B) y", image token last.
    expected = (
        "Context: Look at the picture.\nQuestion: Which animal is a mammal?\n"
        "Options: (A) cat (B) trout\n<image>\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert question_text(ROW, SINGLE_PRED_PROMPT, "CQM-A") == expected
    text_only = dict(ROW, image=None, context="")
    assert question_text(text_only, None, "QCM-A") == (
        "Which animal is a mammal?\nContext: N/A\nOptions: (A) cat (B) trout"
    )


def test_evaluation_asks_in_the_requested_format(synthetic_workspace):
    from train.model import build_llava

    ws = synthetic_workspace
    table = ws.read_dataset()
    table = table.filter(pc.equal(table.column("split"), "test"))
    bundle = build_llava("tiny-llama", "tiny-clip", seed=0)
    records, metrics = evaluate_bundle(
        bundle,
        table,
        ws.image_root(),
        limit=3,
        batch_size=3,
        max_new_tokens=2,
        prompt_format="CQM-A",
        prompt_suffix=SINGLE_PRED_PROMPT,
    )
    assert len(records) == 3 and metrics["total"] == 3
    for record in records:
        assert record["prompt"].startswith("Context: ")
        assert record["prompt"].endswith("\nAnswer with the option's letter from the given choices directly.")
    with pytest.raises(UserError, match="unknown prompt format 'XYZ-A'"):
        evaluate_bundle(bundle, table, ws.image_root(), limit=1, prompt_format="XYZ-A")
