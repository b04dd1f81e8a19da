"""Released subsets: the LLaVA JSON export's index (ids, source positions, sha256) and manifest versions."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata

from PIL import Image

from curate.cli import app
from curate.ingest_llava import SKIPPED_POSITIONS_FILE
from datasets_spec.parts import read_json, write_record
from datasets_spec.workspace import Workspace
from tests.cli_helpers import run_app


def _record(i, image: bool = True, rid=None) -> dict:
    rec = {"id": f"s{i}" if rid is None else rid,
           "conversations": [{"from": "human", "value": ("<image>\n" if image else "") + f"question {i}?"},
                             {"from": "gpt", "value": f"answer {i}"}]}
    if image:
        rec["image"] = f"coco/train2017/{i}.jpg"
    return {k: rec[k] for k in ("id", "image", "conversations") if k in rec}


# Items 2 and 5 have no image file (skipped); 3 and 6 repeat an id; 4 has an integer id; 7 is text-only.
SOURCE = [_record(0), _record(1), _record(2), _record(3, rid="dup"), _record(4, rid=44), _record(5),
          _record(6, rid="dup"), _record(7, image=False), _record(8)]
MISSING = {2, 5}


def _workspace(tmp_path) -> tuple[Workspace, object]:
    src = tmp_path / "mix.json"
    src.write_text(json.dumps(SOURCE))
    root = tmp_path / "images"
    for i, rec in enumerate(SOURCE):
        if "image" in rec and i not in MISSING:
            (root / rec["image"]).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(root / rec["image"])
    ws = Workspace(tmp_path / "ws")
    code, err = run_app(app, ["ingest", "llava", str(src), "--image-root", str(root), "--skip-bad-images",
                              "--duplicate-ids", "suffix", "-w", str(ws.root)])
    assert code == 0, err
    return ws, src


def test_export_index_points_at_the_source_records(tmp_path):
    ws, src = _workspace(tmp_path)
    code, err = run_app(app, ["select", "--strategy", "random", "--k", "4", "--seed", "3", "--name", "r4",
                              "-w", str(ws.root)])
    assert code == 0, err
    out = tmp_path / "release" / "r4.json"
    code, err = run_app(app, ["export", "shards/r4", "--format", "llava-json", "--out", str(out),
                              "-w", str(ws.root)])
    assert code == 0, err
    exported = json.loads(out.read_text())
    index = json.loads((tmp_path / "release" / "r4.index.json").read_text())
    # the positions pick exactly the exported records out of the source file, ids as the file wrote them
    assert [SOURCE[p] for p in index["positions"]] == exported
    assert index["ids"] == [rec["id"] for rec in exported]
    assert not set(index["positions"]) & MISSING and len(set(index["positions"])) == 4
    assert index["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert index["subset"]["seed"] == 3 and index["subset"]["strategy"] == "random"
    manifest = read_json(ws.shards_dir / "r4" / "manifest.json")
    assert manifest["seed"] == 3
    assert manifest["library_versions"]["numpy"] == metadata.version("numpy")
    assert manifest["library_versions"]["torch"] == metadata.version("torch")
    assert set(manifest["library_versions"]) >= {"faiss", "numpy", "torch"}
    assert index["subset"]["library_versions"] == manifest["library_versions"]


def test_whole_dataset_index_skips_the_skipped_positions(tmp_path):
    ws, _ = _workspace(tmp_path)
    out = tmp_path / "all.json"
    code, err = run_app(app, ["export", "--format", "llava-json", "--out", str(out), "-w", str(ws.root)])
    assert code == 0, err
    index = json.loads((tmp_path / "all.index.json").read_text())
    assert index["positions"] == [0, 1, 3, 4, 6, 7, 8] and index["subset"] is None
    assert index["ids"] == ["s0", "s1", "dup", 44, "dup", "s7", "s8"]


def test_index_path_taken_by_another_file_refused_nothing_written(tmp_path):
    ws, _ = _workspace(tmp_path)
    (tmp_path / "all.index.json").write_text("my notes\n")
    code, err = run_app(app, ["export", "--format", "llava-json", "--out", str(tmp_path / "all.json"),
                              "-w", str(ws.root)])
    assert code == 2 and "all.index.json: exists and is not an export index" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "all.json").exists() and (tmp_path / "all.index.json").read_text() == "my notes\n"


def test_old_dataset_with_skipped_items_cannot_place_rows(tmp_path):
    ws, _ = _workspace(tmp_path)
    # as written before positions were recorded: no side file, and a record that never listed it
    (ws.dataset_dir / SKIPPED_POSITIONS_FILE).unlink()
    record = read_json(ws.dataset_dir / "dataset.json")
    del record["part_hashes"][SKIPPED_POSITIONS_FILE]
    write_record(ws.dataset_dir / "dataset.json", record)
    code, err = run_app(app, ["export", "--format", "llava-json", "--out", str(tmp_path / "all.json"),
                              "-w", str(ws.root)])
    assert code == 2 and "ingest again" in err and "2 were skipped" in err
    assert not (tmp_path / "all.json").exists() and not (tmp_path / "all.index.json").exists()
