"""SemDeDup (Abbas et al. 2023, "SemDeDup: data-efficient learning at web-scale through semantic
deduplication") and the cluster-based exact near-duplicate filter behind ``--dedup-eps`` on large pools.

``semdedup``: spherical k-means (FAISS) on the L2-normalised features; inside each cluster, in dataset
order, a sample is dropped when its cosine similarity to an already *kept* sample of the same cluster
exceeds ``1 - eps``. The within-cluster test is exact: similarities come from float32 GEMM blocks and every
pair within the float32 rounding bound of the threshold is re-scored in float64 from the input rows.
(The paper's code orders each cluster by distance to its centroid and drops a sample similar to any earlier
one, kept or not; dataset order and "similar to a kept one" make the result the same as the exact
``--dedup-eps`` filter on one cluster, which is what is tested.)

With ``eps`` unset the strategy searches it: bisection over [0, 2] for the most aggressive ``eps`` that
still keeps at least ``k`` samples (the paper's practice: tune eps to the budget), stopping once the kept
set is within 0.5% of k; the kept samples are then ranked in a seeded random order and the first k taken.
With ``eps`` given, the kept set must hold at least k samples.

``dedup_clustered``: the exact global filter of :func:`curate.strategies.dedup_pool` (L2 distance below
``eps``, dataset order, kept samples win) without the N x N search. Rows are split into k-means cells; a
row only needs to be compared with cells whose half-space (the points nearer that centroid than the row's
own, widened by the float32 rounding of the assignment) is closer than ``eps`` to it, a bound that never
misses a pair. Within the candidate cells the distances are exact as above.
"""

from __future__ import annotations

import math

import numpy as np

from curate.clustering import assign, block_sq_dists, check_clusters, kmeans, members, unit_rows
from curate.kcenter import check_k
from datasets_spec.errors import UserError

_U32 = 2.0**-24
# About 1,000 samples per cluster: the within-cluster work is N x 1000 x d (SemDeDup used ~9,000 per
# cluster at 440M rows); smaller clusters cost less but miss duplicates split across clusters.
ROWS_PER_CLUSTER = 1000
# Rows of one similarity block against the later members. One GEMM per typical cluster: on a shared CPU a
# 1,000 x 1,000 product took 77 ms and the same work as 256-row blocks (5/8 of the flops) 267 ms.
BLOCK = 2048
# Budget search: stop when the kept set exceeds k by at most this fraction.
BUDGET_SLACK = 0.005
MAX_BISECTIONS = 24


def check_eps(eps: float, *, option: str = "eps") -> float:
    if not 0.0 <= float(eps) <= 2.0:
        raise UserError(f"{option}={eps} is outside [0, 2] (a cosine distance: 1 - cosine similarity)")
    return float(eps)


def default_clusters(n: int) -> int:
    return max(1, math.ceil(n / ROWS_PER_CLUSTER))


class _Cosine:
    """Unit float32 rows for the GEMM plus the float64 view of the inputs for the exact re-scoring."""

    def __init__(self, embeddings: np.ndarray) -> None:
        self.raw = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.unit = unit_rows(self.raw)
        # float32 GEMM of rounded unit vectors vs the float64 cosine of the inputs.
        self.tol = 1.05 * (self.raw.shape[1] + 6) * _U32

    def exact(self, i: int, others: np.ndarray) -> np.ndarray:
        a = self.raw[i].astype(np.float64)
        b = self.raw[others].astype(np.float64)
        return (b @ a) / np.sqrt(np.einsum("ij,ij->i", b, b) * (a @ a))


def _cluster_keep(
    cos: _Cosine, idx: np.ndarray, threshold: float, earlier: np.ndarray | None = None
) -> np.ndarray:
    """Greedy in dataset order inside one cluster: keep unless cosine > threshold with a kept sample.

    Similarities come in blocks of BLOCK rows against the later members (one block for clusters up to
    BLOCK rows); only rows with some later member above the lower rounding bound enter the sequential
    loop, so on real data (few duplicates) the loop touches a small fraction of the rows. ``earlier``
    (optional, float32 per member) receives each member's largest similarity to an earlier member.
    """
    m = len(idx)
    removed = np.zeros(m, dtype=bool)
    xc = cos.unit[idx]
    hi, lo = threshold + cos.tol, threshold - cos.tol
    for start in range(0, m, BLOCK):
        stop = min(m, start + BLOCK)
        sims = xc[start:stop] @ xc[start:].T  # row r = member start + r, column j = member start + j
        rows = np.arange(stop - start)
        sims[rows[:, None] >= np.arange(m - start)[None, :]] = -2.0  # only later members count
        if earlier is not None:
            np.maximum(earlier[start:], sims.max(axis=0), out=earlier[start:])
        for r in np.flatnonzero((sims > lo).any(axis=1)).tolist():
            i = start + r
            if removed[i]:
                continue
            cols = np.flatnonzero(sims[r] > lo)
            hit = sims[r, cols] > hi
            if not hit.all():
                unsure = np.flatnonzero(~hit)
                hit[unsure] = cos.exact(int(idx[i]), idx[start + cols[unsure]]) > threshold
            removed[start + cols[hit]] = True
    return ~removed


