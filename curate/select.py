"""`curate select`: pick k samples from a filtered pool with a registered strategy; write a subset.

The one selection pipeline: every strategy (``rules`` included) goes through :func:`select_subset`, the only
code that builds a subset manifest and writes a subset. The pool and its filters (split, images, score
thresholds, near-duplicates) are :mod:`curate.pool`'s. The strategy runs on the pool's embedding rows (or
its columns); its pool indices map back to dataset rows and are written in selection order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate import rules
from curate.diagnostics import NEAR_DUP_MAX_ROWS, subset_diagnostics
from curate.embedding_sets import load_embeddings, load_rows
from curate.group_budgets import Grouping, parse_grouping, pick_in_groups
from curate.kcenter.select import KCenterOptions, KCenterRun, run_kcenter
from curate.pool import PoolSpec, build_pool, resolve_k, score_filter
from curate.registry import NEEDS_EMBEDDING_SET, NEEDS_SCORE_SET, StrategyRecord, check_options, get_record
from curate.shards import MANIFEST, check_subset_name, default_subset_name, write_subset
from curate.strategies import coverage_report, dedup_pool
from datasets_spec.distributed import world_size
from datasets_spec.errors import UserError
from datasets_spec.outputs import check_replaceable, has_file
from datasets_spec.workspace import Workspace

# The strategy that runs on the sharded, resumable k-center engine.
KCENTER = "l2-maxdiverse"


def embeddings_summary(info: dict) -> dict:
    keys = ("tag", "model", "pretrained", "fuse", "dim", "parts_hash", "dataset_fingerprint")
    return {key: info.get(key) for key in keys}


def optional_coverage(
    ws: Workspace, tag: str | None, pool: np.ndarray, rows: np.ndarray
) -> tuple[dict | None, dict, np.ndarray | None]:
    """Coverage of the pool by ``rows`` when an embedding set is usable; else the reason it is skipped.
    Last, the loaded matrix (dataset row order; None when skipped), for the subset's diagnostics.

    An explicitly requested tag must load; the default set is used only if it exists and is current.
    """
    try:
        matrix, _, info = load_embeddings(ws, tag)
    except UserError as exc:
        if tag is not None:
            raise
        return None, {"skipped": str(exc)}, None
    position = np.full(matrix.shape[0], -1, dtype=np.int64)
    position[pool] = np.arange(len(pool))
    return embeddings_summary(info), coverage_report(matrix[pool], position[rows]), matrix


@dataclass
class Selection:
    """What a strategy picked and what the manifest says about it."""

    kept: np.ndarray
    """The pool's dataset rows the strategy ran on (after near-duplicate removal)."""
    k: int
    rows: np.ndarray
    """Picked dataset rows, in selection order."""
    embeddings: dict | None
    coverage: dict | None
    scores: dict | None = None
    report: dict = field(default_factory=dict)
    groups: dict | None = None
    matrix: np.ndarray | None = None
    """The embedding matrix (dataset row order) when one was loaded whole, for the diagnostics."""
    run: KCenterRun | None = None
    """The sharded k-center run, when the engine picked (its rank 0 writes the subset)."""


def select_subset(
    ws: Workspace,
    strategy: str,
    *,
    k: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    split: str = "train",
    require_image: bool = False,
    dedup_eps: float | None = None,
    min_scores: dict[str, float] | None = None,
    max_scores: dict[str, float] | None = None,
    name: str | None = None,
    embeddings_tag: str | None = None,
    overwrite: bool = False,
    command: str = "",
    kcenter: KCenterOptions | None = None,
    group_by: str | None = None,
    per_group: str | None = None,
    min_per_group: int | None = None,
    **strategy_opts: object,
) -> Path | None:
    """Select a subset with ``strategy``; return ``shards/<name or strategy-k<k>[-by-<group_by>]>/``.

    The pool: ``split``, ``require_image``, score bounds ``min_scores`` / ``max_scores`` (score set ->
    bound, inclusive) and ``dedup_eps`` (:mod:`curate.pool`). ``l2-maxdiverse`` without dedup runs on
    :mod:`curate.kcenter` (``kcenter`` options: device, memory budget, checkpoints, progress; sharded under
    torchrun); None when it stopped early to resume later. ``strategy_opts`` are the registry record's
    options (curate/registry.py); a scores strategy reads the score set named by ``score`` for the pool
    (every pool sample must have a row). ``group_by`` runs the strategy within each group of that column
    (curate/group_budgets.py): ``per_group`` is the allocation rule, ``min_per_group`` each group's floor.
    """
    started = time.perf_counter()
    record = get_record(strategy)
    strategy_opts = check_options(strategy, strategy_opts, where="curate select")
    spec = PoolSpec(split, require_image, dedup_eps, dict(min_scores or {}), dict(max_scores or {}))
    grouping, k = _check_request(k, fraction, name, group_by, per_group, min_per_group)
    fingerprint = ws.dataset_fingerprint()  # before the rows are read: write_subset checks it still holds
    table, pool = build_pool(ws, split, require_image)
    pool, thresholds = score_filter(ws, table, pool, spec.min_scores, spec.max_scores)
    if _runs_sharded(record, spec, grouping):
        chosen = _sharded(ws, pool, k, fraction, name, embeddings_tag, kcenter, overwrite)
        if chosen.run.picks is None:
            chosen.run.finish(written=False)
            return None
    elif world_size() > 1:
        raise UserError("under torchrun only l2-maxdiverse without --dedup-eps runs (sharded); run others "
                        "in one process")
    else:
        chosen = _in_memory(ws, record, table, pool, spec, k, fraction, seed, embeddings_tag, kcenter,
                            strategy_opts, grouping)
    manifest = _manifest(strategy, spec, pool, chosen, fraction, seed, embeddings_tag, strategy_opts,
                         grouping, thresholds, command, time.perf_counter() - started)
    manifest["diagnostics"] = _diagnostics(ws, table, pool, chosen)
    path = ws.shards_dir / (name or default_subset_name(strategy, chosen.k, grouping and grouping.by))
    if chosen.run is None or chosen.run.comm.rank == 0:
        path = write_subset(ws, path.name, table, chosen.rows, manifest, overwrite=overwrite,
                            dataset_fingerprint=fingerprint)
    if chosen.run is not None:
        chosen.run.finish(written=True)
    return path


