"""What a training run reads and how many steps it takes, and the audit of what it read.

``TrainShare``: which lines of the training files this process reads. ``Plan``: the local batch,
steps per epoch, total and warmup steps, and the rows an epoch should read, where known before
training starts (a ``summary.json`` beside the data, or each node counting its own part).
``count_epoch_rows`` sums what the processes read in an epoch, and ``Plan.check_epoch_rows``
stops a run whose epoch read other rows than it was planned for: its schedule would be wrong.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import ConfigError, TrainConfig
from training.data.streaming import RowCountMismatch, count_rows, known_rows, share_rows
from training.distributed import DistributedContext, all_gather_objects

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainShare:
    """Which lines of the training files this process reads: line ``i`` of ``files`` when
    ``i % shards == shard``. The whole split is on every node: shards are all processes. Each
    node holds only its own part (``--train-sharded-per-node``): shards are the node's
    processes."""

    files: list[Path]
    shard: int
    shards: int
    per_node: bool

    @classmethod
    def make(cls, config: TrainConfig, ctx: DistributedContext, files: list[Path]) -> TrainShare:
        if not config.train_sharded_per_node:
            return cls(files, ctx.rank, ctx.world_size, per_node=False)
        # torchrun sets both; one process alone is a node of one.
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return cls(files, ctx.local_rank, local_world_size, per_node=True)


@dataclass
class Plan:
    """How many steps the run takes, and how many training rows an epoch should read (checked
    when each epoch ends), where known before training starts."""

    local_batch: int
    steps_per_epoch: int | None
    total_steps: int | None
    warmup_steps: int
    rows: int | None = None  # an epoch's rows over all processes
    rows_from: str | None = None  # where ``rows`` comes from: a summary.json or "counted"

    @classmethod
    def make(
        cls, config: TrainConfig, ctx: DistributedContext, train_location: Path, share: TrainShare
    ) -> Plan:
        local_batch = config.local_batch_size(ctx.world_size)
        rows: int | None
        steps_per_epoch: int | None
        rows_from: str | None
        if share.per_node:
            rows, steps_per_epoch = _count_node_shares(ctx, share, local_batch)
            rows_from = "counted"
        else:
            rows = known_rows(train_location)
            rows_from = "summary.json" if rows is not None else None
            steps_per_epoch = (
                math.ceil(math.ceil(rows / ctx.world_size) / local_batch) if rows else None
            )
        total: int | None = config.max_steps
        if total is None and steps_per_epoch:
            total = config.epochs * steps_per_epoch
        if total:
            warmup = math.ceil(config.warmup_ratio * total)
        else:  # no total to take a share of: a fixed warmup, if any was asked for
            warmup = 100 if config.warmup_ratio else 0
        return cls(local_batch, steps_per_epoch, total, warmup, rows, rows_from)

    def check_epoch_rows(self, rows: int, files: list[Path]) -> None:
        """Raise ``rows_mismatch`` when an epoch's ``rows`` are not the planned ones."""
        if self.rows is not None and rows != self.rows:
            raise self.rows_mismatch(files, str(rows))

    def rows_mismatch(self, files: list[Path], read: str) -> RowCountMismatch:
        """The error for an epoch over ``files`` that read ``read`` rows where the plan
        expected another number. Training stops: its schedule (total steps, warmup, the decay to
        zero) was planned for the wrong number, so the weights would not be those the user asked
        for."""
        if self.rows_from == "summary.json":
            advice = (
                "the split's summary.json is stale: prepare the data again with `starrating "
                "data prepare`, or remove summary.json (training then counts nothing ahead and "
                "keeps the learning rate constant after warmup)"
            )
        else:
            advice = "the training files changed while training ran"
        return RowCountMismatch(
            f"an epoch over {', '.join(map(str, files))} read {read} training rows, but the run "
            f"was planned for {self.rows} ({self.rows_from}): {advice}"
        )


def _count_node_shares(
    ctx: DistributedContext, share: TrainShare, local_batch: int
) -> tuple[int, int]:
    """(rows over all nodes, steps per epoch) for a split divided per node.

    A summary.json cannot tell: it describes the whole split (if it travelled at all), not the
    objects this node was given, and the shares may be uneven. So each process counts its
    node's lines before training: a scan without parsing or tokenising, far cheaper than the
    epoch that follows; the lazy alternative (steps unknown until the first epoch was read)
    would leave the learning rate undecayed, so a sharded job would train differently from a
    replicated one. An epoch takes as many steps as the largest share has batches.
    """
    rows_here = share_rows(count_rows(share.files), share.shard, share.shards)
    shares = all_gather_objects(ctx, (ctx.rank, rows_here))
    empty = [rank for rank, rows in shares if rows == 0]
    if empty:
        raise ConfigError(
            f"process(es) {', '.join(map(str, empty))} got no training rows: a node's part of "
            f"the split has fewer rows than its {share.shards} processes; give every instance "
            "more data (more or larger objects) or replicate the training split"
        )
    steps = max(math.ceil(rows / local_batch) for _, rows in shares)
    return sum(rows for _, rows in shares), steps


def count_epoch_rows(
    ctx: DistributedContext, epoch: int, rows_here: int | None
) -> dict[str, Any] | None:
    """The rows every process read in the epoch just finished (``rows_here`` is this one's), in
    all, per node and per process, for the run summary; None when a process does not know
    (resumed mid-epoch from a checkpoint that did not count). A collective: all ranks call it."""
    per_rank = all_gather_objects(ctx, rows_here)
    if any(rows is None for rows in per_rank):
        return None
    rows = sum(per_rank)
    # torchrun numbers ranks node by node: GROUP_RANK is this process's node.
    nodes = all_gather_objects(ctx, int(os.environ.get("GROUP_RANK", "0")))
    per_node: dict[int, int] = {}
    for node, count in zip(nodes, per_rank, strict=True):
        per_node[node] = per_node.get(node, 0) + count
    record = {
        "epoch": epoch + 1,
        "rows": rows,
        "per_rank": per_rank,
        "per_node": [per_node[node] for node in sorted(per_node)],
    }
    if ctx.is_main:
        logger.info(
            "epoch %d read %d training rows (per node %s, per process %s)",
            epoch + 1,
            rows,
            record["per_node"],
            per_rank,
        )
    return record
