"""Process-group setup for ``torchrun`` and the few collectives the trainer needs (no-ops in one process).

Under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE`` > 1 in the environment) :func:`setup` joins the process
group: NCCL when training on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU. Rank 0 logs and writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ..errors import InfogeomError
from .config import resolve_device

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this object initialized the group, so it destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """Average of ``t`` over ranks (in place)."""
        if self.enabled:
            dist.all_reduce(t)
            t /= self.world_size
        return t

    def any_of(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Each flag true on every rank if it is true on some rank (one all-reduce)."""
        if not self.enabled:
            return list(flags)
        t = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` on rank 0 only; an InfogeomError there is raised on every rank (none waits forever)."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except InfogeomError as exc:
                error = str(exc)
        error = self.broadcast(error)
        if error is not None:
            raise InfogeomError(error)
        return result

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the others (e.g. to fill a cache once); errors as in ``on_main``."""
        result = self.on_main(fn)
        return result if self.is_main else fn()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup(device_spec: str) -> tuple[Dist, torch.device]:
    """Join the torchrun process group when there is one; return it and this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_spec)
    if world <= 1:
        return Dist(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), owns), device
