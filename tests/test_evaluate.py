"""`train eval`: a tiny saved run answers the synthetic test problems in left-padded batches."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

from datasets_spec.parts import write_json
from train.evaluate import evaluate_bundle, evaluate_run, left_pad, load_run_bundle
from train.scoring import letter_of, parse_prediction, score_files

REPO = Path(__file__).resolve().parents[1]
LIMIT = 10
LLAVA_ANSWER_KEYS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}


def _tiny_bundle():
    import torch

    from train.model import build_llava

    bundle = build_llava("tiny-llama", "tiny-clip", seed=0)
    # A freshly initialised tiny model answers every prompt with the same text; larger weights make the
    # generations depend on the prompt, so a padding or masking error would change them.
    with torch.no_grad():
        for param in bundle.model.parameters():
            if param.dim() == 2:
                param.mul_(20)
    return bundle


@pytest.fixture(scope="module")
def evaluated_run(synthetic_workspace):
    """A saved tiny run in the synthetic workspace, evaluated once with batch size 4."""
    from train.model import save_bundle

    ws = synthetic_workspace
    run = ws.runs_dir / "eval-test-tiny"
    shutil.rmtree(run, ignore_errors=True)
    save_bundle(_tiny_bundle(), run / "model")
    write_json(
        run / "config.json",
        {"dataset_fingerprint": ws.dataset_fingerprint(), "config": {"image_aspect": "pad"}},
    )
    metrics = evaluate_run(ws, run, split="test", limit=LIMIT, batch_size=4, max_new_tokens=8)
    return ws, run, metrics


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def test_predictions_in_llava_answer_format(evaluated_run) -> None:
    ws, run, metrics = evaluated_run
    records = _records(run)
    table = ws.read_dataset()
    test = table.filter(pc.equal(table.column("split"), "test")).to_pylist()
    expected_ids = sorted(r["sample_id"] for r in test)[:LIMIT]
    rows = {r["sample_id"]: r for r in test}
    assert [r["question_id"] for r in records] == expected_ids
    assert {r["image"] is not None for r in map(rows.get, expected_ids)} == {True, False}  # both modalities
    for rec in records:
        assert set(rec) == LLAVA_ANSWER_KEYS and rec["model_id"] == "eval-test-tiny"
        row = rows[rec["question_id"]]
        assert rec["prompt"] == row["conversations"][0]["value"]
        parsed = parse_prediction(rec["text"], len(row["choices"]))
        assert rec["metadata"] == {
            "parsed": letter_of(parsed) if parsed >= 0 else None,
            "answer": letter_of(row["answer"]),
            "correct": parsed == row["answer"],
        }
    assert len({r["text"] for r in records}) > 1  # generations depend on the prompt
    assert metrics["total"] == LIMIT and metrics["missing"] == 0
    assert json.loads((run / "metrics.json").read_text()) == metrics


def test_metrics_agree_with_rescoring_through_train_score(evaluated_run, tmp_path: Path) -> None:
    ws, run, metrics = evaluated_run
    problems = ws.root / "synthetic-source" / "problems.json"
    pids = [r["question_id"] for r in _records(run)]
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": pids}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.cli",
            "score",
            "--predictions",
            str(run / "predictions.jsonl"),
            "--problems",
            str(problems),
            "--pid-splits",
            str(tmp_path / "pid_splits.json"),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    rescored = json.loads(result.stdout)
    for key in ("accuracy", "counts", "total", "correct", "unparsed", "missing"):
        assert rescored[key] == metrics[key], key
    assert (
        score_files(run / "predictions.jsonl", problems, pid_splits=tmp_path / "pid_splits.json")["counts"]
        == metrics["counts"]
    )


def test_left_padded_batches_equal_one_at_a_time(evaluated_run) -> None:
    ws, run, _ = evaluated_run
    bundle = load_run_bundle(run)
    table = ws.read_dataset()
    test = table.filter(pc.equal(table.column("split"), "test"))
    single, single_metrics = evaluate_bundle(
        bundle, test, ws.image_root(), limit=LIMIT, batch_size=1, max_new_tokens=8, model_id=run.name
    )
    assert [r["text"] for r in single] == [r["text"] for r in _records(run)]
    assert single == _records(run)
    assert single_metrics["counts"] == json.loads((run / "metrics.json").read_text())["counts"]


def test_left_pad_right_aligns_prompts() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train.cli", *args], capture_output=True, text=True, cwd=REPO
    )


def test_eval_refuses_run_of_another_dataset(synthetic_workspace) -> None:
    ws = synthetic_workspace
    run = ws.runs_dir / "eval-test-foreign"
    shutil.rmtree(run, ignore_errors=True)
    (run / "model").mkdir(parents=True)
    write_json(run / "config.json", {"dataset_fingerprint": "0" * 64})
    result = _train("eval", "--run", str(run), "-w", str(ws.root), "--limit", "2")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "trained on a subset of dataset 000000000000" in result.stderr
    assert not (run / "predictions.jsonl").exists() and not (run / "metrics.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run", "runs/does-not-exist"], "no such run directory"),
        (["--run", "runs/eval-test-tiny", "--split", "nosuchsplit"], "no multiple-choice problems in split"),
        (["--run", "runs/eval-test-tiny", "--limit", "0"], "limit must be positive, got 0"),
        (["--run", "runs/eval-test-tiny", "--batch-size", "0"], "batch_size and max_new_tokens must be"),
        (["--run", "runs/eval-test-tiny", "--prompt-format", "QQQ-A"], "unknown prompt format 'QQQ-A'"),
    ],
)
def test_eval_bad_input_exits_2(evaluated_run, args: list[str], message: str) -> None:
    ws, _, _ = evaluated_run
    result = _train(
        "eval", "-w", str(ws.root), *[str(ws.root / a) if a.startswith("runs/") else a for a in args]
    )
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_eval_options_are_the_eval_spec_fields() -> None:
    import typer

    from train import cli as train_cli
    from train.evaluate import EvalSpec

    params = {p.name: p for p in typer.main.get_command(train_cli.app).commands["eval"].params}
    # The documented defaults of `train eval`, written out here rather than read back from EvalSpec.
    assert params["split"].default == "test" and params["limit"].default is None
    assert params["batch_size"].default == 16 and params["max_new_tokens"].default == 64
    assert params["prompt_format"].default is None and params["prompt_suffix"].default is None
    assert {"split", "limit", "batch_size", "max_new_tokens", "prompt_format", "prompt_suffix"} <= set(params)
    cli_fields = [f.name for f in dataclasses.fields(EvalSpec) if f.name not in EvalSpec.CLI_EXCLUDED]
    assert EvalSpec() == EvalSpec(**{name: params[name].default for name in cli_fields})
    assert "skip" not in params  # a grid's `[eval] skip`, meaningless for one `train eval`
    assert params["max_new_tokens"].opts == ["--max-new-tokens"]
    assert "LEA/LEPA" in params["max_new_tokens"].help


def test_cli_eval_writes_predictions_and_metrics(evaluated_run) -> None:
    ws, run, metrics = evaluated_run
    copy = ws.runs_dir / "eval-test-cli"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    (copy / "predictions.jsonl").unlink()
    result = _train(
        "eval",
        "--run",
        str(copy),
        "-w",
        str(ws.root),
        "--limit",
        "3",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "8",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads((copy / "metrics.json").read_text())
    assert printed["total"] == 3 and printed["limit"] == 3
    assert _records(copy) == [
        dict(r, model_id="eval-test-cli", answer_id=_records(copy)[i]["answer_id"])
        for i, r in enumerate(_records(run)[:3])
    ]
