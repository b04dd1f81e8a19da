"""Centred-correlation redundancy selection, after PRISM's redundancy score (Bi et al., "PRISM:
Self-Pruning Intrinsic Selection Method for Training-Free Multimodal Data Selection", arXiv:2502.12119).

Named ``centred-correlation``, not ``prism``, on purpose: the definition below is the one the paper's
later versions (v4, the ACL 2026 text) state for the redundancy score, as read through a note that quotes
its equations; neither the paper's own text nor the authors' code could be consulted here, and the
first version words the score as a Pearson correlation analysis without this detail. PRISM's feature
extractor (average-pooled visual tokens of a shallow layer of the target MLLM) belongs to the embedding
set; this function scores any feature matrix.

1. corpus mean ``mu = mean_i F_i``: the global drift direction shared by every sample (the
   "Global Semantic Drift" the paper attributes to anisotropic visual features);
2. centred correlation ``rho(i, j) = (F_i - mu).(F_j - mu) / (|F_i - mu| |F_j - mu|)``, i.e. cosine
   similarity after re-centring (not whitening);
3. redundancy ``R_i = 1/(N-1) sum_{j != i} rho(i, j)``: a sample correlated with much of the pool is
   redundant;
4. keep the k samples of lowest redundancy (the paper keeps those below the budget's percentile).

``R_i`` needs no N x N matrix: with ``u_i`` the unit centred rows and ``s = sum_j u_j``,
``R_i = (u_i . s - 1) / (N - 1)``, O(N d) in float64 over row blocks. ``no_recentre`` gives the
raw-cosine score, the ablation the re-centring is argued against. Ties go to the lowest pool index;
``seed`` is recorded and unused.
"""

from __future__ import annotations

import numpy as np

from curate.kcenter import check_k
from datasets_spec.errors import UserError

# Rows per float64 block: 32,768 x 512 x 8 bytes = 128 MB.
BLOCK = 32_768


def _unit_block(block: np.ndarray, mean: np.ndarray, start: int) -> np.ndarray:
    rows = block.astype(np.float64) - mean
    norms = np.linalg.norm(rows, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise UserError(f"embedding row {start + int(zero[0])} equals the pool mean (or is zero): its "
                        "correlation is undefined")
    return rows / norms[:, None]


def redundancy_scores(embeddings: np.ndarray, *, recentre: bool = True) -> np.ndarray:
    """Mean centred correlation of every row with every other row (float64)."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] == 0:
        raise UserError(f"embeddings must be a non-empty 2-D matrix, got shape {x.shape}")
    n = len(x)
    if n < 2:
        raise UserError("centred-correlation needs at least 2 pool samples")
    mean = np.zeros(x.shape[1])
    if recentre:
        for start in range(0, n, BLOCK):
            mean += x[start : start + BLOCK].sum(axis=0, dtype=np.float64)
        mean /= n
    total = np.zeros(x.shape[1])
    for start in range(0, n, BLOCK):
        total += _unit_block(x[start : start + BLOCK], mean, start).sum(axis=0)
    scores = np.empty(n)
    for start in range(0, n, BLOCK):
        unit = _unit_block(x[start : start + BLOCK], mean, start)
        scores[start : start + len(unit)] = (unit @ total - 1.0) / (n - 1)
    return scores


def centred_correlation(embeddings: np.ndarray, k: int, *, seed: int = 0, no_recentre: bool = False,
                        report: dict | None = None) -> np.ndarray:
    """The k samples least correlated (after re-centring) with the rest of the pool, least first.

    ``no_recentre`` scores raw cosine similarity instead (a flag, off by default like the CLI's flags).
    """
    check_k(k, len(embeddings))
    recentre = not no_recentre
    scores = redundancy_scores(embeddings, recentre=recentre)
    picks = np.argsort(scores, kind="stable")[:k].astype(np.int64)
    if report is not None:
        report.update(recentre=recentre, redundancy_min=float(scores[picks[0]]),
                      redundancy_max_kept=float(scores[picks[-1]]), redundancy_pool_mean=float(scores.mean()))
    return picks
