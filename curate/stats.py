"""Describe a canonical table (the workspace dataset or one subset under shards/): counts and spreads."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa

from datasets_spec.errors import UserError
from datasets_spec.parts import list_parts, read_record, read_verified_parts
from datasets_spec.schema import COLUMNS
from datasets_spec.workspace import Workspace

DIFFICULTY_BINS = 10
STAT_COLUMNS = ["split", "subject", "topic", "grade", "task", "image", "difficulty", "n_tokens_est"]


def dataset_stats(table: pa.Table) -> dict:
    """Counts by split/subject/topic/grade/task, image fraction, 10-bin difficulty histogram, tokens."""
    df = pl.from_arrow(table.select(STAT_COLUMNS))
    rows = df.height
    if rows == 0:
        raise UserError("no samples to describe")
    # Bin i holds difficulty in [i/10, (i+1)/10); 1.0 falls in the last bin.
    scaled = (df["difficulty"].cast(pl.Float64) * DIFFICULTY_BINS).floor().cast(pl.Int64)
    bins = scaled.clip(0, DIFFICULTY_BINS - 1)
    hist = bins.value_counts()
    hist_map = dict(zip(hist[bins.name].to_list(), hist["count"].to_list(), strict=True))
    tokens = df["n_tokens_est"]
    return {
        "rows": rows,
        "splits": _counts(df, "split"),
        "subjects": _counts(df, "subject"),
        "topics": _counts(df, "topic"),
        "grades": _counts(df, "grade"),
        "tasks": _counts(df, "task"),
        "image_rows": rows - df["image"].null_count(),
        "image_fraction": round((rows - df["image"].null_count()) / rows, 6),
        "difficulty_histogram": {
            "edges": [round(i / DIFFICULTY_BINS, 2) for i in range(DIFFICULTY_BINS + 1)],
            "counts": [hist_map.get(i, 0) for i in range(DIFFICULTY_BINS)],
        },
        "difficulty_mean": round(float(df["difficulty"].mean()), 6),
        "n_tokens_est": {
            "min": int(tokens.min()),
            "mean": round(float(tokens.mean()), 2),
            "median": float(tokens.median()),
            "p95": float(tokens.quantile(0.95, interpolation="nearest")),
            "max": int(tokens.max()),
            "total": int(tokens.sum()),
        },
    }


def _counts(df: pl.DataFrame, column: str) -> dict[str, int]:
    """Value -> count, sorted by value; nulls (a field the source lacks) are reported as "(none)"."""
    counts = df[column].value_counts()
    pairs = sorted(
        zip(counts[column].to_list(), counts["count"].to_list(), strict=True),
        key=lambda kv: (kv[0] is None, str(kv[0]) if not isinstance(kv[0], int) else f"{kv[0]:04d}"),
    )
    return {("(none)" if k is None else str(k)): int(v) for k, v in pairs}


def resolve_target(ws: Workspace, target: Path | None) -> tuple[str, Path]:
    """``("dataset" | "subset", directory)`` for ``target`` (None = the workspace dataset).

    A relative target is looked up from the current directory, then the workspace, then its shards/.
    """
    if target is None:
        ws.dataset_info()
        return "dataset", ws.dataset_dir
    candidates = [Path(target)]
    if not Path(target).is_absolute():
        candidates += [ws.root / target, ws.shards_dir / target]
    for path in candidates:
        if (path / "manifest.json").is_file():
            return "subset", path
        if (path / "dataset.json").is_file():
            return "dataset", path
    raise UserError(f"{target}: not a dataset (dataset.json) or subset (manifest.json) directory")


def _record_name(kind: str) -> str:
    return "manifest.json" if kind == "subset" else "dataset.json"


def read_target(ws: Workspace, target: Path | None) -> tuple[str, Path, pa.Table]:
    """Canonical rows of the target, in stored order (a subset's parts are in selection order), each part
    checked against the hash its record holds."""
    kind, path = resolve_target(ws, target)
    if not list_parts(path):
        raise UserError(f"{path}: no part-*.parquet files")
    record_name = _record_name(kind)
    # Named columns: a part lacking them (a foreign file) is an error naming that part.
    table = read_verified_parts(path, read_record(path / record_name), record_name,
                                columns=[*COLUMNS, "rank"] if kind == "subset" else list(COLUMNS))
    if "rank" in table.column_names:
        table = table.sort_by("rank")
    return kind, path, table.select(list(COLUMNS))


def stats_target(ws: Workspace, target: Path | None = None) -> dict:
    """:func:`dataset_stats` of the workspace dataset or of a subset directory, plus where it came from."""
    kind, path, table = read_target(ws, target)
    info = read_record(path / _record_name(kind))
    stats = dataset_stats(table)
    return {"target": str(path), "kind": kind, "fingerprint": info.get("fingerprint"), **stats}
