"""``POST /v1/predictions``: star ratings for one review or a batch."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Request

from api import metrics
from api.deps import ChooserDep, PredictorDep, RecorderDep, RequestIdDep, SettingsDep
from api.errors import InvalidInput, PayloadTooLarge
from api.schemas import (
    USER_ID_PATTERN,
    PredictionRequest,
    PredictionResponse,
    StarPrediction,
    error_responses,
)
from api.seams import PredictionEvent, PredictionRecorder
from api.settings import Settings
from starrating.service import VERSION_PATTERN
from starrating.text import normalize_text

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["predictions"])


def check_limits(texts: list[str], settings: Settings) -> None:
    """Refuse batches and texts over the configured limits (413) and empty texts (422)."""
    if len(texts) > settings.max_batch_size:
        raise PayloadTooLarge(
            f"{len(texts)} texts in one request; the limit is {settings.max_batch_size}"
        )
    for index, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            raise PayloadTooLarge(
                f"text {index} has {len(text)} characters; the limit is {settings.max_text_chars}"
            )
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


async def _record(recorder: PredictionRecorder, event: PredictionEvent) -> None:
    # After the response: a failing recorder must not take the gateway with it.
    try:
        await recorder.record(event)
    except Exception:
        logger.exception("recording prediction %s failed", event.request_id)


@router.post(
    "/predictions",
    response_model=PredictionResponse,
    responses=error_responses(404, 413, 422, 502, 503, 504),
    summary="Predict star ratings",
)
async def create_prediction(
    body: PredictionRequest,
    request: Request,
    background: BackgroundTasks,
    settings: SettingsDep,
    predictor: PredictorDep,
    chooser: ChooserDep,
    recorder: RecorderDep,
    request_id: RequestIdDep,
    x_model_version: Annotated[
        str | None,
        Header(pattern=VERSION_PATTERN, description="force this model version"),
    ] = None,
    x_user_id: Annotated[
        str | None,
        Header(pattern=USER_ID_PATTERN, description='who is asking (or "user_id" in the body)'),
    ] = None,
) -> PredictionResponse:
    texts = body.all_texts
    request.state.text_lengths = [len(text) for text in texts]
    check_limits(texts, settings)
    user_id = body.user_id or x_user_id
    assignment = chooser.choose(user_id, x_model_version)
    request.state.variant = assignment.variant
    metrics.BATCH_SIZE.observe(len(texts))

    started = time.perf_counter()
    try:
        predictions = await predictor.predict(texts, assignment.version)
    finally:
        upstream_s = time.perf_counter() - started
        metrics.UPSTREAM_LATENCY.observe(upstream_s)

    version = predictions[0].model_version
    request.state.version = version
    for prediction in predictions:
        metrics.PREDICTED_STARS.labels(version=version, stars=str(prediction.stars)).inc()
    background.add_task(
        _record,
        recorder,
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
    return PredictionResponse(
        request_id=request_id,
        model=settings.model_name,
        version=version,
        variant=assignment.variant,
        predictions=[
            StarPrediction(stars=p.stars, probabilities=dict(p.probabilities)) for p in predictions
        ],
    )
