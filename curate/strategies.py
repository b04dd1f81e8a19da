"""Selection strategies: plain functions ``(embeddings, k, *, seed, **opts) -> int64 indices``.

Registered by exact name in :data:`curate.registry.REGISTRY`; ``curate.registry.get_strategy`` lists
the valid names on a typo.
Indices are returned in selection order (the subset's ``rank``).

``l2-maxdiverse`` is exact greedy k-center (farthest-point sampling) in L2:

* first pick: the sample farthest from the pool mean (``np.mean(X, axis=0, dtype=float64)``); the seed
  is recorded but does not change the result;
* then repeatedly the unselected sample whose distance to its nearest selected sample is largest;
* ties go to the lowest index; "distance" means the float64 sum of squared differences of the float32
  inputs, so the selection equals a brute-force float64 reference exactly.

Speed: each step is one ``sgemv`` pass over the float32 matrix (``||x||^2 - 2 X c + ||c||^2``), so the
loop runs at memory bandwidth with O(N) extra memory (squared norms + running minimum). The float32
values are within a rigorous bound ``T = (d + 4) u (|x| + |c|)^2`` of the exact ones; only samples whose
running minimum is within ``2T`` of the best are re-scored, first with a float64 BLAS product against
the selected centers and then, for values still within float64 rounding of each other, with the exact
difference formula. On continuous data that set is almost always a single sample.
"""

from __future__ import annotations

import numpy as np

from curate.budget import check_k
from datasets_spec.errors import UserError

# Unit roundoff of float32 and float64.
_U32 = 2.0**-24
_U64 = 2.0**-53


def _as_matrix(embeddings: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise UserError(f"embeddings must be a 2-D matrix, got shape {x.shape}")
    return x


def exact_sq_dists(rows: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Exact reference distance: float64 sum of squared differences, one value per row."""
    diff = rows.astype(np.float64) - np.asarray(point, dtype=np.float64)
    return (diff * diff).sum(axis=1)


def _first_pick(x: np.ndarray, sqn: np.ndarray) -> int:
    """The sample farthest from the pool mean (exact float64 distances, lowest index on ties).

    One sgemv pass gives float32 distances to the mean; samples within the rounding bound of the best
    (including the rounding of the mean to float32) are re-scored exactly.
    """
    mean = np.mean(x, axis=0, dtype=np.float64)
    mean32 = mean.astype(np.float32)
    approx = x @ mean32
    approx *= -2.0
    approx += sqn
    approx += np.float32(mean32 @ mean32)
    norm_x, norm_m = float(np.sqrt(sqn.max())), float(np.sqrt(mean @ mean))
    reach = norm_x + norm_m
    bound = 1.01 * ((x.shape[1] + 4) * _U32 * reach**2 + 2 * reach * _U32 * norm_m)
    cand = np.flatnonzero(approx >= approx.max() - 2.0 * bound)
    return int(cand[int(np.argmax(exact_sq_dists(x[cand], mean)))])


class _Centers:
    """Selected centers kept in float64 (O(k d)) for the exact re-scoring of near-ties."""

    def __init__(self, k: int, d: int) -> None:
        self.rows = np.empty((k, d), dtype=np.float64)
        self.sqn = np.empty(k, dtype=np.float64)
        self.n = 0

    def add(self, row: np.ndarray) -> None:
        r = row.astype(np.float64)
        self.rows[self.n] = r
        self.sqn[self.n] = r @ r
        self.n += 1

    def exact_min(self, x: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Exact min squared distance of each candidate to the centers (two-level refinement)."""
        c = self.rows[: self.n]
        pts = x[cand].astype(np.float64)
        approx = (np.einsum("ij,ij->i", pts, pts)[:, None] + self.sqn[None, : self.n] - 2.0 * pts @ c.T)
        # float64 expansion error is ~d * u64 * (|x| + |c|)^2; anything within that of a candidate's
        # minimum is recomputed with the exact formula.
        scale = (np.sqrt(np.einsum("ij,ij->i", pts, pts))[:, None] + np.sqrt(self.sqn[None, : self.n])) ** 2
        tol = (c.shape[1] + 4) * _U64 * scale * 4
        low = approx.min(axis=1, keepdims=True)
        out = np.empty(len(cand))
        for j in range(len(cand)):
            near = np.flatnonzero(approx[j] <= low[j] + tol[j] + tol[j].max())
            out[j] = exact_sq_dists(c[near], pts[j]).min()
        return out


def l2_maxdiverse(embeddings: np.ndarray, k: int, *, seed: int = 0, **_: object) -> np.ndarray:
    """Exact greedy k-center in L2; see the module docstring for the first pick and tie rules."""
    x = _as_matrix(embeddings)
    n, d = x.shape
    check_k(k, n)
    sqn = np.einsum("ij,ij->i", x, x)
    max_norm = float(np.sqrt(sqn.max()))
    min_d = np.full(n, np.inf, dtype=np.float32)
    dist = np.empty(n, dtype=np.float32)
    centers = _Centers(k, d)
    picks = np.empty(k, dtype=np.int64)
    bound = 0.0
    pick = _first_pick(x, sqn)
    for step in range(k):
        picks[step] = pick
        c = x[pick]
        centers.add(c)
        if step == k - 1:
            break
        np.dot(x, c, out=dist)
        dist *= -2.0
        dist += sqn
        dist += sqn[pick]
        np.minimum(min_d, dist, out=min_d)
        min_d[pick] = -np.inf
        bound = max(bound, (d + 4) * _U32 * 1.01 * (max_norm + float(np.sqrt(sqn[pick]))) ** 2)
        pick = _argmax_exact(x, min_d, bound, centers)
    return picks


def _argmax_exact(x: np.ndarray, min_d: np.ndarray, bound: float, centers: _Centers) -> int:
    best = int(np.argmax(min_d))
    top = float(min_d[best])
    cand = np.flatnonzero(min_d >= top - 2.0 * bound)
    if len(cand) == 1:
        return best
    exact = centers.exact_min(x, cand)
    return int(cand[int(np.argmax(exact))])  # argmax: first (lowest index) among exact ties


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


def dedup_pool(
    embeddings: np.ndarray, eps: float, *, exact_max_rows: int = EXACT_DEDUP_MAX_ROWS
) -> np.ndarray:
    """Indices kept after dropping near-duplicates: in index order, a sample is kept unless an earlier
    kept sample lies within L2 distance ``eps``. Exact FAISS range search (O(N^2 d) compute) up to
    ``exact_max_rows`` rows; above, the same rule through k-means cells (``dedup_clustered``)."""
    import faiss

    if eps < 0:
        raise UserError(f"--dedup-eps must be >= 0 (got {eps})")
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
