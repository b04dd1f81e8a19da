"""LLaVA's ScienceQA parsing rules, ScienceQA's categories, and `train score` on hand-computed files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from train.scoring import (
    ProblemInfo,
    load_predictions,
    parse_prediction,
    problem_from_row,
    problem_from_scienceqa,
    score_files,
    score_predictions,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "n_choices", "expected"),
    [
        # rule 1: the whole text is an option letter
        ("A", 4, 0),
        ("D", 4, 3),
        ("E", 5, 4),
        ("E", 4, -1),  # names no existing choice
        ("C", 2, -1),
        (" A", 4, -1),  # no stripping
        ("A ", 4, -1),
        ("A\n", 4, -1),
        ("a", 4, -1),  # no case folding
        ("AB", 4, -1),
        ("", 4, -1),
        # rule 2: letter followed by ". "
        ("A. because", 4, 0),
        ("B. ", 4, 1),
        ("A.", 4, -1),  # needs the space
        ("A.\nbecause", 4, -1),
        ("b. because", 4, -1),
        ("C. The answer is A.", 4, 2),  # first rule that applies wins
        ("E. The answer is A.", 4, -1),  # rule 2 applies, its letter is invalid: no fall-through
        ("F. The answer is A.", 4, 0),  # F is not a scorer option letter, so rule 3 decides
        # rule 3: `The answer is ([A-Z]).` exactly once
        ("The answer is B.", 4, 1),
        ("Because of x. The answer is C.", 4, 2),
        ("LECTURE: l\nSOLUTION: s\n###\nThe answer is D.", 4, 3),  # multi-line
        ("The answer is B,", 4, 1),  # the pattern's final `.` is a wildcard
        ("The answer is B", 4, -1),  # ... but it needs a character
        ("The answer is B\n", 4, -1),  # ... and `.` does not match a newline
        ("The answer is B. The answer is B.", 4, -1),  # twice, even if equal
        ("The answer is B. The answer is C.", 4, -1),
        ("the answer is B.", 4, -1),
        ("The answer is b.", 4, -1),
        ("The answer is E.", 4, -1),  # beyond the choices
        ("The answer is Z.", 5, -1),
        ("ANSWER: A.", 4, -1),  # LEPA's output form is not one of the rules
        ("Answer: A", 4, -1),
    ],
)
def test_parse_prediction_rules(text: str, n_choices: int, expected: int) -> None:
    assert parse_prediction(text, n_choices) == expected


def test_problem_converters_agree() -> None:
    sqa = {
        "choices": ["x", "y", "z"],
        "answer": 2,
        "hint": "",
        "image": "image.png",
        "grade": "grade7",
        "subject": "social science",
    }
    row = {
        "sample_id": "1",
        "choices": ["x", "y", "z"],
        "answer": 2,
        "context": "",
        "image": "1/image.png",
        "grade": 7,
        "subject": "social science",
    }
    expected = ProblemInfo(
        answer=2, n_choices=3, subject="social science", has_context=False, has_image=True, grade=7
    )
    assert problem_from_scienceqa(sqa) == expected
    assert problem_from_row(row) == expected
    assert expected.categories() == ["SOC", "IMG", "G7-12", "Avg"]


def _problem(
    subject: str, hint: str, image: bool, grade: int, answer: int, n: int, split: str = "test"
) -> dict:
    return {
        "question": "q",
        "choices": [f"c{i}" for i in range(n)],
        "answer": answer,
        "hint": hint,
        "image": "image.png" if image else None,
        "task": "closed choice",
        "grade": f"grade{grade}",
        "subject": subject,
        "topic": "t",
        "category": "c",
        "skill": "s",
        "lecture": "",
        "solution": "",
        "split": split,
    }


NAT, SOC, LAN = "natural science", "social science", "language science"
PROBLEMS = {
    "p1": _problem(NAT, "h", False, 3, 0, 2),
    "p2": _problem(NAT, "", True, 8, 1, 3),
    "p3": _problem(SOC, "", False, 5, 2, 3),
    "p4": _problem(SOC, "x", True, 10, 0, 4),
    "p5": _problem(LAN, "", False, 2, 1, 2),
    "p6": _problem(LAN, "y", False, 7, 1, 2),
    "p7": _problem(NAT, "", True, 1, 3, 5),
    "p8": _problem(SOC, "", False, 12, 0, 2),
    "p9": _problem(NAT, "", False, 4, 0, 2, split="val"),
}
PREDICTIONS = {
    "p1": "A",  # correct
    "p2": "The answer is B.",  # correct
    "p3": "C",  # correct
    "p4": "The answer is A. The answer is A.",  # unparsed
    "p5": "C",  # unparsed: only two choices
    # p6 missing: wrong
    "p7": "D. because",  # correct
    "p8": "B",  # parsed, wrong
    "p9": "A",  # not in the test split: ignored
}
# Counted by hand from the table above.
EXPECTED_COUNTS = {
    "NAT": (3, 3),
    "SOC": (1, 3),
    "LAN": (0, 2),
    "TXT": (1, 3),
    "IMG": (2, 3),
    "NO": (1, 3),
    "G1-6": (3, 4),
    "G7-12": (1, 4),
    "Avg": (4, 8),
}
EXPECTED_ACCURACY = {
    "NAT": 100.0,
    "SOC": 33.33,
    "LAN": 0.0,
    "TXT": 33.33,
    "IMG": 66.67,
    "NO": 33.33,
    "G1-6": 75.0,
    "G7-12": 25.0,
    "Avg": 50.0,
}


def _check_metrics(metrics: dict) -> None:
    assert {k: (v["correct"], v["total"]) for k, v in metrics["counts"].items()} == EXPECTED_COUNTS
    assert metrics["accuracy"] == EXPECTED_ACCURACY
    assert (metrics["correct"], metrics["total"]) == (4, 8)
    assert (metrics["unparsed"], metrics["missing"], metrics["extra"]) == (2, 1, 1)


@pytest.fixture()
def sqa_dir(tmp_path: Path) -> Path:
    (tmp_path / "problems.json").write_text(json.dumps(PROBLEMS))
    splits = {"test": [f"p{i}" for i in range(1, 9)], "val": ["p9"]}
    (tmp_path / "pid_splits.json").write_text(json.dumps(splits))
    lines = [
        {"question_id": pid, "prompt": "q", "text": text, "answer_id": "x", "model_id": "m", "metadata": {}}
        for pid, text in PREDICTIONS.items()
    ]
    (tmp_path / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "map.json").write_text(json.dumps(PREDICTIONS))
    return tmp_path


def test_score_predictions_by_hand() -> None:
    problems = {pid: problem_from_scienceqa(p) for pid, p in PROBLEMS.items()}
    _check_metrics(score_predictions(PREDICTIONS, problems, [f"p{i}" for i in range(1, 9)]))


def test_every_prediction_file_format_scores_the_same(sqa_dir: Path) -> None:
    (sqa_dir / "result.json").write_text(json.dumps({"acc": 1.0, "results": {}, "outputs": PREDICTIONS}))
    records = [{"question_id": pid, "text": t} for pid, t in PREDICTIONS.items()]
    (sqa_dir / "list.json").write_text(json.dumps(records))
    for name in ("answers.jsonl", "map.json", "result.json", "list.json"):
        assert load_predictions(sqa_dir / name) == PREDICTIONS
        _check_metrics(score_files(sqa_dir / name, sqa_dir / "problems.json", split="test"))


def test_split_from_problems_when_no_pid_splits(sqa_dir: Path) -> None:
    (sqa_dir / "pid_splits.json").unlink()
    _check_metrics(score_files(sqa_dir / "map.json", sqa_dir / "problems.json", split="test"))
    val = score_files(sqa_dir / "map.json", sqa_dir / "problems.json", split="val")
    assert (val["correct"], val["total"], val["extra"]) == (1, 1, 7)


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train.cli", *args], capture_output=True, text=True, cwd=REPO
    )


def test_cli_score_json_and_table(sqa_dir: Path) -> None:
    args = [
        "score",
        "--predictions",
        str(sqa_dir / "answers.jsonl"),
        "--problems",
        str(sqa_dir / "problems.json"),
    ]
    result = _train(*args, "--json")
    assert result.returncode == 0, result.stderr
    _check_metrics(json.loads(result.stdout))
    table = _train(*args)
    assert table.returncode == 0, table.stderr
    assert "66.67" in table.stdout and "4/8" in table.stdout and "unparsed: 2" in table.stdout


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (
            lambda d: (d / "answers.jsonl").write_text(
                '{"question_id": "p1", "text": "A"}\n{"question_id": "p2"\n'
            ),
            "answers.jsonl: line 2: malformed JSON",
        ),
        (
            lambda d: (d / "answers.jsonl").write_text(
                '{"question_id": "p1", "text": "A"}\n{"question_id": "p2"}\n'
            ),
            "answers.jsonl: line 2: expected an object with 'question_id' and 'text'",
        ),
        (
            lambda d: (d / "answers.jsonl").write_text('{"question_id": "p1", "text": 3}\n'),
            "answers.jsonl: line 1: 'text' is not a string",
        ),
        (
            lambda d: (d / "answers.jsonl").write_text('{"question_id": "p1", "text": "A"}\n' * 2),
            "answers.jsonl: line 2: duplicate question_id 'p1'",
        ),
        (
            lambda d: (d / "answers.jsonl").write_text('{"p1": ["A"]}'),
            "answers.jsonl: entry 'p1' is not a string",
        ),
        (
            lambda d: (d / "pid_splits.json").write_text(json.dumps({"test": ["p1", "p404"]})),
            "split 'test' names 1 pid(s) missing from",
        ),
        (lambda d: (d / "problems.json").write_text("{not json"), "problems.json: malformed JSON"),
        (lambda d: (d / "answers.jsonl").unlink(), "answers.jsonl: not found"),
    ],
)
def test_cli_score_bad_input_exits_2(sqa_dir: Path, setup, message: str) -> None:
    setup(sqa_dir)
    result = _train(
        "score", "--predictions", str(sqa_dir / "answers.jsonl"), "--problems", str(sqa_dir / "problems.json")
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_score_unknown_split_exits_2(sqa_dir: Path) -> None:
    result = _train(
        "score",
        "--predictions",
        str(sqa_dir / "map.json"),
        "--problems",
        str(sqa_dir / "problems.json"),
        "--split",
        "minitest",
    )
    assert result.returncode == 2
    assert "no split 'minitest' (splits: test, val)" in result.stderr
