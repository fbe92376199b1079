"""``POST /v1/feedback``: the true rating of an earlier prediction, stored durably.

The answer comes only after the store committed the write. Predictions are recorded just after
their response is sent, so feedback for an id not (yet) in the store waits briefly for it. A
repeat with the same stars is a harmless retry (200 again); a different rating for the same
prediction is refused with 409.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from abtesting import metrics as m
from abtesting.store import FeedbackConflict, UnknownRequest
from api.errors import ApiError
from api.routes.experiment import ABDep
from api.schemas import WholeNumber, error_responses
from starrating.labels import STARS

router = APIRouter(prefix="/v1", tags=["feedback"])


class UnknownRequestId(ApiError):
    status = 404
    code = "unknown_request"


class FeedbackAlreadyGiven(ApiError):
    status = 409
    code = "feedback_conflict"


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"request_id": "5f0c…", "stars": 4}]},
    )

    request_id: str = Field(min_length=1, max_length=128, description="from the prediction")
    stars: WholeNumber = Field(ge=min(STARS), le=max(STARS), description="true rating")
    index: WholeNumber = Field(
        default=0, ge=0, le=100_000, description='position in a "texts" batch (0 for "text")'
    )


class FeedbackResponse(BaseModel):
    request_id: str
    index: int
    stars: int
    predicted: int = Field(description="what the model predicted for this text")
    variant: str
    version: str


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses=error_responses(404, 409, 422, 503),
    summary="Record the true rating of a prediction",
)
async def create_feedback(body: FeedbackRequest, ab: ABDep) -> FeedbackResponse:
    add = ab.store.add_feedback
    try:
        try:
            record = await ab.store.run(add, body.request_id, body.stars, body.index)
        except UnknownRequest:
            # The prediction is written after its response went out: it may be on its way.
            await ab.recorder.wait_recorded(body.request_id)
            record = await ab.store.run(add, body.request_id, body.stars, body.index)
    except UnknownRequest as exc:
        raise UnknownRequestId(str(exc)) from exc
    except FeedbackConflict as exc:
        raise FeedbackAlreadyGiven(str(exc)) from exc
    if record.recorded_now:
        m.AB_FEEDBACK.labels(variant=record.variant).inc()
        m.AB_CORRECT.labels(variant=record.variant).inc(int(record.predicted == record.stars))
        m.AB_ABS_ERROR.labels(variant=record.variant).inc(abs(record.predicted - record.stars))
    return FeedbackResponse(
        request_id=record.request_id,
        index=record.item,
        stars=record.stars,
        predicted=record.predicted,
        variant=record.variant,
        version=record.version,
    )
