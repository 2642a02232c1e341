"""The process group under torchrun: (rank, world) of this process, or None when it runs alone."""
from __future__ import annotations

import os


def distributed_shard() -> tuple[int, int] | None:
    """(rank, world) when launched by torchrun with more than one process (gloo on CPU, NCCL on GPU), else None;
    initialises the process group then."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def finish_group() -> None:
    """Wait for every rank, then leave the process group (a no-op when there is none)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
