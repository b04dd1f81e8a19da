"""The launcher's process group (torchrun / deepspeed): world size, rank, barrier, joining the group.

One copy for embedding and training. Without a launcher (``WORLD_SIZE`` unset) everything is a single
process: rank 0 of 1, and the barrier is a no-op. torch is imported only when a group is involved.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (``RANK``; 0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(*, deepspeed: bool = False) -> bool:
    """Join the launcher's process group; True when this call created it (the caller then destroys it).

    gloo on CPU, nccl on GPU; through deepspeed when a DeepSpeed config trains the model.
    """
    if world_size() == 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if deepspeed:
        import deepspeed as ds

        ds.init_distributed(dist_backend=backend)
    else:
        dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    """Wait for every rank (a no-op outside a process group)."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
