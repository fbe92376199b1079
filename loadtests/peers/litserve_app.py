"""Peer: LitServe with server-side batching, set up as LitServe's batching docs do it.

A ``LitAPI`` with ``max_batch_size`` and ``batch_timeout``: ``decode_request`` turns each
request into its texts, ``batch`` keeps the requests of a batch together (texts are not
tensors, so LitServe's default stacking does not apply), ``predict`` tokenises the whole batch
in one call and runs the model once, ``unbatch`` and ``encode_response`` answer each request.
One inference worker on the CPU (``workers_per_device=1``) with the stack's number of torch
threads, and LitServe's default of one API-server process per inference worker.

Run: ``python -m loadtests.peers.litserve_app --port N`` with ``PeerSettings`` in the
environment; ``litserve_peer`` does that and stops it again.
"""

# No ``from __future__ import annotations``: LitServe builds its FastAPI route from the
# annotation of ``decode_request``, which must be the request model itself, not a string.
import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import litserve as ls
from pydantic import BaseModel

from loadtests.peers import LITSERVE
from loadtests.peers.launch import PeerEndpoint, peer_process
from loadtests.peers.rating import (
    MAX_BATCH_SIZE,
    MAX_WAIT_S,
    PREDICTIONS_PATH,
    PeerModel,
    PeerSettings,
    answer,
    request_texts,
)
from starrating.service import LOOPBACK


class PredictionBody(BaseModel):
    """The gateway's request body; LitServe validates it before ``decode_request``."""

    text: str | None = None
    texts: list[str] | None = None


class StarsAPI(ls.LitAPI):  # type: ignore[misc]
    """The stars model as a batching ``LitAPI``."""

    def setup(self, device: str) -> None:
        self.model = PeerModel(PeerSettings.from_env())

    def decode_request(self, request: PredictionBody) -> list[str]:
        return request_texts(request.model_dump(exclude_none=True))

    def batch(self, inputs: Sequence[list[str]]) -> list[list[str]]:
        return list(inputs)

    def predict(self, batch: list[list[str]]) -> list[list[dict[str, Any]]]:
        return self.model.rate_requests(batch)

    def unbatch(self, output: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return output

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return answer(output)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="HTTP port")
    args = parser.parse_args(argv)
    api = StarsAPI(
        max_batch_size=MAX_BATCH_SIZE, batch_timeout=MAX_WAIT_S, api_path=PREDICTIONS_PATH
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host=LOOPBACK, port=args.port, generate_client_file=False, log_level="warning")


@contextmanager
def litserve_peer(settings: PeerSettings, workdir: Path) -> Iterator[PeerEndpoint]:
    """LitServe on a free loopback port, answering at ``/v1/predictions``."""
    from serving.addresses import free_port

    port = free_port()
    command = [sys.executable, "-m", "loadtests.peers.litserve_app", "--port", str(port)]
    endpoint = PeerEndpoint(f"http://{LOOPBACK}:{port}", PREDICTIONS_PATH)
    with peer_process(LITSERVE, command, endpoint, workdir / "logs", settings.to_env()) as running:
        yield running


if __name__ == "__main__":
    main()
