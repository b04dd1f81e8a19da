"""curate select: subsets, manifests, determinism, and every bad input as a CLI test."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate

from curate.embedding_sets import load_embeddings
from curate.select import select_subset
from curate.shards import find_subsets, read_subset
from curate.strategies import l2_maxdiverse
from datasets_spec.errors import UserError
from datasets_spec.parts import hash_parts, list_parts
from datasets_spec.schema import COLUMNS

MANIFEST_KEYS = {
    "strategy", "params", "k", "seed", "dataset_fingerprint", "embeddings", "counts", "image_fraction",
    "coverage", "command", "tool_version", "created_at", "parts_hash", "pool", "rows",
}


@pytest.fixture()
def ws(embedded_workspace, tmp_path):
    return copy_workspace(embedded_workspace, tmp_path)


@pytest.mark.parametrize("strategy", ["l2-maxdiverse", "random", "kmeans-balanced"])
def test_cli_select_writes_complete_subset(ws, strategy):
    result = run_curate("select", "-w", str(ws.root), "--strategy", strategy, "--k", "20")
    assert result.returncode == 0, result.stderr
    path = ws.shards_dir / f"{strategy}-k20"
    assert result.stdout.strip() == str(path)
    table, manifest = read_subset(path)
    assert MANIFEST_KEYS <= set(manifest)
    assert table.column_names == [*COLUMNS, "rank"] and table.num_rows == 20
    assert table.column("rank").to_pylist() == list(range(20))
    assert set(table.column("split").to_pylist()) == {"train"}
    assert manifest["counts"]["split"] == {"train": 20}
    assert sum(manifest["counts"]["subject"].values()) == 20
    assert manifest["command"].startswith("curate select") and f"--strategy {strategy}" in manifest["command"]
    assert manifest["parts_hash"] == hash_parts(path)
    assert manifest["embeddings"]["tag"] == "tiny-clip_none"
    assert manifest["coverage"]["radius"] > 0
    images = table.column("image").null_count
    assert manifest["image_fraction"] == pytest.approx(1 - images / 20)


def test_l2_maxdiverse_subset_is_the_strategy_on_the_pool(ws):
    path = select_subset(ws, "l2-maxdiverse", k=15)
    table, manifest = read_subset(path)
    matrix, ids, _ = load_embeddings(ws)
    splits = ws.read_dataset(columns=["split"]).column("split").to_pylist()
    pool = np.array([i for i, s in enumerate(splits) if s == "train"])
    expected = [ids[i] for i in pool[l2_maxdiverse(matrix[pool], 15)]]
    assert table.column("sample_id").to_pylist() == expected
    # coverage radius: max distance from any pool sample to its nearest selected (brute force)
    sel = np.array([ids.index(s) for s in expected])
    dist = np.sqrt(((matrix[pool][:, None].astype(np.float64) - matrix[sel][None]) ** 2).sum(-1)).min(1)
    assert manifest["coverage"]["radius"] == pytest.approx(dist.max(), abs=1e-4)
    assert manifest["pool"]["size"] == len(pool)


def test_same_inputs_and_seed_give_byte_identical_parts(ws):
    a = select_subset(ws, "random", k=25, seed=7, name="a")
    b = select_subset(ws, "random", k=25, seed=7, name="b")
    c = select_subset(ws, "random", k=25, seed=8, name="c")
    read = lambda p: [f.read_bytes() for f in list_parts(p)]  # noqa: E731
    assert read(a) == read(b) != read(c)
    x = select_subset(ws, "kmeans-balanced", k=10, seed=1, name="x")
    y = select_subset(ws, "kmeans-balanced", k=10, seed=1, name="y")
    assert read(x) == read(y)


def test_pool_filters_fraction_and_dedup(ws):
    path = select_subset(ws, "l2-maxdiverse", fraction=0.25, split="all", require_image=True, dedup_eps=0.0)
    table, manifest = read_subset(path)
    n_images = ws.read_dataset(columns=["image"]).column("image").drop_null()
    assert manifest["pool"]["size"] == len(n_images)
    assert table.num_rows == round(0.25 * len(n_images)) and manifest["image_fraction"] == 1.0
    assert path.name == f"l2-maxdiverse-k{table.num_rows}"
    # unit vectors are all within distance 2 of each other: eps 10 keeps only the first pool sample
    one = select_subset(ws, "random", k=1, dedup_eps=10.0, name="dedup")
    assert read_subset(one)[1]["pool"]["after_dedup"] == 1
    with pytest.raises(UserError, match="k=2 is larger than the pool"):
        select_subset(ws, "random", k=2, dedup_eps=10.0, name="dedup2")


def test_random_needs_no_embeddings(synthetic_workspace, tmp_path):
    ws = copy_workspace(synthetic_workspace, tmp_path)
    table, manifest = read_subset(select_subset(ws, "random", k=10))
    assert table.num_rows == 10 and manifest["embeddings"] is None
    assert "curate embed" in manifest["coverage"]["skipped"]


def test_find_subsets(ws, tmp_path):
    a = select_subset(ws, "random", k=5)
    b = select_subset(ws, "l2-maxdiverse", k=5)
    assert find_subsets(ws.shards_dir) == sorted([a, b])
    assert find_subsets(a) == [a]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no subset"):
        find_subsets(empty)


def test_existing_subset_needs_overwrite(ws):
    select_subset(ws, "random", k=5)
    with pytest.raises(UserError, match="--overwrite"):
        select_subset(ws, "random", k=5)
    select_subset(ws, "random", k=5, overwrite=True, seed=3)


# --- bad input: exit 2, one line, nothing written --------------------------------------------------


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--strategy", "l2-maxdiverse", "--k", "0"], ["k must be positive"]),
        (["--strategy", "random", "--k", "-3"], ["k must be positive"]),
        (["--strategy", "l2-maxdiverse", "--k", "121"], ["k=121", "larger than the pool", "120"]),
        (["--strategy", "random", "--k", "70", "--require-image"], ["k=70", "larger than the pool"]),
        (["--strategy", "furthest", "--k", "5"], ["unknown strategy", "l2-maxdiverse, leverage, random"]),
        (["--strategy", "random", "--k", "5", "--split", "nosuch"], ["pool is empty", "nosuch"]),
        (["--strategy", "random"], ["--k N or --fraction F"]),
        (["--strategy", "random", "--fraction", "1.5"], ["--fraction"]),
        (["--strategy", "random", "--k", "5", "--embeddings", "nosuch"], ["nosuch", "curate embed"]),
        (["--strategy", "random", "--k", "5", "--dedup-eps", "-1"], ["--dedup-eps", "finite number >= 0"]),
        (["--strategy", "random", "--k", "5", "--dedup-eps", "nan"], ["--dedup-eps", "got nan"]),
        (["--strategy", "l2-maxdiverse", "--k", "5", "--dedup-eps", "inf"], ["--dedup-eps", "got inf"]),
        (["--strategy", "l2-maxdiverse", "--k", "5", "--memory-budget", "nan"], ["--memory-budget", "nan"]),
        (["--strategy", "random", "--k", "5", "--name", "../../evil"], ["--name '../../evil'"]),
        (["--strategy", "random", "--k", "5", "--name", "."], ["--name '.'"]),
    ],
)
def test_bad_select_inputs(ws, args, needles):
    result = run_curate("select", "-w", str(ws.root), *args)
    assert_user_error(result, *needles)
    assert not ws.shards_dir.exists()


def test_dedup_eps_zero_keeps_every_sample(ws, tmp_path):
    # eps 0 drops nothing: the same rows as no dedup, for a strategy that reads no embeddings itself
    plain = select_subset(ws, "random", k=7, seed=3, name="plain")
    zero = select_subset(ws, "random", k=7, seed=3, name="zero", dedup_eps=0.0)
    assert read_subset(plain)[0].column("sample_id").to_pylist() == \
        read_subset(zero)[0].column("sample_id").to_pylist()
    assert json.loads((zero / "manifest.json").read_text())["pool"]["after_dedup"] == 120


def test_manifest_is_json_with_sorted_counts(ws):
    path = select_subset(ws, "random", k=30, split="all")
    manifest = json.loads((path / "manifest.json").read_text())
    counts = manifest["counts"]["split"]
    table = read_subset(path)[0]
    assert counts == {s: int(pc.sum(pc.equal(table.column("split"), s)).as_py()) for s in counts}
