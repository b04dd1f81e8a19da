"""curate rules: minimums per group, difficulty preference, image-first, and refusals with numbers."""

from __future__ import annotations

import numpy as np
import pytest
from curate_helpers import assert_user_error, copy_workspace, run_curate

from curate.rules import pick_by_rules, rule_order
from curate.select import rules_subset
from curate.shards import read_subset
from datasets_spec.errors import UserError


@pytest.fixture()
def ws(embedded_workspace, tmp_path):
    return copy_workspace(embedded_workspace, tmp_path)


def brute_force_rules(difficulty, has_image, groups, k, n_min, prefer, image_first, seed):
    """Sort by the documented key with Python's sort, then minimums per group, then fill."""
    tiebreak = np.random.default_rng(seed).permutation(len(difficulty))
    sign = {"hard": -1.0, "easy": 1.0, "none": 0.0}[prefer]

    def key(i):
        return (int(image_first and not has_image[i]), sign * float(difficulty[i]), int(tiebreak[i]))

    order = sorted(range(len(difficulty)), key=key)
    mins = set()
    for g in sorted(set(groups)):
        mins.update([i for i in order if groups[i] == g][:n_min])
    first = [i for i in order if i in mins]
    return first + [i for i in order if i not in mins][: k - len(first)]


@pytest.mark.parametrize("prefer,image_first", [("hard", False), ("easy", True), ("none", True)])
def test_rules_match_brute_force(prefer, image_first):
    rng = np.random.default_rng(5)
    n = 200
    difficulty = rng.choice([0.1, 0.5, 0.9], n).astype(np.float32)  # many ties: seed decides
    has_image = rng.random(n) < 0.4
    groups = [f"g{v}" for v in rng.choice(7, n, p=[0.4, 0.3, 0.1, 0.1, 0.05, 0.03, 0.02])]
    order = rule_order(difficulty, has_image, prefer=prefer, image_first=image_first, seed=3)
    picks, summary = pick_by_rules(order, groups, 40, 3)
    assert picks.tolist() == brute_force_rules(difficulty, has_image, groups, 40, 3, prefer, image_first, 3)
    for g in set(groups):
        assert sum(groups[i] == g for i in picks) >= min(3, groups.count(g))
    assert summary["groups"] == 7


def test_cli_rules_min_per_subject(ws):
    result = run_curate("rules", "-w", str(ws.root), "--min-per-subject", "1", "--k", "10")
    assert result.returncode == 0, result.stderr
    table, manifest = read_subset(ws.shards_dir / "rules-k10")
    rows = ws.read_dataset(columns=["split", "subject"]).to_pylist()
    subjects = {r["subject"] for r in rows if r["split"] == "train"}
    assert set(table.column("subject").to_pylist()) == subjects
    assert manifest["strategy"] == "rules" and manifest["params"]["min_per_subject"] == 1
    assert manifest["strategy_report"]["minimum_picks"] == len(subjects)
    assert manifest["coverage"]["radius"] > 0 and manifest["embeddings"]["tag"] == "tiny-clip_none"
    # after the minimums, hardest first
    fill = table.column("difficulty").to_pylist()[len(subjects):]
    assert fill == sorted(fill, reverse=True)
    assert table.column("rank").to_pylist() == list(range(10))


def test_rules_group_by_topic_and_require_image(ws):
    path = rules_subset(ws, k=30, min_per_group=2, group_by="topic", require_image=True, prefer="easy")
    table, manifest = read_subset(path)
    train = ws.read_dataset().to_pylist()
    topics = {r["topic"] for r in train if r["split"] == "train"}
    picked = table.column("topic").to_pylist()
    assert all(picked.count(t) >= 2 for t in topics)
    # image-bearing samples are taken first in the fill
    after_minimums = table.column("image").to_pylist()[manifest["strategy_report"]["minimum_picks"] :]
    fill_images = [img is not None for img in after_minimums]
    assert fill_images == sorted(fill_images, reverse=True)


