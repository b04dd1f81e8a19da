"""Subsets on disk: ``shards/<name>/`` = Parquet parts (canonical rows + ``rank``) + ``manifest.json``.

A directory holding ``manifest.json`` is one subset; a directory of such directories is many
(:func:`find_subsets`). Parts are written in ``rank`` order and are byte-identical for the same inputs
and seed; the manifest records how the subset was made and a hash of the parts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datasets_spec.errors import UserError
from datasets_spec.fingerprint import check_dataset_unchanged
from datasets_spec.outputs import check_replaceable, has_file
from datasets_spec.parts import (
    atomic_directory,
    hash_parts,
    part_hashes,
    read_record,
    read_verified_parts,
    write_parts,
    write_record,
)
from datasets_spec.schema import COLUMNS
from datasets_spec.versions import selection_library_versions
from datasets_spec.workspace import Workspace, now_utc, tool_version

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# Counts in the manifest are kept for these columns (issue: by split/subject/topic).
COUNT_COLUMNS = ("split", "subject", "topic")


def default_subset_name(strategy: str, k: int, group_by: str | None = None) -> str:
    """The subset directory a selection gets without ``--name``: ``<strategy>-k<k>`` (``-by-<column>``
    when it ran per group), so two budgets or groupings of one strategy never collide."""
    return f"{strategy}-k{k}" + (f"-by-{group_by}" if group_by else "")


def check_subset_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def _counts(table: pa.Table, column: str) -> dict[str, int]:
    values = pc.value_counts(table.column(column)).to_pylist()
    out = {("(none)" if v["values"] is None else str(v["values"])): v["counts"] for v in values}
    return dict(sorted(out.items()))


def subset_table(dataset: pa.Table, rows: np.ndarray) -> pa.Table:
    """Canonical rows ``rows`` of ``dataset`` in that order, plus ``rank`` (0 = selected first)."""
    picked = dataset.select(list(COLUMNS)).take(pa.array(np.asarray(rows, dtype=np.int64)))
    return picked.append_column("rank", pa.array(np.arange(len(rows), dtype=np.int32)))


def write_subset(
    ws: Workspace,
    name: str,
    dataset: pa.Table,
    rows: np.ndarray,
    manifest: dict,
    *,
    overwrite: bool = False,
    dataset_fingerprint: str | None = None,
) -> Path:
    """Write ``shards/<name>/`` atomically; the manifest gets counts, image fraction and the parts hash.

    ``dataset_fingerprint`` is the fingerprint the dataset had when ``dataset`` was read: the subset is
    renamed into place only if the workspace's dataset still has it (None: the current one is recorded).
    """
    target = ws.shards_dir / check_subset_name(name)
    table = subset_table(dataset, rows)
    full = {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        **manifest,
        "rows": table.num_rows,
        "counts": {c: _counts(table, c) for c in COUNT_COLUMNS},
        "image_fraction": round(1.0 - table.column("image").null_count / max(1, table.num_rows), 6),
        "dataset_fingerprint": dataset_fingerprint or ws.dataset_fingerprint(),
        "seed": manifest.get("seed"),  # every subset says its seed (None: the strategy takes none)
        "library_versions": selection_library_versions(),
        "tool_version": tool_version(),
        "created_at": now_utc(),
    }
    check_replaceable(target, kind="subset", overwrite=overwrite, is_previous=has_file(MANIFEST),
                      marker=MANIFEST)
    with atomic_directory(target, overwrite=overwrite) as tmp:
        full["parts"] = write_parts(table, tmp)
        full["parts_hash"] = hash_parts(tmp)
        full["part_hashes"] = part_hashes(tmp)
        write_record(tmp / MANIFEST, full)
        check_dataset_unchanged(ws, full["dataset_fingerprint"])
    return target


def read_manifest(subset_dir: str | Path) -> dict:
    """The subset's ``manifest.json`` (a UserError naming the file when absent, malformed or edited)."""
    return read_record(Path(subset_dir) / MANIFEST)


def manifest_value(manifest: Mapping, path: str) -> Any:
    """The manifest entry at a dotted ``path`` (e.g. ``coverage.radius``); None where it is absent (a
    subset selected without embeddings has no coverage)."""
    node: Any = manifest
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def subset_hash(manifest: Mapping) -> str:
    """The hash of the subset's parts, which identifies exactly the rows it holds."""
    return manifest["parts_hash"]


def read_subset(path: str | Path) -> tuple[pa.Table, dict]:
    """The subset's rows (canonical columns + rank, in rank order) and its manifest; every part is checked
    against the hash its manifest recorded first (a corrupt or foreign part is named)."""
    path = Path(path)
    manifest = read_manifest(path)
    table = read_verified_parts(path, manifest, MANIFEST, columns=[*COLUMNS, "rank"])
    return table, manifest


def load_subset(ws: Workspace, subset_dir: str | Path) -> tuple[pa.Table, dict]:
    """The one loader of a subset for training, dry runs and evaluation: its rows and manifest.

    Refused, each with one line naming the directory: not a directory, no manifest.json, a part that
    differs from its recorded hash, no rows, or a subset selected from another dataset than ``ws``'s.
    """
    subset_dir = Path(subset_dir)
    if not subset_dir.is_dir():
        raise UserError(f"{subset_dir}: no such subset directory")
    if not (subset_dir / MANIFEST).is_file():
        raise UserError(f"{subset_dir}: no {MANIFEST}; not a subset written by `curate select`")
    table, manifest = read_subset(subset_dir)
    if table.num_rows == 0:
        raise UserError(f"{subset_dir}: the subset is empty (0 samples)")
    recorded = manifest.get("dataset_fingerprint")
    current = ws.dataset_fingerprint()
    if recorded != current:
        raise UserError(
            f"{subset_dir}: built from dataset {str(recorded)[:12]}, but the workspace dataset is "
            f"{current[:12]}; select the subset again in this workspace"
        )
    return table, manifest


def find_subsets(path: str | Path) -> list[Path]:
    """``path`` itself if it holds manifest.json, else its child directories that do (sorted by name)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: not a directory")
    found = sorted(
        p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    )
    if not found:
        raise UserError(
            f"{path}: no subset (no manifest.json here or in its subdirectories); run `curate select`"
        )
    return found
