"""VQA (OK-VQA / VQAv2) loader: conversation format, answer choice, image names, bad inputs via the CLI."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from curate.ingest_vqa import ingest_vqa
from datasets_spec.vqa import most_frequent_answer
from datasets_spec.workspace import Workspace
from tests.test_llava_json import cli

QUESTIONS = {
    "data_subtype": "val2014",
    "questions": [
        {"image_id": 297147, "question": "What sport can you use this for?", "question_id": 2971475},
        {"image_id": 1915, "question": "What is the man holding?", "question_id": 19155},
    ],
}
ANNOTATIONS = {
    "annotations": [
        {
            "question_id": 2971475,
            "image_id": 297147,
            "answers": [
                {"answer": "racing", "answer_id": 1},
                {"answer": "motocross", "answer_id": 2},
                {"answer": "motocross", "answer_id": 3},
                {"answer": "racing", "answer_id": 4},
                {"answer": "riding", "answer_id": 5},
            ],
        },
        {
            "question_id": 19155,
            "image_id": 1915,
            "answers": [{"answer": "kite"}, {"answer": "kite"}, {"answer": "a"}],
        },
    ]
}


def write(tmp_path, questions=QUESTIONS, annotations=ANNOTATIONS):
    q, a = tmp_path / "q.json", tmp_path / "a.json"
    q.write_text(json.dumps(questions) if not isinstance(questions, str) else questions)
    a.write_text(json.dumps(annotations) if not isinstance(annotations, str) else annotations)
    return q, a


def test_most_frequent_answer_ties_alphabetical():
    assert most_frequent_answer(["b", "a", "b", "a", "c"]) == "a"
    assert most_frequent_answer(["z", "y", "z"]) == "z"


def test_ingest_vqa_rows(tmp_path):
    q, a = write(tmp_path)
    root = tmp_path / "coco"
    root.mkdir()
    for image_id in (297147, 1915):
        Image.new("RGB", (4, 4)).save(root / f"COCO_val2014_{image_id:012d}.jpg")
    ws = Workspace(tmp_path / "ws")
    info = ingest_vqa(ws, q, a, image_root=root, split="val")
    assert info["rows"] == 2 and info["splits"] == {"val": 2} and info["source"] == "vqa"
    rows = {r["sample_id"]: r for r in ws.read_dataset().to_pylist()}
    first = rows["2971475"]
    assert first["image"] == "COCO_val2014_000000297147.jpg"
    assert first["conversations"] == [
        {
            "from": "human",
            "value": "<image>\nWhat sport can you use this for?\n"
            "Answer the question using a single word or phrase.",
        },
        {"from": "gpt", "value": "motocross"},
    ]
    assert rows["19155"]["conversations"][1]["value"] == "kite"
    assert first["source"] == "vqa" and first["question"] == "What sport can you use this for?"


def test_image_pattern_option(tmp_path):
    q, a = write(tmp_path, questions={"questions": QUESTIONS["questions"]})
    ws = Workspace(tmp_path / "ws")
    ingest_vqa(ws, q, a, image_pattern="val2017/{image_id:012d}.jpg")
    assert "val2017/000000001915.jpg" in ws.read_dataset().column("image").to_pylist()


def test_missing_image_skipped_and_counted(tmp_path):
    q, a = write(tmp_path)
    root = tmp_path / "coco"
    root.mkdir()
    Image.new("RGB", (4, 4)).save(root / "COCO_val2014_000000001915.jpg")
    info = ingest_vqa(Workspace(tmp_path / "ws"), q, a, image_root=root, skip_bad_images=True)
    assert info["rows"] == 1 and info["skipped_images"] == 1


@pytest.mark.parametrize(
    "questions, annotations, fragment",
    [
        (json.dumps(QUESTIONS)[:100], ANNOTATIONS, "q.json: truncated JSON at byte 100"),
        (QUESTIONS, json.dumps(ANNOTATIONS).replace("]}, {", "]} {", 1), "a.json: malformed JSON at byte"),
        ({"questions": QUESTIONS["questions"]}, ANNOTATIONS, "no 'data_subtype'"),
        (
            {**QUESTIONS, "questions": QUESTIONS["questions"][:1] * 2},
            ANNOTATIONS,
            "duplicate question_id 2971475",
        ),
        (QUESTIONS, {"annotations": ANNOTATIONS["annotations"][:1]}, "question 19155: no annotation"),
        (QUESTIONS, {"annotations": [{**ANNOTATIONS["annotations"][0], "answers": []}]}, "'answers' must be"),
        ({**QUESTIONS, "questions": []}, ANNOTATIONS, "no questions"),
    ],
)
def test_bad_input_via_cli(tmp_path, questions, annotations, fragment):
    q, a = write(tmp_path, questions, annotations)
    ws = tmp_path / "ws"
    code, err = cli(["ingest", "vqa", "--questions", str(q), "--annotations", str(a), "-w", str(ws)])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (ws / "dataset").exists()


def test_missing_image_via_cli(tmp_path):
    q, a = write(tmp_path)
    root = tmp_path / "coco"
    root.mkdir()
    code, err = cli(
        [
            "ingest",
            "vqa",
            "--questions",
            str(q),
            "--annotations",
            str(a),
            "--image-root",
            str(root),
            "-w",
            str(tmp_path / "ws"),
        ]
    )
    assert code == 2 and "question 2971475: image 'COCO_val2014_000000297147.jpg' not found" in err


def test_image_pattern_escaping_root_refused(tmp_path):
    from datasets_spec.errors import UserError

    q, a = write(tmp_path)
    with pytest.raises(
        UserError, match="question 2971475: image path '../297147.jpg' escapes the image root"
    ):
        ingest_vqa(Workspace(tmp_path / "ws"), q, a, image_pattern="../{image_id}.jpg")
