"""What a training checkpoint holds, and how a run is restored from one.

``training.checkpoint`` writes the files atomically and finds the newest readable one; this
module decides their contents: the torch objects (model, optimizer, scheduler, scaler), every
rank's RNG state and loss interval, the training rules, the data position and the run's
bookkeeping (``RunState``). A checkpoint resumes only with the world size and the division of
the training split that wrote it, since which process reads which rows depends on both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from training import checkpoint as ckpt
from training.data.streaming import StreamPosition


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class RunState:
    """What a checkpoint restores besides the torch objects."""

    step: int = 0
    position: StreamPosition = field(default_factory=StreamPosition)
    history: list[dict[str, Any]] = field(default_factory=list)
    tracking_run_id: str | None = None
    train_time_s: float = 0.0
    samples: int = 0
    # Training rows this process read in the current epoch (None: unknown after resuming from
    # a checkpoint that did not record it), and each finished epoch's rows over all processes.
    epoch_rows: int | None = 0
    rows_read: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Checkpointed:
    """The objects whose state a checkpoint carries (``interval`` is this rank's)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    rules: Stateful
    interval: Stateful


def checkpoint_contents(
    state: RunState,
    objects: Checkpointed,
    *,
    world_size: int,
    train_sharded_per_node: bool,
    train_time_s: float,
    rng: list[Any],
    interval: list[Any],
    epoch_rows: list[Any],
) -> dict[str, Any]:
    """The checkpoint of the run at ``state``; ``rng``, ``interval`` and ``epoch_rows`` hold
    every rank's (gathered by the caller)."""
    return {
        "step": state.step,
        "epoch": state.position.epoch,
        "batches": state.position.batches,
        "world_size": world_size,
        "train_sharded_per_node": train_sharded_per_node,
        "model": objects.model.state_dict(),
        "optimizer": objects.optimizer.state_dict(),
        "scheduler": objects.scheduler.state_dict(),
        "scaler": objects.scaler.state_dict(),
        "rng": rng,
        "rules": objects.rules.state_dict(),
        "history": state.history,
        "tracking_run_id": state.tracking_run_id,
        "train_time_s": train_time_s,
        "samples": state.samples,
        "interval": interval,
        "epoch_rows": epoch_rows,
        "rows_read": state.rows_read,
    }


def check_resumable(
    path: Path, saved: dict[str, Any], *, world_size: int, train_sharded_per_node: bool
) -> None:
    """Raise ``CheckpointError`` when ``saved`` cannot continue this run's data order."""
    if saved["world_size"] != world_size:
        raise ckpt.CheckpointError(
            f"{path} was written by {saved['world_size']} processes; resume with "
            f"--nproc-per-node {saved['world_size']} (the data order depends on it)"
        )
    if saved.get("train_sharded_per_node", False) != train_sharded_per_node:
        raise ckpt.CheckpointError(
            f"{path} was written with --train-sharded-per-node "
            f"{str(not train_sharded_per_node).lower()}: resume the same way (which "
            "process reads which rows depends on it; on SageMaker keep the training "
            "channel's S3 distribution type)"
        )


def restore_run(
    saved: dict[str, Any], objects: Checkpointed, *, rank: int, device: torch.device
) -> RunState:
    """Load ``saved`` into ``objects`` and this rank's RNG; the run's state to go on from."""
    objects.model.load_state_dict(saved["model"])
    objects.optimizer.load_state_dict(saved["optimizer"])
    objects.scheduler.load_state_dict(saved["scheduler"])
    objects.scaler.load_state_dict(saved["scaler"])
    objects.rules.load_state_dict(saved["rules"])
    ckpt.restore_rng(saved["rng"][rank], device)
    objects.interval.load_state_dict(saved["interval"][rank])
    return RunState(
        step=saved["step"],
        position=StreamPosition(saved["epoch"], saved["batches"]),
        history=list(saved["history"]),
        tracking_run_id=saved["tracking_run_id"],
        train_time_s=saved["train_time_s"],
        samples=saved["samples"],
        epoch_rows=saved.get("epoch_rows", [None] * saved["world_size"])[rank],
        rows_read=list(saved.get("rows_read", [])),
    )
