"""What "exact" means for greedy k-center, and the rounding bounds that let a fast pass be exact.

Distances are the float64 sum of squared differences of the stored values (float32 or float16, both
exactly representable in float64): :func:`exact_sq_dists`. A pass computes ``||x||^2 - 2 x.c + ||c||^2``
in low precision; :func:`pass_bound` bounds its error, so only samples within twice that bound of the
best need the exact re-scoring (:class:`Centers`).
"""

from __future__ import annotations

import numpy as np

# Unit roundoff of float16, float32 and float64.
U16 = 2.0**-11
U32 = 2.0**-24
U64 = 2.0**-53
# Rows per block when a float64 sum is carried across a pool (bounded temporary memory).
_SUM_BLOCK = 8192


def exact_sq_dists(rows: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Exact reference distance: float64 sum of squared differences, one value per row."""
    diff = np.asarray(rows, dtype=np.float64) - np.asarray(point, dtype=np.float64)
    return (diff * diff).sum(axis=1)


def pass_bound(d: int, reach: float, half_dot: bool) -> float:
    """Bound on |computed - exact| squared distance of one pass, ``reach = max|x| + |c|``.

    float32 pass (inputs widened exactly to float32, float32 accumulation): ``(d + 4) u32 reach^2``
    (the dot product, the norms and the two additions). A float16 dot product accumulates in float32 and
    rounds its result to float16 once more: ``+ 2 u16 reach^2`` (``2 |x.c| <= reach^2``, doubled for
    margin). The 1.01 absorbs the rounding of the bound itself.
    """
    extra = 2.0 * U16 if half_dot else 0.0
    return 1.01 * ((d + 4) * U32 + extra) * reach**2


def mean_bound(d: int, max_norm: float, mean: np.ndarray) -> float:
    """float32 pass bound against the pool mean, plus the rounding of the mean to float32."""
    norm_m = float(np.sqrt(mean @ mean))
    return pass_bound(d, max_norm + norm_m, False) + 1.01 * 2 * (max_norm + norm_m) * U32 * norm_m


def carry_sum(rows: np.ndarray, carry: np.ndarray | None = None) -> np.ndarray:
    """float64 column sums accumulated row by row in order, starting from ``carry``.

    Row-sequential order makes the sum of a pool cut into contiguous slices (each continuing from the
    previous slice's carry) bit-identical to one pass over the whole pool, and to
    ``np.mean(X, axis=0, dtype=float64) * N`` (NumPy reduces axis 0 of a C-ordered matrix row by row).
    """
    acc = np.zeros(rows.shape[1], dtype=np.float64) if carry is None else carry.astype(np.float64)
    for start in range(0, rows.shape[0], _SUM_BLOCK):
        block = np.asarray(rows[start : start + _SUM_BLOCK], dtype=np.float64)
        acc = np.add.reduce(np.concatenate([acc[None], block]), axis=0)
    return acc


# Float64 entries of the (candidates x centers) matrix the re-scoring holds at once (32 MB).
_RESCORE_ENTRIES = 1 << 22


class Centers:
    """Selected centers kept in float64 (O(k d)) for the exact re-scoring of near-ties.

    A candidate equal to a selected center (a duplicate row) is at exact distance 0: it is recognised by a
    hash of its values (checked value by value) without a product against every center, so re-scoring
    the many duplicates left once the distinct rows are picked costs O(d) each, not O(k d).
    """

    def __init__(self, k: int, d: int) -> None:
        self.rows = np.empty((k, d), dtype=np.float64)
        self.sqn = np.empty(k, dtype=np.float64)
        self.n = 0
        self._keys: dict[int, list[int]] = {}

    def add(self, row: np.ndarray) -> None:
        r = np.asarray(row, dtype=np.float64)
        self.rows[self.n] = r
        self.sqn[self.n] = r @ r
        self._remember(r)

    def _remember(self, r: np.ndarray) -> None:
        self._keys.setdefault(_row_key(r), []).append(self.n)
        self.n += 1

    def _row(self, j: int) -> np.ndarray:
        return self.rows[j]

    def is_center(self, pts: np.ndarray) -> np.ndarray:
        """Mask of the rows of ``pts`` equal (value by value) to a selected center."""
        out = np.zeros(len(pts), dtype=bool)
        for i, p in enumerate(pts):
            found = self._keys.get(_row_key(p), ())
            out[i] = any(np.array_equal(self._row(j), p) for j in found)
        return out

    def exact_min(self, pts: np.ndarray) -> np.ndarray:
        """Exact min squared distance of each row of ``pts`` (float64) to the centers, in bounded blocks."""
        pts = np.asarray(pts, dtype=np.float64)
        out = np.zeros(len(pts))
        rest = np.flatnonzero(~self.is_center(pts))
        step = max(1, _RESCORE_ENTRIES // max(1, self.n))
        for start in range(0, len(rest), step):
            block = rest[start : start + step]
            out[block] = self._exact_block(pts[block])
        return out

    def _exact_block(self, pts: np.ndarray) -> np.ndarray:
        """Two levels: a float64 product against every center, then the exact formula for the few within
        float64 rounding of each row's minimum."""
        c = self.rows[: self.n]
        own = np.einsum("ij,ij->i", pts, pts)
        approx = own[:, None] + self.sqn[None, : self.n] - 2.0 * pts @ c.T
        # float64 expansion error is ~d * u64 * (|x| + |c|)^2; anything within that of a candidate's
        # minimum is recomputed with the exact formula.
        scale = (np.sqrt(own)[:, None] + np.sqrt(self.sqn[None, : self.n])) ** 2
        tol = (c.shape[1] + 4) * U64 * scale * 4
        low = approx.min(axis=1, keepdims=True)
        out = np.empty(len(pts))
        for j in range(len(pts)):
            near = np.flatnonzero(approx[j] <= low[j] + tol[j] + tol[j].max())
            out[j] = exact_sq_dists(c[near], pts[j]).min()
        return out


def _row_key(row: np.ndarray) -> int:
    """Hash of a row's float64 values; ``+ 0.0`` maps -0.0 to 0.0 (equal values, equal key)."""
    return hash((np.asarray(row, dtype=np.float64) + 0.0).tobytes())


class TorchCenters(Centers):
    """The same re-scoring with the float64 centers on a torch device (where the pass runs): on a GPU
    the O(k d) first level reads device memory instead of host memory; the exact formula runs on the
    host for the few centers it leaves."""

    def __init__(self, k: int, d: int, device) -> None:
        import torch

        self.torch, self.device = torch, device
        self.rows = torch.empty((k, d), dtype=torch.float64, device=device)
        self.sqn = torch.empty(k, dtype=torch.float64, device=device)
        self.n = 0
        self._keys = {}

    def add(self, row: np.ndarray) -> None:
        r64 = np.asarray(row, dtype=np.float64)
        r = self.torch.from_numpy(r64).to(self.device)
        self.rows[self.n] = r
        self.sqn[self.n] = r @ r
        self._remember(r64)

    def _row(self, j: int) -> np.ndarray:
        return self.rows[j].cpu().numpy()

    def _exact_block(self, pts: np.ndarray) -> np.ndarray:
        torch = self.torch
        c, sqn = self.rows[: self.n], self.sqn[: self.n]
        p = torch.from_numpy(pts).to(self.device)
        own = (p * p).sum(1)
        approx = own[:, None] + sqn[None, :] - 2.0 * p @ c.T
        scale = (own.sqrt()[:, None] + sqn.sqrt()[None, :]) ** 2
        tol = (c.shape[1] + 4) * U64 * scale * 4
        low = approx.min(dim=1, keepdim=True).values
        near_mask = approx <= low + tol + tol.max(dim=1, keepdim=True).values
        out = np.empty(len(pts))
        for j in range(len(pts)):
            near = c[torch.nonzero(near_mask[j]).flatten()].cpu().numpy()
            out[j] = exact_sq_dists(near, pts[j]).min()
        return out
