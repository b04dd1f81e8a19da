"""D2-Pruning (Maharana, Yadav and Bansal, "D2 Pruning: Message Passing for Balancing Diversity and
Difficulty in Data Pruning", ICLR 2024, arXiv:2310.07931).

The method of the paper's Section 3, as the authors' code runs it (adymaharana/d2pruning,
``core/data/sampling.py``, ``GraphDensitySampler`` with ``graph_mode='sum'`` and
``graph_sampling_mode='weighted'``):

1. graph (Sec. 3.1): each sample is a node, connected to its ``n_neighbors`` nearest neighbours in
   Euclidean distance of the embeddings; the edges are undirected (i ~ j when either is among the
   other's neighbours); node feature ``x_i`` = the sample's difficulty score (e.g. a warm-up run's
   loss, ``curate score --by loss``);
2. forward message passing (Sec. 3.2): every node receives ``exp(-gamma_f d(i, j)) x_j`` from each
   neighbour and adds them to its own score: ``x'_i = x_i + sum_{j ~ i} exp(-gamma_f d(i, j)) x_j`` --
   a difficult sample in a region of difficult samples ranks highest;
3. data selection by reverse message passing (Sec. 3.3): repeatedly take the unselected node with the
   highest current score, then lower each neighbour j of the chosen node k by
   ``exp(-gamma_r d(k, j)) x'_k`` -- its neighbourhood is now represented, so diversity is kept.

Defaults, and why: ``n_neighbors = 5`` and ``gamma_r = 0.1`` are the values of the authors' CIFAR and
ImageNet commands (their README); ``gamma_f = 1`` is the constant their code applies in the forward
pass (``exp(-distance)``). Scores are used as they are (the paper's definition; the authors' DataComp
script additionally shifts CLIP scores by a constant, which is specific to that score).

Differences, and why: the greedy uses a lazy max-heap instead of an arg-max over the pool per pick
(O((n + k * degree) log n) instead of O(n k); the same order, ties to the lowest pool index). For pools
above ``EXACT_KNN_MAX`` the neighbours are approximate (k-means into ``2 sqrt(n)`` cells trained on a
seeded sample; each cell's rows are compared exactly with the rows of the ``NPROBE`` cells nearest its
centroid, one GEMM per cell -- the authors also search a FAISS index for DataComp): the exact search is
quadratic in n (hours at 665K on two cores); edge distances are then recomputed exactly in float64 so
the graph is symmetric and deterministic. Samples without a score (NaN) are not nodes and never
selected.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from curate.kcenter import check_k
from datasets_spec.errors import UserError

DEFAULT_NEIGHBORS = 5
DEFAULT_GAMMA_FORWARD = 1.0
DEFAULT_GAMMA_REVERSE = 0.1
# Up to this many pool samples the neighbours are exact: the flat search is n^2 d (4e11 flops at
# 20K x 512, under a minute on two cores), beyond that the cells are cheaper.
EXACT_KNN_MAX = 20_000
# Cells searched per cell for larger pools: recall@5 0.999 with 16 on the benchmark data at 66K, for
# 4x the cost of 4; recall@5 at 4 is measured in bench/trainfree_bench.py (knn-recall).
NPROBE = 4
# k-means training points per cell (FAISS warns below 39).
IVF_TRAIN_PER_LIST = 64
SEARCH_BLOCK = 16_384
EDGE_BLOCK = 16_384


def check_neighbors(n_neighbors: int) -> None:
    if n_neighbors <= 0:
        raise UserError(f"n_neighbors must be positive (got {n_neighbors})")


def check_gamma(value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise UserError(f"gamma must be a finite number >= 0 (got {value})")


def nearest_neighbors(x: np.ndarray, n_neighbors: int, *, seed: int = 0) -> np.ndarray:
    """Each row's ``n_neighbors`` nearest other rows (L2), nearest first; -1 where fewer were found."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    want = min(n_neighbors + 1, n)  # +1: a row finds itself (or a copy of itself) first
    found = _exact_search(x, want) if n <= EXACT_KNN_MAX else _clustered_search(x, want, seed)
    rows = np.arange(n)[:, None]
    valid = (found >= 0) & (found != rows)
    keep = valid & (np.cumsum(valid, axis=1) <= n_neighbors)
    out = np.full((n, n_neighbors), -1, dtype=np.int64)
    slot = np.cumsum(keep, axis=1) - 1
    out[np.nonzero(keep)[0], slot[keep]] = found[keep]
    return out


