"""`train report`: the protocol table from lmms-eval output files written here in lmms-eval's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datasets_spec.parts import write_json
from datasets_spec.workspace import Workspace
from tests.cli_helpers import run_app
from train.cli import app
from train.lmms_eval_results import BENCHMARKS

# Headline values as lmms-eval stores them (fractions for exact_match / F1, points for the others).
FULL = {"vqav2_val": 0.78, "gqa": 0.62, "vizwiz_vqa_val": 0.50, "scienceqa_img": 0.70,
        "textvqa_val": 0.58, "pope": 0.86, "mme": 1500.0, "mmbench_en_dev": 64.0, "mmbench_cn_dev": 58.0,
        "llava_in_the_wild": 65.0}
METRIC = {b.task: b.metric for b in BENCHMARKS}
RUNS = {"full": "full__vicuna-7b__s0", "random": "random-k133060__vicuna-7b__s0",
        "coincide": "coincide-k133060__vicuna-7b__s0"}


def _make_run(ws: Workspace, run: str, subset: str, rows: int, train_s: float, select_s: float | None):
    run_dir = ws.runs_dir / run
    (run_dir / "model").mkdir(parents=True)
    subset_dir = ws.shards_dir / subset
    subset_dir.mkdir(parents=True, exist_ok=True)
    write_json(subset_dir / "manifest.json", {"name": subset, "selection_seconds": select_s})
    write_json(run_dir / "config.json", {"subset": {"name": subset, "path": str(subset_dir), "rows": rows}})
    write_json(run_dir / "train_metrics.json", {"finetune": {"runtime_s": train_s, "steps": 10}})


def _lmms_output(out: Path, model: Path, date: str, scores: dict[str, float],
                 samples: dict[str, list] | None = None, eval_s: float = 100.0) -> None:
    """One lmms-eval invocation's files: <out>/<sanitised model>/<date>_results.json (+ samples logs)."""
    folder = out / str(model).replace("/", "__")
    folder.mkdir(parents=True, exist_ok=True)
    results = {task: {"alias": task, f"{METRIC[task]},none": value, f"{METRIC[task]}_stderr,none": "N/A"}
               for task, value in scores.items()}
    args = f"pretrained={model},conv_template=vicuna_v1"
    payload = {"results": results, "config": {"model": "llava", "model_args": args},
               "model_name": str(model), "total_evaluation_time_seconds": str(eval_s), "versions": {},
               "lmms_eval_version": "0.7.3"}
    (folder / f"{date}_results.json").write_text(json.dumps(payload, indent=2))
    for task, values in (samples or {}).items():
        lines = [{"doc_id": i, "target": "x", "filtered_resps": ["y"], "doc_hash": "h", METRIC[task]: v}
                 for i, v in enumerate(values)]
        (folder / f"{date}_samples_{task}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture()
def setup(tmp_path):
    ws = Workspace(tmp_path / "ws")
    _make_run(ws, RUNS["full"], "full", 665298, 36000.0, None)
    _make_run(ws, RUNS["random"], "random-k133060", 133060, 7200.0, 0.5)
    _make_run(ws, RUNS["coincide"], "coincide-k133060", 133060, 7300.0, 840.0)
    out = tmp_path / "lmms"
    gqa_random = [1.0] * 5 + [0.0] * 5
    gqa_coincide = [1.0] * 8 + [0.0] * 2
    model = {label: ws.runs_dir / run / "model" for label, run in RUNS.items()}
    half = dict(list(FULL.items())[:5])
    rest = dict(list(FULL.items())[5:])
    # full in two invocations (two results files), with a GQA samples log
    _lmms_output(out / RUNS["full"], model["full"], "2026-01-01T10-00-00.1", half,
                 {"gqa": [1.0] * 10})
    _lmms_output(out / RUNS["full"], model["full"], "2026-01-02T10-00-00.1", rest)
    # random: 0.9 x full everywhere, no LLaVA-W
    _lmms_output(out / RUNS["random"], model["random"], "2026-01-03T10-00-00.1",
                 {t: 0.9 * v for t, v in FULL.items() if t != "llava_in_the_wild"},
                 {"gqa": gqa_random, "mme": [{"question_id": "q", "category": "OCR", "score": 1.0}] * 3})
    # coincide: full everywhere but GQA at 0.95 x full
    _lmms_output(out / RUNS["coincide"], model["coincide"], "2026-01-04T10-00-00.1",
                 {t: (0.95 * v if t == "gqa" else v) for t, v in FULL.items()}, {"gqa": gqa_coincide})
    return ws, out


def test_table_rel_paired_and_cost(setup):
    ws, out = setup
    code, err = run_app(app, ["report", "--lmms-eval", str(out), "--method", "coincide", "-w", str(ws.root)])
    assert code == 0, err
    payload = json.loads((ws.reports_dir / "protocol.json").read_text())
    assert [r["label"] for r in payload["rows"]] == ["full", "random", "coincide"]
    rel = {r["label"]: r["rel"] for r in payload["rows"]}
    # LLaVA-W is missing for random: Rel is over the other 9, and the report says so
    assert payload["rel_over"] == [b.label for b in BENCHMARKS if b.label != "LLaVA-W"]
    assert payload["left_out"] == {"LLaVA-W": ["random"]}
    assert rel["full"] == pytest.approx(100.0)
    assert rel["random"] == pytest.approx(90.0)
    assert rel["coincide"] == pytest.approx(100 * (8 + 0.95) / 9)
    scores = {r["label"]: r["scores"] for r in payload["rows"]}
    assert scores["full"]["VQAv2"] == pytest.approx(78.0) and scores["full"]["MME-P"] == pytest.approx(1500.0)
    # GQA logged per sample by every row: coincide right on 8 of 10, random on 5 -> +30 points,
    # 3 discordant pairs all one way -> exact McNemar p = 2 / 2**3
    paired = {(p["row"], p["benchmark"]): p for p in payload["paired"]}
    assert set(paired) == {("full", "GQA"), ("coincide", "GQA")}
    gqa = paired[("coincide", "GQA")]
    assert gqa["n"] == 10 and gqa["diff"] == pytest.approx(30.0) and gqa["p"] == pytest.approx(0.25)
    assert gqa["ci"][0] <= 30.0 <= gqa["ci"][1] and gqa["ci"][0] >= -0.0 and gqa["ci"][1] <= 60.0
    assert paired[("full", "GQA")]["diff"] == pytest.approx(50.0)
    cost = {c["label"]: c for c in payload["cost"]}
    assert cost["coincide"]["selection_s"] == 840.0 and cost["coincide"]["train_s"] == 7300.0
    assert cost["full"]["selection_s"] is None and cost["full"]["eval_s"] == pytest.approx(200.0)
    md = (ws.reports_dir / "protocol.md").read_text()
    assert "| coincide (method) |" in md and "Left out of Rel: LLaVA-W (no score for random)." in md
    assert "| random | " in md and " 90.0 |" in md


def test_explicit_rows_pick_and_order(setup):
    ws, out = setup
    code, err = run_app(app, ["report", "--lmms-eval", str(out), "--row", f"Full={RUNS['full']}",
                              "--row", f"COINCIDE={RUNS['coincide']}", "--row", f"Random={RUNS['random']}",
                              "--full", "Full", "--versus", "Random", "--name", "t20", "-w", str(ws.root)])
    assert code == 0, err
    payload = json.loads((ws.reports_dir / "t20.json").read_text())
    assert [r["label"] for r in payload["rows"]] == ["Full", "Random", "COINCIDE"]


def _assert_refused(ws: Workspace, out: Path, expected: str, *extra: str) -> None:
    code, err = run_app(app, ["report", "--lmms-eval", str(out), *extra, "-w", str(ws.root)])
    assert code == 2 and expected in err, err
    assert len(err.strip().splitlines()) == 1
    assert not ws.reports_dir.exists() or not list(ws.reports_dir.iterdir())


def test_results_for_a_run_that_does_not_exist(setup):
    ws, out = setup
    (out / "semdedup-k133060__vicuna-7b__s0").mkdir()
    _assert_refused(ws, out, "output for run 'semdedup-k133060__vicuna-7b__s0', which does not exist")


def _set_results_config(folder: Path, key: str, value: str) -> None:
    """Rewrite one ``config`` entry of the lmms-eval results file under ``folder``."""
    results = next(folder.rglob("*_results.json"))
    payload = json.loads(results.read_text())
    payload["config"][key] = value
    results.write_text(json.dumps(payload))


def test_results_for_another_model(setup):
    ws, out = setup
    _set_results_config(out / RUNS["random"], "model_args", "pretrained=liuhaotian/llava-v1.5-7b")
    _assert_refused(ws, out, "lmms-eval evaluated 'liuhaotian/llava-v1.5-7b', not run 'random-k133060")


def test_rows_scored_by_different_evaluators(setup):
    ws, out = setup
    _set_results_config(out / RUNS["coincide"], "model", "llava_hf")
    _assert_refused(ws, out, "rows were evaluated differently")


def test_task_reported_twice(setup):
    ws, out = setup
    model = ws.runs_dir / RUNS["random"] / "model"
    _lmms_output(out / RUNS["random"], model, "2026-02-01T10-00-00.1", {"gqa": 0.5})
    _assert_refused(ws, out, "gqa is in both")


def test_unpairable_samples_logs(setup):
    ws, out = setup
    log = next((out / RUNS["random"]).rglob("*_samples_gqa.jsonl"))
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:9]))
    _assert_refused(ws, out, "cannot pair full with random on GQA: their samples logs hold different")


def test_no_benchmark_common_to_every_row(setup):
    ws, out = setup
    model = ws.runs_dir / RUNS["random"] / "model"
    for path in (out / RUNS["random"]).rglob("*"):
        if path.is_file():
            path.unlink()
    _lmms_output(out / RUNS["random"], model, "2026-02-01T10-00-00.1", {"llava_in_the_wild": 60.0})
    for path in (out / RUNS["coincide"]).rglob("*_results.json"):
        payload = json.loads(path.read_text())
        payload["results"].pop("llava_in_the_wild")
        path.write_text(json.dumps(payload))
    _assert_refused(ws, out, "no benchmark has a score for every row")
