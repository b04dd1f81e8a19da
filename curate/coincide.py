"""COINCIDE (Lee, Li and Hwang, "Concept-skill Transferability-based Data Selection for Large
Vision-Language Models", EMNLP 2024).

The algorithm as the authors' code runs it (G-JWLee/COINCIDE_code,
``COINCIDE_cluster/tinyllava/eval/score/coincide/cluster_transferability.py`` and
``.../coincide/cluster_wise_prune.py``; the embeddings are the reference model's hidden states of several
layers, concatenated: ``curate embed --model llava:runs/<run> --layers ...``):

1. spherical k-means into many clusters (10,000 for LLaVA-665K, 50 iterations; cosine geometry);
2. transferability of cluster c: the mean cosine similarity of its centroid to the other centroids,
   leaving out those above 0.9 (itself and near-copies);
3. density of cluster c: the mean Gaussian kernel ``exp(-|x - y|^2 / (2 gamma^2))`` over all pairs of
   its members (gamma = 1), computed in float64 (the authors note float16 changes the result);
4. cluster score = transferability / density, weights = softmax(score / temp) (temp 0.1 in their
   LLaVA scripts): clusters that transfer to many others get more samples, dense (redundant) and
   isolated ones fewer;
5. clusters in decreasing weight order each receive round(remaining * weight), the weights renormalised
   over the clusters not yet visited; a cluster smaller than its share gives all of it and the rest moves
   on; inside a cluster the samples are MMD prototypes: greedily the sample whose addition minimises the
   MMD between the chosen set and the cluster (same kernel).

Differences, and why: the budget is met exactly (the authors' rounding can end a few samples short; here a
shortfall is filled by continuing the per-cluster MMD greedy in the same weight order); the MMD greedy is
the same objective computed incrementally (O(n) per pick instead of re-evaluating every candidate set);
argmin ties go to the lowest dataset index. Seeded through the k-means seed.
"""

from __future__ import annotations

import math

import numpy as np

from curate.clustering import assign, check_clusters, kmeans, members, unit_rows
from curate.kcenter import check_k
from datasets_spec.errors import UserError

# 10,000 clusters for 665K samples in the paper: about 66 samples per cluster.
SAMPLES_PER_CLUSTER = 66.5
# Centroids closer than this (cosine) are copies of one concept and do not count as transfer targets.
SELF_SIMILARITY = 0.9
BLOCK = 2048


def default_clusters(n: int) -> int:
    return max(1, math.ceil(n / SAMPLES_PER_CLUSTER))


def transferability(centroids: np.ndarray) -> np.ndarray:
    """Mean cosine similarity of each centroid to the others, excluding similarities above 0.9."""
    c = unit_rows(centroids).astype(np.float64)
    total = np.zeros(len(c))
    count = np.zeros(len(c))
    for start in range(0, len(c), BLOCK):
        sims = c[start : start + BLOCK] @ c.T
        far = sims <= SELF_SIMILARITY
        total[start : start + BLOCK] = np.where(far, sims, 0.0).sum(axis=1)
        count[start : start + BLOCK] = far.sum(axis=1)
    return np.divide(total, count, out=np.zeros(len(c)), where=count > 0)


