"""torch.distributed for the k-center loop: ranks, contiguous slices and the few reductions it needs.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1): the group joined by datasets_spec.distributed (gloo on
CPU machines, nccl with GPUs; a nccl group reduces CUDA tensors, whatever device the pass uses). Rank ``r``
of ``w`` holds pool positions ``[r N / w, (r + 1) N / w)``; a world of one is :class:`LocalComm`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from curate.kcenter.engine import LocalComm
from datasets_spec.distributed import init_distributed, world_size


def slice_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous, balanced slice of ``n`` pool positions held by ``rank``."""
    return rank * n // world, (rank + 1) * n // world


class TorchComm:
    """Reductions over the default process group; float64 payloads, so indices and rows travel exactly."""

    def __init__(self, owns_group: bool) -> None:
        import torch
        import torch.distributed as dist

        self.dist, self.torch, self.owns_group = dist, torch, owns_group
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        nccl = dist.get_backend() == "nccl"
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}") if nccl else torch.device("cpu")

    def _tensor(self, values: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(self.device)

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        t = self._tensor(values.copy())
        self.dist.all_reduce(t)
        return t.cpu().numpy()

    def all_reduce_max(self, value: float) -> float:
        t = self._tensor(np.array([value]))
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return float(t.cpu().numpy()[0])

    def chain_sum(self, rows: np.ndarray, step: Callable) -> np.ndarray:
        """``step`` over the ranks' slices in order, each continuing from the previous one's carry."""
        d = rows.shape[1]
        carry = None
        if self.rank > 0:
            t = self._tensor(np.zeros(d))
            self.dist.recv(t, src=self.rank - 1)
            carry = t.cpu().numpy()
        acc = step(rows, carry)
        if self.rank < self.world - 1:
            self.dist.send(self._tensor(acc), dst=self.rank + 1)
        t = self._tensor(acc)
        self.dist.broadcast(t, src=self.world - 1)
        return t.cpu().numpy()

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            self.dist.destroy_process_group()


def comm_from_env(device: str):
    """LocalComm for one process; under torchrun a TorchComm over the launcher's group (nccl with GPUs)."""
    del device  # the group's backend follows the machine (datasets_spec.distributed), not the pass
    if world_size() <= 1:
        return LocalComm()
    import torch

    if torch.cuda.is_available():  # the shared helper picks nccl whenever a GPU is present
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return TorchComm(owns_group=init_distributed())


def rank_device(device: str) -> str:
    """``cuda`` under torchrun means this rank's GPU (``LOCAL_RANK``)."""
    if device == "cuda" and world_size() > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device
