"""The one path a rating request takes, whichever protocol it came in by.

``/v1/predictions`` and the Open Inference Protocol's ``/v2/.../infer`` both hand their texts to
``RatingPath.rate``: size limits, the A/B chooser (variant and version from the user id, or the
forced version), the predictor (adaptive batcher or TorchServe client), metrics, and, after the
response has been sent, the recorder. Only the request and response bodies differ per route.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated, Protocol, runtime_checkable

from fastapi import BackgroundTasks, Depends, Header, Request

from api import metrics
from api.batching import Predictor
from api.deps import get_chooser, get_predictor, get_recorder, get_settings
from api.errors import InvalidInput, PayloadTooLarge
from api.schemas import USER_ID_PATTERN
from api.seams import Assignment, PredictionEvent, PredictionRecorder, VariantChooser
from api.settings import Settings
from serving.torchserve import (
    BadUpstreamResponse,
    Prediction,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from starrating.service import VERSION_PATTERN
from starrating.text import normalize_text

logger = logging.getLogger(__name__)

VersionHeader = Annotated[
    str | None, Header(pattern=VERSION_PATTERN, description="force this model version")
]
"""``X-Model-Version``: the client forces a version (counted apart from the experiment)."""
UserIdHeader = Annotated[
    str | None,
    Header(pattern=USER_ID_PATTERN, description="who is asking (or the body's user id)"),
]
"""``X-User-Id``: who is asking, for sticky A/B assignment."""


def check_limits(texts: list[str], settings: Settings, max_text_chars: int | None = None) -> None:
    """Refuse batches and texts over the configured limits (413) and empty texts (422).

    ``max_text_chars`` overrides ``settings.max_text_chars`` (explanations have a tighter one).
    """
    limit = max_text_chars if max_text_chars is not None else settings.max_text_chars
    if len(texts) > settings.max_batch_size:
        raise PayloadTooLarge(
            f"{len(texts)} texts in one request; the limit is {settings.max_batch_size}"
        )
    for index, text in enumerate(texts):
        if len(text) > limit:
            raise PayloadTooLarge(f"text {index} has {len(text)} characters; the limit is {limit}")
        if not normalize_text(text):
            raise InvalidInput(f"text {index} is empty")
        if not _is_encodable(text):
            # JSON escapes can carry lone UTF-16 surrogates, which no UTF-8 request can hold.
            raise InvalidInput(f"text {index} is not valid Unicode (it has a lone surrogate)")


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


FAILURES = (UpstreamUnavailable, UpstreamTimeout, BadUpstreamResponse)
"""What counts as a failed prediction of the version asked (5xx, timeout); not the client's
errors (unknown version, refused input)."""


@runtime_checkable
class FailureRecorder(Protocol):
    """A recorder that also keeps failed requests (the A/B store's: error rate per variant).

    ``note_failure`` must not block: it records in a task of its own (an error answer has no
    background tasks to run after it)."""

    def note_failure(
        self,
        request_id: str,
        assignment: Assignment,
        user_id: str | None,
        error: str,
        latency_s: float,
    ) -> None: ...


async def _record(recorder: PredictionRecorder, event: PredictionEvent) -> None:
    # After the response: a failing recorder must not take the gateway with it.
    try:
        await recorder.record(event)
    except Exception:
        logger.exception("recording prediction %s failed", event.request_id)


@dataclass(frozen=True)
class Rated:
    """What the rating path answered: where the request went, who answered, the predictions."""

    request_id: str
    assignment: Assignment
    version: str
    predictions: list[Prediction]


class RatingPath:
    """Everything a rating request needs, handed out per request by ``rating_path``."""

    def __init__(
        self,
        request: Request,
        background: BackgroundTasks,
        settings: Settings,
        predictor: Predictor,
        chooser: VariantChooser,
        recorder: PredictionRecorder,
    ) -> None:
        self.request = request
        self.background = background
        self.settings = settings
        self.predictor = predictor
        self.chooser = chooser
        self.recorder = recorder

    def assign(self, user_id: str | None, forced_version: str | None) -> Assignment:
        """The chooser's assignment, noted on the request for the access log."""
        assignment = self.chooser.choose(user_id, forced_version)
        self.request.state.variant = assignment.variant
        return assignment

    async def rate(
        self, texts: list[str], *, user_id: str | None, forced_version: str | None
    ) -> Rated:
        """Predict ``texts`` (already parsed) for this request, count and record them."""
        self.request.state.text_lengths = [len(text) for text in texts]
        check_limits(texts, self.settings)
        assignment = self.assign(user_id, forced_version)
        metrics.BATCH_SIZE.observe(len(texts))

        started = time.perf_counter()
        try:
            predictions = await self.predictor.predict(texts, assignment.version)
        except FAILURES as exc:
            if isinstance(self.recorder, FailureRecorder):
                self.recorder.note_failure(
                    self.request.state.request_id,
                    assignment,
                    user_id,
                    type(exc).__name__,
                    time.perf_counter() - started,
                )
            raise
        finally:
            upstream_s = time.perf_counter() - started
            metrics.UPSTREAM_LATENCY.observe(upstream_s)

        version = predictions[0].model_version
        self.request.state.version = version
        for prediction in predictions:
            metrics.PREDICTED_STARS.labels(version=version, stars=str(prediction.stars)).inc()
        # The request id as it is now: an OIP request may have made its own "id" the request id.
        request_id: str = self.request.state.request_id
        self.background.add_task(
            _record,
            self.recorder,
            PredictionEvent(
                request_id=request_id,
                assignment=assignment,
                version=version,
                user_id=user_id,
                stars=tuple(p.stars for p in predictions),
                probabilities=tuple(dict(p.probabilities) for p in predictions),
                latency_s=upstream_s,
                texts=tuple(texts),
            ),
        )
        return Rated(request_id, assignment, version, predictions)


async def rating_path(request: Request, background: BackgroundTasks) -> RatingPath:
    # A coroutine, not the class itself: FastAPI runs a class dependency in its thread pool,
    # a thread hop on every prediction. The gateway's parts are read here rather than declared
    # as four sub-dependencies: FastAPI solves each one on every prediction.
    return RatingPath(
        request,
        background,
        await get_settings(request),
        await get_predictor(request),
        await get_chooser(request),
        await get_recorder(request),
    )


RatingDep = Annotated[RatingPath, Depends(rating_path)]
