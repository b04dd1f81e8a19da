"""Subset diagnostics that need no training: how much of the pool a subset covers, before GPU hours.

:func:`subset_diagnostics` compares a subset with the pool it was drawn from: distinct groups per group
column, mean difficulty, image fraction, and near-duplicate pairs inside the subset (cosine similarity of
the embeddings). ``curate select`` and ``curate rules`` record it as the manifest's ``diagnostics``; the
coverage radius stays in the manifest's ``coverage`` record (the diagnostics name where it is).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.shards import manifest_value, read_manifest

# Group columns compared between subset and pool, when the dataset has them.
DIAGNOSTIC_GROUP_COLUMNS = ("subject", "topic", "category", "skill", "task")
# The one group column the ablation table and the CLI line show: the finest available, since a selector
# that misses groups shows it first where there are many small ones. In ScienceQA's hierarchy a subject
# (3) splits into topics, a topic into categories, a category into skills; task (LLaVA-mix source task)
# is coarser than a topic; subject, the coarsest, is hit by nearly any subset.
FINEST_GROUP_ORDER = ("skill", "category", "topic", "task", "subject")
# Cosine similarity at or above which two samples count as near-duplicates. Exact copies score 1 up to
# float error; 0.98 leaves room for re-encoded images and trivially reworded text while staying far above
# what unrelated samples reach, so the count reads as "copies", not "similar topics".
NEAR_DUP_COSINE = 0.98
# Rows per block of the exact pairwise pass: a 4096 x 4096 float32 similarity block is 64 MiB, which
# bounds memory whatever the subset size.
NEAR_DUP_BLOCK_ROWS = 4096
# Above this many subset rows the pairs are not counted: the exact pass is quadratic (50,000 rows of a
# 512-d set is ~6e11 multiply-adds, tens of seconds on a laptop); beyond it minutes, for a diagnostic.
NEAR_DUP_MAX_ROWS = 50_000
# Where the coverage radius lives (computed with the selection, not repeated here).
COVERAGE_RADIUS_KEY = "coverage.radius"


def _take(table: pa.Table, column: str, rows: np.ndarray) -> pa.ChunkedArray:
    return table.column(column).take(pa.array(np.asarray(rows, dtype=np.int64)))


def _distinct(values: pa.ChunkedArray) -> int:
    """Distinct values, null counted as one more (pyarrow's count over the column, no Python loop)."""
    return int(pc.count_distinct(values, mode="all").as_py())


def group_coverage(
    table: pa.Table, pool_rows: np.ndarray, subset_rows: np.ndarray
) -> dict[str, dict[str, int]]:
    """``{column: {"subset": distinct groups in the subset, "pool": distinct groups in the pool}}`` for each
    of :data:`DIAGNOSTIC_GROUP_COLUMNS` the table has. A null value is its own group (as ``MISSING_GROUP``
    is for --group-by); a column whose pool values are all null is skipped (it groups nothing)."""
    out: dict[str, dict[str, int]] = {}
    for column in DIAGNOSTIC_GROUP_COLUMNS:
        if column not in table.column_names:
            continue
        pool = _take(table, column, pool_rows)
        if pool.null_count == len(pool):
            continue
        out[column] = {"subset": _distinct(_take(table, column, subset_rows)), "pool": _distinct(pool)}
    return out


def mean_difficulty(table: pa.Table, rows: np.ndarray) -> float | None:
    """Mean of the ``difficulty`` column over ``rows`` (nulls skipped); None without the column or values."""
    if "difficulty" not in table.column_names or len(rows) == 0:
        return None
    value = pc.mean(_take(table, "difficulty", rows)).as_py()
    return None if value is None else round(float(value), 6)


def image_fraction(table: pa.Table, rows: np.ndarray) -> float | None:
    """Fraction of ``rows`` with an image (rounded like the manifest's ``image_fraction``)."""
    if "image" not in table.column_names or len(rows) == 0:
        return None
    return round(1.0 - _take(table, "image", rows).null_count / len(rows), 6)


def near_duplicate_pairs(
    embeddings: np.ndarray, *, threshold: float = NEAR_DUP_COSINE, block_rows: int = NEAR_DUP_BLOCK_ROWS
) -> int:
    """Unordered pairs ``i < j`` of rows of ``embeddings`` with cosine similarity >= ``threshold``.

    Exact: every pair is compared, block against block (``block_rows`` square), so memory stays at one
    block whatever the row count. A zero vector has no direction and matches nothing.
    """
    if block_rows <= 0:
        raise ValueError(f"block_rows must be positive (got {block_rows})")
    x = np.asarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    if n < 2:
        return 0
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    pairs = 0
    for i in range(0, n, block_rows):
        a = x[i:i + block_rows]
        for j in range(i, n, block_rows):
            sims = a @ x[j:j + block_rows].T
            hits = sims >= threshold
            if j == i:  # the diagonal block: only pairs above the diagonal (i < j), not self-pairs
                hits = np.triu(hits, k=1)
            pairs += int(hits.sum())
    return pairs


def near_duplicates(
    embeddings: np.ndarray | None,
    subset_rows: np.ndarray,
    *,
    threshold: float = NEAR_DUP_COSINE,
    block_rows: int = NEAR_DUP_BLOCK_ROWS,
    max_rows: int = NEAR_DUP_MAX_ROWS,
    skipped: str | None = None,
) -> dict:
    """The near-duplicate record: ``pairs`` (None with the ``skipped`` reason when not counted).

    ``embeddings`` has one row per dataset row (``subset_rows`` index it); None: no embedding set.
    """
    record: dict = {"pairs": None, "cosine_threshold": threshold, "skipped": None}
    if len(subset_rows) > max_rows:
        record["skipped"] = f"{len(subset_rows)} subset rows: above the {max_rows}-row cap of the exact count"
    elif embeddings is None:
        record["skipped"] = skipped or "no embedding set"
    else:
        record["pairs"] = near_duplicate_pairs(
            embeddings[np.asarray(subset_rows, dtype=np.int64)], threshold=threshold, block_rows=block_rows
        )
    return record


def subset_diagnostics(
    table: pa.Table,
    pool_rows: np.ndarray,
    subset_rows: np.ndarray,
    embeddings: np.ndarray | None = None,
    *,
    subset_embeddings: np.ndarray | None = None,
    embeddings_skipped: str | None = None,
) -> dict:
    """Everything above for a subset (``subset_rows``) of the pool (``pool_rows``), both dataset row indices.

    ``embeddings`` is the embedding matrix in dataset row order, or ``subset_embeddings`` only the subset's
    rows in ``subset_rows`` order (neither: no near-duplicate count, with ``embeddings_skipped`` as the
    reason). The coverage radius is in the manifest at :data:`COVERAGE_RADIUS_KEY`.
    """
    groups = group_coverage(table, pool_rows, subset_rows)
    dup_rows = subset_rows
    if subset_embeddings is not None:
        embeddings, dup_rows = subset_embeddings, np.arange(len(subset_rows))
    return {
        "groups": groups,
        "finest_group": finest_group(groups),
        "difficulty": {
            "subset": mean_difficulty(table, subset_rows), "pool": mean_difficulty(table, pool_rows),
        },
        "image_fraction": {
            "subset": image_fraction(table, subset_rows), "pool": image_fraction(table, pool_rows),
        },
        "near_duplicates": near_duplicates(embeddings, dup_rows, skipped=embeddings_skipped),
        "coverage_radius": COVERAGE_RADIUS_KEY,
    }


def finest_group(groups: Mapping[str, Mapping[str, int]]) -> str | None:
    """The first of :data:`FINEST_GROUP_ORDER` present in ``groups``."""
    return next((c for c in FINEST_GROUP_ORDER if c in groups), None)


def group_cell(manifest: Mapping) -> str | None:
    """``skill 12/40`` from a manifest's diagnostics (the finest group column); None without them."""
    column = manifest_value(manifest, "diagnostics.finest_group")
    counts = manifest_value(manifest, f"diagnostics.groups.{column}") if column else None
    if not isinstance(counts, Mapping):
        return None
    return f"{column} {counts.get('subset')}/{counts.get('pool')}"


def diagnostics_line(subset_dir: str | Path | None) -> str:
    """One line summarising the diagnostics of the subset written at ``subset_dir``."""
    if subset_dir is None:
        return "diagnostics: none (the selection stopped before writing a subset)"
    manifest = read_manifest(subset_dir)
    d = manifest.get("diagnostics")
    if not isinstance(d, Mapping):
        return "diagnostics: none recorded"

    def num(value: object, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    groups = ", ".join(f"{c} {v['subset']}/{v['pool']}" for c, v in d.get("groups", {}).items()) or "-"
    diff, img, dup = d.get("difficulty", {}), d.get("image_fraction", {}), d.get("near_duplicates", {})
    pairs = dup.get("pairs")
    return (
        f"diagnostics: groups {groups}; mean difficulty {num(diff.get('subset'))} "
        f"(pool {num(diff.get('pool'))}); img frac {num(img.get('subset'))} (pool {num(img.get('pool'))}); "
        f"near-dup pairs {pairs if pairs is not None else '-'}; "
        f"coverage radius {num(manifest_value(manifest, COVERAGE_RADIUS_KEY))}"
    )
