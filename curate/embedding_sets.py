"""Reading embedding sets: which sets a workspace holds, the default one, and the matrix in dataset order.

A set is ``embeddings/<tag>/`` with Parquet parts (``sample_id``, fixed-size ``embedding`` list) and
``embeddings.json``; ``embeddings/DEFAULT`` names the set commands use without ``--embeddings``. A set
computed for another dataset fingerprint, unfinished, holding NaN/inf, or whose ``embeddings.json``
disagrees with its parts (dim, dtype, row counts, part names, recorded part hashes) is refused with one
line, never read stale or misread.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datasets_spec.errors import UserError
from datasets_spec.parts import atomic_file, list_parts, part_name, read_record
from datasets_spec.workspace import Workspace

DEFAULT_POINTER = "DEFAULT"
INFO_NAME = "embeddings.json"
# Storage dtypes of a set (``embeddings.json`` ``dtype``) and their Parquet value types.
DTYPES = {"float32": np.float32, "float16": np.float16}
ARROW_TYPES = {"float32": pa.float32(), "float16": pa.float16()}


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


@dataclass(frozen=True)
class EmbeddingSet:
    """An embedding set whose recorded metadata (dim, dtype, rows, parts) matched its parts when opened.

    :meth:`read_part` verifies the part's recorded sha256 (when the set records ``part_hashes``) on the
    bytes it parses, so a part that changed after the check is still named, never read.
    """

    directory: Path
    info: dict
    dim: int
    dtype: str
    rows: int
    rows_per_part: int
    parts: tuple[Path, ...]

    def read_part(self, index: int) -> tuple[list[str], np.ndarray]:
        """``(sample_ids, matrix)`` of part ``index``, the matrix in the stored dtype."""
        path = self.parts[index]
        data = _read_bytes(path)
        expected = (self.info.get("part_hashes") or {}).get(path.name)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise UserError(f"{path}: content differs from the hash recorded in {INFO_NAME} (corrupt or "
                            f"replaced); rerun `curate embed --overwrite`")
        try:
            table = pq.read_table(pa.BufferReader(data), columns=["sample_id", "embedding"])
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable embedding part ({type(exc).__name__}); corrupt or "
                            f"foreign; rerun `curate embed --overwrite`") from None
        _check_part_schema(path, table.schema, self.dim, self.dtype)
        if table.num_rows != self.part_rows(index):
            raise UserError(f"{path}: {table.num_rows} rows, expected {self.part_rows(index)}")
        col = table.column("embedding").combine_chunks()
        matrix = col.values.to_numpy(zero_copy_only=False).reshape(-1, self.dim)
        return table.column("sample_id").to_pylist(), matrix

    def part_rows(self, index: int) -> int:
        return min(self.rows_per_part, self.rows - index * self.rows_per_part)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({type(exc).__name__}); rerun `curate embed --overwrite`") \
            from None


def _check_part_schema(path: Path, schema: pa.Schema, dim: int, dtype: str) -> None:
    kind = schema.field("embedding").type if "embedding" in schema.names else None
    if kind is None or not pa.types.is_fixed_size_list(kind):
        raise UserError(f"{path}: no fixed-size embedding column ({kind}); not a part of an embedding set")
    if kind.list_size != dim or kind.value_type != ARROW_TYPES[dtype]:
        names = {str(t): name for name, t in ARROW_TYPES.items()}
        stored = names.get(str(kind.value_type), str(kind.value_type))
        raise UserError(
            f"{path}: holds {kind.list_size} {stored} values per row but {INFO_NAME} records dim {dim}, "
            f"dtype {dtype} (edited or replaced); rerun `curate embed --overwrite`"
        )


def _recorded_int(record: Path, info: dict, key: str, minimum: int) -> int:
    value = info.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{record}: {key} is {value!r}, expected an integer >= {minimum} (edited or not "
                        f"written by this tool); rerun `curate embed --overwrite`")
    return value


def check_set(directory: Path, info: dict, dataset_rows: int | None = None) -> EmbeddingSet:
    """The set's recorded metadata checked against its parts' footers (no data read), else one line.

    ``dim``, ``dtype``, ``rows_per_part``, ``rows`` and ``parts`` must agree with the part files: their
    names (part-00000 onwards, none missing or extra), row counts and embedding column type; ``rows``
    must equal ``dataset_rows`` when given.
    """
    record = directory / INFO_NAME
    dim = _recorded_int(record, info, "dim", 1)
    rpp = _recorded_int(record, info, "rows_per_part", 1)
    dtype = info.get("dtype", "float32")
    if dtype not in DTYPES:
        raise UserError(f"{record}: dtype is {dtype!r}, expected one of {', '.join(DTYPES)} (edited or not "
                        f"written by this tool); rerun `curate embed --overwrite`")
    parts = list_parts(directory)
    rows = _recorded_int(record, info, "rows", 1) if "rows" in info else None
    if rows is None:  # sets written before ``rows`` was recorded: the parts say
        rows = sum(_footer(p).num_rows for p in parts)
    if dataset_rows is not None and rows != dataset_rows:
        raise UserError(f"{record}: records {rows} rows but the dataset has {dataset_rows}; rerun "
                        f"`curate embed --overwrite`")
    n_parts = -(-rows // rpp)
    if "parts" in info and info["parts"] != n_parts:
        raise UserError(f"{record}: records {info['parts']!r} parts, but {rows} rows of {rpp} per part make "
                        f"{n_parts} (edited); rerun `curate embed --overwrite`")
    names = [p.name for p in parts]
    for i in range(n_parts):
        if i >= len(names) or names[i] != part_name(i):
            raise UserError(f"{directory / part_name(i)}: missing ({INFO_NAME} records {n_parts} parts); "
                            f"rerun `curate embed --overwrite`")
    if len(names) > n_parts:
        raise UserError(f"{parts[n_parts]}: not one of the {n_parts} parts {INFO_NAME} records")
    found = EmbeddingSet(directory, info, dim, dtype, rows, rpp, tuple(parts))
    for i, path in enumerate(parts):
        meta = _footer(path)
        _check_part_schema(path, meta.schema.to_arrow_schema(), dim, dtype)
        if meta.num_rows != found.part_rows(i):
            raise UserError(f"{path}: {meta.num_rows} rows, but {INFO_NAME} ({rows} rows, {rpp} per part) "
                            f"gives it {found.part_rows(i)}; rerun `curate embed --overwrite`")
    return found


def _footer(path: Path) -> pq.FileMetaData:
    try:
        return pq.read_metadata(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({type(exc).__name__}); corrupt, truncated or "
                        f"foreign; rerun `curate embed --overwrite`") from None


def open_embedding_set(ws: Workspace, tag: str | None = None) -> EmbeddingSet:
    """The workspace's embedding set ``tag`` (default: :func:`resolve_tag`), refused with one line when
    incomplete, computed for another dataset, or when its record disagrees with its parts."""
    tag = resolve_tag(ws, tag)
    d = ws.embeddings_dir / tag
    info = read_record(d / INFO_NAME)
    if not isinstance(info, dict) or not info.get("complete"):
        raise UserError(f"{d}: embedding set is incomplete; rerun `curate embed` to finish it")
    fingerprint = ws.dataset_fingerprint()
    if info.get("dataset_fingerprint") != fingerprint:
        raise UserError(
            f"{d}: stale embeddings, computed for dataset {str(info.get('dataset_fingerprint'))[:12]} "
            f"but the workspace dataset is {fingerprint[:12]}; run `curate embed --overwrite`"
        )
    rows = ws.dataset_info().get("rows")
    return check_set(d, {**info, "tag": tag}, rows if isinstance(rows, int) else None)


def embedding_info(ws: Workspace, tag: str | None = None) -> tuple[Path, dict]:
    """The embedding set's directory and info (with its ``tag``), checked by :func:`open_embedding_set`."""
    found = open_embedding_set(ws, tag)
    return found.directory, found.info


