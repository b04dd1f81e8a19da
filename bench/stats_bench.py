"""Paired-statistics benchmark: the comparisons of a 26-cell grid on ScienceQA's 4,241 test questions.

The grid of `train/grids/scienceqa-1k.toml` (4 strategies x 3 budgets + the full pool, x 2 LLMs = 26 cells,
one seed each; and the same with 3 seeds) is written as run directories with `predictions.jsonl` and
`metrics.json`, then `train.comparisons.grid_comparisons` computes, with 10,000 bootstrap resamples, every
cell's accuracy interval and its comparisons against full and against random (42 pairs): loading the
predictions included. Goal: under 5 s.

Baseline, in the same run: the textbook paired bootstrap that draws 10,000 x 4,241 question indices per
comparison (timed on a few comparisons, scaled to the grid's count), and its interval beside ours.

Run: `.venv/bin/python bench/stats_bench.py [--seeds 3]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.comparisons import cell_answers, compare_cells, grid_comparisons  # noqa: E402
from train.report import GROUP_KEYS, runs_frame  # noqa: E402

N_QUESTIONS = 4241
RESAMPLES = 10_000
STRATEGIES = ("random", "rules", "l2-maxdiverse", "kmeans-balanced")
BUDGETS = (500, 1000, 2500)
LLMS = ("mistral-7b", "llama2-7b")
POOL = 12726
GOAL_SECONDS = 5.0


def write_grid(root: Path, seeds: int, rng: np.random.Generator) -> list[dict]:
    """Run directories for every cell; accuracy rises with the budget so that the pairs are realistic."""
    rows = []
    cells = [(s, k) for k in BUDGETS for s in STRATEGIES] + [("full", POOL)]
    for llm in LLMS:
        for strategy, k in cells:
            for seed in range(seeds):
                accuracy = 0.6 + 0.3 * np.log(k) / np.log(POOL)
                correct = rng.random(N_QUESTIONS) < accuracy
                budget = "full" if strategy == "full" else f"k{k}"
                run = f"{strategy}-{budget}__{llm}__s{seed}"
                run_dir = root / run
                run_dir.mkdir(parents=True)
                with (run_dir / "predictions.jsonl").open("w") as fh:
                    for i, ok in enumerate(correct):
                        record = {"question_id": str(i), "text": "A", "metadata": {"correct": bool(ok)}}
                        fh.write(json.dumps(record) + "\n")
                (run_dir / "metrics.json").write_text(
                    json.dumps({"split": "test", "Avg": 100 * correct.mean()})
                )
                rows.append(
                    {"strategy": strategy, "budget": budget, "k": k, "llm": llm, "seed": seed, "run": run}
                )
    return rows


def index_bootstrap(d: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """The textbook paired bootstrap: resample question indices, average the per-question differences."""
    means = np.empty(RESAMPLES)
    for start in range(0, RESAMPLES, 1000):  # 1,000 resamples at a time: 34 MB of indices, not 340 MB
        idx = rng.integers(0, d.size, size=(min(1000, RESAMPLES - start), d.size))
        means[start : start + idx.shape[0]] = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="Seeds per cell (runs per cell).")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = write_grid(root, args.seeds, rng)
        full_rows = [
            {
                **r,
                **{
                    c: None for c in ("subset", "steps", "image_fraction", "coverage_radius", "manifest_hash")
                },
            }
            for r in rows
        ]
        runs = runs_frame(full_rows)
        started = time.perf_counter()
        stats, comparisons = grid_comparisons(runs, root, GROUP_KEYS, n_resamples=RESAMPLES)
        ours = time.perf_counter() - started
        started = time.perf_counter()
        answers = cell_answers(runs, root, GROUP_KEYS)
        loading = time.perf_counter() - started
        started = time.perf_counter()
        compare_cells(answers, GROUP_KEYS, stats.schema, n_resamples=RESAMPLES)
        statistics = time.perf_counter() - started
        cells = stats.height
        print(
            f"grid: {cells} cells x {args.seeds} seed(s), {N_QUESTIONS} questions, {RESAMPLES} resamples, "
            f"{len(comparisons)} paired comparisons + {cells} accuracy intervals"
        )
        print(
            f"grid_comparisons, end to end: {ours:.2f} s (goal < {GOAL_SECONDS:.0f} s: "
            f"{'met' if ours < GOAL_SECONDS else 'MISSED'}); reading {len(rows)} predictions files "
            f"{loading:.2f} s, statistics {statistics:.2f} s"
        )

        # Baseline: index resampling on the first few comparisons, scaled to the grid's count.
        by_name = {a.name: a for a in answers.values()}
        sample = comparisons[:4]
        started = time.perf_counter()
        brute = []
        for _, _, result in sample:
            d = 100.0 * (by_name[result.a].per_question() - by_name[result.b].per_question())
            brute.append(index_bootstrap(d, rng))
        per_pair = (time.perf_counter() - started) / len(sample)
        scaled = per_pair * (len(comparisons) + cells)
        print(
            f"index-resampling bootstrap: {per_pair:.2f} s per interval -> {scaled:.1f} s for the grid "
            f"(ratio {scaled / ours:.0f}x)"
        )
        for (_, ref, result), (lo, hi) in zip(sample, brute, strict=True):
            print(
                f"  {result.a} vs {ref}: ours [{result.ci_low:+.2f}, {result.ci_high:+.2f}], "
                f"index resampling [{lo:+.2f}, {hi:+.2f}]"
            )


if __name__ == "__main__":
    main()
