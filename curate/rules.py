"""`curate rules`: a careful curator's hand rules as a deterministic ordering of the pool.

One global ordering ranks every pool sample by, in priority order:

1. image-bearing before text-only (only with ``require_image``; text-only samples then fill in only
   when image-bearing ones run out, and a group with no image sample still gets its minimum);
2. difficulty: highest first (``prefer="hard"``), lowest first (``"easy"``) or ignored (``"none"``);
3. a seeded random permutation, so equal keys are broken reproducibly.

Selection: for each ``group_by`` group present in the pool (sorted by name), its first
``min_per_group`` samples in that ordering; then the rest of the ordering until ``k``. A group smaller
than the minimum contributes all of its samples (recorded in the manifest). If the minimums alone
exceed ``k`` the request is refused with the numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from curate.diagnostics import subset_diagnostics
from curate.group_budgets import GROUP_COLUMNS, group_labels
from curate.select import build_pool, optional_coverage
from curate.shards import write_subset
from curate.strategies import check_k
from datasets_spec.errors import UserError
from datasets_spec.workspace import Workspace

PREFERENCES = ("hard", "easy", "none")


def rule_order(difficulty: np.ndarray, has_image: np.ndarray, *, prefer: str, image_first: bool,
               seed: int) -> np.ndarray:
    """Positions 0..n-1 sorted by the rules (see module docstring)."""
    n = len(difficulty)
    tiebreak = np.random.default_rng(seed).permutation(n)
    if prefer == "hard":
        diff_key = -difficulty.astype(np.float64)
    elif prefer == "easy":
        diff_key = difficulty.astype(np.float64)
    else:
        diff_key = np.zeros(n)
    image_key = (~has_image).astype(np.int8) if image_first else np.zeros(n, dtype=np.int8)
    return np.lexsort((tiebreak, diff_key, image_key)).astype(np.int64)


def pick_by_rules(
    order: np.ndarray, groups: list[str], k: int, min_per_group: int
) -> tuple[np.ndarray, dict]:
    """Minimums per group first, then the ordering; returns positions and a summary for the manifest."""
    names = sorted(set(groups))
    by_group: dict[str, list[int]] = {g: [] for g in names}
    for pos in order.tolist():
        by_group[groups[pos]].append(pos)
    need = {g: min(min_per_group, len(by_group[g])) for g in names}
    total = sum(need.values())
    if total > k:
        raise UserError(
            f"k={k} cannot give each of the {len(names)} groups {min_per_group} sample(s): the minimums need "
            f"{total} samples; raise --k to at least {total} or lower --min-per-subject"
        )
    chosen: set[int] = set()
    for g in names:
        chosen.update(by_group[g][: need[g]])
    minimum_picks = [p for p in order.tolist() if p in chosen]
    fill = [p for p in order.tolist() if p not in chosen][: k - len(minimum_picks)]
    summary = {
        "groups": len(names),
        "minimum_picks": len(minimum_picks),
        "fill_picks": len(fill),
        "short_groups": {g: len(by_group[g]) for g in names if len(by_group[g]) < min_per_group},
    }
    return np.asarray(minimum_picks + fill, dtype=np.int64), summary


def rules_subset(
    ws: Workspace,
    *,
    k: int,
    min_per_group: int = 0,
    group_by: str = "subject",
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
    """Select ``k`` samples by the curator's rules; return ``shards/<name or rules-k<k>>/``.

    ``min_scores`` / ``max_scores`` (score set name -> bound, inclusive) filter the pool first; a sample
    without a score in a thresholded set is dropped.
    """
    if group_by not in GROUP_COLUMNS:
        raise UserError(f"--group-by {group_by!r}: valid: {', '.join(GROUP_COLUMNS)}")
    if prefer not in PREFERENCES:
        raise UserError(f"--prefer {prefer!r}: valid: {', '.join(PREFERENCES)}")
    if min_per_group < 0:
        raise UserError(f"--min-per-subject must be >= 0 (got {min_per_group})")
    if k <= 0:
        raise UserError(f"k must be positive (got {k})")
    # The image preference is an ordering here, not a filter, so the pool keeps text-only samples.
    table, pool = build_pool(ws, split, require_image=False)
    full_pool = len(pool)
    pool, thresholds = score_filter(ws, table, pool, min_scores or {}, max_scores or {})
    check_k(k, len(pool))
    sub = table.take(pool)
    difficulty = sub.column("difficulty").to_numpy(zero_copy_only=False)
    has_image = pc.is_valid(sub.column("image")).to_numpy(zero_copy_only=False)
    groups = group_labels(table, pool, group_by).tolist()
    order = rule_order(difficulty, has_image, prefer=prefer, image_first=require_image, seed=seed)
    positions, summary = pick_by_rules(order, groups, k, min_per_group)
    rows = pool[positions]
    emb_summary, coverage, matrix = optional_coverage(ws, embeddings_tag, pool, rows)
    picked_groups = [groups[p] for p in positions.tolist()]
    manifest = {
        "kind": "rules",
        "strategy": "rules",
        "params": {
            "k": k, "min_per_group": min_per_group, "group_by": group_by, "prefer": prefer,
            "require_image": require_image, "seed": seed, "split": split, "embeddings_tag": embeddings_tag,
            "min_scores": min_scores or {}, "max_scores": max_scores or {},
        },
        "k": k,
        "seed": seed,
        "pool": {"split": split, "require_image": False, "size": int(full_pool),
                 "after_score_thresholds": int(len(pool))},
        "score_thresholds": thresholds,
        "rules": {**summary, "per_group": {g: picked_groups.count(g) for g in sorted(set(groups))}},
        "embeddings": emb_summary,
        "coverage": coverage,
        "command": command,
        # the pool after the score thresholds: the one the rules chose from
        "diagnostics": subset_diagnostics(table, pool, rows, matrix),
    }
    return write_subset(ws, name or f"rules-k{k}", table, rows, manifest, overwrite=overwrite)


def score_filter(ws: Workspace, table, pool: np.ndarray, min_scores: dict[str, float],
                 max_scores: dict[str, float]) -> tuple[np.ndarray, dict]:
    """Pool rows whose scores lie inside every bound (inclusive); per-set bounds and drop counts."""
    from curate.scores import load_scores

    if not min_scores and not max_scores:
        return pool, {}
    ids = table.column("sample_id").take(pool).to_pylist()
    keep = np.ones(len(pool), dtype=bool)
    summary = {}
    for name in sorted(set(min_scores) | set(max_scores)):
        values, info = load_scores(ws, name, ids)
        ok = ~np.isnan(values)
        low, high = min_scores.get(name), max_scores.get(name)
        if low is not None:
            ok &= values >= low
        if high is not None:
            ok &= values <= high
        summary[name] = {"min": low, "max": high, "by": info.get("by"), "parts_hash": info.get("parts_hash"),
                         "dropped": int((keep & ~ok).sum())}
        keep &= ok
    if not keep.any():
        raise UserError(f"the score thresholds leave no sample in the pool ({json_bounds(summary)})")
    return pool[keep], summary


def json_bounds(summary: dict) -> str:
    return ", ".join(f"{n}: [{v['min']}, {v['max']}]" for n, v in summary.items())
