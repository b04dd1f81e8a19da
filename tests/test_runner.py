"""Two-stage training on tiny random models: what trains, what is saved, what reloads, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.train_helpers import TINY, cli, logged_losses, logits, private_workspace, run_args, sample_batch
from train.config import TrainConfig
from train.rundir import read_log
from train.runner import merge_run, run_training

# 2 CPU cores: runs stay at a handful of steps of the 2-layer models.


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ws(synthetic_workspace, tmp_path_factory):
    return private_workspace(synthetic_workspace, tmp_path_factory.mktemp("train") / "ws")


@pytest.fixture(scope="module")
def stage1_run(ws):
    config = TrainConfig(stage="pretrain", max_steps=2, run_name="s1", **TINY)
    return run_training(ws, ws.shards_dir / "k12", config, command="test stage 1")


@pytest.fixture(scope="module")
def lora_run(ws, stage1_run):
    config = TrainConfig(
        stage="finetune",
        lora_r=4,
        projector_path=str(stage1_run),
        max_steps=3,
        run_name="s2-lora",
        **dict(TINY, eval_limit=4),
    )
    return run_training(ws, ws.shards_dir / "k12", config, command="test stage 2")


def _base_model(projector=None):
    from train.model import build_llava

    return build_llava("tiny-llama", "tiny-clip", seed=0, projector_path=projector)


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_stage1_changes_only_the_projector(stage1_run):
    from transformers import LlavaForConditionalGeneration

    base = _params(_base_model().model)
    trained = _params(LlavaForConditionalGeneration.from_pretrained(stage1_run / "model"))
    assert base.keys() == trained.keys()
    changed = {n for n in base if not torch.equal(base[n], trained[n])}
    assert changed and all("multi_modal_projector" in n for n in changed)
    assert {n for n in base if "multi_modal_projector" in n} == changed  # every projector tensor moved
    saved = load_file(stage1_run / "projector.safetensors")
    assert torch.equal(saved["linear_1.weight"], trained["model.multi_modal_projector.linear_1.weight"])
    assert not (stage1_run.parent / ".s1.partial").exists()
    record = (stage1_run / "config.json").read_text()
    assert '"dataset_fingerprint"' in record and "test stage 1" in record
    log = read_log(stage1_run)
    assert [e["step"] for e in log if "loss" in e] == [1, 2] and all(e["stage"] == "pretrain" for e in log)


def test_stage2_lora_trains_adapters_and_projector_only(lora_run, stage1_run):
    from transformers import LlavaForConditionalGeneration

    start = _base_model(stage1_run / "projector.safetensors").model
    base = _params(start)
    merged = _params(LlavaForConditionalGeneration.from_pretrained(lora_run / "model"))
    adapter = load_file(lora_run / "adapter" / "adapter_model.safetensors")
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: non-zero means trained
    # Base weights unchanged: merged = base + scale * B @ A exactly where adapters sit, equal elsewhere.
    scale = 8 / 4  # tiny-cpu: alpha = 2 x r
    for name in base:
        prefix = name.removesuffix(".weight")
        a_key = next((k for k in adapter if k.endswith(f".{prefix}.lora_A.weight")), None)
        if "multi_modal_projector" in name:
            assert not torch.equal(base[name], merged[name]), name
        elif a_key is not None:
            b = adapter[a_key.replace("lora_A", "lora_B")]
            torch.testing.assert_close(
                merged[name], base[name] + scale * b @ adapter[a_key], rtol=1e-5, atol=1e-6
            )
        else:
            assert torch.equal(base[name], merged[name]), name
    evals = [e for e in read_log(lora_run) if "eval_scienceqa_accuracy" in e]
    assert evals and evals[0]["eval_scienceqa_total"] == 4 and "eval_loss" in str(read_log(lora_run))


def test_save_reload_and_merge_give_the_same_logits(ws, lora_run, stage1_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from train.model import load_bundle

    bundle = load_bundle(lora_run / "model")
    batch = sample_batch(bundle, ws)
    reloaded = logits(bundle.model, batch)
    rebuilt = PeftModel.from_pretrained(
        _base_model(stage1_run / "projector.safetensors").model, lora_run / "adapter"
    )
    torch.testing.assert_close(logits(rebuilt, batch), reloaded, rtol=1e-4, atol=1e-5)
    out = merge_run(lora_run, tmp_path / "merged")
    standalone = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == standalone.config.image_token_index
    torch.testing.assert_close(logits(standalone, batch), reloaded, rtol=1e-5, atol=1e-6)


def test_tiny_model_overfits_a_handful_of_samples(ws):
    config = TrainConfig(
        stage="finetune",
        lr=5e-3,
        epochs=50,
        global_batch_size=4,
        per_device_batch_size=4,
        run_name="overfit",
        **TINY,
    )
    run = run_training(ws, ws.shards_dir / "k4", config)
    losses = logged_losses(run)
    assert len(losses) == 50
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_min_steps_adds_epochs_to_a_small_subset(ws):
    config = TrainConfig(
        stage="finetune",
        epochs=1,
        min_steps=5,
        global_batch_size=4,
        per_device_batch_size=4,
        scheduler="cosine",
        run_name="min-steps",
        **TINY,
    )
    run = run_training(ws, ws.shards_dir / "k4", config)
    stage2 = json.loads((run / "train_metrics.json").read_text())["finetune"]
    # 4 samples at batch 4 are one step per epoch: five steps are five epochs, on one cosine schedule.
    assert (stage2["steps"], stage2["epochs"]) == (5, 5.0)
    rates = [e["learning_rate"] for e in read_log(run) if "loss" in e]
    assert len(rates) == 5 and rates == sorted(rates, reverse=True) and rates[-1] < rates[0] / 5


def test_planned_steps_raise_epochs_to_min_steps_and_cap_at_max_steps():
    def steps(**kw) -> int:
        return TrainConfig(stage="finetune", **dict(TINY, epochs=10, **kw)).planned_steps("finetune", 25)

    assert steps() == 250
    assert steps(min_steps=750) == 750
    assert steps(min_steps=100) == 250  # enough epochs already: min_steps changes nothing
    assert steps(max_steps=100) == 100
    assert steps(min_steps=750, max_steps=800) == 750


def test_resume_continues_an_interrupted_run(ws, monkeypatch):
    from train.trainer import LlavaTrainer

    config = dict(stage="finetune", max_steps=4, save_steps=2, **TINY)
    done = run_training(ws, ws.shards_dir / "k12", TrainConfig(run_name="whole", **config))
    original = LlavaTrainer.training_step
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        if self.state.global_step >= 2 and calls["n"] == 0:
            calls["n"] += 1
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LlavaTrainer, "training_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_training(ws, ws.shards_dir / "k12", TrainConfig(run_name="cut", **config))
    partial = ws.runs_dir / ".cut.partial"
    assert (partial / "stage2" / "checkpoints" / "checkpoint-2").is_dir() and not (
        ws.runs_dir / "cut"
    ).exists()
    resumed = run_training(ws, ws.shards_dir / "k12", TrainConfig(resume=str(partial), **config))
    assert resumed == ws.runs_dir / "cut" and not partial.exists()
    steps = [e["step"] for e in read_log(resumed) if "loss" in e]
    assert steps == [1, 2, 3, 4]
    whole = load_file(done / "projector.safetensors")
    again = load_file(resumed / "projector.safetensors")
    for key in whole:
        torch.testing.assert_close(again[key], whole[key], rtol=1e-5, atol=1e-6)


def test_dry_run_prints_estimates(ws, capsys):
    models = run_args(ws, "k12", llm="mistral-7b", vision="clip-vit-l-336")
    code, err = cli([*models, "--lora-r", "128", "--deepspeed", "zero3", "--gpus", "8", "--dry-run"])
    assert code == 0, err
    out = capsys.readouterr().out
    assert "8 GPU(s)" in out and "ZeRO-3" in out and "memory per GPU" in out


def test_memory_formula_against_hand_computation():
    from train.dryrun import GIB, memory_per_gpu

    p, t, n = 7_000_000_000, 7_000_000_000, 8
    args = dict(
        micro_batch=1,
        seq=1000,
        hidden=4096,
        layers=32,
        vocab=32000,
        checkpointing=True,
        largest_layer=200_000_000,
    )
    z2 = memory_per_gpu(p, t, gpus=n, zero=2, offload=False, **args)
    z3 = memory_per_gpu(p, t, gpus=n, zero=3, offload=False, **args)
    assert z2["weights"] == 2 * p and z3["weights"] == 2 * p / n
    assert z2["gradients"] == z3["gradients"] == 2 * t / n and z2["optimizer"] == 12 * t / n
    assert z2["activations"] == 1000 * 4096 * (2 * 32 + 34)
    parts = sum(v for k, v in z3.items() if k not in ("overhead", "total"))
    assert z3["total"] == pytest.approx(parts * 1.1 + GIB)


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------


def _bad(ws, *args: str) -> str:
    before = sorted(p.name for p in ws.runs_dir.iterdir()) if ws.runs_dir.exists() else []
    code, err = cli([*run_args(ws), "--preset", "tiny-cpu", "--eval-limit", "0", "--max-steps", "1", *args])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    after = sorted(p.name for p in ws.runs_dir.iterdir()) if ws.runs_dir.exists() else []
    assert after == before
    return lines[0]


def test_subset_without_manifest(ws, tmp_path):
    import shutil

    (tmp_path / "loose").mkdir()
    shutil.copy(ws.shards_dir / "k4" / "part-00000.parquet", tmp_path / "loose")
    assert "no manifest.json" in _bad(ws, "--subset", str(tmp_path / "loose"))


def test_subset_from_another_dataset(ws):
    assert "select the subset again" in _bad(ws, "--subset", str(ws.shards_dir / "foreign"))


def test_empty_subset(ws):
    assert "empty" in _bad(ws, "--subset", str(ws.shards_dir / "empty"))


def test_unknown_preset_lists_them(ws):
    msg = _bad(ws, "--subset", str(ws.shards_dir / "k4"), "--preset", "llava-2")
    assert "llava-1.5" in msg and "scienceqa" in msg and "tiny-cpu" in msg


def test_offline_hub_id_says_how_to_pass_a_local_path(ws, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _bad(ws, "--subset", str(ws.shards_dir / "k4"), "--llm", "nobody/no-such-model")
    assert "offline" in msg and "local" in msg


def test_max_length_too_short_for_image_tokens(ws):
    assert "--max-length" in _bad(ws, "--subset", str(ws.shards_dir / "k4"), "--max-length", "16")


def test_min_steps_above_max_steps(ws):
    # _bad passes --max-steps 1.
    assert "--min-steps 3 is larger than --max-steps 1" in _bad(
        ws, "--subset", str(ws.shards_dir / "k4"), "--min-steps", "3"
    )
    assert "--min-steps must be >= 1" in _bad(ws, "--subset", str(ws.shards_dir / "k4"), "--min-steps", "0")


def test_lora_in_stage_1(ws):
    assert "stage 2" in _bad(
        ws, "--subset", str(ws.shards_dir / "k4"), "--stage", "pretrain", "--lora-r", "8"
    )


def test_resume_from_another_models_checkpoint(ws, stage1_run):
    msg = _bad(
        ws,
        "--subset",
        str(ws.shards_dir / "k4"),
        "--stage",
        "pretrain",
        "--llm",
        "tiny-mistral",
        "--resume",
        str(stage1_run),
    )
    assert "tiny-llama" in msg and "tiny-mistral" in msg


def test_one_run_per_subset_of_a_directory(ws, tmp_path):
    import shutil

    from train.runner import run_subsets

    shards = tmp_path / "shards"
    for name in ("a", "b"):
        shutil.copytree(ws.shards_dir / "k4", shards / name)
    runs = run_subsets(ws, shards, TrainConfig(stage="pretrain", max_steps=1, **TINY))
    assert [r.name for r in runs] == ["a-tiny-llama-pretrain", "b-tiny-llama-pretrain"]
    assert all((r / "projector.safetensors").is_file() for r in runs)


def test_presets_resolve_with_overrides_and_exact_batches():
    from datasets_spec.errors import UserError
    from train.hparams import batch_layout

    lora = TrainConfig(llm="x/y", vision="tiny-clip", preset="llava-1.5", lora_r=128)
    hp = lora.stage_hparams("finetune")
    assert (hp.lr, hp.projector_lr, hp.global_batch_size, lora.resolved_lora_alpha()) == (
        2e-4,
        2e-5,
        128,
        256,
    )
    full = TrainConfig(llm="x/y", vision="tiny-clip", preset="scienceqa", lr=1e-5)
    hp = full.stage_hparams("finetune")
    assert (hp.lr, hp.epochs, hp.global_batch_size, hp.weight_decay) == (1e-5, 15, 32, 0.0)
    assert batch_layout(hp, 1) == (4, 8) and batch_layout(hp, 8) == (4, 1) and batch_layout(hp, 16) == (2, 1)
    with pytest.raises(UserError, match="not a multiple"):
        batch_layout(hp, 3)
    with pytest.raises(UserError, match="llava-1.5"):
        TrainConfig(llm="x/y", vision="tiny-clip", preset="nope")


def test_run_flags_are_the_train_config_fields():
    import dataclasses

    import typer

    from train import cli as train_cli

    params = {p.name: p for p in typer.main.get_command(train_cli.app).commands["run"].params}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(params)
    # Defaults as documented (docs/guide-training.md), not read back from TrainConfig.
    assert params["lora_dropout"].default == 0.05 and params["eval_limit"].default == 64
    assert params["max_length"].default == 2048 and params["preset"].default == "llava-1.5"
    assert params["llm"].default == "tiny-llama" and params["vision"].default == "tiny-clip"
    assert params["global_batch_size"].opts == ["--batch-size"]
    assert params["projector_path"].opts == ["--projector"]
    assert "LoRA rank for stage 2" in params["lora_r"].help
    config = train_cli._config_from_flags(
        {"eval_split": "", "bf16": "false", "warmup_ratio": 0.1, "template": None}
    )
    assert config.eval_split is None and config.bf16 is False and config.warmup_ratio == 0.1
