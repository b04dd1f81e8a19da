"""User JSON cannot decide time or memory: deep nesting and lone surrogates are refused by name, in every
reader (LLaVA, ScienceQA, VQA, manifests and dataset.json, predictions, grids), and the byte scanner
agrees with a character-by-character reference."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate

from datasets_spec.errors import UserError
from datasets_spec.safe_json import JsonScanner, loads_json

# Deep enough that the unguarded readers misbehave (polars' NDJSON reader crashes at a few thousand levels),
# shallow enough that an unguarded parse on a broken build still finishes quickly.
DEPTH = 6000


def deep(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def reference_max_depth(data: bytes) -> int:
    """Deepest bracket nesting outside strings, one byte at a time (a backslash escapes the next byte)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        was_escaped, escaped = escaped, byte == 0x5C and not escaped
        if byte == 0x22 and not was_escaped:
            in_string = not in_string
        elif not in_string and byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif not in_string and byte in b"]}":
            depth -= 1
    return deepest


def test_scanner_agrees_with_a_byte_by_byte_reference_across_chunk_boundaries():
    rng = random.Random(0)
    for _ in range(1500):
        # Brackets and JSON strings whose text holds quotes, backslashes, brackets and newlines.
        tokens = [rng.choice("[]{},:1") if rng.random() < 0.6
                  else json.dumps("".join(rng.choice('[]{}"\\ab\n') for _ in range(rng.randint(0, 8))))
                  for _ in range(rng.randint(1, 25))]
        data = "".join(tokens).encode()
        for limit in (1, 2, 4):
            for chunk in (1, 2, 5, 64):
                scanner = JsonScanner("x", max_depth=limit)
                try:
                    for i in range(0, len(data), chunk):
                        scanner.feed(data[i:i + chunk])
                    refused = False
                except UserError:
                    refused = True
                assert refused == (reference_max_depth(data) > limit), (data, limit, chunk)


@pytest.mark.parametrize(
    ("text", "lone"),
    [('"\\ud800"', True), ('"\\udc00x"', True), ('"\\uD83D"', True), ('"a\\ud83d\\ude00b"', False),
     ('"\\\\ud800"', False), ('"\\u00e9"', False)],
)
def test_lone_surrogates_are_found_whatever_the_chunking(text, lone):
    data = text.encode()
    for chunk in (1, 3, 7, 100):
        scanner = JsonScanner("x")
        try:
            for i in range(0, len(data), chunk):
                scanner.feed(data[i:i + chunk])
            scanner.finish()
            refused = False
        except UserError as exc:
            refused = "surrogate" in str(exc)
        assert refused == lone, (text, chunk)


def test_loads_json_names_the_source_for_depth_and_keeps_real_json():
    with pytest.raises(UserError, match=r"^where\.json: JSON nested deeper than 512 levels at byte 512"):
        loads_json(deep(), "where.json")
    real = {"a": [[{"b": "[[[[ \\" + '"'}]], "c": "x\\\\"}
    assert loads_json(json.dumps(real), "ok.json") == real


def test_deep_llava_json_is_refused_in_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(deep(100_000))  # the 200 KB file that needs tens of GB unguarded
    result = run_curate("ingest", "llava", str(path), "-w", str(tmp_path / "ws"))
    assert_user_error(result, "deep.json", "nested deeper than 512")
    assert not (tmp_path / "ws" / "dataset").exists()


def test_lone_surrogate_in_llava_json_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    turns = [{"from": "human", "value": "hi XX"}, {"from": "gpt", "value": "ok"}]
    sample = {"id": "a", "conversations": turns}
    path.write_text(json.dumps([sample]).replace("XX", "\\ud800"))
    result = run_curate("ingest", "llava", str(path), "-w", str(tmp_path / "ws"))
    assert_user_error(result, "bad.json", "lone UTF-16 surrogate \\ud800")


def test_deep_scienceqa_and_vqa_files_are_refused(tmp_path):
    sqa = tmp_path / "sqa"
    sqa.mkdir()
    (sqa / "problems.json").write_text('{"1": ' + deep() + "}")
    (sqa / "pid_splits.json").write_text('{"train": ["1"]}')
    assert_user_error(run_curate("ingest", "scienceqa", str(sqa), "-w", str(tmp_path / "w1")),
                      "problems.json", "nested deeper")
    questions = tmp_path / "q.json"
    questions.write_text('{"questions": ' + deep() + "}")
    annotations = tmp_path / "a.json"
    annotations.write_text('{"annotations": []}')
    result = run_curate("ingest", "vqa", "--questions", str(questions), "--annotations", str(annotations),
                        "-w", str(tmp_path / "w2"))
    assert_user_error(result, "nested deeper")


def test_deep_manifest_and_dataset_json_are_refused(synthetic_workspace, tmp_path):
    ws = copy_workspace(synthetic_workspace, tmp_path)
    info = ws.root / "dataset" / "dataset.json"
    info.write_text('{"x": ' + deep() + "}")
    assert_user_error(run_curate("stats", "-w", str(ws.root)), "dataset.json", "nested deeper")


PAIRED = """
import sys
from datasets_spec.errors import exit_on_user_error
from train.paired_stats import load_run_answers
exit_on_user_error(lambda: print(load_run_answers(sys.argv[1]).n_questions))()
"""


@pytest.mark.parametrize(
    ("content", "needle"),
    [(('{"question_id": "1", "metadata": {"correct": true}, "x": ' + deep() + "}\n").encode(),
      "nested deeper"),
     (b'{"question_id": "1", "text": "\xff\xfe", "metadata": {"correct": true}}\n', "not UTF-8")],
    ids=["deep-line", "not-utf8"],
)
def test_hostile_predictions_are_named_not_crashed_on(tmp_path, content, needle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.jsonl").write_bytes(content)
    # A child process: the unguarded NDJSON reader dies of a segmentation fault, not an exception.
    result = subprocess.run(
        [sys.executable, "-c", PAIRED, str(run)], capture_output=True, text=True, timeout=120
    )
    assert_user_error(result, "predictions.jsonl", needle)


def test_deep_grid_is_refused(tmp_path):
    from train.ablation.grid import load_grid

    grid = tmp_path / "grid.toml"
    grid.write_text(textwrap.dedent("x = " + "[" * 3000 + "]" * 3000 + "\n"))
    with pytest.raises(UserError, match="grid.toml: TOML nested too deeply"):
        load_grid(grid)
