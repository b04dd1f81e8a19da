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

PART_PATTERN = "part-{:05d}.parquet"
# 50k rows keeps a part of canonical ScienceQA/LLaVA rows in the tens of MB: small enough to rewrite on
# resume, large enough that mix665k is 14 files, not thousands.
DEFAULT_ROWS_PER_PART = 50_000


def part_name(index: int) -> str:
    return PART_PATTERN.format(index)


def write_part(table: pa.Table, path: Path) -> None:
    """Write one Parquet part deterministically (zstd, no dictionary surprises across runs)."""
    pq.write_table(table, path, compression="zstd", use_dictionary=True, write_statistics=True)


def write_parts(table: pa.Table, directory: Path, rows_per_part: int = DEFAULT_ROWS_PER_PART) -> list[str]:
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


def read_parts(directory: Path, columns: list[str] | None = None) -> pa.Table:
    """Read all parts of ``directory`` in order as one table."""
    parts = list_parts(directory)
    if not parts:
        raise UserError(f"{directory}: no part-*.parquet files")
    tables = [pq.read_table(p, columns=columns) for p in parts]
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


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
    keeps its old content (or stays absent).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (temporary name, then rename), sorted keys for stable diffs."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise UserError(f"{path}: malformed JSON at {where}: {exc.msg}") from None


@contextlib.contextmanager
def atomic_directory(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` only if the block succeeds.

    ``final`` existing is an error unless ``overwrite``; the old content is removed only after the new
    content is complete. On any exception the temporary directory is deleted.
    """
    final = Path(final)
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
