"""`curate select`: pick k samples from a filtered pool with a registered strategy; write a subset.

Pool = dataset rows of ``split`` (``all`` for every split), optionally only image-bearing ones, optionally
with near-duplicates (L2 < ``dedup_eps`` on the embeddings) removed first. The strategy runs on the pool's
embedding rows; its pool indices map back to dataset rows and are written in selection order.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.diagnostics import NEAR_DUP_MAX_ROWS, subset_diagnostics
from curate.embedding_sets import load_embeddings, load_rows
from curate.group_budgets import Grouping, parse_grouping, pick_in_groups
from curate.kcenter.select import KCenterOptions, run_kcenter
from curate.registry import NEEDS_EMBEDDING_SET, NEEDS_SCORE_SET, StrategyRecord, check_options, get_record
from curate.shards import MANIFEST, check_subset_name, write_subset
from curate.strategies import check_dedup_eps, check_k, coverage_report, dedup_pool
from datasets_spec.distributed import world_size
from datasets_spec.errors import UserError
from datasets_spec.outputs import check_replaceable, has_file
from datasets_spec.workspace import Workspace

ALL_SPLITS = "all"
# The strategy that runs on the sharded, resumable k-center engine.
KCENTER = "l2-maxdiverse"


def pool_rows(table: pa.Table, split: str, require_image: bool) -> np.ndarray:
    """Row indices (dataset order) of the pool: rows of ``split`` (``all``: every row), image-bearing only
    when ``require_image``. ``table`` needs the ``split`` and ``image`` columns."""
    mask = np.ones(table.num_rows, dtype=bool)
    if split != ALL_SPLITS:
        mask &= pc.equal(table.column("split"), split).to_numpy(zero_copy_only=False)
    if require_image:
        mask &= pc.is_valid(table.column("image")).to_numpy(zero_copy_only=False)
    return np.flatnonzero(mask).astype(np.int64)


def pool_size(ws: Workspace, split: str, require_image: bool) -> int:
    """Number of samples in the pool :func:`build_pool` draws from (before near-duplicate removal)."""
    return len(pool_rows(ws.read_dataset(columns=["split", "image"]), split, require_image))


def build_pool(ws: Workspace, split: str, require_image: bool) -> tuple[pa.Table, np.ndarray]:
    """The whole dataset table and the row indices of the pool (dataset order)."""
    table = ws.read_dataset()
    pool = pool_rows(table, split, require_image)
    if len(pool) == 0:
        splits = sorted(set(table.column("split").to_pylist()))
        image_rule = " with an image" if require_image else ""
        raise UserError(
            f"the pool is empty: no samples in split {split!r}{image_rule} "
            f"(splits present: {', '.join(splits)})"
        )
    return table, pool


def resolve_k(k: int | None, fraction: float | None, pool_size: int) -> int:
    """Samples to select: ``k``, or ``fraction`` of the pool (rounded, at least 1); above the pool is an
    error."""
    if (k is None) == (fraction is None):
        raise UserError("pass exactly one of --k N or --fraction F")
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise UserError(f"--fraction must be in (0, 1] (got {fraction})")
        k = max(1, int(round(fraction * pool_size)))
    check_k(int(k), pool_size)
    return int(k)


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

    ``l2-maxdiverse`` without dedup runs on :mod:`curate.kcenter` (``kcenter`` options: device, memory
    budget, checkpoints, progress; sharded under torchrun); None when it stopped early to resume later.
    ``strategy_opts`` are the registry record's options (curate/registry.py); a scores strategy reads
    the score set named by ``score`` for the pool (every pool sample must have a row). ``group_by``
    runs the strategy within each group of that column (curate/group_budgets.py): ``per_group`` is the
    allocation rule, ``min_per_group`` each group's floor.
    """
    started = time.perf_counter()
    record = get_record(strategy)
    strategy_opts = check_options(strategy, strategy_opts, where="curate select")
    if k is not None and k <= 0:
        raise UserError(f"k must be positive (got {k})")
    if dedup_eps is not None:
        check_dedup_eps(dedup_eps)
    if name is not None:
        check_subset_name(name)  # before the rows are read; the path is shards/<name> exactly
    grouping = parse_grouping(group_by, per_group, min_per_group)
    if grouping is not None and world_size() > 1:
        raise UserError("--group-by runs in one process, not under torchrun; run it without torchrun")
    if grouping is not None and isinstance(grouping.rule, dict) and k is None and fraction is None:
        k = sum(grouping.rule.values())  # the file spells out every count: k is their sum
        if k <= 0:
            raise UserError(f"--per-group file counts sum to {k}; give at least one sample")
    fingerprint = ws.dataset_fingerprint()  # before the rows are read: write_subset checks it still holds
    table, pool = build_pool(ws, split, require_image)
    # Grouped k-center runs the in-memory greedy once per group (the sharded engine is one pool's run).
    sharded = strategy == KCENTER and not dedup_eps and grouping is None
    if world_size() > 1 and not sharded:
        raise UserError("under torchrun only l2-maxdiverse without --dedup-eps runs (sharded); run others "
                        "in one process")
    run = None
    scores_summary, report, groups = None, {}, None
    if sharded:
        k = resolve_k(k, fraction, len(pool))
        name = name or f"{strategy}-k{k}"
        # the output guard before hours of picks, on every rank (write_subset checks again)
        check_replaceable(ws.shards_dir / check_subset_name(name), kind="subset", overwrite=overwrite,
                          is_previous=has_file(MANIFEST), marker=MANIFEST)
        run = run_kcenter(ws, pool, k, name, embeddings_tag, kcenter or KCenterOptions())
        if run.picks is None:
            run.finish(written=False)
            return None
        kept, rows, emb_summary, coverage = pool, pool[run.picks], embeddings_summary(run.info), run.coverage
        matrix = None  # the sharded engine never holds the whole matrix
    else:
        kept, k, rows, emb_summary, coverage, scores_summary, report, groups, matrix = _in_memory(
            ws, record, table, pool, k, fraction, seed, dedup_eps, embeddings_tag, kcenter, strategy_opts,
            grouping,
        )
    manifest = {
        "kind": "select",
        "strategy": strategy,
        "params": {
            "k": k, "fraction": fraction, "seed": seed, "split": split, "require_image": require_image,
            "dedup_eps": dedup_eps, "embeddings_tag": embeddings_tag, **strategy_opts,
            **_grouping_params(grouping),
        },
        "k": k,
        "seed": seed,
        "pool": {"split": split, "require_image": require_image, "size": int(len(pool)),
                 "after_dedup": int(len(kept))},
        "embeddings": emb_summary,
        "scores": scores_summary,
        "strategy_report": report,
        "coverage": coverage,
        "command": command,
        "selection_seconds": round(time.perf_counter() - started, 3),  # the cost table's selection time
    }
    if groups is not None:
        manifest["groups"] = groups
    sub_matrix = None
    if run is not None and run.comm.rank == 0 and len(rows) <= NEAR_DUP_MAX_ROWS:
        # After the timing above: read back only the subset's rows for the near-duplicate count.
        ids = table.column("sample_id").take(pa.array(rows)).to_pylist()
        sub_matrix = load_rows(ws, ids, run.info.get("tag"))
    manifest["diagnostics"] = subset_diagnostics(table, pool, rows, matrix, subset_embeddings=sub_matrix)
    suffix = f"-by-{grouping.by}" if grouping is not None else ""
    path = ws.shards_dir / (name or f"{strategy}-k{k}{suffix}")
    if run is None or run.comm.rank == 0:
        path = write_subset(ws, path.name, table, rows, manifest, overwrite=overwrite,
                            dataset_fingerprint=fingerprint)
    if run is not None:
        run.finish(written=True)
    return path


