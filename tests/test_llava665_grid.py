"""The shipped LLaVA-665K protocol grid: it parses, validates, resolves to the published recipe, and a
train-only grid starting from a given projector trains without evaluating."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from datasets_spec.errors import UserError
from tests.test_ablation import BASE_GRID, FakeBackend, _grid_file, ws  # noqa: F401 (ws is a fixture)
from train import ablation
from train.ablation.grid import Budget, check_names, load_grid
from train.ablation.plan import build_config, plan_ablation
from train.ablation.run import run_ablation

MIX665K = 665_298


def test_grid_parses_validates_and_gives_the_recipe():
    grid = load_grid(ablation.packaged_grid("llava665k-20pct"))
    check_names(grid)  # every strategy, option, preset and override name is known
    assert grid.llms == ("vicuna-7b",) and grid.vision == "clip-vit-l-336"
    assert grid.budgets == (Budget(fraction=0.2), Budget(full=True))
    assert {s.label for s in grid.strategies} >= {"random", "semdedup", "coincide"}
    assert grid.stage1.projector and grid.eval.skip
    plan = plan_ablation(grid, lambda require_image: MIX665K)
    assert {c.k for c in plan.cells if c.strategy == "random"} == {133_060}  # round(0.2 x 665,298)
    assert "full" in {s.name for s in plan.subsets}  # the reference row; no stage-1 subset is needed
    cell = next(c for c in plan.cells if c.strategy == "random")
    config = build_config(grid, llm=cell.llm, stage="finetune", seed=0, run=cell.run, projector_path=None)
    h = config.stage_hparams("finetune")
    assert (config.lora_r, config.resolved_lora_alpha(), config.max_length) == (128, 256, 2048)
    assert (h.lr, h.projector_lr, h.epochs, h.scheduler, h.warmup_ratio) == (2e-4, 2e-5, 1, "cosine", 0.03)
    assert h.global_batch_size == 128


def test_projector_and_skip_together_refused(tmp_path):
    text = BASE_GRID + '\n[stage1]\nprojector = "p.safetensors"\nskip = true\n'
    with pytest.raises(UserError, match="either projector or skip"):
        load_grid(_grid_file(tmp_path, text))


def test_train_only_grid_from_a_given_projector(tmp_path, ws):  # noqa: F811
    projector = tmp_path / "pretrained.safetensors"
    save_file({"linear_1.weight": torch.zeros(2, 2)}, str(projector))
    text = BASE_GRID.replace("[eval]", "[eval]\nskip = true") + f'\n[stage1]\nprojector = "{projector}"\n'
    grid = load_grid(_grid_file(tmp_path, text))
    fake = FakeBackend()
    md = run_ablation(ws, grid, backend=fake.backend, log=lambda m: None, plots=False)
    kinds = [kind for kind, _ in fake.calls]
    assert "eval" not in kinds and ("train", "stage1__tiny-llama") not in fake.calls
    trained = [name for kind, name in fake.calls if kind == "train"]
    assert trained == ["random-k4__tiny-llama__s0", "rules-k4__tiny-llama__s0", "full__tiny-llama__s0"]
    for run in trained:
        config = (ws.runs_dir / run / "config.json").read_text()
        assert str(projector) in config
    assert "runs/random-k4__tiny-llama__s0" in md.read_text()
    # trained cells are not trained again (no metrics.json, yet the key matches)
    fake.calls.clear()
    run_ablation(ws, grid, backend=fake.backend, log=lambda m: None, plots=False)
    assert [kind for kind, _ in fake.calls] == []


def test_eval_key_unchanged_when_not_skipping(tmp_path):
    grid = load_grid(_grid_file(tmp_path))
    assert "skip" not in grid.eval.key()
    assert dataclasses.replace(grid.eval, skip=True).key()["skip"] is True
