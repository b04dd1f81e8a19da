"""Shared k-means pieces of the cluster-based strategies (semdedup, coincide, the large-pool dedup).

Spherical k-means on unit vectors is what SemDeDup and COINCIDE both run (cosine geometry); FAISS does
the training, the assignment is a separate exact-as-float32 nearest-centroid pass over every row.
"""

from __future__ import annotations

import numpy as np

from datasets_spec.errors import UserError

# Rows per block of the assignment pass: 16,384 x 1,000 float32 distances are 64 MB.
ASSIGN_BLOCK = 16_384


def check_clusters(n_clusters: int, n: int, *, option: str = "n_clusters") -> int:
    """A cluster count in [1, pool size]; the message names the option and the pool."""
    if int(n_clusters) <= 0:
        raise UserError(f"{option} must be positive (got {n_clusters})")
    if int(n_clusters) > n:
        raise UserError(f"{option}={n_clusters} is larger than the pool ({n} samples after filters)")
    return int(n_clusters)


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Float32 copy with every row scaled to unit L2 norm (norms computed in float64)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise UserError(f"embeddings must be a 2-D matrix, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise UserError(f"embedding row {int(zero[0])} is all zeros: cosine similarity is undefined for it")
    return x / norms[:, None]


def kmeans(x: np.ndarray, n_clusters: int, *, seed: int, niter: int, spherical: bool,
           nredo: int = 1) -> np.ndarray:
    """FAISS k-means centroids (float32, ``n_clusters x d``), seeded; ``nredo`` restarts keep the best."""
    import faiss

    n, d = x.shape
    check_clusters(n_clusters, n)
    if niter <= 0 or nredo <= 0:
        raise UserError(f"niter and nredo must be positive (got niter={niter}, nredo={nredo})")
    # min_points_per_centroid=1: many small clusters are the point of these methods, FAISS only warns.
    km = faiss.Kmeans(d, int(n_clusters), niter=int(niter), seed=int(seed), spherical=spherical,
                      nredo=int(nredo), verbose=False, min_points_per_centroid=1)
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (L2, lowest index on ties) of every row and the float32 squared distance."""
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    labels = np.empty(len(x), dtype=np.int64)
    best = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), ASSIGN_BLOCK):
        block = x[start : start + ASSIGN_BLOCK]
        dist = block_sq_dists(block, centroids, c_sq)
        labels[start : start + len(block)] = np.argmin(dist, axis=1)
        best[start : start + len(block)] = dist[np.arange(len(block)), labels[start : start + len(block)]]
    return labels, best


def block_sq_dists(rows: np.ndarray, centroids: np.ndarray, c_sq: np.ndarray) -> np.ndarray:
    """``||r - c||^2`` for every row and centroid, float32 via one GEMM."""
    dist = rows @ centroids.T
    dist *= -2.0
    dist += np.einsum("ij,ij->i", rows, rows)[:, None]
    dist += c_sq[None, :]
    return dist


def members(labels: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """Row indices of each cluster, ascending (dataset order inside a cluster)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(n_clusters + 1))
    return [order[bounds[c] : bounds[c + 1]] for c in range(n_clusters)]
