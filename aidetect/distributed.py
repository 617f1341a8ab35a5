"""Data parallelism under torchrun: this process's rank, its device, and the collectives.

`--batch-size` is the global batch: every rank computes the same permutation and takes a
rank-strided slice of each global batch. Each rank weighs its loss by its share of the batch's
images, and the gradients are summed across ranks, which reproduces the single-process gradient
of the whole batch. L_align carries the batch size twice (the mean, and the 1/B inside g_T), so
its weight is scaled by the share as well.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # whether we initialised the process group (and tear it down)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def setup_distributed(device_name: str) -> Dist:
    """Join the torchrun job when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA), pick the device."""
    from aidetect.devices import resolve_device

    device = resolve_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owns_group=owns)

