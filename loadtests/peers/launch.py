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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from loadtests.loadgen import request_body, stars_of
from loadtests.peers.rating import READY_TEXT
from loadtests.servers import ServerStartError, stop_process
from serving.processes import NotReadyError, descendants, wait_gone, wait_until

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
    try:
        wait_until(
            lambda: answers_prediction(endpoint), timeout_s=timeout, interval_s=0.5, alive=alive
        )
    except NotReadyError as exc:
        if exc.exited:
            raise ServerStartError(f"{name} exited before it answered; see {log}") from exc
        raise ServerStartError(f"{name} did not answer in {timeout:.0f} s; see {log}") from exc
    logger.info("%s ready at %s%s", name, endpoint.url, endpoint.path)


def stop_tree(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to ``process``; after ``grace`` seconds, kill it and whatever it started."""
    children = descendants(process.pid)
    stop_process(process, grace)
    wait_gone(children, timeout_s=5)


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
