"""curate stats and curate export: statistics against a brute-force count, export round trips."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pyarrow as pa

from curate.ingest import ingest_scienceqa
from curate.stats import dataset_stats
from datasets_spec.parts import write_json, write_parts
from datasets_spec.workspace import Workspace
from tests.test_llava_json import cli


def test_stats_match_brute_force(synthetic_workspace):
    table = synthetic_workspace.read_dataset()
    stats = dataset_stats(table)
    rows = table.to_pylist()
    assert stats["rows"] == len(rows)
    assert stats["splits"] == dict(sorted(Counter(r["split"] for r in rows).items()))
    assert stats["subjects"] == {k: v for k, v in sorted(Counter(r["subject"] for r in rows).items())}
    assert sum(stats["grades"].values()) == len(rows)
    expected = [0] * 10
    for r in rows:
        expected[min(9, int(r["difficulty"] * 10))] += 1
    assert stats["difficulty_histogram"]["counts"] == expected
    assert stats["image_rows"] == sum(r["image"] is not None for r in rows)
    assert stats["n_tokens_est"]["max"] == max(r["n_tokens_est"] for r in rows)


def test_stats_cli_json_and_table(synthetic_workspace):
    from typer.testing import CliRunner

    from curate.cli import app

    result = CliRunner().invoke(app, ["stats", "--json", "-w", str(synthetic_workspace.root)])
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert payload["kind"] == "dataset" and payload["rows"] == 190
    assert payload["fingerprint"] == synthetic_workspace.dataset_fingerprint()
    text = CliRunner().invoke(app, ["stats", "-w", str(synthetic_workspace.root)])
    assert text.exit_code == 0 and "difficulty histogram" in text.stdout


def make_subset(ws: Workspace, name: str, k: int) -> tuple:
    table = ws.read_dataset().slice(0, k)
    table = table.append_column("rank", pa.array(list(range(k - 1, -1, -1)), pa.int32()))
    directory = ws.shards_dir / name
    write_parts(table, directory)
    write_json(directory / "manifest.json", {"strategy": "test", "k": k})
    return directory, table


def test_stats_of_subset_and_bad_target(tmp_path, synthetic_workspace):
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(synthetic_workspace.dataset_dir, ws.dataset_dir)
    make_subset(ws, "first25", 25)
    code, err = cli(["stats", "first25", "--json", "-w", str(ws.root)])
    assert code == 0, err
    code, err = cli(["stats", "nowhere", "-w", str(ws.root)])
    assert code == 2 and "nowhere: not a dataset" in err


def test_scienceqa_round_trip_same_fingerprint(tmp_path, synthetic_workspace):
    out = tmp_path / "export"
    code, err = cli(
        ["export", "--format", "scienceqa", "--out", str(out), "-w", str(synthetic_workspace.root)]
    )
    assert code == 0, err
    problems = json.loads((out / "problems.json").read_text())
    assert len(problems) == 190 and (out / "pid_splits.json").is_file()
    ws2 = Workspace(tmp_path / "ws2")
    info = ingest_scienceqa(
        ws2, out, prompt_format=synthetic_workspace.dataset_info().get("prompt_format", "QCM-A")
    )
    assert info["fingerprint"] == synthetic_workspace.dataset_fingerprint()
    # refuses to overwrite without --overwrite, and leaves the first export intact
    code, err = cli(
        ["export", "--format", "scienceqa", "--out", str(out), "-w", str(synthetic_workspace.root)]
    )
    assert code == 2 and "already exists" in err and (out / "problems.json").is_file()


def test_export_subset_in_rank_order(tmp_path, synthetic_workspace):
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(synthetic_workspace.dataset_dir, ws.dataset_dir)
    directory, table = make_subset(ws, "first10", 10)
    code, err = cli(
        [
            "export",
            str(directory),
            "--format",
            "llava-json",
            "--out",
            str(tmp_path / "s.json"),
            "-w",
            str(ws.root),
        ]
    )
    assert code == 0, err
    exported = json.loads((tmp_path / "s.json").read_text())
    assert [e["id"] for e in exported] == table.column("sample_id").to_pylist()[::-1]
    code, err = cli(["export", "--format", "yaml", "--out", str(tmp_path / "x"), "-w", str(ws.root)])
    assert code == 2 and "unknown export format 'yaml'" in err