def _grouping_params(grouping: Grouping | None) -> dict:
    if grouping is None:  # ungrouped manifests keep their params as before
        return {}
    return {"group_by": grouping.by, "per_group": grouping.label, "min_per_group": grouping.min_per_group}


def _in_memory(ws, record: StrategyRecord, table, pool, k, fraction, seed, dedup_eps, tag, kcenter,
               strategy_opts, grouping: Grouping | None):
    """Any strategy on the pool's rows loaded in memory (after the optional dedup); one process; within
    each group when ``grouping`` (the manifest's ``groups``, else None); last the embedding matrix when one
    was loaded (dataset row order), else None."""
    needs = record.needs in NEEDS_EMBEDDING_SET or dedup_eps is not None
    matrix = info = None
    if needs:
        matrix, _, info = load_embeddings(ws, tag)
    kept = pool
    if dedup_eps is not None:
        kept = pool[dedup_pool(matrix[pool], dedup_eps)]
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
        emb_summary = embeddings_summary(info)
        position = np.full(matrix.shape[0], -1, dtype=np.int64)
        position[pool] = np.arange(len(pool))
        coverage = coverage_report(matrix[pool], position[rows])
    else:
        emb_summary, coverage, matrix = optional_coverage(ws, tag, pool, rows)
    return kept, k, rows, emb_summary, coverage, scores_summary, report, groups, matrix


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
