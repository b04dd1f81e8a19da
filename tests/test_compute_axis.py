"""Compute as a grid axis (`steps = "epochs" | "pool" | N`), the evaluation prompt settings of a grid, and
the report's statistics end to end through a fake trainer."""

from __future__ import annotations

import json

import pytest
import tomllib
import torch
from safetensors.torch import save_file

from curate.dataset_store import write_dataset
from curate.pool import pool_rows
from curate.shards import write_subset
from datasets_spec.errors import UserError
from datasets_spec.parts import read_json, write_json
from datasets_spec.schema import rows_to_table
from datasets_spec.workspace import Workspace
from tests.train_helpers import question_rows
from train.ablation import Backend, build_config, grid_from_dict, plan_ablation, run_ablation
from train.ablation.grid import EvalSpec
from train.evaluate import answer_record, select_problems
from train.report import steps_note
from train.scoring import problems_from_rows, score_predictions

GRID = """
name = "t"
llms = ["tiny-llama"]
budgets = [4, "full"]
{steps}
[strategies.random]

[train]
hparams = "tiny-cpu"
overrides = {{ epochs = 2, global_batch_size = 4 }}

[eval]
split = "test"
"""


def _grid(steps: str = ""):
    return grid_from_dict(tomllib.loads(GRID.format(steps=steps)))


def test_steps_parse_as_a_scalar_or_a_list():
    assert _grid().steps == ("epochs",)
    assert _grid('steps = "pool"').steps == ("pool",)
    assert _grid('steps = ["epochs", "pool", 50]').steps == ("epochs", "pool", 50)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ('steps = "fast"', "not a compute setting"),
        ("steps = 0", "at least 1"),
        ("steps = [true]", "expected str or int"),
        ('steps = ["pool", "pool"]', "twice"),
        ("steps = []", "steps is empty"),
    ],
)
def test_bad_steps_are_one_line_errors(steps, message):
    with pytest.raises(UserError, match=message):
        _grid(steps)


def test_each_compute_is_a_cell_and_the_pool_trains_once():
    plan = plan_ablation(_grid('steps = ["epochs", "pool", 50]'), lambda require_image: 12)
    runs = [(c.run, c.compute) for c in plan.cells]
    assert runs == [
        ("random-k4__tiny-llama__epochs__s0", "epochs"),
        ("random-k4__tiny-llama__pool__s0", "pool"),
        ("random-k4__tiny-llama__50__s0", "50"),
        ("full__tiny-llama__epochs__s0", "epochs"),  # under "pool" the whole pool trains the same steps
        ("full__tiny-llama__50__s0", "50"),
    ]
    single = plan_ablation(_grid('steps = "pool"'), lambda require_image: 12)
    assert [c.run for c in single.cells] == ["random-k4__tiny-llama__s0", "full__tiny-llama__s0"]


def test_pool_compute_gives_every_cell_the_pool_steps():
    grid = _grid('steps = ["epochs", "pool", 50]')
    kwargs = {"llm": "tiny-llama", "stage": "finetune", "seed": 0, "run": "r", "projector_path": None}
    epochs = build_config(grid, **kwargs)
    pool = build_config(grid, **kwargs, compute="pool", pool_size=12)
    fixed = build_config(grid, **kwargs, compute="50", pool_size=12)
    # 12 pool samples at batch 4: 3 steps per epoch, 2 epochs -> 6 steps for every cell.
    assert (pool.min_steps, pool.max_steps) == (6, 6)
    assert pool.planned_steps("finetune", 1) == 6 and pool.planned_steps("finetune", 3) == 6
    assert (fixed.min_steps, fixed.max_steps) == (50, 50)
    assert (epochs.min_steps, epochs.max_steps) == (None, None)
    # a 4-sample subset at "epochs": 1 step per epoch, 2 steps
    assert epochs.planned_steps("finetune", 1) == 2


def test_eval_prompt_settings_and_the_cell_key():
    assert EvalSpec().key() == {"split": "test", "limit": None, "batch_size": 16, "max_new_tokens": 64}
    spec = EvalSpec(prompt_format="CQM-A", prompt_suffix="Answer directly.")
    assert spec.key()["prompt_format"] == "CQM-A" and spec.key()["prompt_suffix"] == "Answer directly."
    with pytest.raises(UserError, match=r"^prompt_format: unknown prompt format 'QQQ-A'"):
        EvalSpec(prompt_format="QQQ-A")
    with pytest.raises(UserError, match=r"^grid \[eval\]: prompt_format: unknown prompt format 'QQQ-A'"):
        grid_from_dict(tomllib.loads(GRID.format(steps="") + 'prompt_format = "QQQ-A"\n'))
    grid = grid_from_dict(tomllib.loads(GRID.format(steps="") + 'prompt_format = "CQM-A"\n'))
    assert grid.eval.prompt_format == "CQM-A"