def test_rules_byte_identical(ws):
    a = rules_subset(ws, k=12, min_per_group=1, seed=4, name="a")
    b = rules_subset(ws, k=12, min_per_group=1, seed=4, name="b")
    assert (a / "part-00000.parquet").read_bytes() == (b / "part-00000.parquet").read_bytes()


def test_rules_unknown_options():
    with pytest.raises(UserError, match="--group-by 'grade': valid: subject, topic, category, skill"):
        rules_subset(None, k=5, group_by="grade")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="valid: hard, easy, none"):
        rules_subset(None, k=5, prefer="medium")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--min-per-subject", "5", "--k", "10", "--group-by", "topic"], ["k=10", "minimums need", "groups"]),
        (["--k", "0"], ["k must be positive"]),
        (["--k", "500"], ["k=500", "larger than the pool"]),
        (["--k", "5", "--split", "nosuch"], ["pool is empty"]),
    ],
)
def test_bad_rules_inputs(ws, args, needles):
    assert_user_error(run_curate("rules", "-w", str(ws.root), *args), *needles)
    assert not ws.shards_dir.exists()


# --- rules as a registered strategy of the one selection pipeline ------------------------------------


def test_select_strategy_rules_is_curate_rules(ws):
    old = run_curate("rules", "-w", str(ws.root), "--min-per-subject", "1", "--k", "10", "--prefer", "easy",
                     "--group-by", "topic", "--require-image", "--name", "old")
    new = run_curate("select", "-w", str(ws.root), "--strategy", "rules", "--min-per-subject", "1", "--k",
                     "10", "--prefer", "easy", "--minimum-by", "topic", "--image-first", "--name", "new")
    assert old.returncode == 0 and new.returncode == 0, old.stderr + new.stderr
    assert (ws.shards_dir / "old" / "part-00000.parquet").read_bytes() == (
        ws.shards_dir / "new" / "part-00000.parquet"
    ).read_bytes()
    _, manifest = read_subset(ws.shards_dir / "new")
    assert manifest["kind"] == "select" and manifest["strategy"] == "rules"
    assert manifest["strategy_report"]["minimum_by"] == "topic"
    assert "diagnostics" in manifest and manifest["coverage"]["radius"] > 0


def test_select_rules_default_name_and_per_group_budgets(ws):
    assert run_curate("select", "-w", str(ws.root), "--strategy", "rules", "--min-per-subject", "1",
                      "--k", "10").returncode == 0
    table, _ = read_subset(ws.shards_dir / "rules-k10")
    assert table.num_rows == 10
    # --group-by: the rules run inside each subject with the proportional budgets, hardest first in each
    assert run_curate("select", "-w", str(ws.root), "--strategy", "rules", "--k", "12",
                      "--group-by", "subject").returncode == 0
    table, manifest = read_subset(ws.shards_dir / "rules-k12-by-subject")
    allocation = manifest["groups"]["allocation"]
    rows = ws.read_dataset(columns=["split", "subject", "difficulty", "sample_id"]).to_pylist()
    for subject, budget in allocation.items():
        pool = sorted((r["difficulty"] for r in rows if r["split"] == "train" and r["subject"] == subject),
                      reverse=True)
        picked = [d for d, s in zip(table.column("difficulty").to_pylist(),
                                    table.column("subject").to_pylist(), strict=True) if s == subject]
        assert sorted(picked, reverse=True) == pool[:budget]


def test_select_refuses_a_bad_rules_option(ws):
    assert_user_error(
        run_curate("select", "-w", str(ws.root), "--strategy", "rules", "--k", "5", "--minimum-by", "grade"),
        "--minimum-by 'grade': valid: subject, topic, category, skill",
    )
    assert_user_error(
        run_curate("select", "-w", str(ws.root), "--strategy", "rules", "--k", "5",
                   "--min-per-subject", "-1"),
        "--min-per-subject must be >= 0",
    )
    assert not ws.shards_dir.exists()
