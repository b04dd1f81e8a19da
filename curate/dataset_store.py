"""Write and describe the workspace's canonical dataset (dataset/ parts + dataset.json)."""

from __future__ import annotations

import datetime as _dt
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate.workspace import Workspace
from datasets_spec.errors import UserError
from datasets_spec.fingerprint import table_fingerprint
from datasets_spec.parts import atomic_directory, read_json, write_json, write_parts
from datasets_spec.schema import SCHEMA_VERSION, validate_table


def tool_version() -> str:
    try:
        return version("llava-curate")
    except PackageNotFoundError:
        return "0+unknown"


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


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
    info_path = target / "dataset.json"
    if info_path.exists():
        existing = read_json(info_path)
        if existing.get("fingerprint") == fingerprint and not overwrite:
            return existing
        if not overwrite:
            raise UserError(
                f"{target}: already holds a different dataset ({existing.get('source')}, "
                f"{existing.get('rows')} rows); pass --overwrite to replace it"
            )
    elif target.exists() and any(target.iterdir()) and not overwrite:
        raise UserError(f"{target}: exists and is not a dataset; pass --overwrite to replace it")
    info = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "source_paths": {k: str(v) for k, v in source_paths.items()},
        "image_root": str(Path(image_root).resolve()) if image_root else None,
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
        write_json(tmp / "dataset.json", info)
    return info
