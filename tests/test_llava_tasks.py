"""Task labels of LLaVA-1.5 mix records: every form, through ingest and `curate stats`, and v1 datasets."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from curate.cli import app
from curate.stats import stats_target
from datasets_spec.fingerprint import table_fingerprint
from datasets_spec.llava_tasks import TASKS, sample_task
from datasets_spec.parts import part_hashes, read_json, write_record
from datasets_spec.schema import ADDED_COLUMNS, COLUMNS
from datasets_spec.workspace import Workspace
from tests.cli_helpers import run_app


def _turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


SHORT = "Answer the question using a single word or phrase."
OPTION = "Answer with the option's letter from the given choices directly."
# (record, the task a reader of the LLaVA-1.5 data table would give it), written out by hand.
RECORDS = [
    ({"id": "sg1", "conversations": _turns("Write a haiku about rain.", "Soft rain")}, "text_only"),
    ({"id": "v1", "image": "coco/train2017/1.jpg",
      "conversations": _turns(f"<image>\nWhat color is the bus?\n{SHORT}", "Red",
                              f"Is it moving?\n{SHORT}", "No")}, "vqav2_okvqa"),
    ({"id": "a1", "image": "coco/train2017/2.jpg",
      "conversations": _turns(f"<image>\nWhat is the man holding?\nA. a bat\nB. a kite\n{OPTION}", "B")},
     "aokvqa"),
    ({"id": "r1", "image": "coco/train2017/3.jpg",
      "conversations": _turns("<image>\nPlease provide the bounding box coordinate of the region this "
                              "sentence describes: man in red.", "[0.12, 0.3, 0.55, 0.91]",
                              "Please provide a short description for this region: [0.1, 0.2, 0.3, 0.4]",
                              "left dog")}, "refcoco"),
    ({"id": "r2", "image": "coco/train2017/4.jpg",
      "conversations": _turns("<image>\n[0.05, 0.1, 0.5, 0.72]", "a cup")}, "refcoco"),
    ({"id": "g1", "image": "vg/VG_100K/5.jpg",
      "conversations": _turns("<image>\nPlease provide a short description for this region: "
                              "[0.2, 0.2, 0.6, 0.8]", "white clouds")}, "vg_region"),
    ({"id": "g2", "image": "vg/VG_100K_2/6.jpg",
      "conversations": _turns("<image>\nWhat is in the sky?", "clouds")}, "unknown"),
    ({"id": "q1", "image": "gqa/images/7.jpg",
      "conversations": _turns(f"<image>\nIs the fence wooden?\n{SHORT}", "Yes")}, "gqa"),
    ({"id": "o1", "image": "ocr_vqa/images/8.jpg",
      "conversations": _turns("<image>\nWho wrote this book?", "Jane Doe", "Is it a novel?", "Yes")},
     "ocr_vqa"),
    ({"id": "t1", "image": "textvqa/train_images/9.jpg",
      "conversations": _turns("<image>\nProvide a one-sentence caption for the provided image.",
                              "A sign that reads STOP.")}, "textcaps"),
    ({"id": "t2", "image": "textvqa/train_images/10.jpg",
      "conversations": _turns(f"<image>\nWhat does the sign say?\n{SHORT}", "stop")}, "unknown"),
    ({"id": "d1", "image": "coco/train2017/11.jpg",
      "conversations": _turns("Describe the following image in detail\n<image>", "A kitchen with ...")},
     "llava_detail"),
    ({"id": "d2", "image": "coco/train2017/12.jpg",
      "conversations": _turns("<image>\nWrite an exhaustive depiction of the given image.", "Two cats ...")},
     "llava_detail"),
    ({"id": "c1", "image": "coco/train2017/13.jpg",
      "conversations": _turns("What are the colors of the bus?\n<image>", "White and red.",
                              "What is on its back?", "An advertisement.")}, "llava_conversation"),
    ({"id": "c2", "image": "coco/train2017/14.jpg",
      "conversations": _turns("<image>\nProvide a detailed description of the given image", "A bus ...",
                              "Why is it parked?", "It is at a stop.")}, "llava_conversation"),
    ({"id": "x1", "image": "coco/train2017/15.jpg",
      "conversations": _turns("<image>\nWhat might be the reason for the crowd gathering here?",
                              "They are waiting for a parade ...")}, "llava_reasoning"),
    ({"id": "x2", "image": "coco/train2017/16.jpg",
      "conversations": _turns("<image>\nProvide a one-sentence caption for the provided image.", "Cat.")},
     "unknown"),
    ({"id": "u1", "image": "00258/002582585.jpg",
      "conversations": _turns("<image>\nDescribe the image concisely.", "A dog.")}, "unknown"),
]


def test_every_form_gets_its_task():
    for record, expected in RECORDS:
        assert sample_task(record.get("image"), record["conversations"]) == expected, record["id"]
    assert {expected for _, expected in RECORDS} == set(TASKS)


def _ingest(tmp_path, records) -> Workspace:
    path = tmp_path / "mix.json"
    path.write_text(json.dumps([r for r, _ in records]))
    ws = Workspace(tmp_path / "ws")
    code, err = run_app(app, ["ingest", "llava", str(path), "-w", str(ws.root)])
    assert code == 0, err
    return ws


def test_ingest_labels_rows_and_stats_count_them(tmp_path, capsys):
    ws = _ingest(tmp_path, RECORDS)
    table = ws.read_dataset(columns=["sample_id", "task"])
    got = dict(zip(table.column("sample_id").to_pylist(), table.column("task").to_pylist(), strict=True))
    assert got == {r["id"]: expected for r, expected in RECORDS}
    counts = stats_target(ws)["tasks"]
    assert counts["unknown"] == 4 and counts["refcoco"] == 2 and counts["llava_detail"] == 2
    assert sum(counts.values()) == len(RECORDS)
    assert ws.dataset_info()["task_rules_version"] == 1
    code, _ = run_app(app, ["stats", "-w", str(ws.root)])
    assert code == 0
    out = capsys.readouterr().out
    assert "tasks" in out and "llava_conversation" in out and "vqav2_okvqa" in out


def test_version_1_dataset_reads_with_null_task_and_same_fingerprint(tmp_path):
    """A dataset written before `task` existed: its parts lack the column; readers see nulls and its
    fingerprint (what embeddings and subsets are tied to) is unchanged."""
    ws = _ingest(tmp_path, RECORDS[:5])
    recorded = ws.dataset_info()["fingerprint"]
    for part in sorted(ws.dataset_dir.glob("part-*.parquet")):
        old = pq.read_table(part)
        pq.write_table(old.drop_columns(list(ADDED_COLUMNS)), part)
    # the record such a dataset carries: the hashes of the parts as they were written then
    record_path = ws.dataset_dir / "dataset.json"
    write_record(record_path, {**read_json(record_path), "part_hashes": part_hashes(ws.dataset_dir)})
    table = ws.read_dataset()
    assert table.column_names == list(COLUMNS)
    assert table.column("task").null_count == table.num_rows == 5
    assert table_fingerprint(table) == recorded
    labelled = table.set_column(table.column_names.index("task"), "task", pa.array(["x"] * 5))
    assert table_fingerprint(labelled) == recorded
    assert stats_target(ws)["tasks"] == {"(none)": 5}
