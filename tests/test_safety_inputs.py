"""Corrupt or foreign Parquet parts, verification against recorded hashes, symlinks out of the image root,
and LLaVA turn roles: one line naming the file or sample, exit 2, nothing written."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate
from PIL import Image

from curate.select import select_subset
from datasets_spec.parts import file_sha256
from datasets_spec.workspace import Workspace


@pytest.fixture()
def ws(synthetic_workspace, tmp_path) -> Workspace:
    ws = copy_workspace(synthetic_workspace, tmp_path)
    select_subset(ws, "random", k=8, seed=0)
    return ws


# --- corrupt and foreign parts ------------------------------------------------------------------------


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign(path):
    pq.write_table(pa.table({"x": [1, 2, 3]}), path)


@pytest.mark.parametrize("damage", [_truncate, _foreign], ids=["truncated", "foreign"])
@pytest.mark.parametrize(
    "args",
    [
        ["stats"],
        ["select", "--strategy", "random", "--k", "3", "--name", "after"],
        ["rules", "--k", "3", "--name", "after"],
        ["export", "--format", "llava-json", "--out", "OUT"],
    ],
    ids=["stats", "select", "rules", "export"],
)
def test_every_reader_names_a_bad_dataset_part(ws, tmp_path, damage, args):
    part = ws.dataset_dir / "part-00000.parquet"
    damage(part)
    args = [str(tmp_path / "out.json") if a == "OUT" else a for a in args]
    result = run_curate(*args, "-w", str(ws.root))
    assert_user_error(result, str(part))
    assert "Traceback" not in result.stderr
    assert not (ws.shards_dir / "after").exists() and not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("damage", [_truncate, _foreign], ids=["truncated", "foreign"])
def test_bad_subset_and_embedding_parts_are_named(embedded_workspace, tmp_path, damage):
    ws = copy_workspace(embedded_workspace, tmp_path)
    select_subset(ws, "random", k=8, seed=0)
    subset_part = ws.shards_dir / "random-k8" / "part-00000.parquet"
    damage(subset_part)
    assert_user_error(run_curate("stats", "random-k8", "-w", str(ws.root)), str(subset_part))
    emb_part = next((ws.embeddings_dir / "tiny-clip_none").glob("part-00001.parquet"))
    damage(emb_part)
    result = run_curate("select", "--strategy", "l2-maxdiverse", "--k", "3", "-w", str(ws.root))
    assert_user_error(result, str(emb_part))
    assert not (ws.shards_dir / "l2-maxdiverse-k3").exists()


def test_verify_names_the_first_changed_part(embedded_workspace, tmp_path):
    ws = copy_workspace(embedded_workspace, tmp_path)
    ok = run_curate("check", "-w", str(ws.root))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("ok ") == 2 and "part_hashes" in ok.stdout  # dataset + one embedding set
    recorded = json.loads((ws.dataset_dir / "dataset.json").read_text())["part_hashes"]
    assert recorded == {"part-00000.parquet": file_sha256(ws.dataset_dir / "part-00000.parquet")}

    # A part that still reads fine but is not what was written: its last row dropped.
    emb = ws.embeddings_dir / "tiny-clip_none"
    table = pq.read_table(emb / "part-00001.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), emb / "part-00001.parquet")
    result = run_curate("check", "-w", str(ws.root))
    assert_user_error(result, str(emb / "part-00001.parquet"), "differs from the hash recorded")

    select_subset(ws, "random", k=8, seed=0)
    subset = ws.shards_dir / "random-k8"
    assert run_curate("stats", "random-k8", "--verify", "-w", str(ws.root)).returncode == 0
    (subset / "part-00001.parquet").write_bytes((subset / "part-00000.parquet").read_bytes())
    result = run_curate("stats", "random-k8", "--verify", "-w", str(ws.root))
    assert_user_error(result, str(subset / "part-00001.parquet"), "not one of the parts recorded")
    (subset / "part-00001.parquet").unlink()
    (subset / "part-00000.parquet").unlink()
    result = run_curate("stats", "random-k8", "--verify", "-w", str(ws.root))
    assert_user_error(result, "no part-*.parquet")


def test_verify_of_an_output_written_before_per_part_hashes(ws):
    info_path = ws.dataset_dir / "dataset.json"
    info = json.loads(info_path.read_text())
    del info["part_hashes"]
    info.pop("record_sha256", None)  # records of that time carried no seal either
    info_path.write_text(json.dumps(info))
    ok = run_curate("stats", "--verify", "-w", str(ws.root))
    assert ok.returncode == 0 and "fingerprint" in ok.stderr
    table = pq.read_table(ws.dataset_dir / "part-00000.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), ws.dataset_dir / "part-00000.parquet")
    assert_user_error(run_curate("stats", "--verify", "-w", str(ws.root)), "rows differ from the fingerprint")


# --- symlinks inside --image-root ---------------------------------------------------------------------


def _llava_file(tmp_path, image: str):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([
        {"id": "a", "image": image, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                      {"from": "gpt", "value": "A square."}]},
    ]))
    return path


def test_symlink_out_of_the_image_root_is_refused_unless_followed(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(outside / "x.png")
    (root / "x.png").symlink_to(outside / "x.png")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    for image in ("x.png", "linked/x.png"):
        ws = tmp_path / f"ws-{image.replace('/', '-')}"
        result = run_curate("ingest", "llava", str(_llava_file(tmp_path, image)), "--image-root", str(root),
                            "-w", str(ws))
        assert_user_error(result, "sample 'a'", f"image {image!r} resolves to", "outside the image root",
                          "--follow-symlinks")
        assert not (ws / "dataset").exists()
    ws = tmp_path / "ws-follow"
    result = run_curate("ingest", "llava", str(_llava_file(tmp_path, "linked/x.png")), "--image-root",
                        str(root), "--follow-symlinks", "-w", str(ws))
    assert result.returncode == 0, result.stderr
    assert json.loads((ws / "dataset" / "dataset.json").read_text())["follow_symlinks"] is True


def test_symlink_staying_inside_the_image_root_is_fine(tmp_path):
    root = tmp_path / "images"
    (root / "real").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "real" / "x.png")
    (root / "alias.png").symlink_to(root / "real" / "x.png")
    ws = tmp_path / "ws"
    result = run_curate("ingest", "llava", str(_llava_file(tmp_path, "alias.png")), "--image-root", str(root),
                        "-w", str(ws))
    assert result.returncode == 0, result.stderr
    assert json.loads((ws / "dataset" / "dataset.json").read_text())["follow_symlinks"] is False


def test_scienceqa_image_linked_out_of_the_folder_is_refused(synthetic_workspace, tmp_path):
    import shutil

    sqa = tmp_path / "sqa"
    shutil.copytree(synthetic_workspace.root / "synthetic-source", sqa)
    image = next((sqa / "images" / "train").glob("*/image.png"))
    pid = image.parent.name
    (tmp_path / "elsewhere.png").write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(tmp_path / "elsewhere.png")
    result = run_curate("ingest", "scienceqa", str(sqa), "-w", str(tmp_path / "ws"))
    assert_user_error(result, f"problem {pid!r}", "outside the image root")
    assert not (tmp_path / "ws" / "dataset").exists()


# --- LLaVA turn roles ---------------------------------------------------------------------------------


def _conversation_file(tmp_path, turns, image=None):
    item = {"id": "s1", "conversations": turns, **({"image": image} if image else {})}
    ok = {"id": "s0", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    path = tmp_path / "conv.json"
    path.write_text(json.dumps([ok, item]))
    return path


H, G = {"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}


@pytest.mark.parametrize(
    ("turns", "needles"),
    [
        ([H, {"from": "robot", "value": "beep"}], ["turn 1 has role 'robot'", "'human' or 'gpt'"]),
        ([{"from": "bot", "value": "x"}, G], ["turn 0 has role 'bot'"]),
        ([H, G, {"from": "system", "value": "late"}],
         ["turn 2 is a 'system' turn", "only as the first turn"]),
    ],
)
def test_roles_are_checked_at_ingest(tmp_path, turns, needles):
    path = _conversation_file(tmp_path, turns)
    result = run_curate("ingest", "llava", str(path), "-w", str(tmp_path / "ws"))
    assert_user_error(result, "sample 's1'", *needles)
    assert not (tmp_path / "ws" / "dataset").exists()


def test_leading_system_turn_is_accepted_and_a_misplaced_image_token_is_located(tmp_path):
    system = {"from": "system", "value": "Answer briefly."}
    image_human = {"from": "human", "value": "<image>\nWhat is it?"}
    path = _conversation_file(tmp_path, [system, image_human, G], image="x.png")
    result = run_curate("ingest", "llava", str(path), "-w", str(tmp_path / "ws"))
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(tmp_path / "ws" / "dataset" / "part-00000.parquet").to_pylist()
    assert [t["from"] for t in rows[1]["conversations"]] == ["system", "human", "gpt"]

    wrong = {"from": "system", "value": "<image>\nAnswer briefly."}
    path = _conversation_file(tmp_path, [wrong, H, G], image="x.png")
    result = run_curate("ingest", "llava", str(path), "-w", str(tmp_path / "ws2"))
    assert_user_error(result, "sample 's1'", "in its first human turn", "turn 0 (system)")


def test_train_names_a_bad_subset_part(ws):
    import os
    import subprocess
    import sys

    part = ws.shards_dir / "random-k8" / "part-00000.parquet"
    _truncate(part)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "train.cli", "run", "--subset", str(part.parent), "--dry-run",
         "-w", str(ws.root)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert_user_error(result, str(part), "not a readable Parquet file")
