"""The in-process limit: how many reviews per second the model rates with no HTTP in the way.

The same path as the TorchServe handler (``starrating.encode_batch`` per batch, forward pass,
calibrated probabilities) is timed for each batch size, with plain dynamic padding (batches in
arrival order, padded to their longest text) and with length-sorted batches (similar lengths
together, so little padding), with one torch thread and with one per core (on a machine that is
busy with other work, one thread can beat two). The best of these is the ceiling the stack is
compared against.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from starrating.artifacts import Artifacts

logger = logging.getLogger(__name__)

Padding = Literal["plain", "sorted"]
PADDINGS: tuple[Padding, ...] = ("plain", "sorted")
DEFAULT_BATCH_SIZES = (1, 8, 32)


@dataclass(frozen=True)
class LimitRun:
    """Throughput of one in-process configuration."""

    batch_size: int
    padding: Padding
    reviews: int
    seconds: float
    batch_seconds: list[float] = field(default_factory=list, repr=False)
    threads: int = 1

    @property
    def reviews_per_s(self) -> float:
        return self.reviews / self.seconds if self.seconds > 0 else 0.0


def make_batches(
    artifacts: Artifacts, texts: Sequence[str], batch_size: int, padding: Padding
) -> list[list[str]]:
    """Split ``texts`` into batches; ``sorted`` groups texts of similar token length.

    The batch order is shuffled (seeded) so that a time-bounded run sees a representative mix
    of lengths rather than only the shortest texts.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    ordered = list(texts)
    if padding == "sorted":
        lengths = [len(ids) for ids in artifacts.tokenizer(ordered, truncation=True)["input_ids"]]
        ordered = [text for _, text in sorted(zip(lengths, ordered, strict=True))]
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    random.Random(0).shuffle(batches)
    return batches


def time_configuration(
    artifacts: Artifacts,
    texts: Sequence[str],
    batch_size: int,
    padding: Padding,
    seconds: float,
) -> LimitRun:
    """Rate batches round-robin for about ``seconds`` (at least one batch) after one warm-up."""
    batches = make_batches(artifacts, texts, batch_size, padding)
    if not batches:
        raise ValueError("no texts to rate")
    artifacts.rate(batches[0])
    reviews = 0
    batch_seconds: list[float] = []
    start = now = time.perf_counter()
    while not batch_seconds or now - start < seconds:
        batch = batches[len(batch_seconds) % len(batches)]
        artifacts.rate(batch)
        reviews += len(batch)
        batch_seconds.append(time.perf_counter() - now)
        now = time.perf_counter()
    return LimitRun(batch_size, padding, reviews, now - start, batch_seconds)


def thread_counts() -> tuple[int, ...]:
    """One torch thread, and one per core where there is more than one core."""
    cores = os.cpu_count() or 1
    return (1, cores) if cores > 1 else (1,)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_limit(
    artifacts: Artifacts,
    texts: Sequence[str],
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    threads: Sequence[int] | None = None,
    seconds: float = 5.0,
) -> list[LimitRun]:
    """Every threads x batch size x padding configuration; the best is
    ``max(runs, key=reviews_per_s)``."""
    runs = []
    for count in threads or thread_counts():
        with torch_threads(count):
            for batch_size in batch_sizes:
                for padding in PADDINGS:
                    run = time_configuration(artifacts, texts, batch_size, padding, seconds)
                    run = replace(run, threads=count)
                    logger.info(
                        "in-process %d thread(s), batch %d, %s padding: %.1f reviews/s",
                        count,
                        batch_size,
                        padding,
                        run.reviews_per_s,
                    )
                    runs.append(run)
    return runs
