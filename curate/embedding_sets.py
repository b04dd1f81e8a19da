"""Reading embedding sets: which sets a workspace holds, the default one, and the matrix in dataset order.

A set is ``embeddings/<tag>/`` with Parquet parts (``sample_id``, fixed-size ``embedding`` list) and
``embeddings.json``; ``embeddings/DEFAULT`` names the set commands use without ``--embeddings``. A set
computed for another dataset fingerprint, unfinished, or holding NaN/inf is refused, never read stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from datasets_spec.errors import UserError
from datasets_spec.parts import atomic_file, list_parts, read_json, read_part
from datasets_spec.workspace import Workspace

DEFAULT_POINTER = "DEFAULT"
INFO_NAME = "embeddings.json"


def write_default(ws: Workspace, tag: str) -> None:
    """Make ``tag`` the workspace's default embedding set."""
    path = ws.embeddings_dir / DEFAULT_POINTER
    with atomic_file(path) as tmp:
        tmp.write_text(tag + "\n")


def complete_sets(ws: Workspace) -> list[str]:
    root = ws.embeddings_dir
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / INFO_NAME).exists())


def resolve_tag(ws: Workspace, tag: str | None = None) -> str:
    """The requested tag, else ``embeddings/DEFAULT``, else the only set present."""
    sets = complete_sets(ws)
    if tag is not None:
        if tag not in sets:
            have = f" (present: {', '.join(sets)})" if sets else ""
            raise UserError(f"{ws.embeddings_dir / tag}: no embedding set{have}; run `curate embed` first")
        return tag
    pointer = ws.embeddings_dir / DEFAULT_POINTER
    if pointer.exists():
        named = pointer.read_text().strip()
        if named in sets:
            return named
    if len(sets) == 1:
        return sets[0]
    if not sets:
        raise UserError(f"{ws.embeddings_dir}: no embedding set; run `curate embed` first")
    raise UserError(f"{ws.embeddings_dir}: several embedding sets ({', '.join(sets)}); pass --embeddings TAG")


def _iter_matrix(d: Path, dim: int) -> Iterator[tuple[list[str], np.ndarray]]:
    for part in list_parts(d):
        t = read_part(part, columns=["sample_id", "embedding"])
        kind = t.schema.field("embedding").type
        if not pa.types.is_fixed_size_list(kind) or kind.list_size != dim:
            raise UserError(f"{part}: column embedding is {kind}, expected {dim} float32 values per row")
        col = t.column("embedding").combine_chunks()
        yield t.column("sample_id").to_pylist(), col.values.to_numpy(zero_copy_only=False).reshape(-1, dim)


def embedding_info(ws: Workspace, tag: str | None = None) -> tuple[Path, dict]:
    """The embedding set's directory and info (with its ``tag``), refused when incomplete or stale."""
    tag = resolve_tag(ws, tag)
    d = ws.embeddings_dir / tag
    info = read_json(d / INFO_NAME)
    if not info.get("complete"):
        raise UserError(f"{d}: embedding set is incomplete; rerun `curate embed` to finish it")
    fingerprint = ws.dataset_fingerprint()
    if info.get("dataset_fingerprint") != fingerprint:
        raise UserError(
            f"{d}: stale embeddings, computed for dataset {str(info.get('dataset_fingerprint'))[:12]} "
            f"but the workspace dataset is {fingerprint[:12]}; run `curate embed --overwrite`"
        )
    return d, {**info, "tag": tag}


def load_embeddings(ws: Workspace, tag: str | None = None) -> tuple[np.ndarray, list[str], dict]:
    """Return ``(matrix, sample_ids, info)`` with rows in the dataset's sample order.

    Raises UserError when the set is missing, was computed for another dataset, or holds NaN/inf.
    """
    d, info = embedding_info(ws, tag)
    dim = int(info["dim"])
    ids: list[str] = []
    chunks = []
    for part_ids, mat in _iter_matrix(d, dim):
        ids.extend(part_ids)
        chunks.append(mat)
    matrix = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    dataset_ids = ws.read_dataset(columns=["sample_id"]).column("sample_id").to_pylist()
    if ids != dataset_ids:
        pos = {sid: i for i, sid in enumerate(ids)}
        missing = [s for s in dataset_ids if s not in pos]
        if missing or len(ids) != len(dataset_ids):
            raise UserError(
                f"{d}: stale embeddings, sample {missing[:1]} has no vector; run `curate embed --overwrite`"
            )
        matrix = matrix[[pos[s] for s in dataset_ids]]
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{d}: embedding of sample {dataset_ids[first]!r} contains NaN or inf ({int(bad.sum())} rows); "
            f"rerun `curate embed --overwrite`"
        )
    return matrix, dataset_ids, info
