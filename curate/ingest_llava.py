"""Ingest a LLaVA conversation JSON file into the workspace's dataset/ (streamed, part by part)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from curate.dataset_store import write_dataset_batches
from datasets_spec.llava_json import LlavaJsonReader
from datasets_spec.llava_tasks import TASK_RULES_VERSION
from datasets_spec.parts import file_sha256, read_part, write_part
from datasets_spec.workspace import Workspace

# Side file in dataset/ mapping sample_id -> the file's own id as JSON text, for ids that were integers or
# renamed duplicates; export reads it to write the input's ids back exactly.
ORIGINAL_IDS_FILE = "original_ids.parquet"
ORIGINAL_IDS_SCHEMA = pa.schema([("sample_id", pa.string()), ("original_id", pa.string())])
# Side file: list positions (0-based) of the source items that were skipped (bad images). Rows are stored
# in file order, so row r came from the r-th position not in this list.
SKIPPED_POSITIONS_FILE = "skipped_positions.parquet"


def ingest_llava(
    ws: Workspace,
    path: Path,
    *,
    image_root: Path | None = None,
    split: str = "train",
    skip_bad_images: bool = False,
    overwrite: bool = False,
    decode_images: bool = False,
    follow_symlinks: bool = False,
    duplicate_ids: str = "error",
) -> dict:
    """Write ``path`` (LLaVA conversation JSON) as the workspace dataset; return dataset.json's payload.

    ``decode_images`` fully decodes every image (slow on 600K images); by default an image must exist.
    ``duplicate_ids="suffix"`` keeps repeated ids as ``<id>#2``, ... instead of refusing the file.
    """
    path = Path(path)
    reader = LlavaJsonReader(
        path,
        image_root=image_root,
        split=split,
        skip_bad_images=skip_bad_images,
        decode_images=decode_images,
        follow_symlinks=follow_symlinks,
        duplicate_ids=duplicate_ids,
    )

    def finish(directory: Path) -> dict:
        write_original_ids(directory, reader.original_ids)
        write_skipped_positions(directory, reader.skipped_positions)
        return {
            # the file the rows' list positions refer to (a released subset's index names it)
            "source_sha256": {"json": file_sha256(path)},
            "skipped_images": reader.skipped_images,
            "follow_symlinks": follow_symlinks,
            "ignored_keys": dict(sorted(reader.ignored_keys.items())),
            "renamed_or_int_ids": len(reader.original_ids),
            "duplicate_ids": duplicate_ids,
            "task_rules_version": TASK_RULES_VERSION,
        }

    return write_dataset_batches(
        ws,
        reader.batches(),
        source="llava",
        source_paths={"json": str(path.resolve())},
        image_root=image_root,
        where=str(path),
        overwrite=overwrite,
        finish=finish,
    )


def write_original_ids(directory: Path, original_ids: dict[str, str]) -> None:
    items = sorted(original_ids.items())
    table = pa.table(
        {"sample_id": [k for k, _ in items], "original_id": [v for _, v in items]}, schema=ORIGINAL_IDS_SCHEMA
    )
    write_part(table, directory / ORIGINAL_IDS_FILE)


def read_original_ids(dataset_dir: Path) -> dict[str, str]:
    """sample_id -> original id JSON text ({} when the dataset has no such file)."""
    path = Path(dataset_dir) / ORIGINAL_IDS_FILE
    if not path.exists():
        return {}
    table = read_part(path, columns=["sample_id", "original_id"])
    ids, originals = table.column("sample_id").to_pylist(), table.column("original_id").to_pylist()
    return dict(zip(ids, originals, strict=True))


def write_skipped_positions(directory: Path, positions: list[int]) -> None:
    table = pa.table({"position": pa.array(positions, type=pa.int64())})
    write_part(table, directory / SKIPPED_POSITIONS_FILE)


def read_skipped_positions(dataset_dir: Path) -> list[int] | None:
    """Positions of the skipped source items; None when the dataset predates the side file."""
    path = Path(dataset_dir) / SKIPPED_POSITIONS_FILE
    if not path.exists():
        return None
    return read_part(path, columns=["position"]).column("position").to_pylist()
