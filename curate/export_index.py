"""The index beside a LLaVA-JSON export: which source records a released subset holds, exactly.

``<out>.index.json`` (``subset.json`` -> ``subset.index.json``) lists, in export order, each sample's id as
the source file wrote it and its 0-based position in the source JSON list (positions tell repeated ids
apart), the source file's sha256 recorded at ingest, the dataset fingerprint and, for a subset, its
strategy, seed, parts hash and the library versions that made it. Anyone holding the same source file
can rebuild the subset from positions alone, e.g. ``[mix[i] for i in index["positions"]]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.ingest_llava import read_original_ids, read_skipped_positions
from datasets_spec.errors import UserError
from datasets_spec.parts import atomic_file, file_sha256, read_json
from datasets_spec.workspace import Workspace

INDEX_KIND = "llava-json-index"
INDEX_VERSION = 1
SUBSET_KEYS = ("name", "strategy", "k", "seed", "params", "parts_hash", "library_versions", "tool_version")


def index_path(out: Path) -> Path:
    out = Path(out)
    stem = out.name[: -len(".json")] if out.name.endswith(".json") else out.name
    return out.with_name(f"{stem}.index.json")


def check_index_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse to replace a file at the index path unless it is a previous index and ``overwrite``."""
    path = index_path(out)
    if not path.exists():
        return
    try:
        ours = json.loads(path.read_text()).get("kind") == INDEX_KIND
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise UserError(f"{path}: exists and is not an export index; move it or choose another --out")
    # The index is renamed into place just before its export; an index without its export is what an
    # export killed between the two renames leaves, and is replaced without --overwrite.
    if not overwrite and Path(out).exists():
        raise UserError(f"{path}: exists (a previous export index); pass --overwrite to replace it")


def source_positions(ws: Workspace, sample_ids: list[str]) -> list[int] | None:
    """Each sample's position in the source JSON list; None when the dataset is not from LLaVA JSON."""
    info = ws.dataset_info()
    if info.get("source") != "llava":
        return None
    skipped = read_skipped_positions(ws.dataset_dir)
    if skipped is None:
        if info.get("skipped_images"):
            raise UserError(
                f"{ws.dataset_dir}: ingested before skipped items' positions were recorded and "
                f"{info['skipped_images']} were skipped; ingest again (--overwrite) to export an index"
            )
        skipped = []
    stored = ws.read_dataset(columns=["sample_id"]).column("sample_id")
    total = len(stored) + len(skipped)
    # Row r of the dataset came from the r-th source position that was not skipped.
    kept = np.setdiff1d(np.arange(total, dtype=np.int64), np.asarray(skipped, dtype=np.int64))
    lookup = {sid: row for row, sid in enumerate(stored.to_pylist())}
    missing = [sid for sid in sample_ids if sid not in lookup]
    if missing:
        raise UserError(f"sample {missing[0]!r} is not in the workspace dataset {ws.dataset_dir}")
    return [int(kept[lookup[sid]]) for sid in sample_ids]


def build_index(ws: Workspace, table: pa.Table, *, subset: dict | None, export_name: str) -> dict:
    """The index payload for exporting ``table`` (rows in export order); ``subset`` is its manifest."""
    sample_ids = table.column("sample_id").to_pylist()
    info = ws.dataset_info()
    originals = read_original_ids(ws.dataset_dir)
    ids = [json.loads(originals[s]) if s in originals else s for s in sample_ids]
    json_path = (info.get("source_paths") or {}).get("json")
    sha = (info.get("source_sha256") or {}).get("json")
    hashed_at = "ingest"
    if sha is None and json_path and Path(json_path).is_file():
        sha, hashed_at = file_sha256(Path(json_path)), "export"  # a dataset ingested before it was recorded
    return {
        "kind": INDEX_KIND,
        "index_version": INDEX_VERSION,
        "export": export_name,
        "rows": len(ids),
        "source": {"path": json_path, "sha256": sha, "sha256_computed_at": hashed_at if sha else None,
                   "kind": info.get("source")},
        "dataset_fingerprint": info.get("fingerprint"),
        "subset": {k: subset.get(k) for k in SUBSET_KEYS} if subset is not None else None,
        "ids": ids,
        "positions": source_positions(ws, sample_ids),
    }


def write_index(out: Path, payload: dict) -> Path:
    path = index_path(out)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def subset_manifest(kind: str, path: Path) -> dict | None:
    return read_json(path / "manifest.json") if kind == "subset" else None
