"""The embedding-set reader refuses a set whose embeddings.json disagrees with its parts (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_helpers import run_app
from curate_helpers import copy_workspace

from curate.cli import app
from curate.embedding_sets import load_embeddings, open_embedding_set, resolve_tag
from datasets_spec.parts import list_parts, write_record


@pytest.fixture()
def ws(embedded_workspace, tmp_path):
    return copy_workspace(embedded_workspace, tmp_path)


def _set_dir(ws):
    return ws.embeddings_dir / resolve_tag(ws)


def _edit_info(ws, **changes) -> None:
    """Rewrite embeddings.json with ``changes`` and a fresh seal: a record that passes the seal check but
    disagrees with its parts (another writer, or a hand edit that re-sealed it)."""
    path = _set_dir(ws) / "embeddings.json"
    info = json.loads(path.read_text())
    info.update(changes)
    write_record(path, info)


def test_hand_edit_without_a_new_seal_is_refused_by_select_and_check(ws):
    path = _set_dir(ws) / "embeddings.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "dim": 32}))
    _one_error_line(*_select(ws), "embeddings.json: edited since it was written")
    assert not ws.shards_dir.exists()
    _one_error_line(*_check(ws), "embeddings.json: edited since it was written")


def _one_error_line(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for needle in needles:
        assert needle in lines[0], lines[0]


def _select(ws, *extra: str) -> tuple[int, str]:
    return run_app(app, ["select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "5",
                         "--no-progress", *extra])


def _check(ws) -> tuple[int, str]:
    return run_app(app, ["check", "-w", str(ws.root)])


def test_intact_set_reads_every_part_in_dataset_order(ws):
    es = open_embedding_set(ws)
    assert (es.dim, es.dtype, es.rows) == (64, "float32", ws.dataset_info()["rows"])
    matrix, ids, _ = load_embeddings(ws)
    # reference: the parts read directly with pyarrow, concatenated in file order
    tables = [pq.read_table(p) for p in list_parts(es.directory)]
    direct = np.concatenate([np.stack(t.column("embedding").to_pylist()) for t in tables])
    assert np.array_equal(matrix, direct.astype(np.float32))
    assert ids == sum((t.column("sample_id").to_pylist() for t in tables), [])


def test_edited_dim_is_refused_by_select_and_check(ws):
    _edit_info(ws, dim=32)
    _one_error_line(*_select(ws), "holds 64 float32 values per row", "records dim 32")
    assert not ws.shards_dir.exists()
    _one_error_line(*_check(ws), "records dim 32")


def test_edited_dtype_is_refused_in_one_line(ws):
    _edit_info(ws, dtype="float8")
    _one_error_line(*_select(ws), "dtype is 'float8'", "expected one of float32, float16")
    _edit_info(ws, dtype="float16")  # a valid dtype that is not what the parts hold
    _one_error_line(*_select(ws), "holds 64 float32 values per row", "dtype float16")
    _one_error_line(*_check(ws), "dtype float16")


def test_non_integer_dim_is_refused(ws):
    _edit_info(ws, dim="64")
    _one_error_line(*_select(ws), "dim is '64', expected an integer >= 1")


def test_deleted_part_is_named(ws):
    parts = list_parts(_set_dir(ws))
    assert len(parts) >= 2
    parts[1].unlink()
    _one_error_line(*_select(ws), f"{parts[1]}: missing", f"records {len(parts)} parts")
    _one_error_line(*_check(ws), f"{parts[1]}: missing")
    with pytest.raises(Exception, match="missing"):
        load_embeddings(ws)


def test_edited_row_count_is_refused(ws):
    rows = ws.dataset_info()["rows"]
    _edit_info(ws, rows=rows - 1)
    _one_error_line(*_select(ws), f"records {rows - 1} rows but the dataset has {rows}")


def test_part_with_other_rows_per_row_count_is_named(ws):
    # a part rewritten with its last row dropped, hashes updated: only the row count gives it away
    from datasets_spec.parts import file_sha256

    d = _set_dir(ws)
    part = list_parts(d)[0]
    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows - 1), part)
    info = json.loads((d / "embeddings.json").read_text())
    info["part_hashes"][part.name] = file_sha256(part)
    write_record(d / "embeddings.json", info)
    _one_error_line(*_select(ws), f"{part}: {table.num_rows - 1} rows", f"gives it {table.num_rows}")


def test_part_changed_after_writing_is_named_by_its_hash(ws):
    # same schema and row count, one value changed: only the recorded sha256 notices
    part = list_parts(_set_dir(ws))[0]
    table = pq.read_table(part)
    emb = np.stack(table.column("embedding").to_pylist()).astype(np.float32)
    emb[0, 0] += 1.0
    kind = table.schema.field("embedding").type
    column = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), kind.list_size)
    pq.write_table(table.set_column(table.schema.get_field_index("embedding"), "embedding", column), part)
    _one_error_line(*_select(ws), f"{part}: content differs from the hash recorded in embeddings.json")
    with pytest.raises(Exception, match="content differs"):
        load_embeddings(ws)
