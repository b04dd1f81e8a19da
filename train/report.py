"""Ablation results: per-run rows -> one row per (strategy, budget, LLM) with mean +- std over seeds, then
``reports/ablation.{csv,md}`` and PNG plots (data-efficiency curves, per-category bars).

Every row keeps the subset's manifest hash, so each number traces back to the exact subset and config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from curate.diagnostics import group_cell
from curate.shards import manifest_value, subset_hash
from datasets_spec.parts import read_json, write_json
from datasets_spec.workspace import Workspace
from train.comparisons import FULL, STAT_COLUMNS, grid_comparisons, verdict_lines
from train.controls import control_lines
from train.paired_stats import DEFAULT_LEVEL, format_p
from train.rundir import METRICS_FILE, TRAIN_METRICS_FILE
from train.scoring import ACCURACY, CATEGORIES, metrics_value

if TYPE_CHECKING:
    from train.ablation.grid import AblationGrid
    from train.ablation.plan import Plan

# LLaVA-1.5's headline ScienceQA number: accuracy on the image questions; shown next to Avg everywhere.
IMAGE = "IMG"
# One table row per (strategy, budget, LLM, compute); seeds are averaged within a row.
GROUP_KEYS = ("strategy", "budget", "k", "llm", "compute")
CSV_NAME = "ablation.csv"
RUNS_CSV_NAME = "ablation_runs.csv"
MD_NAME = "ablation.md"
CURVE_PNG = "accuracy_vs_budget.png"
CATEGORY_PNG = "category_accuracy.png"
COMPARISONS_CSV_NAME = "comparisons.csv"


# --- tables -------------------------------------------------------------------------------------------


def run_rows(ws: Workspace, plan: Plan, manifests: Mapping[str, Mapping]) -> list[dict]:
    """One dict per evaluated cell of ``plan``: cell identity, metrics, and its subset's manifest facts."""
    rows = []
    for cell in plan.cells:
        path = ws.runs_dir / cell.run / METRICS_FILE
        if not path.exists():
            continue
        metrics = read_json(path)
        manifest = manifests[cell.subset]
        row = {
            "strategy": cell.strategy,
            "budget": cell.budget,
            "k": cell.k,
            "llm": cell.llm,
            "seed": cell.seed,
            "compute": cell.compute,
            "run": cell.run,
            "subset": cell.subset,
        }
        for name in (*CATEGORIES, ACCURACY):
            row[name] = _float(metrics_value(metrics, name))
        row["steps"] = _stage2_steps(ws.runs_dir / cell.run)
        row["image_fraction"] = _float(manifest_value(manifest, "image_fraction"))
        row["coverage_radius"] = _float(manifest_value(manifest, "coverage.radius"))
        row.update(diagnostic_values(manifest))
        row["manifest_hash"] = subset_hash(manifest)
        row["target"] = target_label(manifest)
        rows.append(row)
    return rows


# The manifest's ``diagnostics`` (curate/diagnostics.py) in the tables; None (shown "-") for a manifest
# written before they were recorded. ``group_coverage`` is "<column> subset/pool" for the finest group column.
DIAGNOSTIC_COLUMNS = {"group_coverage": pl.String, "mean_difficulty": pl.Float64, "near_dup_pairs": pl.Int64}


def diagnostic_values(manifest: Mapping) -> dict:
    """The :data:`DIAGNOSTIC_COLUMNS` of one subset's manifest."""
    pairs = manifest_value(manifest, "diagnostics.near_duplicates.pairs")
    return {
        "group_coverage": group_cell(manifest),
        "mean_difficulty": _float(manifest_value(manifest, "diagnostics.difficulty.subset")),
        "near_dup_pairs": None if pairs is None else int(pairs),
    }


def target_label(manifest: Mapping) -> str | None:
    """Which data a target-aware strategy (influence) selected for, e.g. ``split val (30 rows, by
    subject)``; None for the others."""
    target = manifest_value(manifest, "strategy_report.target")
    if not isinstance(target, Mapping):
        return None
    by = f", by {target['group_by']}" if target.get("group_by") else ""
    return f"{target.get('kind')} {target.get('name')} ({target.get('rows')} rows{by})"


