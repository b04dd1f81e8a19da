"""The ``rules`` strategy: a careful curator's hand rules as a deterministic ordering of the pool.

``curate select --strategy rules --min-per-subject 1 --k 1000`` runs it like every other strategy (same
pool filters, manifest and diagnostics); ``curate rules`` is the same selection under its old name and
flags (``--group-by`` there names the minimums' column, ``--require-image`` the image-first ordering).

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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.group_budgets import GROUP_COLUMNS, group_labels
from curate.kcenter import check_k
from datasets_spec.errors import UserError
from datasets_spec.workspace import Workspace

RULES = "rules"
PREFERENCES = ("hard", "easy", "none")
DEFAULT_MINIMUM_BY = "subject"


def check_minimum_by(column: str, flag: str = "--minimum-by") -> None:
    """The minimums' column; ``flag`` is the option the user gave it as (`curate rules` calls it
    ``--group-by``)."""
    if column not in GROUP_COLUMNS:
        raise UserError(f"{flag} {column!r}: valid: {', '.join(GROUP_COLUMNS)}")


def check_prefer(prefer: str) -> None:
    if prefer not in PREFERENCES:
        raise UserError(f"--prefer {prefer!r}: valid: {', '.join(PREFERENCES)}")


def check_minimum(n: int) -> None:
    if n < 0:
        raise UserError(f"--min-per-subject must be >= 0 (got {n})")


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


def rules_select(
    embeddings: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    difficulty: np.ndarray,
    has_image: np.ndarray,
    minimum_groups: np.ndarray,
    min_per_subject: int = 0,
    prefer: str = "hard",
    image_first: bool = False,
    report: dict | None = None,
) -> np.ndarray:
    """The rules as a strategy: ``k`` pool positions, the group minimums first, then the ordering.

    ``difficulty``, ``has_image`` and ``minimum_groups`` (the minimums' groups) hold one value per pool
    row (:func:`rules_inputs` reads them from the dataset); ``embeddings`` is unused (the rules read
    columns, not features). ``report`` receives the minimum and fill counts and the picks per group.
    """
    check_k(k, len(difficulty))
    order = rule_order(np.asarray(difficulty), np.asarray(has_image, dtype=bool), prefer=prefer,
                       image_first=image_first, seed=seed)
    labels = [str(g) for g in minimum_groups]
    positions, summary = pick_by_rules(order, labels, k, min_per_subject)
    if report is not None:
        picked = [labels[p] for p in positions.tolist()]
        report.update(summary, per_group={g: picked.count(g) for g in sorted(set(labels))})
    return positions


def rules_inputs(ws: Workspace, options: dict, table: pa.Table, rows: np.ndarray, info: dict | None,
                 report: dict) -> dict:
    """The columns the rules read for the pool's dataset ``rows``, in place of the ``minimum_by`` option."""
    out = dict(options)
    column = out.pop("minimum_by", None) or DEFAULT_MINIMUM_BY
    picked = table.take(pa.array(rows))
    out["difficulty"] = picked.column("difficulty").to_numpy(zero_copy_only=False)
    out["has_image"] = pc.is_valid(picked.column("image")).to_numpy(zero_copy_only=False)
    out["minimum_groups"] = group_labels(table, rows, column)
    report["minimum_by"] = column
    return out
