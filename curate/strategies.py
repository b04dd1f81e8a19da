"""Selection strategies: plain functions ``(embeddings, k, *, seed, **opts) -> int64 indices``.

Registered by exact name in :data:`curate.registry.REGISTRY`; ``curate.registry.get_strategy`` lists
the valid names on a typo.
Indices are returned in selection order (the subset's ``rank``).

``l2-maxdiverse`` (exact greedy k-center) lives in :mod:`curate.kcenter`.
"""

from __future__ import annotations

import math

import numpy as np

from curate.kcenter import check_k, exact_sq_dists, l2_maxdiverse  # noqa: F401 (l2_maxdiverse re-exported)
from datasets_spec.errors import UserError


def _as_matrix(embeddings: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise UserError(f"embeddings must be a 2-D matrix, got shape {x.shape}")
    return x


def random_subset(embeddings: np.ndarray, k: int, *, seed: int = 0, **_: object) -> np.ndarray:
    """Seeded uniform sample without replacement; only ``len(embeddings)`` is used."""
    n = len(embeddings)
    check_k(k, n)
    return np.random.default_rng(seed).choice(n, size=k, replace=False).astype(np.int64)


def kmeans_balanced(
    embeddings: np.ndarray, k: int, *, seed: int = 0, niter: int = 20, **_: object
) -> np.ndarray:
    """FAISS k-means with k centroids (seeded); for each centroid in order, the nearest unused sample."""
    import faiss

    x = _as_matrix(embeddings)
    n, d = x.shape
    check_k(k, n)
    if k == n:
        return np.arange(n, dtype=np.int64)
    # min_points_per_centroid=1: small pools are legitimate here, FAISS would only warn about them.
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    index = faiss.IndexFlatL2(d)
    index.add(x)
    _, near = index.search(km.centroids, min(n, 16))
    used = np.zeros(n, dtype=bool)
    picks = np.empty(k, dtype=np.int64)
    for j in range(k):
        free = [int(i) for i in near[j] if i >= 0 and not used[i]]
        if free:
            i = free[0]
        else:  # every listed neighbour is taken: exact search over the unused samples
            rest = np.flatnonzero(~used)
            i = int(rest[np.argmin(exact_sq_dists(x[rest], km.centroids[j]))])
        used[i] = True
        picks[j] = i
    return picks


# Above this many rows the N x N range search (O(N^2 d)) gives way to the exact cluster-pruned search of
# curate.semdedup.dedup_clustered: at 20,000 x 512 the brute force is ~4e11 flops, seconds on one core.
EXACT_DEDUP_MAX_ROWS = 20_000


def check_dedup_eps(eps: float) -> None:
    """A finite distance >= 0 (0: keep every sample); NaN or inf would silently keep or drop everything."""
    if not math.isfinite(eps) or eps < 0:
        raise UserError(f"--dedup-eps must be a finite number >= 0 (got {eps})")


def dedup_pool(
    embeddings: np.ndarray, eps: float, *, exact_max_rows: int = EXACT_DEDUP_MAX_ROWS
) -> np.ndarray:
    """Indices kept after dropping near-duplicates: in index order, a sample is kept unless an earlier
    kept sample lies within L2 distance ``eps``. Exact FAISS range search (O(N^2 d) compute) up to
    ``exact_max_rows`` rows; above, the same rule through k-means cells (``dedup_clustered``)."""
    import faiss

    check_dedup_eps(eps)
    x = _as_matrix(embeddings)
    n = x.shape[0]
    if eps == 0 or n == 0:
        return np.arange(n, dtype=np.int64)
    if n > exact_max_rows:
        from curate.semdedup import dedup_clustered

        return dedup_clustered(x, eps)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    lims, _, ids = index.range_search(x, float(eps) ** 2)
    removed = np.zeros(n, dtype=bool)
    for i in range(n):
        if removed[i]:
            continue
        nb = ids[lims[i] : lims[i + 1]]
        removed[nb[nb > i]] = True
    return np.flatnonzero(~removed).astype(np.int64)


def coverage_report(embeddings: np.ndarray, selected: np.ndarray) -> dict:
    """Nearest selected sample for every pool sample (FAISS): coverage radius and cluster sizes."""
    import faiss

    x = _as_matrix(embeddings)
    sel = np.asarray(selected, dtype=np.int64)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x[sel]))
    sq, nearest = index.search(x, 1)
    dist = np.sqrt(np.maximum(sq[:, 0], 0.0))
    dist[sel] = 0.0
    nearest = nearest[:, 0]
    nearest[sel] = np.arange(len(sel))
    sizes = np.bincount(nearest, minlength=len(sel))
    return {
        "radius": round(float(dist.max()), 6),
        "mean_distance": round(float(dist.mean()), 6),
        "farthest_pool_index": int(np.argmax(dist)),
        "cluster_sizes": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "mean": round(float(sizes.mean()), 3),
            "max": int(sizes.max()),
            "singletons": int((sizes == 1).sum()),
        },
    }
