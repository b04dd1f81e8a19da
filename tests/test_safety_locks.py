"""Commands that read the dataset and ingest, which replaces it, never overlap: the loser refuses at once
with one line naming the holder's pid and command, and a subset whose dataset changed under it is never
renamed into place. Locks are held by real child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate
from safety_helpers import tree_state

from datasets_spec.errors import UserError
from datasets_spec.locks import lock_holders
from datasets_spec.parts import write_record

HOLDER = """
import sys
from datasets_spec.locks import dataset_lock, output_lock
kind, path = sys.argv[1], sys.argv[2]
lock = output_lock(path, command="curate embed") if kind == "output" else dataset_lock(
    path, writes=kind == "exclusive", command="curate test-holder")
with lock:
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


class Holder:
    """A child process holding one lock until it is released (or killed)."""

    def __init__(self, kind: str, path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(path), "--marker-arg"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


@pytest.fixture()
def ws(synthetic_workspace, tmp_path):
    return copy_workspace(synthetic_workspace, tmp_path)


def test_ingest_refuses_while_a_reader_holds_the_dataset(ws):
    before = tree_state(ws.root)
    holder = Holder("shared", ws.root)
    try:
        result = run_curate("ingest", "synthetic", "--overwrite", "--n-train", "50", "-w", str(ws.root))
    finally:
        holder.release()
    assert_user_error(result, f"in use by pid {holder.proc.pid}", "--marker-arg", "curate ingest")
    assert tree_state(ws.root) == before
    # Released: the same command now works (the lock went with the process).
    again = run_curate("ingest", "synthetic", "--overwrite", "--n-train", "50", "-w", str(ws.root))
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("args", [["select", "--strategy", "random", "--k", "5"], ["rules", "--k", "5"],
                                  ["stats"], ["export", "--format", "llava-json", "--out", "OUT"]])
def test_readers_refuse_while_an_ingest_holds_the_dataset(ws, tmp_path, args):
    args = [str(tmp_path / "out.json") if a == "OUT" else a for a in args]
    holder = Holder("exclusive", ws.root)
    try:
        result = run_curate(*args, "-w", str(ws.root))
    finally:
        holder.release()
    assert_user_error(result, f"in use by pid {holder.proc.pid}", "reads the dataset")
    assert not ws.shards_dir.exists() and not (tmp_path / "out.json").exists()


def test_a_killed_holder_releases_its_lock(ws):
    holder = Holder("exclusive", ws.root)
    holder.proc.kill()
    holder.proc.wait(timeout=60)
    result = run_curate("select", "--strategy", "random", "--k", "5", "-w", str(ws.root))
    assert result.returncode == 0, result.stderr


def test_select_refuses_during_a_real_ingest(ws):
    """Two real commands: a large ingest runs; a select started meanwhile is refused, naming it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ingest = subprocess.Popen(
        [sys.executable, "-m", "curate.cli", "ingest", "synthetic", "--overwrite", "--n-train", "40000",
         "-w", str(ws.root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    fd = os.open(ws.root, os.O_RDONLY)
    try:
        deadline = time.monotonic() + 120
        while ingest.pid not in lock_holders(fd) and time.monotonic() < deadline and ingest.poll() is None:
            time.sleep(0.05)
        assert ingest.pid in lock_holders(fd), "the ingest never held the workspace lock"
        result = run_curate("select", "--strategy", "random", "--k", "5", "-w", str(ws.root))
    finally:
        os.close(fd)
        out, err = ingest.communicate(timeout=600)
    assert ingest.returncode == 0, err
    assert_user_error(result, f"in use by pid {ingest.pid}", "curate ingest synthetic")
    assert not ws.shards_dir.exists()


def test_second_embed_into_a_busy_embeddings_folder_gets_one_line(ws):
    holder = Holder("output", ws.dataset_dir)
    try:
        result = run_curate("embed", "--model", "tiny-clip", "--pretrained", "none", "--num-workers", "0",
                            "-w", str(ws.root))
    finally:
        holder.release()
    assert_user_error(result, "curate embed (one at a time", f"in use by pid {holder.proc.pid}")
    assert not ws.embeddings_dir.exists()


def test_two_real_embeds_at_once_never_give_a_traceback(ws):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, "-m", "curate.cli", "embed", "--model", "tiny-clip", "--pretrained", "none",
            "--num-workers", "0", "--rows-per-part", "16", "-w", str(ws.root)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [subprocess.CompletedProcess(p.args, p.wait(timeout=600), *p.communicate()) for p in procs]
    assert sorted(r.returncode for r in results)[0] == 0, [r.stderr for r in results]
    for r in results:
        if r.returncode:
            assert_user_error(r, "in use by pid")
    info = json.loads((ws.embeddings_dir / "tiny-clip_none" / "embeddings.json").read_text())
    assert info["rows"] == 190


def test_select_never_renames_a_subset_whose_dataset_changed(ws, monkeypatch):
    import curate.select as select_module

    real_build_pool = select_module.build_pool

    def build_pool_then_replace_dataset(*args, **kwargs):
        result = real_build_pool(*args, **kwargs)
        info_path = ws.dataset_dir / "dataset.json"
        info = json.loads(info_path.read_text())
        write_record(info_path, {**info, "fingerprint": "0" * 64})  # another ingest's dataset now
        return result

    monkeypatch.setattr(select_module, "build_pool", build_pool_then_replace_dataset)
    with pytest.raises(UserError, match="the dataset changed while this command ran"):
        select_module.select_subset(ws, "random", k=5, seed=0)
    assert not (ws.shards_dir / "random-k5").exists()
    assert [p.name for p in ws.shards_dir.iterdir()] == [] if ws.shards_dir.exists() else True
