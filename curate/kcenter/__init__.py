"""Exact greedy k-center (farthest-point sampling) in L2: ``l2-maxdiverse``.

* first pick: the sample farthest from the pool mean (float64, ``np.mean(X, axis=0, dtype=float64)``);
  the seed is recorded but does not change the result;
* then repeatedly the unselected sample whose distance to its nearest selected sample is largest;
* ties go to the lowest index; "distance" means the float64 sum of squared differences of the stored
  values (float32, or float16 for a float16 embedding set), so the selection equals a brute-force float64
  reference over the stored values exactly.

Speed: each pick is one pass over the stored matrix (``||x||^2 - 2 X c + ||c||^2``), O(N) extra memory;
which kernel runs it follows a fixed rule per device and dtype (:func:`.backends.backend_name`: NumPy's
sgemv for float32 on a CPU, torch's float16 kernel for float16 on a CPU, torch on CUDA). float16 rows
are read with float16 dot products as a screen; samples the screen cannot rule out are recomputed in
float32, so the running minimum always has the float32 bound. The pass values are within a rigorous
bound (:func:`curate.kcenter.exact.pass_bound`) of the exact ones; only samples within twice the bound
of the best are re-scored exactly, first with a float64 BLAS product against the selected centers and
then, for values still within float64 rounding of each other, with the exact difference formula. On
continuous data that set is almost always a single sample. Exact duplicates of a selected row are
recognised by value (no product against every center), and once only duplicates are left the remaining
picks follow the tie rule without further passes.

Layout: :mod:`.exact` (reference distances, bounds), :mod:`.backends` (NumPy / torch passes),
:mod:`.engine` (the loop over one or many ranks), :mod:`.distributed` (torch.distributed),
:mod:`.pool` (reading a rank's slice, checkpoints, memory budget, progress) and :mod:`.select`
(``curate select`` integration).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from curate.kcenter.backends import exact_accumulation, make_shard, pass_threads
from curate.kcenter.engine import Coverage, Greedy, LocalComm, Resume
from curate.kcenter.exact import carry_sum, exact_sq_dists

__all__ = ["check_k", "exact_sq_dists", "l2_maxdiverse", "run_greedy", "pool_mean"]


def check_k(k: int, n: int) -> None:
    """k in [1, n], else one line naming k and the pool (shared with the other strategies)."""
    from datasets_spec.errors import UserError

    if k <= 0:
        raise UserError(f"k must be positive (got {k})")
    if k > n:
        raise UserError(f"k={k} is larger than the pool ({n} samples after filters)")


def pool_mean(rows: np.ndarray, comm, n_total: int) -> np.ndarray:
    """float64 mean of the whole pool, bit-identical however the pool is cut into ranks."""
    return comm.chain_sum(rows, carry_sum) / n_total


def run_greedy(
    shard, k: int, comm, *, offset: int, n_total: int, mean: Callable[[], np.ndarray],
    resume: Resume | None = None, on_pick: Callable[[Greedy], None] | None = None,
    stop_after: int | None = None,
) -> tuple[np.ndarray, Coverage | None]:
    """Picks (global pool indices, selection order) and the coverage; ``(partial picks, None)`` when
    ``stop_after`` picks were made first. ``on_pick`` runs after every pick (checkpoints, progress)."""
    g = Greedy(shard, k, comm, offset=offset, n_total=n_total)
    with exact_accumulation(), pass_threads(shard):
        if resume is not None and len(resume.picks):
            g.resume(resume)
        else:
            g.start(mean())
            if on_pick:
                on_pick(g)
        while len(g.picks) < k:
            if stop_after is not None and len(g.picks) >= stop_after:
                return np.asarray(g.picks, dtype=np.int64), None
            g.step()
            if on_pick:
                on_pick(g)
        coverage = g.coverage()
    return np.asarray(g.picks, dtype=np.int64), coverage


def l2_maxdiverse(
    embeddings: np.ndarray, k: int, *, seed: int = 0, device: str = "numpy", **_: object
) -> np.ndarray:
    """Exact greedy k-center of an in-memory matrix; ``device``: numpy (reference), auto, cpu, cuda."""
    x = np.asarray(embeddings)
    if x.ndim != 2:
        from datasets_spec.errors import UserError

        raise UserError(f"embeddings must be a 2-D matrix, got shape {x.shape}")
    if x.dtype != np.float16:
        x = np.ascontiguousarray(x, dtype=np.float32)
    check_k(k, x.shape[0])
    shard = make_shard(x, device)
    comm = LocalComm()
    picks, _ = run_greedy(shard, k, comm, offset=0, n_total=len(x), mean=lambda: pool_mean(x, comm, len(x)))
    return picks
