"""Collective helpers that are no-ops in a single process, so optimizers run unchanged with and without
DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average tensors over ranks in place (one flattened all-reduce)."""
    n = world_size()
    if n == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= n
    for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(chunk.view_as(t))


def broadcast_(tensors: list[torch.Tensor], src: int) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values."""
    if world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.broadcast(flat, src)
    for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(chunk.view_as(t))
