"""``POST /v1/explanations``: a review's stars and which of its words drove them.

Routed like a prediction (the A/B chooser picks the version from the user id, or the client
forces one with ``X-Model-Version``); answered by the handler's integrated gradients through
TorchServe's explanations API. One explanation costs tens of predictions, so texts have a
tighter limit (``explain_max_text_chars``), at most ``explain_max_in_flight`` run at once (the
next is refused with 503 at once, predictions are not affected) and they get their own timeout.
Explanations are not recorded for the A/B report: they are not what the experiment measures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ClientDep
from api.errors import Overloaded
from api.rating import RatingDep, UserIdHeader, VersionHeader, check_limits
from api.schemas import REVIEW_SCHEMA, UserId, error_responses

router = APIRouter(prefix="/v1", tags=["explanations"])


class ExplanationRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"text": "I loved it! I will recommend this to everyone."}]
        },
    )

    text: Annotated[str, Field(description="one review", json_schema_extra=REVIEW_SCHEMA)]
    user_id: UserId = None


class ExplainedWord(BaseModel):
    word: str
    start: int = Field(description="offset of the word's first character in text")
    end: int = Field(description="offset just past its last character")
    attribution: float = Field(description="how much the word raised (or lowered) the stars")


class ExplanationResponse(BaseModel):
    request_id: str
    model: str
    version: str
    variant: str
    text: str = Field(description="the review as the model read it (normalised)")
    stars: int = Field(description="the predicted rating, which the attributions explain")
    probabilities: dict[str, float]
    words: list[ExplainedWord] = Field(description="every word of text, in order")
    steps: int = Field(description="integrated-gradients steps")
    convergence_delta: float = Field(
        description="sum of attributions minus the logit difference they explain"
    )
    truncated: bool = Field(description="text was longer than the model reads")


class ExplanationSlots:
    """At most ``limit`` explanations at once; the next is refused at once, not queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0  # one event loop per process: no lock needed

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        if self.busy >= self.limit:
            raise Overloaded(f"{self.limit} explanations are already being computed; retry shortly")
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1


async def get_slots(request: Request) -> ExplanationSlots:
    slots: ExplanationSlots = request.app.state.explain_slots
    return slots


@router.post(
    "/explanations",
    response_model=ExplanationResponse,
    responses=error_responses(404, 413, 422, 502, 503, 504),
    summary="Explain a review's stars: attributions per word",
)
async def create_explanation(
    body: ExplanationRequest,
    rating: RatingDep,
    client: ClientDep,
    slots: Annotated[ExplanationSlots, Depends(get_slots)],
    x_model_version: VersionHeader = None,
    x_user_id: UserIdHeader = None,
) -> ExplanationResponse:
    settings = rating.settings
    rating.request.state.text_lengths = [len(body.text)]
    check_limits([body.text], settings, max_text_chars=settings.explain_max_text_chars)
    assignment = rating.assign(body.user_id or x_user_id, x_model_version)
    async with slots.hold():
        explanation = await client.explain(
            body.text, assignment.version, timeout=settings.explain_timeout_s
        )
    prediction = explanation.prediction
    rating.request.state.version = prediction.model_version
    words: list[Any] = [
        ExplainedWord(word=w.word, start=w.start, end=w.end, attribution=w.attribution)
        for w in explanation.words
    ]
    return ExplanationResponse(
        request_id=rating.request.state.request_id,
        model=settings.model_name,
        version=prediction.model_version,
        variant=assignment.variant,
        text=explanation.text,
        stars=prediction.stars,
        probabilities=dict(prediction.probabilities),
        words=words,
        steps=explanation.steps,
        convergence_delta=explanation.convergence_delta,
        truncated=explanation.truncated,
    )