def _exact_search(x: np.ndarray, want: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    found = np.empty((len(x), want), dtype=np.int64)
    for start in range(0, len(x), SEARCH_BLOCK):
        _, found[start : start + SEARCH_BLOCK] = index.search(x[start : start + SEARCH_BLOCK], want)
    return found


def _clustered_search(x: np.ndarray, want: int, seed: int) -> np.ndarray:
    """Approximate neighbours: k-means into 2 sqrt(n) cells (trained on a seeded sample); the rows of a
    cell are compared exactly (one GEMM) with the rows of the ``NPROBE`` cells nearest its centroid."""
    from curate.clustering import assign, block_sq_dists, kmeans, members

    n = len(x)
    # 2 sqrt(n) cells: the GEMMs cost n x NPROBE x n / nlist x d, the k-means on the sample nlist^2 x d
    nlist = max(1, round(2 * math.sqrt(n)))
    sample = np.random.default_rng(seed).choice(n, size=min(n, IVF_TRAIN_PER_LIST * nlist), replace=False)
    centroids = kmeans(x[np.sort(sample)], nlist, seed=seed, niter=10, spherical=False)
    labels, _ = assign(x, centroids)
    cells = members(labels, nlist)
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    probes = np.argsort(block_sq_dists(centroids, centroids, c_sq), axis=1, kind="stable")[:, :NPROBE]
    sq = np.einsum("ij,ij->i", x, x)
    found = np.full((n, want), -1, dtype=np.int64)
    for cell, rows in enumerate(cells):
        if len(rows) == 0:
            continue
        cand = np.sort(np.concatenate([cells[p] for p in probes[cell]]))
        dist = block_sq_dists(x[rows], x[cand], sq[cand])
        top = min(want, len(cand))
        part = np.argpartition(dist, top - 1, axis=1)[:, :top]
        order = np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable")
        found[rows, :top] = cand[np.take_along_axis(part, order, axis=1)]
    return found


def undirected_edges(x: np.ndarray, neighbors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique edges ``a < b`` of the symmetrised kNN graph and their Euclidean lengths (float64)."""
    n = len(neighbors)
    src = np.repeat(np.arange(n, dtype=np.int64), neighbors.shape[1])
    dst = neighbors.ravel()
    ok = dst >= 0
    lo, hi = np.minimum(src[ok], dst[ok]), np.maximum(src[ok], dst[ok])
    key = np.unique(lo * n + hi)
    a, b = key // n, key % n
    dist = np.empty(len(a))
    for start in range(0, len(a), EDGE_BLOCK):
        sl = slice(start, start + EDGE_BLOCK)
        diff = x[a[sl]].astype(np.float64) - x[b[sl]]
        dist[sl] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return a, b, dist


def forward_messages(scores: np.ndarray, a: np.ndarray, b: np.ndarray, dist: np.ndarray,
                     gamma_forward: float) -> np.ndarray:
    """``x_i + sum_{j ~ i} exp(-gamma_f d(i, j)) x_j`` over the undirected edges (a, b)."""
    weight = np.exp(-gamma_forward * dist)
    n = len(scores)
    return (scores + np.bincount(a, weights=weight * scores[b], minlength=n)
            + np.bincount(b, weights=weight * scores[a], minlength=n))


def _adjacency(n: int, a: np.ndarray, b: np.ndarray, weight: np.ndarray):
    """CSR lists (indptr, neighbour, weight) of the undirected edges, neighbours ascending."""
    src, dst, w = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([weight, weight])
    order = np.lexsort((dst, src))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    return indptr, dst[order], w[order]


def reverse_select(values: np.ndarray, a: np.ndarray, b: np.ndarray, dist: np.ndarray, k: int,
                   gamma_reverse: float) -> np.ndarray:
    """Greedy picks: highest current value (ties: lowest index), then lower each neighbour j of the pick
    by ``exp(-gamma_r d(k, j)) x_k``. A lazy max-heap holds every value a node has had; stale entries
    are skipped on pop."""
    current = np.array(values, dtype=np.float64)
    indptr, nbr, weight = _adjacency(len(current), a, b, np.exp(-gamma_reverse * dist))
    heap = [(-v, i) for i, v in enumerate(current.tolist())]
    heapq.heapify(heap)
    chosen = np.zeros(len(current), dtype=bool)
    picks: list[int] = []
    while len(picks) < k:
        neg, i = heapq.heappop(heap)
        if chosen[i] or -neg != current[i]:
            continue
        chosen[i] = True
        picks.append(i)
        lo, hi = indptr[i], indptr[i + 1]
        js = nbr[lo:hi]
        current[js] -= weight[lo:hi] * current[i]
        for j in js[~chosen[js]].tolist():
            heapq.heappush(heap, (-current[j], j))
    return np.asarray(picks, dtype=np.int64)


def d2_pruning(embeddings: np.ndarray, k: int, *, seed: int = 0, scores: np.ndarray,
               n_neighbors: int = DEFAULT_NEIGHBORS, gamma_forward: float = DEFAULT_GAMMA_FORWARD,
               gamma_reverse: float = DEFAULT_GAMMA_REVERSE, report: dict | None = None) -> np.ndarray:
    """D2-Pruning's k picks in selection order (pool indices); ``scores`` = difficulty, NaN = none."""
    check_neighbors(n_neighbors)
    check_gamma(gamma_forward)
    check_gamma(gamma_reverse)
    values = np.asarray(scores, dtype=np.float64)
    if len(values) != len(embeddings):
        raise ValueError("d2_pruning: one score per pool sample")
    check_k(k, len(values))
    nodes = np.flatnonzero(~np.isnan(values))
    if k > len(nodes):
        raise UserError(f"k={k} is larger than the {len(nodes)} pool samples that have a score")
    # no copy of the matrix when every sample is scored (the usual case: 1.4 GB at 665K x 512)
    x = np.asarray(embeddings) if len(nodes) == len(values) else np.asarray(embeddings)[nodes]
    neighbors = nearest_neighbors(x, n_neighbors, seed=seed)
    a, b, dist = undirected_edges(x, neighbors)
    updated = forward_messages(values[nodes], a, b, dist, gamma_forward)
    picks = reverse_select(updated, a, b, dist, k, gamma_reverse)
    if report is not None:
        report.update(n_neighbors=n_neighbors, gamma_forward=gamma_forward, gamma_reverse=gamma_reverse,
                      nodes=int(len(nodes)), edges=int(len(a)),
                      knn="exact" if len(nodes) <= EXACT_KNN_MAX else f"{NPROBE} nearest k-means cells")
    return nodes[picks]
