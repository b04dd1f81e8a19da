"""The ablation report's paired comparisons: references (full, random), the table columns, the verdicts."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from datasets_spec.errors import UserError
from train import report
from train.comparisons import grid_comparisons, verdict_lines

N = 40


def _write(runs_dir, run, correct, split="test", ids=None):
    run_dir = runs_dir / run
    run_dir.mkdir(parents=True)
    ids = ids or [f"q{i:02d}" for i in range(len(correct))]
    with (run_dir / "predictions.jsonl").open("w") as fh:
        for qid, ok in zip(ids, correct, strict=True):
            fh.write(json.dumps({"question_id": qid, "text": "A", "metadata": {"correct": bool(ok)}}) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps({"split": split}))


def _row(strategy, k, seed, avg, llm="tiny-llama"):
    budget = "full" if strategy == "full" else f"k{k}"
    return {
        "strategy": strategy,
        "budget": budget,
        "k": k,
        "llm": llm,
        "seed": seed,
        "compute": "epochs",
        "run": f"{strategy}-{budget}__{llm}__s{seed}",
        "subset": f"{strategy}-{budget}",
        "Avg": avg,
        **{c: avg for c in report.CATEGORIES},
        "steps": 100,
        "image_fraction": 0.5,
        "coverage_radius": 0.1,
        "manifest_hash": "h",
    }


@pytest.fixture()
def grid(tmp_path):
    """full: 36/40 right; random k10: 20/40 (two identical seeds); rules: random's, 2 more right."""
    runs_dir = tmp_path / "runs"
    full = [1] * 36 + [0] * 4
    rand = [1] * 20 + [0] * 20
    rules = [1] * 22 + [0] * 18
    rows = [_row("full", 100, 0, 90.0), _row("random", 10, 0, 50.0), _row("random", 10, 1, 50.0)]
    rows.append(_row("rules", 10, 0, 55.0))
    for row, correct in zip(rows, [full, rand, rand, rules], strict=True):
        _write(runs_dir, row["run"], correct)
    return runs_dir, report.runs_frame(rows)


def test_every_cell_is_compared_with_full_and_random(grid):
    runs_dir, runs = grid
    stats, comparisons = grid_comparisons(runs, runs_dir, report.GROUP_KEYS)
    pairs = {(key["strategy"], ref): result for key, ref, result in comparisons}
    assert set(pairs) == {("random", "full"), ("rules", "full"), ("rules", "random")}
    # random vs full: full is right on 16 questions random misses, never the reverse -> p = 2 / 2**16.
    r = pairs[("random", "full")]
    assert math.isclose(r.diff, -40.0) and (r.a_better, r.b_better) == (0, 16)
    assert math.isclose(r.p_value, 2 / 2**16) and r.seeds_a == 2 and r.seeds_b == 1
    # rules vs random: 2 discordant questions, both for rules -> p = 2 / 2**2 = 0.5.
    r = pairs[("rules", "random")]
    assert math.isclose(r.diff, 5.0) and math.isclose(r.p_value, 0.5)
    row = stats.filter(pl.col("strategy") == "rules").row(0, named=True)
    assert math.isclose(row["vs_random"], 5.0) and math.isclose(row["vs_random_p"], 0.5)
    assert row["n_questions"] == N and row["acc_ci_low"] < 55.0 < row["acc_ci_high"]
    assert stats.filter(pl.col("strategy") == "full")["vs_full"].to_list() == [None]


