"""The baseline: the server a user writes instead of the stack.

FastAPI calling ``transformers.pipeline("text-classification")`` for each request, fp32, one
uvicorn worker, nothing tuned. It answers the gateway's request and response shape so that the
same load drives both. Run it with
``STARRATING_NAIVE_MODEL=DIR uvicorn --factory loadtests.naive_server:create_app``.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field, model_validator

MODEL_ENV = "STARRATING_NAIVE_MODEL"


class PredictionRequest(BaseModel):
    text: str | None = Field(default=None, min_length=1)
    texts: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> PredictionRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        return self


class Prediction(BaseModel):
    stars: int
    probabilities: dict[str, float]


class PredictionResponse(BaseModel):
    predictions: list[Prediction]


def create_app(model_dir: str | None = None) -> FastAPI:
    """The app for the model in ``model_dir`` (default: the ``STARRATING_NAIVE_MODEL`` env)."""
    from transformers import pipeline

    source = model_dir or os.environ.get(MODEL_ENV)
    if not source:
        raise RuntimeError(f"set {MODEL_ENV} to a saved model directory")
    classify = pipeline("text-classification", model=source, top_k=None, device="cpu")
    app = FastAPI(title="naive star rating server")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/predictions")
    def predict(request: PredictionRequest) -> PredictionResponse:
        texts = [request.text] if request.text is not None else (request.texts or [])
        outputs: Any = classify(texts, truncation=True)
        predictions = []
        for scores in outputs:
            probabilities = {str(s["label"]): float(s["score"]) for s in scores}
            best = max(probabilities, key=probabilities.__getitem__)
            predictions.append(Prediction(stars=int(best), probabilities=probabilities))
        return PredictionResponse(predictions=predictions)

    return app
