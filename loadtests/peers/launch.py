"""Starting a peer server as a child process and stopping it with everything it started.

Ray starts a GCS server, a raylet and workers; BentoML a supervisor with worker processes;
LitServe API-server and inference processes. Each peer runs in a session of its own, is ready
once it answers a real prediction (a health route is up long before the model is), and on stop
gets SIGTERM, then every process it left behind is killed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.loadgen import request_body, stars_of
from loadtests.peers.rating import READY_TEXT
from loadtests.servers import ServerStartError, stop_process

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 240.0
"""Ray and BentoML take tens of seconds to start on two busy cores."""
STOP_GRACE_S = 20.0


@dataclass(frozen=True)
class PeerEndpoint:
    """Where a running peer answers the gateway's request body."""

    url: str
    path: str


def answers_prediction(endpoint: PeerEndpoint, timeout: float = 30.0) -> bool:
    """True once ``endpoint`` rates a text as the gateway would (a star in 1-5)."""
    try:
        response = httpx.post(
            endpoint.url + endpoint.path,
            json=request_body("gateway", [READY_TEXT]),
            timeout=timeout,
        )
        return response.status_code == 200 and stars_of("gateway", response.json()) in range(1, 6)
    except (httpx.HTTPError, ValueError):
        return False


def wait_until_answers(
    name: str,
    endpoint: PeerEndpoint,
    alive: Callable[[], bool],
    log: Path,
    timeout: float = START_TIMEOUT_S,
) -> None:
    """Block until ``endpoint`` answers a prediction; fail early once ``alive()`` is false."""
    deadline = time.monotonic() + timeout
    while not answers_prediction(endpoint):
        if not alive():
            raise ServerStartError(f"{name} exited before it answered; see {log}")
        if time.monotonic() > deadline:
            raise ServerStartError(f"{name} did not answer in {timeout:.0f} s; see {log}")
        time.sleep(0.5)
    logger.info("%s ready at %s%s", name, endpoint.url, endpoint.path)


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid``."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def stop_tree(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to ``process``; after ``grace`` seconds, kill it and whatever it started."""
    import psutil

    children = descendants(process.pid)
    stop_process(process, grace)
    left: list[psutil.Process] = []
    for pid in children:
        try:
            left.append(psutil.Process(pid))
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(left, timeout=5)
    for leftover in alive:
        logger.warning("peer process %d outlived its server; killing it", leftover.pid)
        try:
            leftover.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)


@contextmanager
def peer_process(
    name: str,
    command: Sequence[str],
    endpoint: PeerEndpoint,
    log_dir: Path,
    env: Mapping[str, str],
    timeout: float = START_TIMEOUT_S,
) -> Iterator[PeerEndpoint]:
    """Run ``command`` until it answers a prediction at ``endpoint``; stop it on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{name}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            list(command),
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=log_dir,
            start_new_session=True,
        )
    try:
        wait_until_answers(name, endpoint, lambda: process.poll() is None, log, timeout)
        yield endpoint
    finally:
        stop_tree(process)
