"""One process or many under ``torchrun``: the process group that training and prediction share.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1), :func:`init_distributed` joins the group (NCCL on
CUDA, gloo on CPU); otherwise it describes the single process, and nothing else here talks to
``torch.distributed``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); otherwise one process.

    Idempotent, so several ``fit`` calls in one run share the group; :func:`shutdown_distributed`
    ends it.
    """
    cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        # Leave together: a rank that tears gloo down while another still talks to it can
        # abort the other ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank; ``[obj]`` for one process."""
    if not info.distributed:
        return [obj]
    box: list[Any] = [None] * info.world_size
    dist.all_gather_object(box, obj)
    return box


def barrier(info: DistInfo) -> None:
    """Wait for every rank (a no-op for one process)."""
    if info.distributed:
        dist.barrier()


__all__ = ["DistInfo", "all_gather_objects", "barrier", "init_distributed", "shutdown_distributed"]