class _MMDGreedy:
    """Greedy MMD prototypes of one cluster; ``take(m)`` extends the chosen list by m samples.

    Holds O(n) state per cluster (kernel column sums, running sums to the chosen set); member rows are
    read from the shared matrix when needed, so all clusters together never copy the matrix.
    """

    def __init__(self, x: np.ndarray, idx: np.ndarray, gamma: float) -> None:
        self.x, self.idx = x, idx
        self.scale = 2.0 * gamma * gamma
        n = len(idx)
        self.colsum = np.zeros(n)
        rows = self._rows()
        sq = np.einsum("ij,ij->i", rows, rows)
        for start in range(0, n, BLOCK):
            block = slice(start, start + BLOCK)
            self.colsum[block] = self._kernel(rows[block], sq[block], rows, sq).sum(axis=1)
        self.density = float(self.colsum.sum() / (n * n))
        self.r = np.zeros(n)  # sum of kernel values to the chosen samples
        self.chosen: list[int] = []
        self.free = np.ones(n, dtype=bool)

    def _rows(self) -> np.ndarray:
        return self.x[self.idx].astype(np.float64)

    def _kernel(self, a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
        d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
        return np.exp(-np.maximum(d2, 0.0) / self.scale)

    def take(self, m: int) -> list[int]:
        n = len(self.idx)
        m = min(m, int(self.free.sum()))
        if m <= 0:
            return []
        rows = self._rows()
        sq = np.einsum("ij,ij->i", rows, rows)
        out = []
        for _ in range(m):
            size = len(self.chosen) + 1
            # MMD^2(S + c) up to terms equal for every candidate c
            cost = -2.0 * self.colsum / (n * size) + (2.0 * self.r + 1.0) / (size * size)
            cost[~self.free] = np.inf
            pick = int(np.argmin(cost))
            self.r += self._kernel(rows[pick : pick + 1], sq[pick : pick + 1], rows, sq)[0]
            self.free[pick] = False
            self.chosen.append(pick)
            out.append(int(self.idx[pick]))
        return out


def cluster_weights(score: np.ndarray, temp: float) -> np.ndarray:
    """softmax(score / temp) over the clusters."""
    z = np.exp((score - score.max()) / temp)
    return z / z.sum()


def coincide(
    embeddings: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    n_clusters: int | None = None,
    niter: int = 20,
    nredo: int = 1,
    temp: float = 0.1,
    gamma: float = 1.0,
    report: dict | None = None,
) -> np.ndarray:
    """k samples chosen by COINCIDE (module docstring); int64 indices in selection order."""
    n = len(embeddings)
    check_k(k, n)
    if temp <= 0 or gamma <= 0:
        raise UserError(f"coincide: temp and gamma must be positive (got temp={temp}, gamma={gamma})")
    n_clusters = check_clusters(default_clusters(n) if n_clusters is None else n_clusters, n)
    x = unit_rows(embeddings)
    centroids = kmeans(x, n_clusters, seed=seed, niter=niter, spherical=True, nredo=nredo)
    labels, _ = assign(x, centroids)
    clusters = members(labels, n_clusters)
    transfer = transferability(centroids)
    greedy = [_MMDGreedy(x, idx, gamma) if len(idx) else None for idx in clusters]
    density = np.array([g.density if g is not None else np.inf for g in greedy])
    score = np.where(np.isfinite(density), transfer / density, -np.inf)
    picks = _allocate(clusters, greedy, score, temp, k)
    if report is not None:
        counts = np.bincount(labels[picks], minlength=n_clusters)
        nonempty = np.array([len(c) > 0 for c in clusters])
        report.update(n_clusters=n_clusters, clusters_represented=int((counts[nonempty] > 0).sum()),
                      clusters_nonempty=int(nonempty.sum()), temp=temp, gamma=gamma)
    return np.asarray(picks, dtype=np.int64)


def _allocate(clusters, greedy, score: np.ndarray, temp: float, k: int) -> list[int]:
    """Visit clusters by decreasing weight; each takes round(remaining * weight renormalised over the
    clusters not yet visited); repeat over clusters with samples left until k are chosen."""
    live = np.flatnonzero(np.isfinite(score))
    order = live[np.argsort(-score[live], kind="stable")]
    picks: list[int] = []
    while len(picks) < k:
        before = len(picks)
        z = np.exp((score[order] - score[order].max()) / temp)
        suffix = np.cumsum(z[::-1])[::-1]
        for pos, c in enumerate(order.tolist()):
            share = int(round((k - len(picks)) * z[pos] / suffix[pos]))
            picks.extend(greedy[c].take(share))
            if len(picks) == k:
                break
        if len(picks) == before:  # every share rounded to zero: one more sample per cluster, in order
            for c in order.tolist():
                picks.extend(greedy[c].take(1))
                if len(picks) == k:
                    break
        order = np.array([c for c in order.tolist() if greedy[c].free.any()], dtype=np.int64)
    return picks
