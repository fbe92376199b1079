"""The processes a launcher starts: found again by pid file, their descendants, waiting until
one is ready or gone."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)


class NotReadyError(RuntimeError):
    """A process did not become ready: it exited first (``exited``) or the time ran out."""

    def __init__(self, *, exited: bool, timeout_s: float) -> None:
        super().__init__("it exited" if exited else f"not ready in {timeout_s:.0f} s")
        self.exited = exited
        self.timeout_s = timeout_s


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    interval_s: float = 0.2,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Call ``ready()`` every ``interval_s`` until it is true; raise ``NotReadyError`` as soon as
    ``alive()`` is false (waiting for a process that exited cannot help) or after
    ``timeout_s``. ``ready`` turns "not yet" errors into False; any other error it raises ends
    the wait."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if alive is not None and not alive():
            raise NotReadyError(exited=True, timeout_s=timeout_s)
        if time.monotonic() > deadline:
            raise NotReadyError(exited=False, timeout_s=timeout_s)
        time.sleep(interval_s)


def read_pid(pid_file: Path) -> int | None:
    """The pid written in ``pid_file``; None when there is none."""
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in ``pid_file`` if that process is alive and its command line has ``marker``
    (a pid reused by an unrelated process is not ours to signal)."""
    pid = read_pid(pid_file)
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return pid if any(marker in part for part in process.cmdline()) else None
    except psutil.Error:
        return None


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (none once ``pid`` is gone)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def wait_gone(pids: Iterable[int], timeout_s: float) -> None:
    """Wait for the processes to exit; kill what is left after ``timeout_s``."""
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    for process in alive:
        logger.warning("pid %d did not exit in %.0f s; killing it", process.pid, timeout_s)
        try:
            process.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)


def stop_pid_file(
    pid_file: Path, marker: str, ask: Callable[[int], object], timeout_s: float
) -> int | None:
    """Stop the process ``pid_file`` names (alive and ``marker`` in its command line) and
    everything it started: ``ask(pid)`` asks it to stop, what is left after ``timeout_s`` is
    killed. Its pid, or None when none was running; the pid file is gone either way."""
    pid = running_pid(pid_file, marker)
    if pid is not None:
        children = descendants(pid)
        ask(pid)
        wait_gone([pid, *children], timeout_s)
    pid_file.unlink(missing_ok=True)
    return pid


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
