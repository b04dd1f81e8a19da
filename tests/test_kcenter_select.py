"""curate select l2-maxdiverse at scale: torchrun sharding, resume, float16 sets, memory and rank errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate
from test_strategies import brute_force_k_center

from curate.embed import embed_workspace
from curate.embedding_sets import load_embeddings
from curate.kcenter.engine import Greedy
from curate.kcenter.pool import checkpoint_dir
from curate.kcenter.select import KCenterOptions
from curate.select import select_subset
from curate.shards import read_subset
from datasets_spec.parts import list_parts

VOLATILE = ("created_at", "command", "name", "record_sha256", "selection_seconds")  # seal covers created_at


@pytest.fixture()
def ws(embedded_workspace, tmp_path):
    return copy_workspace(embedded_workspace, tmp_path)


def _train_pool(ws) -> np.ndarray:
    splits = ws.read_dataset(columns=["split"]).column("split").to_pylist()
    return np.array([i for i, s in enumerate(splits) if s == "train"])


def _same_subset(a, b) -> None:
    assert [p.read_bytes() for p in list_parts(a)] == [p.read_bytes() for p in list_parts(b)]
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    for key in VOLATILE:
        ma.pop(key), mb.pop(key)
    assert ma == mb


def _torchrun(ws, *args: str) -> subprocess.CompletedProcess:
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "curate.cli", "select", "-w", str(ws.root),
         "--strategy", "l2-maxdiverse", *args],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )


@pytest.mark.slow
def test_torchrun_two_processes_give_the_one_process_subset(ws):
    one = run_curate("select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "40",
                     "--name", "one", "--device", "numpy")
    assert one.returncode == 0, one.stderr
    two = _torchrun(ws, "--k", "40", "--name", "two", "--device", "cpu")
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip().splitlines()[-1] == str(ws.shards_dir / "two")
    _same_subset(ws.shards_dir / "one", ws.shards_dir / "two")
    matrix, ids, _ = load_embeddings(ws)
    pool = _train_pool(ws)
    expected = [ids[i] for i in pool[brute_force_k_center(matrix[pool], 40)]]
    assert read_subset(ws.shards_dir / "two")[0].column("sample_id").to_pylist() == expected
    assert not checkpoint_dir(ws, "two").exists()


def test_killed_selection_resumes_from_its_checkpoint_identically(ws, monkeypatch):
    full = select_subset(ws, "l2-maxdiverse", k=30, name="full", kcenter=KCenterOptions(device="cpu"))
    opts = KCenterOptions(device="cpu", checkpoint_every=4, stop_after=13)
    assert select_subset(ws, "l2-maxdiverse", k=30, name="cut", kcenter=opts) is None
    files = sorted(p.name for p in checkpoint_dir(ws, "cut").iterdir())
    assert files == ["params.json", "rank-00000-000000008.npz", "rank-00000-000000012.npz"]
    assert not (ws.shards_dir / "cut").exists()

    def no_restart(*_):
        raise AssertionError("resumed run started over")

    monkeypatch.setattr(Greedy, "start", no_restart)
    resumed = select_subset(ws, "l2-maxdiverse", k=30, name="cut", kcenter=KCenterOptions(device="numpy"))
    _same_subset(full, resumed)
    assert not checkpoint_dir(ws, "cut").exists()


@pytest.mark.parametrize("keep_digest", [True, False])
def test_edited_checkpoint_is_refused_not_resumed(ws, keep_digest):
    opts = KCenterOptions(device="cpu", checkpoint_every=4, stop_after=9)
    assert select_subset(ws, "l2-maxdiverse", k=20, name="cut", kcenter=opts) is None
    path = checkpoint_dir(ws, "cut") / "rank-00000-000000008.npz"
    with np.load(path) as z:
        saved = {name: z[name] for name in z.files}
    saved["picks"] = saved["picks"][::-1].copy()  # still a loadable checkpoint, of other picks
    if not keep_digest:
        del saved["digest"]
    np.savez(path, **saved)
    result = run_curate("select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "20",
                        "--name", "cut")
    assert_user_error(result, "rank-00000-000000008.npz: k-center checkpoint edited since it was written")
    assert not (ws.shards_dir / "cut").exists()


def test_resume_with_another_world_size_is_refused(ws):
    opts = KCenterOptions(device="cpu", checkpoint_every=5, stop_after=6)
    assert select_subset(ws, "l2-maxdiverse", k=20, name="cut", kcenter=opts) is None
    params = checkpoint_dir(ws, "cut") / "params.json"
    saved = json.loads(params.read_text())
    params.write_text(json.dumps({**saved, "world": 2}))  # as left by `torchrun --nproc-per-node 2`
    result = run_curate("select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "20",
                        "--name", "cut")
    assert_user_error(result, "checkpoint written by 2 process(es), this run has 1", "--nproc-per-node 2")
    assert not (ws.shards_dir / "cut").exists()


def test_changed_selection_discards_an_old_checkpoint(ws, monkeypatch):
    opts = KCenterOptions(device="cpu", checkpoint_every=5, stop_after=6)
    assert select_subset(ws, "l2-maxdiverse", k=20, name="x", kcenter=opts) is None
    # Greedy k-center picks are prefix-stable, so resuming the k=20 checkpoint would give the same subset:
    # only the path taken tells a discarded checkpoint from a reused one.
    paths: list[str] = []
    start, resume = Greedy.start, Greedy.resume
    monkeypatch.setattr(Greedy, "start", lambda self, *a: (paths.append("start"), start(self, *a))[1])
    monkeypatch.setattr(Greedy, "resume", lambda self, *a: (paths.append("resume"), resume(self, *a))[1])
    path = select_subset(ws, "l2-maxdiverse", k=25, name="x", kcenter=KCenterOptions(device="cpu"))
    assert paths == ["start"]
    ref = select_subset(ws, "l2-maxdiverse", k=25, name="ref", kcenter=KCenterOptions(device="numpy"))
    _same_subset(path, ref)


def test_pool_over_the_memory_budget_names_bytes_and_the_fix(ws):
    result = run_curate("select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "10",
                        "--memory-budget", "0.00002")
    # 120 x (64 x 4 + 22) bytes of rows and state + 10 x 64 x 8 bytes of float64 centers
    assert_user_error(result, "needs 38,480 bytes", "120 x 64 float32", "budget is 20,000 bytes",
                      "torchrun --nproc-per-node 3 ")
    assert not ws.shards_dir.exists()


def test_memory_check_counts_bytes_and_processes():
    from curate.kcenter.pool import check_memory
    from datasets_spec.errors import UserError

    # 665K x 512 float32: 1.362 GB of rows + 14.6 MB state + 133K x 512 x 8 = 0.545 GB of centers
    with pytest.raises(UserError) as err:
        check_memory(665_000, 512, 133_000, "float32", 1, "cpu", 1.0)
    msg = str(err.value)
    # 1.377 GB of rows and state over the 0.455 GB the centers leave: 4 processes
    assert "needs 1,921,318,000 bytes (1.92 GB) per process" in msg and "--nproc-per-node 4 " in msg
    check_memory(665_000, 512, 133_000, "float16", 1, "cpu", 1.3)  # 0.681 + 0.015 + 0.545 fits
    with pytest.raises(UserError, match="centers alone need 0.54 GB: lower --k"):
        check_memory(665_000, 512, 133_000, "float32", 1, "cpu", 0.5)


def test_float16_embedding_set_selects_exactly_over_its_stored_values(ws):
    embed_workspace(ws, model="tiny-clip", pretrained="none", num_workers=0, rows_per_part=64,
                    show_progress=False, threads=1, dtype="float16", tag="half")
    part = list_parts(ws.embeddings_dir / "half")[0]
    assert str(pq.read_schema(part).field("embedding").type.value_type) == "halffloat"
    assert json.loads((ws.embeddings_dir / "half" / "embeddings.json").read_text())["dtype"] == "float16"
    full32, ids, _ = load_embeddings(ws, "tiny-clip_none")
    pool = _train_pool(ws)
    stored = full32[pool].astype(np.float16)
    result = run_curate("select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "30",
                        "--embeddings", "half", "--device", "cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    table, manifest = read_subset(ws.shards_dir / "l2-maxdiverse-k30")
    assert table.column("sample_id").to_pylist() == [ids[i] for i in pool[brute_force_k_center(stored, 30)]]
    assert manifest["embeddings"]["tag"] == "half"
    numpy_only = run_curate("select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "30",
                            "--embeddings", "half", "--device", "numpy", "--name", "n")
    assert_user_error(numpy_only, "float16 embeddings need the torch backend")


def test_progress_bar_reports_picks_per_second(ws):
    result = run_curate("select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "25")
    assert result.returncode == 0, result.stderr
    assert "25/25" in result.stderr and "picks/s" in result.stderr
    assert result.stdout.strip() == str(ws.shards_dir / "l2-maxdiverse-k25")


def test_bad_kcenter_options_are_user_errors(ws):
    for args, needle in ((["--checkpoint-every", "0"], "--checkpoint-every must be positive"),
                         (["--memory-budget", "-1"], "--memory-budget must be a positive number of GB"),
                         (["--device", "tpu"], "unknown --device 'tpu'")):
        result = run_curate("select", "-w", str(ws.root), "--strategy", "l2-maxdiverse", "--k", "5", *args)
        assert_user_error(result, needle)
    assert not ws.shards_dir.exists()
