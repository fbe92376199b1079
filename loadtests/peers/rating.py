"""The stars model as every peer server runs it, and the request and answer they all speak.

Each peer loads the same model directory through ``starrating.load_artifacts``, applies the
benchmark's numerics with ``handlers.numerics.apply_precision``, runs as many torch threads as
the stack's TorchServe worker(s), and tokenises through ``starrating.text`` (normalisation,
truncation at the model's max length). Peers answer the gateway's ``/v1/predictions`` body:
``{"text": str}`` or ``{"texts": [str, ...]}`` in, ``{"predictions": [{"stars", "probabilities"}]}``
out, so that ``loadtests.loadgen`` drives every one of them the same way.

Every peer batches within the gateway's own coalescing bounds (``MAX_BATCH_SIZE`` requests,
``MAX_WAIT_S`` of waiting for a batch to fill), so that batching policy is not what differs.
Settings travel to the server process as one JSON environment variable, ``PEER_SETTINGS_ENV``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api.settings import Settings as GatewaySettings
from starrating.labels import ID2LABEL, id_to_star
from starrating.service import ENV_PREFIX

if TYPE_CHECKING:
    import torch

    from starrating.artifacts import Artifacts

PEER_SETTINGS_ENV = f"{ENV_PREFIX}PEER_SETTINGS"
PREDICTIONS_PATH = "/v1/predictions"
"""Where every peer answers (TorchServe: ``/predictions/<model>``, its only choice)."""
READY_TEXT = "readiness check"
MAX_BATCH_SIZE: int = GatewaySettings.model_fields["coalesce_max_texts"].default
MAX_WAIT_S: float = GatewaySettings.model_fields["coalesce_max_wait_ms"].default / 1000


class PeerRequestError(ValueError):
    """A request body that is neither ``{"text": str}`` nor ``{"texts": [str, ...]}``."""


@dataclass(frozen=True)
class PeerSettings:
    """What a peer server runs: the model, its numerics and its number of torch threads."""

    model_dir: Path
    precision: str
    threads: int

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "model_dir": str(self.model_dir)})

    @classmethod
    def from_json(cls, text: str) -> PeerSettings:
        values = json.loads(text)
        return cls(Path(values["model_dir"]), str(values["precision"]), int(values["threads"]))

    def to_env(self) -> dict[str, str]:
        return {PEER_SETTINGS_ENV: self.to_json()}

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> PeerSettings:
        text = env.get(PEER_SETTINGS_ENV)
        if not text:
            raise RuntimeError(f"set {PEER_SETTINGS_ENV} (PeerSettings.to_env) for a peer server")
        return cls.from_json(text)


def request_texts(body: Any) -> list[str]:
    """The texts of one request body (bytes, JSON text or an already decoded object)."""
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except json.JSONDecodeError as exc:
            raise PeerRequestError(f"request body is not JSON: {exc.msg}") from exc
    if isinstance(body, Mapping) and ("text" in body) != ("texts" in body):
        texts = [body["text"]] if "text" in body else body["texts"]
        if isinstance(texts, list) and texts and all(isinstance(text, str) for text in texts):
            return [str(text) for text in texts]
    raise PeerRequestError('request body must be {"text": str} or {"texts": [str, ...]}')


def predictions(probabilities: torch.Tensor) -> list[dict[str, Any]]:
    """One ``{"stars", "probabilities"}`` per row of calibrated probabilities."""
    best = probabilities.argmax(dim=1).tolist()
    rows = probabilities.tolist()
    return [
        {"stars": id_to_star(i), "probabilities": dict(zip(ID2LABEL.values(), row, strict=True))}
        for row, i in zip(rows, best, strict=True)
    ]


def answer(rated: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of a peer's answer: the gateway's ``predictions`` list."""
    return {"predictions": rated}


def load_peer_artifacts(settings: PeerSettings) -> Artifacts:
    """The model in the benchmark's numerics, with the stack's number of torch threads."""
    import torch

    from handlers.numerics import apply_precision
    from starrating.artifacts import load_artifacts

    torch.set_num_threads(settings.threads)
    artifacts = load_artifacts(settings.model_dir)
    return replace(artifacts, model=apply_precision(artifacts.model, settings.precision))


class PeerModel:
    """The model of a batching peer: each batch tokenised in one ``encode_batch`` call."""

    def __init__(self, settings: PeerSettings) -> None:
        self.artifacts = load_peer_artifacts(settings)

    def rate(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Predictions for one batch of texts, in order."""
        return predictions(self.artifacts.rate(texts))

    def rate_requests(self, requests: Sequence[Sequence[str]]) -> list[list[dict[str, Any]]]:
        """Predictions for a batch of requests, each of one or more texts, rated together."""
        rated = self.rate([text for texts in requests for text in texts])
        answers: list[list[dict[str, Any]]] = []
        start = 0
        for texts in requests:
            answers.append(rated[start : start + len(texts)])
            start += len(texts)
        return answers
