"""Process-group setup from torchrun's environment, and the few collectives training needs.

One process (no ``RANK`` in the environment) runs without a process group; under torchrun
(``--nproc-per-node N`` on one machine or several nodes) every process joins one group: NCCL on
GPUs, Gloo on CPU. A second Gloo group carries small CPU-side agreements (is there another
batch, should we stop) so that deciding them never waits on the GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the training processes."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_main: bool
    cpu_group: Any = field(default=None, repr=False)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(local_rank: int) -> torch.device:
    """The GPU of this local rank where CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup_distributed() -> DistributedContext:
    """Join torchrun's process group, or run alone when not launched by torchrun."""
    if "RANK" not in os.environ:
        return DistributedContext(0, 0, 1, pick_device(0), True)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    device = pick_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    cpu_group = dist.new_group(backend="gloo") if backend == "nccl" else dist.group.WORLD
    logger.debug("rank %d/%d on %s (%s)", rank, world_size, device, backend)
    return DistributedContext(rank, local_rank, world_size, device, rank == 0, cpu_group)


def teardown_distributed(ctx: DistributedContext) -> None:
    """Destroy the process group once every process has got here.

    The barrier keeps a process that finished first (any rank but 0, which still writes the
    model) from closing its connections while the others still use theirs: Gloo then aborts
    the process ("terminate called without an active exception"), and torchrun fails the job.
    Also a group of one (torchrun with one process): NCCL warns of leaked resources otherwise.
    """
    if not dist.is_initialized():
        return
    if ctx.distributed:
        dist.barrier(group=ctx.cpu_group)
    dist.destroy_process_group()


@contextmanager
def distributed_context() -> Iterator[DistributedContext]:
    """``setup_distributed()`` with the process group destroyed when the work is done.

    Not after an error: the other processes may be inside a collective that will never
    complete, and destroying the group under them can hang; the process exits instead and
    torchrun stops the rest."""
    ctx = setup_distributed()
    yield ctx
    teardown_distributed(ctx)


def agree_any(ctx: DistributedContext, *flags: bool) -> list[bool]:
    """For each flag, whether any process raised it (one small CPU all-reduce)."""
    if not ctx.distributed:
        return list(flags)
    values = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=ctx.cpu_group)
    return [bool(v) for v in values.tolist()]


def all_gather_objects(ctx: DistributedContext, obj: Any) -> list[Any]:
    """``obj`` from every process, in rank order."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj, group=ctx.cpu_group)
    return gathered


def sum_across(ctx: DistributedContext, *values: float) -> list[float]:
    """Each value summed over all processes (one CPU all-reduce)."""
    if not ctx.distributed:
        return [float(v) for v in values]
    totals = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(totals, group=ctx.cpu_group)
    return [float(v) for v in totals.tolist()]


def barrier(ctx: DistributedContext) -> None:
    if ctx.distributed:
        dist.barrier(group=ctx.cpu_group)