def test_table_and_verdicts(grid):
    runs_dir, runs = grid
    stats, comparisons = grid_comparisons(runs, runs_dir, report.GROUP_KEYS)
    summary = report.summarize(runs, stats)
    lines = verdict_lines(comparisons)
    md = report.markdown_table(summary, title="T", verdicts=lines)
    assert "| rules | k10 | 10 | 100 | epochs | tiny-llama | 1 | 55.00 ± 0.00 |" in md
    assert "| +5.0 [" in md and "| 0.50 |" in md
    assert "| random | k10 | 10 | 100 | epochs | tiny-llama | 2 | 50.00 ± 0.00 |" in md
    assert "## Verdicts" in md
    assert any(
        line.strip().startswith("- rules vs random, k=10, tiny-llama: +5.0 points, 95% CI [")
        for line in lines
    )
    assert any(
        "random vs full, k=10, tiny-llama: -40.0 points" in line and "significant" in line for line in lines
    )
    assert lines[-1].startswith("Significant at p < 0.05: none of 1 against random; 2 of 2 against full.")


def test_no_significant_comparison_is_said_plainly(tmp_path):
    runs_dir = tmp_path / "runs"
    same = [1, 0] * (N // 2)
    rows = [_row("full", 100, 0, 50.0), _row("random", 10, 0, 50.0)]
    for row in rows:
        _write(runs_dir, row["run"], same)
    _, comparisons = grid_comparisons(report.runs_frame(rows), runs_dir, report.GROUP_KEYS)
    assert verdict_lines(comparisons)[-1] == "None of the 1 comparisons is significant at p < 0.05."


def test_cells_evaluated_on_different_splits_are_refused(tmp_path):
    runs_dir = tmp_path / "runs"
    rows = [_row("full", 100, 0, 50.0), _row("random", 10, 0, 50.0)]
    _write(runs_dir, rows[0]["run"], [1] * N)
    _write(runs_dir, rows[1]["run"], [1] * N, split="val")
    with pytest.raises(UserError, match=r"cannot compare random k10 tiny-llama with full tiny-llama"):
        grid_comparisons(report.runs_frame(rows), runs_dir, report.GROUP_KEYS)


def test_seeds_of_one_cell_on_different_questions_are_refused(tmp_path):
    runs_dir = tmp_path / "runs"
    rows = [_row("random", 10, 0, 50.0), _row("random", 10, 1, 50.0)]
    _write(runs_dir, rows[0]["run"], [1] * 3, ids=["a", "b", "c"])
    _write(runs_dir, rows[1]["run"], [1] * 3, ids=["a", "b", "d"])
    with pytest.raises(UserError, match=r"random-k10__tiny-llama__s0 with random-k10__tiny-llama__s1"):
        grid_comparisons(report.runs_frame(rows), runs_dir, report.GROUP_KEYS)


def test_run_level_p_is_welch_on_the_pair_whatever_the_other_rows_spread():
    """Two replicated rows that differ, beside a third with no spread: the run-level p of the pair is
    scipy's Welch test on the pair's run accuracies alone (a variance pooled with the third row would
    shrink the spread and the p-value)."""
    import numpy as np
    from scipy import stats as scipy_stats

    from train.comparisons import compare_cells
    from train.paired_stats import Answers

    ids = tuple(f"q{i:03d}" for i in range(100))

    def cell(name, rights):
        correct = np.zeros((len(rights), 100), dtype=bool)
        for row, n in enumerate(rights):
            correct[row, :n] = True
        return Answers(name, "test", ids, correct)

    keys = ("strategy", "k", "llm")
    answers = {("random", 10, "a"): cell("random", [40, 48]),
               ("random-b", 10, "a"): cell("random-b", [60, 66]),
               ("random-c", 10, "a"): cell("random-c", [50, 50])}
    schema = {"strategy": pl.String, "k": pl.Int64, "llm": pl.String} | report.STAT_COLUMNS
    _, comparisons = compare_cells(answers, keys, schema, n_resamples=200)
    result = next(r for key, ref, r in comparisons if key["strategy"] == "random-b" and ref == "random")
    expected = scipy_stats.ttest_ind([60.0, 66.0], [40.0, 48.0], equal_var=False).pvalue
    assert result.p_runs == pytest.approx(expected, rel=1e-6)
    assert result.p_value == max(result.p_questions, result.p_runs)
