"""ScienceQA loading: LLaVA prompt formats (exact text), image token, splits, layouts, difficulty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from datasets_spec.difficulty import conversation_difficulty, estimate_tokens, scienceqa_difficulty
from datasets_spec.errors import UserError
from datasets_spec.schema import validate_table
from datasets_spec.scienceqa import PROMPT_FORMATS, build_conversations, build_prompt, load_scienceqa

PROBLEM = {
    "question": "Which is hotter?",
    "hint": "A cup of tea.",
    "choices": ["ice", "tea"],
    "answer": 1,
    "lecture": "Heat moves.",
    "solution": "Tea is hot.",
}
QCM = "Which is hotter?\nContext: A cup of tea.\nOptions: (A) ice (B) tea"
BARE_QCM = "Which is hotter?\nContext: N/A\nOptions: (A) ice (B) tea"
OPTS = "Options: (A) ice (B) tea"

EXPECTED = {
    "QCM-A": (QCM, "The answer is B."),
    "QCM-LEA": (QCM, "Heat moves. Tea is hot. The answer is B."),
    "QCM-EA": (QCM, "Tea is hot. The answer is B."),
    "QCM-LA": (QCM, "Heat moves. The answer is B."),
    "QCM-ELA": (QCM, "Tea is hot. Heat moves. The answer is B."),
    "QCM-AL": (QCM, "The answer is B. BECAUSE: Tea is hot."),
    "QCM-AE": (QCM, "The answer is B. BECAUSE: Heat moves."),
    "QCM-ALE": (QCM, "The answer is B. BECAUSE: Heat moves. Tea is hot."),
    "QCM-AEL": (QCM, "The answer is B. BECAUSE: Tea is hot. Heat moves."),
    "QCM-LEPA": (QCM, "LECTURE: Heat moves.\nSOLUTION: Tea is hot.\n###\nANSWER: B."),
    "CQM-A": ("Context: A cup of tea.\nQuestion: Which is hotter?\n" + OPTS, "The answer is B."),
    "QCML-A": (QCM + "\nBECAUSE: Heat moves.", "The answer is B."),
    "QCME-A": (QCM + "\nBECAUSE: Tea is hot.", "The answer is B."),
    "QCMLE-A": (QCM + "\nBECAUSE: Heat moves. Tea is hot.", "The answer is B."),
    "QCLM-A": ("Which is hotter?\nContext: A cup of tea.\nBECAUSE: Heat moves.\n" + OPTS, "The answer is B."),
    "QCEM-A": ("Which is hotter?\nContext: A cup of tea.\nBECAUSE: Tea is hot.\n" + OPTS, "The answer is B."),
    "QCLEM-A": (
        "Which is hotter?\nContext: A cup of tea.\nBECAUSE: Heat moves. Tea is hot.\n" + OPTS,
        "The answer is B.",
    ),
}


def _prompt(problem: dict, fmt: str) -> tuple[str, str]:
    fields = {k: problem[k] for k in ("question", "choices", "answer", "lecture", "solution")}
    return build_prompt(**fields, context=problem["hint"], prompt_format=fmt)


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_prompt_format_exact_text(fmt: str) -> None:
    assert _prompt(PROBLEM, fmt) == EXPECTED[fmt]


def test_empty_parts_are_left_out() -> None:
    bare = {**PROBLEM, "hint": "", "lecture": "", "solution": ""}
    assert _prompt(bare, "QCM-A")[0] == BARE_QCM
    assert _prompt(bare, "QCM-LEA")[1] == "The answer is B."
    assert _prompt(bare, "QCM-LEPA")[1] == "###\nANSWER: B."
    assert _prompt(bare, "QCM-ALE")[1] == "The answer is B."
    assert _prompt(bare, "QCML-A")[0] == BARE_QCM
    no_lecture = {**PROBLEM, "lecture": ""}
    assert _prompt(no_lecture, "QCM-LEA")[1] == "Tea is hot. The answer is B."
    assert _prompt(no_lecture, "QCM-LEPA")[1] == "SOLUTION: Tea is hot.\n###\nANSWER: B."


def test_every_format_builds_and_unknown_is_refused() -> None:
    assert {"QCM-LEA", "QCM-A", "CQM-A", "QCM-LEPA", "QCMLE-A", "QCM-ALE"} <= set(PROMPT_FORMATS)
    for fmt in PROMPT_FORMATS:
        human, gpt = _prompt(PROBLEM, fmt)
        assert not human.startswith("Question: ") and not gpt.startswith("Answer: ")
        assert "B" in gpt and "  " not in human + gpt
    for bad in ("QCM", "QCM-X", "XYZ-A", ""):
        with pytest.raises(UserError, match="unknown prompt format"):
            _prompt(PROBLEM, bad)


def test_image_token_ends_the_human_turn_only_with_an_image() -> None:
    with_image = build_conversations(PROBLEM, prompt_format="QCM-A", has_image=True)
    assert with_image == [
        {"from": "human", "value": QCM + "\n<image>"},
        {"from": "gpt", "value": "The answer is B."},
    ]
    without = build_conversations(PROBLEM, prompt_format="QCM-A", has_image=False)
    assert without[0]["value"] == QCM and "<image>" not in without[1]["value"]


# --- loading folders ---------------------------------------------------------------------------------------


def _problem(split: str, *, image: bool, grade: int = 3, **over) -> dict:
    base = {**PROBLEM, "image": "image.png" if image else None, "task": "closed choice",
            "grade": f"grade{grade}", "subject": "natural science", "topic": "physics", "category": "Heat",
            "skill": "Compare heat", "split": split}
    return {**base, **over}


def make_folder(root: Path, *, layout: str = "images", splits: dict | None = None) -> Path:
    """Four problems: 1,2 train (1 with image), 3 val (image), 4 test (text)."""
    problems = {
        "1": _problem("train", image=True, grade=1),
        "2": _problem("train", image=False, grade=12, hint=""),
        "3": _problem("val", image=True, grade=5),
        "4": _problem("test", image=False, grade=7),
    }
    splits = splits or {"train": ["1", "2"], "val": ["3"], "test": ["4"], "trainval": ["1", "2", "3"],
                        "minitrain": ["1"], "minival": ["3"], "minitest": ["4"]}
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems, indent=2))
    (root / "pid_splits.json").write_text(json.dumps(splits))
    base = root / "images" if layout == "images" else root
    for pid, p in problems.items():
        if p["image"]:
            (base / p["split"] / pid).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (200, 10, 10)).save(base / p["split"] / pid / "image.png")
    return root


@pytest.mark.parametrize("layout", ["images", "flat"])
def test_both_image_layouts_are_detected(tmp_path: Path, layout: str) -> None:
    root = make_folder(tmp_path / "sqa", layout=layout)
    loaded = load_scienceqa(root, prompt_format="QCM-A")
    assert loaded.image_root == (root / "images" if layout == "images" else root)
    rows = {r["sample_id"]: r for r in loaded.table.to_pylist()}
    assert rows["1"]["image"] == "train/1/image.png" and rows["3"]["image"] == "val/3/image.png"
    assert (loaded.image_root / rows["3"]["image"]).is_file()
    validate_table(loaded.table)


def test_every_field_is_kept_and_splits_are_not_duplicated(tmp_path: Path) -> None:
    loaded = load_scienceqa(make_folder(tmp_path / "sqa"), prompt_format="QCM-LEA")
    rows = {r["sample_id"]: r for r in loaded.table.to_pylist()}
    assert list(rows) == ["1", "2", "3", "4"]
    assert [rows[k]["split"] for k in rows] == ["train", "train", "val", "test"]
    r1, r2 = rows["1"], rows["2"]
    assert r1["context"] == "A cup of tea." and r2["context"] == ""
    assert (r1["grade"], r2["grade"]) == (1, 12)
    assert r1["choices"] == ["ice", "tea"] and r1["answer"] == 1
    assert (r1["subject"], r1["topic"], r1["category"], r1["skill"]) == (
        "natural science", "physics", "Heat", "Compare heat")
    assert r1["lecture"] == "Heat moves." and r1["solution"] == "Tea is hot." and r1["source"] == "scienceqa"
    assert r1["conversations"][0]["value"] == QCM + "\n<image>"
    assert r2["conversations"][0]["value"] == BARE_QCM
    assert r1["conversations"][1]["value"] == "Heat moves. Tea is hot. The answer is B."
    # trainval/minitrain also list pid 1: asking for them does not duplicate it, and it stays "train".
    both = load_scienceqa(make_folder(tmp_path / "sqa"), splits=["trainval", "minitrain", "test"])
    assert both.table.column("sample_id").to_pylist() == ["1", "2", "3", "4"]
    assert both.table.column("split").to_pylist() == ["train", "train", "val", "test"]


def test_only_mini_splits(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "sqa", splits={"minitrain": ["1", "2"], "minival": ["3"]})
    loaded = load_scienceqa(root)
    assert loaded.splits == ["minitrain", "minival"]
    assert loaded.table.column("split").to_pylist() == ["minitrain", "minitrain", "minival"]
    assert loaded.table.column("image").to_pylist()[0] == "train/1/image.png"


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no split 'nope'"):
        load_scienceqa(make_folder(tmp_path / "sqa"), splits=["nope"])


# --- difficulty and token estimate ----------------------------------------------------------------------


def test_scienceqa_difficulty_formula_and_range() -> None:
    assert scienceqa_difficulty(grade=1, n_choices=2, context="", solution="") == 0.0
    assert scienceqa_difficulty(grade=12, n_choices=5, context="x" * 999, solution="y" * 999) == 1.0
    got = scienceqa_difficulty(grade=7, n_choices=4, context="c" * 100, solution="s" * 300)
    assert got == pytest.approx(0.4 * 6 / 11 + 0.2 * 2 / 3 + 0.2 * 100 / 400 + 0.2 * 300 / 600, abs=1e-6)
    assert scienceqa_difficulty(grade=None, n_choices=2, context=None, solution=None) == pytest.approx(0.2)
    harder = scienceqa_difficulty(grade=9, n_choices=4, context="", solution="")
    assert harder > scienceqa_difficulty(grade=2, n_choices=4, context="", solution="")


def test_loaded_difficulty_is_in_range(tmp_path: Path) -> None:
    values = load_scienceqa(make_folder(tmp_path / "sqa")).table.column("difficulty").to_pylist()
    assert all(0.0 <= v <= 1.0 for v in values) and len(set(values)) > 1


def test_conversation_difficulty_and_tokens() -> None:
    short = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A cat."}]
    long = [{"from": "human", "value": "q" * 500}, {"from": "gpt", "value": "a" * 3000}] * 12
    assert 0.0 <= conversation_difficulty(short) < conversation_difficulty(long) == 1.0
    assert estimate_tokens(short) == -(-len("\nWhat?A cat.") // 4) + 576
    assert estimate_tokens(short, image_tokens=16) == 3 + 16
    assert estimate_tokens([{"from": "human", "value": "abcd" * 10}]) == 10