def _stage2_steps(run_dir: Path) -> int:
    """Optimiser steps of the run's stage 2 (what the cell paid for), from train_metrics.json."""
    return int(read_json(run_dir / TRAIN_METRICS_FILE)["finetune"]["steps"])


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


RUN_SCHEMA = {
    "strategy": pl.String,
    "budget": pl.String,
    "k": pl.Int64,
    "llm": pl.String,
    "seed": pl.Int64,
    "compute": pl.String,
    "run": pl.String,
    "subset": pl.String,
    **{c: pl.Float64 for c in (*CATEGORIES, ACCURACY)},
    "steps": pl.Int64,
    "image_fraction": pl.Float64,
    "coverage_radius": pl.Float64,
    **DIAGNOSTIC_COLUMNS,
    "manifest_hash": pl.String,
    "target": pl.String,
}


def runs_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=RUN_SCHEMA, orient="row") if rows else pl.DataFrame(schema=RUN_SCHEMA)


def _distinct_joined(column: str) -> pl.Expr:
    """The row's distinct values of a string column joined by `` | `` (null when it has none)."""
    joined = pl.col(column).drop_nulls().unique(maintain_order=True).str.join(" | ")
    return pl.when(pl.col(column).drop_nulls().len() > 0).then(joined).otherwise(None).alias(column)