def semdedup_keep(
    cos: _Cosine, clusters: list[np.ndarray], eps: float, earlier: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of the samples SemDeDup keeps at ``eps`` (cosine similarity above 1 - eps drops).

    ``earlier`` (optional, float32 of length N, filled with -2) receives every sample's largest
    similarity to an earlier member of its cluster (the criterion of the paper's code)."""
    keep = np.zeros(len(cos.raw), dtype=bool)
    threshold = 1.0 - eps
    for idx in clusters:
        if len(idx):
            part = None if earlier is None else np.full(len(idx), -2.0, dtype=np.float32)
            keep[idx] = _cluster_keep(cos, idx, threshold, part)
            if earlier is not None:
                earlier[idx] = part
    return keep


def semdedup(
    embeddings: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    eps: float | None = None,
    n_clusters: int | None = None,
    niter: int = 20,
    report: dict | None = None,
) -> np.ndarray:
    """k samples after semantic deduplication (see the module docstring); int64 indices, seeded order."""
    n = len(embeddings)
    check_k(k, n)
    if eps is not None:
        check_eps(eps)
    n_clusters = check_clusters(default_clusters(n) if n_clusters is None else n_clusters, n)
    cos = _Cosine(embeddings)
    centroids = kmeans(cos.unit, n_clusters, seed=seed, niter=niter, spherical=True)
    labels, _ = assign(cos.unit, centroids)
    clusters = members(labels, n_clusters)
    if eps is None:
        eps, keep, passes = _search_eps(cos, clusters, k)
    else:
        keep, passes = semdedup_keep(cos, clusters, eps), 1
        if keep.sum() < k:
            raise UserError(
                f"semdedup eps={eps} keeps {int(keep.sum())} samples, fewer than k={k}; lower eps "
                f"or leave it unset to fit k"
            )
    kept = np.flatnonzero(keep)
    if report is not None:
        report.update(eps=round(float(eps), 6), n_clusters=n_clusters, kept=int(len(kept)), passes=passes)
    order = np.random.default_rng(seed).permutation(len(kept))
    return kept[order[:k]].astype(np.int64)


def _search_eps(cos: _Cosine, clusters: list[np.ndarray], k: int) -> tuple[float, np.ndarray, int]:
    """The largest eps whose kept set still holds >= k samples (stopping within BUDGET_SLACK of k).

    Pass 1 (eps = 0) also records each sample's largest similarity M to an earlier member of its cluster.
    A sample can only be dropped for a neighbour above t = 1 - eps, so the kept count is #{M <= t} plus
    an excess (samples whose close neighbours were all dropped). Each pass measures that excess and the
    next eps is the one whose #{M <= t} equals k + slack/2 - excess; once a pass keeps fewer than k, the
    measured counts at the bracket ends are interpolated instead. A guess outside the bracket falls back
    to bisection (or, before any pass fails, to doubling steps up).
    """
    slack = max(1, int(BUDGET_SLACK * k))
    passes = 0

    def kept(eps: float, earlier: np.ndarray | None = None) -> np.ndarray:
        nonlocal passes
        passes += 1
        return semdedup_keep(cos, clusters, eps, earlier)

    earlier = np.full(len(cos.raw), -2.0, dtype=np.float32)
    keep = kept(0.0, earlier)
    if keep.sum() < k:
        raise UserError(
            f"semdedup: only {int(keep.sum())} samples are not exact duplicates, fewer than k={k}"
        )
    ordered = np.sort(earlier.astype(np.float64))
    n = len(ordered)

    def eps_for(target: float) -> float:
        index = int(np.clip(round(target), 1, n)) - 1
        return float(np.clip(1.0 - ordered[index], 0.0, 2.0))

    def lower_bound(eps: float) -> int:
        return int(np.searchsorted(ordered, 1.0 - eps, side="right"))

    lo, best, hi, hi_count = 0.0, keep, None, 0
    candidate, step = eps_for(k + slack / 2), 0.01
    while passes < MAX_BISECTIONS and int(best.sum()) - k > slack:
        keep = kept(candidate)
        count = int(keep.sum())
        if count >= k:
            lo, best = candidate, keep
        else:
            hi, hi_count = candidate, count
        if hi is None:
            guess = eps_for(k + slack / 2 - (count - lower_bound(candidate)))
        else:  # bracketed: interpolate the measured counts (regula falsi)
            lo_count = int(best.sum())
            guess = lo + (hi - lo) * (lo_count - k - slack / 2) / max(1, lo_count - hi_count)
        upper = 2.0 if hi is None else hi
        if lo < guess < upper and guess != candidate:
            candidate = guess
        elif hi is None:
            if lo >= 2.0:
                break
            candidate, step = min(2.0, lo + step), step * 2
        else:
            candidate = (lo + hi) / 2
    return lo, best, passes


# --- exact L2 near-duplicate filter for large pools -----------------------------------------------


def dedup_clustered(
    embeddings: np.ndarray, eps: float, *, n_clusters: int | None = None, seed: int = 0, niter: int = 10
) -> np.ndarray:
    """Indices kept by the exact ``--dedup-eps`` rule (see module docstring), ascending."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    if eps == 0 or n == 0:
        return np.arange(n, dtype=np.int64)
    n_clusters = check_clusters(default_clusters(n) if n_clusters is None else n_clusters, n)
    centroids = kmeans(x, n_clusters, seed=seed, niter=niter, spherical=False)
    lo, hi = _candidate_pairs(x, centroids, float(eps))
    removed = np.zeros(n, dtype=bool)
    if len(lo) == 0:
        return np.arange(n, dtype=np.int64)
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    starts = np.flatnonzero(np.r_[True, lo[1:] != lo[:-1]])
    ends = np.r_[starts[1:], len(lo)]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if not removed[lo[s]]:
            removed[hi[s:e]] = True
    return np.flatnonzero(~removed).astype(np.int64)


def _candidate_pairs(x: np.ndarray, centroids: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) with exact L2 distance below eps, as two index arrays."""
    n, d = x.shape
    n_clusters = len(centroids)
    labels, _ = assign(x, centroids)
    cells = members(labels, n_clusters)
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    sq = np.einsum("ij,ij->i", x, x)
    reach = 2.0 * float(max(np.sqrt(sq.max()), np.sqrt(c_sq.max())))
    # Rounding of one float32 squared distance; a difference of two, plus the assignment's own, is 4x.
    err = 1.01 * (d + 4) * _U32 * reach**2
    # The bound must never exceed the true one: overstate each centroid gap by the rounding.
    gap_c = np.sqrt(np.maximum(block_sq_dists(centroids, centroids, c_sq).astype(np.float64), 0.0) + err)
    extra: list[list[np.ndarray]] = [[] for _ in range(n_clusters)]
    step = max(256, 2**22 // n_clusters)  # rows x clusters float64 bounds: at most 32 MB
    for start in range(0, n, step):
        block = x[start : start + step]
        dist = block_sq_dists(block, centroids, c_sq).astype(np.float64)
        own = labels[start : start + len(block)]
        diff = dist - dist[np.arange(len(block)), own][:, None] - 4 * err
        bound = diff / (2 * gap_c[own])
        bound[np.arange(len(block)), own] = np.inf
        rows, cols = np.nonzero(bound < eps)
        for c in np.unique(cols):
            extra[c].append(rows[cols == c] + start)
    found_lo, found_hi = [], []
    for c in range(n_clusters):
        queries = np.unique(np.concatenate([cells[c], *extra[c]])) if extra[c] else cells[c]
        a, b = _pairs_between(x, sq, queries, cells[c], eps, err)
        found_lo.append(np.minimum(a, b))
        found_hi.append(np.maximum(a, b))
    if not found_lo:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pairs = np.unique(np.stack([np.concatenate(found_lo), np.concatenate(found_hi)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _pairs_between(x, sq, queries, cell, eps: float, err: float) -> tuple[np.ndarray, np.ndarray]:
    """(query, member) pairs with exact squared distance below eps^2, query != member."""
    out_q, out_m = [], []
    if len(cell) == 0 or len(queries) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    xm = x[cell]
    limit = eps * eps
    for start in range(0, len(queries), BLOCK):
        q = queries[start : start + BLOCK]
        dist = (sq[q][:, None] + sq[cell][None, :] - 2.0 * (x[q] @ xm.T)).astype(np.float64)
        rows, cols = np.nonzero(dist < limit + err)
        if not len(rows):
            continue
        qi, mi = q[rows], cell[cols]
        keep = qi != mi
        qi, mi, approx = qi[keep], mi[keep], dist[rows[keep], cols[keep]]
        unsure = approx > limit - err
        if unsure.any():
            diff = x[qi[unsure]].astype(np.float64) - x[mi[unsure]].astype(np.float64)
            exact = np.einsum("ij,ij->i", diff, diff)
            ok = np.ones(len(qi), dtype=bool)
            ok[np.flatnonzero(unsure)] = exact < limit
            qi, mi = qi[ok], mi[ok]
        out_q.append(qi)
        out_m.append(mi)
    if not out_q:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_q).astype(np.int64), np.concatenate(out_m).astype(np.int64)
