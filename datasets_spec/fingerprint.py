"""Content fingerprint of a canonical table: what embeddings, subsets and runs are tied to.

Each row is serialised as canonical JSON of every schema column and hashed (sha256) on its own; the
fingerprint is sha256 over the ``sample_id`` / row-digest pairs ordered by sample_id. Hashing rows one at
a time lets a streaming writer fingerprint a dataset it never holds in memory (it keeps only ids and
32-byte digests) and still agree with :func:`table_fingerprint` of the whole table. Row order on disk
does not matter; any change to any field does. Provenance that is not content (source paths, creation
time) lives in dataset.json and is not hashed.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc

from datasets_spec.schema import COLUMNS

DIGEST_TYPE = pa.binary(32)


def table_fingerprint(table: pa.Table) -> str:
    """Fingerprint of a whole canonical table (any row order)."""
    ids, digests = row_digests(table)
    return combine_digests(ids, digests)


def row_digests(table: pa.Table | pa.RecordBatch) -> tuple[pa.Array, pa.Array]:
    """``(sample_id, sha256 of the row's canonical JSON)`` for every row, in table order."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    digests = []
    for batch in table.select(list(COLUMNS)).to_batches(max_chunksize=10_000):
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
