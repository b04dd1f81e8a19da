"""Predictable, atomic table output: ``part-00000.parquet`` files in a directory renamed into place.

Writers build the whole output under a hidden temporary sibling and rename it over the final name at
the end, so a failure never leaves a half-written directory where a reader would find it. Parquet
bytes are deterministic for the same table and library versions (fixed compression, no timestamps).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from datasets_spec.errors import UserError
from datasets_spec.outputs import clean_stale_temps
from datasets_spec.safe_json import load_json_file
from datasets_spec.schema import ADDED_COLUMNS, with_added_columns

PART_PATTERN = "part-{:05d}.parquet"
# Rows per Parquet part of canonical samples (dataset/, shards/; embedding sets have their own, smaller
# parts). 50k rows keeps a part of ScienceQA/LLaVA rows in the tens of MB: small enough to rewrite on
# resume, large enough that mix665k is 14 files, not thousands.
DATASET_ROWS_PER_PART = 50_000


def part_name(index: int) -> str:
    return PART_PATTERN.format(index)


def write_part(table: pa.Table, path: Path) -> None:
    """Write one Parquet part deterministically (zstd, no dictionary surprises across runs)."""
    pq.write_table(table, path, compression="zstd", use_dictionary=True, write_statistics=True)


def write_parts(table: pa.Table, directory: Path, rows_per_part: int = DATASET_ROWS_PER_PART) -> list[str]:
    """Split ``table`` into numbered parts inside ``directory``; return the part file names."""
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    n_parts = max(1, -(-table.num_rows // rows_per_part))
    for i in range(n_parts):
        name = part_name(i)
        write_part(table.slice(i * rows_per_part, rows_per_part), directory / name)
        names.append(name)
    return names


def list_parts(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-*.parquet"))


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file; a corrupt, truncated or foreign file is a UserError naming it."""
    try:
        present = columns
        if columns is not None and any(c in ADDED_COLUMNS for c in columns):
            # a part written before those columns existed lacks them (pyarrow refuses absent names)
            names = set(pq.read_schema(path).names)
            present = [c for c in columns if c in names or c not in ADDED_COLUMNS]
        table = pq.read_table(path, columns=present)
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = " ".join(str(exc).replace(str(path), "").split())
        detail = f": {reason}" if reason and len(reason) <= 120 else ""
        raise UserError(
            f"{path}: not a readable Parquet file ({type(exc).__name__}{detail}); corrupt, truncated or "
            "foreign"
        ) from None
    if columns is not None:
        missing = [c for c in columns if c not in table.column_names]
        if missing and all(c in ADDED_COLUMNS for c in missing):
            return with_added_columns(table, columns)
        if missing:
            raise UserError(f"{path}: lacks columns {missing}; not a part this tool wrote")
    return table


def read_parts(directory: Path, columns: list[str] | None = None) -> pa.Table:
    """Read all parts of ``directory`` in order as one table; every part must have the first one's schema."""
    parts = list_parts(directory)
    if not parts:
        raise UserError(f"{directory}: no part-*.parquet files")
    tables = [read_part(p, columns=columns) for p in parts]
    for path, table in zip(parts[1:], tables[1:], strict=True):
        if not table.schema.equals(tables[0].schema, check_metadata=False):
            raise UserError(f"{path}: its columns differ from {parts[0].name}'s; not a part of this table")
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parquet_files(directory: Path) -> list[Path]:
    """The parts and side tables (e.g. dataset/original_ids.parquet) of an output directory."""
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))


