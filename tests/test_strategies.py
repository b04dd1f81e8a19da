"""Selection strategies against brute-force references on seeded data."""

from __future__ import annotations

import numpy as np
import pytest

from curate.registry import STRATEGIES, get_strategy
from curate.strategies import (
    coverage_report,
    dedup_pool,
    exact_sq_dists,
    kmeans_balanced,
    l2_maxdiverse,
    random_subset,
)
from datasets_spec.errors import UserError


def brute_force_k_center(x: np.ndarray, k: int) -> list[int]:
    """Full N x N float64 distance matrix; first pick farthest from the mean; ties -> lowest index."""
    x64 = x.astype(np.float64)
    full = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    mean = np.mean(x, axis=0, dtype=np.float64)
    picks = [int(np.argmax(exact_sq_dists(x, mean)))]
    while len(picks) < k:
        min_d = full[picks].min(axis=0)
        min_d[picks] = -np.inf
        picks.append(int(np.argmax(min_d)))
    return picks


def seeded_cases():
    rng = np.random.default_rng(0)
    yield "gaussian", rng.normal(size=(300, 16)).astype(np.float32)
    unit = rng.normal(size=(250, 32)).astype(np.float32)
    yield "unit-norm", unit / np.linalg.norm(unit, axis=1, keepdims=True)
    # integer grid: many exact distance ties, so the lowest-index rule decides
    yield "grid-ties", rng.integers(0, 3, size=(200, 4)).astype(np.float32)
    # every row three times: duplicates tie exactly with each other
    yield "duplicates", np.repeat(rng.normal(size=(60, 8)).astype(np.float32), 3, axis=0)
    # large offset: float32 expansion rounding matters, the exact re-scoring must fix it
    yield "offset", (rng.normal(size=(200, 8)) * 1e-3 + 100.0).astype(np.float32)


@pytest.mark.parametrize("name,x", list(seeded_cases()), ids=lambda v: v if isinstance(v, str) else "")
def test_l2_maxdiverse_matches_brute_force(name, x):
    k = min(80, len(x))
    got = l2_maxdiverse(x, k, seed=0)
    assert got.dtype == np.int64
    assert got.tolist() == brute_force_k_center(x, k)
    assert len(set(got.tolist())) == k


def test_l2_maxdiverse_selects_every_row_when_k_equals_n():
    x = np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32)
    assert sorted(l2_maxdiverse(x, 40).tolist()) == list(range(40))


def test_random_is_seeded_and_distinct():
    x = np.empty((100, 0), dtype=np.float32)
    a, b, c = random_subset(x, 30, seed=3), random_subset(x, 30, seed=3), random_subset(x, 30, seed=4)
    assert a.tolist() == b.tolist() != c.tolist()
    assert len(set(a.tolist())) == 30 and a.max() < 100


def test_kmeans_balanced_picks_distinct_samples_nearest_their_centroid():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)).astype(np.float32) * 10
    x = (centres[rng.integers(0, 8, 400)] + rng.normal(size=(400, 16))).astype(np.float32)
    a = kmeans_balanced(x, 8, seed=0)
    assert a.tolist() == kmeans_balanced(x, 8, seed=0).tolist()
    assert len(set(a.tolist())) == 8
    # reference: the same seeded FAISS k-means, nearest sample per centroid by brute force
    import faiss

    km = faiss.Kmeans(16, 8, niter=20, seed=0, verbose=False, min_points_per_centroid=1)
    km.train(x)
    nearest = np.argmin(((x[:, None, :].astype(np.float64) - km.centroids[None]) ** 2).sum(-1), axis=0)
    assert a.tolist() == nearest.tolist()


def test_get_strategy_lists_valid_names():
    assert set(STRATEGIES) == {"l2-maxdiverse", "random", "kmeans-balanced", "semdedup", "coincide",
                               "top-score", "leverage", "centred-correlation", "d2-pruning", "influence",
                               "rules"}
    valid = ("valid: centred-correlation, coincide, d2-pruning, influence, kmeans-balanced, l2-maxdiverse, "
             "leverage")
    with pytest.raises(UserError, match=valid):
        get_strategy("l2-maxdiverce")


@pytest.mark.parametrize("k", [0, -1, 11])
def test_bad_k_is_a_user_error(k):
    x = np.zeros((10, 3), dtype=np.float32)
    for name, fn in STRATEGIES.items():
        extra = {"scores": np.zeros(10)} if name in ("top-score", "d2-pruning") else {}
        if name == "influence":
            extra = {"targets": np.ones((2, 3), dtype=np.float32)}
        if name == "rules":
            extra = {"difficulty": np.zeros(10), "has_image": np.ones(10, bool),
                     "minimum_groups": np.array(["a"] * 10)}
        with pytest.raises(UserError, match="k"):
            fn(x, k, seed=0, **extra)


def test_dedup_matches_brute_force():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(80, 6)).astype(np.float32)
    x = np.concatenate([base, base[:30] + 1e-3 * rng.normal(size=(30, 6)).astype(np.float32)])
    eps = 0.05
    kept = []
    for i in range(len(x)):
        if all(np.sqrt(((x[i].astype(np.float64) - x[j]) ** 2).sum()) >= eps for j in kept):
            kept.append(i)
    assert dedup_pool(x, eps).tolist() == kept
    assert len(kept) == 80


def test_coverage_report_matches_brute_force():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(150, 8)).astype(np.float32)
    sel = np.array([5, 17, 99, 120])
    full = np.sqrt(((x[:, None, :].astype(np.float64) - x[sel][None]) ** 2).sum(-1))
    report = coverage_report(x, sel)
    assert report["radius"] == pytest.approx(full.min(1).max(), abs=1e-4)
    sizes = np.bincount(full.argmin(1), minlength=4)
    assert report["cluster_sizes"]["max"] == sizes.max() and report["cluster_sizes"]["min"] == sizes.min()
