"""Peer: Ray Serve with ``@serve.batch``, set up as Ray's batching guide does it.

One deployment with one replica takes the HTTP request in ``__call__`` and awaits a method
decorated with ``@serve.batch(max_batch_size, batch_wait_timeout_s)``, which tokenises the
batch in one call and runs the model once. Ray's guide asks for ``max_ongoing_requests`` at
least ``max_batch_size`` (its default, 5, would cap every batch at 5; Serve warns about it), so
it is set to the batch size. The replica reserves ``threads`` CPUs and runs that many torch
threads, like the stack's TorchServe worker. Ray's dashboard stays off (a benchmark needs no
UI, and it costs CPU on two cores); usage reporting is off.

Run: ``python -m loadtests.peers.ray_serve --port N`` with ``PeerSettings`` in the environment;
``ray_serve_peer`` does that and stops Ray again.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loadtests.peers import RAY_SERVE
from loadtests.peers.launch import PeerEndpoint, peer_process
from loadtests.peers.rating import MAX_BATCH_SIZE, MAX_WAIT_S, PREDICTIONS_PATH, PeerSettings
from starrating.service import LOOPBACK


def build_app(settings: PeerSettings) -> Any:
    """The Serve application (imported here: the benchmark process itself never loads Ray)."""
    from ray import serve
    from starlette.requests import Request

    from loadtests.peers.rating import PeerModel, answer, request_texts

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=MAX_BATCH_SIZE,
        ray_actor_options={"num_cpus": settings.threads},
    )
    class StarsDeployment:
        def __init__(self, settings: PeerSettings) -> None:
            self.model = PeerModel(settings)

        @serve.batch(
            max_batch_size=MAX_BATCH_SIZE,
            batch_wait_timeout_s=MAX_WAIT_S,
        )
        async def rate(self, requests: Sequence[list[str]]) -> list[list[dict[str, Any]]]:
            return self.model.rate_requests(requests)

        async def __call__(self, request: Request) -> dict[str, Any]:
            rated: list[dict[str, Any]] = await self.rate(request_texts(await request.body()))
            return answer(rated)

    return StarsDeployment.bind(settings)  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="HTTP port of Serve's proxy")
    parser.add_argument("--temp-dir", required=True, help="Ray's session directory (short path)")
    args = parser.parse_args(argv)
    settings = PeerSettings.from_env()

    import ray
    from ray import serve

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ray.init(
        num_cpus=max(settings.threads, os.cpu_count() or 1),
        include_dashboard=False,
        # Ray would pick the machine's network address for its own servers; keep to loopback.
        _node_ip_address=LOOPBACK,
        _temp_dir=args.temp_dir,
    )
    try:
        serve.start(http_options={"host": LOOPBACK, "port": args.port})
        serve.run(build_app(settings), route_prefix=PREDICTIONS_PATH, blocking=False)
        stop.wait()
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


@contextmanager
def ray_serve_peer(settings: PeerSettings, workdir: Path) -> Iterator[PeerEndpoint]:
    """Ray Serve on a free loopback port, answering at ``/v1/predictions``."""
    from serving.addresses import free_port

    port = free_port()
    # Ray's socket paths must stay under the 107-byte limit of a Unix socket name.
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as temp_dir:
        command = [
            sys.executable,
            "-m",
            "loadtests.peers.ray_serve",
            "--port",
            str(port),
            "--temp-dir",
            temp_dir,
        ]
        env = {**settings.to_env(), "RAY_USAGE_STATS_ENABLED": "0"}
        endpoint = PeerEndpoint(f"http://{LOOPBACK}:{port}", PREDICTIONS_PATH)
        with peer_process(RAY_SERVE, command, endpoint, workdir / "logs", env) as running:
            yield running


if __name__ == "__main__":
    main()
