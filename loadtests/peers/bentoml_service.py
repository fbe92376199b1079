"""Peer: BentoML with adaptive batching, set up as BentoML's adaptive-batching guide does it.

A batchable API takes one parameter that holds many inputs, so a client that sends one text
reaches it the way the guide's "wrapper Service for single requests" does: ``StarsFront``
answers ``{"text": ...}`` at ``/v1/predictions`` and calls ``StarsModel.rate`` through
``bentoml.depends``, whose dispatcher gathers concurrent calls into batches
(``@bentoml.api(batchable=True, batch_dim=0, max_batch_size, max_latency_ms)``). The front's
API is async, so concurrent requests reach the dispatcher together (a sync one would need
``threads=N``, as the guide notes). ``max_latency_ms`` is the guide's 1000: BentoML answers 503
to what it expects to miss that bound, so a tight bound sheds load rather than only batching
less. Each service has one worker; the model service runs the stack's number of torch threads.

Run: ``bentoml serve loadtests.peers.bentoml_service:StarsFront --port N`` with
``PeerSettings`` in the environment; ``bentoml_peer`` does that and stops it again.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bentoml

from loadtests.peers import BENTOML
from loadtests.peers.launch import PeerEndpoint, peer_process
from loadtests.peers.rating import (
    MAX_BATCH_SIZE,
    PREDICTIONS_PATH,
    PeerModel,
    PeerSettings,
    answer,
    request_texts,
)
from starrating.service import LOOPBACK

MAX_LATENCY_MS = 1000


@bentoml.service(workers=1)
class StarsModel:
    """The model behind the dispatcher: one batch of texts per call."""

    def __init__(self) -> None:
        self.model = PeerModel(PeerSettings.from_env())

    @bentoml.api(  # type: ignore[untyped-decorator]
        batchable=True, batch_dim=0, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS
    )
    def rate(self, texts: list[str]) -> list[dict[str, Any]]:
        return self.model.rate(texts)


@bentoml.service(workers=1)
class StarsFront:
    """The gateway's request body in, one batchable call per request out."""

    model = bentoml.depends(StarsModel)

    @bentoml.api(route=PREDICTIONS_PATH)  # type: ignore[untyped-decorator]
    async def predict(
        self, text: str | None = None, texts: list[str] | None = None
    ) -> dict[str, Any]:
        sent = {"text": text, "texts": texts}
        body = {key: value for key, value in sent.items() if value is not None}
        rated: list[dict[str, Any]] = await self.model.to_async.rate(request_texts(body))
        return answer(rated)


@contextmanager
def bentoml_peer(settings: PeerSettings, workdir: Path) -> Iterator[PeerEndpoint]:
    """``bentoml serve`` on a free loopback port, with its home under ``workdir``."""
    from serving.addresses import free_port

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        f"{__name__}:StarsFront",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]
    env = {
        **settings.to_env(),
        "BENTOML_HOME": str(workdir / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    endpoint = PeerEndpoint(f"http://{LOOPBACK}:{port}", PREDICTIONS_PATH)
    with peer_process(BENTOML, command, endpoint, workdir / "logs", env) as running:
        yield running
