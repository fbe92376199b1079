"""How many TorchServe workers and torch threads the CPUs this process may use can carry.

The count follows what a container may really use (``starrating.cpus.available_cpus``: the CPU
affinity mask and the cgroup CPU quota), not the host's cores. TorchServe sizes itself from the
host's core count by default, which started 16 workers under a 1-CPU limit
(pytorch/serve#3150). The launchers (``serving.launcher``, the serve image's entry point
through ``serving.layout``) decide the layout here and pass it on: workers to TorchServe,
threads to the handler (``THREADS_ENV``).
"""

from __future__ import annotations

from dataclasses import dataclass

from starrating.cpus import available_cpus
from starrating.service import HANDLER_ENV_PREFIX

THREADS_ENV = f"{HANDLER_ENV_PREFIX}THREADS"
"""torch threads per handler worker; the launchers set it from ``serving_layout``."""

MAX_THREADS_PER_WORKER = 4
"""More CPUs per version go to more workers rather than more threads: one short review batch
keeps only a few intra-op threads busy."""
MIN_WORKERS_PER_VERSION = 2
"""Workers per version wherever its share has that many CPUs, one thread each before any
worker gets a second: while one worker runs a batch, the other takes the next one the gateway
coalesced (the gateway keeps as many requests in flight per version; ``api.settings``). On 2
CPUs, one review per request, 16 users: 2 workers x 1 thread rated 184 reviews/s, 1 x 2 142,
and 1 x 1 with the second CPU left to TorchServe's frontend (the earlier rule) 112
(docs/performance.md)."""


@dataclass(frozen=True)
class ServingLayout:
    """Workers per model version and torch threads per worker."""

    workers_per_version: int
    threads_per_worker: int


def serving_layout(versions: int, cpus: int | None = None) -> ServingLayout:
    """Share ``cpus`` (default: ``available_cpus()``) among ``versions`` served side by side.

    Each version gets an equal share, at least one CPU. A share runs one worker per CPU up to
    ``MIN_WORKERS_PER_VERSION``; beyond that, as few workers as keep each at
    ``MAX_THREADS_PER_WORKER`` threads or fewer. More versions than CPUs still get one worker
    with one thread each.
    """
    if versions < 1:
        raise ValueError(f"need at least one version to serve, got {versions}")
    cpus = available_cpus() if cpus is None else cpus
    if cpus < 1:
        raise ValueError(f"need at least one CPU, got {cpus}")
    share = max(1, cpus // versions)
    workers = max(min(share, MIN_WORKERS_PER_VERSION), -(-share // MAX_THREADS_PER_WORKER))
    return ServingLayout(workers_per_version=workers, threads_per_worker=share // workers)
