"""Per-group budgets: allocation rules by hand and by property, the per-group run against a brute-force
reference, and `curate select --group-by` end to end with every bad input."""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from cli_helpers import run_app
from curate_helpers import copy_workspace

from curate.cli import app
from curate.group_budgets import MISSING_GROUP, allocate, group_seed, parse_grouping, select_within_groups
from curate.kcenter import l2_maxdiverse
from curate.scores import top_score
from curate.select import select_subset
from curate.shards import read_subset
from curate.strategies import random_subset
from datasets_spec.errors import UserError
from datasets_spec.parts import list_parts

# --- allocate: hand-computed cases ------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes,k,rule,minimum,expected",
    [
        ({"a": 50, "b": 30, "c": 20}, 10, "proportional", 0, {"a": 5, "b": 3, "c": 2}),
        # quotas 3.5, 1.0, 0.5 -> floors 3, 1, 0; one seat left, a and c tie at .5, a sorts first
        ({"a": 7, "b": 2, "c": 1}, 5, "proportional", 0, {"a": 4, "b": 1, "c": 0}),
        # quotas 2.8, 1.6, 0.4, 0.2 of k=5 on 14/8/2/1 of 25: floors 2, 1, 0, 0; remainders .8 .6 .4 .2
        ({"a": 14, "b": 8, "c": 2, "d": 1}, 5, "proportional", 0, {"a": 3, "b": 2, "c": 0, "d": 0}),
        # with a floor of 1 each: 4 seats left by room 13/7/1/0 of 21 -> 2.48, 1.33, 0.19 -> 2, 1, 0 + 1 to a
        ({"a": 14, "b": 8, "c": 2, "d": 1}, 8, "proportional", 1, {"a": 4, "b": 2, "c": 1, "d": 1}),
        # b fills up at 1, the 2 it could not take go one each to a and c
        ({"a": 10, "b": 1, "c": 10}, 9, "equal", 0, {"a": 4, "b": 1, "c": 4}),
        # 10 over 3: 3 each, the last one by name order
        ({"z": 9, "y": 9, "x": 9}, 10, "equal", 0, {"x": 4, "y": 3, "z": 3}),
        ({"a": 10, "b": 1, "c": 10}, 9, "proportional", 2, {"a": 4, "b": 1, "c": 4}),
        # minimums 3, 2 (b has only 2), 3 = 8, one left: proportional by room 7/0/1 -> a
        ({"a": 10, "b": 2, "c": 4}, 9, "proportional", 3, {"a": 4, "b": 2, "c": 3}),
        ({"a": 10, "b": 2, "c": 4}, 6, {"a": 6}, 0, {"a": 6, "b": 0, "c": 0}),
    ],
)
def test_allocate_by_hand(sizes, k, rule, minimum, expected):
    assert allocate(sizes, k, rule=rule, min_per_group=minimum) == expected


def test_allocate_is_in_name_order_and_refuses_impossible_requests():
    assert list(allocate({"b": 3, "a": 3, "(none)": 3}, 3, rule="equal")) == ["(none)", "a", "b"]
    with pytest.raises(UserError, match="minimums need 9"):
        allocate({"a": 5, "b": 5, "c": 5}, 8, rule="proportional", min_per_group=3)
    with pytest.raises(UserError, match="sum to 5, but k=6"):
        allocate({"a": 5, "b": 5}, 6, rule={"a": 5})
    with pytest.raises(UserError, match="not in the pool"):
        allocate({"a": 5, "b": 5}, 5, rule={"c": 5})
    with pytest.raises(UserError, match="which has 5"):
        allocate({"a": 5, "b": 5}, 6, rule={"a": 6})
    with pytest.raises(UserError, match="below --min-per-group"):
        allocate({"a": 5, "b": 5}, 6, rule={"a": 6 - 1, "b": 1}, min_per_group=2)


@pytest.mark.parametrize("trial", range(40))
def test_allocate_properties_on_random_sizes(trial):
    rng = np.random.default_rng(trial)
    n_groups = int(rng.integers(1, 12))
    sizes = {f"g{i:02d}": int(s) for i, s in enumerate(rng.integers(1, 200, size=n_groups))}
    total = sum(sizes.values())
    k = int(rng.integers(1, total + 1))
    prop = allocate(sizes, k, rule="proportional")
    equal = allocate(sizes, k, rule="equal")
    for out in (prop, equal):
        assert sum(out.values()) == k and all(0 <= out[g] <= sizes[g] for g in sizes)
    for g in sizes:  # Hamilton: within one of the exact quota (exact fractions, no float slack)
        assert abs(prop[g] - Fraction(k * sizes[g], total)) < 1
    # water-filling: every group not taken whole is within one of every other such group, and no
    # group taken whole has more than them
    open_counts = [equal[g] for g in sizes if equal[g] < sizes[g]]
    if open_counts:
        assert max(open_counts) - min(open_counts) <= 1
        assert all(equal[g] <= max(open_counts) for g in sizes if equal[g] == sizes[g])
    minimum = int(rng.integers(0, 5))
    if sum(min(minimum, s) for s in sizes.values()) <= k:
        floored = allocate(sizes, k, rule="proportional", min_per_group=minimum)
        assert sum(floored.values()) == k
        assert all(min(minimum, sizes[g]) <= floored[g] <= sizes[g] for g in sizes)