def load_embeddings(ws: Workspace, tag: str | None = None) -> tuple[np.ndarray, list[str], dict]:
    """Return ``(matrix, sample_ids, info)`` with rows in the dataset's sample order.

    Raises UserError when the set is missing, was computed for another dataset, or holds NaN/inf.
    """
    found = open_embedding_set(ws, tag)
    d, info = found.directory, found.info
    ids: list[str] = []
    chunks = []
    for index in range(len(found.parts)):
        part_ids, mat = found.read_part(index)
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


def load_rows(ws: Workspace, sample_ids: list[str], tag: str | None = None) -> np.ndarray:
    """The embeddings of ``sample_ids`` (float32, in that order), read one part at a time: memory holds a
    part and the requested rows, never the whole set. A sample without a vector is a UserError."""
    found = open_embedding_set(ws, tag)
    where = {sid: i for i, sid in enumerate(sample_ids)}
    out = np.empty((len(sample_ids), found.dim), dtype=np.float32)
    seen = np.zeros(len(sample_ids), dtype=bool)
    for index in range(len(found.parts)):
        part_ids, mat = found.read_part(index)
        target = np.array([where.get(sid, -1) for sid in part_ids], dtype=np.int64)
        hit = target >= 0
        out[target[hit]] = mat[hit]
        seen[target[hit]] = True
    if not seen.all():
        missing = sample_ids[int(np.flatnonzero(~seen)[0])]
        raise UserError(f"{found.directory}: stale embeddings, sample {missing!r} has no vector; "
                        f"run `curate embed --overwrite`")
    return out