def test_steps_note():
    assert steps_note([1500, 1500]) == "1500 steps each"
    assert steps_note([750, 3000, 750]) == "750-3000 steps: not equal compute"


# --- end to end with a fake trainer that writes predictions -----


def _rows(n_train: int = 12, n_test: int = 10) -> list[dict]:
    return question_rows(n_train, n_test, id_format="{:03d}")


class Fake:
    """Writes what the real backend writes; the full-pool runs answer every question right, the others
    only the questions whose answer is A."""

    def __init__(self):
        self.configs = {}
        self.backend = Backend(make_subset=self.make_subset, train=self.train, evaluate=self.evaluate)

    def make_subset(self, ws, grid, plan, *, command=""):
        table = ws.read_dataset()
        rows = pool_rows(table, grid.split, grid.require_image)[: plan.k]
        strategy = "random" if plan.strategy is None else plan.strategy.strategy
        manifest = {"kind": "select", "strategy": strategy, "k": plan.k, "coverage": {"radius": 0.5}}
        return write_subset(ws, plan.name, table, rows, manifest)

    def train(self, ws, subset_dir, config, *, command=""):
        self.configs[config.run_name] = config
        run_dir = ws.runs_dir / config.run_name
        run_dir.mkdir(parents=True)
        write_json(run_dir / "config.json", {"config": config.to_dict(), "command": command})
        save_file({"linear_1.weight": torch.zeros(2, 2)}, str(run_dir / "projector.safetensors"))
        steps = config.max_steps or 2
        write_json(run_dir / "train_metrics.json", {config.stage: {"steps": steps}})
        return run_dir

    def evaluate(self, ws, run_dir, spec):
        rows = select_problems(ws.read_dataset(), split=spec.split, limit=spec.limit)
        problems = problems_from_rows(rows)
        right = run_dir.name.startswith("full")
        texts = {r["sample_id"]: f"The answer is {'ABC'[r['answer']] if right else 'A'}." for r in rows}
        records = [answer_record(pid, "q", texts[pid], problems[pid], run_dir.name) for pid in texts]
        (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        metrics = {**score_predictions(texts, problems, list(texts)), "split": spec.split}
        write_json(run_dir / "metrics.json", metrics)
        return metrics


def test_equal_compute_grid_end_to_end(tmp_path):
    ws = Workspace(tmp_path / "ws")
    write_dataset(ws, rows_to_table(_rows()), source="synthetic", source_paths={}, image_root=None)
    fake = Fake()
    grid = grid_from_dict(tomllib.loads(GRID.format(steps='steps = "pool"\nseeds = [0, 1]')))
    md = run_ablation(ws, grid, backend=fake.backend, log=lambda m: None, plots=True).read_text()
    assert {c.max_steps for c in fake.configs.values() if c.stage == "finetune"} == {6}
    # random k4 answers A everywhere: right on the 4 A-questions of 10 (ids 012, 015, 018, 021); full on all.
    assert "| random | k4 | 4 | 6 | pool | tiny-llama | 2 | 40.00 ± 0.00 |" in md
    assert "random vs full, k=4, tiny-llama: -60.0 points, 95% CI [" in md
    # 6 discordant questions, all for full: p = 2 / 2**6
    assert "p = 0.0312 (significant at p < 0.05)" in md
    summary = read_json(ws.reports_dir / "ablation.json")
    assert summary["eval_split"] == "test"
    assert (ws.reports_dir / "comparisons.csv").read_text().count("\n") == 2
    assert (ws.reports_dir / "accuracy_vs_budget.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_signal_check_says_what_holds(tmp_path):
    from train.demo import _signal_check

    write_json(tmp_path / "ablation.json", {"chance": 25.0})
    (tmp_path / "ablation.csv").write_text(
        "strategy,k,llm,acc_mean\n"
        "random,100,a,40.0\nrandom,300,a,45.0\nfull,600,a,60.0\n"
        "random,100,b,50.0\nrandom,300,b,48.0\nfull,600,b,49.0\n"
    )
    (tmp_path / "ablation.md").write_text("# T\n\nNone of the 4 comparisons is significant at p < 0.05.\n")
    lines = _signal_check(tmp_path)
    assert lines[0].endswith("does NOT clear twice chance") and "b 49.00% (1.96x)" in lines[0]
    head = "budget check: random then full"
    assert lines[1] == f"{head}, a: 40.00% (k=100) -> 45.00% (k=300) -> 60.00% (k=600): rises"
    assert lines[2] == f"{head}, b: 50.00% (k=100) -> 48.00% (k=300) -> 49.00% (k=600): does NOT rise"
    assert lines[3] == "verdicts: None of the 4 comparisons is significant at p < 0.05."
