"""Tiny random models (64 wide) with the real LLaMA-2 and Mistral vocabularies: stage 1, stage 2 and
`train eval` run end to end with the exact LLaVA prompts of their templates."""

from __future__ import annotations

import json

import pytest

from tests.train_helpers import private_workspace
from train.config import TrainConfig
from train.evaluate import evaluate_run
from train.rundir import read_log
from train.runner import run_training

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ws(synthetic_workspace, tmp_path_factory):
    return private_workspace(synthetic_workspace, tmp_path_factory.mktemp("vocab-train") / "ws")


@pytest.mark.parametrize(("llm", "template"), [("tiny-llama2-vocab", "llama_2"),
                                               ("tiny-mistral-vocab", "mistral_instruct")])
def test_both_stages_train_and_eval_parses_the_replies(ws, llm, template):
    config = TrainConfig(llm=llm, vision="tiny-clip", stage="both", preset="tiny-cpu", lr=5e-3,
                         epochs=30, global_batch_size=4, per_device_batch_size=4, max_length=512,
                         eval_limit=0, run_name=f"both-{llm}")
    run = run_training(ws, ws.shards_dir / "k4", config)
    summary = json.loads((run / "train_metrics.json").read_text())
    assert summary["pretrain"]["template"] == "plain" and summary["finetune"]["template"] == template
    assert summary["finetune"]["data"]["mismatch"] == 0
    losses = [e["loss"] for e in read_log(run) if "loss" in e and e["stage"] == "finetune"]
    assert losses[-1] < losses[0] / 4, (losses[0], losses[-1])
    metrics = evaluate_run(ws, run, split="train", limit=4, max_new_tokens=8, batch_size=4)
    assert metrics["total"] == 4
    assert metrics["unparsed"] == 0, metrics  # replies in the trained answer format
    assert json.loads((run / "model" / "llava_bundle.json").read_text())["image_placement"] == "front"


@pytest.mark.parametrize(("args", "message"), [
    (["--template", "alpaca"], "error: unknown template 'alpaca' (templates: mistral_instruct, llama_2, "
                               "vicuna_v1, plain, chat_template)"),
    (["--llm", "tiny-llama2-vocab", "--template", "chat_template"],
     "error: template 'chat_template': this tokenizer has no chat template; choose one of mistral_instruct, "
     "llama_2, vicuna_v1, plain"),
    (["--image-placement", "middle"],
     "error: unknown --image-placement 'middle'; choose one of: front, keep"),
])
def test_bad_template_input_is_one_line_and_exit_2(ws, args, message):
    from tests.train_helpers import cli

    code, err = cli(["run", "-w", str(ws.root), "--subset", str(ws.shards_dir / "k4"), "--vision",
                     "tiny-clip", "--preset", "tiny-cpu", "--max-steps", "1", *args])
    assert (code, err.strip()) == (2, message)
    assert not list((ws.root / "runs").glob("*k4-tiny-llama*"))  # nothing half-written
