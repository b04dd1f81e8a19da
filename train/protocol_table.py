"""The data-selection protocol's table from lmms-eval results: rows Full, Random, baselines, method.

Input: one lmms-eval output folder per run, ``<results dir>/<run name>/`` (``lmms-eval --output_path
<results dir>/<run> --log_samples ...`` on the run's ``model/``), and the runs themselves under the
workspace's runs/. Output (stdout and ``reports/<name>.md`` + ``.json``):

* the score table: one column per benchmark (train.lmms_eval_results.BENCHMARKS) and
  ``Rel = 100 x mean over benchmarks of score(row) / score(Full)``, over the benchmarks every row has (the
  line under the table names any left out and the rows lacking them);
* paired differences against the ``versus`` row (Random by default), per benchmark with per-sample logs:
  the mean per-document difference in points, its 95% paired-bootstrap interval and, for right/wrong
  scores, the exact McNemar p-value (train.paired_stats);
* the cost table: subset size, selection time (the subset manifest's ``selection_seconds``: the selection
  itself, not the embedding it reads), training time (the run's stages) and evaluation time (lmms-eval's).

Rows are ``label=run`` pairs in table order or, when none are given, every run folder in the results
directory, labelled by its subset (``full``, or the subset name without its ``-k<k>`` suffix).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets_spec.errors import UserError
from datasets_spec.parts import atomic_file, read_json
from datasets_spec.workspace import Workspace
from train.lmms_eval_results import BENCHMARKS, RunResults, model_path, read_run_results
from train.paired_stats import bootstrap_mean_ci, format_p, mcnemar_exact
from train.rundir import CONFIG_FILE, TRAIN_METRICS_FILE

FULL_LABEL = "full"
RANDOM_LABEL = "random"


@dataclass(frozen=True)
class ProtocolTableConfig:
    """What `train report` builds."""

    results_dir: Path
    """Folder holding one lmms-eval output folder per run, named after the run."""
    rows: tuple[tuple[str, str], ...] = ()
    """(label, run name) in table order; empty = every run folder in ``results_dir``."""
    full: str = FULL_LABEL
    """Label of the whole-data row that Rel divides by."""
    versus: str = RANDOM_LABEL
    """Label of the row the paired differences are taken against."""
    method: str | None = None
    """Label of the proposed method's row: printed last and marked."""
    name: str = "protocol"
    """Report file name under reports/ (``<name>.md``, ``<name>.json``)."""

    def __post_init__(self) -> None:
        labels = [label for label, _ in self.rows]
        if len(set(labels)) != len(labels):
            raise UserError(f"--row: label {_first_repeat(labels)!r} given twice")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name):
            raise UserError(f"--name {self.name!r}: use letters, digits, '.', '_' or '-'")


def _first_repeat(values: list[str]) -> str:
    return next(v for i, v in enumerate(values) if v in values[:i])


def parse_row(spec: str) -> tuple[str, str]:
    """``label=run`` -> (label, run)."""
    label, sep, run = spec.partition("=")
    if not sep or not label.strip() or not run.strip():
        raise UserError(f"--row {spec!r}: expected LABEL=RUN, e.g. random=random-k133060__vicuna-7b__s0")
    return label.strip(), run.strip()


def _inferred_rows(ws: Workspace, results_dir: Path) -> list[tuple[str, str]]:
    rows = []
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config = _run_config(ws, folder.name, where=folder)
        subset = str((config.get("subset") or {}).get("name") or folder.name)
        rows.append((re.sub(r"-k\d+$", "", subset), folder.name))
    labels = [label for label, _ in rows]
    if len(set(labels)) != len(labels):
        repeated = _first_repeat(labels)
        runs = [run for label, run in rows if label == repeated]
        raise UserError(f"{results_dir}: runs {', '.join(runs)} are all row {repeated!r}; pick one per row "
                        "with --row LABEL=RUN")
    return rows


def _run_config(ws: Workspace, run: str, *, where: Path) -> dict:
    path = ws.runs_dir / run / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{where}: lmms-eval output for run {run!r}, which does not exist ({path} not found)")
    return read_json(path)


