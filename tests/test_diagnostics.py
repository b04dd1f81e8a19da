"""Subset diagnostics: group coverage, mean difficulty, image fraction, near-duplicate pairs; in manifests."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curate_helpers import copy_workspace, run_curate

from curate.diagnostics import (
    diagnostics_line,
    group_coverage,
    mean_difficulty,
    near_duplicate_pairs,
    near_duplicates,
    subset_diagnostics,
)
from curate.embedding_sets import load_embeddings
from curate.shards import read_manifest
from datasets_spec.parts import list_parts

# --- small hand-built table -----


def _table() -> pa.Table:
    return pa.table({
        "subject": ["A", "A", "B", "B", "C"],
        "topic": ["t1", "t2", "t1", "t3", None],
        "category": pa.array([None] * 5, pa.string()),  # all null: skipped
        "skill": ["s1", "s2", None, "s1", "s3"],
        "task": [None, None, "vqa", None, "vqa"],
        "difficulty": pa.array([0.2, 0.4, 0.6, 0.8, 1.0], pa.float32()),
        "image": ["x", None, "y", None, "z"],
    })


def test_group_coverage_and_difficulty_by_hand():
    table = _table()
    pool, subset = np.arange(5), np.array([0, 3, 4])
    assert group_coverage(table, pool, subset) == {
        "subject": {"subset": 3, "pool": 3},
        "topic": {"subset": 3, "pool": 4},  # t1 t3 (none) of t1 t2 t3 (none)
        "skill": {"subset": 2, "pool": 4},  # s1 s3 of s1 s2 (none) s3
        "task": {"subset": 2, "pool": 2},  # (none) vqa
    }
    assert mean_difficulty(table, subset) == pytest.approx((0.2 + 0.8 + 1.0) / 3, abs=1e-6)
    assert mean_difficulty(table, pool) == pytest.approx(0.6, abs=1e-6)

    d = subset_diagnostics(table, pool, subset)
    assert d["finest_group"] == "skill"
    no_skill = subset_diagnostics(table.drop_columns(["skill"]), pool, subset)
    assert no_skill["finest_group"] == "topic"  # category is all null here
    assert "skill" not in no_skill["groups"]
    assert d["image_fraction"] == {"subset": pytest.approx(2 / 3, abs=1e-6), "pool": pytest.approx(0.6)}
    assert d["near_duplicates"]["pairs"] is None and d["near_duplicates"]["skipped"]
    assert d["coverage_radius"] == "coverage.radius"


def test_group_coverage_of_a_smaller_pool_by_hand():
    table = _table()
    pool, subset = np.array([1, 2, 3, 4]), np.array([3, 4])
    groups = group_coverage(table, pool, subset)
    assert groups["subject"] == {"subset": 2, "pool": 3}
    assert groups["skill"] == {"subset": 2, "pool": 4}
    assert groups["topic"] == {"subset": 2, "pool": 4}  # t3 (none) of t2 t1 t3 (none)
    assert mean_difficulty(table, pool) == pytest.approx(0.7, abs=1e-6)
    assert mean_difficulty(table, subset) == pytest.approx(0.9, abs=1e-6)


# --- near-duplicate pairs against a double loop -----


def _brute_pairs(x: np.ndarray, threshold: float) -> int:
    n = len(x)
    count = 0
    for i in range(n):
        for j in range(i + 1, n):
            ni, nj = math.sqrt(float(x[i] @ x[i])), math.sqrt(float(x[j] @ x[j]))
            if ni == 0 or nj == 0:
                continue
            if float(x[i].astype(np.float64) @ x[j].astype(np.float64)) / (ni * nj) >= threshold:
                count += 1
    return count


def _planted(seed: int = 0, n: int = 150, dim: int = 16) -> tuple[np.ndarray, int]:
    """Random vectors plus planted near-copies; returns the matrix and the pairs planted >= 0.98."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    x[10] = x[3] + 1e-3 * rng.standard_normal(dim)  # near-copy
    x[140] = 3.0 * x[3]  # scaled copy: cosine 1 with 3 and ~1 with 10 -> 3 pairs among {3, 10, 140}
    x[77] = x[76] * 0.5  # 1 pair, adjacent rows (same block at every block size below)
    u, w = x[20] / np.linalg.norm(x[20]), rng.standard_normal(dim)
    w -= (w @ u) * u
    w /= np.linalg.norm(w)
    x[130] = 0.9 * u + math.sqrt(1 - 0.9**2) * w  # cosine 0.9 with 20: not a near-duplicate
    x[60] = 0.0  # a zero vector matches nothing
    return x.astype(np.float32), 4