def summarize(runs: pl.DataFrame, stats: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (strategy, budget, k, llm): mean and std (sample std, 0 for one seed) over seeds of
    Avg and IMG, mean of every category, and accuracy relative to the same LLM's ``full`` row (in %).
    ``stats`` (from :func:`train.comparisons.grid_comparisons`) adds the paired-statistics columns."""
    aggs = [
        pl.len().alias("n_seeds"),
        pl.col(ACCURACY).mean().alias("acc_mean"),
        pl.col(ACCURACY).std(ddof=1).fill_null(0.0).fill_nan(0.0).alias("acc_std"),
        *[pl.col(c).mean().alias(c) for c in CATEGORIES],
        pl.col(IMAGE).std(ddof=1).fill_null(0.0).fill_nan(0.0).alias(f"{IMAGE}_std"),
        pl.col("steps").max(),
        # A row's subsets differ when every seed drew its own (redraw_subsets): their mean diagnostics
        # (the distinct group coverages, joined); with one subset these are that subset's values.
        pl.col("image_fraction").mean(),
        pl.col("coverage_radius").mean(),
        _distinct_joined("group_coverage"),
        pl.col("mean_difficulty").mean(),
        (pl.col("near_dup_pairs").mean() + 0.5).floor().cast(pl.Int64).alias("near_dup_pairs"),  # half up
        pl.col("manifest_hash").first(),
        pl.col("target").first(),
        pl.col("seed").sort().cast(pl.String).str.join(",").alias("seeds"),
    ]
    summary = runs.group_by(list(GROUP_KEYS), maintain_order=True).agg(aggs)
    # The reference of rel_full: the LLM's full row at the same compute, or its only full row.
    full = summary.filter(pl.col("strategy") == FULL).select(
        "llm", "compute", pl.col("acc_mean").alias("_full")
    )
    only = full.group_by("llm").agg(pl.col("_full").first().alias("_only"), pl.len().alias("_n"))
    summary = (
        summary.join(full, on=["llm", "compute"], how="left")
        .join(only.filter(pl.col("_n") == 1).select("llm", "_only"), on="llm", how="left")
        .with_columns(pl.coalesce("_full", "_only").alias("_full"))
        .drop("_only")
    )
    summary = summary.with_columns(
        pl.when(pl.col("_full") > 0)
        .then(100.0 * pl.col("acc_mean") / pl.col("_full"))
        .otherwise(None)
        .alias("rel_full")
    ).drop("_full")
    if stats is not None:
        summary = summary.join(stats, on=list(GROUP_KEYS), how="left")
    else:
        summary = summary.with_columns(
            pl.lit(None, dtype=dtype).alias(c) for c, dtype in STAT_COLUMNS.items()
        )
    order = pl.col("strategy") == FULL
    return summary.sort(["llm", "compute", order, "strategy", "k"])


def markdown_table(
    summary: pl.DataFrame,
    *,
    title: str,
    chance: float | None = None,
    verdicts: list[str] | None = None,
    controls: list[str] | None = None,
) -> str:
    """The ablation table as GitHub markdown (percentages with two decimals), then the controls' lines and
    the verdicts."""
    level = f"{100 * DEFAULT_LEVEL:.0f}%"
    head = [
        "strategy",
        "budget",
        "k",
        "steps",
        "compute",
        "LLM",
        "seeds",
        "Avg (mean ± std)",
        f"Avg {level} CI",
        "IMG (mean ± std)",
        "rel. full",
        f"Δ full [{level} CI]",
        "p (vs full)",
        f"Δ random [{level} CI]",
        "p (vs random)",
        *[c for c in CATEGORIES if c != IMAGE],
        "img frac",
        "coverage radius",
        "group cov",
        "mean diff",
        "near-dup pairs",
        "target",
        "manifest",
    ]
    lines = [f"# {title}", ""]
    if chance is not None:
        lines += [f"Chance accuracy on the evaluated problems: {chance:.2f}%.", ""]
    lines += [STATS_NOTE, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in summary.iter_rows(named=True):
        cells = [
            r["strategy"],
            r["budget"],
            str(r["k"]),
            "-" if r["steps"] is None else str(r["steps"]),
            r["compute"],
            r["llm"],
            str(r["n_seeds"]),
            f"{_fmt(r['acc_mean'])} ± {_fmt(r['acc_std'])}",
            _interval(r.get("acc_ci_low"), r.get("acc_ci_high"), signed=False),
            f"{_fmt(r[IMAGE])} ± {_fmt(r[f'{IMAGE}_std'])}",
            _fmt(r["rel_full"], suffix="%"),
            *_versus(r, "full"),
            *_versus(r, "random"),
            *[_fmt(r[c]) for c in CATEGORIES if c != IMAGE],
            _fmt(r["image_fraction"], digits=3),
            _fmt(r["coverage_radius"], digits=3),
            r.get("group_coverage") or "-",
            _fmt(r.get("mean_difficulty"), digits=3),
            "-" if r.get("near_dup_pairs") is None else str(r["near_dup_pairs"]),
            r.get("target") or "-",
            (r["manifest_hash"] or "-")[:12],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if controls:
        lines += ["", "## Controls", "", *(f"- {line}" for line in controls)]
    if verdicts:
        lines += ["", "## Verdicts", "", *verdicts]
    return "\n".join(lines) + "\n"


STATS_NOTE = (
    "`seeds` is the number of training seeds behind each row. Paired statistics, question by question: "
    "the CI of Avg and every Δ (difference in points against the same LLM's full-pool row, and against "
    "`random` at the same budget) are 95% percentile-bootstrap intervals over the evaluated questions "
    "(10,000 resamples) with each cell's seeds averaged per question; p is the exact McNemar test on the "
    "questions one cell gets right and the other wrong (with several seeds: the exact sign-flip permutation "
    "test on the per-question seed-mean differences, McNemar's test extended to them). A row with one seed "
    "still has its interval: it measures which questions were asked, not seed noise. With replicated rows "
    "(several seeds, with `redraw_subsets` one subset draw each), p is also the run-level t-test on the "
    "runs' accuracies (Welch's, each row's own spread), and the larger of the two "
    "p-values is shown, the CI widened to cover both intervals: a difference counts only if it stands out "
    "from both the question sampling and the run-to-run spread (`comparisons.csv` keeps `p_questions` and "
    "`p_runs`)."
)


def _interval(low: Any, high: Any, *, signed: bool = True) -> str:
    if low is None or high is None or low != low:
        return "-"
    form = "+.1f" if signed else ".1f"
    return f"[{low:{form}}, {high:{form}}]"


def _versus(r: Mapping, ref: str) -> list[str]:
    diff = r.get(f"vs_{ref}")
    if diff is None or diff != diff:
        return ["-", "-"]
    return [f"{diff:+.1f} {_interval(r[f'vs_{ref}_low'], r[f'vs_{ref}_high'])}", format_p(r[f"vs_{ref}_p"])]


def _fmt(value: Any, *, digits: int = 2, suffix: str = "") -> str:
    if value is None or value != value:  # None or NaN: no evaluated problem in that category
        return "-"
    return f"{value:.{digits}f}{suffix}"


def write_tables(
    reports_dir: Path,
    runs: pl.DataFrame,
    summary: pl.DataFrame,
    *,
    title: str,
    chance: float | None = None,
    comparisons: list | None = None,
    controls: list[str] | None = None,
) -> Path:
    reports_dir.mkdir(parents=True, exist_ok=True)
    runs.write_csv(reports_dir / RUNS_CSV_NAME, float_precision=4)
    summary.write_csv(reports_dir / CSV_NAME, float_precision=4)
    comparisons = comparisons or []
    comparisons_frame(comparisons).write_csv(reports_dir / COMPARISONS_CSV_NAME, float_precision=4)
    md = reports_dir / MD_NAME
    verdicts = verdict_lines(comparisons) if comparisons else None
    md.write_text(markdown_table(summary, title=title, chance=chance, verdicts=verdicts, controls=controls))
    return md


def comparisons_frame(comparisons: list) -> pl.DataFrame:
    """One row per paired comparison: both cells, the difference (a - b, points), CI, counts, p."""
    rows = [
        {
            "a": result.a,
            "b": result.b,
            "reference": ref,
            "llm": key["llm"],
            "k": key["k"],
            "n_questions": result.n_questions,
            "seeds_a": result.seeds_a,
            "seeds_b": result.seeds_b,
            "acc_a": result.acc_a,
            "acc_b": result.acc_b,
            "diff": result.diff,
            "ci_low": result.ci_low,
            "ci_high": result.ci_high,
            "a_better": result.a_better,
            "b_better": result.b_better,
            "p_value": result.p_value,
            "p_questions": result.p_questions,
            "p_runs": result.p_runs,
        }
        for key, ref, result in comparisons
    ]
    if not rows:
        return pl.DataFrame(schema={"a": pl.String, "b": pl.String})
    return pl.DataFrame(rows, schema_overrides={"p_runs": pl.Float64, "p_questions": pl.Float64})


def chance_accuracy(ws: Workspace, split: str, limit: int | None) -> float | None:
    """Expected accuracy (%) of guessing uniformly among each problem's choices, over the evaluated ones."""
    try:
        table = ws.read_dataset(columns=["split", "choices"])
    except Exception:  # noqa: BLE001 - the report must not fail on a workspace without the dataset
        return None
    choices = [
        c
        for s, c in zip(table.column("split").to_pylist(), table.column("choices").to_pylist(), strict=True)
        if s == split and c
    ]
    choices = choices[:limit] if limit else choices
    return 100.0 * sum(1.0 / len(c) for c in choices) / len(choices) if choices else None


def write_reports(
    ws: Workspace,
    grid: AblationGrid,
    plan: Plan,
    manifests: Mapping[str, Mapping],
    *,
    plots: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Tables (and plots) for an ablation; returns ``reports/ablation.md``."""
    runs = runs_frame(run_rows(ws, plan, manifests))
    stats, comparisons = grid_comparisons(runs, ws.runs_dir, GROUP_KEYS)
    summary = summarize(runs, stats)
    chance = chance_accuracy(ws, grid.eval.split, grid.eval.limit)
    controls = control_lines(grid.controls, comparisons)
    md = write_tables(
        ws.reports_dir, runs, summary, title=f"Ablation: {grid.name}", chance=chance, comparisons=comparisons,
        controls=controls,
    )
    write_json(
        ws.reports_dir / "ablation.json",
        {"name": grid.name, "chance": chance, "eval_split": grid.eval.split, "eval_limit": grid.eval.limit},
    )
    if plots and runs.height:
        plot_curves(summary, ws.reports_dir / CURVE_PNG, chance=chance)
        plot_categories(summary, ws.reports_dir / CATEGORY_PNG)
    log(f"reports: {md}, {ws.reports_dir / CSV_NAME}" + (f", {ws.reports_dir}/*.png" if plots else ""))
    return md


# --- plots --------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI machines or servers
    import matplotlib.pyplot as plt

    return plt


def plot_curves(summary: pl.DataFrame, path: Path, *, chance: float | None = None) -> Path:
    """Accuracy against subset size, one panel per LLM, one line per (strategy, compute): the mean over
    seeds with ± one seed std as error bars and the 95% bootstrap interval over questions shaded; the
    LLM's ``full`` accuracy as a dashed line, its interval as a grey band. Every label says how many
    optimiser steps its cells trained, and says so when a line joins cells trained at different compute."""
    plt = _pyplot()
    llms = summary["llm"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(llms), figsize=(6 * len(llms), 4.2), squeeze=False, sharey=True)
    several = summary["compute"].n_unique() > 1
    for ax, llm in zip(axes[0], llms, strict=True):
        stats = summary.filter(pl.col("llm") == llm).sort(["strategy", "compute", "k"])
        lines = (
            stats.filter(pl.col("strategy") != FULL).select("strategy", "compute").unique(maintain_order=True)
        )
        for strategy, compute in lines.iter_rows():
            s = stats.filter((pl.col("strategy") == strategy) & (pl.col("compute") == compute))
            ks = s["k"].to_list()
            name = f"{strategy} [{compute}]" if several else strategy
            line = ax.errorbar(
                ks,
                s["acc_mean"].to_list(),
                yerr=s["acc_std"].to_list(),
                marker="o",
                capsize=3,
                label=f"{name}: {steps_note(s['steps'].to_list())}",
            )[0]
            if s["acc_ci_low"].null_count() == 0:
                ax.fill_between(
                    ks,
                    s["acc_ci_low"].to_list(),
                    s["acc_ci_high"].to_list(),
                    color=line.get_color(),
                    alpha=0.15,
                )
        for r in stats.filter(pl.col("strategy") == FULL).iter_rows(named=True):
            steps = "" if r["steps"] is None else f", {r['steps']} steps"
            ax.axhline(r["acc_mean"], color="black", linestyle="--", label=f"full (k={r['k']}{steps})")
            if r["acc_ci_low"] is not None:
                ax.axhspan(r["acc_ci_low"], r["acc_ci_high"], color="black", alpha=0.08)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", label="chance")
        ax.set_xscale("log")
        ticks = sorted(set(stats["k"].to_list()))
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.set_title(llm)
        ax.set_xlabel("training samples (k)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%): mean ± seed std, 95% CI shaded")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def steps_note(steps: list) -> str:
    """``1500 steps each`` for a line at equal compute, else the range and a warning."""
    known = sorted({int(s) for s in steps if s is not None})
    if not known:
        return "steps unknown"
    if len(known) == 1:
        return f"{known[0]} steps each"
    return f"{known[0]}-{known[-1]} steps: not equal compute"


def plot_categories(summary: pl.DataFrame, path: Path) -> Path:
    """Per-category accuracy bars: one panel per (LLM, budget), one bar group per ScienceQA category."""
    plt = _pyplot()
    panels = summary.select("llm", "budget", "k").unique(maintain_order=True).sort(["llm", "k"])
    n = panels.height
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False, sharey=True)
    for ax, panel in zip(axes.flat, panels.iter_rows(named=True), strict=False):
        sub = summary.filter((pl.col("llm") == panel["llm"]) & (pl.col("budget") == panel["budget"]))
        width = 0.8 / max(1, sub.height)
        for j, r in enumerate(sub.iter_rows(named=True)):
            values = [r[c] if r[c] is not None else 0.0 for c in (*CATEGORIES, "acc_mean")]
            xs = [i + j * width for i in range(len(values))]
            ax.bar(xs, values, width=width, label=r["strategy"])
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(CATEGORIES) + 1)])
        ax.set_xticklabels([*CATEGORIES, ACCURACY], fontsize=8)
        ax.set_title(f"{panel['llm']} · {panel['budget']}", fontsize=10)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0][0].set_ylabel("accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
