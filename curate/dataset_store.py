"""Write and describe the workspace's canonical dataset (dataset/ parts + dataset.json)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datasets_spec.errors import UserError
from datasets_spec.fingerprint import combine_digests, row_digests, table_fingerprint
from datasets_spec.outputs import check_apart_from_sources, clean_stale_temps
from datasets_spec.parts import (
    DATASET_ROWS_PER_PART,
    atomic_directory,
    part_hashes,
    part_name,
    read_json,
    write_part,
    write_parts,
    write_record,
)
from datasets_spec.schema import (
    CANONICAL_SCHEMA,
    IMAGE_TOKEN,
    NON_NULL_COLUMNS,
    SCHEMA_VERSION,
    validate_table,
)
from datasets_spec.workspace import Workspace, now_utc, tool_version


def split_counts(table: pa.Table) -> dict[str, int]:
    counts = pc.value_counts(table.column("split")).to_pylist()
    return {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: c["values"])}


def write_dataset(
    workspace: Workspace,
    table: pa.Table,
    *,
    source: str,
    source_paths: dict[str, str],
    image_root: Path | None,
    skipped_images: int = 0,
    overwrite: bool = False,
    extra: dict | None = None,
) -> dict:
    """Validate ``table`` and write it as the workspace dataset; return the dataset.json payload.

    An existing dataset with the same fingerprint is left alone (idempotent re-ingest); a different one is
    refused unless ``overwrite``. Everything is written under a temporary name and renamed at the end.
    """
    if table.num_rows == 0:
        raise UserError(f"{source_paths}: the dataset is empty (0 samples)")
    validate_table(table, where=f"{source} dataset")
    fingerprint = table_fingerprint(table)
    target = workspace.dataset_dir
    _check_target(target, [*source_paths.values(), image_root])
    info_path = target / "dataset.json"
    if info_path.exists():
        existing = read_json(info_path)
        if existing.get("fingerprint") == fingerprint and not overwrite:
            return existing
        if not overwrite:
            raise _different_dataset(target, existing)
    info = {
        **_header(source, source_paths, image_root),
        "rows": table.num_rows,
        "splits": split_counts(table),
        "image_rows": table.num_rows - table.column("image").null_count,
        "skipped_images": skipped_images,
        "fingerprint": fingerprint,
        "tool_version": tool_version(),
        "created_at": now_utc(),
        **(extra or {}),
    }
    with atomic_directory(target, overwrite=True) as tmp:
        write_parts(table, tmp)
        info["part_hashes"] = part_hashes(tmp)
        write_record(tmp / "dataset.json", info)
    return info


def _header(source: str, source_paths: dict[str, str], image_root: Path | None) -> dict:
    """The first keys of dataset.json: what was ingested, from where."""
    return {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "source_paths": {k: str(v) for k, v in source_paths.items()},
        "image_root": str(Path(image_root).resolve()) if image_root else None,
    }


def _different_dataset(target: Path, existing: dict) -> UserError:
    return UserError(
        f"{target}: already holds a different dataset ({existing.get('source')}, "
        f"{existing.get('rows')} rows); pass --overwrite to replace it"
    )


def check_dataset_target(ws: Workspace, sources: list) -> None:
    """:func:`_check_target` of ``ws``'s dataset folder, for ingests that write other things first."""
    _check_target(ws.dataset_dir, sources)


def _check_target(target: Path, sources: list) -> None:
    """The dataset folder never overlaps the ingest's own inputs, and only a dataset is ever replaced."""
    check_apart_from_sources(target, sources, option="the dataset folder")
    clean_stale_temps(target.parent, target.name)  # a killed --overwrite may have moved the dataset aside
    if target.is_dir() and not (target / "dataset.json").is_file() and any(target.iterdir()):
        raise UserError(
            f"{target}: exists and is not a dataset (no dataset.json); ingest only replaces a dataset it "
            "wrote: move the folder away first"
        )


class _SameDataset(Exception):
    """Raised inside the atomic block when the new content equals the dataset already on disk."""


def write_dataset_batches(
    workspace: Workspace,
    batches: Iterable[pa.Table | pa.RecordBatch],
    *,
    source: str,
    source_paths: dict[str, str],
    image_root: Path | None,
    where: str,
    overwrite: bool = False,
    finish: Callable[[Path], dict] | None = None,
    rows_per_part: int = DATASET_ROWS_PER_PART,
) -> dict:
    """Streaming :func:`write_dataset`: validate and write ``batches`` part by part; return dataset.json.

    Only the current part and, per row, its sample_id and a 32-byte digest stay in memory; the
    fingerprint equals ``table_fingerprint`` of the concatenated table and the parts are the same bytes
    ``write_dataset`` would write. ``finish(tmp_dir)`` runs once the batches are exhausted: it may write
    side files into the new dataset directory and returns extra dataset.json keys (``skipped_images``
    among them). The existing-dataset check needs the fingerprint, so it happens after reading.
    """
    target = workspace.dataset_dir
    info_path = target / "dataset.json"
    _check_target(target, [*source_paths.values(), image_root])
    existing = read_json(info_path) if info_path.exists() else None
    try:
        with atomic_directory(target, overwrite=True) as tmp:
            info = _stream_parts(batches, tmp, where=where, rows_per_part=rows_per_part)
            extra = finish(tmp) if finish else {}
            if existing is not None and not overwrite:
                if existing.get("fingerprint") == info["fingerprint"]:
                    raise _SameDataset
                raise _different_dataset(target, existing)
            payload = {
                **_header(source, source_paths, image_root),
                "skipped_images": 0,
                "tool_version": tool_version(),
                "created_at": now_utc(),
                **info,
                **extra,
                "part_hashes": part_hashes(tmp),
            }
            write_record(tmp / "dataset.json", payload)
    except _SameDataset:
        return existing
    return payload


