"""COINCIDE: planted clusters, and each piece against its definition computed by brute force."""

from __future__ import annotations

import numpy as np
import pytest

from curate.coincide import _allocate, _MMDGreedy, cluster_weights, coincide, transferability
from datasets_spec.errors import UserError

CENTRAL, CENTRAL_DENSE, ISOLATED, ISOLATED_DENSE = range(5), 5, 6, 7


def planted(seed: int, d: int = 32, per: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Eight clusters of 100: five spread clusters around a shared direction u (centroid cosine 0.5
    to each other), one as central but dense, one spread but isolated (cosine ~0.18 to the others), one
    isolated and dense."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0].T
    u = basis[0]
    specs = [(u + basis[1 + i], 0.2) for i in range(5)]
    specs += [(u + basis[6], 0.01), (0.2 * u + basis[7], 0.2), (0.2 * u + basis[8], 0.01)]
    rows, labels = [], []
    for c, (centre, spread) in enumerate(specs):
        centre = centre / np.linalg.norm(centre)
        rows.append(centre + rng.normal(size=(per, d)) * spread / np.sqrt(d))
        labels += [c] * per
    x, labels = np.concatenate(rows).astype(np.float32), np.asarray(labels)
    perm = rng.permutation(len(x))
    return x[perm], labels[perm]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [80, 160])
def test_planted_clusters_all_represented_dense_and_isolated_down_weighted(seed: int, k: int) -> None:
    x, labels = planted(seed)
    report: dict = {}
    picks = coincide(x, k, n_clusters=8, nredo=10, seed=seed, report=report)
    assert len(set(picks.tolist())) == k
    counts = np.bincount(labels[picks], minlength=8)
    assert (counts > 0).all(), counts  # every concept keeps at least one sample
    assert report["clusters_represented"] == 8
    central = counts[list(CENTRAL)]
    assert counts[CENTRAL_DENSE] < central.min(), counts  # redundancy costs samples
    assert counts[ISOLATED] < counts[CENTRAL_DENSE], counts  # so does not transferring to the rest
    assert counts[ISOLATED_DENSE] <= counts[ISOLATED], counts
    assert central.sum() > 0.75 * k


def test_seeded_and_deterministic() -> None:
    x, _ = planted(4)
    a = coincide(x, 100, n_clusters=12, seed=3)
    assert a.tolist() == coincide(x, 100, n_clusters=12, seed=3).tolist()
    assert a.tolist() != coincide(x, 100, n_clusters=12, seed=4).tolist()


def test_transferability_hand_computed() -> None:
    c = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.999, 0.0447]], dtype=np.float32)
    got = transferability(c)
    cos = (c / np.linalg.norm(c, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T
    for i in range(4):
        others = [cos[i, j] for j in range(4) if cos[i, j] <= 0.9]
        assert got[i] == pytest.approx(np.mean(others))
    # centroid 0 and 3 are near-copies (cos 0.999): neither counts the other nor itself
    assert got[0] == pytest.approx((0.6 + 0.0) / 2)


def _mmd2(k: np.ndarray, chosen: list[int]) -> float:
    s = np.asarray(chosen)
    return k.mean() + k[np.ix_(s, s)].mean() - 2 * k[:, s].mean()


def test_mmd_greedy_equals_brute_force_over_candidates() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 5)).astype(np.float32) * 0.7
    d2 = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-d2 / 2.0)
    expected: list[int] = []
    for _ in range(8):
        rest = [c for c in range(25) if c not in expected]
        expected.append(min(rest, key=lambda c: (_mmd2(kernel, expected + [c]), c)))
    greedy = _MMDGreedy(x, np.arange(25), gamma=1.0)
    assert greedy.density == pytest.approx(kernel.mean())
    assert greedy.take(3) + greedy.take(5) == expected


def test_allocation_follows_renormalised_weights() -> None:
    # three clusters of 10; scores 0.3, 0.2, 0.1 at temp 0.1 -> softmax e^3 : e^2 : e^1
    x = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    clusters = [np.arange(0, 10), np.arange(10, 20), np.arange(20, 30)]
    greedy = [_MMDGreedy(x, idx, 1.0) for idx in clusters]
    picks = _allocate(clusters, greedy, np.array([0.1, 0.3, 0.2]), 0.1, 12)
    w = np.exp([3.0, 2.0, 1.0])
    first = round(12 * w[0] / w.sum())  # cluster 1 first
    second = round((12 - first) * w[1] / (w[1] + w[2]))  # then cluster 2, renormalised
    assert (first, second) == (8, 3)
    assert [int(p) // 10 for p in picks] == [1] * 8 + [2] * 3 + [0]
    softmax = np.exp([1, 3, 2]) / np.exp([1, 3, 2]).sum()
    assert cluster_weights(np.array([0.1, 0.3, 0.2]), 0.1) == pytest.approx(softmax)


def test_small_clusters_pass_their_share_on_and_k_is_met_exactly() -> None:
    x = np.random.default_rng(2).normal(size=(40, 4)).astype(np.float32)
    clusters = [np.arange(0, 2), np.arange(2, 40)]
    greedy = [_MMDGreedy(x, idx, 1.0) for idx in clusters]
    picks = _allocate(clusters, greedy, np.array([5.0, 0.0]), 0.1, 20)
    assert len(picks) == 20 and set(range(2)) <= set(picks)
    assert len(set(picks)) == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"n_clusters": 51}, "n_clusters=51 is larger than the pool (50 samples"),
     ({"temp": 0.0}, "temp and gamma must be positive")],
)
def test_bad_input(kwargs: dict, message: str) -> None:
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    with pytest.raises(UserError) as err:
        coincide(x, 10, **kwargs)
    assert message in str(err.value)


def test_every_pick_unique_across_budgets() -> None:
    x, _ = planted(0, per=30)
    for k in (1, 7, 120, 240):
        picks = coincide(x, k, n_clusters=10)
        assert len(picks) == k == len(set(picks.tolist()))
