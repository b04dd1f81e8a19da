"""The paired comparisons of an ablation: every cell against its LLM's full-pool cell and against ``random``
at the same budget, plus one verdict line per comparison for the report.

A cell is one row of the ablation table (its group keys: strategy, budget, LLM, compute); its seeds' runs are
stacked and averaged per question (see :mod:`train.paired_stats`). The reference of a comparison shares
every group key except the ones that name the subset: the full-pool cell differs in strategy, budget and
k; the random cell only in strategy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from train.paired_stats import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    PREDICTIONS_FILE,
    SIGNIFICANCE,
    Answers,
    Comparison,
    accuracy_ci,
    compare,
    load_run_answers,
    stack_seeds,
)

FULL = "full"
"""The whole-pool budget, its strategy label in the table, and the name of its subset under shards/: the
reference row every cell is compared against. Defined here, below the ablation package, which reads it in
grids and plans, so that the comparisons and the report it feeds never import the ablation."""

RANDOM = "random"
SUBSET_KEYS = ("strategy", "budget", "k")
REFERENCES = {"full": SUBSET_KEYS, "random": ("strategy",)}
STAT_COLUMNS = {
    "n_questions": pl.Int64,
    "acc_ci_low": pl.Float64,
    "acc_ci_high": pl.Float64,
    **{
        f"vs_{ref}{suffix}": dtype
        for ref in REFERENCES
        for suffix, dtype in (
            ("", pl.Float64),
            ("_low", pl.Float64),
            ("_high", pl.Float64),
            ("_p", pl.Float64),
        )
    },
}


def cell_answers(runs: pl.DataFrame, runs_dir: Path, group_keys: Sequence[str]) -> dict[tuple, Answers]:
    """group key values -> that cell's answers, its seeds stacked in seed order. A cell with a run that
    wrote no predictions file (evaluated elsewhere, or by an older version) gets no statistics."""
    # The compute setting is part of a cell's name only when the grid has more than one.
    single = "compute" not in runs.columns or runs["compute"].n_unique() <= 1
    shown = [k for k in group_keys if k != "compute" or not single]
    cells: dict[tuple, list[Answers | None]] = {}
    for row in runs.sort("seed").iter_rows(named=True):
        key = tuple(row[k] for k in group_keys)
        has_predictions = (runs_dir / row["run"] / PREDICTIONS_FILE).exists()
        cells.setdefault(key, []).append(load_run_answers(runs_dir / row["run"]) if has_predictions else None)
    return {
        key: stack_seeds(cell_name(_shown(group_keys, key, shown)), [a for a in answers if a is not None])
        for key, answers in cells.items()
        if all(a is not None for a in answers)
    }


def _as_dict(group_keys: Sequence[str], values: tuple) -> dict:
    return dict(zip(group_keys, values, strict=True))


def _shown(group_keys: Sequence[str], values: tuple, shown: Sequence[str] | None) -> dict:
    key = _as_dict(group_keys, values)
    return key if shown is None else {k: v for k, v in key.items() if k in shown}


def cell_name(key: Mapping) -> str:
    """A cell as the report names it: ``random k100 tiny-llama`` (plus its compute when it has one)."""
    parts = [str(key["strategy"])]
    if key.get("budget") not in (None, FULL, key["strategy"]):
        parts.append(str(key["budget"]))
    parts.append(str(key["llm"]))
    if key.get("compute"):
        parts.append(f"steps={key['compute']}")
    return " ".join(parts)


def reference_key(
    key: Mapping, ref: str, group_keys: Sequence[str], answers: Mapping[tuple, Answers]
) -> tuple | None:
    """The key of the cell ``key`` is compared with (``ref``: full or random); None when the grid has no
    such cell, or ``key`` is one itself. The full-pool row at the same compute is preferred, and when the
    grid trained the pool at one compute only, that row serves every compute."""
    if key["strategy"] in (FULL, ref):
        return None
    if ref == RANDOM:
        wanted = tuple(RANDOM if k == "strategy" else key[k] for k in group_keys)
        return wanted if wanted in answers else None
    fulls = [_as_dict(group_keys, other) for other in answers]
    fulls = [other for other in fulls if other["strategy"] == FULL and other["llm"] == key["llm"]]
    same = [other for other in fulls if all(other[k] == key[k] for k in group_keys if k not in SUBSET_KEYS)]
    chosen = same or (fulls if len(fulls) == 1 else [])
    return tuple(chosen[0][k] for k in group_keys) if chosen else None


def grid_comparisons(
    runs: pl.DataFrame,
    runs_dir: Path,
    group_keys: Sequence[str],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[pl.DataFrame, list[tuple[dict, str, Comparison]]]:
    """Per cell: its accuracy's bootstrap interval and the comparisons against its references.

    Returns (one row per cell: group keys + STAT_COLUMNS, [(cell key, reference name, Comparison)]).
    Runs evaluated on different questions are refused (UserError naming both).
    """
    answers = cell_answers(runs, runs_dir, list(group_keys))
    schema = {k: runs.schema[k] for k in group_keys} | STAT_COLUMNS
    return compare_cells(answers, list(group_keys), schema, n_resamples=n_resamples, seed=seed)


def compare_cells(
    answers: Mapping[tuple, Answers],
    group_keys: Sequence[str],
    schema: Mapping,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[pl.DataFrame, list[tuple[dict, str, Comparison]]]:
    """:func:`grid_comparisons` on answers already loaded."""
    rows, comparisons = [], []
    for key_values, cell in answers.items():
        key = _as_dict(group_keys, key_values)
        lo, hi = accuracy_ci(cell, n_resamples=n_resamples, seed=seed)
        row = {**key, "n_questions": cell.n_questions, "acc_ci_low": lo, "acc_ci_high": hi}
        for ref in REFERENCES:
            ref_key = reference_key(key, ref, group_keys, answers)
            result = None
            if ref_key is not None:
                # The run-level test is Welch's on the pair, not a variance pooled over the LLM's rows:
                # rows differ in spread by construction (a random 150 varies with its draw, the whole
                # pool has no draw), and pooling understated a random row's spread (train/paired_stats.py).
                result = compare(cell, answers[ref_key], n_resamples=n_resamples, seed=seed)
                comparisons.append((key, ref, result))
            row[f"vs_{ref}"] = None if result is None else result.diff
            row[f"vs_{ref}_low"] = None if result is None else result.ci_low
            row[f"vs_{ref}_high"] = None if result is None else result.ci_high
            row[f"vs_{ref}_p"] = None if result is None else result.p_value
        rows.append(row)
    frame = (
        pl.DataFrame(rows, schema=dict(schema), orient="row") if rows else pl.DataFrame(schema=dict(schema))
    )
    return frame, comparisons


def verdict_lines(comparisons: Sequence[tuple[dict, str, Comparison]]) -> list[str]:
    """Markdown bullet lines, grouped by budget: each strategy against random, then each cell against full;
    the last line says how many of the comparisons are significant (or plainly that none is)."""
    lines: list[str] = []
    by_budget: dict[tuple, list[tuple[dict, str, Comparison]]] = {}
    for key, ref, result in comparisons:
        by_budget.setdefault((key["k"], key["budget"]), []).append((key, ref, result))
    several = len({key.get("compute") for key, _, _ in comparisons}) > 1
    for (_, budget), items in sorted(by_budget.items()):
        lines.append(f"- **{budget}**")
        for ref in ("random", "full"):
            for key, _, result in (item for item in items if item[1] == ref):
                where = ", ".join(_where(key, several))
                lines.append(f"  - {result.verdict(key['strategy'], ref, where)}")
    lines += ["", summary_line(comparisons)]
    return lines


def summary_line(comparisons: Sequence[tuple[dict, str, Comparison]]) -> str:
    """How many comparisons are significant, against random and against full; says plainly when none is."""
    if not comparisons:
        return "No comparisons: the grid has no full-pool or random cell to compare against."
    n_sig = sum(result.significant for _, _, result in comparisons)
    if n_sig == 0:
        return f"None of the {len(comparisons)} comparisons is significant at p < {SIGNIFICANCE}."
    parts = []
    for ref in ("random", "full"):
        results = [result for _, r, result in comparisons if r == ref]
        if results:
            n_ref = sum(result.significant for result in results)
            parts.append(f"{'none' if n_ref == 0 else n_ref} of {len(results)} against {ref}")
    return (
        f"Significant at p < {SIGNIFICANCE}: {'; '.join(parts)}. The p-values are not corrected for the "
        "number of comparisons: about one in twenty comparisons without a true difference is flagged by "
        "chance."
    )


def _where(key: Mapping, several: bool) -> list[str]:
    parts = [f"k={key['k']}", str(key["llm"])]
    if several and key.get("compute"):
        parts.append(f"steps={key['compute']}")
    return parts