def _stream_parts(batches: Iterable, directory: Path, *, where: str, rows_per_part: int) -> dict:
    ids, digests, pending = [], [], []
    n_pending = n_parts = rows = image_rows = 0
    splits: dict[str, int] = {}
    for batch in batches:
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        if table.num_rows == 0:
            continue
        _validate_batch(table, where)
        batch_ids, batch_digests = row_digests(table)
        ids.append(batch_ids)
        digests.append(batch_digests)
        rows += table.num_rows
        image_rows += table.num_rows - table.column("image").null_count
        for split, count in split_counts(table).items():
            splits[split] = splits.get(split, 0) + count
        pending.append(table)
        n_pending += table.num_rows
        while n_pending >= rows_per_part:
            buffered = pa.concat_tables(pending)
            write_part(buffered.slice(0, rows_per_part), directory / part_name(n_parts))
            n_parts += 1
            rest = buffered.slice(rows_per_part)
            pending, n_pending = [rest], rest.num_rows
    if rows == 0:
        raise UserError(f"{where}: the dataset is empty (0 samples)")
    if n_pending or n_parts == 0:
        write_part(pa.concat_tables(pending), directory / part_name(n_parts))
    all_ids = pa.chunked_array(ids)
    _check_unique(all_ids, where)
    return {
        "rows": rows,
        "splits": dict(sorted(splits.items())),
        "image_rows": image_rows,
        "fingerprint": combine_digests(all_ids, pa.chunked_array(digests)),
    }


def _check_unique(ids: pa.ChunkedArray, where: str) -> None:
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    ordered = pc.array_sort_indices(ids.combine_chunks())
    sorted_ids = ids.combine_chunks().take(ordered)
    same = pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, len(sorted_ids) - 1))
    first = pc.index(same, True).as_py()
    raise UserError(f"{where}: duplicate sample_id {sorted_ids[first].as_py()!r}")


def _validate_batch(table: pa.Table, where: str) -> None:
    """``validate_table`` with the per-row checks done column-wise: the row-by-row check (and its exact
    message) only runs when some row may fail, since it costs more than parsing the rows did."""
    if not _surely_valid(table):
        validate_table(table, where=where)


def _surely_valid(table: pa.Table) -> bool:
    """True only if ``validate_table`` would accept ``table`` (False just means: check row by row)."""
    if not table.schema.equals(CANONICAL_SCHEMA, check_metadata=False):
        return False
    if any(table.column(name).null_count for name in NON_NULL_COLUMNS):
        return False
    if pc.count_distinct(table.column("sample_id")).as_py() != table.num_rows:
        return False
    difficulty = table.column("difficulty").to_numpy()
    if not ((difficulty >= 0.0) & (difficulty <= 1.0)).all():
        return False
    n = table.num_rows
    if table.column("grade").null_count != n or table.column("answer").null_count != n:
        return False  # ScienceQA-style rows: their grade/answer checks stay row by row
    images = table.column("image").combine_chunks()
    present = images.drop_null()
    suspicious = pc.or_(pc.or_(pc.starts_with(present, "/"), pc.starts_with(present, "\\")),
                        pc.or_(pc.match_substring(present, ".."), pc.match_substring(present, ":")))
    if pc.any(suspicious).as_py():
        return False  # absolute or escaping paths: check_image_path gives the message
    return _image_tokens_ok(table.column("conversations").combine_chunks(), images.is_valid().to_numpy(False))


def _image_tokens_ok(convs: pa.ListArray, has_image: np.ndarray) -> bool:
    """Image rows: IMAGE_TOKEN once, in the first human turn, nowhere else; text rows: never."""
    lengths = pc.list_value_length(convs).to_numpy(zero_copy_only=False)
    if (lengths == 0).any():
        return False
    turns = pc.list_flatten(convs)
    frm, value = pc.struct_field(turns, "from"), pc.struct_field(turns, "value")
    if turns.null_count or frm.null_count or value.null_count:
        return False
    counts = pc.count_substring(value, IMAGE_TOKEN).to_numpy(zero_copy_only=False)
    row = np.repeat(np.arange(len(convs)), lengths)
    totals = np.bincount(row, weights=counts, minlength=len(convs))
    if (totals[~has_image] != 0).any():
        return False
    human = pc.equal(frm, "human").to_numpy(zero_copy_only=False)
    first_rows, first_at = np.unique(row[human], return_index=True)
    first_count = np.zeros(len(convs))
    has_human = np.zeros(len(convs), dtype=bool)
    first_count[first_rows] = counts[np.flatnonzero(human)[first_at]]
    has_human[first_rows] = True
    return bool((has_human[has_image] & (first_count[has_image] == 1) & (totals[has_image] == 1)).all())
