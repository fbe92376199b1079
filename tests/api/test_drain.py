"""Graceful drain under a real uvicorn server in this process's main thread (where uvicorn
installs its signal handlers): SIGTERM turns /readyz 503 at once, requests are still answered
through the drain delay, then uvicorn's own shutdown closes the listener and returns."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn

from serving.addresses import free_port
from tests.api.conftest import AppFactory

DELAY_S = 1.5


@pytest.fixture
def harmless_sigterm() -> Iterator[None]:
    # uvicorn raises the signal again once it has shut down (for the default action): here that
    # would end pytest itself.
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Seen:
    sigterm_at: float = 0.0
    readyz_after_sigterm: list[tuple[float, int, str]] = field(default_factory=list)
    predictions_after_sigterm: list[tuple[float, int]] = field(default_factory=list)
    refused_at: float | None = None


def probe_through_the_drain(url: str) -> Seen:
    """Wait until ready, SIGTERM this process, then probe and predict (a new connection each
    time, as a load balancer's checks do) until the listener refuses."""
    seen = Seen()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        raise AssertionError("the gateway never became ready")
    seen.sigterm_at = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    while time.monotonic() < seen.sigterm_at + 10:
        try:
            readyz = httpx.get(f"{url}/readyz", timeout=2)
            at = time.monotonic() - seen.sigterm_at
            seen.readyz_after_sigterm.append((at, readyz.status_code, readyz.text))
            prediction = httpx.post(f"{url}/v1/predictions", json={"text": "It's OK."}, timeout=5)
            seen.predictions_after_sigterm.append(
                (time.monotonic() - seen.sigterm_at, prediction.status_code)
            )
        except httpx.ConnectError:
            seen.refused_at = time.monotonic() - seen.sigterm_at
            return seen
        time.sleep(0.05)
    return seen


def test_sigterm_turns_readiness_false_at_once_and_serves_until_the_delay_ends(
    make_app: AppFactory, harmless_sigterm: None
) -> None:
    port = free_port()
    config = uvicorn.Config(
        make_app(drain_delay_s=DELAY_S), host="127.0.0.1", port=port, log_config=None
    )
    server = uvicorn.Server(config)
    with ThreadPoolExecutor(1) as pool:
        probing = pool.submit(probe_through_the_drain, f"http://127.0.0.1:{port}")
        server.run()  # returns once uvicorn has shut down
        returned_at = time.monotonic()
        seen = probing.result()

    first_at, first_status, first_body = seen.readyz_after_sigterm[0]
    assert first_status == 503 and "draining" in first_body
    assert first_at < 0.5
    assert {status for _, status, _ in seen.readyz_after_sigterm} == {503}
    # Predictions kept being answered through the delay, and only then did the listener close.
    assert {status for _, status in seen.predictions_after_sigterm} == {200}
    assert seen.predictions_after_sigterm[-1][0] > DELAY_S * 0.8
    assert seen.refused_at is not None and DELAY_S <= seen.refused_at < DELAY_S + 2
    assert returned_at - seen.sigterm_at < DELAY_S + 2


def test_without_a_delay_sigterm_is_uvicorns_own_shutdown(
    make_app: AppFactory, harmless_sigterm: None
) -> None:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(make_app(drain_delay_s=0), host="127.0.0.1", port=port, log_config=None)
    )
    with ThreadPoolExecutor(1) as pool:
        probing = pool.submit(probe_through_the_drain, f"http://127.0.0.1:{port}")
        server.run()
        seen = probing.result()
    assert seen.refused_at is not None and seen.refused_at < 1.0
