"""`curate ingest`: every bad input exits 2 with one line and leaves no dataset; re-ingest rules."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from curate.cli import main
from datasets_spec.parts import hash_parts
from datasets_spec.synthetic import generate_synthetic_scienceqa


def run(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """Run the `curate` entry point as a user would; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["curate", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def sqa(tmp_path: Path) -> Path:
    return generate_synthetic_scienceqa(tmp_path / "sqa", n_train=8, n_val=3, n_test=3, seed=3)


def _problems(root: Path) -> dict:
    return json.loads((root / "problems.json").read_text())


def _image_pids(root: Path) -> list[str]:
    return sorted((pid for pid, p in _problems(root).items() if p["image"]), key=int)


def _set_image(root: Path, value: str) -> None:
    problems = _problems(root)
    problems[_image_pids(root)[0]]["image"] = value
    (root / "problems.json").write_text(json.dumps(problems))


def _truncate_problems(root: Path) -> None:
    text = (root / "problems.json").read_text()
    (root / "problems.json").write_text(text[: len(text) // 2])


def _malformed_splits(root: Path) -> None:
    (root / "pid_splits.json").write_text('{"train": ["1", "2",\n  ]}')


def _missing_pid(root: Path) -> None:
    splits = json.loads((root / "pid_splits.json").read_text())
    splits["train"].append("9999")
    (root / "pid_splits.json").write_text(json.dumps(splits))


def _missing_image(root: Path) -> None:
    pid = _image_pids(root)[0]
    (root / "images" / _problems(root)[pid]["split"] / pid / "image.png").unlink()


def _undecodable_image(root: Path) -> None:
    pid = _image_pids(root)[0]
    path = root / "images" / _problems(root)[pid]["split"] / pid / "image.png"
    path.write_bytes(path.read_bytes()[:40])  # a truncated PNG: header present, pixel data gone


def _duplicate_pid(root: Path) -> None:
    problems = _problems(root)
    first = next(iter(problems))
    text = json.dumps(problems)
    again = json.dumps(problems[first])
    (root / "problems.json").write_text(f'{{"{first}": {again}, ' + text[1:])


def _pid_in_two_splits(root: Path) -> None:
    splits = json.loads((root / "pid_splits.json").read_text())
    splits["test"].append(splits["train"][0])
    (root / "pid_splits.json").write_text(json.dumps(splits))


def _empty(root: Path) -> None:
    (root / "pid_splits.json").write_text(json.dumps({"train": [], "val": [], "test": []}))


BAD_INPUTS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "truncated problems.json": (_truncate_problems, ["problems.json", "malformed JSON at line"]),
    "malformed pid_splits.json": (_malformed_splits, ["pid_splits.json", "line 2 column"]),
    "pid missing from problems": (_missing_pid, ["'9999'", "pid_splits.json", "missing from"]),
    "missing image": (_missing_image, ["image not found", "image.png", "problem '"]),
    "undecodable image": (_undecodable_image, ["does not decode", "image.png", "problem '"]),
    "absolute image path": (lambda r: _set_image(r, "/etc/passwd"), ["absolute"]),
    "image path escaping the root": (lambda r: _set_image(r, "../../x.png"), ["escapes the image root"]),
    "duplicate problem id": (_duplicate_pid, ["duplicate key", "problems.json"]),
    "pid in two splits": (_pid_in_two_splits, ["in both 'train' and 'test'"]),
    "empty dataset": (_empty, ["empty"]),
}


def _assert_nothing_written(ws: Path) -> None:
    assert not (ws / "dataset").exists()
    leftovers = [p.name for p in ws.glob(".*")] if ws.exists() else []
    assert leftovers == []


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case: str, sqa: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    damage, needles = BAD_INPUTS[case]
    damage(sqa)
    ws = tmp_path / "ws"
    code, _, err = run(["ingest", "scienceqa", str(sqa), "-w", str(ws)], capsys, monkeypatch)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    _assert_nothing_written(ws)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["ingest", "scienceqa", "{sqa}", "--prompt-format", "QCM-Z"], "unknown prompt format"),
        (["ingest", "scienceqa", "{sqa}/nope"], "not a directory"),
        (["ingest", "scienceqa"], "give PATH"),
        (["ingest", "scienceqa", "{sqa}", "--splits", "train,bogus"], "no split 'bogus'"),
        (["ingest", "parquet", "{sqa}"], "unknown source 'parquet'"),
        (["ingest", "vqa"], "--questions and --annotations"),
        (["ingest", "synthetic", "--n-train", "0", "--n-val", "0", "--n-test", "0"], "empty"),
    ],
)
def test_bad_options_exit_2(args, needle, sqa: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    ws = tmp_path / "ws"
    argv = [a.replace("{sqa}", str(sqa)) for a in args] + ["-w", str(ws)]
    code, _, err = run(argv, capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    _assert_nothing_written(ws)


def test_skip_bad_images_skips_and_counts(sqa: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    n_problems = len(_problems(sqa))
    _missing_image(sqa)
    pid = _image_pids(sqa)[1]
    (sqa / "images" / _problems(sqa)[pid]["split"] / pid / "image.png").write_bytes(b"not an image")
    ws = tmp_path / "ws"
    args = ["ingest", "scienceqa", str(sqa), "-w", str(ws), "--skip-bad-images"]
    code, out, err = run(args, capsys, monkeypatch)
    assert code == 0, err
    info = json.loads((ws / "dataset" / "dataset.json").read_text())
    assert info["skipped_images"] == 2 and info["rows"] == n_problems - 2
    assert "skipped images" in out


def test_scienceqa_ingest_records_what_it_read(sqa: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    ws = tmp_path / "ws"
    code, out, err = run(["ingest", "scienceqa", str(sqa), "-w", str(ws), "--prompt-format", "CQM-A"],
                         capsys, monkeypatch)
    assert code == 0, err
    info = json.loads((ws / "dataset" / "dataset.json").read_text())
    assert info["source"] == "scienceqa" and info["prompt_format"] == "CQM-A"
    assert info["rows"] == 14 and info["splits"] == {"test": 3, "train": 8, "val": 3}
    assert info["image_root"] == str((sqa / "images").resolve())
    assert info["scienceqa_splits"] == ["train", "val", "test"]
    assert "rows" in out and "14" in out


def test_reingest_same_data_is_idempotent(sqa: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    ws = tmp_path / "ws"
    args = ["ingest", "scienceqa", str(sqa), "-w", str(ws)]
    assert run(args, capsys, monkeypatch)[0] == 0
    info_before = (ws / "dataset" / "dataset.json").read_bytes()
    parts_before = hash_parts(ws / "dataset")
    assert run(args, capsys, monkeypatch)[0] == 0
    assert (ws / "dataset" / "dataset.json").read_bytes() == info_before
    assert hash_parts(ws / "dataset") == parts_before


def test_different_dataset_refused_without_overwrite(tmp_path: Path, capsys, monkeypatch) -> None:
    ws = tmp_path / "ws"
    small = ["--n-train", "20", "--n-val", "5", "--n-test", "5", "-w", str(ws)]
    assert run(["ingest", "synthetic", *small], capsys, monkeypatch)[0] == 0
    info_before = (ws / "dataset" / "dataset.json").read_bytes()
    problems_before = (ws / "synthetic-source" / "problems.json").read_bytes()
    # Same parameters again: accepted, nothing changes.
    assert run(["ingest", "synthetic", *small], capsys, monkeypatch)[0] == 0
    assert (ws / "dataset" / "dataset.json").read_bytes() == info_before

    code, _, err = run(["ingest", "synthetic", "--seed", "1", *small], capsys, monkeypatch)
    assert code == 2 and "different dataset" in err and "--overwrite" in err
    assert (ws / "dataset" / "dataset.json").read_bytes() == info_before
    # The refused run must not replace the images the existing dataset points at.
    assert (ws / "synthetic-source" / "problems.json").read_bytes() == problems_before
    assert sorted(p.name for p in ws.iterdir()) == ["dataset", "synthetic-source"]

    code, _, err = run(["ingest", "synthetic", "--seed", "1", "--overwrite", *small], capsys, monkeypatch)
    assert code == 0, err
    after = json.loads((ws / "dataset" / "dataset.json").read_text())
    assert after["fingerprint"] != json.loads(info_before)["fingerprint"]
    assert after["synthetic"]["seed"] == 1


def test_synthetic_ingest_prompt_format_and_fingerprint(tmp_path: Path, capsys, monkeypatch) -> None:
    small = ["--n-train", "12", "--n-val", "4", "--n-test", "4", "--prompt-format", "QCM-LEPA"]
    fps = []
    for name in ("a", "b"):
        code, _, err = run(["ingest", "synthetic", *small, "-w", str(tmp_path / name)], capsys, monkeypatch)
        assert code == 0, err
        fps.append(json.loads((tmp_path / name / "dataset" / "dataset.json").read_text())["fingerprint"])
    assert fps[0] == fps[1]
    from datasets_spec.workspace import Workspace

    ws = Workspace(tmp_path / "a")
    rows = ws.read_dataset().to_pylist()
    assert {r["source"] for r in rows} == {"synthetic"}
    assert all(r["conversations"][1]["value"].startswith("LECTURE: ") for r in rows)
    for r in rows:
        human = r["conversations"][0]["value"]
        assert human.endswith("\n<image>") == (r["image"] is not None) and human.count("<image>") <= 1
        if r["image"]:
            assert (ws.image_root() / r["image"]).is_file()


def test_llava_source_is_dispatched(tmp_path: Path, capsys, monkeypatch) -> None:
    path = tmp_path / "chat.json"
    convs = [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]
    path.write_text(json.dumps([{"id": "a", "conversations": convs}]))
    code, _, err = run(["ingest", "llava", str(path), "-w", str(tmp_path / "ws")], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads((tmp_path / "ws" / "dataset" / "dataset.json").read_text())["source"] == "llava"
