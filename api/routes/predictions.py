"""``POST /v1/predictions``: star ratings for one review or a batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from api.rating import RatingDep
from api.schemas import (
    USER_ID_PATTERN,
    PredictionRequest,
    PredictionResponse,
    StarPrediction,
    error_responses,
)
from starrating.service import VERSION_PATTERN

router = APIRouter(prefix="/v1", tags=["predictions"])


@router.post(
    "/predictions",
    response_model=PredictionResponse,
    responses=error_responses(404, 413, 422, 502, 503, 504),
    summary="Predict star ratings",
)
async def create_prediction(
    body: PredictionRequest,
    rating: RatingDep,
    x_model_version: Annotated[
        str | None,
        Header(pattern=VERSION_PATTERN, description="force this model version"),
    ] = None,
    x_user_id: Annotated[
        str | None,
        Header(pattern=USER_ID_PATTERN, description='who is asking (or "user_id" in the body)'),
    ] = None,
) -> PredictionResponse:
    rated = await rating.rate(
        body.all_texts, user_id=body.user_id or x_user_id, forced_version=x_model_version
    )
    return PredictionResponse(
        request_id=rated.request_id,
        model=rating.settings.model_name,
        version=rated.version,
        variant=rated.assignment.variant,
        predictions=[
            StarPrediction(stars=p.stars, probabilities=dict(p.probabilities))
            for p in rated.predictions
        ],
    )
