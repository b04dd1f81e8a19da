"""Killed runs (a real SIGKILL of a subprocess) leave no partial output, lose no previous output, and their
temporary names are cleaned by the next successful run of the same command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate
from safety_helpers import run_killed_at, temporaries, tree_state

from curate.select import select_subset
from curate.shards import find_subsets
from datasets_spec.workspace import Workspace


@pytest.fixture()
def ws(synthetic_workspace, tmp_path) -> Workspace:
    return copy_workspace(synthetic_workspace, tmp_path)


SUBSET_COMMANDS = {
    "select": (["select", "--strategy", "random", "--k", "5", "--seed", "3"], "random-k5"),
    "rules": (["rules", "--k", "5", "--min-per-subject", "1"], "rules-k5"),
}


@pytest.mark.parametrize("command", sorted(SUBSET_COMMANDS))
def test_fault_between_part_write_and_rename_leaves_no_subset(ws, tmp_path, command):
    args, name = SUBSET_COMMANDS[command]
    target = ws.shards_dir / name
    killed = run_killed_at(target, *args, "-w", str(ws.root))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # The parts and manifest were complete in the temporary directory; nothing is under the real name.
    (leftover,) = temporaries(ws.root)
    assert leftover.startswith(f"shards/.{name}.tmp-")
    assert sorted(p.name for p in (ws.root / leftover).iterdir()) == ["manifest.json", "part-00000.parquet"]
    assert not target.exists()
    assert not (ws.shards_dir.exists() and any(p.name == name for p in ws.shards_dir.iterdir()))
    assert_user_error(run_curate("stats", name, "-w", str(ws.root)), "not a dataset")

    again = run_curate(*args, "-w", str(ws.root))
    assert again.returncode == 0, again.stderr
    assert temporaries(ws.root) == []
    clean = copy_workspace(ws, tmp_path / "clean")
    (clean.shards_dir / name).rename(clean.shards_dir / "first")
    assert run_curate(*args, "-w", str(clean.root)).returncode == 0
    parts = sorted(p.name for p in target.glob("part-*.parquet"))
    assert parts == ["part-00000.parquet"]
    assert (target / parts[0]).read_bytes() == (clean.shards_dir / name / parts[0]).read_bytes()
    assert [p.name for p in find_subsets(ws.shards_dir)] == [name]


def test_kill_while_overwrite_swaps_loses_nothing(ws):
    select_subset(ws, "random", k=8, seed=0)
    target = ws.shards_dir / "random-k8"
    before = tree_state(target)
    killed = run_killed_at(target, "select", "--strategy", "random", "--k", "8", "--seed", "1", "--overwrite",
                           "-w", str(ws.root))
    assert killed.returncode == -signal.SIGKILL
    # Killed after the old subset was moved aside and before the new one took its name.
    assert not target.exists()
    assert sorted(p.split(".")[-1].split("-")[0] for p in temporaries(ws.root)) == ["old", "tmp"]

    # The next run puts the previous subset back before anything else: without --overwrite it is refused
    # and the old subset is there again, byte for byte.
    refused = run_curate("select", "--strategy", "random", "--k", "8", "--seed", "1", "-w", str(ws.root))
    assert_user_error(refused, "already exists")
    assert tree_state(target) == before and temporaries(ws.root) == []
    replaced = run_curate("select", "--strategy", "random", "--k", "8", "--seed", "1", "--overwrite",
                          "-w", str(ws.root))
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((target / "manifest.json").read_text())["seed"] == 1
    assert temporaries(ws.root) == []


def _synthetic(ws_root, *extra: str) -> list[str]:
    sizes = ["--n-train", "40", "--n-val", "4", "--n-test", "4"]
    return ["ingest", "synthetic", *sizes, "-w", str(ws_root), *extra]


def test_ingest_synthetic_killed_while_generating_then_rerun_cleans_up(tmp_path):
    ws = tmp_path / "ws"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "curate.cli", "ingest", "synthetic", "--n-train", "20000", "-w", str(ws)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    tmp_dir = ws / f".synthetic-source.tmp-{proc.pid}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (tmp_dir / "images" / "train").is_dir():
        time.sleep(0.01)
    time.sleep(0.3)  # some images written, generation far from done
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert any((tmp_dir / "images" / "train").iterdir())  # the leftover the issue found (8 MB there)
    assert not (ws / "dataset").exists() and not (ws / "synthetic-source").exists()

    done = run_curate(*_synthetic(ws))
    assert done.returncode == 0, done.stderr
    assert temporaries(ws) == []


def test_ingest_killed_before_the_dataset_rename_then_rerun(tmp_path):
    ws = tmp_path / "ws"
    killed = run_killed_at(ws / "dataset", *_synthetic(ws))
    assert killed.returncode == -signal.SIGKILL
    (leftover,) = temporaries(ws)
    assert leftover.startswith(".dataset.tmp-") and (ws / leftover / "dataset.json").is_file()
    assert not (ws / "dataset").exists()

    done = run_curate(*_synthetic(ws))
    assert done.returncode == 0, done.stderr
    assert temporaries(ws) == []
    clean = tmp_path / "clean"
    assert run_curate(*_synthetic(clean)).returncode == 0
    fingerprint = json.loads((ws / "dataset" / "dataset.json").read_text())["fingerprint"]
    assert fingerprint == json.loads((clean / "dataset" / "dataset.json").read_text())["fingerprint"]


def _llava(tmp_path, name: str, n: int):
    path = tmp_path / name
    path.write_text(json.dumps([
        {"id": f"{name}-{i}",
         "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
        for i in range(n)
    ]))
    return path


def test_ingest_overwrite_killed_mid_swap_keeps_the_previous_dataset(tmp_path):
    ws = tmp_path / "ws"
    first, second = _llava(tmp_path, "a.json", 5), _llava(tmp_path, "b.json", 7)
    assert run_curate("ingest", "llava", str(first), "-w", str(ws)).returncode == 0
    before = tree_state(ws / "dataset")
    killed = run_killed_at(ws / "dataset", "ingest", "llava", str(second), "--overwrite", "-w", str(ws))
    assert killed.returncode == -signal.SIGKILL
    assert not (ws / "dataset").exists()
    assert_user_error(run_curate("stats", "-w", str(ws)), "a killed ingest left the previous dataset in")

    # Re-ingesting the first file restores it (same fingerprint: nothing to write) and cleans up.
    again = run_curate("ingest", "llava", str(first), "-w", str(ws))
    assert again.returncode == 0, again.stderr
    assert tree_state(ws / "dataset") == before and temporaries(ws) == []


def test_embed_killed_between_parts_resumes_clean_and_identical(
    embedded_workspace, synthetic_workspace, tmp_path
):
    ws = copy_workspace(synthetic_workspace, tmp_path)
    args = ["embed", "--model", "tiny-clip", "--pretrained", "none", "--num-workers", "0", "--threads", "1",
            "--rows-per-part", "64", "-w", str(ws.root)]
    partial = ws.embeddings_dir / ".tiny-clip_none.partial"
    killed = run_killed_at(partial / "part-00001.parquet", *args)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in partial.glob("part-*.parquet")] == ["part-00000.parquet"]
    assert [p.split("/")[-1][:24] for p in temporaries(ws.root)] == [".part-00001.parquet.tmp-"]

    done = run_curate(*args)
    assert done.returncode == 0, done.stderr
    assert temporaries(ws.root) == [] and not partial.exists()
    final = ws.embeddings_dir / "tiny-clip_none"
    reference = embedded_workspace.embeddings_dir / "tiny-clip_none"
    names = sorted(p.name for p in final.iterdir() if p.suffix == ".parquet")
    assert names == sorted(p.name for p in reference.iterdir() if p.suffix == ".parquet") and len(names) == 3
    for name in names:
        assert (final / name).read_bytes() == (reference / name).read_bytes()


def test_export_killed_before_its_rename_then_rerun(ws, tmp_path):
    select_subset(ws, "random", k=8, seed=0)
    out = tmp_path / "subset.json"
    killed = run_killed_at(out, "export", "random-k8", "--format", "llava-json", "--out", str(out),
                           "-w", str(ws.root))
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and len(list(tmp_path.glob(".subset.json.tmp-*"))) == 1
    done = run_curate("export", "random-k8", "--format", "llava-json", "--out", str(out), "-w", str(ws.root))
    assert done.returncode == 0, done.stderr
    assert len(json.loads(out.read_text())) == 8 and not list(tmp_path.glob(".subset.json.tmp-*"))


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    from datasets_spec.outputs import clean_stale_temps

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead, alive = child.pid, os.getppid()
    for pid in (dead, alive):
        (tmp_path / f".out.tmp-{pid}").mkdir()
        (tmp_path / f".out.tmp-{pid}" / "part-00000.parquet").write_bytes(b"x")
    (tmp_path / f".other.tmp-{dead}").write_bytes(b"y")
    (tmp_path / f".out.old-{dead}").mkdir()  # the previous output, moved aside by the dead writer
    handled = clean_stale_temps(tmp_path, "out")
    assert sorted(p.name for p in handled) == [f".out.old-{dead}", f".out.tmp-{dead}"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f".out.tmp-{alive}", f".other.tmp-{dead}", "out"])
    assert clean_stale_temps(tmp_path) == [tmp_path / f".other.tmp-{dead}"]