def rules_subset(
    ws: Workspace,
    *,
    k: int,
    min_per_group: int = 0,
    group_by: str = rules.DEFAULT_MINIMUM_BY,
    prefer: str = "hard",
    require_image: bool = False,
    seed: int = 0,
    split: str = "train",
    name: str | None = None,
    overwrite: bool = False,
    command: str = "",
    embeddings_tag: str | None = None,
    min_scores: dict[str, float] | None = None,
    max_scores: dict[str, float] | None = None,
) -> Path:
    """``curate rules``: :func:`select_subset` with the ``rules`` strategy, in the old flags'
    terms. ``group_by`` is the minimums' column, ``require_image`` puts image-bearing samples first (an
    ordering: text-only samples still fill in), ``min_scores`` / ``max_scores`` filter the pool first."""
    rules.check_minimum_by(group_by, flag="--group-by")  # in this command's flag, before the registry's check
    rules.check_prefer(prefer)
    return select_subset(
        ws, rules.RULES, k=k, seed=seed, split=split, name=name, overwrite=overwrite, command=command,
        embeddings_tag=embeddings_tag, min_scores=min_scores, max_scores=max_scores,
        min_per_subject=min_per_group, minimum_by=group_by, prefer=prefer, image_first=require_image,
    )


def _check_request(k: int | None, fraction: float | None, name: str | None, group_by: str | None,
                   per_group: str | None, min_per_group: int | None) -> tuple[Grouping | None, int | None]:
    """Every check that needs no data, before a row is read; the grouping and k (a --per-group file
    spells out every count: k is their sum)."""
    if k is not None and k <= 0:
        raise UserError(f"k must be positive (got {k})")
    if name is not None:
        check_subset_name(name)  # the path is shards/<name> exactly
    grouping = parse_grouping(group_by, per_group, min_per_group)
    if grouping is not None and world_size() > 1:
        raise UserError("--group-by runs in one process, not under torchrun; run it without torchrun")
    if grouping is not None and isinstance(grouping.rule, dict) and k is None and fraction is None:
        k = sum(grouping.rule.values())
        if k <= 0:
            raise UserError(f"--per-group file counts sum to {k}; give at least one sample")
    return grouping, k


def _runs_sharded(record: StrategyRecord, spec: PoolSpec, grouping: Grouping | None) -> bool:
    """The k-center engine runs when nothing needs the pool's rows in memory: no near-duplicate pass, no
    per-group runs (grouped k-center runs the in-memory greedy once per group)."""
    return record.name == KCENTER and not spec.dedup_eps and grouping is None


def _sharded(ws: Workspace, pool: np.ndarray, k: int | None, fraction: float | None, name: str | None,
             tag: str | None, kcenter: KCenterOptions | None, overwrite: bool) -> Selection:
    """k-center on :mod:`curate.kcenter`'s sharded, resumable engine (the whole matrix is never held)."""
    k = resolve_k(k, fraction, len(pool))
    name = name or default_subset_name(KCENTER, k)
    # the output guard before hours of picks, on every rank (write_subset checks again)
    check_replaceable(ws.shards_dir / check_subset_name(name), kind="subset", overwrite=overwrite,
                      is_previous=has_file(MANIFEST), marker=MANIFEST)
    run = run_kcenter(ws, pool, k, name, tag, kcenter or KCenterOptions())
    rows = pool[run.picks] if run.picks is not None else pool[:0]
    return Selection(pool, k, rows, embeddings_summary(run.info), run.coverage, run=run)


