"""Ablation grids: parsing and bad input, planning subsets and runs, resuming, and the report tables."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import save_file

from curate.dataset_store import write_dataset
from curate.diagnostics import subset_diagnostics
from curate.pool import pool_rows
from curate.shards import read_manifest, write_subset
from datasets_spec.errors import UserError
from datasets_spec.parts import write_json
from datasets_spec.schema import rows_to_table
from datasets_spec.workspace import Workspace
from tests.train_helpers import question_rows
from train import ablation, cli, report
from train.ablation import (
    Backend,
    Budget,
    describe_plan,
    grid_from_dict,
    load_grid,
    plan_ablation,
    run_ablation,
)
from train.ablation.plan import cell_config, finetune_steps
from train.config import TrainConfig
from train.evaluate import select_problems
from train.scoring import CATEGORIES, problems_from_rows, score_predictions

BASE_GRID = """
name = "t"
llms = ["tiny-llama"]
vision = "tiny-clip"
seeds = [0]
budgets = [4, "full"]

[strategies.random]
[strategies.rules]
min_per_subject = 1

[train]
hparams = "tiny-cpu"
overrides = { epochs = 1 }

[eval]
split = "test"
limit = 5
"""


def _rows(n_train: int = 12, n_test: int = 6) -> list[dict]:
    subjects = ("natural science", "social science", "language science")
    return question_rows(n_train, n_test, subjects=subjects, grades=tuple(range(1, 13)))


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    workspace = Workspace(tmp_path / "ws")
    write_dataset(workspace, rows_to_table(_rows()), source="synthetic", source_paths={}, image_root=None)
    return workspace


def _grid_file(tmp_path: Path, text: str = BASE_GRID) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


# --- parsing -----


def test_grid_parses_every_field(tmp_path):
    grid = load_grid(_grid_file(tmp_path))
    assert [s.label for s in grid.strategies] == ["random", "rules"]
    assert grid.strategies[1].options == {"min_per_subject": 1}
    assert grid.budgets == (Budget(k=4), Budget(full=True))
    assert grid.train.overrides == {"epochs": 1}
    assert grid.eval.limit == 5 and grid.eval.split == "test"


@pytest.mark.parametrize(
    ("name", "n_strategies"), [("demo", 3), ("demo-two-backbones", 3), ("scienceqa-1k", 4)]
)
def test_shipped_grids_are_valid(name, n_strategies):
    grid = load_grid(ablation.packaged_grid(name))
    assert len(grid.strategies) == n_strategies and any(b.full for b in grid.budgets)


def test_fraction_budget_resolves_against_pool():
    assert Budget(fraction=0.25).resolve(12) == 3
    assert Budget(fraction=0.01).resolve(12) == 1
    assert Budget(full=True).resolve(12) == 12


def _plan(text: str, pool: int = 12):
    return plan_ablation(grid_from_dict(__import__("tomllib").loads(text)), lambda require_image: pool)


def test_plan_lists_subsets_and_runs():
    plan = _plan(BASE_GRID)
    assert sorted(s.name for s in plan.subsets) == ["full", "random-k4", "rules-k4"]
    assert [c.run for c in plan.cells] == [
        "random-k4__tiny-llama__s0",
        "rules-k4__tiny-llama__s0",
        "full__tiny-llama__s0",
    ]
    assert {c.k for c in plan.cells if c.strategy == "full"} == {12}


def test_demo_cells_cost_their_planned_steps():
    # The demo trains every cell at the pool's compute; the scheduler's estimate is the stage-2 step count.
    grid = load_grid(ablation.packaged_grid("demo"))
    plan = plan_ablation(grid, lambda require_image: 600)

    steps = {c.run: finetune_steps(cell_config(grid, c, pool_size=plan.pool_size), c.k) for c in plan.cells}
    # tiny-llama x (random at 150, 300 and full; random-b and l2-maxdiverse at 150 only) x 2 seeds
    assert len(steps) == 10 and {c.llm for c in plan.cells} == {"tiny-llama"}
    assert sorted({c.subset for c in plan.cells}) == [
        "full", "l2-maxdiverse-k150-s0", "l2-maxdiverse-k150-s1", "random-b-k150-s0", "random-b-k150-s1",
        "random-k150-s0", "random-k150-s1", "random-k300-s0", "random-k300-s1"]
    # every seed draws its own subset; random-b's draws (seeds 100, 101) are never random's (0, 1)
    offsets = {(s.name, s.seed_offset + int(s.strategy.options.get("seed", 0))) for s in plan.subsets
               if s.strategy is not None}
    assert {seed for name, seed in offsets if name.startswith("random-b")} == {100, 101}
    assert {seed for name, seed in offsets if name.startswith("random-k")} == {0, 1}
    assert set(steps.values()) == {1950}  # 600 problems x 13 epochs / batch 4, for every cell
    two = load_grid(ablation.packaged_grid("demo-two-backbones"))
    assert two.llms == ("tiny-llama", "tiny-mistral")
    assert dataclasses.replace(two, llms=grid.llms, name=grid.name) == grid  # the same grid otherwise


# --- bad input: one line, exit 2 -----

# case -> (a line of BASE_GRID, what replaces it, what the one-line error says)
ONE_EDIT_GRIDS = {
    "unknown strategy": ("[strategies.rules]", "[strategies.rulez]", "unknown strategy 'rulez'"),
    "unknown strategy option": ("min_per_subject = 1", "min_per_subjct = 1", "unknown key 'min_per_subjct'"),
    "unknown llm preset": ('llms = ["tiny-llama"]', 'llms = ["tiny-lama"]', "unknown llm preset 'tiny-lama'"),
    "unknown hparams preset": (
        'hparams = "tiny-cpu"', 'hparams = "tiny-gpu"', "unknown hparams preset 'tiny-gpu'"
    ),
    "unknown override": ("epochs = 1", "epoch = 1", "unknown override 'epoch'"),
    "budget above pool": ("budgets = [4,", "budgets = [13,", "larger than the pool"),
    "fraction out of range": ("budgets = [4,", "budgets = [1.5,", "fraction must be in"),
    "duplicate budgets": ("budgets = [4,", "budgets = [4, 4,", "collide on run name"),
    "fraction equal to a k": ("budgets = [4,", "budgets = [4, 0.33,", "collide on run name"),
}
BAD_GRIDS = {
    "unknown top-level key": (BASE_GRID + "\nbugdets = [3]\n", "unknown key 'bugdets'"),
    **{
        case: (BASE_GRID.replace(line, edit), expected)
        for case, (line, edit, expected) in ONE_EDIT_GRIDS.items()
    },
    "colliding run names": (
        BASE_GRID.replace("seeds = [0]", "seeds = [0, 1]").replace(
            'name = "t"', 'name = "t"\nrun_name = "{subset}__{llm}"'
        ),
        "collide on run name",
    ),
    "malformed toml": (BASE_GRID + "\n[eval\n", "malformed TOML"),
}


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run `train ...` through the console entry point (UserError -> one line, exit 2)."""
    monkeypatch.setattr("sys.argv", ["train", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
@pytest.mark.parametrize("plan_only", [True, False])
def test_bad_grid_exits_2_with_one_line(case, plan_only, tmp_path, ws, monkeypatch, capsys):
    text, expected = BAD_GRIDS[case]
    args = ["ablate", "--grid", str(_grid_file(tmp_path, text)), "-w", str(ws.root)]
    code, err = _cli(monkeypatch, capsys, *args, *(["--plan"] if plan_only else []))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], err
    assert not ws.shards_dir.exists() and not ws.runs_dir.exists()


def test_unknown_names_list_the_valid_ones(tmp_path):
    valid = ("valid: centred-correlation, coincide, d2-pruning, influence, kmeans-balanced, l2-maxdiverse, "
             "leverage, random, rules")
    with pytest.raises(UserError, match=valid):
        load_grid(_grid_file(tmp_path, BAD_GRIDS["unknown strategy"][0]))
    with pytest.raises(UserError, match="tiny-llama"):
        load_grid(_grid_file(tmp_path, BAD_GRIDS["unknown llm preset"][0]))


def test_missing_grid_file_exits_2(tmp_path, ws, monkeypatch, capsys):
    code, err = _cli(monkeypatch, capsys, "ablate", "--grid", str(tmp_path / "nope.toml"), "-w", str(ws.root))
    assert code == 2 and "grid file not found" in err


# --- running with a fake trainer: resume -----


class FakeBackend:
    """Subsets, training and evaluation that write the files the real ones write (a subset through
    ``write_subset``, a run's config.json / projector / train_metrics.json, metrics scored by the real
    scorer), without training a model; it logs its calls."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.backend = Backend(make_subset=self.make_subset, train=self.train, evaluate=self.evaluate)

    def make_subset(self, ws, grid, plan, *, command=""):
        self.calls.append(("subset", plan.name))
        table = ws.read_dataset()
        rows = pool_rows(table, grid.split, grid.require_image)[: plan.k]
        strategy = "random" if plan.strategy is None else plan.strategy.strategy
        manifest = {"kind": "select", "strategy": strategy, "k": plan.k, "coverage": {"radius": 1.0 / plan.k}}
        if strategy == "rules":  # the others stand for manifests written before diagnostics were recorded
            pool = pool_rows(table, grid.split, grid.require_image)
            manifest["diagnostics"] = subset_diagnostics(table, pool, rows)
        return write_subset(ws, plan.name, table, rows, manifest)

    def train(self, ws, subset_dir, config: TrainConfig, *, command=""):
        self.calls.append(("train", config.run_name))
        run_dir = ws.runs_dir / config.run_name
        run_dir.mkdir(parents=True)
        write_json(run_dir / "config.json", {"config": config.to_dict(), "command": command})
        save_file({"linear_1.weight": torch.zeros(2, 2)}, str(run_dir / "projector.safetensors"))
        write_json(run_dir / "train_metrics.json", {config.stage: {"steps": 1}})
        return run_dir

    def evaluate(self, ws, run_dir, spec):
        # A fixed answer per run: "A" for every problem, scored against the workspace's real problems.
        self.calls.append(("eval", run_dir.name))
        rows = select_problems(ws.read_dataset(), split=spec.split, limit=spec.limit)
        predictions = {str(r["sample_id"]): "The answer is A." for r in rows}
        metrics = score_predictions(predictions, problems_from_rows(rows), list(predictions))
        write_json(run_dir / "metrics.json", metrics)
        return metrics


def test_ablation_resumes_without_retraining_finished_cells(tmp_path, ws):
    grid = load_grid(_grid_file(tmp_path))
    fake = FakeBackend()
    md = run_ablation(ws, grid, backend=fake.backend, log=lambda m: None, plots=False)
    trained = [name for kind, name in fake.calls if kind == "train"]
    assert trained == [
        "stage1__tiny-llama",
        "random-k4__tiny-llama__s0",
        "rules-k4__tiny-llama__s0",
        "full__tiny-llama__s0",
    ]
    assert md.exists() and (ws.reports_dir / "ablation.csv").exists()
    # the subsets' diagnostics reach both tables
    table = pl.read_csv(ws.reports_dir / "ablation.csv")
    assert {"group_coverage", "mean_difficulty", "near_dup_pairs"} <= set(table.columns)
    d = read_manifest(ws.shards_dir / "rules-k4")["diagnostics"]
    counts = d["groups"][d["finest_group"]]
    rules = table.filter(pl.col("strategy") == "rules").row(0, named=True)
    assert rules["group_coverage"] == f"{d['finest_group']} {counts['subset']}/{counts['pool']}"
    assert rules["mean_difficulty"] == pytest.approx(d["difficulty"]["subset"], abs=1e-4)
    random = table.filter(pl.col("strategy") == "random").row(0, named=True)
    assert random["group_coverage"] is None and random["near_dup_pairs"] is None
    assert "| group cov | mean diff | near-dup pairs |" in md.read_text()

    # Interruption: one cell never got evaluated, another never trained.
    (ws.runs_dir / "rules-k4__tiny-llama__s0" / "metrics.json").unlink()
    finished = ws.runs_dir / "random-k4__tiny-llama__s0" / "metrics.json"
    mtime = finished.stat().st_mtime_ns
    import shutil

    shutil.rmtree(ws.runs_dir / "full__tiny-llama__s0")
    fake.calls.clear()
    run_ablation(ws, grid, backend=fake.backend, log=lambda m: None, plots=False)
    assert fake.calls == [
        ("eval", "rules-k4__tiny-llama__s0"),
        ("train", "full__tiny-llama__s0"),
        ("eval", "full__tiny-llama__s0"),
    ]
    assert finished.stat().st_mtime_ns == mtime

    # A changed training config invalidates every cell (and stage 1 stays: its config did not change).
    changed = load_grid(_grid_file(tmp_path, BASE_GRID.replace("epochs = 1", "epochs = 2")))
    fake.calls.clear()
    run_ablation(ws, changed, backend=fake.backend, log=lambda m: None, plots=False)
    assert [n for kind, n in fake.calls if kind == "train"] == [
        "random-k4__tiny-llama__s0",
        "rules-k4__tiny-llama__s0",
        "full__tiny-llama__s0",
    ]


def test_existing_subset_of_another_size_is_refused(tmp_path, ws):
    grid = load_grid(_grid_file(tmp_path))
    write_subset(ws, "random-k4", ws.read_dataset(), np.arange(5), {"strategy": "random", "k": 5})
    with pytest.raises(UserError, match="k=5"):
        run_ablation(ws, grid, backend=FakeBackend().backend, log=lambda m: None, plots=False)


# --- tables -----


def _run(strategy, k, llm, seed, avg, budget=None):
    return {
        "strategy": strategy,
        "budget": budget or f"k{k}",
        "k": k,
        "llm": llm,
        "seed": seed,
        "compute": "epochs",
        "run": f"{strategy}{k}{llm}{seed}",
        "subset": f"{strategy}-k{k}",
        "Avg": avg,
        **{c: avg - 1 for c in CATEGORIES},
        "steps": 10 * k,
        "image_fraction": 0.5,
        "coverage_radius": 0.1,
        "manifest_hash": f"h-{strategy}-{k}",
    }


def test_summary_mean_std_and_relative_to_full():
    runs = report.runs_frame(
        [
            _run("random", 4, "a", 0, 40.0),
            _run("random", 4, "a", 1, 50.0),
            _run("full", 12, "a", 0, 80.0, "full"),
            _run("full", 12, "a", 1, 80.0, "full"),
            _run("random", 4, "b", 0, 30.0),
            _run("full", 12, "b", 0, 60.0, "full"),
        ]
    )
    s = report.summarize(runs)
    row = s.filter((pl.col("strategy") == "random") & (pl.col("llm") == "a")).row(0, named=True)
    assert row["acc_mean"] == 45.0 and math.isclose(row["acc_std"], math.sqrt(50.0))
    assert math.isclose(row["rel_full"], 100 * 45 / 80) and row["n_seeds"] == 2 and row["seeds"] == "0,1"
    single = s.filter((pl.col("strategy") == "random") & (pl.col("llm") == "b")).row(0, named=True)
    assert single["acc_std"] == 0.0 and math.isclose(single["rel_full"], 50.0)
    assert s.filter(pl.col("strategy") == "full")["rel_full"].to_list() == [100.0, 100.0]
    # full rows come last within each backbone
    assert s["strategy"].to_list() == ["random", "full", "random", "full"]


def test_markdown_and_plots(tmp_path):
    runs = report.runs_frame(
        [
            _run("random", 4, "a", 0, 40.0),
            _run("rules", 4, "a", 0, 45.0),
            _run("random", 8, "a", 0, 50.0),
            _run("full", 12, "a", 0, 80.0, "full"),
        ]
    )
    summary = report.summarize(runs)
    md = report.markdown_table(summary, title="T", chance=30.0)
    # Avg, its CI (none without predictions files), IMG next to Avg, relative to full.
    assert "| random | k4 | 4 | 40 | epochs | a | 1 | 40.00 ± 0.00 | - | 39.00 ± 0.00 | 50.00% |" in md
    assert "h-random-4"[:12] in md and "Chance accuracy on the evaluated problems: 30.00%" in md
    for fn, name in ((report.plot_curves, "c.png"), (report.plot_categories, "b.png")):
        path = fn(summary, tmp_path / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_diagnostic_columns_and_manifests_without_them():
    manifest = {"diagnostics": {"finest_group": "topic", "groups": {"topic": {"subset": 2, "pool": 9}},
                                "difficulty": {"subset": 0.25, "pool": 0.5}, "near_duplicates": {"pairs": 0}}}
    assert report.diagnostic_values(manifest) == {
        "group_coverage": "topic 2/9", "mean_difficulty": 0.25, "near_dup_pairs": 0,
    }
    # a manifest written before diagnostics were recorded
    assert report.diagnostic_values({"image_fraction": 0.5}) == {
        "group_coverage": None, "mean_difficulty": None, "near_dup_pairs": None,
    }
    new = {**_run("rules", 4, "a", 0, 45.0), "group_coverage": "skill 3/5", "mean_difficulty": 0.4567,
           "near_dup_pairs": 2}
    md = report.markdown_table(report.summarize(report.runs_frame([_run("random", 4, "a", 0, 40.0), new])),
                               title="T")
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| strategy"))
    assert "| img frac | coverage radius | group cov | mean diff | near-dup pairs | target |" in header
    rules = next(line for line in lines if line.startswith("| rules"))
    old = next(line for line in lines if line.startswith("| random"))
    assert "| 0.500 | 0.100 | skill 3/5 | 0.457 | 2 | - |" in rules
    assert "| 0.500 | 0.100 | - | - | - | - |" in old


# --- the real pipeline: a 2-cell tiny grid, interrupted and resumed -----

TINY_GRID = """
name = "tiny"
llms = ["tiny-llama"]
vision = "tiny-clip"
budgets = [10, "full"]

[strategies.random]

[stage1]
hparams = "tiny-cpu"
overrides = { max_steps = 2 }

[train]
hparams = "tiny-cpu"
overrides = { max_steps = 2 }

[eval]
split = "test"
limit = 4
batch_size = 4
max_new_tokens = 20
"""


def test_real_tiny_ablation_resumes_after_interruption(tmp_path, monkeypatch):
    from curate.ingest import ingest_synthetic
    from train import runner

    ws = Workspace(tmp_path / "real")
    ingest_synthetic(ws, seed=0, n_train=30, n_val=2, n_test=6, prompt_format="QCM-A")
    grid = load_grid(_grid_file(tmp_path, TINY_GRID))
    real_train = runner.run_training
    trained: list[str] = []

    def interrupted(ws_, subset_dir, config, *, command=""):
        if config.run_name == "full__tiny-llama__s0":
            raise KeyboardInterrupt  # the user pressed Ctrl-C while the second cell trained
        trained.append(config.run_name)
        return real_train(ws_, subset_dir, config, command=command)

    monkeypatch.setattr(runner, "run_training", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(ws, grid, log=lambda m: None, plots=False)
    assert trained == ["stage1__tiny-llama", "random-k10__tiny-llama__s0"]
    done = ws.runs_dir / "random-k10__tiny-llama__s0"
    stamps = {p.name: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()}
    assert "metrics.json" in stamps and "predictions.jsonl" in stamps

    trained.clear()
    monkeypatch.setattr(
        runner, "run_training", lambda *a, **k: (trained.append(a[2].run_name), real_train(*a, **k))[1]
    )
    md = run_ablation(ws, grid, log=lambda m: None, plots=False)
    assert trained == ["full__tiny-llama__s0"]
    assert {p.name: p.stat().st_mtime_ns for p in done.rglob("*") if p.is_file()} == stamps
    runs = pl.read_csv(ws.reports_dir / "ablation_runs.csv")
    assert runs["run"].to_list() == ["random-k10__tiny-llama__s0", "full__tiny-llama__s0"]
    assert runs["steps"].to_list() == [2, 2]  # stage 2's optimiser steps, from train_metrics.json
    assert runs["manifest_hash"].null_count() == 0
    assert "| full | full | 30 | 2 | epochs | tiny-llama |" in md.read_text()


def test_existing_subset_of_another_strategy_is_refused(tmp_path, ws):
    grid = load_grid(_grid_file(tmp_path))
    write_subset(ws, "random-k4", ws.read_dataset(), np.arange(4), {"strategy": "l2-maxdiverse", "k": 4})
    with pytest.raises(UserError, match="made by 'l2-maxdiverse'"):
        run_ablation(ws, grid, backend=FakeBackend().backend, log=lambda m: None, plots=False)


def test_parallel_cells_give_the_same_results_as_sequential(tmp_path):
    from curate.ingest import ingest_synthetic

    grid = load_grid(_grid_file(tmp_path, TINY_GRID))
    predictions = {}
    for jobs in (1, 2):
        ws = Workspace(tmp_path / f"jobs{jobs}")
        ingest_synthetic(ws, seed=0, n_train=30, n_val=2, n_test=6, prompt_format="QCM-A")
        run_ablation(ws, grid, log=print, plots=False, jobs=jobs)
        predictions[jobs] = {
            p.parent.name: [json.loads(line)["text"] for line in p.read_text().splitlines()]
            for p in sorted(ws.runs_dir.glob("*/predictions.jsonl"))
        }
    assert set(predictions[1]) == {"random-k10__tiny-llama__s0", "full__tiny-llama__s0"}
    assert predictions[2] == predictions[1]


def test_pool_split_all_draws_from_every_split(tmp_path, ws):
    # 12 train + 6 test rows: `[pool] split = "all"` is the whole dataset, as for `curate select --split all`.
    text = BASE_GRID.replace("[strategies.random]", '[pool]\nsplit = "all"\n\n[strategies.random]')
    grid = load_grid(_grid_file(tmp_path, text))
    assert describe_plan(ws, grid).startswith("grid 't': pool 18 samples (all), 3 subsets")
    plan = plan_ablation(grid, lambda require_image: Backend().pool_size(ws, grid.split, require_image))
    assert {c.k for c in plan.cells if c.strategy == "full"} == {18}
    full = next(s for s in plan.subsets if s.name == "full")
    made = Backend().make_subset(ws, grid, full)  # the real curate selection of the whole pool
    assert read_manifest(made)["rows"] == 18
    assert sorted(read_manifest(made)["counts"]["split"].items()) == [("test", 6), ("train", 12)]


def test_redraw_subsets_gives_each_seed_its_own_draw(ws):
    text = BASE_GRID.replace("seeds = [0]", "seeds = [0, 1]\nredraw_subsets = true")
    plan = _plan(text)
    assert sorted(s.name for s in plan.subsets) == [
        "full", "random-k4-s0", "random-k4-s1", "rules-k4-s0", "rules-k4-s1"
    ]
    by_run = {c.run: c.subset for c in plan.cells}
    assert by_run["random-k4-s1__tiny-llama__s1"] == "random-k4-s1"
    assert by_run["full__tiny-llama__s0"] == by_run["full__tiny-llama__s1"] == "full"
    # the draws are the strategy's seed + the training seed, through the real selection
    draws = {s.name: s for s in plan.subsets}
    grid = grid_from_dict(__import__("tomllib").loads(text))
    made = {name: Backend().make_subset(ws, grid, draws[name]) for name in ("random-k4-s0", "random-k4-s1")}
    manifests = {name: read_manifest(path) for name, path in made.items()}
    assert [manifests[n]["seed"] for n in ("random-k4-s0", "random-k4-s1")] == [0, 1]
    ids = {n: sorted(read_subset_ids(path)) for n, path in made.items()}
    assert ids["random-k4-s0"] != ids["random-k4-s1"]
    # the default keeps one subset per row: every seed trains on it
    assert sorted(s.name for s in _plan(BASE_GRID.replace("seeds = [0]", "seeds = [0, 1]")).subsets) == [
        "full", "random-k4", "rules-k4"
    ]


def read_subset_ids(path: Path) -> list[str]:
    from curate.shards import read_subset

    return read_subset(path)[0].column("sample_id").to_pylist()


def test_jobs_must_be_positive(tmp_path, ws):
    grid = load_grid(_grid_file(tmp_path))
    with pytest.raises(UserError, match="--jobs must be at least 1"):
        run_ablation(ws, grid, backend=FakeBackend().backend, log=lambda m: None, plots=False, jobs=0)


def test_a_row_of_redrawn_subsets_shows_their_mean_diagnostics():
    draws = [
        {**_run("random", 4, "a", 0, 40.0), "subset": "random-k4-s0", "image_fraction": 0.25,
         "coverage_radius": 0.5, "group_coverage": "skill 3/5", "mean_difficulty": 0.2, "near_dup_pairs": 1},
        {**_run("random", 4, "a", 1, 50.0), "subset": "random-k4-s1", "image_fraction": 0.75,
         "coverage_radius": 0.25, "group_coverage": "skill 4/5", "mean_difficulty": 0.4, "near_dup_pairs": 4},
    ]
    row = report.summarize(report.runs_frame(draws)).row(0, named=True)
    # hand-computed means of the two draws (not seed 0's values)
    assert row["image_fraction"] == 0.5 and row["coverage_radius"] == 0.375
    assert math.isclose(row["mean_difficulty"], 0.3) and row["near_dup_pairs"] == 3  # 2.5 rounds half up
    assert row["group_coverage"] == "skill 3/5 | skill 4/5"