@pytest.mark.parametrize("block_rows", [7, 64, 149, 4096])
def test_near_duplicate_pairs_match_double_loop(block_rows):
    x, planted = _planted()
    expected = _brute_pairs(x, 0.98)
    assert expected == planted  # the reference sees exactly the planted pairs
    assert near_duplicate_pairs(x, threshold=0.98, block_rows=block_rows) == expected
    # a lower threshold finds the 0.9 pair too
    assert near_duplicate_pairs(x, threshold=0.85, block_rows=block_rows) == _brute_pairs(x, 0.85)


def test_near_duplicates_on_subset_rows_and_cap():
    x, _ = _planted(seed=1)
    rows = np.array([3, 10, 50, 140, 99])
    record = near_duplicates(x, rows, block_rows=2)
    assert record["pairs"] == _brute_pairs(x[rows], 0.98) == 3
    capped = near_duplicates(x, rows, max_rows=4)
    assert capped["pairs"] is None and "cap" in capped["skipped"]
    assert near_duplicates(None, rows)["pairs"] is None


# --- end to end: the CLI writes them into the manifest -----


@pytest.fixture()
def ws(embedded_workspace, tmp_path):
    return copy_workspace(embedded_workspace, tmp_path)


def _check_against_parts(ws, subset_dir, pool_filter):
    """Group counts of the manifest's diagnostics equal those of the subset's Parquet part(s) and pool."""
    manifest = read_manifest(subset_dir)
    d = manifest["diagnostics"]
    sub = pa.concat_tables([pq.read_table(p) for p in list_parts(subset_dir)])
    dataset = ws.read_dataset()
    pool = dataset.filter(pool_filter(dataset))
    assert set(d["groups"]) == {c for c in ("subject", "topic", "category", "skill", "task")
                                if pool.column(c).null_count < pool.num_rows}
    for column, counts in d["groups"].items():
        assert counts["subset"] == len(set(sub.column(column).to_pylist())), column
        assert counts["pool"] == len(set(pool.column(column).to_pylist())), column
    diff = sub.column("difficulty").to_numpy()
    assert d["difficulty"]["subset"] == pytest.approx(float(diff.mean()), abs=1e-5)
    pool_mean = float(pool.column("difficulty").to_numpy().mean())
    assert d["difficulty"]["pool"] == pytest.approx(pool_mean, abs=1e-5)
    assert d["image_fraction"]["subset"] == pytest.approx(manifest["image_fraction"])
    return manifest, sub


def _train(table):
    import pyarrow.compute as pc

    return pc.equal(table.column("split"), "train")


# random loads the default set only for coverage; l2-maxdiverse runs on the sharded k-center engine, which
# reads the subset's rows back part by part
@pytest.mark.parametrize("strategy", ["random", "l2-maxdiverse"])
def test_cli_select_writes_diagnostics(ws, strategy):
    result = run_curate("select", "-w", str(ws.root), "--strategy", strategy, "--k", "30")
    assert result.returncode == 0, result.stderr
    path = ws.shards_dir / f"{strategy}-k30"
    assert result.stdout.strip() == str(path)
    assert "diagnostics: groups " in result.stderr and "near-dup pairs" in result.stderr
    manifest, sub = _check_against_parts(ws, path, _train)
    # the pairs on the default embedding set, counted by the double loop
    matrix, ids, _ = load_embeddings(ws)
    position = {sid: i for i, sid in enumerate(ids)}
    rows = np.array([position[s] for s in sub.column("sample_id").to_pylist()])
    assert manifest["diagnostics"]["near_duplicates"]["pairs"] == _brute_pairs(matrix[rows], 0.98)
    assert manifest["coverage"]["radius"] > 0  # the existing keys stay
    assert diagnostics_line(path).startswith("diagnostics: groups ")


def test_cli_rules_writes_diagnostics(ws):
    result = run_curate("rules", "-w", str(ws.root), "--min-per-subject", "1", "--k", "12")
    assert result.returncode == 0, result.stderr
    manifest, _ = _check_against_parts(ws, ws.shards_dir / "rules-k12", _train)
    assert manifest["strategy_report"]["minimum_picks"] > 0
    d = manifest["diagnostics"]
    assert d["groups"]["subject"]["subset"] == d["groups"]["subject"]["pool"]  # a minimum per subject
    assert isinstance(d["near_duplicates"]["pairs"], int)
    assert "diagnostics:" in result.stderr


def test_load_rows_reads_the_requested_rows_in_order(embedded_workspace):
    from curate.embedding_sets import load_rows
    from datasets_spec.errors import UserError

    matrix, ids, _ = load_embeddings(embedded_workspace)
    picked = [ids[150], ids[3], ids[64], ids[63]]  # across the 64-row parts, out of order
    np.testing.assert_array_equal(load_rows(embedded_workspace, picked), matrix[[150, 3, 64, 63]])
    with pytest.raises(UserError, match="no vector"):
        load_rows(embedded_workspace, [ids[0], "not-a-sample"])
