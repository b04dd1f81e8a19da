"""SemDeDup and the cluster-pruned exact dedup against brute-force float64 references."""

from __future__ import annotations

import numpy as np
import pytest

from curate.semdedup import dedup_clustered, semdedup
from curate.strategies import dedup_pool
from datasets_spec.errors import UserError


def greedy_reference(x: np.ndarray, close) -> list[int]:
    """Brute force: in index order keep a row unless close(row, kept row) for an earlier kept one."""
    kept: list[int] = []
    for i in range(len(x)):
        if not any(close(x[i], x[j]) for j in kept):
            kept.append(i)
    return kept


def l2_close(eps: float):
    return lambda a, b: float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).sum()) < eps * eps


def cos_close(eps: float):
    def close(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        return float(a @ b / np.sqrt((a @ a) * (b @ b))) > 1.0 - eps

    return close


def planted(n_groups: int = 40, d: int = 16, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """Groups of near-duplicates: chains a, a+s, a+2s (|s| = 0.07, so a~b, b~c but not a~c at eps 0.1),
    exact copies and lone points, shuffled; every pair distance is 0.07, 0.14 or above 0.3."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        base = rng.normal(size=d) * scale * 3 + (g % 5) * 10
        step = rng.normal(size=d)
        step *= 0.07 / np.linalg.norm(step)
        rows += [base, base + step, base + 2 * step, base + [0.0] * d, base + 5 * step]
    x = np.asarray(rows, dtype=np.float32)
    return x[rng.permutation(len(x))]


@pytest.mark.parametrize("n_clusters", [1, 3, 17, 60])
def test_clustered_dedup_equals_exact_search_and_brute_force(n_clusters: int) -> None:
    x = planted()
    eps = 0.1
    ref = greedy_reference(x, l2_close(eps))
    assert dedup_pool(x, eps).tolist() == ref
    assert dedup_clustered(x, eps, n_clusters=n_clusters).tolist() == ref
    assert 80 <= len(ref) < len(x)


def test_a_chain_keeps_both_ends_hand_made() -> None:
    # 0 -- 0.07 -- 0.14 on a line, eps 0.1: the middle is near the kept first point and is dropped; the
    # last is near only the dropped middle, so it stays (SemDeDup's own code would drop it too).
    x = np.zeros((4, 3), dtype=np.float32)
    x[:, 0] = [0.0, 0.07, 0.14, 0.0]
    x[:, 1] = 1.0
    assert dedup_pool(x, 0.1).tolist() == [0, 2]
    assert dedup_clustered(x, 0.1, n_clusters=2).tolist() == [0, 2]


def test_dedup_pool_switches_to_the_clustered_search_above_the_limit() -> None:
    x = planted(n_groups=80, seed=3, scale=0.2)
    for eps in (0.05, 0.1, 0.2):
        ref = greedy_reference(x, l2_close(eps))
        assert dedup_pool(x, eps, exact_max_rows=10).tolist() == ref
        assert dedup_pool(x, eps).tolist() == ref


def test_clustered_dedup_random_data_many_cells_matches_range_search() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2500, 6)).astype(np.float32)
    for eps in (0.5, 1.0):
        expected = dedup_pool(x, eps)
        got = dedup_clustered(x, eps, n_clusters=40, seed=1)
        assert got.tolist() == expected.tolist()
        assert len(expected) < len(x)  # the radius does remove samples


def test_semdedup_one_cluster_equals_the_exact_dedup_on_unit_vectors() -> None:
    x = planted(seed=2)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for eps in (0.0005, 0.002, 0.01):
        ref = greedy_reference(x, cos_close(eps))
        report: dict = {}
        got = semdedup(x, len(ref), eps=eps, n_clusters=1, report=report)
        assert sorted(got.tolist()) == ref
        # cosine > 1 - eps on unit vectors is L2 < sqrt(2 eps)
        assert dedup_pool(x, float(np.sqrt(2 * eps))).tolist() == ref
        assert report["kept"] == len(ref)


def test_semdedup_is_exact_within_clusters_only() -> None:
    rng = np.random.default_rng(1)
    centres = np.eye(8, 32, dtype=np.float32) * 10
    rows, truth = [], []
    for c in range(8):
        pts = centres[c] + rng.normal(size=(60, 32)).astype(np.float32) * 0.6
        rows.append(pts)
        truth += [c] * 60
    x = np.concatenate(rows)
    perm = rng.permutation(len(x))
    x, truth = x[perm], np.asarray(truth)[perm]
    eps = 0.02
    expected = []
    for c in range(8):
        idx = np.flatnonzero(truth == c)
        expected += [int(idx[i]) for i in greedy_reference(x[idx], cos_close(eps))]
    report: dict = {}
    got = semdedup(x, 100, eps=eps, n_clusters=8, seed=0, report=report)
    assert report["kept"] == len(expected)
    assert set(got.tolist()) <= set(expected) and len(set(got.tolist())) == 100


def test_semdedup_budget_search_fits_k_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 24)).astype(np.float32)
    report: dict = {}
    a = semdedup(x, 300, seed=4, n_clusters=5, report=report)
    b = semdedup(x, 300, seed=4, n_clusters=5)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 300
    assert 300 <= report["kept"] <= 301
    # the searched eps reproduces the kept set when given explicitly, and a larger budget needs less dedup
    again: dict = {}
    semdedup(x, 300, seed=4, n_clusters=5, eps=report["eps"], report=again)
    assert abs(again["kept"] - report["kept"]) <= 2
    wider: dict = {}
    semdedup(x, 900, seed=4, n_clusters=5, report=wider)
    assert wider["eps"] < report["eps"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": -0.1}, "outside [0, 2]"),
        ({"eps": 2.5}, "outside [0, 2]"),
        ({"n_clusters": 101}, "n_clusters=101 is larger than the pool (100 samples"),
        ({"eps": 1.9, "n_clusters": 1}, "fewer than k=50"),
    ],
)
def test_semdedup_bad_input(kwargs: dict, message: str) -> None:
    x = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    with pytest.raises(UserError) as err:
        semdedup(x, 50, **kwargs)
    assert message in str(err.value)
