"""``POST /v1/predictions``: star ratings for one review or a batch."""

from __future__ import annotations

from fastapi import APIRouter

from api.rating import RatingDep, UserIdHeader, VersionHeader
from api.schemas import PredictionRequest, PredictionResponse, StarPrediction, error_responses

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
    x_model_version: VersionHeader = None,
    x_user_id: UserIdHeader = None,
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