def _in_memory(ws: Workspace, record: StrategyRecord, table: pa.Table, pool: np.ndarray, spec: PoolSpec,
               k: int | None, fraction: float | None, seed: int, tag: str | None,
               kcenter: KCenterOptions | None, strategy_opts: dict, grouping: Grouping | None) -> Selection:
    """Any strategy on the pool's rows loaded in memory (after the optional dedup); one process; within
    each group when ``grouping``."""
    needs = record.needs in NEEDS_EMBEDDING_SET or spec.dedup_eps is not None
    matrix = info = None
    if needs:
        matrix, _, info = load_embeddings(ws, tag)
    kept = pool if spec.dedup_eps is None else pool[dedup_pool(matrix[pool], spec.dedup_eps)]
    k = resolve_k(k, fraction, len(kept))
    x = matrix[kept] if matrix is not None else np.empty((len(kept), 0), dtype=np.float32)
    fn_opts, scores_summary = _score_inputs(ws, record, strategy_opts, table, kept)
    if record.name == KCENTER and kcenter is not None:
        fn_opts["device"] = kcenter.device
    report: dict = {}
    if record.inputs is not None:
        fn_opts = record.inputs(ws, fn_opts, table, kept, info, report)
    if record.takes_report():
        fn_opts["report"] = report
    groups = None
    if grouping is None:
        picks = np.asarray(record.fn(x, k, seed=seed, **fn_opts), dtype=np.int64)
    else:
        picks, groups = pick_in_groups(grouping, record.fn, x, k, table, kept, seed=seed, **fn_opts)
    rows = kept[picks]
    if info is not None:
        position = np.full(matrix.shape[0], -1, dtype=np.int64)
        position[pool] = np.arange(len(pool))
        emb_summary, coverage = embeddings_summary(info), coverage_report(matrix[pool], position[rows])
    else:
        emb_summary, coverage, matrix = optional_coverage(ws, tag, pool, rows)
    return Selection(kept, k, rows, emb_summary, coverage, scores_summary, report, groups, matrix)


def _manifest(strategy: str, spec: PoolSpec, pool: np.ndarray, chosen: Selection, fraction: float | None,
              seed: int, tag: str | None, strategy_opts: dict, grouping: Grouping | None, thresholds: dict,
              command: str, seconds: float) -> dict:
    """The subset manifest (write_subset adds counts, hashes and versions)."""
    params = {"k": chosen.k, "fraction": fraction, "seed": seed, "split": spec.split,
              "require_image": spec.require_image, "dedup_eps": spec.dedup_eps, "embeddings_tag": tag,
              **strategy_opts, **_grouping_params(grouping)}
    pool_record = {"split": spec.split, "require_image": spec.require_image, "size": int(len(pool)),
                   "after_dedup": int(len(chosen.kept))}
    manifest = {"kind": "select", "strategy": strategy, "params": params, "k": chosen.k, "seed": seed,
                "pool": pool_record, "embeddings": chosen.embeddings, "scores": chosen.scores,
                "strategy_report": chosen.report, "coverage": chosen.coverage, "command": command,
                "selection_seconds": round(seconds, 3)}  # the cost table's selection time
    if spec.has_score_thresholds:  # the pool before them is ``pool.size`` + the drops
        params.update(min_scores=spec.min_scores, max_scores=spec.max_scores)
        pool_record["size"] = int(len(pool)) + sum(t["dropped"] for t in thresholds.values())
        pool_record["after_score_thresholds"] = int(len(pool))
        manifest["score_thresholds"] = thresholds
    if chosen.groups is not None:
        manifest["groups"] = chosen.groups
    return manifest


def _diagnostics(ws: Workspace, table: pa.Table, pool: np.ndarray, chosen: Selection) -> dict:
    """The subset's diagnostics against the pool it was chosen from (after every filter but dedup)."""
    sub_matrix = None
    run = chosen.run
    if run is not None and run.comm.rank == 0 and len(chosen.rows) <= NEAR_DUP_MAX_ROWS:
        # After the timing above: read back only the subset's rows for the near-duplicate count.
        ids = table.column("sample_id").take(pa.array(chosen.rows)).to_pylist()
        sub_matrix = load_rows(ws, ids, run.info.get("tag"))
    return subset_diagnostics(table, pool, chosen.rows, chosen.matrix, subset_embeddings=sub_matrix)


def _grouping_params(grouping: Grouping | None) -> dict:
    if grouping is None:  # ungrouped manifests keep their params as before
        return {}
    return {"group_by": grouping.by, "per_group": grouping.label, "min_per_group": grouping.min_per_group}


def _score_inputs(
    ws: Workspace, record: StrategyRecord, opts: dict, table: pa.Table, kept: np.ndarray
) -> tuple[dict, dict | None]:
    """The function's keyword options; for a scores strategy the named set read for the pool rows."""
    fn_opts = dict(opts)
    if record.needs not in NEEDS_SCORE_SET:
        return fn_opts, None
    from curate.scores import load_scores

    name = fn_opts.pop("score")
    ids = table.column("sample_id").take(pa.array(kept)).to_pylist()
    values, info = load_scores(ws, name, ids)
    fn_opts["scores"] = values
    return fn_opts, {"name": name, "by": info.get("by"), "parts_hash": info.get("parts_hash")}
