"""Request and response bodies of the gateway's HTTP API, exactly as DESIGN.md names them.

Structure is checked here (one of ``text``/``texts``, strings, no unknown fields); the
configurable size limits are checked against ``Settings`` in the route, since they are not
known when this module is imported.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from starrating.labels import STARS
from starrating.text import NON_BLANK_PATTERN

USER_ID_PATTERN = r"^[\x21-\x7e]{1,128}$"
"""Printable ASCII without spaces: user ids are hashed and stored, never free text."""


def _whole_number(value: object) -> object:
    # JSON Schema's "integer" is any number with a zero fraction: 2.0 is one, 2.5 and true not.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number), Field(strict=True)]
"""An integer as JSON Schema means it (``2`` or ``2.0``); never a bool, a string or ``2.5``."""
UserId = Annotated[
    str | None,
    Field(
        pattern=USER_ID_PATTERN,
        description="who is asking, for sticky A/B assignment (or header X-User-Id)",
    ),
]
"""The optional ``user_id`` of a request body."""
REVIEW_SCHEMA: dict[str, Any] = {"type": "string", "pattern": NON_BLANK_PATTERN}
"""A review text in the OpenAPI document: a string that is not blank after normalisation."""


def _prediction_request_schema(schema: dict[str, Any]) -> None:
    # What the validator below enforces, said in the schema: exactly one of text/texts (oneOf),
    # neither null, texts not empty, no blank text.
    properties = schema["properties"]
    properties["text"] = {**REVIEW_SCHEMA, "description": "one review"}
    properties["texts"] = {
        "type": "array",
        "items": REVIEW_SCHEMA,
        "minItems": 1,
        "description": "a batch of reviews",
    }
    schema["oneOf"] = [{"required": ["text"]}, {"required": ["texts"]}]
    schema["examples"] = [
        {"text": "I loved it! I will recommend this to everyone."},
        {"texts": ["It's OK.", "Really bad."], "user_id": "user-42"},
    ]


class PredictionRequest(BaseModel):
    """One review (``text``) or a batch (``texts``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_prediction_request_schema)

    text: str | None = Field(default=None, description="one review")
    texts: list[str] | None = Field(default=None, description="a batch of reviews")
    user_id: UserId = None

    @model_validator(mode="after")
    def _one_of_text_or_texts(self) -> Self:
        if (self.text is None) == (self.texts is None):
            raise ValueError('send exactly one of "text" or "texts"')
        if self.texts is not None and not self.texts:
            raise ValueError('"texts" must not be empty')
        return self

    @property
    def all_texts(self) -> list[str]:
        """The texts to rate, in order: one for ``text``, the batch for ``texts``."""
        return [self.text] if self.text is not None else list(self.texts or [])


class StarPrediction(BaseModel):
    stars: int = Field(ge=min(STARS), le=max(STARS), description="predicted star rating")
    probabilities: dict[str, float] = Field(
        description='calibrated probability of each rating, keys "1" to "5"'
    )


class PredictionResponse(BaseModel):
    request_id: str = Field(description="also in the X-Request-Id header; quote it for feedback")
    model: str = Field(description="the TorchServe model name")
    version: str = Field(description="the model version that answered")
    variant: str = Field(description="the A/B variant this request was assigned to")
    predictions: list[StarPrediction] = Field(description="one per text, in order")


class ServedNumerics(BaseModel):
    precision: str = Field(description="what the version's workers compute in: fp32, bf16, int8")
    reason: str = Field(description="why: the archive's measurement and the serving device")
    validation_accuracy: dict[str, float] = Field(
        default_factory=dict,
        description="accuracy per numerics on the run's validation split, measured when archived",
    )


class ModelVersionInfo(BaseModel):
    version: str
    is_default: bool = Field(description="answers requests that name no version")
    ready: bool = Field(description="at least one worker is ready to predict")
    workers: int = Field(description="workers TorchServe runs for this version")
    ready_workers: int = Field(description="of those, the ones ready to predict")
    numerics: ServedNumerics | None = Field(
        default=None, description="null when no worker of the version answered in time"
    )


class ModelsResponse(BaseModel):
    model: str
    versions: list[ModelVersionInfo]


class HealthResponse(BaseModel):
    status: str


class ReadinessResponse(BaseModel):
    status: str
    versions: list[str] = Field(description="the versions checked and found ready")


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable reason")
    message: str = Field(description="what went wrong, for people")


class ErrorResponse(BaseModel):
    """The body of every non-2xx answer."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI ``responses`` entries for error statuses, all with the one error body."""
    descriptions = {
        401: "admin token missing",
        403: "admin token wrong, or admin routes closed",
        404: "unknown model version or resource",
        413: "body, batch or text over the configured limit",
        422: "invalid request body",
        502: "TorchServe answered something unexpected",
        503: "TorchServe down or no model ready",
        504: "TorchServe did not answer in time",
    }
    return {
        status: {"model": ErrorResponse, "description": descriptions.get(status, "error")}
        for status in statuses
    }
