"""Paired statistics: exact McNemar against hand-computed binomial tails, the bootstrap against brute-force
resampling and the normal approximation, seeds, and refusing answers to different questions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from datasets_spec.errors import UserError
from train.paired_stats import (
    Answers,
    accuracy_ci,
    bootstrap_mean_ci,
    compare,
    discordant,
    format_p,
    load_run_answers,
    mcnemar_exact,
    stack_seeds,
)


def _answers(name, rows, ids=None, split="test"):
    correct = np.array(rows, dtype=bool).reshape(len(rows), -1)
    ids = ids or [f"q{i:03d}" for i in range(correct.shape[1])]
    return Answers(name=name, split=split, question_ids=tuple(ids), correct=correct)


# --- McNemar -----


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (1, 6, 2 * (1 + 7) / 2**7),  # 0.125
        (0, 5, 2 / 2**5),  # 0.0625
        (2, 10, 2 * (1 + 12 + 66) / 2**12),  # 0.0386
        (0, 10, 2 / 2**10),
        (4, 4, 1.0),  # 2 * P(X <= 4 | n = 8) = 2 * 163/256 > 1: capped
        (0, 0, 1.0),  # no discordant pair: nothing speaks for either
        (3, 0, 0.25),
    ],
)
def test_mcnemar_exact_matches_the_hand_computed_binomial_tail(b, c, p):
    assert math.isclose(mcnemar_exact(b, c), p, rel_tol=1e-12)
    assert mcnemar_exact(c, b) == mcnemar_exact(b, c)


def test_mcnemar_large_counts_are_finite_and_match_the_normal_approximation():
    # b = 400, c = 500: z = (500 - 400) / sqrt(900) = 3.33 -> two-sided p ~ 8.6e-4 (continuity-corrected
    # z = 99 / 30 = 3.30 -> 9.7e-4); the exact value lies near both.
    p = mcnemar_exact(400, 500)
    assert 7e-4 < p < 1.1e-3


# --- bootstrap -----


def test_bootstrap_interval_matches_the_normal_approximation():
    # 400 questions: +100 on 120, -100 on 40, 0 on 240 -> mean 20 points, sd 60, standard error 3, so the
    # 95% interval is about 20 +- 1.96 * 3 = [14.12, 25.88].
    values = np.array([100.0] * 120 + [-100.0] * 40 + [0.0] * 240)
    lo, hi = bootstrap_mean_ci(values, n_resamples=20_000, seed=1)
    assert abs(lo - 14.12) < 0.6 and abs(hi - 25.88) < 0.6


def test_bootstrap_interval_matches_brute_force_index_resampling():
    rng = np.random.default_rng(7)
    values = rng.choice([-100.0, -50.0, 0.0, 50.0, 100.0], size=60, p=[0.1, 0.15, 0.4, 0.2, 0.15])
    draws = rng.integers(0, values.size, size=(40_000, values.size))
    brute = np.quantile(values[draws].mean(axis=1), [0.025, 0.975])
    lo, hi = bootstrap_mean_ci(values, n_resamples=40_000, seed=3)
    # The resampled means move in steps of 50/60 points; both estimates land within a step of each other.
    assert abs(lo - brute[0]) <= 1.0 and abs(hi - brute[1]) <= 1.0


def test_bootstrap_is_deterministic_for_a_seed():
    values = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    assert bootstrap_mean_ci(values, seed=5) == bootstrap_mean_ci(values, seed=5)


# --- comparisons -----


def test_identical_predictions_differ_by_zero_with_p_one():
    rows = [[1, 0, 1, 1, 0, 0, 1, 0, 1, 1]]
    result = compare(_answers("a", rows), _answers("b", rows))
    assert result.diff == 0.0 and (result.ci_low, result.ci_high) == (0.0, 0.0)
    assert result.p_value == 1.0 and (result.a_better, result.b_better) == (0, 0)
    assert not result.significant


def test_known_discordant_table():
    # 20 questions: both right 8, only a right 6, only b right 1, both wrong 5.
    a = [1] * 8 + [1] * 6 + [0] * 1 + [0] * 5
    b = [1] * 8 + [0] * 6 + [1] * 1 + [0] * 5
    result = compare(_answers("a", [a]), _answers("b", [b]))
    assert (result.a_better, result.b_better) == (6, 1)
    assert (
        math.isclose(result.diff, 25.0)
        and math.isclose(result.acc_a, 70.0)
        and math.isclose(result.acc_b, 45.0)
    )
    assert math.isclose(result.p_value, 0.125)
    # Per-question differences: +100 x 6, -100 x 1, 0 x 13 -> sd 53.6, standard error 12.0, so the normal
    # approximation of the interval is 25 +- 23.5 = [1.5, 48.5]; the bootstrap moves in steps of 5 points.
    assert -3.5 <= result.ci_low <= 6.5 and 43.5 <= result.ci_high <= 53.5
    line = result.verdict("l2-maxdiverse", "random", "k=100, tiny-mistral")
    assert line.startswith("l2-maxdiverse vs random, k=100, tiny-mistral: +25.0 points, 95% CI [")
    assert line.endswith("p = 0.12")


def test_seeds_are_averaged_per_question_before_testing():
    # Cell a has 3 seeds, cell b 2. Per-question means: a = [1, 2/3, 1/3, 0], b = [1/2, 1/2, 1/2, 1/2].
    a = _answers("a", [[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
    b = _answers("b", [[1, 0, 1, 0], [0, 1, 0, 1]])
    assert discordant(a, b) == (2, 2)
    result = compare(a, b)
    # a: (1 + 2/3 + 1/3 + 0) / 4 = 50%; b: 50%.
    assert math.isclose(result.acc_a, 50.0) and math.isclose(result.acc_b, 50.0) and abs(result.diff) < 1e-9
    assert result.p_value == 1.0 and (result.seeds_a, result.seeds_b) == (3, 2)


def test_one_seed_still_gets_a_bootstrap_interval():
    cell = _answers("a", [[1, 0] * 50])
    lo, hi = accuracy_ci(cell)
    # 100 questions at 50%: standard error 5 points, interval about [40.2, 59.8].
    assert 38.0 < lo < 42.5 and 57.5 < hi < 62.0


def test_different_questions_or_splits_are_refused_naming_both():
    a = _answers("random k100 tiny-llama", [[1, 0, 1]])
    b = _answers("full tiny-llama", [[1, 0, 1]], ids=["q000", "q001", "q999"])
    with pytest.raises(
        UserError, match=r"random k100 tiny-llama with full tiny-llama: .*different questions"
    ):
        compare(a, b)
    c = _answers("full tiny-llama", [[1, 0, 1]], split="val")
    with pytest.raises(UserError, match=r"random k100 tiny-llama with full tiny-llama: .*different splits"):
        compare(a, c)
    with pytest.raises(UserError, match="different questions"):
        stack_seeds("cell", [a, b])


# --- loading runs -----


def _write_run(run_dir, marks, split="test"):
    run_dir.mkdir(parents=True)
    lines = [
        json.dumps({"question_id": qid, "text": "A", "metadata": {"correct": ok}})
        for qid, ok in marks.items()
    ]
    (run_dir / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps({"split": split}))


def test_load_run_answers_sorts_questions_and_reads_the_split(tmp_path):
    _write_run(tmp_path / "r1", {"q2": True, "q1": False, "q3": True})
    answers = load_run_answers(tmp_path / "r1")
    assert answers.question_ids == ("q1", "q2", "q3") and answers.split == "test"
    assert answers.correct.tolist() == [[False, True, True]] and answers.runs == ("r1",)


def test_runs_on_different_splits_are_refused_by_run_name(tmp_path):
    _write_run(tmp_path / "random-k100__tiny-llama__s0", {"q1": True})
    _write_run(tmp_path / "full__tiny-llama__s0", {"q1": True}, split="val")
    a, b = (load_run_answers(tmp_path / n) for n in ("random-k100__tiny-llama__s0", "full__tiny-llama__s0"))
    with pytest.raises(UserError) as err:
        compare(a, b)
    assert "random-k100__tiny-llama__s0" in str(err.value) and "full__tiny-llama__s0" in str(err.value)


def test_malformed_predictions_are_one_line_errors(tmp_path):
    run = tmp_path / "r"
    _write_run(run, {"q1": True})
    (run / "predictions.jsonl").write_text('{"question_id": "q1", "text": "A"}\n')
    with pytest.raises(UserError, match=r"predictions.jsonl: line 1: expected an answer"):
        load_run_answers(run)
    with pytest.raises(UserError, match="not found; evaluate the run first"):
        load_run_answers(tmp_path / "missing")


def test_format_p():
    assert [format_p(p) for p in (1.0, 0.5, 0.0625, 0.0123, 3e-5)] == [
        "1.00",
        "0.50",
        "0.0625",
        "0.0123",
        "< 0.0001",
    ]


def test_mcnemar_matches_a_brute_force_binomial_sum():
    for b, c in [(0, 1), (5, 17), (40, 61), (300, 260), (1000, 1100)]:
        n = b + c
        brute = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n)
        assert math.isclose(mcnemar_exact(b, c), brute, rel_tol=1e-12)


def test_question_ids_written_as_numbers_still_load(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "predictions.jsonl").write_text(
        '{"question_id": 2, "metadata": {"correct": true}}\n'
        '{"question_id": 1, "metadata": {"correct": false}}\n'
    )
    answers = load_run_answers(run)
    assert answers.question_ids == ("1", "2") and answers.correct.tolist() == [[False, True]]
    assert answers.split is None


def _brute_sign_flip(d):
    import itertools

    observed = abs(sum(d))
    sums = [
        abs(sum(s * x for s, x in zip(signs, d, strict=True)))
        for signs in itertools.product((1, -1), repeat=len(d))
    ]
    return sum(t >= observed for t in sums) / len(sums)


def test_sign_flip_test_matches_enumerating_every_sign():
    from train.paired_stats import sign_flip_exact

    assert math.isclose(sign_flip_exact(np.array([2, 1, 1, 0])), 0.25)  # sums +-4 of 8: by hand
    assert math.isclose(sign_flip_exact(np.array([3, 1])), 0.5)
    rng = np.random.default_rng(2)
    for _ in range(5):
        d = rng.integers(-3, 4, size=12)
        assert math.isclose(sign_flip_exact(d), _brute_sign_flip(d.tolist()), rel_tol=1e-9, abs_tol=1e-12)


def test_sign_flip_with_unit_differences_is_mcnemar():
    from train.paired_stats import sign_flip_exact

    for b, c in [(1, 6), (2, 10), (40, 61), (4, 4)]:
        d = np.array([1] * b + [-1] * c + [0] * 7)
        assert math.isclose(sign_flip_exact(d), mcnemar_exact(b, c), rel_tol=1e-9)


def test_several_seeds_use_the_size_of_each_difference():
    # Two seeds each. 30 questions: a right in both seeds and b in neither on 6 (difference +2 in units of
    # 1/4... scaled: a_count * 2 - b_count * 2 = +4); a right once, b never on 4 (+2); 20 ties.
    a = _answers("a", [[1] * 6 + [1] * 4 + [1] * 10 + [0] * 10, [1] * 6 + [0] * 4 + [1] * 10 + [0] * 10])
    b = _answers("b", [[0] * 6 + [0] * 4 + [1] * 10 + [0] * 10, [0] * 6 + [0] * 4 + [1] * 10 + [0] * 10])
    result = compare(a, b)
    # Every non-zero difference favours a: only the all-positive and all-negative sign patterns reach the
    # observed sum, so p = 2 / 2**10; McNemar on the 10 questions "a better" would give the same here.
    assert math.isclose(result.p_questions, 2 / 2**10, rel_tol=1e-9)
    assert math.isclose(result.diff, 100 * (6 + 0.5 * 4) / 30)
    # Runs: a 20/30 and 16/30, b 10/30 twice. Welch: difference 26.67 points, standard error 6.67 from a's
    # two runs alone, so t = 4 on 1 degree of freedom (Cauchy): p = 1 - 2 atan(4) / pi = 0.156.
    assert math.isclose(result.p_runs, 1 - 2 * math.atan(4) / math.pi, rel_tol=1e-9)
    assert result.p_value == result.p_runs and not result.significant


def test_run_level_test_matches_scipy_welch():
    from scipy import stats

    from train.paired_stats import run_accuracies, welch_runs

    rng = np.random.default_rng(7)
    for n_a, n_b in [(2, 2), (3, 2), (4, 5)]:
        a = _answers("a", (rng.random((n_a, 200)) < 0.6).astype(int).tolist())
        b = _answers("b", (rng.random((n_b, 200)) < 0.5).astype(int).tolist())
        p, (lo, hi) = welch_runs(a, b)
        ref = stats.ttest_ind(run_accuracies(a), run_accuracies(b), equal_var=False)
        assert math.isclose(p, ref.pvalue, rel_tol=1e-9)
        ci = ref.confidence_interval(0.95)
        assert math.isclose(lo, ci.low, rel_tol=1e-9) and math.isclose(hi, ci.high, rel_tol=1e-9)


def test_two_draws_apart_on_questions_but_not_beyond_the_run_spread_are_not_significant():
    # The negative control's situation: each cell's two runs disagree by 20 points (another subset draw,
    # another seed), and a's runs happen to sit 10 points above b's on average. On the questions alone that
    # is significant; against the runs' own spread it is not.
    q = 400
    a_runs = [[1] * 240 + [0] * 160, [1] * 160 + [0] * 240]  # 60% and 40%
    b_runs = [[0] * 200 + [1] * 80 + [0] * 120, [0] * 240 + [1] * 40 + [0] * 120]  # 20% and 10%
    a, b = _answers("a", a_runs), _answers("b", b_runs)
    assert len(a_runs[0]) == q
    result = compare(a, b)
    assert math.isclose(result.diff, 35.0)
    assert result.p_questions < 1e-6
    # Welch by hand: a 60, 40 (variance 200), b 20, 10 (variance 50); standard error sqrt(200/2 + 50/2) =
    # 11.18; t = 35 / 11.18 = 3.13 on (125)^2 / (100^2 + 25^2) = 1.47 degrees of freedom.
    t, df = 35 / math.sqrt(125), 125**2 / (100**2 + 25**2)
    from scipy import stats

    assert math.isclose(result.p_runs, 2 * stats.t.sf(t, df), rel_tol=1e-9)
    assert result.p_value == result.p_runs > 0.05 and not result.significant
    assert result.ci_low < 0 < result.ci_high  # the hull reaches the run-level interval


def test_run_variance_pooled_over_cells_as_in_one_way_anova():
    from scipy import stats

    from train.paired_stats import pooled_run_variance, pooled_runs_test

    q = 100
    a = _answers("a", [[1] * 60 + [0] * 40, [1] * 40 + [0] * 60])  # 60%, 40%
    b = _answers("b", [[1] * 20 + [0] * 80, [1] * 10 + [0] * 90])  # 20%, 10%
    c = _answers("c", [[1] * 50 + [0] * (q - 50)])  # one run: no spread of its own
    # within-cell squares: (10^2 + 10^2) + (5^2 + 5^2) = 250 on (2 - 1) + (2 - 1) = 2 degrees of freedom
    assert pooled_run_variance([a, b, c]) == (125.0, 2)
    assert pooled_run_variance([c]) is None
    p, (lo, hi) = pooled_runs_test(a, b, 125.0, 2)
    se = math.sqrt(125.0 * (1 / 2 + 1 / 2))
    assert math.isclose(p, 2 * stats.t.sf(35 / se, 2), rel_tol=1e-9)
    assert math.isclose(hi - lo, 2 * stats.t.ppf(0.975, 2) * se, rel_tol=1e-9)
    # a one-run cell is tested against the pooled spread too: 50% against a's mean of 50% -> p = 1
    assert compare(c, a, run_variance=(125.0, 2)).p_runs == 1.0
    assert compare(c, a).p_runs is None  # without a pooled variance, one run has no spread to test
