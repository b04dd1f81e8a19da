"""Statistical-leverage selection in the style of ScalSelect (Wu et al., "ScalSelect: Scalable
Training-Free Multimodal Data Selection for Efficient Visual Instruction Tuning", arXiv:2602.11636).

The paper's selection stage keeps the samples whose representations best span the dominant subspace of
the whole pool: the rank-r truncated SVD of the (centred) feature matrix, r the smallest rank whose
singular values carry a given share of the energy, and each sample's statistical leverage in that
subspace as its importance. As the authors' scoring script runs it (ChangtiWu/ScalSelect,
``scripts/cur.py`` with ``run_cur.sh``: ``--sv-threshold 0.9 --no-standardize --no-l2-normalize``):

1. centre the columns (subtract the feature mean; standardisation and row normalisation are off);
2. SVD ``X_c = U S V^T``; energy is the squared singular values; r is the smallest rank whose
   cumulative energy share reaches ``energy`` (0.9);
3. leverage of sample i: ``h_i = ||U_r[i, :]||^2``, the i-th diagonal entry of the projection onto the
   span of ``X_r`` (``X_r (X_r^T X_r)^+ X_r^T``);
4. the k samples with the highest leverage, in decreasing order.

What differs, and why: the SVD is taken through the d x d Gram matrix ``X_c^T X_c`` accumulated in
float64 over row blocks (its eigenvectors are V, its eigenvalues S^2, and ``U_r = X_c V_r S_r^-1``), so
the pool is read twice and never copied: linear in the number of samples, as the paper's complexity
claim requires, where the script's dense SVD of a 665K x d matrix would hold U (n x d) in memory. Ties
go to the lowest pool index; the scores are deterministic, ``seed`` is recorded and unused. The paper's
feature extractor (instruction-attended visual tokens of the target VLM's first layer) is the
embedding set's business; this function ranks any feature matrix.
"""

from __future__ import annotations

import numpy as np

from curate.kcenter import check_k
from datasets_spec.errors import UserError

# The authors' default and the value of their LLaVA-665K script.
DEFAULT_ENERGY = 0.9
# Rows per float64 block of the two passes: 32,768 x 512 x 8 bytes = 128 MB.
BLOCK = 32_768


def check_energy(energy: float) -> None:
    if not 0.0 < energy <= 1.0:
        raise UserError(f"energy must be in (0, 1] (got {energy})")


def _column_mean(x: np.ndarray) -> np.ndarray:
    total = np.zeros(x.shape[1])
    for start in range(0, len(x), BLOCK):
        total += x[start : start + BLOCK].sum(axis=0, dtype=np.float64)
    return total / len(x)


def _gram(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(X - mean)^T (X - mean)`` in float64, centring each block before the product (no cancellation)."""
    gram = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), BLOCK):
        block = x[start : start + BLOCK].astype(np.float64) - mean
        gram += block.T @ block
    return gram


def energy_rank(squared_singular: np.ndarray, energy: float) -> int:
    """Smallest r whose r largest squared singular values hold at least ``energy`` of their sum.

    ``squared_singular`` in decreasing order. At ``energy`` = 1 the rank is the numerical rank (values
    below the float64 noise floor of the largest carry no energy).
    """
    check_energy(energy)
    values = np.clip(np.asarray(squared_singular, dtype=np.float64), 0.0, None)
    if len(values) == 0 or values[0] <= 0:
        raise UserError("the embeddings have no variance after centring: every row is the same vector")
    numerical = int(np.sum(values > values[0] * len(values) * np.finfo(np.float64).eps))
    share = np.cumsum(values[:numerical]) / values[:numerical].sum()
    return int(min(numerical, np.searchsorted(share, energy - 1e-12) + 1))


def leverage_scores(embeddings: np.ndarray, *, energy: float = DEFAULT_ENERGY,
                    center: bool = True) -> tuple[np.ndarray, int]:
    """Leverage of every row in the rank-r subspace of the (centred) matrix, and r."""
    check_energy(energy)
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] == 0:
        raise UserError(f"embeddings must be a non-empty 2-D matrix, got shape {x.shape}")
    mean = _column_mean(x) if center else np.zeros(x.shape[1])
    eigenvalues, eigenvectors = np.linalg.eigh(_gram(x, mean))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    rank = energy_rank(eigenvalues, energy)
    # U_r = X_c V_r / s_r: rows of U_r are the rows of X_c in the scaled basis of the top-r subspace.
    basis = eigenvectors[:, :rank] / np.sqrt(eigenvalues[:rank])
    scores = np.empty(len(x))
    for start in range(0, len(x), BLOCK):
        coords = (x[start : start + BLOCK].astype(np.float64) - mean) @ basis
        scores[start : start + len(coords)] = np.einsum("ij,ij->i", coords, coords)
    return scores, rank


def leverage(embeddings: np.ndarray, k: int, *, seed: int = 0, energy: float = DEFAULT_ENERGY,
             no_center: bool = False, report: dict | None = None) -> np.ndarray:
    """The k samples of highest statistical leverage (ScalSelect-style), highest first.

    ``no_center`` skips the centring (a flag, off by default like the CLI's flags); ``report`` receives
    the rank r, the energy share and the leverage range of the chosen samples.
    """
    check_k(k, len(embeddings))
    center = not no_center
    scores, rank = leverage_scores(embeddings, energy=energy, center=center)
    picks = np.argsort(-scores, kind="stable")[:k].astype(np.int64)
    if report is not None:
        report.update(rank=rank, energy=energy, center=center, dim=int(np.asarray(embeddings).shape[1]),
                      leverage_max=float(scores[picks[0]]), leverage_min_kept=float(scores[picks[-1]]))
    return picks
