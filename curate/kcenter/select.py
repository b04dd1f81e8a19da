"""``curate select --strategy l2-maxdiverse``: one process or a torchrun world, resumable, with progress.

Every rank reads its contiguous slice of the pool's embedding rows, the loop runs over all ranks
(:mod:`curate.kcenter.engine`), and rank 0 writes the subset. Picks are exact, so they do not depend on
the device, the number of processes or where a resumed run was interrupted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from curate.embedding_sets import open_embedding_set
from curate.kcenter import pool_mean, run_greedy
from curate.kcenter.backends import make_shard, resolve_device
from curate.kcenter.distributed import comm_from_env, rank_device, slice_bounds
from curate.kcenter.pool import (
    Checkpoints,
    PickProgress,
    check_memory,
    checkpoint_dir,
    read_rows,
    selection_key,
)
from datasets_spec.errors import UserError
from datasets_spec.workspace import Workspace


@dataclass
class KCenterOptions:
    """How ``l2-maxdiverse`` runs; none of these change the picks."""

    device: str = "auto"
    """auto (cuda when present, else cpu), cpu, cuda, cuda:N, or numpy (the reference NumPy path); the
    kernel per device and dtype is a fixed rule (curate.kcenter.backends.backend_name)."""
    memory_budget_gb: float | None = None
    """Bytes one process may use for the pool; None: free RAM (free GPU memory on CUDA)."""
    checkpoint_every: int = 1000
    """Picks between checkpoints: ~70 s of a 665K x 512 float32 pool on a CPU, <1 s on a GPU."""
    show_progress: bool = False
    """Progress bar (picks, picks/s, time remaining) on stderr of rank 0."""
    stop_after: int | None = None
    """Stop after this many picks, leaving the checkpoint to resume from (tests, time-boxed jobs)."""

    def __post_init__(self) -> None:
        budget = self.memory_budget_gb
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise UserError(f"--memory-budget must be a positive number of GB (got {budget})")
        if self.checkpoint_every <= 0:
            raise UserError(f"--checkpoint-every must be positive (got {self.checkpoint_every})")
        if self.stop_after is not None and self.stop_after <= 0:
            raise UserError(f"stop_after must be positive (got {self.stop_after})")


@dataclass
class KCenterRun:
    picks: np.ndarray | None
    """Pool positions in selection order; None when stopped early."""
    coverage: dict | None
    info: dict
    comm: object
    checkpoints: Checkpoints

    def finish(self, written: bool) -> None:
        """After rank 0 wrote the subset: drop the checkpoint, release the process group."""
        self.comm.barrier()
        if written:
            self.checkpoints.remove()
        self.comm.close()


def run_kcenter(ws: Workspace, pool: np.ndarray, k: int, name: str, tag: str | None,
                opts: KCenterOptions) -> KCenterRun:
    """Select ``k`` of the dataset rows ``pool`` on this rank's slice; see the module docstring."""
    device = rank_device(opts.device)
    comm = comm_from_env(device)
    try:
        return _run(ws, pool, k, name, tag, opts, device, comm)
    except BaseException:
        comm.close()
        raise


def _run(ws, pool, k, name, tag, opts, device, comm) -> KCenterRun:
    if device != "numpy":
        device = resolve_device(device)
    es = open_embedding_set(ws, tag)
    info = es.info
    n, dim = len(pool), es.dim
    if n < comm.world:
        raise UserError(f"the pool has {n} samples, fewer than the {comm.world} processes; use fewer")
    if device == "numpy" and comm.world > 1:
        raise UserError("--device numpy runs in one process; use --device cpu or cuda under torchrun")
    check_memory(n, dim, k, es.dtype, comm.world, device, opts.memory_budget_gb)
    lo, hi = slice_bounds(n, comm.rank, comm.world)
    ids = ws.read_dataset(columns=["sample_id"]).column("sample_id").to_pylist()
    rows = read_rows(es, pool[lo:hi], ids)
    shard = make_shard(rows, device)  # device and dtype errors come before any checkpoint is written
    ckpt = Checkpoints(checkpoint_dir(ws, name), selection_key(pool, k, info), comm, opts.checkpoint_every)
    resume = ckpt.open()
    done = 0 if resume is None else len(resume.picks)
    progress = PickProgress(k, done, opts.show_progress and comm.rank == 0)

    def on_pick(g) -> None:
        ckpt.maybe_save(g)
        progress.advance()

    try:
        picks, coverage = run_greedy(
            shard, k, comm, offset=lo, n_total=n, mean=lambda: pool_mean(rows, comm, n), resume=resume,
            on_pick=on_pick, stop_after=opts.stop_after,
        )
    finally:
        progress.close()
    if coverage is None:  # stopped early: the checkpoints stay for the resume
        return KCenterRun(None, None, info, comm, ckpt)
    return KCenterRun(picks, coverage.report(), info, comm, ckpt)
