"""The published selectors in an ablation grid: validation from the registry, subsets made by the grid."""

from __future__ import annotations

import pytest
import tomllib

from curate.registry import REGISTRY
from curate.scores import score_workspace
from curate.shards import read_subset
from datasets_spec.errors import UserError
from tests.curate_helpers import copy_workspace
from train.ablation import grid_from_dict, load_grid, plan_ablation
from train.ablation.grid import strategy_option_keys
from train.ablation.run import make_subset

GRID = """
name = "methods"
llms = ["tiny-llama"]
vision = "tiny-clip"
seeds = [0]
budgets = [20, 0.25]

[strategies.semdedup]
n_clusters = 2
[strategies.coincide]
n_clusters = 3
temp = 0.1
[strategies.longest]
strategy = "top-score"
score = "length"
[strategies.shortest]
strategy = "top-score"
score = "length"
ascending = true

[train]
hparams = "tiny-cpu"
"""


def _load(tmp_path, text: str):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return load_grid(path)


def test_grid_option_keys_come_from_the_registry() -> None:
    for name, record in REGISTRY.items():
        keys = strategy_option_keys(name)
        assert set(record.option_names) <= set(keys)
        assert "report" not in keys and "scores" not in keys


def test_grid_with_every_new_method_makes_its_subsets(embedded_workspace, tmp_path) -> None:
    ws = copy_workspace(embedded_workspace, tmp_path)
    score_workspace(ws, "length")
    grid = _load(tmp_path, GRID)
    plan = plan_ablation(grid, lambda require_image: 120)
    names = sorted(s.name for s in plan.subsets if s.strategy is not None)
    assert names == sorted(f"{label}-k{k}" for label in ("semdedup", "coincide", "longest", "shortest")
                           for k in (20, 30))
    chars = {}
    for row in ws.read_dataset(columns=["sample_id", "conversations"]).to_pylist():
        chars[row["sample_id"]] = sum(len(t["value"]) for t in row["conversations"] if t["from"] == "gpt")
    for subset in plan.subsets:
        if subset.strategy is None:
            continue
        table, manifest = read_subset(make_subset(ws, grid, subset))
        assert table.num_rows == subset.k and manifest["strategy"] == subset.strategy.strategy
        if subset.strategy.label == "longest":
            assert min(chars[s] for s in table.column("sample_id").to_pylist()) >= sorted(
                (v for s, v in chars.items() if s in set(_train_ids(ws))), reverse=True)[subset.k - 1]
        if subset.strategy.label == "shortest":
            assert manifest["params"]["ascending"] is True


def _train_ids(ws) -> list[str]:
    rows = ws.read_dataset(columns=["sample_id", "split"]).to_pylist()
    return [r["sample_id"] for r in rows if r["split"] == "train"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('[strategies.semdedup]\ntemp = 0.1', "unknown key 'temp'"),
        ('[strategies.semdedup]\neps = "x"', "eps must be float"),
        ('[strategies.semdedup]\neps = 3.0', "eps=3.0 is outside [0, 2]"),
        ('[strategies.t]\nstrategy = "top-score"', "needs a score set"),
        ('[strategies.coincide]\nreport = 1', "unknown key 'report'"),
    ],
)
def test_bad_method_options_are_refused_before_anything_runs(tmp_path, entry: str, message: str) -> None:
    text = GRID.split("[strategies.semdedup]")[0] + entry + "\n\n[train]\nhparams = \"tiny-cpu\"\n"
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _load(tmp_path, text)


def test_shipped_grid_parses_with_methods() -> None:
    grid = grid_from_dict(tomllib.loads(GRID))
    assert {s.strategy for s in grid.strategies} == {"semdedup", "coincide", "top-score"}


def test_methods_grid_ships_and_validates() -> None:
    from train import ablation

    grid = load_grid(ablation.packaged_grid("scienceqa-methods"))
    assert {s.strategy for s in grid.strategies} == {"random", "semdedup", "coincide", "top-score"}
