"""The demo as an experiment with controls: the planted pool, per-strategy budgets, the control verdicts, the
per-cell progress line, and byte-identical tables from the same grid run twice."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from datasets_spec.errors import UserError
from datasets_spec.synthetic import generate_synthetic_scienceqa
from datasets_spec.synthetic_families import FAMILIES
from datasets_spec.synthetic_planted import PLANTED
from datasets_spec.workspace import Workspace
from train.ablation import grid_from_dict, load_grid, plan_ablation, run_ablation
from train.ablation.progress import CellProgress
from train.controls import ControlsSpec, control_lines
from train.paired_stats import Comparison

# --- the planted pool ---------------------------------------------------------------------------------


def _problem_key(folder: Path, pid: str, problem: dict) -> tuple:
    image = folder / "images" / problem["split"] / pid / "image.png"
    digest = hashlib.sha256(image.read_bytes()).hexdigest() if image.exists() else None
    return (problem["question"], problem["hint"], problem["answer"], digest)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return generate_synthetic_scienceqa(
        tmp_path_factory.mktemp("planted") / "sqa", n_train=600, n_val=12, n_test=36, layout="planted"
    )


def test_planted_pool_has_duplicated_and_rare_families(planted):
    problems = json.loads((planted / "problems.json").read_text())
    splits = json.loads((planted / "pid_splits.json").read_text())
    by_skill: dict[str, list[tuple]] = {}
    for pid in splits["train"]:
        by_skill.setdefault(problems[pid]["skill"], []).append(_problem_key(planted, pid, problems[pid]))
    skill = {f.name: f.skill for f in FAMILIES}
    # 600 x 0.8 = 480 rows for the 4 common families (120 each, 10 distinct problems each repeated 12
    # times); the other 120 rows spread over the 8 rare families (15 each, all distinct).
    # (two of the 10 draws may coincide by chance: ``opposite`` has only 4 distinct questions)
    for name in ("color", "count", "animals", "opposite"):
        copies = Counter(by_skill[skill[name]])
        assert sum(copies.values()) == 120
        assert len(copies) <= 10 and all(n % 12 == 0 for n in copies.values())
    assert len(Counter(by_skill[skill["color"]])) == 10  # pictures of a random size and place never repeat
    for name in ("position", "shape", "bars", "map_north", "matter", "units", "tense", "story_count"):
        assert len(by_skill[skill[name]]) == 15
    assert len({key for key in by_skill[skill["bars"]]}) == 15  # random bar heights: all distinct


def test_planted_copies_are_spread_through_the_pool(planted):
    problems = json.loads((planted / "problems.json").read_text())
    train = json.loads((planted / "pid_splits.json").read_text())["train"]
    skills = [problems[pid]["skill"] for pid in train[:100]]
    # shuffled: the first 100 rows hold nearly every family, not one block of copies
    assert len(set(skills)) >= 10


def test_planted_test_split_weights_families_equally(planted):
    problems = json.loads((planted / "problems.json").read_text())
    splits = json.loads((planted / "pid_splits.json").read_text())
    counts = Counter(problems[pid]["skill"] for pid in splits["test"])
    assert sorted(counts.values()) == [3] * 12  # 36 problems, 12 families
    assert Counter(problems[pid]["skill"] for pid in splits["val"]) == Counter({f.skill: 1 for f in FAMILIES})


def test_planted_evaluation_repeats_the_pool(planted):
    problems = json.loads((planted / "problems.json").read_text())
    splits = json.loads((planted / "pid_splits.json").read_text())
    pool: dict[tuple, str] = {}
    for pid in splits["train"]:
        pool.setdefault(_problem_key(planted, pid, problems[pid]), problems[pid]["skill"])
    for split in ("val", "test"):
        for pid in splits[split]:
            key = _problem_key(planted, pid, problems[pid])
            # the same question, hint, answer and picture as a pool problem of its own family
            assert pool.get(key) == problems[pid]["skill"] and problems[pid]["split"] == split
    # each family's pool problems in turn: 3 test problems of a rare family ask 3 different ones
    rare = {f.skill for f in FAMILIES} - {f.skill for f in FAMILIES if f.name in PLANTED.common}
    for skill in rare:
        asked = [p for p in splits["test"] if problems[p]["skill"] == skill]
        keys = [_problem_key(planted, p, problems[p]) for p in asked]
        assert len(keys) == 3 and len(set(keys)) == 3


def test_planted_layout_can_draw_new_evaluation_problems(tmp_path, monkeypatch):
    import datasets_spec.synthetic as synthetic

    monkeypatch.setattr(synthetic, "PLANTED", dataclasses.replace(PLANTED, evaluation_repeats_pool=False))
    folder = synthetic.generate_synthetic_scienceqa(tmp_path / "new", n_train=600, n_val=12, n_test=36,
                                                    layout="planted")
    problems = json.loads((folder / "problems.json").read_text())
    splits = json.loads((folder / "pid_splits.json").read_text())
    pool = {_problem_key(folder, p, problems[p]) for p in splits["train"]}
    bars = [p for p in splits["test"] if problems[p]["skill"] == "Read a bar graph"]
    assert bars and not any(_problem_key(folder, p, problems[p]) in pool for p in bars)  # random heights


def test_planted_layout_is_deterministic(planted, tmp_path):
    again = generate_synthetic_scienceqa(
        tmp_path / "again", n_train=600, n_val=12, n_test=36, layout="planted"
    )
    assert (again / "problems.json").read_bytes() == (planted / "problems.json").read_bytes()


def test_unknown_layout_exits_2_with_one_line(tmp_path):
    from curate import cli
    from tests.cli_helpers import run_app

    code, err = run_app(cli.app, ["ingest", "synthetic", "--layout", "skewed", "-w", str(tmp_path / "ws")])
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "--layout 'skewed'" in err
    assert not (tmp_path / "ws" / "synthetic-source").exists()


# --- per-strategy budgets and the [controls] table ----------------------------------------------------

GRID = {
    "name": "c",
    "llms": ["tiny-llama"],
    "budgets": [4, 8, "full"],
    "strategies": {
        "random": {},
        "random-b": {"strategy": "random", "seed": 1, "budgets": [4]},
        "kcenter": {"strategy": "l2-maxdiverse", "budgets": [4]},
    },
    "controls": {"positive": "kcenter", "negative": "random-b"},
}


def test_strategy_budgets_limit_its_cells():
    plan = plan_ablation(grid_from_dict(GRID), lambda require_image: 20)
    assert sorted(c.run for c in plan.cells) == sorted([
        "random-k4__tiny-llama__s0", "random-k8__tiny-llama__s0", "random-b-k4__tiny-llama__s0",
        "kcenter-k4__tiny-llama__s0", "full__tiny-llama__s0",
    ])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategies": {**GRID["strategies"], "kcenter": {"strategy": "l2-maxdiverse", "budgets": [5]}}},
         "budgets: k5 is not one of the grid's subset budgets (k4, k8)"),
        ({"controls": {"positive": "kmeans"}}, "'kmeans' is not a row under [strategies]"),
        ({"controls": {"negative": "random"}}, "is what controls are compared with"),
        ({"controls": {"positive": "kcenter", "negative": "kcenter"}}, "name the same row"),
        ({"controls": {"postive": "kcenter"}}, "unknown key 'postive'"),
    ],
)
def test_bad_controls_and_budgets_are_refused(change, message):
    with pytest.raises(UserError) as exc:
        grid_from_dict({**GRID, **change})
    assert message in str(exc.value)


def _comparison(diff: float, low: float, high: float, p: float) -> Comparison:
    return Comparison(a="a", b="random", n_questions=300, seeds_a=1, seeds_b=1, acc_a=50 + diff, acc_b=50.0,
                      diff=diff, ci_low=low, ci_high=high, a_better=20, b_better=10, p_value=p)


def _key(strategy: str, llm: str) -> dict:
    return {"strategy": strategy, "budget": "k4", "k": 4, "llm": llm, "compute": "pool"}


def test_control_lines_word_found_and_flagged():
    controls = ControlsSpec(positive="kcenter", negative="random-b")
    comparisons = [
        (_key("kcenter", "tiny-llama"), "random", _comparison(8.0, 2.0, 14.0, 0.011)),
        (_key("kcenter", "tiny-mistral"), "random", _comparison(3.0, -1.0, 7.0, 0.2)),
        (_key("kcenter", "tiny-llama"), "full", _comparison(-1.0, -5.0, 3.0, 0.6)),
        (_key("random-b", "tiny-llama"), "random", _comparison(-1.0, -6.0, 4.0, 0.7)),
        (_key("random-b", "tiny-mistral"), "random", _comparison(1.5, -3.0, 6.0, 0.52)),
    ]
    positive, negative = control_lines(controls, comparisons)
    assert positive == (
        "positive control: kcenter vs random; tiny-llama k=4: +8.0 points [+2.0, +14.0], p = 0.011; "
        "tiny-mistral k=4: +3.0 points [-1.0, +7.0], p = 0.20: found for tiny-llama."
    )
    assert negative.startswith("negative control: random-b vs random; tiny-llama k=4: -1.0 points")
    assert negative.endswith(": not flagged, as it must not be.")


def test_failed_controls_are_said_plainly():
    controls = ControlsSpec(positive="kcenter", negative="random-b")
    comparisons = [
        # significant but the interval is not above 0: a worse selector is not a found positive control
        (_key("kcenter", "tiny-llama"), "random", _comparison(-8.0, -14.0, -2.0, 0.01)),
        (_key("random-b", "tiny-llama"), "random", _comparison(7.0, 1.0, 13.0, 0.03)),
    ]
    positive, negative = control_lines(controls, comparisons)
    assert positive.endswith("NOT found: this grid cannot see an effect of this size, so its 'no difference' "
                             "verdicts say nothing.")
    assert "FLAGGED for tiny-llama" in negative
    assert control_lines(controls, [])[0].endswith("the control did not run")


def test_replicated_control_line_shows_both_p_values():
    import dataclasses

    controls = ControlsSpec(negative="random-b")
    # two draws apart on the questions (p = 0.004) but not beyond the runs' spread (p = 0.31): not flagged
    result = dataclasses.replace(_comparison(-10.0, -25.0, 5.0, 0.31), p_questions=0.0039, p_runs=0.31)
    (negative,) = control_lines(controls, [(_key("random-b", "tiny-llama"), "random", result)])
    assert negative == (
        "negative control: random-b vs random; tiny-llama k=4: -10.0 points [-25.0, +5.0], p = 0.31 "
        "(questions 0.0039, runs 0.31): not flagged, as it must not be."
    )


def test_progress_line_estimates_time_left_from_trained_steps():
    now = [0.0]
    progress = CellProgress(total_cells=3, total_steps=400, clock=lambda: now[0])
    # a reused cell (finished earlier) takes no time and must not make the rate look infinite
    assert progress.done("a", 100, "Avg 50.00%", reused=True) == (
        "[1/3] a: Avg 50.00% | elapsed 0s, ETA unknown"
    )
    now[0] = 60.0
    # 100 trained steps in 60 s; 200 steps left -> 120 s
    assert progress.done("b", 100, "Avg 60.00%") == "[2/3] b: Avg 60.00% | elapsed 1m00s, ETA 2m00s"
    now[0] = 200.0
    assert progress.done("c", 200, "Avg 70.00%").endswith("elapsed 3m20s, all cells done")


# --- the same grid twice: the same bytes ----------------------------------------------------------------

TINY_CONTROL_GRID = """
name = "tiny controls"
llms = ["tiny-llama"]
vision = "tiny-clip"
budgets = [10, "full"]
steps = "pool"

