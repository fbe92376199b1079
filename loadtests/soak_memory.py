"""The resident memory (RSS) of every process of a running stack over a soak, and the bound
its growth is held to."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psutil

MIB = 1024 * 1024
# Memory bound: after the warm-up, no process of the stack may grow by more than this share of
# its warmed-up size plus a fixed allowance (allocator arenas, JIT, caches settling).
GROWTH_SHARE = 0.20
GROWTH_ALLOWANCE_MIB = 32.0


@dataclass
class ProcessMemory:
    """RSS of one process of the stack over the run, in MiB."""

    role: str
    pid: int
    start_mib: float | None = None
    end_mib: float | None = None
    max_mib: float = 0.0

    @property
    def bound_mib(self) -> float | None:
        if self.start_mib is None:
            return None
        return self.start_mib * (1 + GROWTH_SHARE) + GROWTH_ALLOWANCE_MIB

    @property
    def within_bound(self) -> bool:
        """False when the process grew past the bound or vanished (a crash is not "stable")."""
        bound = self.bound_mib
        return bound is not None and self.end_mib is not None and self.end_mib <= bound


def stack_processes(torchserve_pid: int, gateway_pid: int) -> dict[int, str]:
    """Role of each process of the stack: the frontend JVM, its workers, the gateway."""
    roles = {torchserve_pid: "TorchServe frontend (JVM)", gateway_pid: "gateway (uvicorn)"}
    try:
        children = psutil.Process(torchserve_pid).children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        try:
            if any("model_service_worker" in part for part in child.cmdline()):
                roles[child.pid] = "TorchServe worker"
        except psutil.Error:
            continue
    return roles


def rss_mib(pid: int) -> float | None:
    try:
        rss: int = psutil.Process(pid).memory_info().rss
        return rss / MIB
    except psutil.Error:
        return None


class MemorySampler:
    """Samples the RSS of the stack's processes every ``interval_s`` until stopped."""

    def __init__(self, torchserve_pid: int, gateway_pid: int, interval_s: float = 2.0) -> None:
        self.torchserve_pid = torchserve_pid
        self.gateway_pid = gateway_pid
        self.interval_s = interval_s
        self.memory: dict[int, ProcessMemory] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        for pid, role in stack_processes(self.torchserve_pid, self.gateway_pid).items():
            memory = self.memory.setdefault(pid, ProcessMemory(role, pid))
            rss = rss_mib(pid)
            if rss is not None:
                memory.max_mib = max(memory.max_mib, rss)
        for pid, memory in self.memory.items():
            memory.end_mib = rss_mib(pid)  # None once a process is gone

    def mark_warm(self) -> None:
        """The warmed-up sizes the growth bound is measured from."""
        self.sample()
        for memory in self.memory.values():
            memory.start_mib = rss_mib(memory.pid)
