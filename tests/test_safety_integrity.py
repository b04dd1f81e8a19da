"""What feeds a selection, a training run or an export is exactly what was written: parts are checked
against their recorded hashes on every read, records (dataset.json, manifest.json, embeddings.json,
scores.json) are sealed with their own hash, and `curate check` covers every kind of output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate

from curate.scores import write_scores
from curate.select import select_subset
from datasets_spec.parts import write_part


def _tamper(part):
    """Rewrite ``part`` as valid Parquet with one value changed (readable, but not what was written)."""
    table = pq.read_table(part)
    question = table.column("question").combine_chunks()
    values = question.to_pylist()
    values[0] = "tampered " * 500
    index = table.schema.get_field_index("question")
    table = table.set_column(index, "question", pa.array(values, question.type))
    write_part(table, part)


def _train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "train.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture()
def ws(synthetic_workspace, tmp_path):
    ws = copy_workspace(synthetic_workspace, tmp_path)
    select_subset(ws, "random", k=8, seed=0)
    select_subset(ws, "random", k=16, seed=1)
    return ws


def test_a_tampered_subset_part_is_named_by_every_reader(ws, tmp_path):
    subset = ws.shards_dir / "random-k8"
    part = subset / "part-00000.parquet"
    _tamper(part)
    needle = "differs from the hash recorded"
    assert_user_error(run_curate("stats", str(subset), "-w", str(ws.root)), str(part), needle)
    assert_user_error(run_curate("export", str(subset), "--format", "llava-json", "--out",
                                 str(tmp_path / "x.json"), "-w", str(ws.root)), needle)
    assert not (tmp_path / "x.json").exists()
    dry = _train("run", "--subset", str(subset), "--dry-run", "-w", str(ws.root))
    assert_user_error(dry, str(part), needle)


def test_a_valid_part_from_another_subset_is_refused(ws, tmp_path):
    shutil.copy(ws.shards_dir / "random-k8" / "part-00000.parquet",
                ws.shards_dir / "random-k16" / "part-00000.parquet")
    result = run_curate("export", "random-k16", "--format", "llava-json", "--out", str(tmp_path / "x.json"),
                        "-w", str(ws.root))
    assert_user_error(result, "random-k16/part-00000.parquet", "differs from the hash recorded")


def test_a_tampered_dataset_part_is_refused_before_selection(ws):
    _tamper(ws.dataset_dir / "part-00000.parquet")
    result = run_curate("select", "--strategy", "random", "--k", "4", "--name", "after", "-w", str(ws.root))
    assert_user_error(result, "dataset/part-00000.parquet", "differs from the hash recorded")
    assert not (ws.shards_dir / "after").exists()


@pytest.mark.parametrize(("record", "key", "value"), [
    ("shards/random-k8/manifest.json", "k", 9),
    ("dataset/dataset.json", "rows", 1),
    ("scores/len/scores.json", "nulls", 3),
])
def test_curate_check_names_an_edited_record(ws, record, key, value):
    ids = ws.read_dataset(columns=["sample_id"]).column("sample_id").to_pylist()
    write_scores(ws, "len", ids, [float(i) for i in range(len(ids))], {"by": "length"})
    assert run_curate("check", "-w", str(ws.root)).returncode == 0
    path = ws.root / record
    payload = json.loads(path.read_text())
    payload[key] = value
    path.write_text(json.dumps(payload))
    assert_user_error(run_curate("check", "-w", str(ws.root)), record, "edited since it was written")


def test_curate_check_covers_scores(ws):
    ids = ws.read_dataset(columns=["sample_id"]).column("sample_id").to_pylist()
    write_scores(ws, "len", ids, [float(i) for i in range(len(ids))], {"by": "length"})
    part = ws.root / "scores" / "len" / "part-00000.parquet"
    table = pq.read_table(part)
    write_part(table.slice(1), part)
    assert_user_error(run_curate("check", "-w", str(ws.root)), str(part), "differs from the hash recorded")


def test_curate_check_names_an_edited_embeddings_json(embedded_workspace, tmp_path):
    ws = copy_workspace(embedded_workspace, tmp_path)
    info = next(ws.embeddings_dir.glob("*/embeddings.json"))
    payload = json.loads(info.read_text())
    payload["dim"] = payload["dim"] // 2
    info.write_text(json.dumps(payload))
    result = run_curate("check", "-w", str(ws.root))
    assert_user_error(result, "embeddings.json", "edited since it was written")


def test_dry_run_checks_the_dataset_fingerprint_like_the_run(ws, synthetic_workspace, tmp_path):
    other = tmp_path / "other"
    made = run_curate("ingest", "synthetic", "--seed", "5", "--n-train", "40", "-w", str(other))
    assert made.returncode == 0, made.stderr
    result = _train("run", "--subset", str(ws.shards_dir / "random-k8"), "--dry-run", "-w", str(other))
    assert_user_error(result, "random-k8", "built from dataset")
