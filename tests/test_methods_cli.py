"""`curate select` with semdedup / coincide / top-score, `curate score`, score thresholds in rules."""

from __future__ import annotations

import inspect
import subprocess

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from curate.registry import REGISTRY, all_options
from curate.scores import load_scores, score_workspace, write_scores
from curate.select import select_subset
from curate.shards import read_subset
from datasets_spec.errors import UserError
from datasets_spec.parts import read_json, write_json, write_record
from tests.cli_helpers import run_app
from tests.curate_helpers import assert_user_error, copy_workspace, run_curate


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`curate ARGS` in this process (as the console script runs it): faster than a subprocess."""
    from curate.cli import app

    code, err = run_app(app, list(args))
    return subprocess.CompletedProcess(list(args), code, "", err)


@pytest.fixture(scope="module")
def ws(embedded_workspace, tmp_path_factory):
    """A private copy of the embedded workspace with a `length` score set."""
    ws = copy_workspace(embedded_workspace, tmp_path_factory.mktemp("methods"))
    score_workspace(ws, "length")
    return ws


def _gpt_chars(ws) -> dict[str, int]:
    table = ws.read_dataset(columns=["sample_id", "conversations", "split"])
    return {
        r["sample_id"]: sum(len(t["value"]) for t in r["conversations"] if t["from"] == "gpt")
        for r in table.to_pylist()
        if r["split"] == "train"
    }


def test_length_scores_are_gpt_characters(ws) -> None:
    values, info = load_scores(ws, "length")
    ids = ws.read_dataset(columns=["sample_id"]).column("sample_id").to_pylist()
    table = ws.read_dataset(columns=["conversations"]).column("conversations").to_pylist()
    expected = [sum(len(t["value"]) for t in conv if t["from"] == "gpt") for conv in table]
    assert values.tolist() == expected and info["by"] == "length" and info["rows"] == len(ids)


@pytest.mark.parametrize("ascending", [False, True])
def test_top_score_picks_the_extremes_in_order(ws, ascending: bool) -> None:
    args = [
        "select",
        "-w",
        str(ws.root),
        "--strategy",
        "top-score",
        "--score",
        "length",
        "--k",
        "15",
        "--name",
        f"top-{ascending}",
    ] + (["--ascending"] if ascending else [])
    result = run_curate(*args)
    assert result.returncode == 0, result.stderr
    table, manifest = read_subset(ws.shards_dir / f"top-{ascending}")
    chars = _gpt_chars(ws)
    # reference: a stable sort of the train ids (dataset order) by length
    train_ids = [
        s for s in ws.read_dataset(columns=["sample_id"]).column("sample_id").to_pylist() if s in chars
    ]
    ranked = sorted(train_ids, key=lambda s: chars[s] if ascending else -chars[s])
    assert table.column("sample_id").to_pylist() == ranked[:15]
    assert manifest["params"]["score"] == "length" and manifest["params"]["ascending"] is ascending
    assert manifest["scores"]["by"] == "length"


def test_rules_score_thresholds(ws) -> None:
    chars = _gpt_chars(ws)
    cut = sorted(chars.values())[len(chars) // 2]
    result = _cli(
        "rules",
        "-w",
        str(ws.root),
        "--k",
        "20",
        "--min-score",
        f"length={cut}",
        "--max-score",
        "length=1e9",
        "--name",
        "rules-long",
    )
    assert result.returncode == 0, result.stderr
    table, manifest = read_subset(ws.shards_dir / "rules-long")
    assert all(chars[s] >= cut for s in table.column("sample_id").to_pylist())
    below = sum(v < cut for v in chars.values())
    assert manifest["score_thresholds"]["length"]["dropped"] == below
    assert manifest["pool"]["after_score_thresholds"] == len(chars) - below


def test_semdedup_and_coincide_subsets(ws) -> None:
    for strategy, extra in (("semdedup", ["--n-clusters", "4"]), ("coincide", ["--n-clusters", "6"])):
        result = _cli("select", "-w", str(ws.root), "--strategy", strategy, "--k", "30", *extra)
        assert result.returncode == 0, result.stderr
        table, manifest = read_subset(ws.shards_dir / f"{strategy}-k30")
        assert table.num_rows == 30 and len(set(table.column("sample_id").to_pylist())) == 30
        assert set(table.column("split").to_pylist()) == {"train"}
        assert manifest["strategy_report"]["n_clusters"] == int(extra[1])
    # a repeated run gives byte-identical parts
    again = select_subset(ws, "coincide", k=30, n_clusters=6, name="coincide-again")
    assert (
        read_json(again / "manifest.json")["parts_hash"]
        == read_json(ws.shards_dir / "coincide-k30" / "manifest.json")["parts_hash"]
    )


def test_semdedup_searched_eps_is_recorded(ws) -> None:
    out = select_subset(ws, "semdedup", k=60, n_clusters=3, name="sd-60")
    report = read_json(out / "manifest.json")["strategy_report"]
    assert 60 <= report["kept"] <= 61 and 0 < report["eps"] < 2


def test_loss_scores_from_a_run(ws) -> None:
    from train.model import build_llava, save_bundle

    run = ws.runs_dir / "warmup"
    save_bundle(build_llava("tiny-llama", "tiny-clip", seed=0), run / "model")
    write_json(run / "config.json", {"dataset_fingerprint": ws.dataset_fingerprint(), "config": {}})
    out = score_workspace(ws, "loss", run=run, batch_size=4, max_length=1024, show_progress=False)
    values, info = load_scores(ws, out.name)
    assert out.name == "loss_warmup" and info["by"] == "loss"
    assert np.isfinite(values).all() and (values > 0).all()
    # reference: one sample at a time, cross-entropy written out by hand
    import torch

    from train.data import LlavaCollator, prepare_dataset
    from train.evaluate import load_run_bundle

    bundle = load_run_bundle(run)
    table = ws.read_dataset().slice(0, 3)
    dataset, _ = prepare_dataset(table, bundle, image_root=ws.image_root(), max_length=1024)
    for i in range(3):
        batch = LlavaCollator(bundle.tokenizer.pad_token_id)([dataset[i]])
        with torch.no_grad():
            logits = (
                bundle.model.eval()(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    pixel_values=batch["pixel_values"],
                )
                .logits[0]
                .double()
            )
        labels = batch["labels"][0]
        logp = torch.log_softmax(logits[:-1], -1)
        mask = labels[1:] != -100
        expected = -logp[mask, labels[1:][mask]].mean().item()
        assert values[i] == pytest.approx(expected, rel=1e-4)
    ppl = score_workspace(ws, "ppl", run=run, batch_size=8, max_length=1024, show_progress=False)
    assert np.allclose(load_scores(ws, ppl.name)[0], np.exp(values), rtol=1e-4)


def test_registry_generates_cli_options_and_checks_them() -> None:
    result = run_curate("select", "--help", env={"COLUMNS": "200"})
    for record in REGISTRY.values():
        assert record.name in result.stdout
        params = inspect.signature(record.fn).parameters
        for opt in record.options:
            assert opt.flag in result.stdout
            assert (opt.passed_as or opt.name) in params
    assert set(all_options()) == {
        "niter",
        "eps",
        "n_clusters",
        "nredo",
        "temp",
        "gamma",
        "score",
        "ascending",
        "energy",
        "no_center",
        "no_recentre",
        "n_neighbors",
        "gamma_forward",
        "gamma_reverse",
        "target",
        "target_embeddings",
        "target_group_by",
        "vote",
        "percentile",
        "min_per_subject",
        "minimum_by",
        "prefer",
        "image_first",
    }


def _foreign_embeddings(ws, tmp_path):
    bad = copy_workspace(ws, tmp_path)
    tag = next(p for p in bad.embeddings_dir.iterdir() if p.is_dir())
    info = read_json(tag / "embeddings.json")
    write_record(tag / "embeddings.json", dict(info, dataset_fingerprint="f" * 64))
    return bad


def _missing_score_row(ws, tmp_path):
    bad = copy_workspace(ws, tmp_path)
    table = pq.read_table(bad.root / "scores" / "length" / "part-00000.parquet")
    train = ws.read_dataset(columns=["sample_id", "split"]).filter(pc.equal(pc.field("split"), "train"))
    drop = train.column("sample_id")[3].as_py()
    kept = table.filter(pc.not_equal(table.column("sample_id"), drop))
    write_scores(
        bad,
        "length",
        kept.column("sample_id").to_pylist(),
        kept.column("score").to_numpy(),
        {"by": "length"},
        overwrite=True,
    )
    return bad, drop


def test_bad_input_exits_2_with_one_line(ws, tmp_path) -> None:
    base = ["select", "-w", str(ws.root), "--k", "10"]
    assert_user_error(_cli(*base, "--strategy", "semdedup", "--eps", "2.5"), "outside [0, 2]")
    assert_user_error(_cli(*base, "--strategy", "semdedup", "--eps", "-0.01"), "outside [0, 2]")
    assert_user_error(
        _cli(*base, "--strategy", "coincide", "--n-clusters", "500"),
        "n_clusters=500 is larger than the pool (120 samples",
    )
    assert_user_error(
        _cli(*base, "--strategy", "semdedup", "--temp", "0.1"),
        "strategy 'semdedup' has no option 'temp'; its options: eps, n_clusters, niter",
    )
    assert_user_error(_cli(*base, "--strategy", "top-score"), "needs a score set")
    assert_user_error(_cli(*base, "--strategy", "top-score", "--score", "nope"), "no score set")
    bad = _foreign_embeddings(ws, tmp_path / "a")
    assert_user_error(
        _cli("select", "-w", str(bad.root), "--k", "10", "--strategy", "coincide"), "stale embeddings"
    )
    bad, drop = _missing_score_row(ws, tmp_path / "b")
    line = assert_user_error(
        _cli("select", "-w", str(bad.root), "--k", "10", "--strategy", "top-score", "--score", "length"),
        f"no row for sample {drop!r}",
    )
    assert "1 of 120 samples missing" in line
    assert_user_error(
        _cli("rules", "-w", str(bad.root), "--k", "10", "--min-score", "length=1"),
        f"no row for sample {drop!r}",
    )
    assert_user_error(
        _cli("rules", "-w", str(ws.root), "--k", "10", "--min-score", "length"), "expected NAME=NUMBER"
    )
    assert not (ws.shards_dir / "semdedup-k10").exists() and not (ws.shards_dir / "top-score-k10").exists()


def test_scores_of_another_dataset_are_refused(ws, tmp_path) -> None:
    bad = copy_workspace(ws, tmp_path)
    path = bad.root / "scores" / "length" / "scores.json"
    write_record(path, dict(read_json(path), dataset_fingerprint="0" * 64))  # sealed: only the fingerprint
    with pytest.raises(UserError, match="scores were computed for dataset 000000000000"):
        load_scores(bad, "length")


def test_score_overwrite_replaces_only_a_score_set(ws, tmp_path) -> None:
    other = copy_workspace(ws, tmp_path)
    foreign = other.root / "scores" / "notes"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="score set"):
        score_workspace(other, "length", name="notes", overwrite=True)
    assert (foreign / "keep.txt").read_text() == "mine"
    again = score_workspace(other, "length", overwrite=True)  # a previous score set is replaced
    assert load_scores(other, again.name)[1]["by"] == "length"