# --- select_within_groups against running the strategy by hand on each group -----------------------


def _labels(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array(["b", "a", MISSING_GROUP, "c"], dtype=object)[rng.integers(0, 4, size=n)]


@pytest.mark.parametrize("fn", [random_subset, l2_maxdiverse])
def test_select_within_groups_matches_per_group_brute_force(fn):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    labels = _labels(300, 4)
    sizes = dict(Counter(labels.tolist()))
    allocation = allocate(sizes, 40, rule="proportional", min_per_group=2)
    got = select_within_groups(fn, x, 40, labels, allocation, seed=11)
    expected = []
    for index, name in enumerate(sorted(allocation)):
        rows = [i for i in range(300) if labels[i] == name]
        local = fn(x[rows], allocation[name], seed=group_seed(11, index))
        expected += [rows[j] for j in local]
    assert got.tolist() == expected and got.dtype == np.int64
    assert Counter(labels[got].tolist()) == Counter({g: c for g, c in allocation.items() if c})
    assert np.array_equal(got, select_within_groups(fn, x, 40, labels, allocation, seed=11))
    if fn is random_subset:  # the greedy k-center starts from the pool mean: no seed to differ by
        assert not np.array_equal(got, select_within_groups(fn, x, 40, labels, allocation, seed=12))


def test_per_row_options_are_cut_to_the_group_and_empty_budgets_skipped():
    scores = np.arange(20, dtype=np.float64)
    labels = np.array(["a", "b"] * 10, dtype=object)  # a: even rows, b: odd rows
    calls = []

    def spy(x, k, *, seed, scores, targets, report):
        calls.append((len(x), k, targets))
        report["seen"] = len(x)
        return top_score(x, k, seed=seed, scores=scores)

    report: dict = {}
    targets = np.zeros((20, 3))  # as many rows as the pool, yet not a per-row option: shared, never cut
    got = select_within_groups(spy, np.empty((20, 0)), 3, labels, {"a": 3, "b": 0}, seed=0, scores=scores,
                               targets=targets, report=report)
    assert got.tolist() == [18, 16, 14]  # the highest scores among a's rows, not the pool's
    assert len(calls) == 1 and calls[0][:2] == (10, 3) and calls[0][2] is targets
    assert report == {"groups": {"a": {"seen": 10}}}


def test_grouping_options_without_group_by_are_refused():
    with pytest.raises(UserError, match="need --group-by"):
        parse_grouping(None, "equal", None)
    assert parse_grouping(None, None, None) is None


# --- curate select --group-by end to end ------------------------------------------------------------


@pytest.fixture()
def ws(embedded_workspace, tmp_path):
    return copy_workspace(embedded_workspace, tmp_path)


def _select(ws, *args: str) -> tuple[int, str]:
    return run_app(app, ["select", "-w", str(ws.root), *args])


def _picked_groups(path, column: str) -> dict:
    table, _ = read_subset(path)
    return dict(Counter(MISSING_GROUP if v is None else v for v in table.column(column).to_pylist()))


@pytest.mark.parametrize("strategy", ["random", "l2-maxdiverse", "leverage"])
def test_grouped_select_follows_its_allocation_and_is_reproducible(ws, strategy):
    args = ["--strategy", strategy, "--k", "20", "--group-by", "subject", "--min-per-group", "2",
            "--seed", "5"]
    code, err = _select(ws, *args)
    assert code == 0, err
    path = ws.shards_dir / f"{strategy}-k20-by-subject"
    table, manifest = read_subset(path)
    groups = manifest["groups"]
    # natural 70, language 26, social 24 of 120; floors 2 each, then 14 by room 68/24/22 of 114
    assert groups == {"by": "subject", "rule": "proportional", "min_per_group": 2,
                      "allocation": {"language science": 5, "natural science": 10, "social science": 5},
                      "pool_sizes": {"language science": 26, "natural science": 70, "social science": 24}}
    assert _picked_groups(path, "subject") == groups["allocation"]
    # concatenated in group name order
    subjects = table.column("subject").to_pylist()
    assert subjects == sorted(subjects)
    before = [f.read_bytes() for f in list_parts(path)]
    code, err = _select(ws, *args, "--overwrite")
    assert code == 0, err
    assert [f.read_bytes() for f in list_parts(path)] == before


def test_grouped_select_equal_file_and_missing_group(ws, tmp_path):
    code, err = _select(ws, "--strategy", "random", "--k", "30", "--group-by", "subject",
                        "--per-group", "equal")
    assert code == 0, err
    path = ws.shards_dir / "random-k30-by-subject"
    assert _picked_groups(path, "subject") == {"language science": 10, "natural science": 10,
                                               "social science": 10}
    assert read_subset(path)[1]["groups"]["rule"] == "equal"
    spec = tmp_path / "alloc.json"
    spec.write_text(json.dumps({"social science": 4, "natural science": 1}))
    code, err = _select(ws, "--strategy", "random", "--group-by", "subject", "--per-group", str(spec))
    assert code == 0, err  # k is the file's sum
    manifest = read_subset(ws.shards_dir / "random-k5-by-subject")[1]
    assert manifest["k"] == 5 and manifest["groups"]["rule"] == f"file:{spec}"
    assert manifest["groups"]["allocation"] == {"language science": 0, "natural science": 1,
                                                "social science": 4}
    # task is null for every synthetic sample: one group named (none)
    code, err = _select(ws, "--strategy", "random", "--k", "7", "--group-by", "task")
    assert code == 0, err
    assert read_subset(ws.shards_dir / "random-k7-by-task")[1]["groups"]["allocation"] == {MISSING_GROUP: 7}


def test_grouped_top_score_gets_each_groups_scores(ws):
    from curate.scores import score_workspace

    score_workspace(ws, "length", name="len")
    path = select_subset(ws, "top-score", k=6, score="len", group_by="subject", per_group="equal")
    table, _ = read_subset(path)
    data = ws.read_dataset()
    train = [i for i, s in enumerate(data.column("split").to_pylist()) if s == "train"]
    from curate.scores import load_scores

    ids = data.column("sample_id").to_pylist()
    values, _ = load_scores(ws, "len", [ids[i] for i in train])
    subjects = data.column("subject").to_pylist()
    expected = []
    for name in sorted({subjects[i] for i in train}):
        rows = [j for j, i in enumerate(train) if subjects[i] == name]
        expected += [ids[train[rows[j]]] for j in top_score(np.empty((len(rows), 0)), 2, scores=values[rows])]
    assert table.column("sample_id").to_pylist() == expected


def test_grouping_is_refused_under_torchrun(ws, monkeypatch):
    import curate.select

    monkeypatch.setattr(curate.select, "world_size", lambda: 2)
    with pytest.raises(UserError, match="not under torchrun"):
        select_subset(ws, "l2-maxdiverse", k=5, group_by="subject")


def _bad_files(tmp_path) -> dict[str, str]:
    files = {
        "malformed": "{\"a\": ",
        "list": "[1, 2]",
        "negative": json.dumps({"natural science": -1}),
        "boolean": json.dumps({"natural science": True}),
        "float": json.dumps({"natural science": 2.5}),
        "unknown": json.dumps({"natural science": 3, "astrology": 2}),
        "too_many": json.dumps({"social science": 25}),
        "wrong_sum": json.dumps({"social science": 3, "natural science": 3}),
    }
    out = {}
    for key, text in files.items():
        (tmp_path / f"{key}.json").write_text(text)
        out[key] = str(tmp_path / f"{key}.json")
    return out


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--group-by", "colour"], ["--group-by 'colour'", "subject, topic, category, skill, task, source"]),
        (["--group-by", "subject", "--per-group", "balanced"], ["balanced", "proportional, equal"]),
        (["--group-by", "subject", "--per-group", "@malformed"], ["malformed JSON"]),
        (["--group-by", "subject", "--per-group", "@list"], ["JSON object", "list"]),
        (["--group-by", "subject", "--per-group", "@negative"], ["non-negative integers"]),
        (["--group-by", "subject", "--per-group", "@boolean"], ["non-negative integers"]),
        (["--group-by", "subject", "--per-group", "@float"], ["non-negative integers"]),
        (["--group-by", "subject", "--per-group", "@unknown"], ["not in the pool", "'astrology'"]),
        (["--group-by", "subject", "--per-group", "@too_many", "--k", "25"], ["asks 25", "which has 24"]),
        (["--group-by", "subject", "--per-group", "@wrong_sum"], ["sum to 6, but k=20"]),
        (["--group-by", "subject", "--min-per-group", "-1"], ["--min-per-group must be >= 0"]),
        (["--group-by", "subject", "--min-per-group", "7"], ["minimums need 21"]),
        (["--per-group", "equal"], ["need --group-by"]),
        (["--min-per-group", "1"], ["need --group-by"]),
    ],
)
def test_bad_grouping_inputs(ws, tmp_path, args, needles):
    files = _bad_files(tmp_path)
    args = [files[a[1:]] if a.startswith("@") else a for a in args]
    if "--k" not in args:
        args += ["--k", "20"]
    code, err = _select(ws, "--strategy", "random", *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not ws.shards_dir.exists()
