"""Graceful drain of the gateway container: SIGTERM under steady load.

A second gateway container joins the compose stack's networks (same image, environment and key
volume as the stack's gateway; its published loopback port serves only readiness checks), so
the stack itself is left alone. The load comes from drain_client.py in a container on the same
network (see there why not through the published port); every client thread's future is
checked, and a client that died fails the test.

- SIGTERM: /readyz answers 503 "draining" at once while predictions are still answered, for
  the image's STARRATING_DRAIN_DELAY_S; then the listener closes (new connections are refused),
  every request already accepted is answered 200, and the process exits 0 within delay + the
  graceful bound. A connection that raced the close (in the kernel's accept backlog, never
  handed to uvicorn) is reset without an answer.
- A restart loop of that replica under a client that sends again what was never answered
  (refused, or reset before an answer; a prediction is safe to resend): no request is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.containers.conftest import PROJECT, Stack, docker, free_port, wait_for

# The first test to use `images` waits for a cold build (about 8 minutes here).
pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(1800)]

CLIENT = Path(__file__).with_name("drain_client.py")


@dataclass
class Replica:
    name: str
    url: str
    image: str
    drain_delay_s: float


@pytest.fixture
def replica(stack: Stack) -> Iterator[Replica]:
    gateway = json.loads(docker("inspect", stack.container("gateway")).stdout)[0]
    env = [e for e in gateway["Config"]["Env"] if e.startswith("STARRATING_")]
    port = free_port()
    name = f"{PROJECT}-drain-{port}"
    docker(
        "create", "--name", name,
        "--network", f"{PROJECT}_frontend",
        "-p", f"127.0.0.1:{port}:8000",
        "-v", f"{PROJECT}_torchserve-state:/run/torchserve:ro",
        *[part for e in env for part in ("-e", e)],
        gateway["Config"]["Image"],
    )  # fmt: skip
    docker("network", "connect", "--alias", "gateway-drain", f"{PROJECT}_backend", name)
    docker("start", name)
    delay = next(e.split("=", 1)[1] for e in env if e.startswith("STARRATING_DRAIN_DELAY_S="))
    replica = Replica(name, f"http://127.0.0.1:{port}", gateway["Config"]["Image"], float(delay))
    try:
        wait_for(lambda: ready(replica.url), "the replica's readiness", timeout_s=120)
        yield replica
    finally:
        docker("rm", "-f", name, check=False)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def readiness_until_gone(url: str, seconds: float) -> list[tuple[float, int, str]]:
    """/readyz answers (seconds since the call, status, body) until one fails to come."""
    start = time.monotonic()
    seen: list[tuple[float, int, str]] = []
    while time.monotonic() - start < seconds:
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
        except httpx.TransportError:
            break
        seen.append((time.monotonic() - start, response.status_code, response.text))
        time.sleep(0.2)
    return seen


def shutdown_seconds(container: str) -> float:
    """From uvicorn's "Shutting down" (the drain delay over) to "Finished server process", read
    from the container's JSON log lines."""
    moments: dict[str, datetime] = {}
    logs = docker("logs", container)
    for line in (logs.stdout + logs.stderr).splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            for event in ("Shutting down", "Finished server process"):
                if record["message"].startswith(event):
                    moments[event] = datetime.fromisoformat(record["time"])
    return (moments["Finished server process"] - moments["Shutting down"]).total_seconds()


def start_load(replica: Replica, seconds: float, clients: int, retry: bool) -> str:
    """drain_client.py in a container on the frontend network, aimed at the replica's name."""
    return docker(
        "run", "-d",
        "--network", f"{PROJECT}_frontend",
        "-v", f"{CLIENT}:/tmp/drain_client.py:ro",
        "--entrypoint", "python",
        replica.image, "/tmp/drain_client.py",
        f"http://{replica.name}:8000", str(seconds), str(clients),
        "retry" if retry else "no-retry",
    ).stdout.strip()  # fmt: skip


def load_result(client: str) -> dict[str, Any]:
    try:
        code = int(docker("wait", client, timeout=180).stdout.strip())
        logs = docker("logs", client)
        assert code == 0, logs.stdout + logs.stderr  # no client thread died
        result: dict[str, Any] = json.loads(logs.stdout.strip().splitlines()[-1])
        return result
    finally:
        docker("rm", "-f", client, check=False)


def test_sigterm_under_load_finishes_in_flight_requests_and_exits_0(replica: Replica) -> None:
    client = start_load(replica, seconds=20, clients=4, retry=False)
    time.sleep(8)  # steady load
    at = time.time()
    docker("kill", "--signal", "TERM", replica.name)
    readiness = readiness_until_gone(replica.url, replica.drain_delay_s + 10)
    code = int(docker("wait", replica.name, timeout=60).stdout.strip())
    exited_after = time.time() - at
    load = load_result(client)
    after = sum(1 for t in load["answered_at"] if t > at)
    unready_for = readiness[-1][0] if readiness else 0.0
    drained_s = shutdown_seconds(replica.name)
    print(
        f"drain: {load['sent']} sent, {load['answered']} answered ({after} of them after "
        f"SIGTERM), {load['refused']} refused at connect, {load['reset']} reset before an "
        f"answer, {len(load['lost'])} otherwise lost; /readyz 503 for {unready_for:.1f}s "
        f"({len(readiness)} probes); uvicorn's shutdown took {drained_s:.2f}s; exit {code} "
        f"seen {exited_after:.1f}s after SIGTERM"
    )
    assert code == 0
    # Readiness false at once (the first probe after SIGTERM) and through the delay, while the
    # replica still answered predictions.
    assert readiness, "no /readyz answer after SIGTERM"
    assert readiness[0][0] < 1.0
    assert all(status == 503 and "draining" in body for _, status, body in readiness)
    assert unready_for >= replica.drain_delay_s * 0.8
    assert sum(1 for t in load["answered_at"] if t > at + replica.drain_delay_s * 0.5) >= 1
    # --timeout-graceful-shutdown (20 s) bounds the drain after the delay.
    assert exited_after < replica.drain_delay_s + 20
    assert after >= 1  # requests in flight at SIGTERM were answered
    assert load["refused"] >= 1  # the listener closed: no new connection was taken
    # No answer was cut off or turned into an error: what was not answered was never accepted
    # (refused, or reset in the accept backlog; see drain_client.py).
    assert all(lost.startswith(("RemoteProtocolError", "ReadError")) for lost in load["lost"])
    assert len(load["lost"]) == load["reset"]
    assert load["answered"] + load["refused"] + load["reset"] == load["sent"]


def test_a_restart_loop_under_a_retrying_client_loses_no_request(replica: Replica) -> None:
    client = start_load(replica, seconds=45, clients=3, retry=True)
    for _ in range(2):
        time.sleep(6)
        docker("restart", "--time", "20", replica.name, timeout=120)
        wait_for(lambda: ready(replica.url), "the restarted replica", timeout_s=120)
    load = load_result(client)
    print(
        f"rolling restarts (2): {load['sent']} sent, {load['answered']} answered, "
        f"{len(load['lost'])} lost; sent again: {load['refused']} refused, {load['reset']} reset"
    )
    assert load["lost"] == []
    assert load["answered"] == load["sent"]