[strategies.random]
[strategies.random-b]
strategy = "random"
seed = 1

[controls]
negative = "random-b"

[stage1]
hparams = "tiny-cpu"
overrides = { max_steps = 2 }

[train]
hparams = "tiny-cpu"
overrides = { epochs = 1, per_device_batch_size = 4 }

[eval]
split = "test"
limit = 6
batch_size = 6
max_new_tokens = 20
"""


def test_the_same_grid_twice_writes_byte_identical_tables(tmp_path):
    from curate.ingest import ingest_synthetic

    grid_path = tmp_path / "grid.toml"
    grid_path.write_text(TINY_CONTROL_GRID)
    tables = {}
    lines: list[str] = []
    for name in ("first", "second"):
        ws = Workspace(tmp_path / name)
        ingest_synthetic(ws, seed=0, n_train=24, n_val=2, n_test=6, prompt_format="QCM-A", layout="planted")
        md = run_ablation(ws, load_grid(grid_path), log=lines.append, plots=False, verbose=False)
        tables[name] = {p.name: p.read_bytes() for p in sorted(ws.reports_dir.glob("*.csv"))}
        assert "negative control: random-b vs random; tiny-llama k=10" in md.read_text()
    assert set(tables["first"]) == {"ablation.csv", "ablation_runs.csv", "comparisons.csv"}
    assert tables["second"] == tables["first"]
    # not verbose: one line per cell, each with its accuracy and the time left
    cell_lines = [line for line in lines if line.startswith("[")]
    assert len(cell_lines) == 2 * 3 and all("Avg " in line and "elapsed" in line for line in cell_lines)