def _check_models(results: RunResults, run_dir: Path, where: Path) -> None:
    """Every results file must have evaluated this run's model (a path inside the run, or one naming it)."""
    for args in sorted(results.models):
        model = model_path(args)
        inside = False
        if model:
            resolved = Path(model).expanduser().resolve()
            inside = resolved == run_dir.resolve() or run_dir.resolve() in resolved.parents
        if not (inside or (model and run_dir.name in model)):
            raise UserError(f"{where}: lmms-eval evaluated {model or args!r}, not run {run_dir.name!r} "
                            f"({run_dir}/model)")


def _ordered(rows: list[tuple[str, str]], config: ProtocolTableConfig) -> list[tuple[str, str]]:
    labels = [label for label, _ in rows]
    for needed in (config.full, config.method):
        if needed is not None and needed not in labels:
            raise UserError(f"no row {needed!r} (rows: {', '.join(labels)}); give it with --row {needed}=RUN")
    first = [r for r in rows if r[0] == config.full] + [r for r in rows if r[0] == config.versus]
    last = [r for r in rows if r[0] == config.method and r[0] not in (config.full, config.versus)]
    return first + [r for r in rows if r not in first and r not in last] + last


def build_protocol_table(ws: Workspace, config: ProtocolTableConfig) -> dict:
    """Read every row's lmms-eval results and runs; return the report payload (nothing written)."""
    results_dir = Path(config.results_dir)
    if not results_dir.is_dir():
        raise UserError(f"{results_dir}: not a directory of lmms-eval outputs (one folder per run)")
    for folder in sorted(p for p in results_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        _run_config(ws, folder.name, where=folder)  # a results folder for a run that does not exist
    rows = _ordered(list(config.rows) or _inferred_rows(ws, results_dir), config)
    table = []
    for label, run in rows:
        folder = results_dir / run
        if not folder.is_dir():
            raise UserError(f"{folder}: no lmms-eval output for run {run!r} (row {label!r})")
        run_config = _run_config(ws, run, where=folder)
        results = read_run_results(folder)
        _check_models(results, ws.runs_dir / run, folder)
        table.append((label, run, run_config, results))
    by_label = {label: results for label, _, _, results in table}
    _check_same_evaluator(by_label)
    rel_over, left_out = _rel_benchmarks(by_label)
    full = by_label[config.full]
    return {
        "benchmarks": [b.label for b in BENCHMARKS],
        "full": config.full, "versus": config.versus if config.versus in by_label else None,
        "method": config.method,
        "evaluator": sorted({e for r in by_label.values() for e in r.evaluators}),
        "rel_over": rel_over,
        "left_out": left_out,
        "rows": [
            {"label": label, "run": run, "scores": results.scores,
             "rel": _rel(results, full, rel_over, label),
             "per_sample": sorted(results.samples)}
            for label, run, _, results in table
        ],
        "paired": _paired(by_label, config.versus),
        "cost": [_cost(ws, label, run, run_config, results) for label, run, run_config, results in table],
    }


def _check_same_evaluator(by_label: dict[str, RunResults]) -> None:
    """Every row scored by the same lmms-eval model type and version, or the columns do not compare."""
    seen = {label: sorted(r.evaluators) for label, r in by_label.items()}
    kinds = {e for evaluators in seen.values() for e in evaluators}
    if len(kinds) > 1:
        detail = "; ".join(f"{label}: {', '.join(e)}" for label, e in seen.items())
        raise UserError(f"rows were evaluated differently, so their scores do not compare ({detail})")


def _rel_benchmarks(by_label: dict[str, RunResults]) -> tuple[list[str], dict[str, list[str]]]:
    """(benchmarks every row has, left-out benchmark -> rows lacking it)."""
    over, left_out = [], {}
    for bench in BENCHMARKS:
        lacking = [label for label, r in by_label.items() if bench.label not in r.scores]
        if len(lacking) == len(by_label):
            continue  # evaluated by no row: not a column anyone asked for
        if lacking:
            left_out[bench.label] = lacking
        else:
            over.append(bench.label)
    if not over:
        raise UserError("no benchmark has a score for every row, so Rel has nothing to average; "
                        f"missing: {json.dumps(left_out)}")
    return over, left_out


def _rel(results: RunResults, full: RunResults, over: list[str], label: str) -> float:
    ratios = []
    for bench in over:
        if full.scores[bench] == 0:
            raise UserError(f"Full scores 0 on {bench}; Rel (score / Full) is undefined")
        ratios.append(results.scores[bench] / full.scores[bench])
    return 100.0 * float(np.mean(ratios))


def _paired(by_label: dict[str, RunResults], versus: str) -> list[dict]:
    """Each row against ``versus`` on every benchmark both logged per sample."""
    base = by_label.get(versus)
    if base is None:
        return []
    out = []
    for label, results in by_label.items():
        if label == versus:
            continue
        for bench in BENCHMARKS:
            a, b = results.samples.get(bench.label), base.samples.get(bench.label)
            if a is None or b is None:
                continue
            if a.keys() != b.keys():
                raise UserError(f"cannot pair {label} with {versus} on {bench.label}: their samples logs "
                                f"hold different documents ({len(a)} vs {len(b)})")
            docs = sorted(a)
            diff = np.array([a[d] - b[d] for d in docs])
            lo, hi = bootstrap_mean_ci(diff)
            binary = all(a[d] in (0.0, 100.0) and b[d] in (0.0, 100.0) for d in docs)
            p = mcnemar_exact(int((diff > 0).sum()), int((diff < 0).sum())) if binary else None
            out.append({"row": label, "benchmark": bench.label, "n": len(docs), "diff": float(diff.mean()),
                        "ci": [lo, hi], "p": p})
    return out


def _cost(ws: Workspace, label: str, run: str, run_config: dict, results: RunResults) -> dict:
    subset = run_config.get("subset") or {}
    manifest_path = Path(str(subset.get("path") or "")) / "manifest.json"
    selection = None
    if subset.get("path") and manifest_path.is_file():
        selection = read_json(manifest_path).get("selection_seconds")
    metrics_path = ws.runs_dir / run / TRAIN_METRICS_FILE
    stages = read_json(metrics_path) if metrics_path.is_file() else {}
    train_s = sum(float(s.get("runtime_s") or 0) for s in stages.values() if isinstance(s, dict))
    return {"label": label, "run": run, "rows": subset.get("rows"), "selection_s": selection,
            "train_s": train_s if stages else None, "eval_s": results.eval_seconds or None}


def render_markdown(payload: dict) -> str:
    """The three tables as markdown."""
    shown = [b for b in payload["benchmarks"] if b in payload["rel_over"] or b in payload["left_out"]]
    lines = ["| | " + " | ".join(shown) + " | Rel |", "|---" * (len(shown) + 2) + "|"]
    for row in payload["rows"]:
        mark = " (method)" if row["label"] == payload["method"] else ""
        cells = [_num(row["scores"].get(b)) for b in shown]
        lines.append(f"| {row['label']}{mark} | " + " | ".join(cells) + f" | {row['rel']:.1f} |")
    lines.append("")
    lines.append(f"Rel = 100 x mean of score / score({payload['full']}) over {len(payload['rel_over'])} "
                 f"benchmarks: {', '.join(payload['rel_over'])}.")
    lines.append(f"Evaluated with {', '.join(payload['evaluator'])}.")
    for bench, rows in payload["left_out"].items():
        lines.append(f"Left out of Rel: {bench} (no score for {', '.join(rows)}).")
    if payload["paired"]:
        lines += ["", f"Paired differences vs {payload['versus']} (points of per-sample score, 95% bootstrap "
                      "CI, exact McNemar p for right/wrong scores):", "",
                  "| row | benchmark | n | diff | 95% CI | p |", "|---|---|---|---|---|---|"]
        for p in payload["paired"]:
            pval = format_p(p["p"]) if p["p"] is not None else "-"
            lines.append(f"| {p['row']} | {p['benchmark']} | {p['n']} | {p['diff']:+.2f} | "
                         f"[{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}] | {pval} |")
    lines += ["", "Cost:", "", "| row | run | samples | selection (s) | training (s) | evaluation (s) |",
              "|---|---|---|---|---|---|"]
    for c in payload["cost"]:
        lines.append(f"| {c['label']} | {c['run']} | {c['rows'] if c['rows'] is not None else '-'} | "
                     f"{_num(c['selection_s'])} | {_num(c['train_s'])} | {_num(c['eval_s'])} |")
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def write_protocol_report(ws: Workspace, payload: dict, name: str) -> Path:
    """``reports/<name>.md`` and ``.json``, each written to a temporary name and renamed."""
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    md = ws.reports_dir / f"{name}.md"
    with atomic_file(ws.reports_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    with atomic_file(md) as tmp:
        tmp.write_text(render_markdown(payload))
    return md