def part_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every Parquet file in ``directory`` by name, recorded at write time so that
    :func:`verify_parts` can name the first file that changed since."""
    return {p.name: file_sha256(p) for p in parquet_files(directory)}


def verify_parts(directory: Path, recorded: dict[str, str]) -> int:
    """Check ``directory``'s files against hashes recorded at write time; return how many were checked.

    The first missing, changed or unrecorded part is a UserError naming it.
    """
    for name, expected in recorded.items():
        path = directory / name
        if not path.is_file():
            raise UserError(f"{path}: missing (recorded when the output was written)")
        if file_sha256(path) != expected:
            raise UserError(f"{path}: content differs from the hash recorded at write time (corrupt or "
                            "replaced)")
    for path in parquet_files(directory):
        if path.name not in recorded:
            raise UserError(f"{path}: not one of the parts recorded at write time")
    return len(recorded)


def hash_parts(directory: Path) -> str:
    """sha256 over the part files' names and bytes, in order: identifies exactly what was written."""
    digest = hashlib.sha256()
    for path in list_parts(directory):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` only if the block succeeds.

    A reader never sees a half-written file: on any exception the temporary file is removed and ``path``
    keeps its old content (or stays absent). Success also removes temporaries of dead writers of ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # Temporaries of killed writers of this file go with the next successful write.
    clean_stale_temps(path.parent, path.name)


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (temporary name, then rename), sorted keys for stable diffs."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    """A JSON object the tool wrote (manifest, dataset.json, ...), read with the bounds of
    :mod:`datasets_spec.safe_json`; anything else is a UserError naming the file."""
    record = load_json_file(path)
    if not isinstance(record, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(record).__name__}")
    return record


# --- records (dataset.json, manifest.json, embeddings.json, scores.json) ---------------------------------

# The record's own hash, over its canonical JSON without this key: an edit by hand is noticed on read.
RECORD_HASH_KEY = "record_sha256"


def _record_digest(payload: dict) -> str:
    body = {k: v for k, v in payload.items() if k != RECORD_HASH_KEY}
    # Through JSON once, so the digest is over what a reader parses back (default=str as in write_json).
    canonical = json.dumps(json.loads(json.dumps(body, default=str)), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_record(path: Path, payload: dict) -> None:
    """:func:`write_json` of an output's record, sealed with its own hash (:func:`read_record` checks it)."""
    write_json(path, {**payload, RECORD_HASH_KEY: _record_digest(payload)})


def read_record(path: Path) -> dict:
    """An output's record; one edited since it was written is a UserError naming it (records written
    before the seal existed carry none and are read as they are)."""
    record = read_json(path)
    sealed = record.get(RECORD_HASH_KEY)
    if sealed is not None and sealed != _record_digest(record):
        raise UserError(f"{path}: edited since it was written (its {RECORD_HASH_KEY} no longer matches); "
                        "rerun the command that wrote it")
    return record


def verify_recorded_parts(directory: Path, record: dict, record_name: str) -> tuple[int, str]:
    """Check ``directory``'s Parquet files against what ``record`` recorded; return (files, method).

    Per-file ``part_hashes`` name the first missing, changed or foreign file; older records with only the
    combined ``parts_hash`` are checked against that; a record with neither is not checked (0, "none").
    """
    recorded = record.get("part_hashes")
    if isinstance(recorded, dict):
        return verify_parts(directory, recorded), "part_hashes"
    if record.get("parts_hash"):
        for part in list_parts(directory):
            read_part(part)  # names the first unreadable part
        if hash_parts(directory) != record["parts_hash"]:
            raise UserError(f"{directory}: parts differ from the parts_hash recorded in {record_name}")
        return len(list_parts(directory)), "parts_hash"
    return 0, "none"


def read_verified_parts(directory: Path, record: dict, record_name: str,
                        columns: list[str] | None = None) -> pa.Table:
    """:func:`read_parts`, then :func:`verify_recorded_parts`: what feeds a selection, a training run or
    an export is exactly what was written. (Reading first names an unreadable part as such, rather than
    only as changed.)"""
    table = read_parts(directory, columns=columns)
    verify_recorded_parts(directory, record, record_name)
    return table


@contextlib.contextmanager
def atomic_directory(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` only if the block succeeds.

    ``final`` existing is an error unless ``overwrite``; the old content is removed only after the new
    content is complete. On any exception the temporary directory is deleted.
    """
    final = Path(final)
    # A killed earlier run may have left temporaries, or moved the previous output aside: settle that first.
    clean_stale_temps(final.parent, final.name)
    if final.exists() and not overwrite:
        raise UserError(f"{final}: already exists (pass --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
