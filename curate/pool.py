"""The pool a selection draws from, and its filters, in the order ``curate select`` applies them.

1. the dataset rows of ``split`` (``all``: every split);
2. image-bearing rows only, with ``require_image``;
3. score thresholds: rows whose score in each named score set lies inside its bounds (inclusive; a row
   without a score in a thresholded set is dropped), so a rule on a column never re-embeds;
4. near-duplicates removed (L2 below ``dedup_eps`` on the embeddings), by :func:`curate.strategies.dedup_pool`
   once the embeddings are loaded.

Every step that leaves nothing is one clear error naming the filter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.strategies import check_dedup_eps, check_k
from datasets_spec.errors import UserError
from datasets_spec.workspace import Workspace

ALL_SPLITS = "all"


@dataclass(frozen=True)
class PoolSpec:
    """Which dataset rows a selection may pick from."""

    split: str = "train"
    """Dataset split of the pool; ``all`` for every split."""
    require_image: bool = False
    """Only image-bearing rows."""
    dedup_eps: float | None = None
    """Drop near-duplicates (L2 distance below this on the embeddings) before the strategy runs."""
    min_scores: dict[str, float] = field(default_factory=dict)
    """Score set name -> lowest score kept (inclusive)."""
    max_scores: dict[str, float] = field(default_factory=dict)
    """Score set name -> highest score kept (inclusive)."""

    def __post_init__(self) -> None:
        if self.dedup_eps is not None:
            check_dedup_eps(self.dedup_eps)

    @property
    def has_score_thresholds(self) -> bool:
        return bool(self.min_scores or self.max_scores)


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
    """Number of samples in the pool :func:`build_pool` draws from (before scores and near-duplicates)."""
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


def score_filter(ws: Workspace, table: pa.Table, pool: np.ndarray, min_scores: dict[str, float],
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
        raise UserError(f"the score thresholds leave no sample in the pool ({_bounds_text(summary)})")
    return pool[keep], summary


def parse_score_bounds(values: list[str], flag: str) -> dict[str, float]:
    """``NAME=NUMBER`` items of ``--min-score`` / ``--max-score`` as a score set -> bound mapping."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r}: expected NAME=NUMBER (a score set under scores/ and a bound)")
    return out


def _bounds_text(summary: dict) -> str:
    return ", ".join(f"{n}: [{v['min']}, {v['max']}]" for n, v in summary.items())
