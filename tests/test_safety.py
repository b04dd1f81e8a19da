"""Nothing lost: no command writes over its own inputs or the workspace's managed folders, and --overwrite
only replaces a previous output of the same kind. Each case: exit 2, one line, and the disk unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate
from safety_helpers import tree_state

from curate.select import select_subset
from datasets_spec.outputs import EXPORT_MARKER
from datasets_spec.workspace import Workspace


@pytest.fixture()
def ws(synthetic_workspace, tmp_path) -> Workspace:
    ws = copy_workspace(synthetic_workspace, tmp_path)
    select_subset(ws, "random", k=8, seed=0)
    return ws


def _export(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return run_curate("export", "random-k8", "-w", str(ws.root), *args)


@pytest.mark.parametrize(
    ("fmt", "out", "needle"),
    [
        ("scienceqa", ".", "contains the workspace folder"),  # the workspace itself
        ("scienceqa", "..", "contains the workspace folder"),  # a folder holding the workspace
        ("scienceqa", "dataset", "is the workspace folder"),
        ("scienceqa", "shards/random-k8", "lies inside the workspace folder"),  # the subset being exported
        ("llava-json", "dataset/part-00000.parquet", "lies inside the workspace folder"),
        ("llava-json", "embeddings/x.json", "lies inside the workspace folder"),
        ("scienceqa", "runs", "is the workspace folder"),
        ("scienceqa", "synthetic-source/images", "lies inside the workspace folder"),  # the image root
    ],
)
def test_export_refuses_managed_folders_and_its_source(ws, fmt, out, needle):
    before = tree_state(ws.root.parent)
    result = _export(ws, "--format", fmt, "--out", str(ws.root / out), "--overwrite")
    assert_user_error(result, needle, "--out")
    assert "Traceback" not in result.stderr
    assert tree_state(ws.root.parent) == before


def test_export_refuses_a_symlink_into_the_workspace(ws, tmp_path):
    link = tmp_path / "looks-harmless"
    link.symlink_to(ws.dataset_dir)
    before = tree_state(ws.root)
    result = _export(ws, "--format", "scienceqa", "--out", str(link), "--overwrite")
    assert_user_error(result, "is the workspace")
    assert tree_state(ws.root) == before and link.is_symlink()


def test_export_refuses_a_subset_outside_the_workspace_as_its_own_out(ws, tmp_path):
    outside = tmp_path / "elsewhere" / "subset"
    outside.parent.mkdir()
    os.rename(ws.shards_dir / "random-k8", outside)
    before = tree_state(outside)
    result = run_curate("export", str(outside), "-w", str(ws.root), "--format", "scienceqa",
                        "--out", str(outside / "sqa"), "--overwrite")
    assert_user_error(result, "lies inside", "which this command reads")
    assert tree_state(outside) == before


def test_overwrite_replaces_only_a_previous_export_of_the_same_format(ws, tmp_path):
    out_json, out_dir = tmp_path / "subset.json", tmp_path / "subset-sqa"
    assert _export(ws, "--format", "llava-json", "--out", str(out_json)).returncode == 0
    assert _export(ws, "--format", "scienceqa", "--out", str(out_dir)).returncode == 0
    assert json.loads((tmp_path / f".subset.json{EXPORT_MARKER}").read_text())["format"] == "llava-json"
    assert json.loads((out_dir / EXPORT_MARKER).read_text())["rows"] == 8

    # Without --overwrite: refused. With it: a previous export of that format is replaced.
    assert_user_error(_export(ws, "--format", "llava-json", "--out", str(out_json)), "already exists")
    out_json.write_text("stale")
    assert _export(ws, "--format", "llava-json", "--out", str(out_json), "--overwrite").returncode == 0
    assert len(json.loads(out_json.read_text())) == 8

    # An export of the other format, a user's own file and a user's own folder are never replaced.
    assert_user_error(_export(ws, "--format", "llava-json", "--out", str(out_dir), "--overwrite"),
                      "not a previous llava-json export")
    mine = tmp_path / "mine.json"
    mine.write_text("my notes")
    assert_user_error(_export(ws, "--format", "llava-json", "--out", str(mine), "--overwrite"),
                      "not a previous llava-json export", EXPORT_MARKER)
    assert mine.read_text() == "my notes"
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("x")
    assert_user_error(_export(ws, "--format", "scienceqa", "--out", str(folder), "--overwrite"),
                      "not a previous scienceqa export")
    assert (folder / "chapter1.tex").read_text() == "x"


def test_ingest_never_replaces_a_folder_that_is_not_a_dataset(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.dataset_dir.mkdir(parents=True)
    (ws.dataset_dir / "notes.txt").write_text("mine")
    result = run_curate("ingest", "synthetic", "--n-train", "10", "--n-val", "2", "--n-test", "2",
                        "-w", str(ws.root), "--overwrite")
    assert_user_error(result, "is not a dataset (no dataset.json)")
    assert sorted(p.name for p in ws.dataset_dir.iterdir()) == ["notes.txt"]


def test_ingest_refuses_an_input_inside_the_dataset_it_would_replace(ws):
    src = ws.dataset_dir / "mine.json"
    src.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                                              {"from": "gpt", "value": "yo"}]}]))
    before = tree_state(ws.dataset_dir)
    result = run_curate("ingest", "llava", str(src), "-w", str(ws.root), "--overwrite")
    assert_user_error(result, "the dataset folder", "contains", "which this command reads")
    assert tree_state(ws.dataset_dir) == before


def test_ingest_synthetic_never_replaces_a_foreign_synthetic_source_folder(tmp_path):
    ws = Workspace(tmp_path / "ws")
    (ws.root / "synthetic-source").mkdir(parents=True)
    (ws.root / "synthetic-source" / "photo.jpg").write_bytes(b"precious")
    result = run_curate("ingest", "synthetic", "--n-train", "10", "--n-val", "2", "--n-test", "2",
                        "-w", str(ws.root))
    assert_user_error(result, "not a previous synthetic source")
    assert (ws.root / "synthetic-source" / "photo.jpg").read_bytes() == b"precious"
    assert not ws.dataset_dir.exists()


@pytest.mark.parametrize("command", ["select", "rules"])
def test_select_and_rules_overwrite_only_a_subset(ws, command):
    target = ws.shards_dir / "mine"
    target.mkdir()
    (target / "results.csv").write_text("a,b")
    args = ["--strategy", "random"] if command == "select" else []
    result = run_curate(command, *args, "--k", "4", "--name", "mine", "--overwrite", "-w", str(ws.root))
    assert_user_error(result, "not a previous subset (no manifest.json)")
    assert sorted(p.name for p in target.iterdir()) == ["results.csv"]
    # A subset this tool wrote is replaced.
    again = run_curate(command, *args, "--k", "4", "--name", "random-k8", "--overwrite", "-w", str(ws.root))
    assert again.returncode == 0, again.stderr
    assert json.loads((ws.shards_dir / "random-k8" / "manifest.json").read_text())["k"] == 4


def test_embed_overwrite_only_replaces_an_embedding_set(ws):
    target = ws.embeddings_dir / "mine"
    target.mkdir(parents=True)
    (target / "vectors.npy").write_bytes(b"\x00" * 8)
    result = run_curate("embed", "--model", "tiny-clip", "--pretrained", "none", "--tag", "mine",
                        "--overwrite", "--num-workers", "0", "-w", str(ws.root))
    assert_user_error(result, "not a previous embedding set (no embeddings.json)")
    assert sorted(p.name for p in target.iterdir()) == ["vectors.npy"]
    assert not (ws.embeddings_dir / ".mine.partial").exists()


def _train(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "train.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize(
    ("out", "needle"),
    [
        ("runs/merged", "lies inside the workspace folder"),
        ("dataset", "is the workspace folder"),
        (".", "contains the workspace folder"),
        ("runs/r1/model", "lies inside the workspace folder"),  # the run being merged
    ],
)
def test_train_merge_refuses_managed_folders_and_its_run(ws, out, needle):
    run = ws.runs_dir / "r1"
    (run / "model").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    before = tree_state(ws.root)
    assert_user_error(_train("merge", "--run", str(run), "--out", str(ws.root / out), "--overwrite"), needle)
    assert tree_state(ws.root) == before


def test_train_merge_overwrite_only_replaces_a_saved_model(ws, tmp_path):
    run = ws.runs_dir / "r1"
    (run / "model").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    mine = tmp_path / "my-model"
    mine.mkdir()
    (mine / "weights.bin").write_bytes(b"w")
    result = _train("merge", "--run", str(run), "--out", str(mine), "--overwrite")
    assert_user_error(result, "not a previous merged model (no llava_bundle.json)")
    assert (mine / "weights.bin").read_bytes() == b"w"


def test_ablate_never_replaces_a_run_it_did_not_make(ws, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'name = "g"\nllms = ["tiny-llama"]\nvision = "tiny-clip"\nbudgets = [4]\n[strategies.random]\n'
        '[stage1]\nhparams = "tiny-cpu"\n[train]\nhparams = "tiny-cpu"\n'
    )
    mine = ws.runs_dir / "stage1__tiny-llama"
    mine.mkdir(parents=True)
    (mine / "config.json").write_text(json.dumps({"command": "train run --subset shards/x --stage pretrain"}))
    (mine / "projector.safetensors").write_bytes(b"weeks of work")
    result = _train("ablate", "--grid", str(grid), "--no-plots", "-w", str(ws.root))
    assert_user_error(result, "did not make it", "ablation_cell.json")
    assert (mine / "projector.safetensors").read_bytes() == b"weeks of work"


def test_train_run_never_replaces_an_existing_run(ws):
    mine = ws.runs_dir / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.md").write_text("keep")
    before = tree_state(ws.runs_dir)
    result = _train("run", "--subset", str(ws.shards_dir / "random-k8"), "--run-name", "mine",
                    "--preset", "tiny-cpu", "-w", str(ws.root))
    assert_user_error(result, "run already exists")
    assert tree_state(ws.runs_dir) == before
    assert_user_error(_train("run", "--subset", str(ws.shards_dir / "random-k8"), "--run-name", "../dataset",
                             "-w", str(ws.root)), "--run-name must be a plain directory name")
