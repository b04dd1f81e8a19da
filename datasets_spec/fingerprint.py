"""Content fingerprint of a canonical table: what embeddings, subsets and runs are tied to.

Each row is serialised as canonical JSON of every fingerprinted schema column (all but the derived
columns added after schema version 1, see datasets_spec.schema) and hashed (sha256) on its own; the
fingerprint is sha256 over the ``sample_id`` / row-digest pairs ordered by sample_id. Hashing rows one at
a time lets a streaming writer fingerprint a dataset it never holds in memory (it keeps only ids and
32-byte digests) and still agree with :func:`table_fingerprint` of the whole table. Row order on disk
does not matter; any change to any field does. Provenance that is not content (source paths, creation
time) lives in dataset.json and is not hashed.

The canonical JSON of a row is ``json.dumps(row, sort_keys=True, ensure_ascii=False)`` of its
``to_pylist()`` dict (floats as ``repr``). For canonical tables it is built column-wise with Arrow string
kernels instead (the same bytes, checked against the per-row form in the tests): a 665K-row dataset
would otherwise spend most of its ingest time in per-row ``to_pylist`` and ``json.dumps``.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datasets_spec.errors import UserError
from datasets_spec.schema import FINGERPRINT_COLUMNS, FINGERPRINT_SCHEMA

DIGEST_TYPE = pa.binary(32)
# Rows per serialisation chunk: keeps each chunk's JSON text far below Arrow's 2 GB string offsets.
CHUNK_ROWS = 10_000
# What json.dumps(ensure_ascii=False) escapes with a short form; other control characters become \u00XX.
_SHORT_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\b", "\\b"),
                  ("\f", "\\f"))
_OTHER_CONTROL = [c for c in range(0x20) if chr(c) not in "\n\r\t\b\f"]


def table_fingerprint(table: pa.Table) -> str:
    """Fingerprint of a whole canonical table (any row order)."""
    ids, digests = row_digests(table)
    return combine_digests(ids, digests)


def row_digests(table: pa.Table | pa.RecordBatch) -> tuple[pa.Array, pa.Array]:
    """``(sample_id, sha256 of the row's canonical JSON)`` for every row, in table order."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    selected = table.select(list(FINGERPRINT_COLUMNS))
    if not selected.schema.equals(FINGERPRINT_SCHEMA, check_metadata=False):
        return row_digests_reference(table)
    digests = [_hash_rows(_rows_json(batch)) for batch in selected.to_batches(max_chunksize=CHUNK_ROWS)]
    ids = table.column("sample_id").combine_chunks()
    return ids, pa.concat_arrays(digests) if digests else pa.array([], type=DIGEST_TYPE)


def row_digests_reference(table: pa.Table | pa.RecordBatch) -> tuple[pa.Array, pa.Array]:
    """Row by row with ``json.dumps``: the definition :func:`row_digests` must agree with (any schema)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    digests = []
    for batch in table.select(list(FINGERPRINT_COLUMNS)).to_batches(max_chunksize=CHUNK_ROWS):
        for row in batch.to_pylist():
            text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=_float_repr)
            digests.append(hashlib.sha256(text.encode()).digest())
    ids = table.column("sample_id").combine_chunks()
    return ids, pa.array(digests, type=DIGEST_TYPE)


def combine_digests(ids: pa.Array | pa.ChunkedArray, digests: pa.Array | pa.ChunkedArray) -> str:
    """sha256 over length-prefixed ``id`` + digest pairs sorted by id (UTF-8 byte order, as Arrow sorts)."""
    pairs = pa.table({"sample_id": ids, "digest": digests})
    order = pc.sort_indices(pairs, sort_keys=[("sample_id", "ascending")])
    ordered = pairs.take(order)
    total = hashlib.sha256()
    for batch in ordered.to_batches(max_chunksize=100_000):
        for sid, digest in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True):
            raw = sid.encode()
            # The length prefix keeps ids containing any byte from running into the next pair.
            total.update(len(raw).to_bytes(8, "little") + raw + digest)
    return total.hexdigest()


def _float_repr(value: object) -> str:
    return repr(value)


def _rows_json(batch: pa.RecordBatch) -> pa.Array:
    """Each row's ``json.dumps(row, sort_keys=True, ensure_ascii=False)`` text, as one string array."""
    pieces: list = []
    for i, name in enumerate(sorted(FINGERPRINT_COLUMNS)):
        pieces.append(("{" if i == 0 else ", ") + json.dumps(name) + ": ")
        pieces.append(_value_json(batch.column(name)))
    pieces.append("}")
    return pc.binary_join_element_wise(*pieces, "")


def _value_json(arr: pa.Array) -> pa.Array:
    kind = arr.type
    if pa.types.is_string(kind):
        return _string_json(arr)
    if pa.types.is_integer(kind):
        return pc.fill_null(pc.cast(arr, pa.string()), "null")
    if pa.types.is_floating(kind):
        return pa.array([_float_json(v) for v in arr.to_pylist()], type=pa.string())
    if pa.types.is_list(kind):
        return _list_json(arr)
    if pa.types.is_struct(kind):
        return _struct_json(arr)
    raise TypeError(f"no canonical JSON for Arrow type {kind}")


def _float_json(value: float | None) -> str:
    """What json.dumps writes for a float (or None)."""
    if value is None:
        return "null"
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _string_json(arr: pa.Array) -> pa.Array:
    present = _special_bytes(arr)
    text = arr
    for raw, escaped in _SHORT_ESCAPES:
        if ord(raw) in present:
            text = pc.replace_substring(text, raw, escaped)
    for code in _OTHER_CONTROL:
        if code in present:
            text = pc.replace_substring(text, chr(code), f"\\u{code:04x}")
    return pc.fill_null(pc.binary_join_element_wise('"', text, '"', ""), "null")


def _special_bytes(arr: pa.Array) -> set[int]:
    """The bytes of ``arr``'s character data that json.dumps escapes (a scan is much cheaper than a
    replace pass that finds nothing to replace)."""
    data = arr.buffers()[2] if len(arr) else None
    if data is None:
        return set()
    raw = np.frombuffer(data, dtype=np.uint8)
    special = (raw < 0x20) | (raw == ord('"')) | (raw == ord("\\"))
    return set(np.unique(raw[special]).tolist())


def _list_json(arr: pa.ListArray) -> pa.Array:
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(arr) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    items = _value_json(pc.list_flatten(arr))
    lists = pa.ListArray.from_arrays(pa.array(offsets), items, mask=arr.is_null())
    return pc.fill_null(pc.binary_join_element_wise("[", pc.binary_join(lists, ", "), "]", ""), "null")


def _struct_json(arr: pa.StructArray) -> pa.Array:
    pieces: list = []
    names = sorted(arr.type.field(i).name for i in range(arr.type.num_fields))
    for i, name in enumerate(names):
        pieces.append(("{" if i == 0 else ", ") + json.dumps(name) + ": ")
        pieces.append(_value_json(pc.struct_field(arr, name)))
    pieces.append("}")
    return pc.if_else(arr.is_null(), "null", pc.binary_join_element_wise(*pieces, ""))


def _hash_rows(text: pa.Array) -> pa.Array:
    """sha256 of every string in ``text``, as a fixed-size binary(32) array."""
    text = text.cast(pa.string()) if text.type != pa.string() else text
    n = len(text)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=text.offset + n + 1)[text.offset:]
    data = text.buffers()[2]
    view = memoryview(data) if data is not None else memoryview(b"")
    sha = hashlib.sha256
    bounds = offsets.tolist()
    joined = b"".join([sha(view[a:b]).digest() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    return pa.FixedSizeBinaryArray.from_buffers(DIGEST_TYPE, n, [None, pa.py_buffer(joined)])


def check_dataset_unchanged(ws, expected: str) -> None:
    """Refuse to finish an output made from the dataset with fingerprint ``expected`` if the workspace's
    dataset is no longer that one (replaced while the command ran): called just before the rename into
    place, so the output never records one dataset's fingerprint beside rows read from another."""
    current = ws.dataset_fingerprint()
    if current != expected:
        raise UserError(
            f"{ws.dataset_dir}: the dataset changed while this command ran (fingerprint {expected[:12]} "
            f"became {current[:12]}); nothing was written: rerun it"
        )
