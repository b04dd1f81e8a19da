"""Content fingerprint of a canonical table: what embeddings, subsets and runs are tied to.

sha256 over the rows ordered by sample_id, each row serialised as canonical JSON of every schema column.
Row order on disk does not matter; any change to any field does. Provenance that is not content (source
paths, creation time) lives in dataset.json and is not hashed.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc

from datasets_spec.schema import COLUMNS


def table_fingerprint(table: pa.Table) -> str:
    digest = hashlib.sha256()
    order = pc.sort_indices(table, sort_keys=[("sample_id", "ascending")])
    ordered = table.select(list(COLUMNS)).take(order)
    for batch in ordered.to_batches(max_chunksize=10_000):
        for row in batch.to_pylist():
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=_float_repr).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def _float_repr(value: object) -> str:
    return repr(value)
